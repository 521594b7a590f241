//! The benchmark's other measurements: the background push alone, the real engine's
//! switchover downtime, and the live view's frame cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::trial::{options, prefill, source_error};
use super::{BenchError, TRIAL_TIMEOUT};
use crate::contract::{Backing, Transport};
use crate::postcopy::net;
use crate::postcopy::{Destination, InProcessSource, Throttle, destination};
use crate::telemetry::Telemetry;
use crate::uffd::{Features, Userfaultfd};
use crate::units::Rate;
use crate::vmm::GuestRam;
use crate::vmm::layout::{self, BOOT_SIZE, PAGE_SIZE};

/// Background push alone: how fast the destination fills when no vCPU asks for anything.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PushResult {
    pub backing: &'static str,
    pub transport: &'static str,
    pub threads: usize,
    pub bytes: u64,
    pub secs: f64,
    pub bytes_per_sec: f64,
    pub bytes_per_sec_min: f64,
    pub bytes_per_sec_max: f64,
}

/// The median of `repeat` push trials, with the spread.
pub fn measure_push(
    mem_bytes: u64,
    threads: usize,
    repeat: usize,
    backing: Backing,
    transport: Transport,
) -> Result<PushResult, BenchError> {
    let mut trials = (0..repeat.max(1))
        .map(|_| run_push_trial(mem_bytes, threads, backing, transport))
        .collect::<Result<Vec<_>, _>>()?;
    trials.sort_by(|a, b| a.bytes_per_sec.total_cmp(&b.bytes_per_sec));
    let mut median = trials[trials.len() / 2];
    median.bytes_per_sec_min = trials[0].bytes_per_sec;
    median.bytes_per_sec_max = trials[trials.len() - 1].bytes_per_sec;
    Ok(median)
}

