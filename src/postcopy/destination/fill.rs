//! Copying fetched pages in: the fetch (with the round trip it stands for), the copy into
//! the claimed pages and their mapping, and the counting of what arrived and why. The one
//! place a page enters the destination.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Destination, PAGE};
use crate::contract::Backing;
use crate::postcopy::PostcopyError;
use crate::postcopy::page_state::PageState;
use crate::postcopy::source::SourceError;
use crate::uffd::Fill;
use crate::vmm::GuestRam;
use crate::vmm::layout::{PAGE_SHIFT, PAGE_SIZE};

/// Why pages are fetched, which decides how they are counted and marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// A fault's page, with the window prefetched around it in the same fetch.
    Demand {
        fault: u64,
    },
    /// A window's pages filled by a worker after its fault's (ahead.rs).
    Prefetch,
    Push,
}

/// Where `[gpa, gpa + len)` of an in-process image lies in this process.
fn image_range(image: &GuestRam, gpa: u64, len: u64) -> Result<u64, SourceError> {
    image
        .host_addr(gpa)
        .filter(|_| image.contains(gpa, len))
        .ok_or(SourceError::OutOfRange {
            gpa,
            len,
            size: image.size(),
        })
}

/// The most pages one scattered fetch carries: a strided window's most and its fault's.
pub(super) const SCATTERED_MOST: usize = super::prefetch::MOST_STRIDED as usize + 1;

impl Destination {
    /// Fetches `count` claimed pages from `page`, checks them and copies them in.
    pub(super) fn fetch_and_copy(
        &self,
        page: u64,
        count: u64,
        cause: Cause,
        buf: &mut Vec<u8>,
        sums: &mut Vec<u32>,
    ) -> Result<(), PostcopyError> {
        let gpa = page << PAGE_SHIFT;
        let len = count * PAGE_SIZE;
        self.throttle.acquire(len);
        match self.source.local_image() {
            Some(image) => {
                let from = image_range(image, gpa, len)?;
                // SAFETY: `from` is `len` bytes of the live image.
                unsafe { self.place(page, from as *const u8, len) }?;
            }
            None => {
                buf.resize(len as usize, 0);
                sums.clear();
                self.source.fetch(gpa, buf, sums)?;
                for (chunk, sum) in buf.chunks(PAGE).zip(sums.iter()) {
                    if crc32fast::hash(chunk) != *sum {
                        self.telemetry.run.checksum_mismatches.add(1);
                    }
                }
                // SAFETY: `buf` holds `len` bytes.
                unsafe { self.place(page, buf.as_ptr(), len) }?;
            }
        }
        self.filled(page..page + count, cause);
        Ok(())
    }

    /// When a demand request leaves, where a round trip is simulated (None: none is, and
    /// the fault's path reads no clock for it).
    pub(super) fn request_sent(&self) -> Option<Instant> {
        (self.rtt_ns.load(Ordering::Relaxed) > 0).then(Instant::now)
    }

    /// The simulated network's round trip for a request `sent` then, paid once by each
    /// demand request (with what it brings in beside the fault), by whoever waits for its
    /// answer: the push streams, and pays none.
    pub(super) fn answer_due(&self, sent: Option<Instant>) {
        let Some(sent) = sent else {
            return;
        };
        let rtt = Duration::from_nanos(self.rtt_ns.load(Ordering::Relaxed));
        let due = rtt.saturating_sub(sent.elapsed());
        if !due.is_zero() {
            std::thread::sleep(due);
        }
    }

