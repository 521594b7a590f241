//! The stall book: folds QEMU's post-copy trace events into per-vCPU faults, stalls,
//! latencies and heatmaps, the same figures faultline shows for its own runs. A vCPU's
//! stall runs from the fault thread reading its fault (the begin event's timestamp) to
//! the page being placed (the end event that names its address, or in 10.1+ its own
//! end-one event). Pure: no QEMU, no clock of its own; times are the trace lines' own.

use std::collections::VecDeque;

use crate::contract::{
    Activity, FAULT_HEATMAP_ROWS, HEATMAP_COLUMN_MS, HEATMAP_COLUMNS, Heatmap, Latency,
    LatencyBuckets, LatencySummary, SPARKLINE_POINTS,
};
use crate::postcopy::monitor::arith::transpose;
use crate::telemetry::{Aggregate, Event};

use super::QemuError;
use super::trace::{TraceEvent, TraceLine};

const COLUMN_NS: u64 = HEATMAP_COLUMN_MS * 1_000_000;
/// How far back "the last second" reaches.
const RECENT_NS: u64 = 1_000_000_000;
const PAGE: u64 = 4096;
/// Pages placed lately, remembered for lines that arrive out of order: QEMU stamps a line
/// before it takes the log's lock, so another thread's end can be written before the
/// begin it ends (by up to a few ms; a ring this long covers far more at any fill rate).
const RECENT_ENDS: usize = 4096;

#[derive(Debug, Default, Clone)]
struct VcpuBook {
    faults: u64,
    stall_ns: u64,
    /// The page waited for now (its host address) and since when.
    open: Option<(u64, u64)>,
    /// Offset in guest RAM of the page waited for now, where known.
    open_offset: Option<u64>,
    /// Every finished stall, in order (a vCPU waits for one page at a time).
    stalls: Vec<(u64, u64)>,
    /// Fault times within the last second.
    recent_faults: VecDeque<u64>,
    histogram: LatencyBuckets,
}

pub struct StallBook {
    /// Wall-clock µs that is time 0 of this book.
    epoch_us: u64,
    vcpus: Vec<VcpuBook>,
    aggregate: Aggregate,
    histogram: LatencyBuckets,
    /// Host address minus RAM offset of the main RAM block, once a page request showed it.
    ram_base: Option<u64>,
    ram_bytes: u64,
    fault_region_bytes: u64,
    /// Heatmap columns from `first_column` on: stall ns per vCPU, faults per region, faults
    /// per vCPU.
    first_column: u64,
    stall_columns: VecDeque<Vec<u64>>,
    fault_columns: VecDeque<Vec<u32>>,
    spark_columns: VecDeque<Vec<u32>>,
    /// Latest event time seen (ns since the epoch): what the book is complete up to.
    seen_ns: u64,
    non_vcpu_faults: u64,
    /// The latest placed pages and when, oldest first.
    recent_ends: VecDeque<(u64, u64)>,
}

fn rows_of(ram_bytes: u64) -> (u64, usize) {
    let region = ram_bytes
        .div_ceil(FAULT_HEATMAP_ROWS as u64)
        .div_ceil(PAGE)
        .max(1)
        * PAGE;
    (region, ram_bytes.div_ceil(region) as usize)
}

impl StallBook {
    pub fn new(vcpus: usize, ram_bytes: u64, epoch_us: u64) -> Result<StallBook, QemuError> {
        let (fault_region_bytes, rows) = rows_of(ram_bytes);
        Ok(StallBook {
            epoch_us,
            vcpus: (0..vcpus)
                .map(|_| VcpuBook {
                    histogram: LatencyBuckets::empty(),
                    ..VcpuBook::default()
                })
                .collect(),
            aggregate: Aggregate::new(vcpus).map_err(|e| QemuError::Telemetry(e.to_string()))?,
            histogram: LatencyBuckets::empty(),
            ram_base: None,
            ram_bytes,
            fault_region_bytes,
            first_column: 0,
            stall_columns: VecDeque::from([vec![0; vcpus]]),
            fault_columns: VecDeque::from([vec![0; rows]]),
            spark_columns: VecDeque::from([vec![0; vcpus]]),
            seen_ns: 0,
            non_vcpu_faults: 0,
            recent_ends: VecDeque::with_capacity(RECENT_ENDS),
        })
    }

