//! Heatmaps over time, newest column at the right: stall % by vCPU, and faults by memory
//! region shaded relative to the largest visible count.

use std::fmt::Write;
use std::ops::Range;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;

use super::{put, text};
use crate::contract::Heatmap;
use crate::tui::theme::Theme;

/// The vCPU rows shown when not all fit: a window that follows the selected vCPU, so the
/// row the operator is looking at is never merged away.
pub fn stall_window(rows: usize, height: usize, selected: usize) -> Range<usize> {
    if rows <= height {
        return 0..rows;
    }
    let first = selected.saturating_sub(height / 2).min(rows - height);
    first..first + height
}

/// The data columns shown and the screen column of the first one: the newest that fit,
/// right-aligned.
fn columns(data_cols: usize, area: Rect, label_w: u16) -> (Range<usize>, u16) {
    let room = usize::from(area.width.saturating_sub(label_w));
    let shown = data_cols.min(room);
    (data_cols - shown..data_cols, area.right() - shown as u16)
}

/// Stall % (0 to 100) by vCPU; the selected vCPU's label is highlighted.
pub fn render_stall(
    area: Rect,
    buf: &mut Buffer,
    map: &Heatmap<u8>,
    selected: usize,
    theme: &Theme,
) {
    let area = area.intersection(buf.area);
    let n = map.rows.len();
    if area.is_empty() || n == 0 {
        return;
    }
    let label_w = format!("v{}", n - 1).len() as u16 + 1;
    let label_w = if area.width > label_w + 2 { label_w } else { 0 };
    let data_cols = map.rows.iter().map(Vec::len).max().unwrap_or(0);
    let (cols, x0) = columns(data_cols, area, label_w);
    let mut label = String::new();
    for (y, r) in (area.y..).zip(stall_window(n, usize::from(area.height), selected)) {
        if label_w > 0 {
            label.clear();
            let _ = write!(label, "v{r}");
            let style = if r == selected {
                theme.selected()
            } else {
                theme.dim()
            };
            text(buf, area, area.x, y, &label, style);
        }
        let row = &map.rows[r];
        for (x, c) in (x0..).zip(cols.clone()) {
            let v = row.get(c).copied().unwrap_or(0);
            let (ch, style) = theme.heat(f64::from(v) / 100.0);
            put(buf, x, y, ch, style);
        }
    }
}

