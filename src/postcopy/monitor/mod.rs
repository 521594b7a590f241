//! The monitor: at a fixed rate it reads the live counters and folds the telemetry events
//! of the current migration into a [`Snapshot`] for every subscriber. It runs on its own
//! thread; fault paths never wait for it, and it never waits for a subscriber.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(crate) mod arith;

use arith::{
    VcpuSample, empty_map, push_window, rates, region_size, roll, stall_percentages, top_regions,
    transpose,
};

use super::PostcopyError;
use super::page_state::PageState;
use super::status::{LiveMigration, RunStatus};
use crate::contract::LatencySummary;
use crate::contract::Summary;
use crate::contract::{
    Activity, FAULT_HEATMAP_ROWS, FaultMode, HEATMAP_COLUMN_MS, HEATMAP_COLUMNS, Heatmap,
    InjectionRecord, Latency, LatencyBuckets, MAP_CELLS, MapCell, MemoryMap, PageCounts, Phase,
    PrefetchStatus, RunInfo, SPARKLINE_POINTS, Snapshot, TOP_REGIONS, VcpuSnapshot,
};
use crate::telemetry::{Aggregate, Event};
use crate::vmm::RunState;
use crate::vmm::layout::{BOOT_PAGES, PAGE_SIZE};

/// Time between snapshots.
pub const TICK: Duration = Duration::from_millis(100);
/// Samples kept for "the last second" rates.
const WINDOW: usize = 11;
const MAX_INJECTIONS: usize = 16;
/// Pages of the page-state map read per snapshot (4 GiB of guest memory).
const SCAN_PAGES_PER_TICK: u64 = 1 << 20;

#[derive(Debug, Default)]
struct VcpuTrack {
    window: VecDeque<VcpuSample>,
    histogram: LatencyBuckets,
    /// Stall ns and faults per memory-map region.
    regions: Vec<(u64, u64)>,
    /// Faults per heatmap column, oldest first.
    spark: VecDeque<u32>,
}

#[derive(Debug, Clone, Copy)]
struct RunSample {
    at: Instant,
    bytes: u64,
    filled: u64,
}

pub struct Monitor {
    info: RunInfo,
    start: Instant,
    seq: u64,
    leg: Option<Arc<LiveMigration>>,
    aggregate: Aggregate,
    vcpus: Vec<VcpuTrack>,
    window: VecDeque<RunSample>,
    histogram: LatencyBuckets,
    map_region_bytes: u64,
    fault_region_bytes: u64,
    /// Index (since start) of the newest heatmap column.
    column: u64,
    stall_columns: VecDeque<Vec<u64>>,
    fault_columns: VecDeque<Vec<u32>>,
    injections: VecDeque<InjectionRecord>,
    message: Option<String>,
    /// The memory map as last read, and the next cell to read.
    cells: Vec<MapCell>,
    scan_cursor: usize,
    finished: Vec<super::outcome::LegAggregate>,
    /// Connections to the source lost so far in this migration, as last noted.
    lost_seen: u64,
}

fn latency(l: LatencySummary) -> Latency {
    Latency {
        p50_us: l.p50,
        p99_us: l.p99,
        max_us: l.max,
    }
}

impl Monitor {
    pub fn new(info: RunInfo) -> Result<Monitor, PostcopyError> {
        let vcpus = info.vcpus;
        let map_region_bytes = region_size(info.mem_bytes, MAP_CELLS);
        let cells = info.mem_bytes.div_ceil(map_region_bytes) as usize;
        let fault_region_bytes = region_size(info.mem_bytes, FAULT_HEATMAP_ROWS);
        let fault_rows = info.mem_bytes.div_ceil(fault_region_bytes) as usize;
        let mut m = Monitor {
            aggregate: Aggregate::new(vcpus)
                .map_err(|e| PostcopyError::Telemetry(e.to_string()))?,
            vcpus: (0..vcpus).map(|_| VcpuTrack::default()).collect(),
            info,
            start: Instant::now(),
            seq: 0,
            leg: None,
            window: VecDeque::with_capacity(WINDOW),
            histogram: LatencyBuckets::empty(),
            map_region_bytes,
            fault_region_bytes,
            column: 0,
            stall_columns: VecDeque::from([vec![0; vcpus]]),
            fault_columns: VecDeque::from([vec![0; fault_rows]]),
            injections: VecDeque::new(),
            message: None,
            cells: Vec::new(),
            scan_cursor: 0,
            finished: Vec::new(),
            lost_seen: 0,
        };
        for t in &mut m.vcpus {
            t.regions = vec![(0, 0); cells];
            t.histogram = LatencyBuckets::empty();
            t.spark.push_back(0);
        }
        Ok(m)
    }

