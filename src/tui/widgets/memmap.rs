//! The memory map: the snapshot's equal regions merged to fit the area, each shaded by the
//! state most of its pages are in.

use std::fmt::Write;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;

use super::format::ShortSize;
use super::{put, text};
use crate::contract::{MapCell, MemoryMap};
use crate::tui::theme::{MapState, Theme};
use crate::units::Bytes;

/// Where the last map was drawn and how cells were merged, so keys and clicks can address
/// the displayed cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapGeometry {
    /// The area of the cells themselves (labels and legend excluded).
    pub grid: Rect,
    pub cols: u16,
    /// Snapshot cells per displayed cell.
    pub per: usize,
    /// Displayed cells.
    pub count: usize,
}

impl MapGeometry {
    /// The smallest power-of-two merge whose cells fit `grid`, in power-of-two columns so
    /// that each row starts at a round address.
    pub fn fit(cells: usize, grid: Rect) -> Option<MapGeometry> {
        if cells == 0 || grid.width == 0 || grid.height == 0 {
            return None;
        }
        let max_cols = 1usize << (usize::from(grid.width).ilog2());
        let mut per = 1usize;
        loop {
            let count = cells.div_ceil(per);
            let cols = count.min(max_cols);
            if count.div_ceil(cols) <= usize::from(grid.height) {
                let cols = u16::try_from(cols).ok()?;
                return Some(MapGeometry {
                    grid,
                    cols,
                    per,
                    count,
                });
            }
            per *= 2;
        }
    }

    pub fn rows(&self) -> u16 {
        self.count.div_ceil(usize::from(self.cols).max(1)) as u16
    }

    /// The displayed cell at a screen position, if any.
    pub fn cell_at(&self, x: u16, y: u16) -> Option<usize> {
        if !self.grid.contains((x, y).into()) {
            return None;
        }
        let (c, r) = (x - self.grid.x, y - self.grid.y);
        if c >= self.cols {
            return None;
        }
        let i = usize::from(r) * usize::from(self.cols) + usize::from(c);
        (i < self.count).then_some(i)
    }

    /// The snapshot cells behind displayed cell `i`.
    pub fn sources(&self, i: usize, cells: usize) -> std::ops::Range<usize> {
        let start = (i * self.per).min(cells);
        start..(start + self.per).min(cells)
    }
}

/// The state a (merged) cell is drawn as: its most common state, missing pages that were
/// injected shown as injected.
pub fn state_of(c: &MapCell) -> MapState {
    if c.total() == 0 {
        return MapState::Empty;
    }
    // Ties go to the state that matters most to an operator waiting on memory.
    let ranked = [
        (c.in_flight, MapState::InFlight),
        (c.missing, MapState::Missing),
        (c.demand, MapState::Demand),
        (c.prefetched, MapState::Prefetched),
        (c.pushed, MapState::Pushed),
        (c.boot, MapState::Boot),
    ];
    let mut best = ranked[0];
    for r in &ranked[1..] {
        if r.0 > best.0 {
            best = *r;
        }
    }
    if best.1 == MapState::Missing && c.injected > 0 {
        MapState::Injected
    } else {
        best.1
    }
}

/// The sum of snapshot cells `range`.
pub fn merged(cells: &[MapCell], range: std::ops::Range<usize>) -> MapCell {
    let mut m = MapCell::default();
    for c in cells.get(range).unwrap_or(&[]) {
        m.merge(c);
    }
    m
}

/// The byte range of displayed cell `i`, clipped to RAM.
pub fn cell_bytes(map: &MemoryMap, g: &MapGeometry, i: usize, mem_bytes: u64) -> (u64, u64) {
    let r = g.sources(i, map.cells.len());
    let start = (r.start as u64 * map.region_bytes).min(mem_bytes);
    let end = (r.end as u64 * map.region_bytes).min(mem_bytes);
    (start, end)
}

/// Columns of the widest row label (`896M`) plus a space.
fn label_width(g: &MapGeometry, region_bytes: u64, scratch: &mut String) -> u16 {
    let row_bytes = usize::from(g.cols) as u64 * g.per as u64 * region_bytes;
    let mut w = 0;
    for r in 0..u64::from(g.rows()) {
        scratch.clear();
        let _ = write!(scratch, "{}", ShortSize(r * row_bytes));
        w = w.max(scratch.len() as u16);
    }
    w + 1
}

const LEGEND_LONG: [(MapState, &str); 6] = [
    (MapState::Missing, "missing"),
    (MapState::InFlight, "in flight"),
    (MapState::Demand, "demand"),
    (MapState::Pushed, "pushed"),
    (MapState::Boot, "boot"),
    (MapState::Injected, "injected"),
];
const LEGEND_SHORT: [&str; 6] = ["miss", "fly", "dem", "push", "boot", "inj"];

pub struct MemoryMapView<'a> {
    pub map: &'a MemoryMap,
    pub mem_bytes: u64,
    /// Snapshot cell the cursor is on (kept in snapshot cells so it survives resizes); the
    /// cursor is drawn only when the map has focus.
    pub cursor_source: usize,
    pub focused: bool,
    pub theme: &'a Theme,
}

