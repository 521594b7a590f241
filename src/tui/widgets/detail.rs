//! The detail view of one vCPU: what it waits on, its totals and latencies, the regions it
//! stalled on most, and its own latency histogram.

use std::fmt::Write;

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::widgets::{Clear, Widget};

use super::format::{Count, Micros, ShortSize};
use super::histogram::HistogramView;
use super::{pane, text};
use crate::contract::{Activity, VcpuSnapshot};
use crate::tui::theme::Theme;

/// The popup's area: nearly all of `area` up to a readable size, centered.
pub fn popup_area(area: Rect) -> Rect {
    let w = area
        .width
        .saturating_sub(4)
        .max(area.width.min(40))
        .min(120);
    let h = area.height.min(32);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

pub fn render(area: Rect, buf: &mut Buffer, v: &VcpuSnapshot, theme: &Theme) {
    let area = popup_area(area.intersection(buf.area));
    if area.is_empty() {
        return;
    }
    Clear.render(area, buf);
    let title = format!("vCPU {}  (Esc closes, ↑↓ other vCPUs)", v.id);
    let inner = pane(buf, area, &title, true, theme);
    // Side by side when wide enough, else the histogram under the text.
    let [info, hist] = if inner.width >= 64 {
        let hist_w = (inner.width * 2 / 5).max(28);
        Layout::horizontal([Constraint::Min(0), Constraint::Length(hist_w)]).areas(inner)
    } else {
        Layout::vertical([Constraint::Length(12), Constraint::Min(0)]).areas(inner)
    };
    lines(info, buf, v, theme);
    if !hist.is_empty() {
        let h = pane(buf, hist, &format!("latency · v{}", v.id), false, theme);
        HistogramView {
            buckets: &v.histogram,
            theme,
        }
        .render(h, buf);
    }
}

fn lines(area: Rect, buf: &mut Buffer, v: &VcpuSnapshot, theme: &Theme) {
    let mut s = String::new();
    let mut y = area.y;
    let mut line = |s: &str, style| {
        text(buf, area, area.x + 1, y, s, style);
        y += 1;
    };
    let (state, style) = match v.activity {
        Activity::Running => ("running".to_string(), theme.good()),
        Activity::Stalled { gpa, for_us } => (
            format!("waiting on {gpa:#x} for {}", Micros(for_us)),
            if for_us >= 100_000 {
                theme.error()
            } else {
                theme.warn()
            },
        ),
        Activity::Paused => ("paused".into(), theme.dim()),
        Activity::Done => ("done".into(), theme.dim()),
        Activity::Failed => ("failed".into(), theme.error()),
    };
    line(&state, style.patch(theme.value()));
    let _ = write!(
        s,
        "faults {} ({:.0}/s) · stalled {}, {:.0}% now",
        Count(v.faults),
        v.faults_per_sec,
        Micros((v.stall_ms * 1e3) as u64),
        v.stall_share * 100.0
    );
    line(&s, theme.text());
    s.clear();
    let _ = write!(
        s,
        "latency p50 {}  p99 {}  max {}",
        Micros(v.latency.p50_us),
        Micros(v.latency.p99_us),
        Micros(v.latency.max_us)
    );
    line(&s, theme.text());
    s.clear();
    if v.baseline_per_sec > 0.0 {
        let _ = write!(
            s,
            "progress {:.0}% of baseline ({}/s vs {}/s)",
            v.progress_per_sec / v.baseline_per_sec * 100.0,
            Count(v.progress_per_sec.max(0.0) as u64),
            Count(v.baseline_per_sec.max(0.0) as u64)
        );
    } else {
        s.push_str("progress: no baseline yet");
    }
    line(&s, theme.text());
    line("", theme.text());
    line("top regions by stall    stall faults", theme.heading());
    if v.top_regions.is_empty() {
        line("none yet", theme.dim());
    }
    for r in &v.top_regions {
        s.clear();
        let _ = write!(s, "{:#x}+{}", r.gpa, ShortSize(r.bytes));
        let w = s.len();
        let _ = write!(
            s,
            "{:>pad$}",
            Micros(r.stall_us).to_string(),
            pad = 29 - w.min(22)
        );
        let _ = write!(s, " {:>6}", Count(r.faults).to_string());
        line(&s, theme.text());
    }
}