    /// Fetches claimed scattered `pages` in one round: every request goes out before any
    /// answer is read (one round trip over TCP), and each page is copied in and mapped on
    /// its own, in order. For a demand, `pages` holds the fault's page first, then those
    /// of its strided window (at most a strided window's most besides it).
    pub(super) fn fetch_scattered(
        &self,
        pages: &[u64],
        cause: Cause,
        buf: &mut Vec<u8>,
        sums: &mut Vec<u32>,
    ) -> Result<(), PostcopyError> {
        if pages.is_empty() {
            return Ok(());
        }
        let len = pages.len() as u64 * PAGE_SIZE;
        self.throttle.acquire(len);
        match self.source.local_image() {
            Some(image) => {
                for &p in pages {
                    let from = image_range(image, p << PAGE_SHIFT, PAGE_SIZE)?;
                    // SAFETY: `from` is a page of the live image.
                    unsafe { self.place(p, from as *const u8, PAGE_SIZE) }?;
                }
            }
            None => {
                buf.resize(len as usize, 0);
                sums.clear();
                // On the stack: this is a fault's path.
                let mut gpas = [0u64; SCATTERED_MOST];
                let gpas = &mut gpas[..pages.len().min(SCATTERED_MOST)];
                for (g, p) in gpas.iter_mut().zip(pages) {
                    *g = p << PAGE_SHIFT;
                }
                self.source.fetch_pages(gpas, buf, sums)?;
                for (chunk, sum) in buf.chunks(PAGE).zip(sums.iter()) {
                    if crc32fast::hash(chunk) != *sum {
                        self.telemetry.run.checksum_mismatches.add(1);
                    }
                }
                for (&p, chunk) in pages.iter().zip(buf.chunks(PAGE)) {
                    // SAFETY: `chunk` is a page of `buf`.
                    unsafe { self.place(p, chunk.as_ptr(), PAGE_SIZE) }?;
                }
            }
        }
        self.filled(pages.iter().copied(), cause);
        Ok(())
    }

    /// Marks `pages`, placed, as filled for `cause` and counts them.
    fn filled(&self, pages: impl Iterator<Item = u64>, cause: Cause) {
        let (mut count, mut refetched) = (0, 0);
        for p in pages {
            let state = match cause {
                Cause::Demand { fault } if fault == p => PageState::FilledByDemand,
                Cause::Demand { .. } | Cause::Prefetch => PageState::FilledByPrefetch,
                Cause::Push => PageState::FilledByPush,
            };
            self.pages.set_filled(p, state);
            refetched += u64::from(self.pages.was_injected(p));
            count += 1;
        }
        self.landings.landed();
        let run = &self.telemetry.run;
        match cause {
            Cause::Demand { .. } => {
                run.pages_demand.add(1);
                if count > 1 {
                    run.pages_prefetched.add(count - 1);
                }
            }
            Cause::Prefetch => run.pages_prefetched.add(count),
            Cause::Push => run.pages_pushed.add(count),
        }
        if refetched > 0 {
            run.pages_refetched.add(refetched);
        }
        run.bytes_transferred.add(count * PAGE_SIZE);
        self.missing.sub(count);
    }

    /// Where `[gpa, gpa + len)` of shared guest RAM lies in its fill mapping.
    pub(super) fn fill_range(&self, gpa: u64, len: u64) -> Result<u64, PostcopyError> {
        self.ram
            .fill_addr(gpa)
            .filter(|_| self.ram.contains(gpa, len))
            .ok_or_else(|| PostcopyError::Map {
                gpa,
                len,
                why: "outside guest RAM".into(),
            })
    }

    /// Puts `len` bytes from `from` into the claimed pages from `page` on and makes them
    /// present, waking whoever waits on them.
    ///
    /// # Safety
    /// `from` must be valid for reading `len` bytes, and the pages claimed by the caller.
    pub(super) unsafe fn place(
        &self,
        page: u64,
        from: *const u8,
        len: u64,
    ) -> Result<(), PostcopyError> {
        let gpa = page << PAGE_SHIFT;
        let host = self.ram.host_base() + gpa;
        let uffd = self.uffd_for(page)?;
        if self.ram.backing() == Backing::Anonymous {
            // SAFETY: the range is registered and claimed by us; `from` per the caller. The
            // kernel copies only into pages not yet present (EEXIST otherwise).
            unsafe { uffd.copy(host, from, len, true) }?;
            return Ok(());
        }
        let map_error = |why: String| PostcopyError::Map { gpa, len, why };
        let fill = self.fill_range(gpa, len)?;
        // SAFETY: the fill mapping holds the range (checked). The claim makes us the range's
        // only writer, and a claimable page is never mapped in the guest's view (a page
        // found mapped below is an error, and stays claimed), so the guest cannot see these
        // pages until they are mapped below.
        unsafe { std::ptr::copy_nonoverlapping(from, fill as *mut u8, len as usize) };
        match uffd.continue_pages(host, len, true) {
            Ok(Fill::Filled) => Ok(()),
            Ok(Fill::AlreadyPresent) => Err(map_error(
                "a page was already mapped, so the guest may have seen it overwritten".into(),
            )),
            Err(e) => Err(map_error(e.to_string())),
        }
    }
}
