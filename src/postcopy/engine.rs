//! One run: warm up the source VM, switch over, serve post-copy until every page is filled
//! and the duration is over, then prove nothing was lost and summarize.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::PostcopyError;
use super::destination::{self, Destination};
use super::leg::{Leg, LegSource, Settings, shared, switch_over};
use super::monitor::Monitor;
use super::net::LinkSwitch;
use super::outcome::{LegFigures, Outcome, run_info, summarize};
use super::status::{LiveMigration, RunStatus};
use super::verify::guest_errors;
use crate::contract::{Action, InjectionSummary, Phase, RunConfig, Summary};
use crate::guest;
use crate::telemetry::Event;
use crate::vmm::layout;
use crate::vmm::{Vm, VmConfig};

/// Sleeps up to `d`, returning early with an error if a vCPU of `vm` fails.
fn run_for(vm: &Vm, d: Duration) -> Result<(), PostcopyError> {
    let end = Instant::now() + d;
    loop {
        if let Some(f) = vm.failure() {
            return Err(PostcopyError::GuestFailed(f));
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(5)));
    }
}

/// Runs a whole migration; `controls` carries operator actions while it runs. Snapshots go
/// to `status`'s subscribers all along, the last one with the summary or the error.
pub fn run(
    config: &RunConfig,
    status: &RunStatus,
    controls: Option<&Receiver<Action>>,
) -> Result<Summary, PostcopyError> {
    config.validate()?;
    // Chosen once, so every migration of the run and its observers see the same backing.
    let config = &RunConfig {
        backing: Some(
            config
                .backing
                .unwrap_or_else(destination::preferred_backing),
        ),
        ..config.clone()
    };
    let monitor = Monitor::new(run_info(config))?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("monitor".into())
            .spawn_scoped(s, || monitor.run(status, &stop))
            .map_err(PostcopyError::Thread)?;
        // Stops the monitor however migrate ends, a panic included: the scope waits for it.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let guard = StopOnDrop(&stop);
        let outcome = migrate(config, status, controls);
        drop(guard);
        let mut monitor = handle.join().map_err(|_| PostcopyError::Panicked)?;
        // Fold the last events in before the latency figures are read.
        monitor.catch_up(status);
        match outcome {
            Ok(o) => {
                let summary = summarize(config, &o, monitor.aggregate(), monitor.finished_legs());
                status.set_phase(Phase::Finished);
                let verdict = if summary.verified {
                    format!(
                        "finished: verified, {} pages checked",
                        summary.verify.pages_checked
                    )
                } else {
                    format!(
                        "finished: NOT verified ({} mismatches, {} guest errors)",
                        summary.verify.mismatches, summary.verify.guest_errors
                    )
                };
                monitor.finish(status, Some(summary.clone()), Some(verdict));
                Ok(summary)
            }
            Err(e) => {
                status.set_phase(Phase::Failed);
                monitor.finish(status, None, Some(format!("run failed: {e}")));
                Err(e)
            }
        }
    })
}

/// Starts the source VM and runs its workload for the warm-up; returns it running, with
/// each vCPU's pace (accesses a second) as the baseline.
fn warm_up(config: &RunConfig, status: &RunStatus) -> Result<(Vm, Vec<f64>), PostcopyError> {
    let vm_config = VmConfig {
        vcpus: config.vcpus,
        mem_bytes: config.mem_bytes,
    };
    let program = guest::assemble(
        &config.workload,
        config.vcpus,
        &layout::placement(config.mem_bytes),
    )?;

    // The source runs the workload for the warm-up; its pace is each vCPU's baseline.
    status.set_phase(Phase::Warmup);
    let source_vm = Vm::new(vm_config)?;
    source_vm.load(&program)?;
    status.set_live(LiveMigration {
        number: 0,
        vcpus: shared(&source_vm),
        dest: None,
        link: None,
        switched_at: None,
        downtime: None,
        baseline_per_sec: Vec::new(),
    });
    // The baseline comes from the warm-up's second half: the first pays for the source's
    // own first touches of fresh memory.
    let accesses = |vm: &Vm| -> Vec<u64> {
        vm.vcpus()
            .iter()
            .map(|v| v.stats().guest_accesses.load(Ordering::Relaxed))
            .collect()
    };
    let warm_start = Instant::now();
    source_vm.resume_all()?;
    tracing::debug!("warm-up: source running");
    run_for(&source_vm, config.warmup / 2)?;
    let (half_at, half) = (Instant::now(), accesses(&source_vm));
    run_for(&source_vm, config.warmup - config.warmup / 2)?;
    let secs = half_at.elapsed().as_secs_f64().max(1e-6);
    let whole_secs = warm_start.elapsed().as_secs_f64().max(1e-6);
    // A guest too slow to report in the second half is paced over the whole warm-up.
    let baseline: Vec<f64> = accesses(&source_vm)
        .iter()
        .zip(&half)
        .map(|(&end, &mid)| match end.saturating_sub(mid) {
            0 => end as f64 / whole_secs,
            d => d as f64 / secs,
        })
        .collect();

    tracing::debug!(?baseline, "warm-up done");
    Ok((source_vm, baseline))
}

