//! A migration in this process, headless: a small guest on real KVM, migrated post-copy
//! with the pages streamed at 64 MiB/s, then its summary. Needs /dev/kvm and userfaultfd.
//!
//! `cargo run --release --example headless_run`

use std::time::Duration;

use faultline::contract::{FaultMode, RunConfig};
use faultline::postcopy::{self, RunStatus};
use faultline::units::Rate;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = RunConfig {
        scenario: "example".into(),
        vcpus: 2,
        mem_bytes: 256 << 20,
        workload: "verify".parse()?,
        mode: FaultMode::Exit,
        fetch_rate: Rate::BytesPerSec(64 << 20),
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(3),
        ..Default::default()
    };
    let summary = postcopy::run(&config, &RunStatus::default(), None)?;
    println!(
        "{}: {} faults, downtime {} us, post-copy {} ms, p99 {} us",
        summary.verdict(),
        summary.per_vcpu.iter().map(|v| v.fault_exits).sum::<u64>(),
        summary.downtime_us,
        summary.postcopy_ms,
        summary.latency_us.p99
    );
    for v in &summary.per_vcpu {
        println!("  vCPU {}: stalled {:.1} ms", v.vcpu, v.stall_ms);
    }
    Ok(())
}
