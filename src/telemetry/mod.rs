//! Telemetry from the hot paths: lock-free per-vCPU counters plus fault events through
//! bounded channels that never block (a full channel counts a drop), one per vCPU so
//! faulting vCPUs never contend on one queue. The aggregator folds events into histograms
//! off the hot path.
//!
//! Owns the counters and the event stream. Knows nothing of KVM or of the UI.

mod aggregate;
mod blocked;
pub mod schedstat;

pub use aggregate::Aggregate;

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use crossbeam_utils::CachePadded;

use crate::striped::StripedCounter;

/// Events that may wait for the aggregator, over all channels: about a second of faults
/// at full speed.
const EVENT_CAPACITY: usize = 1 << 20;
/// The least room a channel gets, however many vCPUs share [`EVENT_CAPACITY`].
const MIN_CHANNEL_CAPACITY: usize = 4096;

/// One thing that happened, with times in nanoseconds since the telemetry epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// A vCPU (None: a thread that is not a vCPU) waited for the page at `gpa`.
    Fault {
        vcpu: Option<u16>,
        gpa: u64,
        start_ns: u64,
        end_ns: u64,
    },
    /// A range was made missing again; the vCPUs were paused for `pause_ns`.
    Inject {
        gpa: u64,
        pages: u64,
        at_ns: u64,
        pause_ns: u64,
    },
}

/// Live per-vCPU counters.
#[derive(Debug, Default)]
pub struct VcpuCounters {
    pub faults: AtomicU64,
    pub stall_ns: AtomicU64,
    /// When the current stall began (ns since epoch + 1), 0 when running.
    pub stalled_since: AtomicU64,
    pub stalled_gpa: AtomicU64,
}

/// Live run-wide counters, added to by every faulting thread (so striped).
#[derive(Debug, Default)]
pub struct RunCounters {
    pub pages_demand: StripedCounter,
    pub pages_pushed: StripedCounter,
    /// Pages brought in by prefetch beside the faulting pages, and how many of them the
    /// vCPUs' streams went on past (used).
    pub pages_prefetched: StripedCounter,
    pub prefetch_used: StripedCounter,
    pub pages_injected: StripedCounter,
    pub pages_refetched: StripedCounter,
    pub bytes_transferred: StripedCounter,
    pub checksum_mismatches: StripedCounter,
    /// Faults from threads that are not vCPUs.
    pub unattributed_faults: StripedCounter,
}

pub struct Telemetry {
    /// Off: no stall accounting, no events (the benchmark's baseline for the observer cost).
    enabled: bool,
    /// Two reads per fault: the TSC through quanta (calibrated against the monotonic
    /// clock) costs a fraction of a clock_gettime.
    clock: quanta::Clock,
    raw_epoch: u64,
    /// One channel per vCPU, then one for everything else (injections, unattributed
    /// faults).
    channels: Vec<(Sender<Event>, Receiver<Event>)>,
    dropped: AtomicU64,
    /// A cache line each: every vCPU writes its own on every fault.
    pub vcpus: Vec<CachePadded<VcpuCounters>>,
    pub run: RunCounters,
}

/// A stall in progress, returned by [`Telemetry::stall_begin`].
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    vcpu: Option<usize>,
    gpa: u64,
    start_ns: u64,
}

impl Stall {
    /// The vCPU that waits, where known.
    pub fn vcpu(&self) -> Option<usize> {
        self.vcpu
    }
}

impl Telemetry {
    pub fn new(vcpus: usize) -> Telemetry {
        let per_channel = (EVENT_CAPACITY / (vcpus + 1)).max(MIN_CHANNEL_CAPACITY);
        Telemetry::with_capacity(vcpus, per_channel, true)
    }

    /// Each vCPU's channel holds `capacity` events until the aggregator reads them;
    /// `enabled` false turns the observer off.
    pub fn with_capacity(vcpus: usize, capacity: usize, enabled: bool) -> Telemetry {
        let capacity = if enabled { capacity.max(1) } else { 1 };
        let clock = quanta::Clock::new();
        Telemetry {
            enabled,
            clock: clock.clone(),
            raw_epoch: clock.raw(),
            channels: (0..=vcpus).map(|_| bounded(capacity)).collect(),
            dropped: AtomicU64::new(0),
            vcpus: (0..vcpus).map(|_| CachePadded::default()).collect(),
            run: RunCounters::default(),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.clock.delta_as_nanos(self.raw_epoch, self.clock.raw())
    }

    /// Every event waiting for the aggregator, channel by channel (each in order).
    pub fn drain(&self) -> impl Iterator<Item = Event> + '_ {
        self.channels.iter().flat_map(|(_, r)| r.try_iter())
    }