fn migrate(
    config: &RunConfig,
    status: &RunStatus,
    controls: Option<&Receiver<Action>>,
) -> Result<Outcome, PostcopyError> {
    let mut leg = match config.remote {
        Some(remote) => {
            status.set_phase(Phase::Warmup);
            status.note(format!(
                "taking over the guest of the source at {}",
                remote.addr
            ));
            switch_over(config, LegSource::Remote(remote), 1, &[], None, status)?
        }
        None => {
            let (source_vm, baseline) = warm_up(config, status)?;
            switch_over(
                config,
                LegSource::Local(source_vm),
                1,
                &baseline,
                None,
                status,
            )?
        }
    };
    let mut earlier_guest_errors = 0;
    let mut earlier = Vec::new();
    let first_switch = leg.switched_at;
    let mut timeline = config.timeline.clone();
    timeline.sort_by_key(|a| a.at);
    let mut timeline = timeline.into_iter().peekable();
    let mut injections = Vec::new();
    let mut complete_at: Option<Duration> = None;
    let (mut mismatches, mut pages_checked) = (0, 0);
    loop {
        if let Some(f) = leg.vm.failure() {
            return Err(PostcopyError::GuestFailed(f));
        }
        // Handler and push threads end only when stopped: one that ended has failed, and
        // the vCPUs it served would wait for their pages for ever.
        if leg.workers.any_finished() {
            let Leg { workers, .. } = leg;
            return Err(workers.failure());
        }
        let elapsed = first_switch.elapsed();
        let mut actions = Vec::new();
        while timeline.peek().is_some_and(|a| a.at <= elapsed) {
            if let Some(a) = timeline.next() {
                actions.push(a.action);
            }
        }
        if let Some(rx) = controls {
            actions.extend(rx.try_iter());
        }
        for action in actions {
            if action == Action::Remigrate && leg.link.is_down() {
                status.note(
                    "new migration refused: the link is down, and the rest of this one \
                     must come from the source first",
                );
                continue;
            }
            if action == Action::Remigrate {
                status.note(format!(
                    "migration {}: filling the rest before migrating again",
                    leg.number
                ));
                // The operator's throttle and push carry over; filling the rest changes both.
                let settings = Settings {
                    rate: leg.dest.throttle.rate(),
                    push: leg.dest.push_enabled(),
                    prefetch: leg.dest.prefetch(),
                };
                // The source is done with either way: a failed check ends the run.
                let postcopy = complete_at.unwrap_or_else(|| leg.switched_at.elapsed());
                let complete = complete_at.is_some();
                leg.fill_rest();
                let compared = leg.compare(config);
                leg.release_source(status);
                let (m, n) = compared?;
                mismatches += m;
                pages_checked += n;
                earlier.push(
                    LegFigures {
                        number: leg.number,
                        dest: &leg.dest,
                        downtime: leg.downtime,
                        postcopy,
                        postcopy_complete: complete,
                        throttle: settings.rate,
                        pages_checked: n,
                        mismatches: m,
                    }
                    .summary(),
                );
                earlier_guest_errors += guest_errors(&leg.vm);
                let Leg {
                    number,
                    vm,
                    workers,
                    baseline,
                    ..
                } = leg;
                workers.finish()?;
                leg = switch_over(
                    config,
                    LegSource::Local(vm),
                    number + 1,
                    &baseline,
                    Some(settings),
                    status,
                )?;
                injections.clear();
                complete_at = None;
                continue;
            }
            match apply(&leg.dest, &leg.vm, leg.link(), action) {
                Ok(Some(inj)) => {
                    status.note(format!(
                        "injected {} pages at {:#x}; guest paused {} us, the range \
                         unavailable {} us",
                        inj.pages, inj.gpa, inj.pause_us, inj.unavailable_us
                    ));
                    complete_at = None;
                    injections.push(inj);
                }
                Ok(None) => status.note(describe(action)),
                // An operator's bad range is reported; the run goes on.
                Err(e @ (PostcopyError::BadRange { .. } | PostcopyError::Refused(_))) => {
                    status.note(e.to_string())
                }
                Err(e) => return Err(e),
            }
        }
        if leg.dest.missing() == 0 {
            if complete_at.is_none() {
                complete_at = Some(leg.switched_at.elapsed());
                status.set_phase(Phase::Complete);
            }
        } else if complete_at.is_some() {
            complete_at = None;
            status.set_phase(Phase::Postcopy);
        }
        if elapsed >= config.duration || status.stop_requested() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }

    // The rest comes from the source: bring the link back first (a vCPU waiting on a
    // fetch cannot pause until it returns).
    if leg.link.is_down() {
        if let Some(l) = leg.link.switch() {
            l.set(true);
        }
        status.note("link up again to finish the run");
    }
    // Stop the guest; bring in whatever is still missing so the checks see every page.
    leg.vm.pause_all()?;
    let postcopy_complete = complete_at.is_some();
    // What the operator left in force, before the final fill lifts it.
    let throttle = leg.dest.throttle.rate();
    if leg.dest.missing() > 0 {
        leg.fill_rest();
        complete_at = Some(leg.switched_at.elapsed());
    }
    let compared = leg.compare(config);
    leg.release_source(status);
    let (m, n) = compared?;
    let Leg {
        number,
        vm,
        dest,
        workers,
        switched_at,
        downtime,
        ..
    } = leg;
    workers.finish()?;
    Ok(Outcome {
        earlier_guest_errors,
        number,
        vm,
        dest,
        downtime,
        injections,
        postcopy: complete_at.unwrap_or_else(|| switched_at.elapsed()),
        postcopy_complete,
        mismatches: mismatches + m,
        pages_checked: pages_checked + n,
        throttle,
        earlier,
    })
}

