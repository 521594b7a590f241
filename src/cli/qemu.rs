//! `faultline qemu` (launch a real QEMU post-copy and watch it) and `faultline attach
//! --qmp` (watch one someone else started).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use faultline::contract::Phase;
use faultline::contract::Workload;
use faultline::qemu::feed::{Ended, QemuFeed};
use faultline::qemu::launch::{Accel, LaunchConfig, LaunchError, QemuPair};
use faultline::qemu::watch::{Target, Watcher};
use faultline::tui;
use faultline::units::Rate;

use super::args::{UsageError, parse_rate, parse_size};
use super::logging;
use super::shared::{need_terminal, spawn_recorder};
use super::summary::print_qemu_summary;

#[derive(Args)]
pub struct QemuArgs {
    /// vCPUs, 1 to 64.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    vcpus: u16,
    /// Guest memory, 32M to 2G.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    mem: u64,
    /// The guest's workload: PATTERN-OP or verify (checks every page it reads).
    #[arg(long, default_value = "verify")]
    workload: Workload,
    /// How QEMU runs the guest: tcg (steady on every host) or kvm.
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    /// The source's bandwidth limit, e.g. 32MiB/s or unlimited.
    #[arg(long, default_value = "32MiB/s", value_parser = parse_rate)]
    fetch_rate: Rate,
    /// How long pre-copy runs before the switch to post-copy.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    precopy: Duration,
    /// Run without the TUI and print a summary when the migration has completed.
    #[arg(long)]
    headless: bool,
    /// With --headless: print the summary as one JSON object.
    #[arg(long, requires = "headless")]
    json: bool,
    /// Record the snapshot stream to this file, for `faultline replay`.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Where the log goes. Default: as for `faultline run`.
    #[arg(long)]
    log: Option<PathBuf>,
}

/// The flags of `attach` that follow a QEMU instead of a faultline run.
#[derive(Args, Default)]
pub struct QmpTarget {
    /// A QMP socket of the migration's destination QEMU (one of its own: QEMU serves one
    /// client per socket).
    #[arg(long, requires = "trace", conflicts_with = "path")]
    pub qmp: Option<PathBuf>,
    /// The destination's trace log (`-D FILE`, with `-msg timestamp=on`).
    #[arg(long, requires = "qmp")]
    pub trace: Option<PathBuf>,
    /// A QMP socket of the source QEMU: page counts, throttling, pause and recovery.
    #[arg(long, requires = "qmp")]
    pub source_qmp: Option<PathBuf>,
    /// Where a paused migration reconnects on recovery (both QEMUs must reach it),
    /// e.g. unix:/tmp/recover.sock or tcp:HOST:PORT. Default: a Unix socket in /tmp.
    #[arg(long, requires = "source_qmp")]
    pub recover_uri: Option<String>,
}

/// How long a completed migration's guest runs on before a headless run ends: its verify
/// passes then cover every page many times over.
const SETTLE: Duration = Duration::from_secs(1);
/// A headless run that has not completed by then has failed.
const HEADLESS_LIMIT: Duration = Duration::from_secs(600);

pub fn run(args: QemuArgs) -> anyhow::Result<bool> {
    if !args.headless && (!std::io::stdout().is_terminal() || !std::io::stdin().is_terminal()) {
        return Err(UsageError(
            "the live view needs a terminal on stdin and stdout; use `faultline qemu --headless`"
                .into(),
        )
        .into());
    }
    let config = LaunchConfig {
        vcpus: usize::from(args.vcpus),
        mem_bytes: args.mem,
        workload: args.workload,
        accel: args.accel,
        fetch_rate: args.fetch_rate,
    };
    let log_path = match (&args.log, args.headless) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(logging::default_path()),
        (None, true) => None,
    };
    let _log = log_path.as_deref().map(logging::init).transpose()?;
    let mut pair = QemuPair::start(&config).map_err(|e| match e {
        LaunchError::NotInstalled | LaunchError::Guest(_) => UsageError(e.to_string()).into(),
        e => anyhow::Error::from(e),
    })?;
    tracing::info!(dir = %pair.dir().display(), "QEMU pair started");
    pair.wait_guest()?;
    let watcher = Watcher::connect(pair.target(&config.workload))?;
    let label = format!("QEMU {} {}", watcher.qemu_version(), config.accel.as_str());
    let feed = QemuFeed::start(watcher, label)?;
    let recording = match &args.record {
        Some(path) => Some(spawn_recorder(
            faultline::control::Recorder::create(path).map_err(|e| UsageError(e.to_string()))?,
            feed.status(),
        )?),
        None => None,
    };
    let (ended, view_error) = if args.headless {
        let ended = drive_headless(&mut pair, feed, args.precopy, args.json)?;
        (ended, None)
    } else {
        drive_view(pair, feed, args.precopy)?
    };
    if let Some(r) = recording {
        r.finish()?;
    }
    if let Some(e) = view_error {
        return Err(e);
    }
    finish(&ended, args.json)
}

