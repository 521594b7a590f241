//! What an observer sees of a run at one moment: everything the TUI draws, and what the
//! control socket and recordings carry. Plain data with no references into the engine, so
//! the same picture can come from a live engine, a socket or a file.

use serde::{Deserialize, Serialize};

use super::run::{Backing, FaultMode, Transport};

use super::qemu::QemuView;
use super::summary::Summary;

/// Latency buckets on a log-2 scale: bucket `i` counts faults of `[2^i, 2^(i+1))` µs, the
/// last one everything from about a second up.
pub const LATENCY_BUCKETS: usize = 21;

/// Cells in the memory map and rows in the fault heatmap (regions of equal size).
pub const MAP_CELLS: usize = 512;
pub const FAULT_HEATMAP_ROWS: usize = 64;

/// Heatmap columns kept, oldest first, each [`HEATMAP_COLUMN_MS`] long.
pub const HEATMAP_COLUMNS: usize = 120;
pub const HEATMAP_COLUMN_MS: u64 = 500;

/// Points in each vCPU's fault sparkline (one per heatmap column).
pub const SPARKLINE_POINTS: usize = 40;

/// Top regions by stall time kept per vCPU for the detail view.
pub const TOP_REGIONS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Phase {
    Warmup = 0,
    Switchover = 1,
    Postcopy = 2,
    /// Every page is on the destination; the guest runs on.
    Complete = 3,
    /// The run has ended and been checked.
    Finished = 4,
    Failed = 5,
}

impl Phase {
    pub fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Warmup,
            1 => Phase::Switchover,
            2 => Phase::Postcopy,
            3 => Phase::Complete,
            4 => Phase::Finished,
            _ => Phase::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Warmup => "warm-up",
            Phase::Switchover => "switchover",
            Phase::Postcopy => "post-copy",
            Phase::Complete => "complete",
            Phase::Finished => "finished",
            Phase::Failed => "failed",
        }
    }
}

/// What a run is: fixed for its whole life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub scenario: String,
    pub mode: FaultMode,
    pub workload: String,
    pub vcpus: usize,
    pub mem_bytes: u64,
    /// The destination's memory backing (`shmem`, `anon`); absent in older recordings.
    #[serde(default)]
    pub backing: Option<Backing>,
    /// How pages travel (`local`, `tcp`); absent in older recordings.
    #[serde(default)]
    pub transport: Option<Transport>,
    /// Where a source in another process served the guest from (`faultline source`);
    /// absent when the source ran in this process, and in older recordings.
    #[serde(default)]
    pub source: Option<String>,
    pub page_size: u64,
    /// The host that ran it: kernel release and KVM flavour (absent in older recordings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Pages of the current migration by where they are now (demand and pushed count pages
/// present, a refetched page once); `injected` counts pages made missing so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCounts {
    pub total: u64,
    pub boot: u64,
    pub demand: u64,
    pub pushed: u64,
    pub injected: u64,
    pub missing: u64,
    pub in_flight: u64,
    /// Present, brought in by prefetch beside a fault's page (absent in older recordings).
    #[serde(default)]
    pub prefetched: u64,
}

/// Page counts of one memory-map cell, by state. Cells merge by adding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapCell {
    pub missing: u32,
    pub in_flight: u32,
    pub demand: u32,
    pub pushed: u32,
    pub boot: u32,
    /// Pages made missing again at least once (any state now).
    pub injected: u32,
    #[serde(default)]
    pub prefetched: u32,
}

impl MapCell {
    pub fn total(&self) -> u32 {
        self.missing + self.in_flight + self.demand + self.pushed + self.boot + self.prefetched
    }

    pub fn merge(&mut self, o: &MapCell) {
        self.missing += o.missing;
        self.in_flight += o.in_flight;
        self.demand += o.demand;
        self.pushed += o.pushed;
        self.boot += o.boot;
        self.injected += o.injected;
        self.prefetched += o.prefetched;
    }
}

/// Guest RAM in `cells.len()` equal regions of `region_bytes` (the last may be shorter).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryMap {
    pub region_bytes: u64,
    pub cells: Vec<MapCell>,
}

/// Rows by time: `rows[r][c]`, column 0 oldest, the last column still filling.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heatmap<T> {
    pub column_ms: u64,
    pub rows: Vec<Vec<T>>,
}

/// Log-2 latency histogram in µs (see [`LATENCY_BUCKETS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyBuckets {
    pub counts: Vec<u64>,
}

impl LatencyBuckets {
    pub fn empty() -> LatencyBuckets {
        LatencyBuckets {
            counts: vec![0; LATENCY_BUCKETS],
        }
    }

    /// The bucket a latency of `us` microseconds falls in.
    pub fn bucket_of(us: u64) -> usize {
        (63 - us.max(1).leading_zeros() as usize).min(LATENCY_BUCKETS - 1)
    }

