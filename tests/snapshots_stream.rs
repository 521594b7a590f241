//! The monitor's snapshot stream from a real run on /dev/kvm: what observers see.

use std::sync::Arc;
use std::time::Duration;

use faultline::contract::Workload;
use faultline::contract::{Action, FaultMode, RunConfig};
use faultline::contract::{Activity, Phase, Snapshot};
use faultline::postcopy::{self, RunStatus};
use faultline::units::{GpaRange, Rate};

fn config(workload: &str, mode: FaultMode) -> RunConfig {
    RunConfig {
        scenario: "stream".into(),
        vcpus: 2,
        mem_bytes: 64 << 20,
        workload: workload.parse::<Workload>().unwrap(),
        mode,
        fetch_rate: Rate::BytesPerSec(32 << 20),
        warmup: Duration::from_millis(500),
        duration: Duration::from_millis(1500),
        ..Default::default()
    }
}

/// Runs `c`, sending each action after its delay, and returns the summary and every
/// snapshot (a reader drains the stream as it comes).
fn run_watched(
    c: &RunConfig,
    actions: Vec<(Duration, Action)>,
) -> (faultline::contract::Summary, Vec<Arc<Snapshot>>) {
    let status = RunStatus::default();
    let rx = status.subscribe();
    let (tx, controls) = crossbeam_channel::unbounded();
    std::thread::scope(|s| {
        s.spawn(|| {
            for (at, a) in actions {
                std::thread::sleep(at);
                tx.send(a).unwrap();
            }
        });
        let reader = s.spawn(move || {
            let mut all = Vec::new();
            while let Some(s) = rx.recv_timeout(Duration::from_secs(5)) {
                let done = s.summary.is_some();
                all.push(s);
                if done {
                    break;
                }
            }
            all
        });
        let summary = postcopy::run(c, &status, Some(&controls)).unwrap();
        (summary, reader.join().unwrap())
    })
}

fn all_snapshots(c: &RunConfig) -> (faultline::contract::Summary, Vec<Arc<Snapshot>>) {
    run_watched(c, Vec::new())
}

#[test]
fn snapshots_follow_the_run_and_the_last_carries_the_summary() {
    let (summary, snaps) = all_snapshots(&config("hotspot-read", FaultMode::Exit));
    assert!(summary.verified, "{summary:#?}");
    assert!(snaps.len() >= 10, "{} snapshots", snaps.len());
    for w in snaps.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "no snapshot lost for a fast reader");
    }
    assert_eq!(snaps[0].phase, Phase::Warmup);
    assert!(snaps.iter().any(|s| s.phase == Phase::Postcopy));
    let last = snaps.last().unwrap();
    assert_eq!(last.phase, Phase::Finished);
    assert_eq!(last.summary.as_ref(), Some(&summary));
    assert!(last.message.as_deref().unwrap().contains("verified"));

    // The counts a snapshot shows are the summary's counts.
    assert_eq!(last.pages.demand, summary.pages_demand);
    assert_eq!(last.pages.pushed, summary.pages_pushed);
    assert_eq!(last.pages.missing, 0);
    let faults: u64 = last.vcpus.iter().map(|v| v.faults).sum();
    let summary_faults: u64 = summary.per_vcpu.iter().map(|v| v.fault_exits).sum();
    assert_eq!(faults, summary_faults);
    assert_eq!(
        last.histogram.total(),
        summary_faults,
        "every fault is in the histogram"
    );

    // The memory map covers every page, and ends with none missing.
    let cells = &last.memory_map.cells;
    let pages: u64 = cells.iter().map(|c| u64::from(c.total())).sum();
    assert_eq!(pages, summary.pages_total);
    assert!(cells.iter().all(|c| c.missing == 0 && c.in_flight == 0));
    let demand: u64 = cells.iter().map(|c| u64::from(c.demand)).sum();
    assert_eq!(demand, summary.pages_demand);

    // During post-copy the vCPUs were seen stalling, and the heatmaps recorded it.
    let postcopy: Vec<_> = snaps
        .iter()
        .filter(|s| s.phase == Phase::Postcopy)
        .collect();
    let mid = postcopy[postcopy.len() / 2];
    assert!(mid.pages.missing > 0);
    assert_eq!(mid.throttle, "32.0 MiB/s");
    assert!(mid.downtime_us.is_some());
    assert_eq!(last.stall_heatmap.rows.len(), 2);
    assert!(last.stall_heatmap.rows.iter().flatten().any(|&p| p > 0));
    assert!(last.fault_heatmap.rows.iter().flatten().any(|&n| n > 0));
    let heat_faults: u64 = last
        .fault_heatmap
        .rows
        .iter()
        .flatten()
        .map(|&n| u64::from(n))
        .sum();
    assert_eq!(
        heat_faults, summary_faults,
        "the fault heatmap still holds the whole run"
    );
    for v in &last.vcpus {
        assert!(v.baseline_per_sec > 0.0, "the warm-up pace is known");
        assert!(
            !v.top_regions.is_empty(),
            "vCPU {} has no stall regions",
            v.id
        );
        assert!(
            v.top_regions
                .windows(2)
                .all(|w| w[0].stall_us >= w[1].stall_us)
        );
    }
    assert!(
        snaps
            .iter()
            .flat_map(|s| &s.vcpus)
            .any(|v| matches!(v.activity, Activity::Stalled { .. }) || v.stall_share > 0.0)
    );
}

