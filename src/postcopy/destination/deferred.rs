//! Stalls a shared uffd reader cannot wait out. A reader that serves several vCPUs must not
//! block on a page another thread is filling (the others' faults would queue behind it),
//! yet that vCPU sleeps until the page lands: the reader keeps the stall open in a list of
//! its own and ends it when a filler says pages landed (an eventfd per reader, written only
//! while that reader holds such a stall), so the stall is timed to the landing, not to the
//! read.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering, fence};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::postcopy::page_state::{PageState, PageStateMap};
use crate::telemetry::{Stall, Telemetry};
use crate::vmm::layout::PAGE_SHIFT;

/// More open stalls than this in one reader (a vCPU has one fault at a time, so only a
/// guest of very many vCPUs gets here): one of them is ended now, a lower bound again.
const MOST_HELD: usize = 1024;

/// Readers that can hold stalls; any more time theirs to the read (a lower bound).
const MOST_READERS: usize = 64;

/// What fillers and readers share: a landing signal per reader that holds stalls.
pub(super) struct Landings {
    readers: Vec<OnceLock<Listener>>,
    joined: AtomicUsize,
}

/// One reader's landing signal, and how many stalls it holds open.
pub(super) struct Listener {
    landed: EventFd,
    held: AtomicUsize,
}

impl Listener {
    /// The descriptor the reader polls beside its userfaultfd.
    pub(super) fn fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.landed)
    }

    /// Clears the signal once it has been seen.
    pub(super) fn consume(&self) {
        let _ = self.landed.read();
    }
}

impl Landings {
    pub(super) fn new() -> Landings {
        Landings {
            readers: (0..MOST_READERS).map(|_| OnceLock::new()).collect(),
            joined: AtomicUsize::new(0),
        }
    }

    /// A reader's own signal, or None when there are too many readers (or no descriptor
    /// to be had): that reader then ends its stalls at the read.
    pub(super) fn join(&self) -> Option<&Listener> {
        let i = self.joined.fetch_add(1, Ordering::AcqRel);
        let slot = self.readers.get(i)?;
        let landed = EventFd::new(EFD_NONBLOCK).ok()?;
        let _ = slot.set(Listener {
            landed,
            held: AtomicUsize::new(0),
        });
        slot.get()
    }

    /// Pages just became present: wake each reader holding stalls. A few loads on the
    /// fill path otherwise.
    pub(super) fn landed(&self) {
        // Readers join before the first fault: none, and there is nothing to do.
        let joined = self.joined.load(Ordering::Relaxed).min(MOST_READERS);
        if joined == 0 {
            return;
        }
        // Pairs with the reader's count-then-check (HeldStalls::hold): either it sees the
        // page present, or this sees its count.
        fence(Ordering::SeqCst);
        for slot in &self.readers[..joined] {
            if let Some(l) = slot.get()
                && l.held.load(Ordering::Relaxed) > 0
            {
                // A full counter means a wake-up is pending already.
                let _ = l.landed.write(1);
            }
        }
    }
}

/// One reader's open stalls, each on a page another thread is filling.
pub(super) struct HeldStalls<'a> {
    listener: &'a Listener,
    telemetry: &'a Telemetry,
    open: Vec<(Stall, u64)>,
}

impl<'a> HeldStalls<'a> {
    pub(super) fn new(listener: &'a Listener, telemetry: &'a Telemetry) -> HeldStalls<'a> {
        HeldStalls {
            listener,
            telemetry,
            open: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Keeps `stall` open until its page lands; the caller checks for landings next
    /// (`end_landed`), so a page that landed before this counted is not missed.
    pub(super) fn hold(&mut self, stall: Stall, gpa: u64) {
        if self.open.len() >= MOST_HELD {
            let (early, _) = self.open.swap_remove(0);
            self.end(early);
        }
        self.listener.held.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.open.push((stall, gpa >> PAGE_SHIFT));
    }

    /// A new fault of `vcpu`: any stall still held for it is over (it ran, and faulted
    /// again), so it ends before the new one begins.
    pub(super) fn new_fault_of(&mut self, vcpu: Option<usize>) {
        if vcpu.is_none() {
            return;
        }
        self.end_where(|s, _| s.vcpu() == vcpu);
    }

    /// Ends every stall whose page is present now, or missing again (an injection took it
    /// back: the vCPU will fault anew).
    pub(super) fn end_landed(&mut self, pages: &PageStateMap) {
        self.end_where(|_, page| {
            let state = pages.get(page);
            state.is_present() || state == PageState::Missing
        });
    }

    fn end_where(&mut self, mut over: impl FnMut(&Stall, u64) -> bool) {
        let mut i = 0;
        while i < self.open.len() {
            if over(&self.open[i].0, self.open[i].1) {
                let (stall, _) = self.open.swap_remove(i);
                self.end(stall);
            } else {
                i += 1;
            }
        }
    }

    fn end(&self, stall: Stall) {
        self.telemetry.stall_end(stall);
        self.listener.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for HeldStalls<'_> {
    /// A reader that stops ends what it holds.
    fn drop(&mut self) {
        for (stall, _) in std::mem::take(&mut self.open) {
            self.end(stall);
        }
    }
}
