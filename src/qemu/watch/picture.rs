//! The watcher's picture of the migration at one moment: the common snapshot, and what a
//! QEMU migration adds to it (QEMU's state and figures, the three clocks per vCPU).

use super::{Watcher, phase_of, wall_us};
use crate::contract::{
    Activity, MemoryMap, PageCounts, Phase, QemuVcpu, QemuView, Snapshot, VcpuSnapshot,
};
use crate::telemetry::schedstat::ThreadClock;

impl Watcher {
    /// The off-CPU window: from the vCPUs' start post-copy to completion (or now), as
    /// (start, end) ns since the epoch of the nearest schedstat readings inside it.
    pub(super) fn window(&self, now: u64) -> Option<(u64, u64)> {
        let from = self.book.ns_of(self.postcopy_from_us?);
        let to = self.completed_at_us.map_or(now, |c| self.book.ns_of(c));
        Some((from, to))
    }

    pub(super) fn qemu_view(&self, now: u64) -> QemuView {
        let window = self.window(now);
        let mut shown = None;
        let vcpus = (0..self.book.vcpus())
            .map(|v| {
                let clock = self.clocks.get(v);
                let measured = window.and_then(|(from, to)| clock?.off_cpu_within(from, to));
                if shown.is_none() {
                    shown = measured.map(|(a, b, _)| (a / 1_000_000, b / 1_000_000));
                }
                QemuVcpu {
                    vcpu: v,
                    thread_id: clock.map(ThreadClock::tid),
                    stall_ms: measured
                        .map(|(a, b, _)| self.book.stall_ns_within(v, a, b) as f64 / 1e6),
                    offcpu_ms: measured.map(|(_, _, off)| off as f64 / 1e6),
                    qemu_blocktime_ms: self.qemu_vcpu_blocktime_ms.get(v).copied().flatten(),
                }
            })
            .collect();
        QemuView {
            version: self.dst.version().to_string(),
            state: self.state.clone(),
            pages_known: self.source.is_some(),
            trace_events: self.trace_events,
            trace_garbage: self.trace_garbage,
            non_vcpu_faults: self.book.non_vcpu_faults(),
            blocktime_ms: self.qemu_blocktime_ms,
            window_ms: shown,
            vcpus,
        }
    }

    pub(super) fn pages(&self) -> PageCounts {
        match &self.source {
            Some(s) => {
                let total = s.total / s.page_size;
                let missing = s.remaining / s.page_size;
                let demand = s.requests.min(total);
                PageCounts {
                    total,
                    boot: 0,
                    demand,
                    pushed: total.saturating_sub(missing).saturating_sub(demand),
                    injected: 0,
                    missing,
                    in_flight: 0,
                    prefetched: 0,
                }
            }
            None => PageCounts {
                total: self.info.mem_bytes / self.info.page_size,
                ..PageCounts::default()
            },
        }
    }

    pub(super) fn pace(&self, v: usize) -> f64 {
        match (self.progress_window.front(), self.progress_window.back()) {
            (Some((t0, a)), Some((t1, b))) if t1 > t0 => {
                let d = b.get(v).copied().unwrap_or(0) - a.get(v).copied().unwrap_or(0);
                d as f64 / (*t1 - *t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    pub(super) fn snapshot(&mut self, now: u64) -> Snapshot {
        self.seq += 1;
        let phase = phase_of(&self.state);
        let vcpus = (0..self.book.vcpus())
            .map(|v| VcpuSnapshot {
                id: v,
                activity: match (self.state.as_str(), self.book.activity(v, now)) {
                    ("postcopy-paused", Activity::Running) => Activity::Paused,
                    (_, a) => a,
                },
                faults: self.book.faults(v),
                faults_per_sec: self.book.faults_in_last_second(v) as f64,
                stall_share: self.book.stall_share(v, now),
                stall_ms: self.book.stall_ns(v, now) as f64 / 1e6,
                latency: self.book.vcpu_latency(v),
                progress_per_sec: self.pace(v),
                baseline_per_sec: self.baseline.get(v).copied().unwrap_or(0.0),
                sparkline: self.book.sparkline(v),
                histogram: self.book.vcpu_histogram(v),
                top_regions: Vec::new(),
            })
            .collect();
        let pages = self.pages();
        let postcopy_ms = self.postcopy_from_us.map_or(0, |p| {
            self.completed_at_us
                .unwrap_or_else(wall_us)
                .saturating_sub(p)
                / 1000
        });
        let fill_rate = self
            .source
            .as_ref()
            .map_or(0.0, |s| s.bytes_per_sec as f64 / s.page_size as f64);
        // Post-copy without a single event: QEMU is not tracing what the view needs.
        let silent = (phase == Phase::Postcopy && self.trace_events == 0 && postcopy_ms > 3000)
            .then(|| {
                if self.trace_unstamped > 0 {
                    format!(
                        "{}: post-copy events without timestamps: start QEMU with -msg timestamp=on",
                        self.target.trace.display()
                    )
                } else {
                    format!(
                        "no post-copy events in {} yet: is QEMU run with -trace 'mark_postcopy_blocktime_*' -trace 'postcopy_blocktime_*', and postcopy-blocktime set on the destination?",
                        self.target.trace.display()
                    )
                }
            });
        Snapshot {
            seq: self.seq,
            elapsed_ms: self.start.elapsed().as_millis() as u64,
            run: self.info.clone(),
            phase,
            migration: self.migration,
            postcopy_ms,
            exit_path: None,
            throttle: self.throttle.map_or_else(|| "-".into(), |r| r.to_string()),
            throttle_bytes_per_sec: self.throttle.and_then(|r| r.bytes_per_sec()),
            transfer_bytes_per_sec: self.source.as_ref().map_or(0, |s| s.bytes_per_sec),
            downtime_us: self.source.as_ref().and_then(|s| s.downtime_us),
            push_enabled: true,
            prefetch: None,
            link_up: match self.state.as_str() {
                "postcopy-active" => Some(true),
                "postcopy-paused" | "postcopy-recover" | "postcopy-recover-setup" => Some(false),
                _ => None,
            },
            pages,
            fill_pages_per_sec: fill_rate,
            eta_ms: (phase == Phase::Postcopy && fill_rate > 0.0)
                .then(|| (pages.missing as f64 / fill_rate * 1000.0) as u64),
            blocktime_all_ms: self.book.blocktime_all_ns() as f64 / 1e6,
            telemetry_dropped: 0,
            vcpus,
            latency: self.book.latency(),
            histogram: self.book.histogram().clone(),
            memory_map: MemoryMap::default(),
            stall_heatmap: self.book.stall_heatmap(now),
            fault_heatmap: self.book.fault_heatmap(),
            fault_region_bytes: self.book.fault_region_bytes(),
            injections: Vec::new(),
            message: silent.or_else(|| self.message.clone()),
            summary: None,
            qemu: Some(self.qemu_view(now)),
        }
    }
}