    /// Folds the events not yet seen, without making a snapshot; first moves to the newest
    /// migration if one began since the last tick.
    pub fn catch_up(&mut self, status: &RunStatus) {
        self.follow_leg(status);
        self.fold_events();
    }

    fn follow_leg(&mut self, status: &RunStatus) {
        if let Some(live) = status.live()
            && self.leg.as_ref().is_none_or(|l| l.number != live.number)
        {
            self.start_leg(live);
        }
    }

    /// The latency and all-blocked figures of each migration before the current one.
    pub fn finished_legs(&self) -> &[super::outcome::LegAggregate] {
        &self.finished
    }

    /// Latency histograms of the current migration, for the run's summary.
    pub fn aggregate(&self) -> &Aggregate {
        &self.aggregate
    }

    /// Snapshots every [`TICK`] until `stop` is set; returns itself for the final word.
    pub fn run(mut self, status: &RunStatus, stop: &AtomicBool) -> Monitor {
        let mut next = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let s = self.tick(status);
            status.publish(Arc::new(s));
            next += TICK;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        self
    }

    /// The last snapshot of a run: its end phase, the summary, and why it ended.
    pub fn finish(
        &mut self,
        status: &RunStatus,
        summary: Option<Summary>,
        message: Option<String>,
    ) -> Arc<Snapshot> {
        let mut s = self.tick(status);
        s.phase = status.phase();
        s.summary = summary;
        if message.is_some() {
            s.message = message;
        }
        let s = Arc::new(s);
        status.publish(s.clone());
        s
    }

    /// Folds what happened since the last tick and builds a snapshot.
    pub fn tick(&mut self, status: &RunStatus) -> Snapshot {
        let now = Instant::now();
        self.advance_columns(now);
        self.follow_leg(status);
        for n in status.take_notes() {
            self.message = Some(n);
        }
        self.note_lost_connections();
        self.fold_events();
        let leg = self.leg.clone();
        let vcpus = self.sample_vcpus(leg.as_deref(), now);
        let (pages, memory_map) = self.sample_pages(leg.as_deref());
        let dest = leg.as_ref().and_then(|l| l.dest.as_ref());
        let bytes = dest.map_or(0, |d| d.telemetry().run.bytes_transferred.get());
        let filled = pages.demand + pages.pushed + pages.prefetched;
        push_window(
            &mut self.window,
            RunSample {
                at: now,
                bytes,
                filled,
            },
        );
        let (transfer, fill_rate) = match (self.window.front(), self.window.back()) {
            (Some(a), Some(b)) if b.at > a.at => {
                let dt = (b.at - a.at).as_secs_f64();
                (
                    (b.bytes.saturating_sub(a.bytes) as f64 / dt) as u64,
                    b.filled.saturating_sub(a.filled) as f64 / dt,
                )
            }
            _ => (0, 0.0),
        };
        let phase = status.phase();
        let eta_ms = (phase == Phase::Postcopy && fill_rate > 0.0)
            .then(|| (pages.missing as f64 / fill_rate * 1000.0) as u64);
        self.seq += 1;
        Snapshot {
            seq: self.seq,
            elapsed_ms: self.start.elapsed().as_millis() as u64,
            run: self.info.clone(),
            phase,
            migration: leg.as_ref().map_or(0, |l| l.number),
            postcopy_ms: leg
                .as_ref()
                .and_then(|l| l.switched_at)
                .map_or(0, |t| t.elapsed().as_millis() as u64),
            exit_path: self.exit_path(leg.as_deref()),
            throttle: dest.map_or_else(String::new, |d| d.throttle.rate().to_string()),
            throttle_bytes_per_sec: dest.and_then(|d| d.throttle.rate().bytes_per_sec()),
            transfer_bytes_per_sec: transfer,
            downtime_us: leg
                .as_ref()
                .and_then(|l| l.downtime)
                .map(|d| d.as_micros() as u64),
            push_enabled: dest.is_some_and(|d| d.push_enabled()),
            prefetch: dest.map(|d| PrefetchStatus {
                strategy: d.prefetch().to_string(),
                pages: d.telemetry().run.pages_prefetched.get(),
                used: d.telemetry().run.prefetch_used.get(),
            }),
            link_up: leg
                .as_ref()
                .and_then(|l| l.link.as_ref())
                .map(|l| l.is_up()),
            pages,
            fill_pages_per_sec: fill_rate,
            eta_ms,
            blocktime_all_ms: self.aggregate.blocktime_all_ns() as f64 / 1e6,
            telemetry_dropped: dest.map_or(0, |d| d.telemetry().dropped()),
            vcpus,
            latency: latency(self.aggregate.latency()),
            histogram: self.histogram.clone(),
            memory_map,
            stall_heatmap: self.stall_heatmap(),
            fault_heatmap: Heatmap {
                column_ms: HEATMAP_COLUMN_MS,
                rows: transpose(&self.fault_columns),
            },
            fault_region_bytes: self.fault_region_bytes,
            injections: self.injections.iter().copied().collect(),
            message: self.message.clone(),
            summary: None,
            qemu: None,
        }
    }

