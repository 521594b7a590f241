//! Prefetch off the vCPU's path: the faulting thread fills its page and the head of the
//! window, and a worker fills the rest while the vCPU runs on, nearest pages first, in
//! chunks so they land as it goes. For an in-process source, where a window's cost is the
//! copy itself rather than a round trip, the copy so leaves the vCPU's stall. A uffd
//! reader shared by vCPUs hands a slow fill (throttled, or with a round trip) to a worker
//! too, whole, fault's page and window, and reads the next fault at once.
//!
//! A job's pages are claimed before it is queued, so they are filled once, by the worker:
//! a vCPU that reaches one first waits for it as for any page in flight. Pages of a job
//! nobody will run (the workers stopped) are given back and their sleepers woken.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::fill::{Cause, SCATTERED_MOST};
use super::{Destination, PAGE};
use crate::postcopy::PostcopyError;

/// Pages of a contiguous window the faulting thread fills itself: the guest works through
/// them while the worker wakes and starts on the rest.
pub(super) const HEAD_PAGES: u64 = 8;
/// Pages of a strided window the faulting thread fills itself.
pub(super) const STRIDED_HEAD_PAGES: usize = 2;
/// The least of a contiguous window beyond its head worth a worker: less is copied here
/// sooner than a worker wakes for it.
pub(super) const LEAST_AHEAD_PAGES: u64 = 32;
/// The least of a strided window beyond its head worth a worker (each is a copy and an
/// ioctl of its own).
pub(super) const LEAST_STRIDED_AHEAD: u32 = 8;
/// Pages a worker lands in one copy: small enough that the first land soon.
const CHUNK_PAGES: u64 = 32;
/// Strided pages a worker lands in one go.
const STRIDED_CHUNK_PAGES: usize = 4;
/// Windows queued at most; beyond, the faulting thread fills the window itself.
const QUEUE: usize = 64;
/// How often an idle worker looks at `stop`.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// A window's claimed pages, in the order they are to land (nearest the fault first).
#[derive(Debug, Clone, Copy)]
pub(super) enum Job {
    /// `count` pages from `first`, upward when `up`, else downward from `first`.
    Run { first: u64, count: u64, up: bool },
    /// Pages `origin + stride * k` of a strided window, for each bit k set in `ks`.
    Strided { origin: u64, stride: i64, ks: u64 },
}

impl Job {
    /// The job's pages, nearest first.
    fn pages(self) -> impl Iterator<Item = u64> {
        let (run, strided) = match self {
            Job::Run { first, count, up } => (Some((first, count, up)), None),
            Job::Strided { origin, stride, ks } => (None, Some((origin, stride, ks))),
        };
        let run = run.into_iter().flat_map(|(first, count, up)| {
            (0..count).map(move |k| if up { first + k } else { first - k })
        });
        let strided = strided.into_iter().flat_map(|(origin, stride, ks)| {
            (0..64)
                .filter(move |k| ks & (1 << k) != 0)
                .map(move |k| origin.wrapping_add_signed(stride * k))
        });
        run.chain(strided)
    }

    /// The job's nearest pages, as many as land in one go, and what is left after them.
    /// `whole`: all of it in one go (one request over a network).
    fn split(self, whole: bool) -> (Job, Option<Job>) {
        match self {
            Job::Run { first, count, up } => {
                let n = if whole { count } else { CHUNK_PAGES.min(count) };
                let rest = (count > n).then(|| Job::Run {
                    first: if up { first + n } else { first - n },
                    count: count - n,
                    up,
                });
                (
                    Job::Run {
                        first,
                        count: n,
                        up,
                    },
                    rest,
                )
            }
            Job::Strided { origin, stride, ks } => {
                let most = if whole {
                    SCATTERED_MOST
                } else {
                    STRIDED_CHUNK_PAGES
                };
                let taken = lowest_bits(ks, most);
                let part = |ks| Job::Strided { origin, stride, ks };
                (part(taken), (ks != taken).then(|| part(ks & !taken)))
            }
        }
    }
}

/// The lowest `n` bits set in `bits`.
pub(super) fn lowest_bits(bits: u64, n: usize) -> u64 {
    let (mut left, mut taken) = (bits, 0u64);
    for _ in 0..n {
        if left == 0 {
            break;
        }
        let low = left & left.wrapping_neg();
        taken |= low;
        left &= !low;
    }
    taken
}

/// A job on the queue, with when its request left (where a round trip is simulated): its
/// answer comes a round trip after that, whoever takes it up and however often it is
/// split.
#[derive(Debug, Clone, Copy)]
struct Queued {
    job: Job,
    /// The fault whose page the job starts with, if it does.
    fault: Option<u64>,
    sent: Option<Instant>,
}