    /// Events waiting, over all channels.
    pub fn pending(&self) -> usize {
        self.channels.iter().map(|(_, r)| r.len()).sum()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn emit(&self, e: Event) {
        if !self.enabled {
            return;
        }
        let vcpu = match e {
            Event::Fault { vcpu, .. } => vcpu.map(usize::from),
            Event::Inject { .. } => None,
        };
        let last = self.channels.len() - 1;
        let (tx, _) = &self.channels[vcpu.map_or(last, |v| v.min(last))];
        if let Err(TrySendError::Full(_)) = tx.try_send(e) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A vCPU starts waiting for the page at `gpa`.
    pub fn stall_begin(&self, vcpu: Option<usize>, gpa: u64) -> Stall {
        if !self.enabled {
            return Stall {
                vcpu,
                gpa,
                start_ns: 0,
            };
        }
        let start_ns = self.now_ns();
        if let Some(c) = vcpu.and_then(|v| self.vcpus.get(v)) {
            c.stalled_gpa.store(gpa, Ordering::Relaxed);
            c.stalled_since.store(start_ns + 1, Ordering::Release);
        }
        Stall {
            vcpu,
            gpa,
            start_ns,
        }
    }

    /// The page of `stall` is present; the vCPU runs again.
    pub fn stall_end(&self, stall: Stall) {
        if !self.enabled {
            return;
        }
        let end_ns = self.now_ns();
        let counters = stall.vcpu.and_then(|v| self.vcpus.get(v));
        if let Some(c) = counters {
            // The total grows before the stall is cleared: an observer adding the two
            // may count this stall twice for an instant, never miss it.
            c.stall_ns
                .fetch_add(end_ns - stall.start_ns, Ordering::Release);
            c.faults.fetch_add(1, Ordering::Relaxed);
        } else {
            self.run.unattributed_faults.add(1);
        }
        // The event goes out before the stall is cleared, so whoever sees it cleared
        // finds the event (the all-blocked accounting relies on it: blocked.rs).
        self.emit(Event::Fault {
            vcpu: stall.vcpu.map(|v| v as u16),
            gpa: stall.gpa,
            start_ns: stall.start_ns,
            end_ns,
        });
        if let Some(c) = counters {
            // Only our own stall: in uffd mode the vCPU may already be in its next one,
            // begun by another reader.
            let _ = c.stalled_since.compare_exchange(
                stall.start_ns + 1,
                0,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
    }

    /// For each vCPU, when the stall it is in began, if it is in one.
    pub fn stalls_in_progress(&self) -> Vec<Option<u64>> {
        self.vcpus
            .iter()
            .map(|c| c.stalled_since.load(Ordering::Acquire).checked_sub(1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_add_up_per_vcpu_and_all_blocked_time_is_counted() {
        let t = Telemetry::new(2);
        let mut aggregate = Aggregate::new(2).unwrap();
        let a = t.stall_begin(Some(0), 0x1000);
        let b = t.stall_begin(Some(1), 0x2000);
        std::thread::sleep(std::time::Duration::from_millis(2));
        // A window that ends while both stall: counted from the stalls in progress.
        let (until, open) = (t.now_ns(), t.stalls_in_progress());
        assert!(open.iter().all(Option::is_some));
        aggregate.advance_blocked(until, &open);
        assert!(aggregate.blocktime_all_ns() >= 2_000_000);
        t.stall_end(a);
        t.stall_end(b);
        assert_eq!(t.stalls_in_progress(), vec![None, None]);
        assert_eq!(t.vcpus[0].faults.load(Ordering::Relaxed), 1);
        assert!(t.vcpus[1].stall_ns.load(Ordering::Relaxed) >= 2_000_000);
        assert_eq!(t.pending(), 2);
        let (until, open) = (t.now_ns(), t.stalls_in_progress());
        for e in t.drain() {
            aggregate.fold(&e);
        }
        aggregate.advance_blocked(until, &open);
        // Both were stalled from b's start to a's end: at most a's whole stall.
        let both = t.vcpus[0].stall_ns.load(Ordering::Relaxed);
        assert!(aggregate.blocktime_all_ns() <= both, "{both}");
        assert!(aggregate.blocktime_all_ns() >= 2_000_000);
    }

    #[test]
    fn ending_a_stall_leaves_a_newer_one_of_the_same_vcpu_marked() {
        let t = Telemetry::new(1);
        let first = t.stall_begin(Some(0), 0x1000);
        std::thread::sleep(std::time::Duration::from_micros(10));
        // Another uffd reader has begun the vCPU's next stall before the first is ended.
        let second = t.stall_begin(Some(0), 0x2000);
        t.stall_end(first);
        assert!(t.stalls_in_progress()[0].is_some());
        t.stall_end(second);
        assert_eq!(t.stalls_in_progress()[0], None);
    }

    #[test]
    fn a_full_channel_counts_drops_instead_of_blocking() {
        let t = Telemetry::with_capacity(1, 100, true);
        for _ in 0..100 + 3 {
            t.emit(Event::Inject {
                gpa: 0,
                pages: 1,
                at_ns: 0,
                pause_ns: 0,
            });
        }
        assert_eq!(t.dropped(), 3);
    }

    #[test]
    fn each_vcpu_has_its_own_channel_and_the_drain_sees_them_all() {
        let t = Telemetry::with_capacity(2, 1, true);
        for vcpu in [Some(0), Some(1), None] {
            t.emit(Event::Fault {
                vcpu,
                gpa: 0,
                start_ns: 0,
                end_ns: 1,
            });
        }
        // Capacity 1 each: a second event for vCPU 0 is dropped, not queued elsewhere.
        t.emit(Event::Fault {
            vcpu: Some(0),
            gpa: 0,
            start_ns: 0,
            end_ns: 1,
        });
        assert_eq!(t.dropped(), 1);
        let seen: Vec<Option<u16>> = t
            .drain()
            .map(|e| match e {
                Event::Fault { vcpu, .. } => vcpu,
                Event::Inject { .. } => None,
            })
            .collect();
        assert_eq!(seen, vec![Some(0), Some(1), None]);
    }

    #[test]
    fn disabled_telemetry_records_nothing() {
        let t = Telemetry::with_capacity(1, 16, false);
        let s = t.stall_begin(Some(0), 0x1000);
        t.stall_end(s);
        assert_eq!(t.vcpus[0].faults.load(Ordering::Relaxed), 0);
        assert_eq!(t.vcpus[0].stalled_since.load(Ordering::Relaxed), 0);
        assert_eq!(t.pending(), 0);
    }
}