    /// Each connection to the source that broke and was replaced, as a note.
    fn note_lost_connections(&mut self) {
        let lost = self
            .leg
            .as_ref()
            .and_then(|l| l.dest.as_ref())
            .map_or(0, |d| d.source().connections_lost());
        if lost > self.lost_seen {
            self.message = Some(format!(
                "connection to the source broke and was replaced ({lost} so far)"
            ));
            self.lost_seen = lost;
        }
    }

    /// A new VM runs the guest: counters restart, heatmaps carry on.
    fn start_leg(&mut self, live: Arc<LiveMigration>) {
        self.lost_seen = 0;
        self.fold_events();
        if let Some(old) = self.leg.as_ref().filter(|l| l.dest.is_some()) {
            self.finished.push(super::outcome::LegAggregate {
                number: old.number,
                latency: self.aggregate.latency(),
                blocktime_all_ns: self.aggregate.blocktime_all_ns(),
            });
        }
        if live.dest.is_some()
            && let Ok(a) = Aggregate::new(self.info.vcpus)
        {
            self.aggregate = a;
            self.histogram = LatencyBuckets::empty();
            for t in &mut self.vcpus {
                t.histogram = LatencyBuckets::empty();
                t.regions.iter_mut().for_each(|r| *r = (0, 0));
            }
        }
        for t in &mut self.vcpus {
            t.window.clear();
        }
        self.window.clear();
        // A migration's injections are its own (their times count from its switchover).
        if live.dest.is_some() {
            self.injections.clear();
        }
        self.cells = self.empty_map();
        self.scan_cursor = 0;
        self.leg = Some(live);
    }

    fn advance_columns(&mut self, now: Instant) {
        let column = ((now - self.start).as_millis() / u128::from(HEATMAP_COLUMN_MS)) as u64;
        while self.column < column {
            self.column += 1;
            let vcpus = self.info.vcpus;
            let rows = self.fault_columns.back().map_or(0, Vec::len);
            roll(&mut self.stall_columns, vec![0; vcpus], HEATMAP_COLUMNS);
            roll(&mut self.fault_columns, vec![0; rows], HEATMAP_COLUMNS);
            for t in &mut self.vcpus {
                roll(&mut t.spark, 0, SPARKLINE_POINTS);
            }
        }
    }

