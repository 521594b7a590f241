//! Post-copy migration on the real /dev/kvm and userfaultfd, through the library.

use std::time::Duration;

use faultline::contract::Backing;
use faultline::contract::Workload;
use faultline::contract::{
    Action, FaultMode, Prefetch, RunConfig, Summary, TimedAction, Transport,
};
use faultline::postcopy::{self, RunStatus};
use faultline::units::{GpaRange, Rate};

fn config(workload: &str, mode: FaultMode, vcpus: usize) -> RunConfig {
    RunConfig {
        scenario: "test".into(),
        vcpus,
        mem_bytes: 64 << 20,
        workload: workload.parse::<Workload>().unwrap(),
        mode,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(400),
        ..Default::default()
    }
}

/// Both backings run on this machine: its kernel resolves minor faults on shared memory.
#[test]
fn shared_memory_is_the_default_backing_here() {
    assert_eq!(
        faultline::postcopy::destination::preferred_backing(),
        Backing::Shared
    );
}

fn run(c: &RunConfig) -> Summary {
    postcopy::run(c, &RunStatus::default(), None).unwrap()
}

fn check_migration(workload: &str, mode: FaultMode, vcpus: usize, backing: Backing) {
    let mut c = config(workload, mode, vcpus);
    c.backing = Some(backing);
    // An unlimited push can fill a vCPU's slice before that vCPU first runs (4 vCPUs and
    // the push on 2 cores), and every vCPU must fault here; the run fills the rest at full
    // speed after its duration.
    c.fetch_rate = Rate::BytesPerSec(64 << 20);
    check(&c);
}

/// Runs `c` and checks everything a migration promises.
fn check(c: &RunConfig) {
    let (mode, vcpus) = (c.mode, c.vcpus);
    let s = run(c);
    assert!(s.verified, "{s:#?}");
    assert_eq!(s.backing, c.backing);
    assert_eq!(s.transport, Some(c.transport));
    assert_eq!(s.verify.mismatches, 0);
    assert_eq!(s.verify.guest_errors, 0);
    assert_eq!(
        s.pages_demand + s.pages_pushed + s.pages_prefetched,
        s.pages_total - s.pages_boot,
        "{s:#?}"
    );
    assert_eq!(s.per_vcpu.len(), vcpus);
    for v in &s.per_vcpu {
        assert!(v.fault_exits > 0, "vCPU {} never faulted: {s:#?}", v.vcpu);
        assert!(v.stall_ms > 0.0);
        assert!(v.latency_us.p50 <= v.latency_us.p99 && v.latency_us.p99 <= v.latency_us.max);
    }
    // Every vCPU blocked at once is no longer than any one vCPU's stalls; with one vCPU it
    // is exactly its stalls (worked out by the monitor from the stall intervals).
    let least_stalled = s
        .per_vcpu
        .iter()
        .map(|v| v.stall_ms)
        .fold(f64::INFINITY, f64::min);
    assert!(s.blocktime_all_ms <= least_stalled * 1.001, "{s:#?}");
    if vcpus == 1 && s.telemetry_dropped == 0 {
        assert!(s.blocktime_all_ms >= least_stalled * 0.99, "{s:#?}");
    }
    let total_faults: u64 = s.per_vcpu.iter().map(|v| v.fault_exits).sum();
    assert!(total_faults >= s.pages_demand, "{s:#?}");
    match mode {
        FaultMode::Uffd => assert_eq!(s.exit_path, None),
        FaultMode::Exit => assert!(s.exit_path.is_some()),
    }
}