    /// ns since the epoch of a wall-clock time in µs (0 before it).
    pub fn ns_of(&self, at_us: u64) -> u64 {
        at_us.saturating_sub(self.epoch_us).saturating_mul(1000)
    }

    pub fn fold(&mut self, line: &TraceLine) {
        let Some(at_us) = line.at_us else {
            return;
        };
        let t = self.ns_of(at_us);
        self.seen_ns = self.seen_ns.max(t);
        match line.event {
            TraceEvent::PageRequest {
                hva,
                ref ramblock,
                offset,
            } => {
                if self.ram_base.is_none() && is_main_ram(ramblock) {
                    self.ram_base = hva.checked_sub(offset);
                }
            }
            TraceEvent::BlocktimeBegin {
                addr,
                cpu,
                received,
            } => {
                // A page whose end line came first (lines are stamped before QEMU takes the
                // log's lock): the wait ended then, or never began if it was placed sooner.
                let placed = (!received)
                    .then(|| self.recent_ends.iter().rev().find(|e| e.0 == addr))
                    .flatten()
                    .map(|&(_, end)| end);
                self.begin(t, addr, cpu, received, placed);
            }
            TraceEvent::BlocktimeEnd { addr, .. } => {
                if self.recent_ends.len() == RECENT_ENDS {
                    self.recent_ends.pop_front();
                }
                self.recent_ends.push_back((addr, t));
                for v in 0..self.vcpus.len() {
                    if self.vcpus[v].open.is_some_and(|(a, _)| a == addr) {
                        self.close(v, t);
                    }
                }
            }
            TraceEvent::BlocktimeEndOne { cpu: Some(cpu) } => {
                if self.vcpus.get(cpu).is_some_and(|b| b.open.is_some()) {
                    self.close(cpu, t);
                }
            }
            TraceEvent::BlocktimeEndOne { cpu: None } => {}
            TraceEvent::TidCpuMap { .. } => {}
        }
    }

    fn begin(
        &mut self,
        t: u64,
        addr: u64,
        cpu: Option<usize>,
        received: bool,
        placed_at: Option<u64>,
    ) {
        let Some(v) = cpu else {
            self.non_vcpu_faults += 1;
            return;
        };
        // A vCPU QEMU did not report at the start: nothing to book it to.
        if v >= self.vcpus.len() {
            return;
        }
        match self.vcpus[v].open {
            // The same page again (a kicked vCPU faults anew on it): one wait, still on.
            Some((a, _)) if a == addr => return,
            // A vCPU waits for one page at a time: a new fault ends the last wait.
            Some(_) => self.close(v, t),
            None => {}
        }
        let offset = self.offset_of(addr);
        let column = self.column_mut(t);
        if let Some(col) = column {
            if let Some(c) = self.spark_columns.get_mut(col).and_then(|c| c.get_mut(v)) {
                *c += 1;
            }
            if let Some(row) = offset.map(|o| (o / self.fault_region_bytes) as usize)
                && let Some(c) = self.fault_columns.get_mut(col).and_then(|c| c.get_mut(row))
            {
                *c += 1;
            }
        }
        let b = &mut self.vcpus[v];
        b.faults += 1;
        b.recent_faults.push_back(t);
        if received {
            // The page came before the fault was read: nobody waits.
            self.record(v, t, t, offset);
        } else if let Some(end) = placed_at {
            self.record(v, t, end.max(t), offset);
        } else {
            b.open = Some((addr, t));
            b.open_offset = offset;
        }
    }

    fn close(&mut self, v: usize, t: u64) {
        let Some((_, since)) = self.vcpus[v].open.take() else {
            return;
        };
        let offset = self.vcpus[v].open_offset.take();
        self.record(v, since, t.max(since), offset);
    }

    fn record(&mut self, v: usize, start: u64, end: u64, offset: Option<u64>) {
        let b = &mut self.vcpus[v];
        b.stall_ns = b.stall_ns.saturating_add(end - start);
        b.stalls.push((start, end));
        let us = ((end - start) / 1000).max(1);
        b.histogram.record(us);
        self.histogram.record(us);
        self.aggregate.fold(&Event::Fault {
            vcpu: u16::try_from(v).ok(),
            gpa: offset.unwrap_or(0),
            start_ns: start,
            end_ns: end,
        });
        self.add_stall_to_columns(v, start, end);
    }