    fn fold_events(&mut self) {
        let Some(dest) = self.leg.as_ref().and_then(|l| l.dest.clone()) else {
            return;
        };
        let telemetry = dest.telemetry();
        // In this order (blocked.rs): the window's end, the stalls in progress then, and
        // only then the events, which include every stall that ended before the read.
        let until = telemetry.now_ns();
        let stalled_since = telemetry.stalls_in_progress();
        // Event times are the leg's telemetry clock; injections are told since switchover.
        let postcopy_now_ms = self
            .leg
            .as_ref()
            .and_then(|l| l.switched_at)
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        for e in telemetry.drain() {
            self.aggregate.fold(&e);
            match e {
                Event::Fault {
                    vcpu,
                    gpa,
                    start_ns,
                    end_ns,
                } => {
                    let ns = end_ns.saturating_sub(start_ns);
                    let us = (ns / 1000).max(1);
                    // Only vCPU faults, as in the percentiles beside it.
                    if vcpu.is_some() {
                        self.histogram.record(us);
                    }
                    if let Some(row) = self
                        .fault_columns
                        .back_mut()
                        .and_then(|c| c.get_mut((gpa / self.fault_region_bytes) as usize))
                    {
                        *row += 1;
                    }
                    if let Some(t) = vcpu.and_then(|v| self.vcpus.get_mut(usize::from(v))) {
                        t.histogram.record(us);
                        if let Some(r) = t.regions.get_mut((gpa / self.map_region_bytes) as usize) {
                            r.0 += ns;
                            r.1 += 1;
                        }
                    }
                }
                Event::Inject {
                    gpa,
                    pages,
                    at_ns,
                    pause_ns,
                } => {
                    roll(
                        &mut self.injections,
                        InjectionRecord {
                            gpa,
                            pages,
                            pause_us: pause_ns / 1000,
                            at_ms: postcopy_now_ms
                                .saturating_sub(until.saturating_sub(at_ns) / 1_000_000),
                        },
                        MAX_INJECTIONS,
                    );
                }
            }
        }
        self.aggregate.advance_blocked(until, &stalled_since);
    }

    fn sample_vcpus(&mut self, leg: Option<&LiveMigration>, now: Instant) -> Vec<VcpuSnapshot> {
        let telemetry = leg
            .and_then(|l| l.dest.as_ref())
            .map(|d| d.telemetry().clone());
        let now_ns = telemetry.as_ref().map_or(0, |t| t.now_ns());
        let mut out = Vec::with_capacity(self.vcpus.len());
        for (i, track) in self.vcpus.iter_mut().enumerate() {
            let shared = leg.and_then(|l| l.vcpus.get(i));
            let counters = telemetry.as_ref().and_then(|t| t.vcpus.get(i));
            let since = counters.map_or(0, |c| c.stalled_since.load(Ordering::Acquire));
            let ongoing = if since > 0 {
                now_ns.saturating_sub(since - 1)
            } else {
                0
            };
            let sample = VcpuSample {
                at: Some(now),
                faults: counters.map_or(0, |c| c.faults.load(Ordering::Relaxed)),
                stalled_ns: counters.map_or(0, |c| c.stall_ns.load(Ordering::Relaxed)) + ongoing,
                accesses: shared.map_or(0, |s| s.stats.guest_accesses.load(Ordering::Relaxed)),
            };
            let prev = track
                .window
                .back()
                .copied()
                .unwrap_or(VcpuSample { at: None, ..sample });
            // A stall ending between two reads can be seen twice for an instant: the
            // cumulative figure never goes back.
            let sample = VcpuSample {
                stalled_ns: sample.stalled_ns.max(prev.stalled_ns),
                ..sample
            };
            if let Some(c) = self.stall_columns.back_mut().and_then(|c| c.get_mut(i)) {
                *c += sample.stalled_ns.saturating_sub(prev.stalled_ns);
            }
            if let Some(s) = track.spark.back_mut() {
                *s += sample.faults.saturating_sub(prev.faults) as u32;
            }
            push_window(&mut track.window, sample);
            let (faults_per_sec, stall_share, progress_per_sec) = rates(&track.window);
            let activity = match shared.map(|s| s.state()) {
                None => Activity::Paused,
                Some(RunState::Done) => Activity::Done,
                Some(RunState::Failed) => Activity::Failed,
                Some(RunState::Paused | RunState::Stopped) => Activity::Paused,
                Some(RunState::Running) if since > 0 => Activity::Stalled {
                    gpa: counters.map_or(0, |c| c.stalled_gpa.load(Ordering::Relaxed)),
                    for_us: ongoing / 1000,
                },
                Some(RunState::Running) => Activity::Running,
            };
            let top = top_regions(&track.regions, self.map_region_bytes);
            out.push(VcpuSnapshot {
                id: i,
                activity,
                faults: sample.faults,
                faults_per_sec,
                stall_share,
                stall_ms: sample.stalled_ns as f64 / 1e6,
                latency: latency(self.aggregate.vcpu_latency(i)),
                progress_per_sec,
                baseline_per_sec: leg
                    .and_then(|l| l.baseline_per_sec.get(i).copied())
                    .unwrap_or(0.0),
                sparkline: track.spark.iter().copied().collect(),
                histogram: track.histogram.clone(),
                top_regions: top,
            });
        }
        out
    }

