//! The stall figures of faultline's own runs against a clock it does not own: in uffd mode a
//! vCPU thread waiting for a page sleeps in the kernel, so over any window its stall must
//! match the thread's off-CPU time from /proc/TID/schedstat (wall time less time on a CPU
//! and in a run queue). Real KVM, real userfaultfd.

use std::sync::Arc;
use std::time::Duration;

use faultline::contract::{FaultMode, Phase, RunConfig, Snapshot};
use faultline::postcopy::{self, RunStatus};
use faultline::telemetry::schedstat::ThreadClock;
use faultline::units::Rate;

/// One run at a time: a second would take the cores the clocks are compared on.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Each vCPU's stall in a window of post-copy, by faultline and by the kernel, in ms.
fn stall_and_off_cpu(c: &RunConfig, from_ms: u64, to_ms: u64) -> Vec<(f64, f64)> {
    let status = Arc::new(RunStatus::default());
    let snapshots = status.subscribe();
    let engine = {
        let (c, status) = (c.clone(), status.clone());
        std::thread::spawn(move || postcopy::run(&c, &status, None))
    };
    let start = std::time::Instant::now();
    let mut clocks: Vec<ThreadClock> = Vec::new();
    let mut first: Option<Arc<Snapshot>> = None;
    let mut last: Option<Arc<Snapshot>> = None;
    while last.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the run never got there"
        );
        let Some(s) = snapshots.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        // While the guest runs on the destination: before the run pauses it to finish.
        let running = matches!(s.phase, Phase::Postcopy | Phase::Complete);
        if running && first.is_none() && s.postcopy_ms >= from_ms {
            let live = status.live().expect("a live migration");
            clocks = live
                .vcpus
                .iter()
                .map(|v| ThreadClock::new(v.thread_id()))
                .collect();
            let now = start.elapsed().as_nanos() as u64;
            for c in &mut clocks {
                assert!(c.sample(now), "vCPU thread gone");
            }
            first = Some(s.clone());
        } else if running && first.is_some() && s.postcopy_ms >= to_ms {
            let now = start.elapsed().as_nanos() as u64;
            for c in &mut clocks {
                assert!(c.sample(now), "vCPU thread gone");
            }
            last = Some(s);
        }
    }
    let summary = engine.join().unwrap().unwrap();
    assert!(summary.verified, "{summary:#?}");
    let (a, b) = (first.unwrap(), last.unwrap());
    clocks
        .iter()
        .enumerate()
        .map(|(v, clock)| {
            let stall = b.vcpus[v].stall_ms - a.vcpus[v].stall_ms;
            let (_, _, off) = clock.off_cpu_within(0, u64::MAX).unwrap();
            (stall, off as f64 / 1e6)
        })
        .collect()
}

/// Each vCPU waited over a second, and its stall is within `band` (relative) of its
/// off-CPU time; the figures are printed for the record.
fn assert_stalls_within(what: &str, figures: &[(f64, f64)], band: std::ops::Range<f64>) {
    for (v, (stall, off)) in figures.iter().enumerate() {
        let gap = (stall - off) / off;
        eprintln!(
            "{what}, vCPU {v}: stall {stall:.1} ms, off-CPU {off:.1} ms ({:+.1}%)",
            gap * 100.0
        );
        assert!(
            *off > 1000.0,
            "{what}: vCPU {v} hardly waited: {off} ms off the CPU"
        );
        assert!(
            band.contains(&gap),
            "{what}: vCPU {v}: stall {stall:.1} ms vs off-CPU {off:.1} ms"
        );
    }
}

#[test]
fn uffd_mode_stalls_match_the_vcpu_threads_off_cpu_time_with_a_reader_per_vcpu() {
    let _serial = one_at_a_time();
    let c = RunConfig {
        scenario: "fidelity".into(),
        vcpus: 2,
        mem_bytes: 256 << 20,
        workload: "verify".parse().unwrap(),
        mode: FaultMode::Uffd,
        // Slow pages: each wait lasts milliseconds, so a reader's wake-up is a small part.
        fetch_rate: Rate::BytesPerSec(8 << 20),
        warmup: Duration::from_millis(300),
        duration: Duration::from_secs(4),
        ..Default::default()
    };
    // A stall is timed from when its reader reads the fault: a little below the sleep.
    assert_stalls_within(
        "a reader a vCPU",
        &stall_and_off_cpu(&c, 500, 3000),
        -0.05..0.05,
    );
}

