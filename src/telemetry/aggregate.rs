//! Folds telemetry events into per-vCPU latency histograms and the all-vCPUs-blocked time,
//! off the hot path.

use crate::contract::LatencySummary;
use hdrhistogram::{CreationError, Histogram};

use super::Event;
use super::blocked::AllBlocked;

pub struct Aggregate {
    /// Fault latency in microseconds, per vCPU.
    per_vcpu: Vec<Histogram<u64>>,
    all: Histogram<u64>,
    blocked: AllBlocked,
}

/// 1 µs to 1 h at 2 significant digits (1%): plenty for latency, and cheap to query.
fn histogram() -> Result<Histogram<u64>, CreationError> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2)
}

impl Aggregate {
    pub fn new(vcpus: usize) -> Result<Aggregate, CreationError> {
        Ok(Aggregate {
            per_vcpu: (0..vcpus).map(|_| histogram()).collect::<Result<_, _>>()?,
            all: histogram()?,
            blocked: AllBlocked::new(vcpus),
        })
    }

    pub fn fold(&mut self, e: &Event) {
        if let Event::Fault {
            vcpu: Some(v),
            start_ns,
            end_ns,
            ..
        } = *e
        {
            self.blocked.record(usize::from(v), start_ns, end_ns);
            let us = (end_ns.saturating_sub(start_ns) / 1000).max(1);
            if let Some(h) = self.per_vcpu.get_mut(usize::from(v)) {
                h.saturating_record(us);
            }
            self.all.saturating_record(us);
        }
    }

    /// Accounts all-vCPUs-blocked time up to `until_ns`, given the stalls in progress
    /// then ([`super::Telemetry::stalls_in_progress`], read before the events were folded).
    pub fn advance_blocked(&mut self, until_ns: u64, stalled_since: &[Option<u64>]) {
        self.blocked.advance(until_ns, stalled_since);
    }

    /// Time every vCPU spent stalled at once, as far as accounted.
    pub fn blocktime_all_ns(&self) -> u64 {
        self.blocked.total_ns()
    }

    fn summarize(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }

    pub fn vcpu_latency(&self, vcpu: usize) -> LatencySummary {
        self.per_vcpu
            .get(vcpu)
            .map(Self::summarize)
            .unwrap_or_default()
    }

    pub fn latency(&self) -> LatencySummary {
        Self::summarize(&self.all)
    }
}