impl MemoryMapView<'_> {
    /// Draws the map, a cursor line when focused and room allows, and the legend; returns
    /// the geometry used.
    pub fn render(&self, area: Rect, buf: &mut Buffer) -> Option<MapGeometry> {
        let area = area.intersection(buf.area);
        if area.height == 0 || area.width == 0 {
            return None;
        }
        let info = self.focused && area.height >= 4;
        let text_rows = if info { 2 } else { u16::from(area.height >= 2) };
        let grid_h = area.height - text_rows;
        let mut g = MapGeometry::fit(
            self.map.cells.len(),
            Rect {
                height: grid_h,
                ..area
            },
        )?;
        let mut label = String::new();
        // Row labels (sizes the inject prompt reads back) only where they cost no column.
        let lw = label_width(&g, self.map.region_bytes, &mut label);
        let lw = if area.width >= lw + g.cols { lw } else { 0 };
        g.grid.x += lw;
        g.grid.width -= lw;
        let grid = g.grid;
        let cells = &self.map.cells;
        let cursor = self
            .focused
            .then(|| (self.cursor_source / g.per).min(g.count.saturating_sub(1)));
        for i in 0..g.count {
            let (c, r) = (
                (i % usize::from(g.cols)) as u16,
                (i / usize::from(g.cols)) as u16,
            );
            let (x, y) = (grid.x + c, grid.y + r);
            if c == 0 && lw > 0 {
                label.clear();
                let gpa = (i * g.per) as u64 * self.map.region_bytes;
                let _ = write!(label, "{}", ShortSize(gpa));
                text(buf, area, area.x, y, &label, self.theme.dim());
            }
            let (ch, mut style) = self
                .theme
                .map(state_of(&merged(cells, g.sources(i, cells.len()))));
            if cursor == Some(i) {
                style = style.patch(self.theme.cursor());
            }
            put(buf, x, y, ch, style);
        }
        let mut y = area.y + grid_h;
        if info && let Some(i) = cursor {
            self.cursor_line(buf, area, y, &g, i);
            y += 1;
        }
        if text_rows > 0 {
            self.legend(buf, area, y);
        }
        Some(g)
    }

    fn cursor_line(&self, buf: &mut Buffer, area: Rect, y: u16, g: &MapGeometry, i: usize) {
        let (start, end) = cell_bytes(self.map, g, i, self.mem_bytes);
        let c = merged(&self.map.cells, g.sources(i, self.map.cells.len()));
        let mut s = String::new();
        let _ = write!(
            s,
            "▸ {start:#x}+{}  miss {} fly {} dem {} push {}",
            Bytes(end - start),
            c.missing,
            c.in_flight,
            c.demand,
            c.pushed
        );
        if c.boot > 0 {
            let _ = write!(s, " boot {}", c.boot);
        }
        if c.prefetched > 0 {
            let _ = write!(s, " pre {}", c.prefetched);
        }
        if c.injected > 0 {
            let _ = write!(s, " inj {}", c.injected);
        }
        text(buf, area, area.x, y, &s, self.theme.text());
    }

    fn legend(&self, buf: &mut Buffer, area: Rect, y: u16) {
        // Prefetched pages get a key only once there are any.
        let prefetched = self.map.cells.iter().any(|c| c.prefetched > 0);
        let entries = LEGEND_LONG
            .iter()
            .zip(LEGEND_SHORT)
            .map(|(&(state, long), short)| (state, long, short))
            .chain(prefetched.then_some((MapState::Prefetched, "prefetched", "pre")));
        let long: usize = entries.clone().map(|(_, n, _)| n.chars().count() + 3).sum();
        let use_long = usize::from(area.width) >= long;
        let mut x = area.x;
        for (state, long, short) in entries {
            let (ch, style) = self.theme.map(state);
            put(buf, x, y, ch, style);
            let name = if use_long { long } else { short };
            x = text(buf, area, x + 1, y, name, self.theme.dim()) + 1;
            if x >= area.right() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::style::{Color, Modifier, Style};

    use super::*;

    fn cell(missing: u32, demand: u32, pushed: u32, boot: u32, injected: u32) -> MapCell {
        MapCell {
            missing,
            demand,
            pushed,
            boot,
            injected,
            in_flight: 0,
            prefetched: 0,
        }
    }

    #[test]
    fn fit_merges_to_powers_of_two() {
        let g = MapGeometry::fit(512, Rect::new(0, 0, 40, 8)).unwrap();
        assert_eq!((g.cols, g.per, g.count, g.rows()), (32, 2, 256, 8));
        let g = MapGeometry::fit(512, Rect::new(0, 0, 70, 20)).unwrap();
        assert_eq!((g.cols, g.per, g.count, g.rows()), (64, 1, 512, 8));
        let g = MapGeometry::fit(512, Rect::new(0, 0, 1, 1)).unwrap();
        assert_eq!((g.cols, g.per, g.count), (1, 512, 1));
        assert!(MapGeometry::fit(512, Rect::new(0, 0, 0, 3)).is_none());
    }

    #[test]
    fn clicks_map_to_cells() {
        let g = MapGeometry::fit(512, Rect::new(10, 5, 40, 8)).unwrap();
        assert_eq!(g.cell_at(10, 5), Some(0));
        assert_eq!(g.cell_at(12, 6), Some(34));
        assert_eq!(g.cell_at(42, 6), None);
        assert_eq!(g.cell_at(9, 5), None);
        assert_eq!(g.sources(34, 512), 68..70);
    }

    #[test]
    fn dominant_state() {
        assert_eq!(state_of(&cell(3, 1, 0, 0, 0)), MapState::Missing);
        assert_eq!(state_of(&cell(3, 1, 0, 0, 2)), MapState::Injected);
        assert_eq!(state_of(&cell(1, 3, 0, 0, 2)), MapState::Demand);
        assert_eq!(state_of(&cell(0, 2, 2, 0, 0)), MapState::Demand);
        assert_eq!(state_of(&cell(0, 0, 0, 4, 0)), MapState::Boot);
        assert_eq!(state_of(&MapCell::default()), MapState::Empty);
    }

    #[test]
    fn renders_cells_labels_cursor_and_legend() {
        // 32 regions of 256 KiB: boot, then one of each state, the rest missing.
        let mut cells = vec![cell(64, 0, 0, 0, 0); 32];
        for c in &mut cells[..8] {
            *c = cell(0, 0, 0, 64, 0);
        }
        cells[8] = cell(0, 50, 14, 0, 0);
        cells[9] = cell(0, 4, 60, 0, 0);
        cells[10] = MapCell {
            in_flight: 60,
            ..cell(4, 0, 0, 0, 0)
        };
        cells[11] = cell(50, 14, 0, 0, 50);
        cells[20] = cell(10, 54, 0, 0, 0);
        let map = MemoryMap {
            region_bytes: 256 << 10,
            cells,
        };
        let theme = Theme::colored();
        let view = MemoryMapView {
            map: &map,
            mem_bytes: 8 << 20,
            cursor_source: 11,
            focused: true,
            theme: &theme,
        };
        let mut buf = Buffer::empty(Rect::new(0, 0, 25, 4));
        let g = view.render(buf.area, &mut buf).unwrap();
        assert_eq!(
            (g.grid, g.cols, g.per, g.count),
            (Rect::new(3, 0, 22, 2), 16, 1, 32)
        );
        let mut expected = Buffer::with_lines([
            "0  ########█▓▒×░░░░      ",
            "4M ░░░░█░░░░░░░░░░░      ",
            "▸ 0x2c0000+256.0 KiB  mis",
            "░miss ▒fly █dem ▓push #bo",
        ]);
        let dim = Style::new().fg(Color::DarkGray);
        let boot = Style::new().fg(Color::Magenta);
        let demand = Style::new().fg(Color::Cyan);
        let pushed = Style::new().fg(Color::Green);
        let fly = Style::new().fg(Color::Yellow);
        expected.set_style(Rect::new(0, 0, 1, 1), dim);
        expected.set_style(Rect::new(0, 1, 2, 1), dim);
        expected.set_style(Rect::new(3, 0, 8, 1), boot);
        expected.set_style(Rect::new(11, 0, 1, 1), demand);
        expected.set_style(Rect::new(12, 0, 1, 1), pushed);
        expected.set_style(Rect::new(13, 0, 1, 1), fly);
        let cursor = Style::new()
            .fg(Color::White)
            .add_modifier(Modifier::BOLD | Modifier::REVERSED);
        expected.set_style(Rect::new(14, 0, 1, 1), cursor);
        expected.set_style(Rect::new(15, 0, 4, 1), dim);
        expected.set_style(Rect::new(3, 1, 16, 1), dim);
        expected.set_style(Rect::new(7, 1, 1, 1), demand);
        // Legend: each glyph in its state's style, names dimmed, gaps plain.
        for (x, glyph, name_len) in [
            (0, dim, 4),
            (6, fly, 3),
            (11, demand, 3),
            (16, pushed, 4),
            (22, boot, 2),
        ] {
            expected.set_style(Rect::new(x, 3, 1, 1), glyph);
            expected.set_style(Rect::new(x + 1, 3, name_len, 1), dim);
        }
        assert_eq!(buf, expected);
    }

    #[test]
    fn tiny_areas_do_not_panic() {
        let map = MemoryMap {
            region_bytes: 1 << 20,
            cells: vec![cell(256, 0, 0, 0, 0); 512],
        };
        let theme = Theme::plain();
        for (w, h) in [(0, 0), (1, 1), (3, 1), (20, 2), (5, 9)] {
            let mut buf = Buffer::empty(Rect::new(2, 1, w, h));
            let view = MemoryMapView {
                map: &map,
                mem_bytes: 512 << 20,
                cursor_source: 511,
                focused: true,
                theme: &theme,
            };
            view.render(Rect::new(2, 1, w + 4, h + 4), &mut buf);
        }
    }
}