#[test]
fn uffd_mode_stalls_match_the_off_cpu_time_with_one_reader_shared_by_the_vcpus() {
    let _serial = one_at_a_time();
    // Shared memory: one reader serves both vCPUs' faults, so it cannot wait out a page
    // already in flight (the push's); it holds that stall open until the page lands.
    // (Ended at the read instead, these stalls came to 1 ms of 2445 ms off the CPU.) Nor
    // does it wait out its own throttled fills: a worker does them, and it reads on (a
    // fault queued behind a fill was timed from its read: -10% to -48% in release builds).
    let mut workload: faultline::contract::Workload = "verify".parse().unwrap();
    workload.sharing = faultline::contract::Sharing::Shared;
    let c = RunConfig {
        scenario: "fidelity-shared".into(),
        vcpus: 2,
        mem_bytes: 256 << 20,
        workload,
        mode: FaultMode::Uffd,
        readers: 1,
        fetch_rate: Rate::BytesPerSec(8 << 20),
        warmup: Duration::from_millis(300),
        duration: Duration::from_secs(4),
        ..Default::default()
    };
    assert_stalls_within(
        "one shared reader",
        &stall_and_off_cpu(&c, 500, 3000),
        -0.05..0.05,
    );
}

#[test]
fn exit_mode_stalls_match_the_vcpu_threads_off_cpu_time_when_each_fault_waits_a_round_trip() {
    let _serial = one_at_a_time();
    // In exit mode the vCPU thread resolves its own fault: with a round trip to wait out,
    // it sleeps for most of each stall, and the kernel's clock sees the sleep. Without the
    // push, no page is ever in flight elsewhere (a vCPU waits for one awake, yielding, and
    // the kernel counts that as on the CPU); each vCPU has a slice of its own.
    let c = RunConfig {
        scenario: "fidelity-exit".into(),
        vcpus: 2,
        mem_bytes: 256 << 20,
        workload: "verify".parse().unwrap(),
        mode: FaultMode::Exit,
        rtt: Duration::from_millis(1),
        push: false,
        warmup: Duration::from_millis(300),
        duration: Duration::from_secs(4),
        ..Default::default()
    };
    // A stall also holds the copy and the mapping, on the CPU: a little above the sleep
    // (+3.0% measured, again and again), never below it.
    assert_stalls_within("exit mode", &stall_and_off_cpu(&c, 500, 3000), -0.02..0.06);
}

#[test]
fn all_vcpus_blocked_time_matches_a_link_outage_of_known_length() {
    let _serial = one_at_a_time();
    use faultline::contract::{Action, Transport};
    let c = RunConfig {
        scenario: "outage".into(),
        vcpus: 2,
        mem_bytes: 512 << 20,
        workload: "verify".parse().unwrap(),
        mode: FaultMode::Exit,
        transport: Transport::Tcp,
        // Post-copy outlasts the outage whatever the build: unthrottled, a release build
        // brought all 512 MiB in before the cut.
        fetch_rate: Rate::BytesPerSec(96 << 20),
        warmup: Duration::from_millis(300),
        duration: Duration::from_secs(6),
        ..Default::default()
    };
    let status = Arc::new(RunStatus::default());
    let snapshots = status.subscribe();
    let (actions, controls) = crossbeam_channel::bounded(8);
    let engine = {
        let status = status.clone();
        std::thread::spawn(move || postcopy::run(&c, &status, Some(&controls)))
    };
    let newest = |at_least_ms: u64| -> Arc<Snapshot> {
        loop {
            let s = snapshots
                .recv_timeout(Duration::from_secs(10))
                .expect("snapshots keep coming");
            if s.phase == Phase::Postcopy && s.postcopy_ms >= at_least_ms {
                return s;
            }
        }
    };
    let before = newest(500);
    let down = std::time::Instant::now();
    actions.send(Action::Link(false)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    actions.send(Action::Link(true)).unwrap();
    let outage = down.elapsed();
    let after = newest(before.postcopy_ms + outage.as_millis() as u64 + 100);
    let summary = engine.join().unwrap().unwrap();
    assert!(summary.verified, "{summary:#?}");
    let blocked = after.blocktime_all_ms - before.blocktime_all_ms;
    let window = (after.elapsed_ms - before.elapsed_ms) as f64;
    let outage_ms = outage.as_secs_f64() * 1000.0;
    eprintln!(
        "outage {outage_ms:.0} ms: all vCPUs blocked {blocked:.0} ms within a {window:.0} ms window"
    );
    // Every vCPU faults within moments of the cut and waits until the link is back; the
    // snapshots around it add at most their own spacing of ordinary stalls.
    assert!(
        blocked >= outage_ms * 0.95,
        "{blocked} ms blocked in a {outage_ms} ms outage"
    );
    assert!(
        blocked <= window,
        "{blocked} ms blocked in a {window} ms window"
    );
}