/// Fault counts by memory region; when regions outnumber the rows, adjacent regions merge
/// (summed) and the label is the first region's address.
pub fn render_faults(
    area: Rect,
    buf: &mut Buffer,
    map: &Heatmap<u32>,
    region_bytes: u64,
    theme: &Theme,
) {
    let area = area.intersection(buf.area);
    let n = map.rows.len();
    if area.is_empty() || n == 0 {
        return;
    }
    let per = n.div_ceil(usize::from(area.height));
    let shown_rows = n.div_ceil(per);
    let last_gpa = (n as u64 - 1) * region_bytes;
    let label_w = format!("{last_gpa:#x}").len() as u16 + 1;
    let label_w = if area.width > label_w + 4 { label_w } else { 0 };
    let data_cols = map.rows.iter().map(Vec::len).max().unwrap_or(0);
    let (cols, x0) = columns(data_cols, area, label_w);
    let merged = |d: usize, c: usize| -> u64 {
        map.rows[d * per..((d + 1) * per).min(n)]
            .iter()
            .map(|row| u64::from(row.get(c).copied().unwrap_or(0)))
            .sum()
    };
    let mut max = 0u64;
    for d in 0..shown_rows {
        for c in cols.clone() {
            max = max.max(merged(d, c));
        }
    }
    let mut label = String::new();
    for (y, d) in (area.y..area.bottom()).zip(0..shown_rows) {
        if label_w > 0 {
            label.clear();
            let _ = write!(label, "{:#x}", (d * per) as u64 * region_bytes);
            text(buf, area, area.x, y, &label, theme.dim());
        }
        for (x, c) in (x0..).zip(cols.clone()) {
            let v = merged(d, c);
            let heat = if max == 0 { 0.0 } else { v as f64 / max as f64 };
            let (ch, style) = theme.heat(heat);
            put(buf, x, y, ch, style);
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::style::{Color, Modifier, Style};

    use super::*;

    fn fg(c: Color) -> Style {
        Style::new().fg(c)
    }

    #[test]
    fn window_follows_selection() {
        assert_eq!(stall_window(4, 8, 3), 0..4);
        assert_eq!(stall_window(64, 8, 0), 0..8);
        assert_eq!(stall_window(64, 8, 30), 26..34);
        assert_eq!(stall_window(64, 8, 63), 56..64);
    }

    #[test]
    fn stall_heatmap_shows_newest_columns_right_aligned() {
        let map = Heatmap {
            column_ms: 500,
            rows: vec![
                vec![0, 10, 40, 60, 100, 100],
                vec![5, 0, 0, 0, 0, 0],
                vec![100, 90, 30, 0, 20, 75],
            ],
        };
        let theme = Theme::colored();
        // Wide enough for every column: they hug the right edge.
        let mut buf = Buffer::empty(Rect::new(0, 0, 12, 3));
        render_stall(buf.area, &mut buf, &map, 1, &theme);
        let mut expected = Buffer::with_lines(["v0     ░▒▓██", "v1    ░     ", "v2    ██▒ ░▓"]);
        expected.set_style(Rect::new(0, 0, 2, 1), fg(Color::DarkGray));
        expected.set_style(
            Rect::new(0, 1, 2, 1),
            Style::new().add_modifier(Modifier::REVERSED),
        );
        expected.set_style(Rect::new(0, 2, 2, 1), fg(Color::DarkGray));
        let paint =
            |e: &mut Buffer, x: u16, y: u16, c: Color| e.set_style(Rect::new(x, y, 1, 1), fg(c));
        paint(&mut expected, 7, 0, Color::Blue);
        paint(&mut expected, 8, 0, Color::Green);
        paint(&mut expected, 9, 0, Color::Yellow);
        paint(&mut expected, 10, 0, Color::Red);
        paint(&mut expected, 11, 0, Color::Red);
        paint(&mut expected, 6, 1, Color::Blue);
        paint(&mut expected, 6, 2, Color::Red);
        paint(&mut expected, 7, 2, Color::Red);
        paint(&mut expected, 8, 2, Color::Green);
        paint(&mut expected, 10, 2, Color::Blue);
        paint(&mut expected, 11, 2, Color::Yellow);
        assert_eq!(buf, expected);

        // Narrow: only the newest three columns, and the window around the selection.
        let mut buf = Buffer::empty(Rect::new(0, 0, 6, 2));
        render_stall(buf.area, &mut buf, &map, 2, &theme);
        let mut expected = Buffer::with_lines(["v1    ", "v2  ░▓"]);
        expected.set_style(Rect::new(0, 0, 2, 1), fg(Color::DarkGray));
        expected.set_style(
            Rect::new(0, 1, 2, 1),
            Style::new().add_modifier(Modifier::REVERSED),
        );
        paint(&mut expected, 4, 1, Color::Blue);
        paint(&mut expected, 5, 1, Color::Yellow);
        assert_eq!(buf, expected);
    }

    #[test]
    fn fault_heatmap_merges_regions_and_scales_to_visible_max() {
        let map = Heatmap {
            column_ms: 500,
            rows: vec![vec![0, 1, 2], vec![0, 1, 2], vec![8, 0, 0], vec![0, 0, 4]],
        };
        let theme = Theme::colored();
        let mut buf = Buffer::empty(Rect::new(0, 0, 15, 2));
        render_faults(buf.area, &mut buf, &map, 0x100_0000, &theme);
        // Rows merge in pairs: [0, 2, 4] and [8, 0, 4]; the max is 8.
        let mut expected = Buffer::with_lines(["0x0          ░▒", "0x2000000   █ ▒"]);
        expected.set_style(Rect::new(0, 0, 3, 1), fg(Color::DarkGray));
        expected.set_style(Rect::new(0, 1, 9, 1), fg(Color::DarkGray));
        expected.set_style(Rect::new(13, 0, 1, 1), fg(Color::Blue));
        expected.set_style(Rect::new(14, 0, 1, 1), fg(Color::Green));
        expected.set_style(Rect::new(12, 1, 1, 1), fg(Color::Red));
        expected.set_style(Rect::new(14, 1, 1, 1), fg(Color::Green));
        assert_eq!(buf, expected);
    }
}
