//! One trial of the demand-paging benchmark: a fresh VM whose every data page is missing,
//! the touch guest on every vCPU, the destination assembled as a migration's is, each vCPU
//! timed on its own thread; and where its threads run.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::contract::{FaultMode, Workload};
use crate::guest;
use crate::postcopy::assembly::Plan;
use crate::postcopy::net::{self, ClientOptions, NetError, PageServer};
use crate::postcopy::page_state::PageState;
use crate::postcopy::{Destination, InProcessSource, PostcopyError, SourceError, Throttle};
use crate::telemetry::{Aggregate, Telemetry};
use crate::units::Rate;
use crate::vmm::layout::{self, BOOT_PAGES, BOOT_SIZE, PAGE_SHIFT, PAGE_SIZE};
use crate::vmm::{GuestRam, MissingPageHandler, RunState, Vm, VmConfig, VmmError};

use super::{BenchError, BenchMode, TRIAL_TIMEOUT, Trial, TrialConfig};

/// A benchmark's connections fail at once if the source is lost: nothing takes it down.
pub(super) fn options(spin: Duration) -> ClientOptions {
    ClientOptions {
        spin,
        recover: Duration::ZERO,
        ..ClientOptions::default()
    }
}

pub(super) fn source_error(e: NetError) -> BenchError {
    BenchError::Postcopy(PostcopyError::Source(SourceError::from(e)))
}

/// Makes every page of `ram` present by writing one byte to it.
pub(super) fn prefill(ram: &GuestRam) -> Result<(), VmmError> {
    let mut gpa = BOOT_SIZE;
    while gpa < ram.size() {
        ram.write_u64s(gpa + STAMP_OFFSET, &[stamp(gpa)])?;
        gpa += PAGE_SIZE;
    }
    Ok(())
}

/// Where each prefilled page carries its stamp: the last qword, which no workload of the
/// benchmarks writes (they write the first).
pub(super) const STAMP_OFFSET: u64 = crate::contract::LAST_QWORD as u64;

/// The stamp of the page at `gpa`: its number, never zero.
pub(super) fn stamp(gpa: u64) -> u64 {
    gpa >> layout::PAGE_SHIFT
}

impl TrialConfig {
    /// How the destination is assembled; None for prefill, which has no missing page.
    pub fn plan(&self) -> Option<Plan> {
        let mode = match self.mode {
            BenchMode::Prefill => return None,
            BenchMode::Uffd => FaultMode::Uffd,
            BenchMode::Exit => FaultMode::Exit,
        };
        Some(Plan {
            mode,
            backing: self.backing,
            vcpus: self.vcpus,
            // One vCPU has one userfaultfd either way, served by `readers` threads.
            per_slice: self.uffd_per_vcpu && self.vcpus > 1,
            readers: self.readers,
            push_threads: 0,
        })
    }
}

/// A fresh VM whose every data page is missing (unless prefill), running `workload`, with
/// the destination assembled as a migration's is (no push), its threads placed; the
/// vCPUs are paused until [`Rig::start`].
pub(super) struct Rig {
    pub vm: Vm,
    pub dest: Option<Arc<Destination>>,
    pub telemetry: Arc<Telemetry>,
    /// Each vCPU's slice, as (first gpa, pages).
    pub slices: Vec<(u64, u64)>,
    pub data_pages: u64,
    workers: Option<crate::postcopy::assembly::Workers>,
    /// Serves the image when pages travel over TCP; dropped after the workers.
    _server: Option<PageServer>,
}

