//! A run's summary as text, for faultline's own runs and for QEMU migrations.

use std::io::Write;

use faultline::contract::{QemuView, Summary};
use faultline::units::Bytes;

/// The summary as text; write errors are the caller's (a hung-up terminal is not fatal).
pub fn write_summary(out: &mut impl Write, s: &Summary) -> std::io::Result<()> {
    let verdict = s.verdict();
    writeln!(
        out,
        "{}: {} vCPUs, {} {}, {} mode{}, workload {}",
        s.scenario,
        s.vcpus,
        Bytes(s.mem_bytes),
        s.backing.map_or_else(|| "-".to_string(), |b| b.to_string()),
        s.mode,
        s.exit_path
            .as_ref()
            .map(|p| format!(" via {p}"))
            .unwrap_or_default(),
        s.workload
    )?;
    // The operator may have changed the limit: say what it was at the end, and at first.
    let throttle = match s.throttle_initial.as_deref().filter(|&i| i != s.throttle) {
        Some(initial) => format!("{} at the end, {initial} at first", s.throttle),
        None => s.throttle.clone(),
    };
    writeln!(
        out,
        "downtime {} us, post-copy {} ms{}, {} at {}/s ({}, throttle {})",
        s.downtime_us,
        s.postcopy_ms,
        if s.postcopy_complete {
            ""
        } else {
            " (finished after the run)"
        },
        Bytes(s.bytes_transferred),
        Bytes(s.transfer_bytes_per_sec),
        s.transport
            .map_or_else(|| "-".to_string(), |t| t.to_string()),
        throttle
    )?;
    if s.reconnects > 0 {
        writeln!(
            out,
            "{} connections to the source broke and were replaced",
            s.reconnects
        )?;
    }
    writeln!(
        out,
        "pages: {} total, {} boot, {} demand, {} pushed, {} injected, {} refetched",
        s.pages_total,
        s.pages_boot,
        s.pages_demand,
        s.pages_pushed,
        s.pages_injected,
        s.pages_refetched
    )?;
    if s.pages_prefetched > 0 || !matches!(s.prefetch.as_str(), "" | "off") {
        writeln!(
            out,
            "prefetch {}: {} pages brought in beside faults, {} of them used ({:.0}%, as far \
             as the faults show)",
            s.prefetch,
            s.pages_prefetched,
            s.prefetch_used,
            100.0 * s.prefetch_used as f64 / s.pages_prefetched.max(1) as f64
        )?;
    }
    writeln!(
        out,
        "all vCPUs blocked {:.1} ms; fault latency p50 {} us, p99 {} us, max {} us",
        s.blocktime_all_ms, s.latency_us.p50, s.latency_us.p99, s.latency_us.max
    )?;
    if s.legs.len() > 1 {
        writeln!(
            out,
            "{} migrations (the figures here are the last one's):",
            s.legs.len()
        )?;
        for l in &s.legs {
            writeln!(
                out,
                "  migration {}: downtime {} us, post-copy {} ms{}, {} demand, {} pushed, stall {:.1} ms, p99 {} us, throttle {}, {} of {} pages differ",
                l.migration,
                l.downtime_us,
                l.postcopy_ms,
                if l.postcopy_complete {
                    ""
                } else {
                    " (finished after)"
                },
                l.pages_demand,
                l.pages_pushed,
                l.stall_ms,
                l.latency_us.p99,
                l.throttle,
                l.mismatches,
                l.pages_checked
            )?;
        }
    }
    writeln!(
        out,
        "vcpu  faults  stall ms   p50 us  p99 us  max us  guest accesses"
    )?;
    for v in &s.per_vcpu {
        writeln!(
            out,
            "{:>4} {:>7} {:>9.1} {:>8} {:>7} {:>7} {:>15}",
            v.vcpu,
            v.fault_exits,
            v.stall_ms,
            v.latency_us.p50,
            v.latency_us.p99,
            v.latency_us.max,
            v.guest_progress
        )?;
    }
    writeln!(
        out,
        "{verdict}: {} pages checked, {} mismatches, {} guest errors, {} telemetry events dropped",
        s.verify.pages_checked, s.verify.mismatches, s.verify.guest_errors, s.telemetry_dropped
    )?;
    Ok(())
}

pub fn print_summary(s: &Summary) {
    let out = &mut std::io::stdout().lock();
    let _ = if s.qemu.is_some() {
        print_qemu_summary(out, s)
    } else {
        write_summary(out, s)
    };
}

/// A QEMU migration's summary as text: faultline's figures, then the three clocks.
pub fn print_qemu_summary(out: &mut impl Write, s: &Summary) -> std::io::Result<()> {
    let Some(q) = &s.qemu else {
        return write_summary(out, s);
    };
    writeln!(
        out,
        "QEMU {} post-copy: {} vCPUs, {}, workload {}, state {}",
        q.version,
        s.vcpus,
        Bytes(s.mem_bytes),
        s.workload,
        q.state
    )?;
    if q.pages_known {
        writeln!(
            out,
            "post-copy {} ms, downtime {} us, {} pages: {} requested on demand, {} streamed; throttle {}",
            s.postcopy_ms, s.downtime_us, s.pages_total, s.pages_demand, s.pages_pushed, s.throttle
        )?;
    } else {
        writeln!(
            out,
            "post-copy {} ms; page counts and downtime not known (no --source-qmp)",
            s.postcopy_ms
        )?;
    }
    writeln!(
        out,
        "all vCPUs blocked {:.1} ms; fault latency p50 {} us, p99 {} us, max {} us; {} trace events, {} garbage lines",
        s.blocktime_all_ms,
        s.latency_us.p50,
        s.latency_us.p99,
        s.latency_us.max,
        q.trace_events,
        q.trace_garbage
    )?;
    write_three_clocks(out, q)?;
    let verdict = s.verdict();
    writeln!(
        out,
        "{verdict}: migration {}, {} guest mismatches",
        if s.postcopy_complete {
            "completed"
        } else {
            "did not complete"
        },
        s.verify.mismatches
    )
}

/// Each vCPU's stall by faultline, by the kernel's clock and by QEMU, and how far the
/// first and last lie from the kernel's.
pub fn write_three_clocks(out: &mut impl Write, q: &QemuView) -> std::io::Result<()> {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    let pct = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{:+.1}%", v * 100.0));
    match q.window_ms {
        Some((a, b)) => writeln!(
            out,
            "stall per vCPU over post-copy ({:.1} s), three clocks:",
            b.saturating_sub(a) as f64 / 1000.0
        )?,
        None => writeln!(out, "stall per vCPU: post-copy not seen, no window")?,
    }
    writeln!(
        out,
        "vcpu   tid  faultline ms  off-CPU ms  QEMU ms  faultline vs off-CPU  QEMU vs off-CPU"
    )?;
    for v in &q.vcpus {
        writeln!(
            out,
            "{:>4} {:>5} {:>13} {:>11} {:>8} {:>21} {:>16}",
            v.vcpu,
            v.thread_id.map_or_else(|| "-".into(), |t| t.to_string()),
            ms(v.stall_ms),
            ms(v.offcpu_ms),
            ms(v.qemu_blocktime_ms),
            pct(v.deviation(v.stall_ms)),
            pct(v.deviation(v.qemu_blocktime_ms)),
        )?;
    }
    Ok(())
}
