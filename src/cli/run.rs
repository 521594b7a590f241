//! `faultline run`: a migration in this process, watched live or headless.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use faultline::contract::{
    Action, Backing, FaultMode, Remote, RunConfig, Snapshot, Summary, Transport,
};
use faultline::postcopy::{self, EngineFeed, PostcopyError, RunStatus};
use faultline::units::Rate;
use faultline::{control, tui};

use super::args::{GuestArgs, UsageError, parse_on_off, parse_rate};
use super::logging;
use super::shared::spawn_recorder;
use super::summary::print_summary;

#[derive(Args, Default)]
pub struct RunArgs {
    /// A scenario file, or the name of a built-in (default, hotspot, throttled, many-vcpus,
    /// inject-storm). Flags override what it says.
    scenario: Option<String>,
    /// Run without the TUI and print a summary at the end.
    #[arg(long)]
    headless: bool,
    /// With --headless: print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Serve the run on this Unix socket: `faultline attach PATH` watches and steers it.
    #[arg(long)]
    control: Option<std::path::PathBuf>,
    /// Record the snapshot stream to this file, for `faultline replay`.
    #[arg(long)]
    record: Option<std::path::PathBuf>,
    /// Where the log goes (the TUI owns the terminal). Default: faultline.log in
    /// $XDG_STATE_HOME/faultline (or ~/.local/state/faultline); headless runs log only here.
    #[arg(long)]
    log: Option<std::path::PathBuf>,
    #[command(flatten)]
    guest: GuestArgs,
    /// uffd or exit.
    #[arg(long)]
    mode: Option<FaultMode>,
    /// uffd handler threads (uffd mode).
    #[arg(long)]
    readers: Option<usize>,
    /// Limit on all page traffic, e.g. 40MiB/s or unlimited.
    #[arg(long, value_parser = parse_rate)]
    fetch_rate: Option<Rate>,
    /// Delay added to each demand request, e.g. 200us.
    #[arg(long, value_parser = humantime::parse_duration)]
    rtt: Option<Duration>,
    /// Over TCP, how long fetches keep reconnecting to a lost source before the run fails,
    /// e.g. 30s (default 60s).
    #[arg(long, value_parser = humantime::parse_duration)]
    link_timeout: Option<Duration>,
    /// How long the source runs before switchover, e.g. 1s.
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// How long the destination runs after switchover, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Background push of pages nobody asked for yet: on or off.
    #[arg(long, value_parser = parse_on_off)]
    push: Option<bool>,
    /// What a demand fault brings in besides its page: off, N (the N pages after it, up
    /// to 255) or adaptive (each vCPU's detected stream, in a window that grows while
    /// used).
    #[arg(long)]
    prefetch: Option<faultline::contract::Prefetch>,
    /// The destination's memory: shmem (allocated up front; minor faults, UFFDIO_CONTINUE)
    /// or anon (allocated on fill; missing faults, UFFDIO_COPY). Default: shmem where the
    /// kernel supports it.
    #[arg(long)]
    backing: Option<Backing>,
    /// How pages travel: local (copied from the source's image in this process) or tcp
    /// (fetched from a page server over a loopback socket). Default: local.
    #[arg(long)]
    transport: Option<Transport>,
    /// Take over the guest of a `faultline source` at HOST:PORT instead of starting one:
    /// its vCPUs, memory and workload are the source's, and pages come over TCP.
    #[arg(long, requires = "token", conflicts_with_all = ["vcpus", "mem", "workload", "shared", "transport", "warmup"])]
    source: Option<String>,
    /// The token the source printed (16 hex digits).
    #[arg(long, requires = "source", value_parser = super::source::parse_token)]
    token: Option<u64>,
}

/// The flags that shape the guest, over what its scenario says (`run` and `source`).
fn config_from(args: &RunArgs) -> anyhow::Result<RunConfig> {
    let mut c = args.guest.config(args.scenario.as_deref())?;
    if let Some(m) = args.mode {
        c.mode = m;
    }
    if let Some(r) = args.readers {
        c.readers = r;
    }
    if let Some(r) = args.fetch_rate {
        c.fetch_rate = r;
    }
    if let Some(r) = args.rtt {
        c.rtt = r;
    }
    if let Some(t) = args.link_timeout {
        c.link_timeout = t;
    }
    if let Some(w) = args.warmup {
        c.warmup = w;
    }
    if let Some(d) = args.duration {
        c.duration = d;
    }
    if let Some(p) = args.prefetch {
        c.prefetch = p;
    }
    if let Some(p) = args.push {
        c.push = p;
    }
    if let Some(b) = args.backing {
        c.backing = Some(b);
    }
    if let Some(t) = args.transport {
        c.transport = t;
    }
    if let (Some(addr), Some(token)) = (&args.source, args.token) {
        take_over(&mut c, addr, token)?;
    }
    c.validate().map_err(|e| UsageError(e.to_string()))?;
    Ok(c)
}

/// Makes `c` the destination of the source at `addr`: the guest is the one it offers.
fn take_over(c: &mut RunConfig, addr: &str, token: u64) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    let addr = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| UsageError(format!("--source {addr}: not a HOST:PORT address")))?;
    let remote = Remote { addr, token };
    let offer = remote.describe()?;
    c.vcpus = offer.vcpus;
    c.mem_bytes = offer.mem_bytes;
    c.workload = offer
        .workload()
        .map_err(|e| anyhow::anyhow!("the source's workload: {e}"))?;
    c.scenario = offer.scenario;
    c.remote = Some(remote);
    Ok(())
}

