//! A `Feed` of one's own: everything the live view draws comes through this trait, so a
//! feed that prints can stand where the TUI's would. This one wraps the engine's feed and
//! prints a line per snapshot, then the verdict.
//!
//! `cargo run --release --example print_feed`

use std::sync::Arc;
use std::time::Duration;

use faultline::contract::{Action, Feed, RunConfig, Snapshot};
use faultline::postcopy::{self, EngineFeed, RunStatus};

/// Prints what it passes on.
struct Printing<F: Feed>(F);

impl<F: Feed> Feed for Printing<F> {
    fn latest(&mut self) -> Option<Arc<Snapshot>> {
        let s = self.0.latest()?;
        let stalled: f64 = s.vcpus.iter().map(|v| v.stall_share).sum::<f64>() * 100.0;
        println!(
            "{:>6.1}s {:<10} {:>7} of {} pages missing, vCPUs {stalled:.0}% stalled",
            s.elapsed_ms as f64 / 1000.0,
            s.phase.as_str(),
            s.pages.missing,
            s.pages.total
        );
        Some(s)
    }

    fn act(&mut self, action: Action) -> Result<(), String> {
        println!("-> {action:?}");
        self.0.act(action)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = RunConfig {
        vcpus: 2,
        mem_bytes: 128 << 20,
        workload: "hotspot-mixed".parse()?,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(2),
        ..Default::default()
    };
    let status = Arc::new(RunStatus::default());
    let (actions, controls) = crossbeam_channel::bounded(8);
    let mut feed = Printing(EngineFeed::new(status.clone(), actions));
    let engine = {
        let status = status.clone();
        std::thread::spawn(move || postcopy::run(&config, &status, Some(&controls)))
    };
    while !engine.is_finished() {
        feed.latest();
        std::thread::sleep(Duration::from_millis(250));
    }
    let summary = engine.join().map_err(|_| "the engine panicked")??;
    println!("{}", summary.verdict());
    Ok(())
}