macro_rules! migration_tests {
    ($($name:ident: $workload:expr,)*) => {$(
        mod $name {
            use faultline::contract::FaultMode;
            use faultline::contract::Backing::{Anonymous, Shared};
            #[test]
            fn uffd_one_vcpu() { super::check_migration($workload, FaultMode::Uffd, 1, Shared); }
            #[test]
            fn uffd_four_vcpus() { super::check_migration($workload, FaultMode::Uffd, 4, Shared); }
            #[test]
            fn exit_one_vcpu() { super::check_migration($workload, FaultMode::Exit, 1, Shared); }
            #[test]
            fn exit_four_vcpus() { super::check_migration($workload, FaultMode::Exit, 4, Shared); }
            #[test]
            fn uffd_four_vcpus_anon() {
                super::check_migration($workload, FaultMode::Uffd, 4, Anonymous);
            }
            #[test]
            fn exit_four_vcpus_anon() {
                super::check_migration($workload, FaultMode::Exit, 4, Anonymous);
            }
        }
    )*};
}

migration_tests! {
    sequential_read: "sequential-read",
    sequential_write: "sequential-write",
    sequential_mixed: "sequential-mixed",
    random_read: "random-read",
    random_write: "random-write",
    random_mixed: "random-mixed",
    hotspot_read: "hotspot-read",
    hotspot_write: "hotspot-write",
    hotspot_mixed: "hotspot-mixed",
    stride_read: "stride-read",
    stride_write: "stride-write",
    stride_mixed: "stride-mixed",
    verify: "verify",
}

#[test]
fn read_only_guest_leaves_destination_identical_to_source() {
    let s = run(&config("random-read", FaultMode::Exit, 2));
    assert!(s.verified);
    // Every data page was compared byte for byte.
    assert_eq!(s.verify.pages_checked, s.pages_total - s.pages_boot);
}

fn check_injection(mode: FaultMode, backing: Backing) {
    check_injection_over(mode, backing, Transport::Local);
}

fn check_injection_over(mode: FaultMode, backing: Backing, transport: Transport) {
    let mut c = config("verify", mode, 4);
    c.backing = Some(backing);
    c.transport = transport;
    c.fetch_rate = Rate::BytesPerSec(64 << 20);
    c.duration = Duration::from_millis(1500);
    let range = GpaRange {
        start: 8 << 20,
        len: 16 << 20,
    };
    c.timeline = vec![TimedAction {
        at: Duration::from_millis(700),
        action: Action::Inject(range),
    }];
    let s = run(&c);
    assert!(s.verified, "{s:#?}");
    assert_eq!(s.transport, Some(transport));
    assert_eq!(s.injections.len(), 1);
    assert!(s.pages_injected > 0, "{s:#?}");
    assert!(s.pages_injected <= range.len / 4096);
    // Dropped pages come back, and the guest's own stamps prove none came back stale.
    assert_eq!(s.pages_refetched, s.pages_injected, "{s:#?}");
    assert_eq!(
        s.pages_demand + s.pages_pushed + s.pages_prefetched,
        s.pages_total - s.pages_boot + s.pages_injected
    );
    // Shared memory pauses the guest only to take the pages; the content goes back while
    // it runs, so the range is out of reach longer than the guest is paused.
    let inj = &s.injections[0];
    assert!(inj.pause_us > 0 && inj.unavailable_us > 0, "{inj:?}");
    if backing == Backing::Shared {
        assert!(inj.pause_us <= inj.unavailable_us, "{inj:?}");
    }
}

#[test]
fn injection_over_prefetched_pages_puts_them_back_and_still_verifies() {
    for backing in [Backing::Shared, Backing::Anonymous] {
        let mut c = config("verify", FaultMode::Exit, 2);
        c.backing = Some(backing);
        c.prefetch = Prefetch::Adaptive;
        c.push = false;
        c.fetch_rate = Rate::Unlimited;
        c.duration = Duration::from_millis(1200);
        let range = GpaRange {
            start: 8 << 20,
            len: 16 << 20,
        };
        c.timeline = vec![TimedAction {
            at: Duration::from_millis(600),
            action: Action::Inject(range),
        }];
        let s = run(&c);
        assert!(s.verified, "{backing}: {s:#?}");
        assert!(s.pages_prefetched > 0, "{backing}: {s:#?}");
        assert!(s.pages_injected > 0, "{backing}: {s:#?}");
        assert_eq!(
            s.pages_demand + s.pages_pushed + s.pages_prefetched,
            s.pages_total - s.pages_boot + s.pages_injected,
            "{backing}: {s:#?}"
        );
    }
}