#[test]
fn operator_actions_show_in_the_next_snapshots() {
    let c = config("sequential-read", FaultMode::Uffd);
    let (summary, snaps) = run_watched(
        &c,
        vec![
            (
                // Half of data memory, well after switchover: some of it is surely present
                // however slow the machine (demand and both push threads start there).
                Duration::from_millis(1000),
                Action::Inject(GpaRange {
                    start: 2 << 20,
                    len: 30 << 20,
                }),
            ),
            (Duration::from_millis(50), Action::Throttle(Rate::Unlimited)),
        ],
    );
    assert!(summary.verified, "{summary:#?}");
    assert_eq!(summary.injections.len(), 1);
    let last = snaps.last().unwrap();
    assert_eq!(last.injections.len(), 1);
    assert_eq!(last.injections[0].gpa, 2 << 20);
    // Seen during the run, not only after the final fill (which lifts the limit anyway).
    assert!(
        snaps
            .iter()
            .any(|s| s.throttle == "unlimited" && s.postcopy_ms > 0 && s.postcopy_ms < 1450),
        "the new throttle never showed while the run went on"
    );
    assert!(last.pages.injected > 0);
    let injected: u64 = last
        .memory_map
        .cells
        .iter()
        .map(|c| u64::from(c.injected))
        .sum();
    assert_eq!(injected, summary.pages_injected);
}

#[test]
fn a_new_migration_moves_the_running_guest_again() {
    let mut c = config("verify", FaultMode::Exit);
    c.duration = Duration::from_millis(2500);
    let (summary, snaps) = run_watched(
        &c,
        vec![
            (
                Duration::from_millis(900),
                Action::Throttle(Rate::BytesPerSec(48 << 20)),
            ),
            (Duration::from_millis(100), Action::Remigrate),
        ],
    );
    assert!(summary.verified, "{summary:#?}");
    assert_eq!(summary.migrations, 2);
    assert_eq!(summary.verify.guest_errors, 0);
    let last = snaps.last().unwrap();
    assert_eq!(last.migration, 2);
    assert!(last.summary.is_some());
    // The second migration starts missing everything again, under the operator's throttle.
    let second: Vec<_> = snaps.iter().filter(|s| s.migration == 2).collect();
    assert!(
        second.iter().any(|s| s.pages.missing > 0),
        "nothing went missing again"
    );
    assert_eq!(second[0].throttle, "48.0 MiB/s");
}

#[test]
fn a_stop_request_ends_the_run_early_and_still_checks_it() {
    let mut c = config("random-read", FaultMode::Uffd);
    c.duration = Duration::from_secs(3600);
    let status = RunStatus::default();
    let summary = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(800));
            status.request_stop();
        });
        postcopy::run(&c, &status, None).unwrap()
    });
    assert!(summary.verified, "{summary:#?}");
    assert_eq!(
        summary.pages_demand + summary.pages_pushed,
        summary.pages_total - summary.pages_boot
    );
}

#[test]
fn the_summary_names_each_migration_and_the_throttle_left_in_force() {
    let mut c = config("verify", FaultMode::Exit);
    c.duration = Duration::from_millis(2000);
    // Each delay follows the last: a new migration, then the operator lifts the limit.
    let actions = vec![
        (Duration::from_millis(900), Action::Remigrate),
        (
            Duration::from_millis(400),
            Action::Throttle(Rate::Unlimited),
        ),
    ];
    let (summary, _) = run_watched(&c, actions);
    assert!(summary.verified, "{summary:#?}");
    // The operator lifted the limit: the summary says so, and what it was at first.
    assert_eq!(summary.throttle, "unlimited");
    assert_eq!(summary.throttle_initial.as_deref(), Some("32.0 MiB/s"));
    assert_eq!(summary.migrations, 2);
    let numbers: Vec<u32> = summary.legs.iter().map(|l| l.migration).collect();
    assert_eq!(numbers, vec![1, 2]);
    let (first, last) = (&summary.legs[0], &summary.legs[1]);
    assert!(first.pages_checked > 0 && first.mismatches == 0);
    assert!(first.pages_demand + first.pages_pushed > 0);
    assert_eq!(first.throttle, "32.0 MiB/s");
    assert!(
        first.latency_us.max > 0,
        "the monitor kept the first leg's latency"
    );
    assert_eq!(last.downtime_us, summary.downtime_us);
    assert_eq!(
        summary.verify.pages_checked,
        first.pages_checked + last.pages_checked
    );
}
