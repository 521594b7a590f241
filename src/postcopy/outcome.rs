//! How a run's migrations went, and the summary made of it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::destination::Destination;
use super::verify::guest_errors;
use crate::contract::{
    FaultMode, InjectionSummary, LatencySummary, LegSummary, RunConfig, RunInfo, Summary,
    VcpuSummary, VerifySummary,
};
use crate::telemetry::Aggregate;
use crate::units::Rate;
use crate::vmm::Vm;
use crate::vmm::layout::{self, PAGE_SIZE};

/// How the migrations went, for the summary: the last destination, each migration's own
/// figures, and the checks of all.
pub(super) struct Outcome {
    /// What the verify guest found wrong on the VMs it left behind.
    pub earlier_guest_errors: u64,
    pub number: u32,
    pub vm: Vm,
    pub dest: Arc<Destination>,
    pub downtime: Duration,
    pub injections: Vec<InjectionSummary>,
    pub postcopy: Duration,
    pub postcopy_complete: bool,
    pub mismatches: u64,
    pub pages_checked: u64,
    /// The fetch-rate limit in force when the run ended (before the final fill).
    pub throttle: Rate,
    /// The migrations before the last one.
    pub earlier: Vec<LegSummary>,
}

pub(super) fn run_info(config: &RunConfig) -> RunInfo {
    RunInfo {
        scenario: config.scenario.clone(),
        mode: config.mode,
        workload: config.workload.to_string(),
        vcpus: config.vcpus,
        mem_bytes: config.mem_bytes,
        backing: config.backing,
        transport: Some(config.transport()),
        source: config.remote.map(|r| r.addr.to_string()),
        page_size: PAGE_SIZE,
        host: Some(crate::probe::host_line()),
    }
}

/// What one migration came to, from its destination's counters. Its latency and
/// all-blocked figures are the monitor's, filled in by [`summarize`].
pub(super) struct LegFigures<'a> {
    pub number: u32,
    pub dest: &'a Destination,
    pub downtime: Duration,
    pub postcopy: Duration,
    pub postcopy_complete: bool,
    pub throttle: Rate,
    pub pages_checked: u64,
    pub mismatches: u64,
}

impl LegFigures<'_> {
    pub fn summary(&self) -> LegSummary {
        let t = self.dest.telemetry();
        LegSummary {
            migration: self.number,
            downtime_us: self.downtime.as_micros() as u64,
            postcopy_ms: self.postcopy.as_millis() as u64,
            postcopy_complete: self.postcopy_complete,
            pages_demand: t.run.pages_demand.get(),
            pages_pushed: t.run.pages_pushed.get(),
            pages_injected: t.run.pages_injected.get(),
            pages_prefetched: t.run.pages_prefetched.get(),
            prefetch_used: t.run.prefetch_used.get(),
            bytes_transferred: t.run.bytes_transferred.get(),
            throttle: self.throttle.to_string(),
            stall_ms: t
                .vcpus
                .iter()
                .map(|v| v.stall_ns.load(Ordering::Relaxed))
                .sum::<u64>() as f64
                / 1e6,
            blocktime_all_ms: 0.0,
            latency_us: LatencySummary::default(),
            pages_checked: self.pages_checked,
            mismatches: self.mismatches,
        }
    }
}

