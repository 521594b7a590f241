//! Counters and a gate striped over cache lines: threads on the fault path each write a
//! line of their own instead of all bouncing one, which is what kept 16 vCPUs from
//! scaling; readers (the monitor, the push) add the stripes up.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crossbeam_utils::CachePadded;

/// Stripes per counter: enough that vCPU threads rarely share one.
const STRIPES: usize = 32;

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// This thread's stripe, handed out round robin on first use.
fn stripe() -> usize {
    STRIPE.with(|s| {
        s.get().unwrap_or_else(|| {
            let i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(Some(i));
            i
        })
    })
}

/// A u64 counter that many threads add to and few read.
pub struct StripedCounter {
    stripes: [CachePadded<AtomicU64>; STRIPES],
}

impl Default for StripedCounter {
    fn default() -> Self {
        StripedCounter::new(0)
    }
}

impl std::fmt::Debug for StripedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl StripedCounter {
    pub fn new(initial: u64) -> StripedCounter {
        let c = StripedCounter {
            stripes: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
        };
        c.stripes[0].store(initial, Ordering::Relaxed);
        c
    }

    pub fn add(&self, n: u64) {
        self.stripes[stripe()].fetch_add(n, Ordering::AcqRel);
    }

    /// Subtracts from this thread's stripe: stripes wrap, their sum stays right.
    pub fn sub(&self, n: u64) {
        self.stripes[stripe()].fetch_sub(n, Ordering::AcqRel);
    }

    /// The sum; exact once the adders are quiet, never torn within a stripe.
    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.load(Ordering::Acquire)))
    }
}

/// A reader-writer gate whose readers (fills) take their own stripe's lock and whose one
/// writer (injection) takes them all.
pub struct StripedGate {
    stripes: [CachePadded<RwLock<()>>; STRIPES],
}

impl Default for StripedGate {
    fn default() -> Self {
        StripedGate {
            stripes: std::array::from_fn(|_| CachePadded::new(RwLock::new(()))),
        }
    }
}

impl StripedGate {
    /// Shared: no writer holds the gate while this guard lives. A poisoned stripe (a
    /// panicking writer) still admits readers; the gate guards no data of its own.
    pub fn read(&self) -> RwLockReadGuard<'_, ()> {
        self.stripes[stripe()]
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Exclusive: waits for every reader, in stripe order (so two writers cannot deadlock).
    pub fn write(&self) -> Vec<RwLockWriteGuard<'_, ()>> {
        self.stripes
            .iter()
            .map(|s| s.write().unwrap_or_else(std::sync::PoisonError::into_inner))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counter_sums_what_every_thread_added() {
        let c = Arc::new(StripedCounter::new(1000));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(3);
                        c.sub(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 1000 + 8 * 1000 * 2);
    }

    #[test]
    fn a_stripe_can_go_below_zero_and_the_sum_stays_right() {
        let c = StripedCounter::new(5);
        // Stripe 0 holds the initial value; another thread's stripe goes negative.
        std::thread::scope(|s| {
            s.spawn(|| c.sub(3));
        });
        assert_eq!(c.get(), 2);
    }

    #[test]
    fn the_writer_waits_for_readers_on_other_threads() {
        let gate = Arc::new(StripedGate::default());
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let reader = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let _g = gate.read();
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
        };
        held_rx.recv().unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (gate, done) = (gate.clone(), done.clone());
            std::thread::spawn(move || {
                let _w = gate.write();
                done.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!done.load(Ordering::SeqCst), "writer got in past a reader");
        release_tx.send(()).unwrap();
        reader.join().unwrap();
        writer.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
    }
}
