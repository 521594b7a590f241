//! Deterministic, realistic snapshots of a scripted run, for tests and for measuring frame
//! cost without a VM: warm-up, switchover, post-copy with stalled vCPUs, demand faults on hot
//! regions and a background push sweeping upwards, an injection, completion.
//!
//! Steps are [`STEP_MS`] apart (one heatmap column each): warm-up until [`SWITCHOVER_STEP`],
//! the push done [`FILL_STEPS`] later, an injection at [`INJECT_STEP`], finished at
//! [`FINISH_STEP`].

use crate::contract::{
    Activity, FAULT_HEATMAP_ROWS, HEATMAP_COLUMNS, Heatmap, InjectionRecord, LATENCY_BUCKETS,
    Latency, LatencyBuckets, MAP_CELLS, MapCell, MemoryMap, PageCounts, Phase, RegionStall,
    RunInfo, SPARKLINE_POINTS, Snapshot, TOP_REGIONS, VcpuSnapshot,
};
use crate::vmm::layout::BOOT_SIZE;

pub const STEP_MS: u64 = 500;
pub const SWITCHOVER_STEP: u64 = 4;
pub const FILL_STEPS: u64 = 60;
pub const INJECT_STEP: u64 = 30;
/// Steps an injected range takes to fill again.
const REFILL_STEPS: u64 = 10;
pub const FINISH_STEP: u64 = SWITCHOVER_STEP + FILL_STEPS + 12;
const PAGE: u64 = 4096;

fn mix(mut x: u64) -> u64 {
    // splitmix64: cheap, well spread, and the same everywhere.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hash(a: u64, b: u64, c: u64) -> u64 {
    mix(mix(mix(a) ^ b) ^ c)
}

/// The injected range: 1/16 of RAM from its middle.
pub fn injected_range(mem_bytes: u64) -> (u64, u64) {
    let len = (mem_bytes / 16).max(PAGE) / PAGE * PAGE;
    ((mem_bytes / 2) / PAGE * PAGE, len)
}

/// Steps since switchover, or None before it.
fn postcopy_steps(step: u64) -> Option<u64> {
    step.checked_sub(SWITCHOVER_STEP)
}

/// Share of data memory still missing at a step (ignoring the injection).
fn missing_share(step: u64) -> f64 {
    match postcopy_steps(step) {
        None => 1.0,
        Some(t) => 1.0 - (t as f64 / FILL_STEPS as f64).min(1.0),
    }
}

/// One memory-map cell at a step.
fn cell(i: u64, region: u64, mem: u64, step: u64) -> MapCell {
    let (start, end) = ((i * region).min(mem), ((i + 1) * region).min(mem));
    let pages = ((end - start) / PAGE) as u32;
    let boot = ((BOOT_SIZE.clamp(start, end) - start) / PAGE) as u32;
    let data = pages - boot;
    let mut c = MapCell {
        boot,
        missing: data,
        ..MapCell::default()
    };
    let Some(t) = postcopy_steps(step) else {
        return c;
    };
    // Hot cells are demand-faulted early; the push sweeps the rest upwards.
    let h = hash(i, 7, 0);
    let demanded = if h.is_multiple_of(5) {
        let from = (h >> 8) % 20;
        let frac = (t.saturating_sub(from) as f64 / 4.0).min(1.0) * 0.85;
        (f64::from(data) * frac) as u32
    } else {
        0
    };
    let front =
        BOOT_SIZE as f64 + (mem - BOOT_SIZE) as f64 * (t as f64 / FILL_STEPS as f64).min(1.0);
    let swept = ((front - start as f64) / region as f64).clamp(0.0, 1.0);
    let rest = data - demanded;
    let pushed = (f64::from(rest) * swept) as u32;
    c.demand = demanded;
    c.pushed = pushed;
    c.missing = rest - pushed;
    if c.missing > 0 && swept > 0.0 {
        c.in_flight = c.missing.min(16);
        c.missing -= c.in_flight;
    }
    let (is, il) = injected_range(mem);
    if step >= INJECT_STEP && start < is + il && end > is {
        // Made missing again, then filled by demand and push over REFILL_STEPS.
        let r = ((step - INJECT_STEP) as f64 / REFILL_STEPS as f64).min(1.0);
        let filled = (f64::from(data) * r) as u32;
        c.demand = filled * 3 / 5;
        c.pushed = filled - c.demand;
        c.in_flight = if filled < data {
            (data - filled).min(8)
        } else {
            0
        };
        c.missing = data - filled - c.in_flight;
        c.injected = data;
    }
    c
}