    /// The memory map as the destination saw it before the switchover.
    fn empty_map(&self) -> Vec<MapCell> {
        empty_map(self.info.mem_bytes, self.map_region_bytes)
    }

    /// Page counts and the memory map, read from the page-state map (one byte a page). At
    /// most [`SCAN_PAGES_PER_TICK`] pages are read a tick, round robin: a huge guest's map
    /// refreshes over a few ticks instead of one costly one.
    fn sample_pages(&mut self, leg: Option<&LiveMigration>) -> (PageCounts, MemoryMap) {
        let total = self.info.mem_bytes / PAGE_SIZE;
        let per_cell = self.map_region_bytes / PAGE_SIZE;
        if self.cells.is_empty() {
            self.cells = self.empty_map();
        }
        let mut counts = PageCounts {
            total,
            boot: BOOT_PAGES,
            missing: total - BOOT_PAGES,
            ..PageCounts::default()
        };
        if let Some(dest) = leg.and_then(|l| l.dest.as_ref()) {
            let n = self.cells.len();
            let mut budget = SCAN_PAGES_PER_TICK;
            for _ in 0..n {
                if budget == 0 {
                    break;
                }
                let c = self.scan_cursor % n;
                self.scan_cursor = (c + 1) % n;
                let first = c as u64 * per_cell;
                let t = dest.pages().tally(first..first + per_cell);
                budget = budget.saturating_sub(per_cell);
                self.cells[c] = MapCell {
                    missing: t.get(PageState::Missing) as u32,
                    in_flight: t.get(PageState::Requested) as u32,
                    demand: t.get(PageState::FilledByDemand) as u32,
                    pushed: t.get(PageState::FilledByPush) as u32,
                    boot: t.get(PageState::Boot) as u32,
                    injected: t.injected as u32,
                    prefetched: t.get(PageState::FilledByPrefetch) as u32,
                };
            }
            // Pages as they are now (a refetched page counts once), from the map.
            for cell in &self.cells {
                counts.demand += u64::from(cell.demand);
                counts.pushed += u64::from(cell.pushed);
                counts.in_flight += u64::from(cell.in_flight);
                counts.prefetched += u64::from(cell.prefetched);
            }
            counts.injected = dest.telemetry().run.pages_injected.get();
            counts.missing = dest.missing();
        }
        (
            counts,
            MemoryMap {
                region_bytes: self.map_region_bytes,
                cells: self.cells.clone(),
            },
        )
    }

    fn exit_path(&self, leg: Option<&LiveMigration>) -> Option<String> {
        if self.info.mode != FaultMode::Exit {
            return None;
        }
        crate::vmm::dominant_exit_path(leg?.vcpus.iter().map(|v| &v.stats))
            .map(|p| p.as_str().to_string())
    }

    fn stall_heatmap(&self) -> Heatmap<u8> {
        let column_ns = HEATMAP_COLUMN_MS * 1_000_000;
        // The newest column has only run for part of its length.
        // Floored at one tick: a column a few ms old would otherwise magnify a tick's stall.
        let newest_ns =
            ((self.start.elapsed().as_nanos() as u64) % column_ns).max(TICK.as_nanos() as u64);
        let cols = stall_percentages(&self.stall_columns, column_ns, newest_ns);
        Heatmap {
            column_ms: HEATMAP_COLUMN_MS,
            rows: transpose(&cols),
        }
    }
}