fn describe(action: Action) -> String {
    match action {
        Action::Throttle(r) => format!("fetch rate set to {r}"),
        Action::Push(true) => "background push resumed".into(),
        Action::Push(false) => "background push paused: only demand fetches run".into(),
        Action::Inject(r) => format!("inject {:#x}+{:#x}", r.start, r.len),
        Action::Remigrate => "new migration".into(),
        Action::Link(false) => "link down: the destination cannot reach the source; \
                                faults wait for it"
            .into(),
        Action::Link(true) => "link up: fetches resume".into(),
        Action::Prefetch(p) => format!("prefetch set to {p}"),
    }
}

/// Applies one action; an injection pauses the vCPUs while pages change hands.
fn apply(
    dest: &Destination,
    vm: &Vm,
    link: Result<&LinkSwitch, &str>,
    action: Action,
) -> Result<Option<InjectionSummary>, PostcopyError> {
    match action {
        Action::Throttle(rate) => dest.throttle.set_rate(rate),
        Action::Push(on) => dest.set_push(on),
        Action::Prefetch(p) => dest.set_prefetch(p),
        // Handled by the run loop, which owns the VMs.
        Action::Remigrate => {}
        Action::Link(up) => match link {
            Ok(l) => l.set(up),
            Err(why) => return Err(PostcopyError::Refused(why.into())),
        },
        // The pages' content goes back to the source, and the pages would wait for it.
        Action::Inject(_) if link.is_ok_and(|l| !l.is_up()) => {
            return Err(PostcopyError::Refused(
                "injection refused: the link is down, and the pages' content must go back \
                 to the source"
                    .into(),
            ));
        }
        Action::Inject(range) => {
            // The guest is paused only for the part that needs it (inject.rs).
            let done = dest.inject(range, &mut |pause| {
                if pause {
                    vm.pause_all()?;
                } else {
                    vm.resume_all()?;
                }
                Ok(())
            })?;
            let pause = done.paused;
            dest.telemetry().emit(Event::Inject {
                gpa: range.start,
                pages: done.pages,
                at_ns: dest.telemetry().now_ns(),
                pause_ns: pause.as_nanos() as u64,
            });
            return Ok(Some(InjectionSummary {
                gpa: range.start,
                pages: done.pages,
                pause_us: pause.as_micros() as u64,
                unavailable_us: done.unavailable.as_micros() as u64,
            }));
        }
    }
    Ok(None)
}
