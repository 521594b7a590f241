//! The stall benchmark: what the guest feels. Every data page starts missing, no push, and
//! each vCPU runs a workload until its working set has arrived: the whole of its slice
//! (touch, sequential, stride, random) or its hot set (hotspot). Measured: the stall of all
//! vCPUs together until then, and the time to the working set, for each prefetch strategy,
//! the strategies interleaved trial by trial. Every trial is checked after: each page
//! filled once, with its own content.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::trial::Rig;
use super::{BenchError, TrialConfig};
use crate::contract::{Pattern, Prefetch, Workload};
use crate::vmm::layout::PAGE_SHIFT;

/// A working set that has not arrived by then ends the trial as a failure.
const STALL_TRIAL_TIMEOUT: Duration = Duration::from_secs(120);

/// How often the working set is looked at: the time to it is known to this much.
const POLL: Duration = Duration::from_millis(1);

/// One configuration of the stall benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct StallConfig {
    pub trial: TrialConfig,
    pub workload: Workload,
}

/// What one stall trial measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StallTrial {
    /// All vCPUs' stall until the working set arrived.
    pub stall_ms: f64,
    pub to_working_set_ms: f64,
    pub faults: u64,
    pub pages_prefetched: u64,
    pub prefetch_used: u64,
    /// Pages found filled once each, with their own content, after the trial.
    pub pages_checked: u64,
}

/// One configuration over its repeats: the medians, with the spread of the stall.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StallResult {
    pub workload: String,
    pub prefetch: String,
    pub transport: &'static str,
    pub mode: &'static str,
    pub vcpus: usize,
    pub rtt_us: u64,
    pub working_set_pages: u64,
    pub stall_ms: f64,
    pub stall_ms_min: f64,
    pub stall_ms_max: f64,
    pub to_working_set_ms: f64,
    pub faults: u64,
    pub pages_prefetched: u64,
    pub prefetch_used: u64,
    pub pages_checked: u64,
    pub rounds_stall_ms: Vec<f64>,
}

/// The pages of a vCPU's slice its workload keeps touching.
fn working_set(workload: &Workload, slice_pages: u64) -> u64 {
    match workload.pattern {
        Pattern::Hotspot => workload.hot_pages.clamp(1, slice_pages),
        _ => slice_pages,
    }
}

pub fn run_stall_trial(c: &StallConfig) -> Result<StallTrial, BenchError> {
    let mut rig = Rig::new(&c.trial, &c.workload)?;
    let dest = rig.dest.clone().ok_or_else(|| {
        BenchError::Config("the stall benchmark needs missing pages (uffd or exit)".into())
    })?;
    let sets: Vec<(u64, u64)> = rig
        .slices
        .iter()
        .map(|&(gpa, pages)| (gpa >> PAGE_SHIFT, working_set(&c.workload, pages)))
        .collect();
    let start = Instant::now();
    rig.start()?;
    // Each vCPU's next page to look at: pages only ever arrive, so the scan never goes back.
    let mut next: Vec<u64> = sets.iter().map(|s| s.0).collect();
    let arrived = loop {
        rig.check_going(start, STALL_TRIAL_TIMEOUT)?;
        let mut all = true;
        for (n, &(first, pages)) in next.iter_mut().zip(&sets) {
            while *n < first + pages && dest.pages().get(*n).is_present() {
                *n += 1;
            }
            all &= *n == first + pages;
        }
        if all {
            break start.elapsed();
        }
        std::thread::sleep(POLL);
    };
    let stall_ns: u64 = rig
        .telemetry
        .vcpus
        .iter()
        .map(|v| v.stall_ns.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let faults = rig
        .telemetry
        .vcpus
        .iter()
        .map(|v| v.faults.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    rig.vm.pause_all()?;
    rig.finish()?;
    let pages_checked = rig.check_fills()?;
    let run = &rig.telemetry.run;
    Ok(StallTrial {
        stall_ms: stall_ns as f64 / 1e6,
        to_working_set_ms: arrived.as_secs_f64() * 1e3,
        faults,
        pages_prefetched: run.pages_prefetched.get(),
        prefetch_used: run.prefetch_used.get(),
        pages_checked,
    })
}

/// Runs every configuration once per round, `repeat` rounds, every other round in reverse
/// order, as the demand-paging benchmark does.
pub fn measure_stall(
    configs: &[StallConfig],
    repeat: usize,
) -> Result<Vec<StallResult>, BenchError> {
    let trials = super::interleaved(configs, repeat, run_stall_trial)?;
    Ok(configs
        .iter()
        .zip(trials)
        .map(|(c, t)| summarize(c, t))
        .collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn summarize(c: &StallConfig, trials: Vec<StallTrial>) -> StallResult {
    let stalls: Vec<f64> = trials.iter().map(|t| t.stall_ms).collect();
    let mut by_stall = trials.clone();
    by_stall.sort_by(|a, b| a.stall_ms.total_cmp(&b.stall_ms));
    let mid = by_stall[by_stall.len() / 2];
    let slice_pages = c.trial.mem_per_vcpu >> PAGE_SHIFT;
    StallResult {
        workload: c.workload.to_string(),
        prefetch: c.trial.prefetch.to_string(),
        transport: c.trial.transport.as_str(),
        mode: c.trial.mode.as_str(),
        vcpus: c.trial.vcpus,
        rtt_us: c.trial.rtt.as_micros() as u64,
        working_set_pages: working_set(&c.workload, slice_pages) * c.trial.vcpus as u64,
        stall_ms: mid.stall_ms,
        stall_ms_min: stalls.iter().copied().fold(f64::INFINITY, f64::min),
        stall_ms_max: stalls.iter().copied().fold(0.0, f64::max),
        to_working_set_ms: median(trials.iter().map(|t| t.to_working_set_ms).collect()),
        faults: mid.faults,
        pages_prefetched: mid.pages_prefetched,
        prefetch_used: mid.prefetch_used,
        pages_checked: mid.pages_checked,
        rounds_stall_ms: stalls,
    }
}

/// The strategies the stall benchmark compares by default: the demand path alone (the C
/// reference's one page a fault), a fixed window, and adaptive.
pub const STALL_PREFETCH: [Prefetch; 3] = [Prefetch::Off, Prefetch::Fixed(16), Prefetch::Adaptive];
