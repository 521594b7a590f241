//! The `faultline` command line: parses the arguments, dispatches to a subcommand in
//! `cli/`, and turns its outcome into an exit code. anyhow is used here and in `cli/` only.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::args::UsageError;

#[derive(Parser)]
#[command(
    name = "faultline",
    version,
    about = "Watch a KVM guest live-migrate post-copy, fault by fault",
    long_about = "Watch a KVM guest live-migrate post-copy, fault by fault.\n\nWith no command, runs the built-in default scenario."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate a running guest post-copy and report what every vCPU went through.
    Run(cli::run::RunArgs),
    /// Run a guest and serve it to a destination in another process or on another host
    /// (`faultline run --source ADDR --token T`), which takes it over post-copy.
    Source(cli::source::SourceArgs),
    /// Measure demand paging: pages/s per fault mode and vCPU count, and the observer's cost.
    Bench(cli::bench::BenchArgs),
    /// Watch and steer a run served with `faultline run --control PATH`, or a real QEMU
    /// migration (`--qmp SOCKET --trace FILE`).
    Attach(cli::observe::AttachArgs),
    /// Launch a real QEMU post-copy migration on this host (source and destination, a
    /// faultline guest) and watch it live, per vCPU.
    Qemu(cli::qemu::QemuArgs),
    /// Play a recording back in the live view, or print its summary.
    Replay(cli::observe::ReplayArgs),
    /// Make a recording into one self-contained HTML page (and SVG figures) to share.
    Report(cli::report::ReportArgs),
    /// Report what this host offers: KVM, userfaultfd, and which fault modes really work.
    Probe {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Probe { json }) => cli::probe::run(json),
        Some(Command::Bench(args)) => cli::bench::run(args),
        Some(Command::Source(args)) => cli::source::run(args),
        Some(Command::Attach(args)) => cli::observe::attach(args),
        Some(Command::Replay(args)) => cli::observe::replay(args),
        Some(Command::Report(args)) => cli::report::run(args),
        Some(Command::Qemu(args)) => cli::qemu::run(args),
        Some(Command::Run(args)) => cli::run::run(args),
        None => cli::run::run(cli::run::RunArgs::default()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // stderr may be a terminal that has gone away: never panic over a message.
        Ok(false) => {
            let _ = writeln!(
                std::io::stderr(),
                "faultline: the run finished but could not prove that no data was lost"
            );
            ExitCode::from(1)
        }
        Err(e) if e.is::<UsageError>() || e.is::<faultline::vmm::VmmError>() => {
            let _ = writeln!(std::io::stderr(), "faultline: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "faultline: {e:#}");
            ExitCode::from(1)
        }
    }
}
