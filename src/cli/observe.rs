//! `faultline attach` and `faultline replay`, and recording a run as it happens.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use faultline::control::{self, Recorder, ReplayFeed, SocketFeed};
use faultline::tui;

use super::args::UsageError;
use super::logging;
use super::shared::need_terminal;
use super::summary::print_summary;

#[derive(Args)]
pub struct AttachArgs {
    /// The socket a `faultline run --control PATH` serves.
    #[arg(required_unless_present = "qmp")]
    path: Option<PathBuf>,
    #[command(flatten)]
    qemu: super::qemu::QmpTarget,
    /// Also record what is seen to this file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Where the log goes. Default: as for `faultline run`.
    #[arg(long)]
    log: Option<PathBuf>,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// A file written by `--record`.
    file: PathBuf,
    /// Print the run's summary as one JSON object (as `run --json` did) instead of showing it.
    #[arg(long)]
    json: bool,
    /// Playback speed, 1 to 64.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    speed: u32,
    /// Start at this time into the recording, e.g. 12.5s (with --screen: the moment shown).
    #[arg(long, value_parser = humantime::parse_duration)]
    at: Option<std::time::Duration>,
    /// Print one frame of the view as plain text (the one at --at, else the last) and exit;
    /// needs no terminal.
    #[arg(long)]
    screen: bool,
    /// With --screen: the frame's size, WIDTHxHEIGHT.
    #[arg(long, default_value = "160x48", value_parser = tui::screen::parse_size)]
    size: (u16, u16),
    /// Where the log goes. Default: as for `faultline run`.
    #[arg(long)]
    log: Option<PathBuf>,
}

pub fn attach(args: AttachArgs) -> anyhow::Result<bool> {
    let Some(path) = args.path else {
        return super::qemu::attach(args.qemu, args.record, args.log);
    };
    need_terminal("attach")?;
    let recorder = args
        .record
        .as_deref()
        .map(Recorder::create)
        .transpose()
        .map_err(|e| UsageError(e.to_string()))?;
    let mut feed = SocketFeed::connect(&path, recorder).map_err(|e| UsageError(e.to_string()))?;
    let log_path = args.log.clone().unwrap_or_else(logging::default_path);
    let _log = logging::init(&log_path)?;
    tracing::info!(path = %path.display(), "attached");
    let mut app = tui::App::new();
    let exit = tui::terminal::run(&mut feed, &mut app)?;
    tracing::info!(?exit, "attach view closed");
    let mut err = std::io::stderr();
    if let Some(e) = feed.recorder_error() {
        let _ = writeln!(err, "faultline: recording stopped: {e}");
    }
    if feed.lost() && feed.last().is_none_or(|s| s.summary.is_none()) {
        // The run went away before it ended: say so, and fail.
        anyhow::bail!(
            "{}: the connection was lost before the run ended",
            path.display()
        );
    }
    match feed.last().and_then(|s| s.summary.clone()) {
        Some(summary) => {
            print_summary(&summary);
            Ok(summary.verified)
        }
        None => {
            let _ = writeln!(err, "faultline: detached; the run goes on");
            Ok(true)
        }
    }
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<bool> {
    let recording = control::record::read(&args.file).map_err(|e| UsageError(e.to_string()))?;
    if args.json {
        let Some(summary) = recording
            .snapshots
            .iter()
            .rev()
            .find_map(|s| s.summary.clone())
        else {
            let at = recording.snapshots.last().map_or(0, |s| s.elapsed_ms);
            anyhow::bail!(
                "{}: the recording ends before the run finished ({} snapshots, last at {:.1} s{})",
                args.file.display(),
                recording.snapshots.len(),
                at as f64 / 1000.0,
                recording
                    .cut
                    .as_deref()
                    .map(|c| format!("; {c}"))
                    .unwrap_or_default()
            );
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(summary.verified);
    }
    if recording.snapshots.is_empty() {
        anyhow::bail!("{}: the recording holds no snapshot", args.file.display());
    }
    // The snapshots up to the moment asked for (all of them without --at).
    let upto = match args.at {
        None => recording.snapshots.len(),
        Some(at) => {
            let at_ms = at.as_millis() as u64;
            let last_ms = recording.snapshots.last().map_or(0, |s| s.elapsed_ms);
            if at_ms > last_ms {
                return Err(UsageError(format!(
                    "{}: --at {}: the recording ends at {:.1} s",
                    args.file.display(),
                    humantime::format_duration(at),
                    last_ms as f64 / 1000.0
                ))
                .into());
            }
            recording
                .snapshots
                .partition_point(|s| s.elapsed_ms <= at_ms)
                .max(1)
        }
    };
    if args.screen {
        // Fed as the view would have been, so its histories are the run's.
        let mut app = tui::App::new();
        for s in &recording.snapshots[..upto] {
            app.on_snapshot((**s).clone());
        }
        let (w, h) = args.size;
        print!("{}", tui::screen::text(&app, w, h));
        return Ok(true);
    }
    need_terminal("replay")?;
    let mut snapshots = recording.snapshots;
    // Playback from --at: the snapshot in force then, and what follows.
    snapshots.drain(..upto - 1);
    let recording = control::record::Recording {
        snapshots,
        ..recording
    };
    let log_path = args.log.clone().unwrap_or_else(logging::default_path);
    let _log = logging::init(&log_path)?;
    tracing::info!(file = %args.file.display(), "replay");
    let mut feed = ReplayFeed::new(recording.snapshots, args.speed, recording.cut);
    let mut app = tui::App::new();
    tui::terminal::run(&mut feed, &mut app)?;
    Ok(true)
}