    fn add_stall_to_columns(&mut self, v: usize, start: u64, end: u64) {
        self.roll_to(end / COLUMN_NS);
        add_span(&mut self.stall_columns, self.first_column, v, start, end);
    }

    /// The heatmap column of time `t`, rolling the window forward as needed; None for a
    /// time older than the window.
    fn column_mut(&mut self, t: u64) -> Option<usize> {
        let col = t / COLUMN_NS;
        self.roll_to(col);
        col.checked_sub(self.first_column).map(|c| c as usize)
    }

    fn roll_to(&mut self, col: u64) {
        let last = self.first_column + self.stall_columns.len() as u64 - 1;
        // A jump past the whole window (a long quiet spell) starts the window afresh.
        if col > last + HEATMAP_COLUMNS as u64 {
            let vcpus = self.vcpus.len();
            let rows = self.fault_columns.back().map_or(0, Vec::len);
            self.first_column = col;
            self.stall_columns = VecDeque::from([vec![0; vcpus]]);
            self.fault_columns = VecDeque::from([vec![0; rows]]);
            self.spark_columns = VecDeque::from([vec![0; vcpus]]);
            return;
        }
        for _ in last..col {
            let vcpus = self.vcpus.len();
            let rows = self.fault_columns.back().map_or(0, Vec::len);
            self.stall_columns.push_back(vec![0; vcpus]);
            self.fault_columns.push_back(vec![0; rows]);
            self.spark_columns.push_back(vec![0; vcpus]);
            if self.stall_columns.len() > HEATMAP_COLUMNS {
                self.stall_columns.pop_front();
                self.fault_columns.pop_front();
                self.spark_columns.pop_front();
                self.first_column += 1;
            }
        }
    }

    fn offset_of(&self, addr: u64) -> Option<u64> {
        let o = addr.checked_sub(self.ram_base?)?;
        (o < self.ram_bytes).then_some(o & !(PAGE - 1))
    }

    /// Accounts all-vCPUs-blocked time up to the newest event, and rolls the heatmaps to
    /// time `now` (ns since the epoch).
    pub fn advance(&mut self, now: u64) {
        self.roll_to(now / COLUMN_NS);
        let open: Vec<Option<u64>> = self.vcpus.iter().map(|b| b.open.map(|o| o.1)).collect();
        self.aggregate.advance_blocked(self.seen_ns, &open);
        for b in &mut self.vcpus {
            let cut = now.saturating_sub(RECENT_NS);
            while b.recent_faults.front().is_some_and(|&t| t < cut) {
                b.recent_faults.pop_front();
            }
        }
    }

    /// Ends every wait still open at `t` (ns since the epoch): once a migration has
    /// completed, every page is there, so a wait still open lost its end line.
    pub fn close_all(&mut self, t: u64) {
        for v in 0..self.vcpus.len() {
            let since = self.vcpus[v].open.map(|(_, s)| s);
            if let Some(since) = since {
                self.close(v, t.max(since));
            }
        }
    }

    pub fn vcpus(&self) -> usize {
        self.vcpus.len()
    }

    pub fn faults(&self, v: usize) -> u64 {
        self.vcpus.get(v).map_or(0, |b| b.faults)
    }

    /// Stall ns of vCPU `v` up to `now`, the wait in progress included.
    pub fn stall_ns(&self, v: usize, now: u64) -> u64 {
        self.vcpus.get(v).map_or(0, |b| {
            b.stall_ns
                .saturating_add(b.open.map_or(0, |(_, since)| now.saturating_sub(since)))
        })
    }

    /// Stall ns of vCPU `v` within `[from, to)`, the wait in progress included up to `to`.
    pub fn stall_ns_within(&self, v: usize, from: u64, to: u64) -> u64 {
        let Some(b) = self.vcpus.get(v) else {
            return 0;
        };
        let open = b.open.map(|(_, since)| (since, to));
        // Stalls are in order: walk back from the newest to the first that ends before `from`.
        b.stalls
            .iter()
            .rev()
            .take_while(|&&(_, e)| e > from)
            .copied()
            .chain(open)
            .map(|(s, e)| e.min(to).saturating_sub(s.max(from)))
            .fold(0u64, u64::saturating_add)
    }

    /// Share of the last second vCPU `v` spent stalled, 0 to 1.
    pub fn stall_share(&self, v: usize, now: u64) -> f64 {
        let from = now.saturating_sub(RECENT_NS);
        self.stall_ns_within(v, from, now) as f64 / (now - from).max(1) as f64
    }

