//! The destination side of post-copy: guest RAM registered with userfaultfd, the page-state
//! map, demand fills (from uffd handler threads or from vCPU threads in exit mode), the
//! background push, and region injection.
//!
//! Owns every page copy into the destination. Never copies a page twice: a page is copied
//! only by whoever claimed it in the page-state map. Anonymous RAM is filled with
//! UFFDIO_COPY; shared RAM by writing the page through its fill mapping and mapping it
//! into the guest's view with UFFDIO_CONTINUE (the claim makes that write exclusive).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::PostcopyError;
use super::page_state::{PageState, PageStateMap};
use super::source::PageSource;
use super::throttle::Throttle;
use crate::contract::Backing;
use crate::contract::Prefetch;
use crate::striped::{StripedCounter, StripedGate};
use crate::telemetry::Telemetry;
use crate::uffd::{Features, Fill, Userfaultfd};

use crate::vmm::layout::{BOOT_PAGES, PAGE_SHIFT, PAGE_SIZE};
use crate::vmm::{ExitPath, FillOutcome, GuestRam, MissingPageHandler};

const PAGE: usize = PAGE_SIZE as usize;

mod ahead;
mod deferred;
mod fill;
mod inject;
mod prefetch;
mod push;
mod reader;
mod setup;

use fill::Cause;

pub use setup::{
    auto_ahead_spin, auto_reader_spin, backing_features, preferred_backing, register, spawn,
};

thread_local! {
    /// Each faulting thread's page buffer and checksum list: no allocation per fault.
    static DEMAND_BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u32>)> =
        std::cell::RefCell::new((Vec::with_capacity(PAGE), Vec::with_capacity(1)));
}

pub struct Destination {
    ram: Arc<GuestRam>,
    /// One userfaultfd per part of data memory, `part_pages` each (the last takes the rest):
    /// disjoint parts keep one vCPU's faults off the others' wait queue.
    uffds: Vec<Arc<Userfaultfd>>,
    part_pages: u64,
    pages: PageStateMap,
    source: Arc<dyn PageSource>,
    pub throttle: Throttle,
    rtt_ns: AtomicU64,
    /// After a fault, uffd readers keep reading this long before they sleep in poll.
    reader_spin_ns: AtomicU64,
    /// Whether each userfaultfd serves one vCPU, so its reader may wait out a page another
    /// thread is filling (the vCPU waits for it anyway) and time the whole stall.
    readers_wait: AtomicBool,
    telemetry: Arc<Telemetry>,
    /// vCPU thread ids, index = vCPU, for uffd fault attribution.
    vcpu_tids: OnceLock<Vec<u32>>,
    missing: StripedCounter,
    /// Demand fills in progress: the push yields while there are any.
    demand_waiting: StripedCounter,
    push_enabled: AtomicBool,
    /// Fills hold it shared; injection holds it exclusively while it drops pages.
    fill_gate: StripedGate,
    /// First page the push should visit next (a recent fault's neighbour), plus one.
    push_hint: AtomicU64,
    /// Tells shared readers holding stalls on pages in flight that pages landed.
    landings: deferred::Landings,
    /// What a demand fault brings in besides its page.
    prefetch: prefetch::Prefetcher,
    /// Windows queued for the prefetch workers.
    ahead: ahead::Ahead,
    stop: AtomicBool,
}

/// How long a fault waits on a page in flight once the destination is stopped.
const STOPPED_WAIT: Duration = Duration::from_secs(2);

/// What a demand fill found.
enum Demand {
    Done(FillOutcome),
    /// Another thread is filling the page; the caller did not wait for it.
    InFlight,
}

impl Destination {
    /// Registers `ram` beyond the boot region with `uffd`; those pages start missing. For
    /// shared RAM the userfaultfd needs [`Features::MINOR_SHMEM`].
    pub fn new(
        ram: Arc<GuestRam>,
        uffd: Arc<Userfaultfd>,
        source: Arc<dyn PageSource>,
        throttle: Throttle,
        rtt: Duration,
        telemetry: Arc<Telemetry>,
    ) -> Result<Destination, PostcopyError> {
        Destination::with_uffds(ram, vec![uffd], source, throttle, rtt, telemetry)
    }