#[test]
fn injection_refetches_the_range_and_still_verifies_uffd() {
    check_injection(FaultMode::Uffd, Backing::Shared);
}

#[test]
fn injection_refetches_the_range_and_still_verifies_exit() {
    check_injection(FaultMode::Exit, Backing::Shared);
}

#[test]
fn injection_refetches_the_range_and_still_verifies_uffd_anon() {
    check_injection(FaultMode::Uffd, Backing::Anonymous);
}

#[test]
fn injection_refetches_the_range_and_still_verifies_exit_anon() {
    check_injection(FaultMode::Exit, Backing::Anonymous);
}

/// Pages over a real socket: fetched from a page server, checked on arrival, and an
/// injected range's pages put back through it.
fn check_over_tcp(mode: FaultMode) {
    let mut c = config("verify", mode, 4);
    c.backing = Some(Backing::Shared);
    c.transport = Transport::Tcp;
    c.fetch_rate = Rate::BytesPerSec(64 << 20);
    check(&c);
}

#[test]
fn migration_over_tcp_verifies_uffd() {
    check_over_tcp(FaultMode::Uffd);
}

#[test]
fn migration_over_tcp_verifies_exit() {
    check_over_tcp(FaultMode::Exit);
}

#[test]
fn injection_over_tcp_puts_pages_back_and_still_verifies() {
    check_injection_over(FaultMode::Exit, Backing::Shared, Transport::Tcp);
}

#[test]
fn a_link_outage_stalls_the_faults_then_the_run_recovers_and_verifies() {
    let mut c = config("random-read", FaultMode::Exit, 2);
    c.transport = Transport::Tcp;
    c.fetch_rate = Rate::BytesPerSec(32 << 20);
    c.duration = Duration::from_millis(1200);
    let at = |ms| Duration::from_millis(ms);
    c.timeline = vec![
        TimedAction {
            at: at(200),
            action: Action::Link(false),
        },
        // Refused while the link is down: the range's content could not go back.
        TimedAction {
            at: at(400),
            action: Action::Inject(GpaRange {
                start: 8 << 20,
                len: 4 << 20,
            }),
        },
        TimedAction {
            at: at(700),
            action: Action::Link(true),
        },
    ];
    let s = run(&c);
    assert!(s.verified, "{s:#?}");
    assert!(s.injections.is_empty() && s.pages_injected == 0, "{s:#?}");
    // The guest faults all along: some fault waited out most of the outage.
    assert!(s.latency_us.max >= 300_000, "{s:#?}");
    assert!(s.blocktime_all_ms >= 300.0, "{s:#?}");
}

