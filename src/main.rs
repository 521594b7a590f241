//! The `faultline` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "faultline",
    version,
    about = "Watch a KVM guest live-migrate post-copy, fault by fault"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Report what this host offers: KVM, userfaultfd, and which fault modes really work.
    Probe {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn probe(json: bool) -> anyhow::Result<()> {
    let report = faultline::probe::run()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", faultline::probe::render_text(&report));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Probe { json }) => probe(json),
        None => probe(false),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultline: {e:#}");
            ExitCode::from(2)
        }
    }
}