impl Rig {
    pub fn new(c: &TrialConfig, workload: &Workload) -> Result<Rig, BenchError> {
        c.validate()?;
        let mem = c.mem_bytes().max(layout::MIN_MEM_BYTES);
        let vm_config = VmConfig {
            vcpus: c.vcpus,
            mem_bytes: mem,
        };
        // The VM may be larger than asked (its minimum size); the guest works only on its
        // slices.
        let mut placement = layout::placement(mem);
        placement.data_pages = c.vcpus as u64 * c.mem_per_vcpu / PAGE_SIZE;
        let data_pages = placement.data_pages;
        let program = guest::assemble(workload, c.vcpus, &placement)?;
        let ram = Arc::new(GuestRam::with_backing(mem, c.backing)?);
        // Room for every event of a vCPU (a fault per page of its slice): the aggregator
        // reads them after the trial, not during.
        let capacity = (data_pages / c.vcpus as u64) as usize + 1024;
        let telemetry = Arc::new(Telemetry::with_capacity(c.vcpus, capacity, c.telemetry));
        // The same assembly as a migration's destination, without push threads.
        let plan = c.plan();
        let mut dest = None;
        let mut server = None;
        let handler: Option<Arc<dyn MissingPageHandler>> = match (c.mode, plan) {
            (BenchMode::Prefill, _) | (_, None) => {
                prefill(&ram)?;
                None
            }
            (_, Some(plan)) => {
                let uffds = plan.userfaultfds()?;
                // A source image in real memory, as a migration's would be.
                let image = GuestRam::new(mem)?;
                prefill(&image)?;
                let image = Arc::new(InProcessSource::new(Arc::new(image)));
                let (source, s) = net::page_source(c.transport, image, options(c.net_spin), None)
                    .map_err(source_error)?;
                server = s;
                let d = Arc::new(Destination::with_uffds(
                    ram.clone(),
                    uffds,
                    source,
                    Throttle::new(Rate::Unlimited),
                    c.rtt,
                    telemetry.clone(),
                )?);
                d.set_push(false);
                d.set_prefetch(c.prefetch);
                d.set_reader_spin(c.reader_spin);
                let h = plan.handler(&d);
                dest = Some((d, plan));
                h
            }
        };
        let vm = Vm::with_ram(vm_config, ram, handler)?;
        vm.load(&program)?;
        let cpus = Arc::new(allowed_cpus());
        // Stopped and joined however the trial ends.
        let workers = match &dest {
            Some((d, plan)) => {
                d.set_vcpu_tids(vm.vcpus().iter().map(|v| v.shared().thread_id()).collect());
                let (pin, cpus) = (c.pin, cpus.clone());
                // Reader i shares vCPU i's CPU, so a fault's wake-ups stay on one CPU.
                Some(plan.start(
                    d,
                    move |i| if pin { pin_thread(0, &cpus, i) } else { Ok(()) },
                )?)
            }
            None => None,
        };
        if c.pin {
            for (i, v) in vm.vcpus().iter().enumerate() {
                pin_thread(v.shared().thread_id() as i32, &cpus, i)?;
            }
        }
        Ok(Rig {
            vm,
            dest: dest.map(|(d, _)| d),
            telemetry,
            slices: program.slices,
            data_pages,
            workers,
            _server: server,
        })
    }

    pub fn start(&self) -> Result<(), BenchError> {
        Ok(self.vm.resume_all()?)
    }

    /// Why a reader (or the push) stopped early, if one did: the vCPUs it served would
    /// wait for ever. Its faults are released, so the VM can be stopped.
    fn worker_failed(&mut self) -> Option<BenchError> {
        if !self.workers.as_ref().is_some_and(|w| w.any_finished()) {
            return None;
        }
        self.workers.take().map(|w| w.failure().into())
    }