    pub fn faults_in_last_second(&self, v: usize) -> u64 {
        self.vcpus
            .get(v)
            .map_or(0, |b| b.recent_faults.len() as u64)
    }

    pub fn activity(&self, v: usize, now: u64) -> Activity {
        match self
            .vcpus
            .get(v)
            .and_then(|b| b.open.map(|o| (o, b.open_offset)))
        {
            Some(((addr, since), offset)) => Activity::Stalled {
                gpa: offset.unwrap_or(addr),
                for_us: now.saturating_sub(since) / 1000,
            },
            None => Activity::Running,
        }
    }

    pub fn vcpu_histogram(&self, v: usize) -> LatencyBuckets {
        self.vcpus
            .get(v)
            .map_or_else(LatencyBuckets::empty, |b| b.histogram.clone())
    }

    pub fn histogram(&self) -> &LatencyBuckets {
        &self.histogram
    }

    pub fn vcpu_latency(&self, v: usize) -> Latency {
        latency(self.aggregate.vcpu_latency(v))
    }

    pub fn latency(&self) -> Latency {
        latency(self.aggregate.latency())
    }

    pub fn latency_summary(&self, v: Option<usize>) -> LatencySummary {
        match v {
            Some(v) => self.aggregate.vcpu_latency(v),
            None => self.aggregate.latency(),
        }
    }

    pub fn blocktime_all_ns(&self) -> u64 {
        self.aggregate.blocktime_all_ns()
    }

    pub fn non_vcpu_faults(&self) -> u64 {
        self.non_vcpu_faults
    }

    pub fn fault_region_bytes(&self) -> u64 {
        self.fault_region_bytes
    }

    /// Whether fault addresses can be placed in guest RAM (a page request showed the
    /// RAM block's host address).
    pub fn knows_offsets(&self) -> bool {
        self.ram_base.is_some()
    }

    /// Stall share per vCPU per column (0 to 100), the waits in progress included.
    pub fn stall_heatmap(&self, now: u64) -> Heatmap<u8> {
        let mut cols = self.stall_columns.clone();
        for (v, b) in self.vcpus.iter().enumerate() {
            if let Some((_, since)) = b.open {
                add_span(&mut cols, self.first_column, v, since, now);
            }
        }
        let vcpus = self.vcpus.len();
        Heatmap {
            column_ms: HEATMAP_COLUMN_MS,
            rows: (0..vcpus)
                .map(|v| {
                    cols.iter()
                        .map(|c| (c[v].saturating_mul(100) / COLUMN_NS).min(100) as u8)
                        .collect()
                })
                .collect(),
        }
    }

    pub fn fault_heatmap(&self) -> Heatmap<u32> {
        Heatmap {
            column_ms: HEATMAP_COLUMN_MS,
            rows: transpose(&self.fault_columns),
        }
    }

    pub fn sparkline(&self, v: usize) -> Vec<u32> {
        let n = self.spark_columns.len();
        self.spark_columns
            .iter()
            .skip(n.saturating_sub(SPARKLINE_POINTS))
            .map(|c| c.get(v).copied().unwrap_or(0))
            .collect()
    }
}

fn is_main_ram(ramblock: &str) -> bool {
    matches!(ramblock, "pc.ram" | "ram" | "mach-virt.ram") || ramblock.ends_with(".ram")
}

/// Adds `[start, end)` to vCPU `v`'s stall ns in the columns it overlaps.
fn add_span(cols: &mut VecDeque<Vec<u64>>, first: u64, v: usize, start: u64, end: u64) {
    let mut t = start.max(first.saturating_mul(COLUMN_NS));
    while t < end {
        let col = t / COLUMN_NS;
        let col_end = (col + 1).saturating_mul(COLUMN_NS);
        let upto = end.min(col_end);
        match cols
            .get_mut((col - first) as usize)
            .and_then(|c| c.get_mut(v))
        {
            Some(c) => *c = c.saturating_add(upto - t),
            None => break,
        }
        t = upto;
    }
}

fn latency(l: LatencySummary) -> Latency {
    Latency {
        p50_us: l.p50,
        p99_us: l.p99,
        max_us: l.max,
    }
}

#[cfg(test)]
mod tests;
