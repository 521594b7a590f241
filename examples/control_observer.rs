//! A scripted observer of a run's control socket: it attaches to `faultline run --control
//! PATH`, lifts the fetch-rate limit after two seconds, prints what it sees and ends with
//! the run's summary (or when the run goes away).
//!
//! `faultline run --headless --control /tmp/fl.sock --duration 10s &`
//! `cargo run --example control_observer -- /tmp/fl.sock`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use faultline::contract::{Action, Feed};
use faultline::control::SocketFeed;
use faultline::units::Rate;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path: PathBuf = std::env::args()
        .nth(1)
        .ok_or("usage: control_observer SOCKET")?
        .into();
    let mut feed = SocketFeed::connect(&path, None)?;
    let start = Instant::now();
    let mut throttled = false;
    loop {
        if let Some(s) = feed.latest() {
            println!(
                "{:>6.1}s {:<10} throttle {:<12} {} pages missing",
                s.elapsed_ms as f64 / 1000.0,
                s.phase.as_str(),
                s.throttle,
                s.pages.missing
            );
            if let Some(summary) = &s.summary {
                println!("{}", serde_json::to_string_pretty(summary)?);
                return Ok(());
            }
        }
        if !throttled && start.elapsed() > Duration::from_secs(2) {
            feed.act(Action::Throttle(Rate::Unlimited))?;
            throttled = true;
        }
        if feed.lost() {
            return Err(format!("{}: the run went away", path.display()).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