/// Migrates and waits for completion plus [`SETTLE`], with a status line a second.
fn drive_headless(
    pair: &mut QemuPair,
    feed: QemuFeed,
    precopy: Duration,
    json: bool,
) -> anyhow::Result<Ended> {
    pair.migrate()?;
    let subscription = feed.status().subscribe();
    let started = Instant::now();
    let mut switched = false;
    let mut completed_at: Option<Instant> = None;
    let mut last_report = Instant::now();
    let mut died = None;
    while !feed.ended() && started.elapsed() <= HEADLESS_LIMIT {
        if !switched && started.elapsed() >= precopy {
            pair.start_postcopy()?;
            switched = true;
        }
        if let Some(why) = pair.died() {
            tracing::warn!(%why, "a QEMU died");
            died = Some(why);
            break;
        }
        let Some(s) = subscription.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        if !json && last_report.elapsed() >= Duration::from_secs(1) {
            report_progress(&s);
            last_report = Instant::now();
        }
        if s.phase == Phase::Failed {
            break;
        }
        if s.phase == Phase::Complete {
            let at = *completed_at.get_or_insert_with(Instant::now);
            if at.elapsed() >= SETTLE {
                break;
            }
        }
    }
    let mut ended = feed.finish()?;
    if let Some(why) = died
        && ended.lost.is_none()
    {
        ended.lost = Some(format!("DISCONNECTED: {why}"));
    }
    Ok(ended)
}

/// The live view, while a thread of its own takes the migration through its steps.
fn drive_view(
    pair: QemuPair,
    mut feed: QemuFeed,
    precopy: Duration,
) -> anyhow::Result<(Ended, Option<anyhow::Error>)> {
    let quit = Arc::new(AtomicBool::new(false));
    let stop = quit.clone();
    let driver = std::thread::Builder::new()
        .name("qemu-driver".into())
        .spawn(move || -> (QemuPair, Result<(), LaunchError>) {
            let mut pair = pair;
            let r = (|| {
                pair.migrate()?;
                let end = Instant::now() + precopy;
                while Instant::now() < end {
                    if stop.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                pair.start_postcopy()
            })();
            (pair, r)
        })
        .context("cannot start the migration driver")?;
    let mut app = tui::App::new();
    let exit = tui::terminal::run(&mut feed, &mut app);
    quit.store(true, Ordering::Release);
    let _ = writeln!(
        std::io::stderr(),
        "faultline: stopping the QEMU pair and summarizing..."
    );
    let ended = feed.finish();
    // The pair goes (and its QEMUs with it) whatever the watch came to.
    let (pair, driven) = driver
        .join()
        .map_err(|_| anyhow::anyhow!("the migration driver panicked"))?;
    drop(pair);
    let ended = ended?;
    if let Err(e) = driven {
        return Ok((ended, Some(e.into())));
    }
    Ok((ended, exit.err().map(anyhow::Error::from)))
}

/// Prints the summary; Ok(verified).
fn finish(ended: &Ended, json: bool) -> anyhow::Result<bool> {
    let s = &ended.summary;
    if let Ok(j) = serde_json::to_string(s) {
        tracing::info!(summary = %j, "QEMU watch finished");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
    } else {
        print_qemu_summary(&mut std::io::stdout().lock(), s)?;
    }
    if let Some(why) = &ended.lost {
        anyhow::bail!("{why}");
    }
    Ok(s.verified)
}

fn report_progress(s: &faultline::contract::Snapshot) {
    let state = s.qemu.as_ref().map_or("-", |q| q.state.as_str());
    let stall: f64 = s.vcpus.iter().map(|v| v.stall_ms).sum();
    let faults: u64 = s.vcpus.iter().map(|v| v.faults).sum();
    eprintln!(
        "[{:>5.1}s] {state:<16} {} faults, {stall:.0} ms stalled, {} of {} pages missing",
        s.elapsed_ms as f64 / 1000.0,
        faults,
        s.pages.missing,
        s.pages.total
    );
}

/// `faultline attach --qmp`: the live view of a QEMU migration someone else started.
pub fn attach(t: QmpTarget, record: Option<PathBuf>, log: Option<PathBuf>) -> anyhow::Result<bool> {
    let (Some(qmp), Some(trace)) = (t.qmp, t.trace) else {
        return Err(UsageError("attach needs a socket path, or --qmp with --trace".into()).into());
    };
    let target = Target {
        dst_qmp: qmp,
        trace,
        src_qmp: t.source_qmp,
        recover_uri: t.recover_uri,
        console: None,
        src_console: None,
        scenario: "qemu".into(),
        workload: "guest's own".into(),
    };
    // What is wrong with the target is said first, terminal or not.
    let watcher = Watcher::connect(target).map_err(|e| UsageError(e.to_string()))?;
    need_terminal("attach")?;
    let label = format!("QEMU {} via QMP", watcher.qemu_version());
    let log_path = log.unwrap_or_else(logging::default_path);
    let _log = logging::init(&log_path)?;
    let mut feed = QemuFeed::start(watcher, label)?;
    let recording = match &record {
        Some(path) => Some(spawn_recorder(
            faultline::control::Recorder::create(path).map_err(|e| UsageError(e.to_string()))?,
            feed.status(),
        )?),
        None => None,
    };
    let mut app = tui::App::new();
    let exit = tui::terminal::run(&mut feed, &mut app);
    let ended = feed.finish()?;
    if let Some(r) = recording {
        r.finish()?;
    }
    exit?;
    if let Some(why) = &ended.lost {
        anyhow::bail!("{why}");
    }
    if ended.summary.postcopy_complete {
        print_qemu_summary(&mut std::io::stdout().lock(), &ended.summary)?;
        Ok(ended.summary.verified)
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "faultline: detached; the migration goes on"
        );
        Ok(true)
    }
}