/// One status line on stderr from a snapshot, while a headless run goes on.
fn report_progress(s: &Snapshot) {
    let data = s.pages.total - s.pages.boot;
    let filled = data - s.pages.missing.min(data);
    let faults: u64 = s.vcpus.iter().map(|v| v.faults).sum();
    eprintln!(
        "[{:>5.1}s] {:<10} {:>5.1}% filled, {} faults, throttle {}{}",
        s.elapsed_ms as f64 / 1000.0,
        s.phase.as_str(),
        100.0 * filled as f64 / data.max(1) as f64,
        faults,
        if s.throttle.is_empty() {
            "-"
        } else {
            &s.throttle
        },
        if s.link_up == Some(false) {
            ", link DOWN"
        } else {
            ""
        }
    );
}

pub fn run(args: RunArgs) -> anyhow::Result<bool> {
    let mut config = config_from(&args)?;
    // A missing or closed /dev/kvm is the user's to fix: say so before anything starts.
    drop(faultline::vmm::open_kvm()?);
    if !args.headless {
        if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
            return Err(UsageError(
                "the live view needs a terminal on stdin and stdout; use `faultline run --headless`"
                    .into(),
            )
            .into());
        }
        if args.json {
            return Err(UsageError("--json needs --headless".into()).into());
        }
        // Watched runs go on until the operator quits, unless told otherwise.
        if args.duration.is_none() {
            config.duration = Duration::from_secs(100 * 365 * 24 * 3600);
        }
    }
    let log_path = match (&args.log, args.headless) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(logging::default_path()),
        (None, true) => None,
    };
    let _log = log_path.as_deref().map(logging::init).transpose()?;
    tracing::info!(scenario = %config.scenario, headless = args.headless, "run starts");

    let status = Arc::new(RunStatus::default());
    let (actions, controls) = crossbeam_channel::bounded(64);
    // The socket and the recording are set up before the run: a refusal costs nothing.
    let server = match &args.control {
        Some(path) => {
            let listener = control::server::bind(path).map_err(|e| UsageError(e.to_string()))?;
            Some(control::Server::start(
                path,
                listener,
                status.clone(),
                actions.clone(),
            )?)
        }
        None => None,
    };
    let recording = match &args.record {
        Some(path) => Some(spawn_recorder(
            control::Recorder::create(path).map_err(|e| UsageError(e.to_string()))?,
            &status,
        )?),
        None => None,
    };
    let engine = spawn_engine(&config, &status, Some(controls))?;
    // A failed view (the terminal broke) is reported only after the run is summarized.
    let (summary, view_error) = if args.headless {
        (wait_headless(engine, &status, args.json)?, None)
    } else {
        let mut feed = EngineFeed::new(status.clone(), actions);
        let mut app = tui::App::new();
        let exit = tui::terminal::run(&mut feed, &mut app);
        // The terminal is the operator's again (or gone); the run ends with its checks.
        status.request_stop();
        tracing::info!(?exit, "live view closed");
        let _ = writeln!(
            std::io::stderr(),
            "faultline: stopping the guest, filling what is missing and checking the data..."
        );
        let summary = engine
            .join()
            .map_err(|_| anyhow::anyhow!("the engine thread panicked"))??;
        (summary, exit.err())
    };
    // The terminal may be gone (exit on hang-up): the log keeps the summary either way.
    if let Ok(json) = serde_json::to_string(&summary) {
        tracing::info!(summary = %json, "run finished");
    }
    if let Some(r) = recording {
        r.finish()?;
    }
    drop(server);
    if let Some(e) = view_error {
        return Err(e.into());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    if let Some(p) = &log_path
        && !args.headless
    {
        let _ = writeln!(std::io::stderr(), "faultline: log in {}", p.display());
    }
    Ok(summary.verified)
}

fn spawn_engine(
    config: &RunConfig,
    status: &Arc<RunStatus>,
    controls: Option<crossbeam_channel::Receiver<Action>>,
) -> anyhow::Result<std::thread::JoinHandle<Result<Summary, PostcopyError>>> {
    let status = status.clone();
    let config = config.clone();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || postcopy::run(&config, &status, controls.as_ref()))
        .context("cannot start the engine thread")
}

/// Waits for a headless run, with a status line a second on stderr unless printing JSON.
fn wait_headless(
    engine: std::thread::JoinHandle<Result<Summary, PostcopyError>>,
    status: &RunStatus,
    json: bool,
) -> anyhow::Result<Summary> {
    let snapshots = status.subscribe();
    let mut last_report = Instant::now();
    let mut last_message = None;
    while !engine.is_finished() {
        let Some(s) = snapshots.recv_timeout(Duration::from_millis(50)) else {
            continue;
        };
        if json {
            continue;
        }
        // Each of the engine's notes once, as it comes (a switchover, an outage, a refusal).
        if s.message.is_some() && s.message != last_message {
            if let Some(m) = &s.message {
                eprintln!("[{:>5.1}s] {m}", s.elapsed_ms as f64 / 1000.0);
            }
            last_message = s.message.clone();
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            report_progress(&s);
            last_report = Instant::now();
        }
    }
    Ok(engine
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))??)
}