/// The link goes down and stays down past the run's link timeout: the run fails with
/// the reason, promptly, with vCPUs and handler threads that were waiting on the source.
fn check_a_source_gone_for_good_fails_the_run(mode: FaultMode) {
    let mut c = config("random-read", mode, 2);
    c.transport = Transport::Tcp;
    c.fetch_rate = Rate::BytesPerSec(32 << 20);
    c.duration = Duration::from_secs(20);
    c.link_timeout = Duration::from_millis(300);
    c.timeline = vec![TimedAction {
        at: Duration::from_millis(200),
        action: Action::Link(false),
    }];
    let started = std::time::Instant::now();
    let err = postcopy::run(&c, &RunStatus::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains("gave up after 0.3 s without the source"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn a_source_gone_for_good_fails_the_run_uffd() {
    check_a_source_gone_for_good_fails_the_run(FaultMode::Uffd);
}

#[test]
fn a_source_gone_for_good_fails_the_run_exit() {
    check_a_source_gone_for_good_fails_the_run(FaultMode::Exit);
}

#[test]
fn a_run_ended_during_an_outage_brings_the_link_back_and_verifies() {
    let mut c = config("random-read", FaultMode::Uffd, 2);
    c.transport = Transport::Tcp;
    c.fetch_rate = Rate::BytesPerSec(32 << 20);
    c.duration = Duration::from_millis(600);
    c.timeline = vec![TimedAction {
        at: Duration::from_millis(200),
        action: Action::Link(false),
    }];
    let s = run(&c);
    assert!(s.verified, "{s:#?}");
    assert!(!s.postcopy_complete);
}

#[test]
fn a_link_action_on_local_copies_is_refused_and_the_run_goes_on() {
    let mut c = config("random-read", FaultMode::Exit, 1);
    c.timeline = vec![TimedAction {
        at: Duration::from_millis(100),
        action: Action::Link(false),
    }];
    let s = run(&c);
    assert!(s.verified, "{s:#?}");
    assert!(s.latency_us.max < 300_000, "{s:#?}");
}

#[test]
fn throttle_holds_the_transfer_rate() {
    let mut c = config("random-read", FaultMode::Exit, 2);
    let limit = 20u64 << 20;
    c.fetch_rate = Rate::BytesPerSec(limit);
    c.duration = Duration::from_secs(5);
    let s = run(&c);
    assert!(s.verified);
    assert!(
        s.postcopy_complete,
        "62 MiB at 20 MiB/s fits in 5 s: {s:#?}"
    );
    let rate = s.transfer_bytes_per_sec as f64;
    assert!(
        (rate - limit as f64).abs() <= 0.25 * limit as f64,
        "transfer rate {rate} vs limit {limit}"
    );
}

#[test]
fn push_off_leaves_only_demand_fills_until_the_end() {
    let mut c = config("hotspot-read", FaultMode::Uffd, 2);
    c.push = false;
    c.duration = Duration::from_millis(300);
    let s = run(&c);
    // The hot set is demand-filled; the rest arrives only in the final drain.
    assert!(!s.postcopy_complete);
    assert!(s.pages_demand > 0);
    assert!(s.verified);
}

#[test]
fn operator_actions_arrive_through_the_control_channel() {
    let mut c = config("sequential-read", FaultMode::Exit, 1);
    c.fetch_rate = Rate::BytesPerSec(4 << 20);
    c.duration = Duration::from_secs(2);
    let (tx, rx) = crossbeam_channel::unbounded();
    tx.send(Action::Throttle(Rate::Unlimited)).unwrap();
    let s = postcopy::run(&c, &RunStatus::default(), Some(&rx)).unwrap();
    // At 4 MiB/s, 62 MiB could never have been filled in 2 s.
    assert!(s.postcopy_complete, "{s:#?}");
}

#[test]
fn injection_outside_data_memory_is_refused_before_the_run() {
    let mut c = config("sequential-read", FaultMode::Exit, 1);
    c.timeline = vec![TimedAction {
        at: Duration::ZERO,
        action: Action::Inject(GpaRange {
            start: 0,
            len: 4096,
        }),
    }];
    let err = postcopy::run(&c, &RunStatus::default(), None).unwrap_err();
    assert!(
        err.to_string().contains("outside guest data memory"),
        "{err}"
    );
}

/// Pushes a 64 MiB image (each page holding its own number) from `source(image)` into a
/// destination of `backing` split over three userfaultfds, until nothing is missing.
fn push_everything(
    backing: Backing,
    source: impl FnOnce(
        std::sync::Arc<faultline::vmm::GuestRam>,
    ) -> std::sync::Arc<dyn faultline::postcopy::PageSource>,
) -> (
    std::sync::Arc<faultline::postcopy::Destination>,
    std::sync::Arc<faultline::vmm::GuestRam>,
) {
    use faultline::postcopy::{Destination, Throttle, destination};
    use faultline::telemetry::Telemetry;
    use faultline::uffd::Userfaultfd;
    use faultline::vmm::GuestRam;
    use std::sync::Arc;

    let mem = 64 << 20;
    let image = GuestRam::new(mem).unwrap();
    for page in 0..mem / 4096 {
        image.write(page * 4096, &page.to_le_bytes()).unwrap();
    }
    let ram = Arc::new(GuestRam::with_backing(mem, backing).unwrap());
    // Three parts: their boundaries fall inside push batches.
    let uffds = (0..3)
        .map(|_| {
            let features = destination::backing_features(backing);
            Arc::new(Userfaultfd::new(features, true).unwrap())
        })
        .collect();
    let dest = Arc::new(
        Destination::with_uffds(
            ram.clone(),
            uffds,
            source(Arc::new(image)),
            Throttle::new(Rate::Unlimited),
            Duration::ZERO,
            Arc::new(Telemetry::new(1)),
        )
        .unwrap(),
    );
    assert_eq!(dest.uffd_count(), 3);
    let pushers: Vec<_> = (0..2u64)
        .map(|i| {
            destination::spawn(format!("push{i}"), dest.clone(), move |d| d.push_part(i, 2))
                .unwrap()
        })
        .collect();
    let start = std::time::Instant::now();
    while dest.missing() > 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "push stalled");
        assert!(
            pushers.iter().all(|p| !p.is_finished()),
            "a push thread failed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    dest.stop();
    for p in pushers {
        p.join().unwrap().unwrap();
    }
    (dest, ram)
}

#[test]
fn memory_split_over_several_userfaultfds_fills_completely_and_exactly() {
    use faultline::postcopy::InProcessSource;
    for backing in [Backing::Anonymous, Backing::Shared] {
        let (dest, ram) = push_everything(backing, |image| {
            std::sync::Arc::new(InProcessSource::new(image))
        });
        for page in 512..ram.pages() {
            assert_eq!(
                ram.read_u64(page * 4096).unwrap(),
                page,
                "{backing}: page {page}"
            );
        }
        // Copied straight from the in-process image: nothing travels, nothing is checksummed.
        assert_eq!(dest.telemetry().run.checksum_mismatches.get(), 0);
    }
}

#[test]
fn pages_pushed_over_tcp_arrive_whole_and_checked() {
    use faultline::postcopy::InProcessSource;
    use faultline::postcopy::net::{ClientOptions, PageServer, TcpSource};
    use std::sync::Arc;
    let mut server = None;
    let (dest, ram) = push_everything(Backing::Shared, |image| {
        let s = PageServer::bind(
            "127.0.0.1:0",
            Arc::new(InProcessSource::new(image)),
            Duration::ZERO,
        )
        .unwrap();
        let options = ClientOptions {
            token: s.token(),
            ..ClientOptions::default()
        };
        let source = Arc::new(TcpSource::connect(s.addr(), options).unwrap());
        server = Some(s);
        source
    });
    for page in 512..ram.pages() {
        assert_eq!(ram.read_u64(page * 4096).unwrap(), page, "page {page}");
    }
    let run = &dest.telemetry().run;
    assert_eq!(run.checksum_mismatches.get(), 0);
    assert_eq!(run.bytes_transferred.get(), (ram.pages() - 512) * 4096);
    // One connection per push thread at most (and the first, from connecting).
    assert!(server.unwrap().connections() <= 3);
}

#[test]
fn a_demand_fill_whose_source_is_gone_fails_and_leaves_the_page_missing() {
    use faultline::postcopy::net::{ClientOptions, PageServer, TcpSource};
    use faultline::postcopy::page_state::PageState;
    use faultline::postcopy::{Destination, InProcessSource, Throttle, destination};
    use faultline::telemetry::Telemetry;
    use faultline::uffd::Userfaultfd;
    use faultline::vmm::GuestRam;
    use std::sync::Arc;

    let mem = 64 << 20;
    let image = Arc::new(InProcessSource::new(Arc::new(GuestRam::new(mem).unwrap())));
    let server = PageServer::bind("127.0.0.1:0", image, Duration::ZERO).unwrap();
    let addr = server.addr();
    let uffd =
        Arc::new(Userfaultfd::new(destination::backing_features(Backing::Shared), false).unwrap());
    let dest = Destination::new(
        Arc::new(GuestRam::shared(mem).unwrap()),
        uffd,
        Arc::new(
            TcpSource::connect(
                addr,
                ClientOptions {
                    token: server.token(),
                    ..ClientOptions::default()
                },
            )
            .unwrap(),
        ),
        Throttle::new(Rate::Unlimited),
        Duration::ZERO,
        Arc::new(Telemetry::new(1)),
    )
    .unwrap();
    let gpa = 1000 * 4096;
    dest.fill_demand(gpa - 4096, true).unwrap();
    drop(server);
    let err = dest.fill_demand(gpa, true).unwrap_err().to_string();
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(!err.contains('\n'), "{err}");
    // Nothing was placed: the page can be claimed again once a source answers.
    assert_eq!(dest.pages().get(1000), PageState::Missing);
    assert_eq!(dest.pages().get(999), PageState::FilledByDemand);
}

#[test]
fn shared_memory_needs_a_userfaultfd_with_minor_faults() {
    use faultline::postcopy::{Destination, InProcessSource, Throttle};
    use faultline::telemetry::Telemetry;
    use faultline::uffd::{Features, Userfaultfd};
    use faultline::vmm::GuestRam;
    use std::sync::Arc;

    let mem = 64 << 20;
    let err = Destination::new(
        Arc::new(GuestRam::shared(mem).unwrap()),
        Arc::new(Userfaultfd::new(Features::SIGBUS, true).unwrap()),
        Arc::new(InProcessSource::new(Arc::new(GuestRam::new(mem).unwrap()))),
        Throttle::new(Rate::Unlimited),
        Duration::ZERO,
        Arc::new(Telemetry::new(1)),
    )
    .err()
    .expect("a missing-only userfaultfd cannot serve shared memory");
    assert!(err.to_string().contains("MINOR_SHMEM"), "{err}");
}

/// A source whose pages travel: served through `fetch` with a CRC32 each (no local image
/// to copy from), and one page damaged after its checksum was taken.
struct Transported {
    inner: faultline::postcopy::InProcessSource,
    damaged_gpa: u64,
}

impl faultline::postcopy::PageSource for Transported {
    fn fetch(
        &self,
        gpa: u64,
        buf: &mut [u8],
        checksums: &mut Vec<u32>,
    ) -> Result<(), faultline::postcopy::SourceError> {
        self.inner.fetch(gpa, buf, checksums)?;
        if (gpa..gpa + buf.len() as u64).contains(&self.damaged_gpa) {
            buf[(self.damaged_gpa - gpa) as usize + 100] ^= 0xff;
        }
        Ok(())
    }

    fn put_back(&self, gpa: u64, data: &[u8]) -> Result<(), faultline::postcopy::SourceError> {
        self.inner.put_back(gpa, data)
    }

    fn describe(&self) -> String {
        "transported".into()
    }
}

#[test]
fn pages_that_travel_are_checked_on_arrival() {
    let damaged_gpa = 1000 * 4096;
    let (dest, ram) = push_everything(Backing::Shared, |image| {
        std::sync::Arc::new(Transported {
            inner: faultline::postcopy::InProcessSource::new(image),
            damaged_gpa,
        })
    });
    for page in 512..ram.pages() {
        assert_eq!(ram.read_u64(page * 4096).unwrap(), page, "page {page}");
    }
    assert_eq!(dest.telemetry().run.checksum_mismatches.get(), 1);
}

/// A destination of shared RAM over `mem` bytes whose source image holds each page's
/// number, with its one userfaultfd (blocking faults: nobody reads it here).
fn shared_destination(
    mem: u64,
) -> (
    std::sync::Arc<faultline::postcopy::Destination>,
    std::sync::Arc<faultline::vmm::GuestRam>,
    std::sync::Arc<faultline::uffd::Userfaultfd>,
) {
    use faultline::postcopy::{Destination, InProcessSource, Throttle, destination};
    use faultline::telemetry::Telemetry;
    use faultline::uffd::Userfaultfd;
    use faultline::vmm::GuestRam;
    use std::sync::Arc;

    let image = GuestRam::new(mem).unwrap();
    for page in 0..mem / 4096 {
        image.write(page * 4096, &page.to_le_bytes()).unwrap();
    }
    let ram = Arc::new(GuestRam::shared(mem).unwrap());
    let uffd =
        Arc::new(Userfaultfd::new(destination::backing_features(Backing::Shared), false).unwrap());
    let dest = Arc::new(
        Destination::new(
            ram.clone(),
            uffd.clone(),
            Arc::new(InProcessSource::new(Arc::new(image))),
            Throttle::new(Rate::Unlimited),
            Duration::ZERO,
            Arc::new(Telemetry::new(1)),
        )
        .unwrap(),
    );
    (dest, ram, uffd)
}

#[test]
fn a_present_page_the_kernel_unmapped_is_mapped_again_on_its_next_fault() {
    let (dest, ram, _uffd) = shared_destination(64 << 20);
    let gpa = 1000 * 4096;
    dest.fill_demand(gpa, true).unwrap();
    assert_eq!(ram.read_u64(gpa).unwrap(), 1000);
    // What reclaim does to a shared page: the guest's view loses it, the memfd keeps it.
    // SAFETY: one whole page of guest RAM, which stays in the memfd.
    let r = unsafe {
        libc::madvise(
            (ram.host_base() + gpa) as *mut libc::c_void,
            4096,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(r, 0);
    let reader = {
        let ram = ram.clone();
        // Faults (a minor fault on a page the map calls present) and sleeps until mapped.
        std::thread::spawn(move || ram.read_u64(gpa).unwrap())
    };
    // As a uffd reader would on that fault: the page is mapped again and the reader woken.
    let start = std::time::Instant::now();
    while !reader.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "reader never woke"
        );
        dest.fill_demand(gpa, false).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(reader.join().unwrap(), 1000);
    // Once mapped, a later fault's fill finds it present and mapped.
    assert_eq!(
        dest.fill_demand(gpa, true).unwrap(),
        faultline::vmm::FillOutcome::AlreadyPresent
    );
}

#[test]
fn a_claimable_page_found_mapped_is_an_error_and_never_filled_again() {
    let (dest, ram, uffd) = shared_destination(64 << 20);
    let gpa = 2000 * 4096;
    // Mapped behind the page map's back: the guest could already see whatever it holds.
    uffd.continue_pages(ram.host_base() + gpa, 4096, true)
        .unwrap();
    let err = dest.fill_demand(gpa, true).unwrap_err();
    assert!(err.to_string().contains("already mapped"), "{err}");
    // The page stays claimed, so no later fill writes over what the guest may see.
    assert_eq!(
        dest.pages().get(gpa / 4096),
        faultline::postcopy::page_state::PageState::Requested
    );
}

/// Prefetch in `mode` over `transport` with `backing`: every page arrives once (demand,
/// prefetched and pushed add up to the data pages), all verify, and a sequential guest's
/// windows are used.
fn check_prefetch(mode: FaultMode, prefetch: Prefetch, backing: Backing, transport: Transport) {
    let mut c = config("sequential-write", mode, 2);
    c.backing = Some(backing);
    c.transport = transport;
    c.prefetch = prefetch;
    // No push and no limit: the vCPUs' own faults bring every page they touch.
    c.push = false;
    c.fetch_rate = Rate::Unlimited;
    let what = format!("{mode} {prefetch} {backing} {transport}");
    let s = run(&c);
    assert!(s.verified, "{what}: {s:#?}");
    assert_eq!(
        s.pages_demand + s.pages_pushed + s.pages_prefetched,
        s.pages_total - s.pages_boot,
        "{what}: {s:#?}"
    );
    assert_eq!(s.prefetch, prefetch.to_string(), "{what}");
    assert!(s.pages_prefetched > 0, "{what}: nothing prefetched: {s:#?}");
    // A sequential stream goes on past each window it was given.
    assert!(
        s.prefetch_used * 2 >= s.pages_prefetched,
        "{what}: {} of {} prefetched pages used",
        s.prefetch_used,
        s.pages_prefetched
    );
    // Fewer faults than pages the vCPUs brought in: each fault brought a window.
    let faults: u64 = s.per_vcpu.iter().map(|v| v.fault_exits).sum();
    assert!(
        faults * 2 < s.pages_demand + s.pages_prefetched,
        "{what}: {faults} faults for {} pages",
        s.pages_demand + s.pages_prefetched
    );
}

#[test]
fn prefetch_windows_arrive_once_and_verify_in_every_mode_backing_and_transport() {
    for mode in [FaultMode::Exit, FaultMode::Uffd] {
        for prefetch in [Prefetch::Fixed(16), Prefetch::Adaptive] {
            check_prefetch(mode, prefetch, Backing::Shared, Transport::Local);
        }
        check_prefetch(
            mode,
            Prefetch::Adaptive,
            Backing::Anonymous,
            Transport::Local,
        );
        check_prefetch(mode, Prefetch::Adaptive, Backing::Shared, Transport::Tcp);
    }
}

#[test]
fn adaptive_prefetch_follows_a_strided_guest_and_a_timeline_changes_the_strategy() {
    // Over TCP a strided window's pages travel as requests sent together (fetch_pages).
    for transport in [Transport::Local, Transport::Tcp] {
        let mut c = config("stride-read", FaultMode::Exit, 2);
        c.transport = transport;
        c.prefetch = Prefetch::Adaptive;
        c.push = false;
        c.fetch_rate = Rate::Unlimited;
        // Off half-way: the strategy in force at the end is the timeline's.
        c.timeline = vec![TimedAction {
            at: Duration::from_millis(200),
            action: Action::Prefetch(Prefetch::Off),
        }];
        let s = run(&c);
        assert!(s.verified, "{transport}: {s:#?}");
        assert!(s.pages_prefetched > 0, "{transport}: {s:#?}");
        assert_eq!(s.prefetch, "off");
        assert_eq!(
            s.pages_demand + s.pages_pushed + s.pages_prefetched,
            s.pages_total - s.pages_boot,
            "{transport}: {s:#?}"
        );
    }
}

#[test]
fn a_window_beyond_its_head_lands_from_a_prefetch_worker_each_page_once() {
    use faultline::postcopy::page_state::PageState;
    let (dest, ram, _uffd) = shared_destination(64 << 20);
    dest.set_prefetch(Prefetch::Fixed(64));
    let worker = {
        let dest = dest.clone();
        std::thread::spawn(move || dest.serve_ahead())
    };
    let start = std::time::Instant::now();
    while dest.prefetch_workers() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "worker never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    dest.fill_demand(1000 * 4096, true).unwrap();
    // The fault's page and the window's head are in when the fault returns.
    for p in 1000..=1008 {
        assert!(dest.pages().get(p).is_present(), "page {p}");
    }
    // The rest lands from the worker; the page after the window stays missing.
    let start = std::time::Instant::now();
    while !(1009..=1064).all(|p| dest.pages().get(p).is_present()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "window never landed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(dest.pages().get(1065), PageState::Missing);
    assert_eq!(dest.pages().get(1000), PageState::FilledByDemand);
    for p in 1001..=1064 {
        assert_eq!(dest.pages().get(p), PageState::FilledByPrefetch, "page {p}");
        assert_eq!(ram.read_u64(p * 4096).unwrap(), p, "page {p}");
    }
    let run = &dest.telemetry().run;
    assert_eq!(
        (run.pages_demand.get(), run.pages_prefetched.get()),
        (1, 64)
    );
    assert_eq!(
        dest.missing(),
        ram.pages() - faultline::vmm::layout::BOOT_PAGES - 65
    );
    // With no worker left, a window is filled where it faults, whole.
    dest.stop();
    worker.join().unwrap().unwrap();
    assert_eq!(dest.prefetch_workers(), 0);
    dest.fill_demand(3000 * 4096, true).unwrap();
    assert!((3000..=3064).all(|p| dest.pages().get(p).is_present()));
    assert_eq!(ram.read_u64(3064 * 4096).unwrap(), 3064);
}