    /// The lower bound of bucket `i` in µs.
    pub fn lower_us(i: usize) -> u64 {
        1u64 << i
    }

    pub fn record(&mut self, us: u64) {
        if let Some(c) = self.counts.get_mut(Self::bucket_of(us)) {
            *c += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What a vCPU is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum Activity {
    Running,
    /// Waiting for the page at `gpa` since `for_us` ago.
    Stalled {
        gpa: u64,
        for_us: u64,
    },
    Paused,
    Done,
    Failed,
}

/// A region of guest memory and how much a vCPU waited on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionStall {
    pub gpa: u64,
    pub bytes: u64,
    pub stall_us: u64,
    pub faults: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuSnapshot {
    pub id: usize,
    pub activity: Activity,
    /// Fault exits (or uffd faults attributed to it) in this migration.
    pub faults: u64,
    /// Over the last second.
    pub faults_per_sec: f64,
    /// Share of the last second spent stalled, 0 to 1.
    pub stall_share: f64,
    pub stall_ms: f64,
    pub latency: Latency,
    /// Guest accesses per second now, and before the switchover (its own baseline).
    pub progress_per_sec: f64,
    pub baseline_per_sec: f64,
    /// Faults per heatmap column, oldest first.
    pub sparkline: Vec<u32>,
    pub histogram: LatencyBuckets,
    /// Its regions by stall time, largest first.
    pub top_regions: Vec<RegionStall>,
}

/// A region made missing again, and how long the guest was paused for it; `at_ms` counts
/// from the current migration's switchover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectionRecord {
    pub gpa: u64,
    pub pages: u64,
    pub pause_us: u64,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Counts up by one per snapshot of a run.
    pub seq: u64,
    /// Since the run started.
    pub elapsed_ms: u64,
    pub run: RunInfo,
    pub phase: Phase,
    /// Migrations so far (the operator can start new ones); 1 for the first.
    pub migration: u32,
    /// Since the current migration's switchover; 0 before it.
    pub postcopy_ms: u64,
    /// The fault path seen most in exit mode ("mmio", "memory-fault", ...).
    pub exit_path: Option<String>,
    /// The fetch-rate limit as the operator would type it ("40 MiB/s", "unlimited").
    pub throttle: String,
    pub throttle_bytes_per_sec: Option<u64>,
    /// Bytes from the source per second over the last second.
    pub transfer_bytes_per_sec: u64,
    pub downtime_us: Option<u64>,
    pub push_enabled: bool,
    /// What prefetch does, where faultline resolves the faults (absent for QEMU feeds and
    /// in older recordings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<super::PrefetchStatus>,
    /// Whether the link to the source is up, when pages travel over TCP (the operator can
    /// take it down); absent for local copies and in older recordings.
    #[serde(default)]
    pub link_up: Option<bool>,
    pub pages: PageCounts,
    pub fill_pages_per_sec: f64,
    /// Until no page is missing at the current fill rate.
    pub eta_ms: Option<u64>,
    pub blocktime_all_ms: f64,
    pub telemetry_dropped: u64,
    pub vcpus: Vec<VcpuSnapshot>,
    pub latency: Latency,
    pub histogram: LatencyBuckets,
    pub memory_map: MemoryMap,
    /// vCPUs by time, each cell the percentage (0 to 100) of the column spent stalled.
    pub stall_heatmap: Heatmap<u8>,
    /// Regions of guest memory ([`FAULT_HEATMAP_ROWS`] equal parts) by time, fault counts.
    pub fault_heatmap: Heatmap<u32>,
    pub fault_region_bytes: u64,
    /// The newest last.
    pub injections: Vec<InjectionRecord>,
    /// The engine's last notable event or error, for the status line.
    pub message: Option<String>,
    /// Present once the run has ended and been checked.
    pub summary: Option<Summary>,
    /// What a feed following a real QEMU adds; absent for faultline's own runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<QemuView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_info_from_before_backings_still_reads() {
        let old = r#"{"scenario":"default","mode":"exit","workload":"touch","vcpus":2,
                      "mem_bytes":67108864,"page_size":4096}"#;
        let info: RunInfo = serde_json::from_str(old).unwrap();
        assert_eq!(info.backing, None);
        assert_eq!(info.transport, None);
        assert_eq!(info.vcpus, 2);
    }

    #[test]
    fn snapshots_from_before_links_still_read() {
        let mut v = serde_json::to_value(crate::tui::fixture::snapshot(2, 1 << 30, 5)).unwrap();
        let fields = v.as_object_mut().unwrap();
        assert!(fields.remove("link_up").is_some());
        let s: Snapshot = serde_json::from_value(v).unwrap();
        assert_eq!(s.link_up, None);
    }
}
