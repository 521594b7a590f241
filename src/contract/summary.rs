//! What a run comes to: the summary every front end prints, records and replays.

use serde::{Deserialize, Serialize};

use super::qemu::QemuView;
use super::run::{Backing, FaultMode, Transport};

/// Fault latency percentiles, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifySummary {
    pub pages_checked: u64,
    pub mismatches: u64,
    pub guest_errors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VcpuSummary {
    pub vcpu: usize,
    pub fault_exits: u64,
    pub stall_ms: f64,
    pub latency_us: LatencySummary,
    pub guest_progress: u64,
    /// The vCPU thread's time off the CPU over the same window (QEMU migrations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offcpu_ms: Option<f64>,
    /// QEMU's own `postcopy-vcpu-blocktime` for this vCPU (QEMU migrations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_blocktime_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InjectionSummary {
    pub gpa: u64,
    pub pages: u64,
    /// How long every vCPU was paused for it (0 with shared memory, which needs no pause).
    pub pause_us: u64,
    /// How long the range was out of the guest's reach before its pages were missing
    /// (absent in older recordings).
    #[serde(default)]
    pub unavailable_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub scenario: String,
    pub mode: FaultMode,
    pub exit_path: Option<String>,
    pub workload: String,
    pub vcpus: usize,
    pub mem_bytes: u64,
    /// The destination's memory backing: anon or shmem (none for a QEMU migration).
    pub backing: Option<Backing>,
    /// How pages travelled: local or tcp (none for a QEMU migration).
    #[serde(default = "local_transport")]
    pub transport: Option<Transport>,
    pub page_size: u64,
    pub pages_total: u64,
    pub pages_boot: u64,
    pub pages_demand: u64,
    pub pages_pushed: u64,
    pub pages_injected: u64,
    pub pages_refetched: u64,
    /// Pages brought in by prefetch beside faults' pages, and of those the ones the
    /// vCPUs' streams went on past (used, as far as the faults show); the strategy in
    /// force at the end. Absent in older recordings.
    #[serde(default)]
    pub pages_prefetched: u64,
    #[serde(default)]
    pub prefetch_used: u64,
    #[serde(default)]
    pub prefetch: String,
    /// Migrations in this run (the operator can start more); the figures are the last
    /// one's, and [`Summary::legs`] has each one's.
    pub migrations: u32,
    pub downtime_us: u64,
    pub postcopy_ms: u64,
    pub postcopy_complete: bool,
    pub bytes_transferred: u64,
    pub transfer_bytes_per_sec: u64,
    /// The fetch-rate limit in force at the end (the operator may have changed it).
    pub throttle: String,
    /// The limit the run started with; absent in older recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_initial: Option<String>,
    pub blocktime_all_ms: f64,
    pub injections: Vec<InjectionSummary>,
    pub verified: bool,
    pub verify: VerifySummary,
    pub telemetry_dropped: u64,
    pub latency_us: LatencySummary,
    pub per_vcpu: Vec<VcpuSummary>,
    /// Connections to the source that broke under a request and were replaced (pages over
    /// TCP), in the last migration; absent in older recordings.
    #[serde(default)]
    pub reconnects: u64,
    /// Each migration of the run, oldest first; absent in older recordings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<LegSummary>,
    /// A real QEMU migration's own figures and the vCPU threads' off-CPU times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<QemuView>,
}

impl Summary {
    /// The one word a summary ends on.
    pub fn verdict(&self) -> &'static str {
        if self.verified {
            "verified"
        } else {
            "NOT VERIFIED"
        }
    }
}

fn local_transport() -> Option<Transport> {
    Some(Transport::Local)
}

/// One migration of a run: what it cost and what its checks found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LegSummary {
    pub migration: u32,
    pub downtime_us: u64,
    pub postcopy_ms: u64,
    pub postcopy_complete: bool,
    pub pages_demand: u64,
    pub pages_pushed: u64,
    pub pages_injected: u64,
    #[serde(default)]
    pub pages_prefetched: u64,
    #[serde(default)]
    pub prefetch_used: u64,
    pub bytes_transferred: u64,
    /// The fetch-rate limit in force when it ended.
    pub throttle: String,
    /// Stall summed over its vCPUs.
    pub stall_ms: f64,
    pub blocktime_all_ms: f64,
    pub latency_us: LatencySummary,
    pub pages_checked: u64,
    pub mismatches: u64,
}
