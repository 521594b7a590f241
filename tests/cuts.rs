//! Cut and stalled connections between a destination and a page server of its own process
//! (`--transport tcp`): a cutting proxy sits on the wire (RunConfig::relay), and the run
//! must pay in time only, never in pages. Real KVM, real userfaultfd, real sockets.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::CuttingProxy;
use faultline::contract::{FaultMode, Phase, Relay, RunConfig, Summary, Transport};
use faultline::postcopy::{self, RunStatus};
use faultline::units::Rate;

/// One run at a time: each has a VM on 2 cores and its proxy's threads.
static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(mode: FaultMode, push: bool) -> RunConfig {
    RunConfig {
        scenario: "cuts".into(),
        vcpus: 2,
        mem_bytes: 128 << 20,
        workload: "verify".parse().unwrap(),
        mode,
        transport: Transport::Tcp,
        fetch_rate: Rate::BytesPerSec(32 << 20),
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(3),
        push,
        ..Default::default()
    }
}

/// Runs `c` with a cutting proxy (seeded) in front of its page server, armed by `arm` once
/// the guest runs at the destination; returns the summary and the proxy.
fn run_through_proxy(
    mut c: RunConfig,
    seed: u64,
    arm: impl FnOnce(&CuttingProxy),
) -> (Summary, Arc<CuttingProxy>) {
    let slot: Arc<Mutex<Option<Arc<CuttingProxy>>>> = Arc::default();
    let put = slot.clone();
    c.relay = Some(Relay(Arc::new(move |server| {
        let proxy = Arc::new(CuttingProxy::start(server, seed));
        let addr = proxy.addr;
        *put.lock().unwrap() = Some(proxy);
        addr
    })));
    let status = Arc::new(RunStatus::default());
    let snapshots = status.subscribe();
    let engine = {
        let status = status.clone();
        std::thread::spawn(move || postcopy::run(&c, &status, None))
    };
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(60), "no post-copy");
        if let Some(s) = snapshots.recv_timeout(Duration::from_millis(100))
            && s.phase == Phase::Postcopy
        {
            break;
        }
    }
    let proxy = slot
        .lock()
        .unwrap()
        .clone()
        .expect("the run went through the relay");
    arm(&proxy);
    drop(snapshots);
    let summary = engine.join().unwrap().unwrap();
    (summary, proxy)
}

/// Every page arrived, and once: the fills counted (demand and pushed, each counted by the
/// one thread that claimed the page) add up to the data pages exactly, and all verify.
fn assert_every_page_once(what: &str, s: &Summary) {
    assert!(s.verified, "{what}: {s:#?}");
    assert_eq!(s.verify.mismatches, 0, "{what}");
    assert_eq!(s.pages_injected, 0, "{what}");
    assert_eq!(
        s.pages_demand + s.pages_pushed,
        s.pages_total - s.pages_boot,
        "{what}: {s:#?}"
    );
    assert_eq!(
        s.verify.pages_checked,
        s.pages_total - s.pages_boot,
        "{what}"
    );
}

#[test]
fn twenty_cuts_in_process_cost_time_never_a_page_in_both_modes_with_push_on_and_off() {
    let _serial = one_at_a_time();
    let cases = [
        (FaultMode::Exit, true, 0xC075_0001_u64),
        (FaultMode::Exit, false, 0xC075_0002),
        (FaultMode::Uffd, true, 0xC075_0003),
        (FaultMode::Uffd, false, 0xC075_0004),
    ];
    for (mode, push, seed) in cases {
        let what = format!("{mode} push {push}");
        let started = Instant::now();
        let (s, proxy) = run_through_proxy(config(mode, push), seed, |p| p.arm(20));
        assert_every_page_once(&what, &s);
        assert!(proxy.cuts() >= 20, "{what}: only {} cuts", proxy.cuts());
        // Each cut connection was noticed and replaced when next used (a cut that falls
        // between two answers leaves a connection that may never be used again: a thread
        // that had no more to fetch, so allow two of those).
        assert!(s.reconnects >= 18, "{what}: {} reconnects", s.reconnects);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: too slow"
        );
        eprintln!(
            "{what}: {} cuts, {} reconnects, {} demand + {} pushed pages",
            proxy.cuts(),
            s.reconnects,
            s.pages_demand,
            s.pages_pushed
        );
    }
}

#[test]
fn a_stalled_connection_is_replaced_after_the_answer_timeout_and_nothing_is_lost() {
    use faultline::postcopy::net::client::ANSWER_TIMEOUT;
    let _serial = one_at_a_time();
    for (mode, seed) in [
        (FaultMode::Exit, 0x57A1_0001_u64),
        (FaultMode::Uffd, 0x57A1_0002),
    ] {
        let what = format!("{mode}");
        let started = Instant::now();
        let (s, proxy) = run_through_proxy(config(mode, true), seed, |p| p.arm_stalls(3));
        let took = started.elapsed();
        assert_every_page_once(&what, &s);
        // A connection armed late may not reach its stall point before the run ends.
        let stalls = proxy.cuts();
        assert!(stalls >= 1, "{what}: no stall made");
        // As with cuts, a stall between two answers shows only if the connection is used
        // again; one of those is allowed.
        assert!(
            s.reconnects + 1 >= stalls as u64,
            "{what}: {} reconnects for {stalls} stalls",
            s.reconnects
        );
        // Each stall given up on after the timeout, on top of a run of 3 s and its fill
        // and checks: without the timeout, a stalled fetch would wait for ever.
        assert!(
            took < stalls as u32 * ANSWER_TIMEOUT + Duration::from_secs(20),
            "{what}: {took:?}"
        );
        eprintln!("{what}: {stalls} stalls replaced; run took {took:?}");
    }
}
