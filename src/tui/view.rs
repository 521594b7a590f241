//! The layout: header, vCPU table, page fill and memory map, heatmaps, latency histogram and
//! status line, arranged for the terminal's size; overlays for detail, help and prompt.

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};

use super::app::{App, Drawn, Pane};
use super::widgets::fill::FillView;
use super::widgets::header::{self, Freeze};
use super::widgets::heatmap::{self, render_faults, render_stall};
use super::widgets::histogram::HistogramView;
use super::widgets::memmap::MemoryMapView;
use super::widgets::status::{self, StatusLine};
use super::widgets::vcpus::{VcpuTable, scroll_offset};
use super::widgets::{detail, help, pane, text};
use crate::contract::Snapshot;
use crate::units::Bytes;

/// Where each pane goes; `None` when there is no room for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Areas {
    pub header: Rect,
    pub body: Rect,
    pub status: Rect,
    pub vcpus: Rect,
    pub fill: Rect,
    pub map: Rect,
    pub stall: Rect,
    pub faults: Rect,
    pub histogram: Rect,
}

/// Rows of the latency pane in the wide layout, its frame included.
const HISTOGRAM_ROWS: u16 = 14;

/// Wide terminals give the left column to what grows with time (the vCPU table, the fill,
/// the heatmaps, which show more history the wider they are) and a right column, sized for
/// the histogram's bars and the map's power-of-two rows, to the histogram and the memory
/// map; narrow ones stack the table, the fill gauge and a row of the other panes.
pub fn layout(area: Rect, vcpus: usize) -> Areas {
    let status_h = u16::from(area.height >= 2);
    let header_h = area.height.saturating_sub(status_h).min(2);
    let body_h = area.height - status_h - header_h;
    let header = Rect {
        height: header_h,
        ..area
    };
    let body = Rect::new(area.x, area.y + header_h, area.width, body_h);
    let status = Rect::new(area.x, body.bottom(), area.width, status_h);
    let mut a = Areas {
        header,
        body,
        status,
        ..Areas::default()
    };
    let table_rows = (vcpus as u16).saturating_add(3);
    if area.width >= 120 && body.height >= 30 {
        // 44 columns hold the histogram and a 32-column map; wider screens give the map 64.
        let right_w = (area.width * 3 / 10).clamp(44, 76);
        let [left, right] =
            Layout::horizontal([Constraint::Min(0), Constraint::Length(right_w)]).areas(body);
        let table_h = table_rows.min(left.height * 2 / 5);
        let rest = left.height.saturating_sub(table_h + 2);
        // The stall rows are the vCPUs; the fault rows (memory regions) take what is left.
        let stall_h = (vcpus as u16 + 2).clamp(4, rest / 2);
        [a.vcpus, a.fill, a.stall, a.faults] = Layout::vertical([
            Constraint::Length(table_h),
            Constraint::Length(2),
            Constraint::Length(stall_h),
            Constraint::Min(0),
        ])
        .areas(left);
        // A dozen buckets, one a row (faults rarely spread over more octaves than that),
        // and the map below with the rest.
        let hist_h = HISTOGRAM_ROWS.min(right.height / 2);
        [a.histogram, a.map] =
            Layout::vertical([Constraint::Length(hist_h), Constraint::Min(0)]).areas(right);
    } else {
        let table_h = table_rows
            .min((body.height * 2 / 5).max(5))
            .min(body.height);
        let fill_h = (body.height - table_h).min(2);
        a.vcpus = Rect {
            height: table_h,
            ..body
        };
        a.fill = Rect::new(body.x, body.y + table_h, body.width, fill_h);
        let bottom = Rect::new(
            body.x,
            a.fill.bottom(),
            body.width,
            body.height - table_h - fill_h,
        );
        let heat;
        [a.map, heat, a.histogram] = Layout::horizontal([
            Constraint::Percentage(32),
            Constraint::Percentage(40),
            Constraint::Percentage(28),
        ])
        .areas(bottom);
        [a.stall, a.faults] =
            Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(heat);
    }
    a
}

/// Draws the whole screen from `app`, and records where the map and table went.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    render(area, frame.buffer_mut(), app);
}

/// [`draw`] into a plain buffer.
pub fn render(area: Rect, buf: &mut Buffer, app: &App) {
    let area = area.intersection(buf.area);
    let theme = app.theme();
    let Some(s) = app.snapshot() else {
        app.set_drawn(Drawn::default());
        let a = layout(area, 0);
        let msg = "waiting for the first snapshot…";
        let w = msg.chars().count() as u16;
        let x = area.x + area.width.saturating_sub(w) / 2;
        let y = area.y + area.height / 2;
        text(buf, area, x, y, msg, theme.dim());
        status_line(a.status, buf, app);
        return;
    };
    let a = layout(area, s.vcpus.len());
    let freeze = if app.frozen() {
        Freeze::Frozen {
            newer: app.held_count(),
        }
    } else {
        Freeze::Live
    };
    header::render(a.header, buf, s, freeze, app.source_label(), theme);
    let mut drawn = vcpu_pane(a.vcpus, buf, app, s);
    FillView {
        known: s.qemu.as_ref().is_none_or(|q| q.pages_known),
        pages: &s.pages,
        pages_per_sec: s.fill_pages_per_sec,
        page_size: s.run.page_size,
        eta_ms: s.eta_ms,
        theme,
    }
    .render(a.fill, buf);
    drawn.map = match &s.qemu {
        Some(q) => {
            let inner = pane(buf, a.map, "stall by three clocks", false, theme);
            super::widgets::clocks::ClocksView { qemu: q, theme }.render(inner, buf);
            None
        }
        None => map_pane(a.map, buf, app, s),
    };
    heatmap_panes(&a, buf, app, s);
    histogram_pane(a.histogram, buf, app, s);
    if app.detail()
        && let Some(v) = s.vcpus.get(app.selected())
    {
        detail::render(a.body, buf, v, theme);
    }
    if app.help() {
        help::render(area, buf, app.source_keys(), theme);
    }
    status_line(a.status, buf, app);
    app.set_drawn(drawn);
}

