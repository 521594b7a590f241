//! One token bucket, in bytes per second, over all page traffic (demand and push). Lock-free
//! (virtual scheduling on one atomic), and its rate can change while the run goes on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::units::Rate;

/// Idle time that may be caught up in a burst.
const BURST: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub struct Throttle {
    /// Bytes per second; 0 means unlimited.
    rate: AtomicU64,
    /// Nanoseconds since `epoch` at which the bucket is next free.
    next_free_ns: AtomicU64,
    epoch: Instant,
}

impl Throttle {
    pub fn new(rate: Rate) -> Throttle {
        Throttle {
            rate: AtomicU64::new(rate.bytes_per_sec().unwrap_or(0)),
            next_free_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn rate(&self) -> Rate {
        match self.rate.load(Ordering::Relaxed) {
            0 => Rate::Unlimited,
            b => Rate::BytesPerSec(b),
        }
    }

    pub fn set_rate(&self, rate: Rate) {
        self.rate
            .store(rate.bytes_per_sec().unwrap_or(0), Ordering::Relaxed);
    }

    /// Reserves `bytes` of the budget and returns how long the caller must wait before
    /// sending them (zero when unlimited or under the rate).
    pub fn reserve(&self, bytes: u64) -> Duration {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return Duration::ZERO;
        }
        let cost = (u128::from(bytes) * 1_000_000_000 / u128::from(rate)) as u64;
        let now = self.epoch.elapsed().as_nanos() as u64;
        let floor = now.saturating_sub(BURST.as_nanos() as u64);
        let mut cur = self.next_free_ns.load(Ordering::Relaxed);
        loop {
            let begin = cur.max(floor);
            match self.next_free_ns.compare_exchange_weak(
                cur,
                begin + cost,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Duration::from_nanos(begin.saturating_sub(now)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Blocks until `bytes` may be sent.
    pub fn acquire(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let t = Throttle::new(Rate::Unlimited);
        assert_eq!(t.reserve(1 << 30), Duration::ZERO);
    }

    #[test]
    fn reservations_queue_up_at_the_rate() {
        let t = Throttle::new(Rate::BytesPerSec(1 << 20));
        // The first MiB goes now; each further MiB is scheduled one second later.
        let first = t.reserve(1 << 20);
        let second = t.reserve(1 << 20);
        let third = t.reserve(1 << 20);
        assert!(first <= BURST);
        assert!(second >= Duration::from_millis(990) && second <= Duration::from_secs(1));
        assert!(third >= Duration::from_millis(1990));
    }

    #[test]
    fn rate_changes_apply_to_later_reservations() {
        let t = Throttle::new(Rate::BytesPerSec(1 << 20));
        t.set_rate(Rate::Unlimited);
        assert_eq!(t.rate(), Rate::Unlimited);
        assert_eq!(t.reserve(1 << 30), Duration::ZERO);
    }
}