    /// Ends a trial polled since `start` that cannot go on: a vCPU failed, a worker
    /// stopped early, or `timeout` has passed.
    pub fn check_going(&mut self, start: Instant, timeout: Duration) -> Result<(), BenchError> {
        if let Some(f) = self.vm.failure() {
            return Err(BenchError::GuestFailed(f));
        }
        if start.elapsed() > timeout {
            return Err(BenchError::Timeout(timeout));
        }
        match self.worker_failed() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stops and joins the destination's threads (the vCPUs go with the VM).
    pub fn finish(&mut self) -> Result<(), BenchError> {
        if let Some(w) = self.workers.take() {
            w.finish()?;
        }
        Ok(())
    }

    /// Once the trial's threads are gone: every page arrived at most once (the fill counters
    /// add up to the pages present), with the image's content (each page's stamp, which no
    /// workload writes), and no checksum failed on the way. Returns the pages checked.
    pub fn check_fills(&self) -> Result<u64, BenchError> {
        let Some(dest) = &self.dest else {
            return Ok(0);
        };
        let run = &self.telemetry.run;
        let map = dest.pages();
        let tally = map.tally(BOOT_PAGES..map.len());
        let present = tally.get(PageState::FilledByDemand)
            + tally.get(PageState::FilledByPrefetch)
            + tally.get(PageState::FilledByPush);
        let fills = run.pages_demand.get() + run.pages_prefetched.get() + run.pages_pushed.get();
        if fills != present {
            return Err(BenchError::WrongPages(format!(
                "{fills} pages filled for {present} present: a page was filled twice or not counted"
            )));
        }
        let mismatches = run.checksum_mismatches.get();
        if mismatches > 0 {
            return Err(BenchError::WrongPages(format!(
                "{mismatches} pages failed their checksum"
            )));
        }
        let ram = dest.ram();
        for page in (BOOT_PAGES..map.len()).filter(|&p| map.get(p).is_present()) {
            let gpa = page << PAGE_SHIFT;
            // Through the fill mapping where there is one: a shared page may be present
            // and still unmapped from the guest's view, whose fault nobody serves now.
            let found = match ram.fill_addr(gpa + STAMP_OFFSET) {
                // SAFETY: the fill mapping holds all of guest RAM for the RAM's lifetime.
                Some(at) => unsafe { std::ptr::read_volatile(at as *const u64) },
                None => ram.read_u64(gpa + STAMP_OFFSET)?,
            };
            if found != stamp(gpa) {
                return Err(BenchError::WrongPages(format!(
                    "page {page} holds the stamp {found:#x}, not its own"
                )));
            }
        }
        Ok(present)
    }

    /// The latency figures of every fault the trial saw.
    pub fn aggregate(&self, vcpus: usize) -> Result<Aggregate, BenchError> {
        let mut aggregate =
            Aggregate::new(vcpus).map_err(|e| BenchError::Telemetry(e.to_string()))?;
        for e in self.telemetry.drain() {
            aggregate.fold(&e);
        }
        Ok(aggregate)
    }
}

/// Runs one trial: a fresh VM, every data page missing (unless prefill), the touch guest.
pub fn run_trial(c: &TrialConfig) -> Result<Trial, BenchError> {
    let mut rig = Rig::new(c, &"touch".parse()?)?;
    let start = Instant::now();
    rig.start()?;
    let mut done = vec![false; c.vcpus];
    while done.iter().any(|d| !d) {
        rig.check_going(start, TRIAL_TIMEOUT)?;
        let vm = &rig.vm;
        for (d, v) in done.iter_mut().zip(vm.vcpus()) {
            *d = *d || v.state() == RunState::Done;
        }
        // Coarse polling is enough: the times come from the vCPU threads themselves.
        std::thread::sleep(Duration::from_millis(10));
    }
    // Timed on the vCPU threads, as a C program would, not by this coarse poll.
    let spans: Vec<(u64, u64)> = rig
        .vm
        .vcpus()
        .iter()
        .map(|v| {
            let s = v.stats();
            (
                s.first_resumed_ns.load(Ordering::Relaxed),
                s.done_ns.load(Ordering::Relaxed),
            )
        })
        .collect();
    if let Some(i) = spans.iter().position(|&(from, to)| from == 0 || to < from) {
        return Err(BenchError::GuestFailed(format!(
            "vCPU {i} reached DONE with no span of its own ({:?})",
            spans[i]
        )));
    }
    let first = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let last = spans.iter().map(|s| s.1).max().unwrap_or(0);
    let secs = last.saturating_sub(first) as f64 / 1e9;
    rig.finish()?;
    rig.check_fills()?;
    let pages_per_vcpu = rig.data_pages / c.vcpus as u64;
    let per_vcpu_pages_per_sec = spans
        .iter()
        .map(|(from, to)| pages_per_vcpu as f64 / (to.saturating_sub(*from) as f64 / 1e9).max(1e-9))
        .collect();
    let latency = rig.aggregate(c.vcpus)?.latency();
    Ok(Trial {
        pages: pages_per_vcpu * c.vcpus as u64,
        secs,
        per_vcpu_pages_per_sec,
        p50_us: latency.p50,
        p99_us: latency.p99,
        telemetry_dropped: rig.telemetry.dropped(),
    })
}

/// The CPUs this process may run on, in order.
pub(super) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set for sched_getaffinity to fill.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a cpu_set_t of the size passed; pid 0 is this thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: cpu < CPU_SETSIZE, inside `set`.
        .filter(|&cpu| r == 0 && unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() { vec![0] } else { cpus }
}

/// Binds thread `tid` (0: the calling thread) to the `slot`-th CPU of `cpus`, wrapping.
pub(super) fn pin_thread(tid: i32, cpus: &[usize], slot: usize) -> Result<(), PostcopyError> {
    let cpu = cpus.get(slot % cpus.len().max(1)).copied().unwrap_or(0);
    // SAFETY: a zeroed cpu_set_t is empty; `cpu` came from the allowed set, so it is
    // below CPU_SETSIZE.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(PostcopyError::Pin {
            cpu,
            source: std::io::Error::last_os_error(),
        })
    }
}