/// Faults vCPU `v` took in the column of `step`.
fn vcpu_faults(v: u64, step: u64) -> u32 {
    if postcopy_steps(step).is_none() {
        return 0;
    }
    let heavy = if v % 4 == 1 { 3.0 } else { 1.0 };
    let base = (10 + hash(v, step, 1) % 60) as f64 * heavy * missing_share(step).max(0.02);
    let burst = if (INJECT_STEP..INJECT_STEP + 4).contains(&step) {
        40.0
    } else {
        0.0
    };
    (base + burst) as u32
}

/// Percent of the column of `step` vCPU `v` spent stalled.
fn vcpu_stall(v: u64, step: u64) -> u8 {
    if postcopy_steps(step).is_none() {
        return 0;
    }
    let heavy = if v % 4 == 1 { 1.0 } else { 0.45 };
    let pct = (hash(v, step, 2) % 100) as f64 * heavy * missing_share(step).max(0.05);
    pct.min(100.0) as u8
}

/// Faults in fault-heatmap region `r` in the column of `step`.
fn region_faults(r: u64, rows: u64, mem: u64, step: u64) -> u32 {
    if postcopy_steps(step).is_none() {
        return 0;
    }
    let hot = hash(r, 7, 3).is_multiple_of(4);
    let base = if hot {
        30 + hash(r, step, 4) % 90
    } else {
        hash(r, step, 5) % 6
    };
    let mut n = (base as f64 * missing_share(step)) as u32;
    let (is, il) = injected_range(mem);
    let region = mem.div_ceil(rows);
    if (INJECT_STEP..INJECT_STEP + REFILL_STEPS).contains(&step)
        && r * region < is + il
        && (r + 1) * region > is
    {
        n += 200 - 15 * (step - INJECT_STEP) as u32;
    }
    n
}

fn latency_of(v: u64) -> Latency {
    Latency {
        p50_us: 90 + hash(v, 0, 6) % 200,
        p99_us: 1_800 + hash(v, 0, 7) % 6_000,
        max_us: 20_000 + hash(v, 0, 8) % 90_000,
    }
}

/// Faults spread over the log-2 buckets around 128 µs, with a tail.
fn histogram_of(v: u64, faults: u64) -> LatencyBuckets {
    const SHAPE: [(usize, u64); 9] = [
        (4, 3),
        (5, 10),
        (6, 22),
        (7, 28),
        (8, 18),
        (9, 9),
        (11, 5),
        (13, 3),
        (16, 2),
    ];
    let mut h = LatencyBuckets::empty();
    let shift = (hash(v, 0, 9) % 2) as usize;
    for (b, share) in SHAPE {
        if let Some(c) = h.counts.get_mut((b + shift).min(LATENCY_BUCKETS - 1)) {
            *c += faults * share / 100;
        }
    }
    h
}

fn vcpu(v: u64, step: u64, phase: Phase, s: &Snapshot) -> VcpuSnapshot {
    let faults: u64 = (0..=step).map(|t| u64::from(vcpu_faults(v, t))).sum();
    let stall_ms: f64 = (0..=step)
        .map(|t| f64::from(vcpu_stall(v, t)) * STEP_MS as f64 / 100.0)
        .sum();
    let share =
        (f64::from(vcpu_stall(v, step)) + f64::from(vcpu_stall(v, step.saturating_sub(1)))) / 200.0;
    let activity = match phase {
        Phase::Finished => Activity::Done,
        Phase::Postcopy if hash(v, step, 10).is_multiple_of(3) || v % 4 == 1 => {
            // Waiting on some missing page above the push front.
            let cells = &s.memory_map.cells;
            let n = cells.len().max(1);
            let from = (hash(v, step, 11) as usize) % n;
            match (0..n)
                .map(|k| (from + k) % n)
                .find(|&k| cells[k].missing > 0)
            {
                Some(k) => Activity::Stalled {
                    gpa: k as u64 * s.memory_map.region_bytes + (hash(v, step, 12) % 64) * PAGE,
                    for_us: 150 + hash(v, step, 13) % 40_000,
                },
                None => Activity::Running,
            }
        }
        _ => Activity::Running,
    };
    let baseline = 1_000_000.0 + v as f64 * 10_000.0;
    let first = (step + 1).saturating_sub(SPARKLINE_POINTS as u64);
    let sparkline = (first..=step).map(|t| vcpu_faults(v, t)).collect();
    let region = s.fault_region_bytes.max(PAGE);
    let mut top: Vec<RegionStall> = (0..TOP_REGIONS as u64)
        .map(|k| {
            let r = hash(v, k, 14) % FAULT_HEATMAP_ROWS as u64;
            RegionStall {
                gpa: (r * region).max(BOOT_SIZE),
                bytes: region,
                stall_us: (stall_ms * 1000.0) as u64 / (k + 2),
                faults: faults / (k + 3),
            }
        })
        .collect();
    top.sort_by_key(|r| std::cmp::Reverse(r.stall_us));
    VcpuSnapshot {
        id: v as usize,
        activity,
        faults,
        faults_per_sec: f64::from(vcpu_faults(v, step)) * (1000 / STEP_MS) as f64,
        stall_share: share,
        stall_ms,
        latency: if faults == 0 {
            Latency::default()
        } else {
            latency_of(v)
        },
        progress_per_sec: baseline * (1.0 - share * 0.9),
        baseline_per_sec: baseline,
        sparkline,
        histogram: histogram_of(v, faults),
        top_regions: if faults == 0 { Vec::new() } else { top },
    }
}

