//! A feed of one's own: follows a QEMU post-copy migration through its QMP socket and trace
//! file and prints each vCPU's stall by faultline and by the kernel's clock, once a second,
//! until the migration completes.
//!
//! `cargo run --example qemu_watch -- DST-QMP.sock DST.trace`

use std::time::Duration;

use faultline::qemu::watch::{Target, Watcher};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(qmp), Some(trace)) = (args.next(), args.next()) else {
        return Err("usage: qemu_watch DST-QMP.sock DST.trace".into());
    };
    let mut w = Watcher::connect(Target {
        dst_qmp: qmp.into(),
        trace: trace.into(),
        src_qmp: None,
        recover_uri: None,
        console: None,
        src_console: None,
        scenario: "example".into(),
        workload: "unknown".into(),
    })?;
    loop {
        let s = w.tick()?;
        if s.elapsed_ms % 1000 < 100 {
            let q = s.qemu.as_ref().ok_or("not a QEMU snapshot")?;
            let line: Vec<String> = q
                .vcpus
                .iter()
                .map(|v| {
                    format!(
                        "v{} {:.0}/{:.0} ms",
                        v.vcpu,
                        v.stall_ms.unwrap_or(0.0),
                        v.offcpu_ms.unwrap_or(0.0)
                    )
                })
                .collect();
            println!(
                "{:>6.1}s {:<16} {}",
                s.elapsed_ms as f64 / 1000.0,
                q.state,
                line.join("  ")
            );
            if q.state == "completed" {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