fn vcpu_pane(area: Rect, buf: &mut Buffer, app: &App, s: &Snapshot) -> Drawn {
    let mut drawn = Drawn::default();
    if area.is_empty() {
        return drawn;
    }
    let n = s.vcpus.len();
    let visible = usize::from(area.height.saturating_sub(3));
    let offset = scroll_offset(app.drawn().vcpu_offset, app.selected(), visible, n);
    let title = if visible < n {
        let last = (offset + visible).min(n).saturating_sub(1);
        format!("vCPUs v{offset}-v{last} of {n}")
    } else {
        format!("vCPUs ({n})")
    };
    let inner = pane(buf, area, &title, app.focus() == Pane::Vcpus, app.theme());
    VcpuTable {
        vcpus: &s.vcpus,
        selected: app.selected(),
        offset,
        theme: app.theme(),
    }
    .render(inner, buf);
    drawn.vcpu_offset = offset;
    drawn.vcpu_rows = (inner.height > 1).then(|| Rect {
        y: inner.y + 1,
        height: inner.height - 1,
        ..inner
    });
    drawn
}

/// The map is drawn before its border so the title can say how much a cell covers.
fn map_pane(
    area: Rect,
    buf: &mut Buffer,
    app: &App,
    s: &Snapshot,
) -> Option<super::widgets::memmap::MapGeometry> {
    if area.is_empty() {
        return None;
    }
    let inner = Rect {
        x: area.x.saturating_add(1),
        y: area.y.saturating_add(1),
        width: area.width.saturating_sub(2),
        height: area.height.saturating_sub(2),
    };
    let focused = app.focus() == Pane::MemoryMap;
    let g = MemoryMapView {
        map: &s.memory_map,
        mem_bytes: s.run.mem_bytes,
        cursor_source: app.map_cursor(),
        focused,
        theme: app.theme(),
    }
    .render(inner, buf);
    let title = match g {
        Some(g) => format!(
            "memory · {}/cell",
            Bytes(s.memory_map.region_bytes * g.per as u64)
        ),
        None => "memory".into(),
    };
    pane(buf, area, &title, focused, app.theme());
    g
}

fn heatmap_panes(a: &Areas, buf: &mut Buffer, app: &App, s: &Snapshot) {
    let theme = app.theme();
    let focused = app.focus() == Pane::Heatmaps;
    let secs = s.stall_heatmap.column_ms as f64 / 1000.0;
    if !a.stall.is_empty() {
        let rows = usize::from(a.stall.height.saturating_sub(2));
        let n = s.stall_heatmap.rows.len();
        let title = if rows < n {
            let w = heatmap::stall_window(n, rows, app.selected());
            format!(
                "stall % · v{}-v{} · {secs}s/col",
                w.start,
                w.end.saturating_sub(1)
            )
        } else {
            format!("stall % by vCPU · {secs}s/col")
        };
        let inner = pane(buf, a.stall, &title, focused, theme);
        render_stall(inner, buf, &s.stall_heatmap, app.selected(), theme);
    }
    if !a.faults.is_empty() {
        let secs = s.fault_heatmap.column_ms as f64 / 1000.0;
        let title = format!("faults by region · {secs}s/col");
        let inner = pane(buf, a.faults, &title, focused, theme);
        render_faults(inner, buf, &s.fault_heatmap, s.fault_region_bytes, theme);
    }
}

/// All vCPUs, or the selected one while the table has focus or its detail is open.
fn histogram_pane(area: Rect, buf: &mut Buffer, app: &App, s: &Snapshot) {
    if area.is_empty() {
        return;
    }
    let one = (app.focus() == Pane::Vcpus || app.detail())
        .then(|| s.vcpus.get(app.selected()))
        .flatten();
    let (title, buckets) = match one {
        Some(v) => (format!("latency · v{}", v.id), &v.histogram),
        None => ("latency · all vCPUs".to_string(), &s.histogram),
    };
    let inner = pane(
        buf,
        area,
        &title,
        app.focus() == Pane::Histogram,
        app.theme(),
    );
    HistogramView {
        buckets,
        theme: app.theme(),
    }
    .render(inner, buf);
}

fn status_line(area: Rect, buf: &mut Buffer, app: &App) {
    let line = if let Some(p) = app.prompt() {
        StatusLine::Prompt {
            label: p.kind.label(),
            input: &p.input,
            hint: p.kind.hint(),
        }
    } else if let Some(st) = app.status() {
        StatusLine::Message {
            text: &st.text,
            error: st.error,
        }
    } else {
        StatusLine::Empty
    };
    status::render(area, buf, &line, app.theme());
}