    /// As [`Destination::new`], data memory split into one equal part per userfaultfd.
    pub fn with_uffds(
        ram: Arc<GuestRam>,
        uffds: Vec<Arc<Userfaultfd>>,
        source: Arc<dyn PageSource>,
        throttle: Throttle,
        rtt: Duration,
        telemetry: Arc<Telemetry>,
    ) -> Result<Destination, PostcopyError> {
        let total = ram.pages();
        let data = total - BOOT_PAGES;
        let parts = (uffds.len() as u64).clamp(1, data.max(1));
        let part_pages = data.div_ceil(parts).max(1);
        let backing = ram.backing();
        for (i, uffd) in uffds.iter().enumerate() {
            let first = BOOT_PAGES + i as u64 * part_pages;
            let end = (first + part_pages).min(total);
            if first >= end {
                continue;
            }
            let (start, len) = (
                ram.host_base() + first * PAGE_SIZE,
                (end - first) * PAGE_SIZE,
            );
            if backing == Backing::Shared && !uffd.features().contains(Features::MINOR_SHMEM) {
                return Err(PostcopyError::Config(
                    "shared guest RAM needs a userfaultfd with minor faults on shared memory \
                     (MINOR_SHMEM)"
                        .into(),
                ));
            }
            register(uffd, backing, start, len)?;
        }
        let prefetch = prefetch::Prefetcher::new(telemetry.vcpus.len(), Prefetch::Off);
        Ok(Destination {
            pages: PageStateMap::new(total, BOOT_PAGES),
            missing: StripedCounter::new(data),
            ram,
            uffds,
            part_pages,
            source,
            throttle,
            rtt_ns: AtomicU64::new(rtt.as_nanos() as u64),
            reader_spin_ns: AtomicU64::new(0),
            readers_wait: AtomicBool::new(false),
            telemetry,
            vcpu_tids: OnceLock::new(),
            demand_waiting: StripedCounter::new(0),
            push_enabled: AtomicBool::new(true),
            fill_gate: StripedGate::default(),
            push_hint: AtomicU64::new(0),
            landings: deferred::Landings::new(),
            prefetch,
            ahead: ahead::Ahead::new(),
            stop: AtomicBool::new(false),
        })
    }

    /// Where pages come from.
    pub fn source(&self) -> &Arc<dyn PageSource> {
        &self.source
    }

    pub fn pages(&self) -> &PageStateMap {
        &self.pages
    }

    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Pages still missing.
    pub fn missing(&self) -> u64 {
        self.missing.get()
    }

    /// Tells the uffd handlers which thread is which vCPU (once, before switchover).
    pub fn set_vcpu_tids(&self, tids: Vec<u32>) {
        let _ = self.vcpu_tids.set(tids);
    }

