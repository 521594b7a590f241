//! A QEMU migration's summary: faultline's figures with QEMU's and the kernel's beside them.

use super::Watcher;
use crate::contract::Snapshot;
use crate::contract::{Summary, VcpuSummary, VerifySummary};

impl Watcher {
    /// The run's summary: faultline's figures, QEMU's and the kernel's side by side.
    /// `verified` is the guest's own check where it is faultline's guest; for another
    /// guest, that the migration completed.
    pub fn summary(&mut self, last: &Snapshot) -> Summary {
        let now = self.ns_now();
        let view = self.qemu_view(now);
        let progress = self.console.as_ref().map(|(_, c)| c.progress.clone());
        let mismatches = self.guest_mismatches().unwrap_or(0);
        let per_vcpu = (0..self.book.vcpus())
            .map(|v| VcpuSummary {
                vcpu: v,
                fault_exits: self.book.faults(v),
                stall_ms: self.book.stall_ns(v, now) as f64 / 1e6,
                latency_us: self.book.latency_summary(Some(v)),
                guest_progress: progress
                    .as_ref()
                    .and_then(|p| p.get(v).copied())
                    .unwrap_or(0),
                offcpu_ms: view.vcpus.get(v).and_then(|q| q.offcpu_ms),
                qemu_blocktime_ms: view.vcpus.get(v).and_then(|q| q.qemu_blocktime_ms),
            })
            .collect();
        let s = self.source.clone().unwrap_or_default();
        let pages = last.pages;
        let completed = self.state == "completed";
        Summary {
            scenario: self.info.scenario.clone(),
            mode: self.info.mode,
            exit_path: None,
            workload: self.info.workload.clone(),
            vcpus: self.info.vcpus,
            mem_bytes: self.info.mem_bytes,
            backing: None,
            transport: None,
            page_size: self.info.page_size,
            pages_total: pages.total,
            pages_boot: 0,
            pages_demand: pages.demand,
            pages_pushed: pages.pushed,
            pages_injected: 0,
            pages_refetched: 0,
            pages_prefetched: 0,
            prefetch_used: 0,
            prefetch: String::new(),
            migrations: self.migration,
            downtime_us: s.downtime_us.unwrap_or(0),
            postcopy_ms: last.postcopy_ms,
            postcopy_complete: completed,
            bytes_transferred: s.transferred,
            transfer_bytes_per_sec: (s.postcopy_bytes as f64
                / (last.postcopy_ms.max(1) as f64 / 1000.0))
                as u64,
            throttle: last.throttle.clone(),
            throttle_initial: None,
            blocktime_all_ms: self.book.blocktime_all_ns() as f64 / 1e6,
            injections: Vec::new(),
            verified: completed && mismatches == 0 && self.trace_events > 0,
            verify: VerifySummary {
                pages_checked: 0,
                mismatches,
                guest_errors: 0,
            },
            telemetry_dropped: 0,
            latency_us: self.book.latency_summary(None),
            per_vcpu,
            reconnects: 0,
            legs: Vec::new(),
            qemu: Some(view),
        }
    }
}