pub(super) fn summarize(
    config: &RunConfig,
    o: &Outcome,
    aggregate: &Aggregate,
    earlier_figures: &[LegAggregate],
) -> Summary {
    let leg = o;
    let telemetry = leg.dest.telemetry();
    let run = &telemetry.run;
    let guest_errors = o.earlier_guest_errors + guest_errors(&leg.vm);
    let exit_path = match config.mode {
        FaultMode::Uffd => None,
        FaultMode::Exit => crate::vmm::dominant_exit_path(leg.vm.vcpus().iter().map(|v| v.stats()))
            .map(|p| p.as_str()),
    };
    let bytes = run.bytes_transferred.get();
    let last = LegFigures {
        number: o.number,
        dest: &o.dest,
        downtime: o.downtime,
        postcopy: o.postcopy,
        postcopy_complete: o.postcopy_complete,
        throttle: o.throttle,
        pages_checked: o.pages_checked - o.earlier.iter().map(|l| l.pages_checked).sum::<u64>(),
        mismatches: o.mismatches - o.earlier.iter().map(|l| l.mismatches).sum::<u64>(),
    }
    .summary();
    let legs: Vec<LegSummary> = o
        .earlier
        .iter()
        .cloned()
        .map(|mut l| {
            if let Some(a) = earlier_figures.iter().find(|a| a.number == l.migration) {
                l.latency_us = a.latency;
                l.blocktime_all_ms = a.blocktime_all_ns as f64 / 1e6;
            }
            l
        })
        .chain(std::iter::once(LegSummary {
            latency_us: aggregate.latency(),
            blocktime_all_ms: aggregate.blocktime_all_ns() as f64 / 1e6,
            ..last
        }))
        .collect();
    let per_vcpu = leg
        .vm
        .vcpus()
        .iter()
        .enumerate()
        .map(|(i, v)| VcpuSummary {
            vcpu: i,
            fault_exits: telemetry.vcpus[i].faults.load(Ordering::Relaxed),
            stall_ms: telemetry.vcpus[i].stall_ns.load(Ordering::Relaxed) as f64 / 1e6,
            latency_us: aggregate.vcpu_latency(i),
            guest_progress: v.stats().guest_accesses.load(Ordering::Relaxed),
            offcpu_ms: None,
            qemu_blocktime_ms: None,
        })
        .collect();
    Summary {
        scenario: config.scenario.clone(),
        mode: config.mode,
        exit_path: exit_path.map(str::to_string),
        workload: config.workload.to_string(),
        vcpus: config.vcpus,
        mem_bytes: config.mem_bytes,
        backing: Some(leg.dest.ram().backing()),
        transport: Some(config.transport()),
        page_size: PAGE_SIZE,
        pages_total: leg.dest.ram().pages(),
        pages_boot: layout::BOOT_PAGES,
        pages_demand: run.pages_demand.get(),
        pages_pushed: run.pages_pushed.get(),
        pages_injected: run.pages_injected.get(),
        pages_refetched: run.pages_refetched.get(),
        pages_prefetched: run.pages_prefetched.get(),
        prefetch_used: run.prefetch_used.get(),
        prefetch: leg.dest.prefetch().to_string(),
        migrations: leg.number,
        downtime_us: leg.downtime.as_micros() as u64,
        postcopy_ms: o.postcopy.as_millis() as u64,
        postcopy_complete: o.postcopy_complete,
        bytes_transferred: bytes,
        transfer_bytes_per_sec: (bytes as f64 / o.postcopy.as_secs_f64().max(1e-9)) as u64,
        throttle: o.throttle.to_string(),
        throttle_initial: Some(config.fetch_rate.to_string()),
        blocktime_all_ms: aggregate.blocktime_all_ns() as f64 / 1e6,
        injections: o.injections.clone(),
        verified: o.mismatches == 0 && guest_errors == 0 && leg.dest.missing() == 0,
        verify: VerifySummary {
            pages_checked: o.pages_checked,
            mismatches: o.mismatches,
            guest_errors,
        },
        telemetry_dropped: telemetry.dropped(),
        latency_us: aggregate.latency(),
        per_vcpu,
        reconnects: leg.dest.source().connections_lost(),
        legs,
        qemu: None,
    }
}

/// A finished migration's latency and all-blocked figures, as the monitor kept them.
#[derive(Debug, Clone, Copy)]
pub struct LegAggregate {
    pub number: u32,
    pub latency: LatencySummary,
    pub blocktime_all_ns: u64,
}