    /// Readers that spin briefly catch the next fault without a wake-up, at a core's cost.
    pub fn set_reader_spin(&self, d: Duration) {
        self.reader_spin_ns
            .store(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Readers wait for pages another thread is filling (see `readers_wait`).
    pub fn set_readers_wait(&self, on: bool) {
        self.readers_wait.store(on, Ordering::Relaxed);
    }

    pub fn set_push(&self, on: bool) {
        self.push_enabled.store(on, Ordering::Release);
    }

    pub fn push_enabled(&self) -> bool {
        self.push_enabled.load(Ordering::Acquire)
    }

    pub fn rtt(&self) -> Duration {
        Duration::from_nanos(self.rtt_ns.load(Ordering::Relaxed))
    }

    /// The userfaultfd that registered `page`.
    fn uffd_for(&self, page: u64) -> Result<&Userfaultfd, PostcopyError> {
        let i = (page.saturating_sub(BOOT_PAGES) / self.part_pages) as usize;
        self.uffds
            .get(i.min(self.uffds.len().saturating_sub(1)))
            .map(|u| &**u)
            .ok_or(PostcopyError::NoUserfaultfd(i))
    }

    /// First page of the uffd part that holds `page`.
    fn part_start(&self, page: u64) -> u64 {
        let i = page.saturating_sub(BOOT_PAGES) / self.part_pages;
        BOOT_PAGES + i * self.part_pages
    }

    /// First page after the uffd part that holds `page`: one copy never spans two.
    fn part_end(&self, page: u64) -> u64 {
        let i = page.saturating_sub(BOOT_PAGES) / self.part_pages;
        (BOOT_PAGES + (i + 1) * self.part_pages).min(self.pages.len())
    }

    pub fn uffd_count(&self) -> usize {
        self.uffds.len()
    }

    fn vcpu_of_tid(&self, tid: u32) -> Option<usize> {
        self.vcpu_tids
            .get()
            .and_then(|t| t.iter().position(|&x| x == tid))
    }

    /// Maps present `page` into the guest's view again if it is not mapped (shared RAM:
    /// the kernel may unmap a page it reclaims, and the next access faults as if missing),
    /// and wakes whoever waits on it (`sleepers`: uffd mode). Some(true) if this mapped
    /// it; None if the page is missing again by now (an injection came first).
    fn remap_present(&self, page: u64, sleepers: bool) -> Result<Option<bool>, PostcopyError> {
        let host = self.ram.host_base() + (page << PAGE_SHIFT);
        let uffd = self.uffd_for(page)?;
        if self.ram.backing() == Backing::Anonymous {
            // An anonymous page stays mapped once present. The fault may have raced with
            // the copy's wake-up: wake again, cheaply.
            if sleepers {
                uffd.wake(host, PAGE_SIZE)?;
            }
            return Ok(Some(false));
        }
        // Not while an injection drops pages: it unmaps them before marking them missing.
        let _gate = self.fill_gate.read();
        if !self.pages.get(page).is_present() {
            return Ok(None);
        }
        Ok(Some(
            uffd.continue_pages(host, PAGE_SIZE, true)? == Fill::Filled,
        ))
    }

    /// Makes the page of `gpa` present on behalf of a fault. With `wait`, returns only once
    /// the page is present even if another party is copying it (exit mode needs that before
    /// completing the access); without, a page in flight is left to its copier, whose copy
    /// wakes the sleeping vCPU (uffd mode).
    pub fn fill_demand(&self, gpa: u64, wait: bool) -> Result<FillOutcome, PostcopyError> {
        self.fill_for(None, gpa, wait)
    }

    /// As [`Self::fill_demand`], for `vcpu`'s fault (its stream decides the prefetch).
    fn fill_for(
        &self,
        vcpu: Option<usize>,
        gpa: u64,
        wait: bool,
    ) -> Result<FillOutcome, PostcopyError> {
        Ok(match self.demand(vcpu, gpa, wait)? {
            Demand::Done(outcome) => outcome,
            // Left to its copier, whose copy wakes the vCPU.
            Demand::InFlight => FillOutcome::Filled,
        })
    }

    fn demand(&self, vcpu: Option<usize>, gpa: u64, wait: bool) -> Result<Demand, PostcopyError> {
        let page = gpa >> PAGE_SHIFT;
        let mut first = true;
        let mut stopped_since = None;
        loop {
            let state = self.pages.get(page);
            if state.is_present() {
                let remapped = if first || !wait {
                    match self.remap_present(page, !wait)? {
                        Some(remapped) => remapped,
                        None => continue,
                    }
                } else {
                    false
                };
                return Ok(Demand::Done(if first && !remapped {
                    FillOutcome::AlreadyPresent
                } else {
                    FillOutcome::Filled
                }));
            }
            first = false;
            if state == PageState::Missing {
                let _gate = self.fill_gate.read();
                if self.pages.claim(page) {
                    self.demand_waiting.add(1);
                    // A shared line every fault would write: only when a push will read it.
                    if self.push_enabled() {
                        self.push_hint.store(page + 2, Ordering::Relaxed);
                    }
                    // A caller that does not wait (a reader shared by vCPUs) leaves a slow
                    // fill to a worker where one can take it, and reads the next fault at
                    // once: a fault queued behind it would be timed from its read, late. A
                    // fast one costs less than the hand-over.
                    let defer = !wait && self.fills_are_slow();
                    let r = DEMAND_BUFFERS.with_borrow_mut(|(buf, sums)| {
                        self.fetch_with_window(vcpu, page, defer, buf, sums)
                    });
                    self.demand_waiting.sub(1);
                    return match r {
                        Ok(true) => Ok(Demand::InFlight),
                        Ok(false) => Ok(Demand::Done(FillOutcome::Filled)),
                        Err(e) => {
                            self.abandon([page], &e);
                            Err(e)
                        }
                    };
                }
                continue;
            }
            if !wait {
                return Ok(Demand::InFlight);
            }
            // Stopped, its filler may be gone for good (a failed run): no waiting forever,
            // but a while, for a filler that is about to land it.
            if self.stop.load(Ordering::Acquire)
                && stopped_since
                    .get_or_insert_with(std::time::Instant::now)
                    .elapsed()
                    > STOPPED_WAIT
            {
                return Err(PostcopyError::StoppedEarly);
            }
            // Waiting on a page in flight: a queued window is better filled here than
            // waited for behind it.
            if !DEMAND_BUFFERS.with_borrow_mut(|(buf, sums)| self.help_ahead(buf, sums))? {
                std::hint::spin_loop();
                std::thread::yield_now();
            }
        }
    }

    /// Fetches claimed `page`, a fault of `vcpu`'s, with the window prefetch asks for: a
    /// contiguous one in the same fetch and copy (and, over TCP, one request), a strided one
    /// in one round with it. Pages someone else has are skipped. From an in-process source
    /// the window beyond its head goes to a prefetch worker. With `defer`, the fault's page
    /// and its window all go to a worker if one can take them: returns whether they did.
    fn fetch_with_window(
        &self,
        vcpu: Option<usize>,
        page: u64,
        defer: bool,
        buf: &mut Vec<u8>,
        sums: &mut Vec<u32>,
    ) -> Result<bool, PostcopyError> {
        let sent = self.request_sent();
        let seen = self.prefetch.on_fault(vcpu, page);
        if seen.used > 0 {
            self.telemetry.run.prefetch_used.add(seen.used);
        }
        let w = seen.window;
        let (lo, hi) = (self.part_start(page), self.part_end(page));
        let at = |k: u32| {
            let p = page as i64 + w.stride * i64::from(k);
            u64::try_from(p).ok().filter(|p| (lo..hi).contains(p))
        };
        let up = w.stride > 0;
        if w.is_contiguous() {
            let mut n = 0;
            while n < w.count && at(n + 1).is_some_and(|p| self.pages.claim(p)) {
                n += 1;
            }
            self.prefetch
                .brought(vcpu, page, w.stride, w.count, u64::from(n));
            let whole = ahead::Job::Run {
                first: page,
                count: u64::from(n) + 1,
                up,
            };
            if defer && self.send_ahead(whole, Some(page), sent) {
                return Ok(true);
            }
            // Beyond its head the window goes to a worker where one serves, queued first so
            // that both are under way together.
            let mut head = u64::from(n);
            if head >= ahead::HEAD_PAGES + ahead::LEAST_AHEAD_PAGES
                && self.source.local_image().is_some()
            {
                let skip = ahead::HEAD_PAGES + 1;
                let job = ahead::Job::Run {
                    first: if up { page + skip } else { page - skip },
                    count: head - ahead::HEAD_PAGES,
                    up,
                };
                if self.send_ahead(job, None, sent) {
                    head = ahead::HEAD_PAGES;
                }
            }
            let first = if up { page } else { page - head };
            self.answer_due(sent);
            let r = self.fetch_and_copy(first, head + 1, Cause::Demand { fault: page }, buf, sums);
            if let Err(e) = &r {
                // The caller gives the faulting page back; the head's are ours to.
                let rest = if up { first + 1 } else { first };
                self.abandon(rest..rest + head, e);
            }
            return r.map(|()| false);
        }
        // A strided window: its pages claimed one by one (those others have are skipped),
        // by their place k in the stream (the fault's is 0).
        let mut ks = 1u64;
        for k in 1..=w.count.min(prefetch::MOST_STRIDED) {
            if at(k).is_some_and(|p| self.pages.claim(p)) {
                ks |= 1 << k;
            }
        }
        let claimed = u64::from(ks.count_ones()) - 1;
        self.prefetch
            .brought(vcpu, page, w.stride, w.count, claimed);
        let strided = |ks| ahead::Job::Strided {
            origin: page,
            stride: w.stride,
            ks,
        };
        if defer && self.send_ahead(strided(ks), Some(page), sent) {
            return Ok(true);
        }
        // The fault's page and the head's are fetched here in one round; the tail, if
        // worth a worker's wake-up, goes to one.
        let mut here = ks;
        let head_bits = ahead::lowest_bits(ks, 1 + ahead::STRIDED_HEAD_PAGES);
        let tail = ks & !head_bits;
        if self.source.local_image().is_some()
            && tail.count_ones() >= ahead::LEAST_STRIDED_AHEAD
            && self.send_ahead(strided(tail), None, sent)
        {
            here = head_bits;
        }
        // On the stack, the fault's page first: this is a fault's path.
        let mut pages = [0u64; fill::SCATTERED_MOST];
        let mut n = 0;
        for k in (0..64).filter(|k| here & (1 << k) != 0) {
            pages[n] = page.wrapping_add_signed(w.stride * k);
            n += 1;
        }
        self.answer_due(sent);
        let r = self.fetch_scattered(&pages[..n], Cause::Demand { fault: page }, buf, sums);
        if let Err(e) = &r {
            // The caller gives the faulting page back; the head's are ours to.
            self.abandon(pages[1..n].iter().copied(), e);
        }
        r.map(|()| false)
    }

    /// Whether a fill waits out a throttle or a set round trip: then for milliseconds, and
    /// a worker's wake-up (tens of us here) is the smaller cost. A plain fill, even over
    /// loopback TCP (about 20 us), is cheaper done than handed over (BENCHMARKS.md).
    fn fills_are_slow(&self) -> bool {
        self.rtt_ns.load(Ordering::Relaxed) > 0
            || self.throttle.rate() != crate::units::Rate::Unlimited
    }

    /// The prefetch strategy in force.
    pub fn prefetch(&self) -> Prefetch {
        self.prefetch.strategy()
    }

    /// Changes the prefetch strategy; the next fault follows it.
    pub fn set_prefetch(&self, p: Prefetch) {
        self.prefetch.set_strategy(p);
    }

    /// Gives claimed `pages` back after a failed fill, unless they may be mapped already:
    /// then they stay claimed, never filled again.
    fn abandon(&self, pages: impl IntoIterator<Item = u64>, e: &PostcopyError) {
        if matches!(e, PostcopyError::Map { .. }) {
            return;
        }
        for p in pages {
            self.give_up_claim(p);
        }
    }

    /// A claimed page nobody will fill goes back to missing; a vCPU asleep on it faults
    /// again.
    fn give_up_claim(&self, page: u64) {
        self.pages.unclaim(page);
        let host = self.ram.host_base() + (page << PAGE_SHIFT);
        if let Ok(uffd) = self.uffd_for(page) {
            let _ = uffd.wake(host, PAGE_SIZE);
        }
    }

    /// Asks the handler and push threads to return.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// After the uffd readers have gone for good (a failed run): takes guest memory off
    /// its userfaultfds, which wakes every vCPU still waiting in the kernel for a page
    /// nobody will bring; it then sees whatever the memory holds, and can be stopped.
    pub fn release_faults(&self) {
        let total = self.pages.len();
        for (i, uffd) in self.uffds.iter().enumerate() {
            let first = BOOT_PAGES + i as u64 * self.part_pages;
            let end = (first + self.part_pages).min(total);
            if first >= end {
                continue;
            }
            let start = self.ram.host_base() + first * PAGE_SIZE;
            if let Err(e) = uffd.unregister(start, (end - first) * PAGE_SIZE) {
                tracing::warn!("cannot release the faults of userfaultfd {i}: {e}");
            }
        }
    }
}

impl MissingPageHandler for Destination {
    fn fill(&self, vcpu: usize, gpa: u64, _path: ExitPath) -> Result<FillOutcome, String> {
        let stall = self.telemetry.stall_begin(Some(vcpu), gpa);
        let r = self
            .fill_for(Some(vcpu), gpa, true)
            .map_err(|e| e.to_string());
        self.telemetry.stall_end(stall);
        r
    }
}