/// The queue of windows and the count of workers serving it.
pub(super) struct Ahead {
    tx: Sender<Queued>,
    rx: Receiver<Queued>,
    workers: AtomicUsize,
    spin_ns: AtomicU64,
}

impl Ahead {
    pub fn new() -> Ahead {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        Ahead {
            tx,
            rx,
            workers: AtomicUsize::new(0),
            spin_ns: AtomicU64::new(0),
        }
    }

    /// Whether a worker serves the queue: without one, windows are filled where they fault.
    pub fn serving(&self) -> bool {
        self.workers.load(Ordering::SeqCst) > 0
    }
}

impl Destination {
    /// Queues `job`, part of the request `sent` for a fault, for a worker; false if none
    /// can take it now. With `fault`, the job starts with that fault's page, which counts
    /// as a demand fill.
    pub(super) fn send_ahead(&self, job: Job, fault: Option<u64>, sent: Option<Instant>) -> bool {
        self.queue_ahead(Queued { job, fault, sent })
    }

    fn queue_ahead(&self, q: Queued) -> bool {
        if !self.ahead.serving() {
            return false;
        }
        match self.ahead.tx.try_send(q) {
            Ok(()) => {
                // The last worker may have left between the look and the send: then no
                // one runs the job, and its pages must not stay claimed. (Sequentially
                // consistent with the worker's leaving: one of the two sees the job.)
                std::sync::atomic::fence(Ordering::SeqCst);
                if !self.ahead.serving() {
                    self.drain_ahead();
                }
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// A prefetch worker: runs queued windows until stopped.
    pub fn serve_ahead(&self) -> Result<(), PostcopyError> {
        self.ahead.workers.fetch_add(1, Ordering::AcqRel);
        let mut buf = Vec::with_capacity(CHUNK_PAGES as usize * PAGE);
        let mut sums = Vec::with_capacity(CHUNK_PAGES as usize);
        // Awake for a while only after a job: a stream's next window follows soon, and an
        // idle worker costs nothing.
        let mut busy = false;
        let r = loop {
            if self.stop.load(Ordering::Acquire) {
                break Ok(());
            }
            let spun = if busy { self.ahead_spin() } else { None };
            let next = match spun {
                Some(job) => Ok(job),
                None => self.ahead.rx.recv_timeout(IDLE_POLL),
            };
            busy = next.is_ok();
            match next {
                Ok(q) => {
                    if let Err(e) = self.run_ahead(q, false, &mut buf, &mut sums) {
                        break Err(e);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break Ok(()),
            }
        };
        if self.ahead.workers.fetch_sub(1, Ordering::SeqCst) == 1 {
            std::sync::atomic::fence(Ordering::SeqCst);
            self.drain_ahead();
        }
        r
    }

    /// Waits awake for the next job, as long as set (a stream's next window comes within a
    /// few milliseconds; a sleeping worker would take its wake-up off the vCPU's lead).
    fn ahead_spin(&self) -> Option<Queued> {
        let spin = Duration::from_nanos(self.ahead.spin_ns.load(Ordering::Relaxed));
        if spin.is_zero() {
            return None;
        }
        let since = Instant::now();
        while since.elapsed() < spin {
            if let Ok(q) = self.ahead.rx.try_recv() {
                return Some(q);
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            std::hint::spin_loop();
        }
        None
    }

    /// Prefetch workers serving now.
    pub fn prefetch_workers(&self) -> usize {
        self.ahead.workers.load(Ordering::Acquire)
    }

    /// Prefetch workers wait awake this long for the next job before they sleep.
    pub fn set_ahead_spin(&self, d: Duration) {
        self.ahead
            .spin_ns
            .store(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Lands the nearest pages of one queued job on this thread, if there is one, and
    /// queues the rest of a contiguous one again: a thread waiting for a page in flight
    /// helps rather than spins, and waits for its own page not much longer than a chunk.
    /// Whether it landed any.
    pub(super) fn help_ahead(
        &self,
        buf: &mut Vec<u8>,
        sums: &mut Vec<u32>,
    ) -> Result<bool, PostcopyError> {
        match self.ahead.rx.try_recv() {
            Ok(q) => self.run_ahead(q, true, buf, sums).map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// Gives back the pages of every queued job: no worker will run them.
    fn drain_ahead(&self) {
        while let Ok(q) = self.ahead.rx.try_recv() {
            for p in q.job.pages() {
                self.give_up_claim(p);
            }
        }
    }

    /// Lands a queued job's pages, nearest first, a chunk at a time, once its answer is
    /// due (a round trip after it was sent). With `one`, only the first chunk of a
    /// contiguous job, and the rest goes back on the queue (or is landed here if it
    /// cannot).
    fn run_ahead(
        &self,
        q: Queued,
        one: bool,
        buf: &mut Vec<u8>,
        sums: &mut Vec<u32>,
    ) -> Result<(), PostcopyError> {
        self.demand_waiting.add(1);
        self.answer_due(q.sent);
        let mut job = Some(q.job);
        let mut r = Ok(());
        let mut landed = 0;
        while let Some(j) = job.take() {
            // A strided job is small, and its rest queued behind others would land after
            // the stream needs it: a helper lands it whole.
            if one
                && landed > 0
                && matches!(j, Job::Run { .. })
                && self.queue_ahead(Queued {
                    job: j,
                    fault: None,
                    sent: q.sent,
                })
            {
                break;
            }
            // Over a network a job is one request; in process it lands as it goes.
            let (chunk, rest) = j.split(self.source.local_image().is_none());
            let cause = match q.fault {
                Some(fault) if landed == 0 => Cause::Demand { fault },
                _ => Cause::Prefetch,
            };
            if let Err(e) = self.land(chunk, cause, buf, sums) {
                // The rest, never tried, goes back whatever happened.
                self.abandon(chunk.pages(), &e);
                for p in rest.into_iter().flat_map(Job::pages) {
                    self.give_up_claim(p);
                }
                r = Err(e);
                break;
            }
            landed += 1;
            job = rest;
        }
        self.demand_waiting.sub(1);
        r
    }

    /// Fills a chunk of a job, in one copy if it is contiguous.
    fn land(
        &self,
        chunk: Job,
        cause: Cause,
        buf: &mut Vec<u8>,
        sums: &mut Vec<u32>,
    ) -> Result<(), PostcopyError> {
        let _gate = self.fill_gate.read();
        match chunk {
            Job::Run { first, count, up } => {
                let start = if up { first } else { first - (count - 1) };
                self.fetch_and_copy(start, count, cause, buf, sums)
            }
            job @ Job::Strided { .. } => {
                // On the stack: a fault's page may be among them.
                let mut pages = [0u64; SCATTERED_MOST];
                let mut n = 0;
                for (slot, p) in pages.iter_mut().zip(job.pages()) {
                    *slot = p;
                    n += 1;
                }
                self.fetch_scattered(&pages[..n], cause, buf, sums)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_lists_its_pages_nearest_the_fault_first() {
        let up = Job::Run {
            first: 10,
            count: 3,
            up: true,
        };
        assert_eq!(up.pages().collect::<Vec<_>>(), vec![10, 11, 12]);
        let down = Job::Run {
            first: 10,
            count: 3,
            up: false,
        };
        assert_eq!(down.pages().collect::<Vec<_>>(), vec![10, 9, 8]);
        let strided = Job::Strided {
            origin: 100,
            stride: -17,
            ks: 0b1010,
        };
        assert_eq!(strided.pages().collect::<Vec<_>>(), vec![83, 49]);
    }

    #[test]
    fn a_job_splits_into_its_nearest_chunk_and_the_rest() {
        let up = Job::Run {
            first: 10,
            count: 40,
            up: true,
        };
        let (chunk, rest) = up.split(false);
        assert_eq!(
            chunk.pages().collect::<Vec<_>>(),
            (10..42).collect::<Vec<_>>()
        );
        assert_eq!(
            rest.map(|r| r.pages().collect()),
            Some((42..50).collect::<Vec<_>>())
        );
        let down = Job::Run {
            first: 100,
            count: 40,
            up: false,
        };
        let (chunk, rest) = down.split(false);
        assert_eq!(
            chunk.pages().collect::<Vec<_>>(),
            (69..=100).rev().collect::<Vec<_>>()
        );
        assert_eq!(
            rest.map(|r| r.pages().collect()),
            Some((61..=68).rev().collect::<Vec<_>>())
        );
        let (chunk, rest) = Job::Run {
            first: 5,
            count: 3,
            up: true,
        }
        .split(false);
        assert_eq!(chunk.pages().collect::<Vec<_>>(), vec![5, 6, 7]);
        assert!(rest.is_none());
        let strided = Job::Strided {
            origin: 1000,
            stride: 17,
            ks: 0b111_1110,
        };
        let (chunk, rest) = strided.split(false);
        assert_eq!(
            chunk.pages().collect::<Vec<_>>(),
            vec![1017, 1034, 1051, 1068]
        );
        assert_eq!(rest.map(|r| r.pages().collect()), Some(vec![1085, 1102]));
    }
}