/// The snapshot of a scripted run with `vcpus` vCPUs and `mem_bytes` of RAM at `step`.
pub fn snapshot(vcpus: usize, mem_bytes: u64, step: u64) -> Snapshot {
    let mem = mem_bytes.max(BOOT_SIZE * 2) / PAGE * PAGE;
    let phase = match postcopy_steps(step) {
        None => Phase::Warmup,
        Some(0) => Phase::Switchover,
        Some(t) if t < FILL_STEPS => Phase::Postcopy,
        _ if step < FINISH_STEP => Phase::Complete,
        _ => Phase::Finished,
    };
    let region = mem.div_ceil(MAP_CELLS as u64).div_ceil(PAGE) * PAGE;
    let cells: Vec<MapCell> = (0..MAP_CELLS as u64)
        .take_while(|&i| i * region < mem)
        .map(|i| cell(i, region, mem, step))
        .collect();
    let mut pages = PageCounts {
        total: mem / PAGE,
        ..PageCounts::default()
    };
    for c in &cells {
        pages.boot += u64::from(c.boot);
        pages.demand += u64::from(c.demand);
        pages.pushed += u64::from(c.pushed);
        pages.missing += u64::from(c.missing);
        pages.in_flight += u64::from(c.in_flight);
        pages.injected += u64::from(c.injected);
    }
    let first_col = (step + 1).saturating_sub(HEATMAP_COLUMNS as u64);
    let fault_region = mem.div_ceil(FAULT_HEATMAP_ROWS as u64);
    let fill_pps = match postcopy_steps(step) {
        Some(t) if t < FILL_STEPS => {
            (mem / PAGE) as f64 / (FILL_STEPS as f64 * STEP_MS as f64 / 1000.0)
        }
        _ => 0.0,
    };
    // The throttle is the ladder step just above the scripted fill rate, one higher from
    // step 40 on (as if the operator pressed `+`); unlimited past the top.
    let needed = (mem / PAGE) * PAGE / (FILL_STEPS * STEP_MS / 1000);
    let ladder = &crate::tui::app::THROTTLE_LADDER;
    let at = ladder
        .iter()
        .position(|&r| r >= needed)
        .unwrap_or(ladder.len())
        + usize::from(step >= 40);
    let throttle = ladder.get(at).copied();
    let (is, il) = injected_range(mem);
    let mut s = Snapshot {
        seq: step + 1,
        elapsed_ms: step * STEP_MS,
        run: RunInfo {
            scenario: "hot-cold".into(),
            mode: crate::contract::FaultMode::Exit,
            workload: "random-touch".into(),
            vcpus,
            mem_bytes: mem,
            backing: Some(crate::contract::Backing::Shared),
            transport: Some(crate::contract::Transport::Local),
            source: None,
            page_size: PAGE,
            host: None,
        },
        phase,
        migration: 1,
        postcopy_ms: postcopy_steps(step).map_or(0, |t| t * STEP_MS),
        exit_path: postcopy_steps(step).map(|_| "memory-fault".into()),
        throttle: throttle.map_or("unlimited".into(), |t| {
            crate::units::Rate::BytesPerSec(t).to_string()
        }),
        throttle_bytes_per_sec: throttle,
        transfer_bytes_per_sec: (fill_pps * PAGE as f64) as u64,
        downtime_us: postcopy_steps(step).map(|_| 3_180),
        push_enabled: true,
        prefetch: None,
        link_up: None,
        pages,
        fill_pages_per_sec: fill_pps,
        eta_ms: (fill_pps > 0.0)
            .then(|| ((pages.missing + pages.in_flight) as f64 / fill_pps * 1000.0) as u64),
        blocktime_all_ms: 0.0,
        telemetry_dropped: 0,
        vcpus: Vec::new(),
        latency: Latency::default(),
        histogram: LatencyBuckets::empty(),
        memory_map: MemoryMap {
            region_bytes: region,
            cells,
        },
        stall_heatmap: Heatmap {
            column_ms: STEP_MS,
            rows: (0..vcpus as u64)
                .map(|v| (first_col..=step).map(|t| vcpu_stall(v, t)).collect())
                .collect(),
        },
        fault_heatmap: Heatmap {
            column_ms: STEP_MS,
            rows: (0..FAULT_HEATMAP_ROWS as u64)
                .map(|r| {
                    (first_col..=step)
                        .map(|t| region_faults(r, FAULT_HEATMAP_ROWS as u64, mem, t))
                        .collect()
                })
                .collect(),
        },
        fault_region_bytes: fault_region,
        injections: if step >= INJECT_STEP {
            vec![InjectionRecord {
                gpa: is,
                pages: il / PAGE,
                pause_us: 850,
                at_ms: (INJECT_STEP - SWITCHOVER_STEP) * STEP_MS,
            }]
        } else {
            Vec::new()
        },
        message: None,
        summary: None,
        qemu: None,
    };
    s.message = match phase {
        Phase::Warmup => Some("warming up the source".into()),
        Phase::Switchover => Some("switchover: vCPU state moved, post-copy begins".into()),
        Phase::Postcopy if step >= INJECT_STEP => {
            Some(format!("injected {is:#x}+{} MiB", il >> 20))
        }
        Phase::Postcopy => Some("post-copy: serving faults".into()),
        Phase::Complete => Some("every page filled".into()),
        Phase::Finished | Phase::Failed => Some("run finished".into()),
    };
    s.vcpus = (0..vcpus as u64)
        .map(|v| vcpu(v, step, phase, &s))
        .collect();
    for v in &s.vcpus {
        s.blocktime_all_ms += v.stall_ms;
        for (a, b) in s.histogram.counts.iter_mut().zip(&v.histogram.counts) {
            *a += b;
        }
    }
    if s.vcpus.iter().any(|v| v.faults > 0) {
        s.latency = latency_of(0);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_add_up_and_fill_over_the_script() {
        let mem = 1 << 30;
        for step in [
            0,
            SWITCHOVER_STEP,
            20,
            INJECT_STEP,
            INJECT_STEP + 3,
            70,
            FINISH_STEP,
        ] {
            let s = snapshot(4, mem, step);
            let p = s.pages;
            assert_eq!(p.total, mem / PAGE);
            assert_eq!(
                p.boot + p.demand + p.pushed + p.missing + p.in_flight,
                p.total,
                "step {step}"
            );
            assert_eq!(s.memory_map.cells.len(), MAP_CELLS);
            assert_eq!(s.vcpus.len(), 4);
            assert_eq!(s.stall_heatmap.rows.len(), 4);
            assert_eq!(s.fault_heatmap.rows.len(), FAULT_HEATMAP_ROWS);
        }
        assert_eq!(snapshot(4, mem, 0).phase, Phase::Warmup);
        assert_eq!(snapshot(4, mem, 20).phase, Phase::Postcopy);
        assert!(snapshot(4, mem, INJECT_STEP).pages.injected > 0);
        let done = snapshot(4, mem, FINISH_STEP);
        assert_eq!(done.phase, Phase::Finished);
        assert_eq!(done.pages.missing + done.pages.in_flight, 0);
        let s = snapshot(64, 16 << 30, 200);
        assert_eq!(s.stall_heatmap.rows[0].len(), HEATMAP_COLUMNS);
        assert_eq!(s, snapshot(64, 16 << 30, 200));
    }
}
