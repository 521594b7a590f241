//! The two header lines: where the run is, and what the operator controls.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};

use super::format::{Micros, whole_secs};
use super::text_right;
use crate::contract::{Phase, Snapshot, Transport};
use crate::tui::theme::Theme;
use crate::units::{Bytes, Rate};

/// Whether the display is frozen, and how many newer snapshots wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    Live,
    Frozen { newer: u64 },
}

/// `label` names where the snapshots come from when it is not a live engine (a replay).
pub fn render(
    area: Rect,
    buf: &mut Buffer,
    s: &Snapshot,
    freeze: Freeze,
    label: Option<&str>,
    theme: &Theme,
) {
    let area = area.intersection(buf.area);
    if area.is_empty() {
        return;
    }
    let sep = || Span::styled("  ", theme.text());
    let kv = |k: &'static str, v: String| {
        [
            Span::styled(k, theme.label()),
            Span::styled(v, theme.value()),
        ]
    };
    let phase_style = match s.phase {
        Phase::Failed => theme.error(),
        Phase::Complete | Phase::Finished => theme.good(),
        Phase::Switchover | Phase::Postcopy => theme.warn(),
        Phase::Warmup => theme.text(),
    };
    let mode = match &s.exit_path {
        Some(p) => format!("{}/{p}", s.run.mode),
        None => s.run.mode.to_string(),
    };
    // A QEMU migration goes by QEMU's own state names.
    let phase = s
        .qemu
        .as_ref()
        .map_or(s.phase.as_str(), |q| q.state.as_str());
    let mut l1 = vec![
        Span::styled("faultline", theme.title()),
        sep(),
        Span::styled(phase, phase_style.patch(theme.value())),
        sep(),
    ];
    l1.extend(kv("elapsed ", whole_secs(s.elapsed_ms).to_string()));
    l1.push(sep());
    l1.extend(kv("migration ", s.migration.to_string()));
    l1.push(sep());
    l1.extend(kv("mode ", mode));
    l1.push(sep());
    l1.push(Span::styled("push ", theme.label()));
    l1.push(if s.push_enabled {
        Span::styled("on", theme.good())
    } else {
        Span::styled("off", theme.warn())
    });
    // Off is the default and `f` in the help says how to change it: said only when on.
    if let Some(p) = s.prefetch.as_ref().filter(|p| p.strategy != "off") {
        l1.push(sep());
        l1.push(Span::styled("prefetch ", theme.label()));
        l1.push(Span::styled(p.strategy.clone(), theme.good()));
    }
    if let Some(up) = s.link_up {
        l1.push(sep());
        l1.push(Span::styled("link ", theme.label()));
        l1.push(if up {
            Span::styled("up", theme.good())
        } else {
            Span::styled("DOWN", theme.warn())
        });
    }
    // The first migration's guest came from another process: say from where.
    if let Some(source) = s.run.source.as_ref().filter(|_| s.migration <= 1) {
        l1.push(sep());
        l1.extend(kv("from ", source.clone()));
    }
    buf.set_line(area.x, area.y, &Line::from(l1), area.width);
    if let Freeze::Frozen { newer } = freeze {
        let marker = format!(" FROZEN +{newer} ");
        text_right(buf, area, area.y, &marker, theme.frozen());
    } else if let Some(label) = label {
        text_right(buf, area, area.y, &format!(" {label} "), theme.frozen());
    }
    if area.height < 2 {
        return;
    }
    let filled = s.pages.boot + s.pages.demand + s.pages.pushed + s.pages.prefetched;
    let pages_known = s.qemu.as_ref().is_none_or(|q| q.pages_known);
    let downtime = s
        .downtime_us
        .map_or_else(|| "-".into(), |d| Micros(d).to_string());
    let mut l2 = Vec::with_capacity(16);
    l2.extend(kv("throttle ", s.throttle.clone()));
    l2.push(sep());
    let mut transfer = Rate::BytesPerSec(s.transfer_bytes_per_sec).to_string();
    // Local copies are the default; a socket is worth saying.
    if s.qemu.is_some() {
        transfer = format!("{transfer} qemu");
    } else if let Some(t) = s.run.transport.filter(|&t| t != Transport::Local) {
        transfer = format!("{transfer} {t}");
    }
    l2.extend(kv("transfer ", transfer));
    l2.push(sep());
    l2.extend(kv("downtime ", downtime));
    l2.push(sep());
    let pages = if pages_known {
        format!("{filled}/{}", s.pages.total)
    } else {
        format!("?/{}", s.pages.total)
    };
    l2.extend(kv("pages ", pages));
    l2.push(sep());
    if let Some(p) = s.prefetch.as_ref().filter(|p| p.pages > 0) {
        let used = 100 * p.used / p.pages.max(1);
        l2.extend(kv("prefetched ", format!("{} ({used}% used)", p.pages)));
        l2.push(sep());
    }
    let ram = match &s.run.backing {
        Some(b) => format!("{} {b}", Bytes(s.run.mem_bytes)),
        None => Bytes(s.run.mem_bytes).to_string(),
    };
    l2.extend(kv("ram ", ram));
    l2.push(sep());
    l2.push(Span::styled(
        format!("{} · {}", s.run.scenario, s.run.workload),
        theme.dim(),
    ));
    buf.set_line(area.x, area.y + 1, &Line::from(l2), area.width);
}
