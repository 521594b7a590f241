//! The report's page: the run's identity, the verdict, the figures inline, the per-vCPU and
//! per-migration tables; all text escaped, all style inline, no script.

use std::fmt::Write;

use super::Figure;
use crate::contract::Snapshot;
use crate::control::record::Recording;
use crate::units::Bytes;

const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:960px;color:#222}\
h1{font-size:20px}h2{font-size:15px;margin-top:28px}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:right}th{background:#f2f2f2}td.l,th.l{text-align:left}\
.ok{color:#2e7d32;font-weight:bold}.bad{color:#c62828;font-weight:bold}\
.cut{background:#fff3cd;border:1px solid #e0c36c;padding:8px}figure{margin:12px 0}";

/// Text for HTML, escaped.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn html(name: &str, rec: &Recording, last: &Snapshot, figures: &[Figure]) -> String {
    let mut h = String::new();
    let run = &last.run;
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>faultline report: {}</title><style>{STYLE}</style></head><body>",
        esc(name)
    );
    let _ = write!(h, "<h1>faultline report: {}</h1>", esc(&run.scenario));
    if let Some(cut) = &rec.cut {
        let _ = write!(
            h,
            "<p class=\"cut\" id=\"cut\">This recording is cut short: {}. The report shows the \
             {} snapshots before the cut, up to {:.1} s.</p>",
            esc(cut),
            rec.snapshots.len(),
            last.elapsed_ms as f64 / 1000.0
        );
    }
    let identity = [
        ("recording", name.to_string()),
        ("scenario", run.scenario.clone()),
        (
            "fault mode",
            match &last.exit_path {
                Some(p) => format!("{} ({p})", run.mode),
                None => run.mode.to_string(),
            },
        ),
        ("workload", run.workload.clone()),
        ("vCPUs", run.vcpus.to_string()),
        ("memory", Bytes(run.mem_bytes).to_string()),
        ("backing", run.backing.map_or("-".into(), |b| b.to_string())),
        (
            "transport",
            run.transport.map_or("-".into(), |t| t.to_string()),
        ),
        (
            "source",
            run.source.clone().unwrap_or_else(|| "this process".into()),
        ),
        (
            "host",
            run.host.clone().unwrap_or_else(|| "not recorded".into()),
        ),
        ("migrations", last.migration.to_string()),
        (
            "length",
            format!("{:.1} s", last.elapsed_ms as f64 / 1000.0),
        ),
    ];
    h.push_str("<table id=\"identity\">");
    for (k, v) in identity {
        let _ = write!(
            h,
            "<tr><th class=\"l\">{k}</th><td class=\"l\">{}</td></tr>",
            esc(&v)
        );
    }
    h.push_str("</table>");
    verdict(&mut h, last);
    let caption = |id: &str| match id {
        "timeline" => "Each mark's tooltip gives its time and what it was.",
        "stall-heatmap" => "Darker: more of that span spent waiting for pages.",
        "fault-heatmap" => "Rows are equal regions of guest memory, by start address.",
        "fill" => "Pages present in the current migration; a new migration starts again.",
        _ => "",
    };
    for f in figures {
        let _ = write!(
            h,
            "<figure id=\"fig-{}\">{}<figcaption>{}</figcaption></figure>",
            esc(&f.id),
            f.svg,
            caption(&f.id)
        );
    }
    vcpu_table(&mut h, last);
    legs_table(&mut h, last);
    h.push_str("<p>Made by <code>faultline report</code> from a recording of the run.</p>");
    h.push_str("</body></html>\n");
    h
}

fn verdict(h: &mut String, last: &Snapshot) {
    match &last.summary {
        Some(s) => {
            let class = if s.verified { "ok" } else { "bad" };
            let _ = write!(
                h,
                "<h2>Verification</h2><p id=\"verdict\" class=\"{class}\">{}: {} pages checked, \
                 {} mismatches, {} guest errors</p>",
                s.verdict(),
                s.verify.pages_checked,
                s.verify.mismatches,
                s.verify.guest_errors
            );
        }
        None => h.push_str(
            "<h2>Verification</h2><p id=\"verdict\" class=\"bad\">not known: the recording \
             ends before the run did</p>",
        ),
    }
}

fn vcpu_table(h: &mut String, last: &Snapshot) {
    h.push_str(
        "<h2>Per vCPU</h2><table id=\"vcpus\"><tr><th>vCPU</th><th>faults</th>\
         <th>stall ms</th><th>p50 us</th><th>p99 us</th><th>max us</th>\
         <th>guest progress</th></tr>",
    );
    match &last.summary {
        Some(s) => {
            for v in &s.per_vcpu {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td></tr>",
                    v.vcpu,
                    v.fault_exits,
                    v.stall_ms,
                    v.latency_us.p50,
                    v.latency_us.p99,
                    v.latency_us.max,
                    v.guest_progress
                );
            }
        }
        // Cut short: the last snapshot's figures, for the current migration.
        None => {
            for v in &last.vcpus {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>-</td></tr>",
                    v.id,
                    v.faults,
                    v.stall_ms,
                    v.latency.p50_us,
                    v.latency.p99_us,
                    v.latency.max_us
                );
            }
        }
    }
    h.push_str("</table>");
}

fn legs_table(h: &mut String, last: &Snapshot) {
    let Some(s) = &last.summary else {
        return;
    };
    let _ = write!(
        h,
        "<h2>Pages and migrations</h2><p id=\"pages\">{} pages: {} demand, {} prefetched \
         ({} used), {} pushed, {} injected, {} refetched; downtime {} us; all vCPUs blocked \
         {:.1} ms; latency p50 {} us, p99 {} us, max {} us</p>",
        s.pages_total,
        s.pages_demand,
        s.pages_prefetched,
        s.prefetch_used,
        s.pages_pushed,
        s.pages_injected,
        s.pages_refetched,
        s.downtime_us,
        s.blocktime_all_ms,
        s.latency_us.p50,
        s.latency_us.p99,
        s.latency_us.max
    );
    if s.legs.is_empty() {
        return;
    }
    h.push_str(
        "<table id=\"legs\"><tr><th>migration</th><th>downtime us</th><th>post-copy ms</th>\
         <th>demand</th><th>prefetched</th><th>pushed</th><th>injected</th><th>stall ms</th>\
         <th>checked</th><th>mismatches</th></tr>",
    );
    for l in &s.legs {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.1}</td><td>{}</td><td>{}</td></tr>",
            l.migration,
            l.downtime_us,
            l.postcopy_ms,
            l.pages_demand,
            l.pages_prefetched,
            l.pages_pushed,
            l.pages_injected,
            l.stall_ms,
            l.pages_checked,
            l.mismatches
        );
    }
    h.push_str("</table>");
}