/// Pushes `mem_bytes` of guest memory at an unlimited rate into a destination no vCPU
/// touches, and times it until no page is missing.
pub fn run_push_trial(
    mem_bytes: u64,
    threads: usize,
    backing: Backing,
    transport: Transport,
) -> Result<PushResult, BenchError> {
    let mem = mem_bytes.max(layout::MIN_MEM_BYTES);
    let image = GuestRam::new(mem)?;
    prefill(&image)?;
    let image = Arc::new(InProcessSource::new(Arc::new(image)));
    let spin = net::socket_spin(threads.max(1), 0);
    let (source, _server) =
        net::page_source(transport, image, options(spin), None).map_err(source_error)?;
    let ram = Arc::new(GuestRam::with_backing(mem, backing)?);
    let dest = Arc::new(Destination::new(
        ram,
        Arc::new(Userfaultfd::new(
            destination::backing_features(backing),
            true,
        )?),
        source,
        Throttle::new(Rate::Unlimited),
        Duration::ZERO,
        Arc::new(Telemetry::new(1)),
    )?);
    let bytes = dest.missing() * PAGE_SIZE;
    let start = Instant::now();
    let parts = threads.max(1) as u64;
    let pushers = (0..parts)
        .map(|i| {
            destination::spawn(format!("push{i}"), dest.clone(), move |d| {
                d.push_part(i, parts)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    while dest.missing() > 0 && !pushers.iter().any(|p| p.is_finished()) {
        if start.elapsed() > TRIAL_TIMEOUT {
            dest.stop();
            return Err(BenchError::Timeout(TRIAL_TIMEOUT));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let secs = start.elapsed().as_secs_f64();
    dest.stop();
    for p in pushers {
        p.join()
            .map_err(|_| BenchError::GuestFailed("a push thread panicked".into()))??;
    }
    Ok(PushResult {
        backing: backing.as_str(),
        transport: transport.as_str(),
        threads: parts as usize,
        bytes,
        secs,
        bytes_per_sec: bytes as f64 / secs.max(1e-9),
        bytes_per_sec_min: 0.0,
        bytes_per_sec_max: 0.0,
    })
}

/// Switchover downtime of the real engine, from the source's pause to the destination's
/// resume, over several runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DowntimeResult {
    pub vcpus: usize,
    pub runs: usize,
    pub median_us: u64,
    pub min_us: u64,
    pub max_us: u64,
}

pub fn measure_downtime(vcpus: usize, runs: usize) -> Result<DowntimeResult, BenchError> {
    let config = crate::contract::RunConfig {
        scenario: "bench-downtime".into(),
        vcpus,
        mem_bytes: 256 << 20,
        workload: "hotspot-mixed".parse()?,
        readers: 1,
        warmup: Duration::from_millis(200),
        duration: Duration::ZERO,
        ..Default::default()
    };

    let mut downtimes = (0..runs.max(1))
        .map(|_| {
            crate::postcopy::run(&config, &crate::postcopy::RunStatus::default(), None)
                .map(|s| s.downtime_us)
        })
        .collect::<Result<Vec<_>, _>>()?;
    downtimes.sort_unstable();
    Ok(DowntimeResult {
        vcpus,
        runs: downtimes.len(),
        median_us: downtimes[downtimes.len() / 2],
        min_us: downtimes[0],
        max_us: downtimes[downtimes.len() - 1],
    })
}

/// How long the guest is paused to make a range missing again, in the real engine: its
/// content goes back to the source and the pages leave the guest's view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InjectionResult {
    pub vcpus: usize,
    pub bytes: u64,
    pub backing: &'static str,
    pub transport: &'static str,
    pub runs: usize,
    pub pages: u64,
    /// How long every vCPU was paused (0 where the memory needs no pause).
    pub median_us: u64,
    pub min_us: u64,
    pub max_us: u64,
    /// How long the range was out of the guest's reach.
    pub unavailable_median_us: u64,
    pub unavailable_max_us: u64,
}

/// Injects `bytes` into a guest of `vcpus` whose every page has arrived (the range is all
/// present, the worst case), once a run, `runs` runs.
pub fn measure_injection(
    vcpus: usize,
    bytes: u64,
    backing: Backing,
    transport: crate::contract::Transport,
    runs: usize,
) -> Result<InjectionResult, BenchError> {
    use crate::contract::{Action, TimedAction};
    let range = crate::units::GpaRange {
        start: 64 << 20,
        len: bytes,
    };
    let config = crate::contract::RunConfig {
        scenario: "bench-injection".into(),
        vcpus,
        mem_bytes: (range.start + bytes).next_power_of_two().max(256 << 20),
        workload: "hotspot-mixed".parse()?,
        backing: Some(backing),
        transport,
        warmup: Duration::from_millis(200),
        // Unlimited, the push has brought every page well before the injection.
        duration: Duration::from_millis(1500),
        timeline: vec![TimedAction {
            at: Duration::from_millis(1200),
            action: Action::Inject(range),
        }],
        ..Default::default()
    };
    let mut pauses = Vec::new();
    let mut unavailable = Vec::new();
    let mut pages = 0;
    for _ in 0..runs.max(1) {
        let s = crate::postcopy::run(&config, &crate::postcopy::RunStatus::default(), None)?;
        let inj = s.injections.first().ok_or_else(|| {
            BenchError::Config("the injection did not happen in the benchmark's run".into())
        })?;
        if !s.verified {
            return Err(BenchError::Config(
                "the benchmark's run with an injection did not verify".into(),
            ));
        }
        pages = inj.pages;
        pauses.push(inj.pause_us);
        unavailable.push(inj.unavailable_us);
    }
    pauses.sort_unstable();
    unavailable.sort_unstable();
    Ok(InjectionResult {
        vcpus,
        bytes,
        backing: backing.as_str(),
        transport: transport.as_str(),
        runs: pauses.len(),
        pages,
        median_us: pauses[pauses.len() / 2],
        min_us: pauses[0],
        max_us: pauses[pauses.len() - 1],
        unavailable_median_us: unavailable[unavailable.len() / 2],
        unavailable_max_us: unavailable[unavailable.len() - 1],
    })
}

/// What a frame of the live view costs: building the snapshot from the engine's state
/// (counters, events, the page-state map) and drawing it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameResult {
    pub vcpus: usize,
    pub mem_bytes: u64,
    pub width: u16,
    pub height: u16,
    pub frames: usize,
    /// Fault events folded into each snapshot.
    pub events_per_frame: usize,
    pub build_us_median: u64,
    pub build_us_max: u64,
    pub draw_us_median: u64,
    pub draw_us_max: u64,
}

/// Builds and draws `frames` frames of a run with `vcpus` vCPUs over `mem_bytes`, with
/// fault events arriving between frames, and times both halves.
pub fn measure_frame(
    vcpus: usize,
    mem_bytes: u64,
    (width, height): (u16, u16),
    frames: usize,
) -> Result<FrameResult, BenchError> {
    if vcpus == 0 || vcpus > layout::MAX_VCPUS || mem_bytes < layout::MIN_MEM_BYTES {
        return Err(BenchError::Config(format!(
            "frame measurement: 1 to {} vCPUs and at least {} of memory",
            layout::MAX_VCPUS,
            crate::units::Bytes(layout::MIN_MEM_BYTES)
        )));
    }
    use crate::contract::RunInfo;
    use crate::postcopy::{LiveMigration, Monitor, RunStatus};
    use crate::telemetry::Event;

    const EVENTS_PER_FRAME: usize = 5000;
    let ram = Arc::new(GuestRam::new(mem_bytes)?);
    let telemetry = Arc::new(Telemetry::new(vcpus));
    let dest = Arc::new(Destination::new(
        ram,
        Arc::new(Userfaultfd::new(Features::NONE, true)?),
        Arc::new(InProcessSource::new(Arc::new(GuestRam::new(mem_bytes)?))),
        Throttle::new(Rate::Unlimited),
        Duration::ZERO,
        telemetry.clone(),
    )?);
    let status = RunStatus::default();
    status.set_live(LiveMigration {
        number: 1,
        vcpus: Vec::new(),
        dest: Some(dest),
        link: None,
        switched_at: Some(Instant::now()),
        downtime: Some(Duration::ZERO),
        baseline_per_sec: vec![1.0; vcpus],
    });
    let mut monitor = Monitor::new(RunInfo {
        scenario: "bench-frame".into(),
        mode: crate::contract::FaultMode::Exit,
        workload: "random-read".into(),
        vcpus,
        mem_bytes,
        backing: Some(crate::contract::Backing::Anonymous),
        transport: Some(crate::contract::Transport::Local),
        source: None,
        page_size: PAGE_SIZE,
        host: None,
    })?;
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))
        .map_err(|e| BenchError::Config(format!("test terminal: {e}")))?;
    let mut app = crate::tui::App::new();
    let (mut build, mut draw) = (Vec::new(), Vec::new());
    let mut gpa = BOOT_SIZE;
    for _ in 0..frames.max(1) {
        let now = telemetry.now_ns();
        for i in 0..EVENTS_PER_FRAME {
            gpa = BOOT_SIZE + (gpa * 7919 + 4096) % (mem_bytes - BOOT_SIZE) / PAGE_SIZE * PAGE_SIZE;
            telemetry.emit(Event::Fault {
                vcpu: Some((i % vcpus) as u16),
                gpa,
                start_ns: now,
                end_ns: now + 1000 * (1 + i as u64 % 5000),
            });
        }
        let t = Instant::now();
        let snapshot = monitor.tick(&status);
        build.push(t.elapsed());
        app.on_snapshot(snapshot);
        let t = Instant::now();
        terminal
            .draw(|f| crate::tui::draw(f, &app))
            .map_err(|e| BenchError::Config(format!("test terminal: {e}")))?;
        draw.push(t.elapsed());
    }
    build.sort_unstable();
    draw.sort_unstable();
    let us = |d: &Duration| d.as_micros() as u64;
    Ok(FrameResult {
        vcpus,
        mem_bytes,
        width,
        height,
        frames: build.len(),
        events_per_frame: EVENTS_PER_FRAME,
        build_us_median: us(&build[build.len() / 2]),
        build_us_max: build.last().map_or(0, us),
        draw_us_median: us(&draw[draw.len() / 2]),
        draw_us_max: draw.last().map_or(0, us),
    })
}
