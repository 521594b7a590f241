//! The panes of the TUI, each drawn from borrowed snapshot data into a buffer area.

pub mod clocks;
pub mod detail;
pub mod fill;
pub mod format;
pub mod header;
pub mod heatmap;
pub mod help;
pub mod histogram;
pub mod memmap;
pub mod status;
pub mod vcpus;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::Line;
use ratatui::widgets::{Block, Widget};

use super::theme::Theme;

/// Sets one cell if it lies in the buffer; drawing never panics on small terminals.
pub fn put(buf: &mut Buffer, x: u16, y: u16, ch: char, style: Style) {
    if let Some(c) = buf.cell_mut((x, y)) {
        c.set_char(ch).set_style(style);
    }
}

/// Writes `s` at (x, y), clipped to `area`; returns the column after the last one written.
pub fn text(buf: &mut Buffer, area: Rect, x: u16, y: u16, s: &str, style: Style) -> u16 {
    let area = area.intersection(buf.area);
    if y < area.top() || y >= area.bottom() || x < area.left() || x >= area.right() {
        return x;
    }
    buf.set_stringn(x, y, s, usize::from(area.right() - x), style)
        .0
}

/// Writes `s` so that it ends at the right edge of `area` on row `y`.
pub fn text_right(buf: &mut Buffer, area: Rect, y: u16, s: &str, style: Style) {
    let w = s.chars().count() as u16;
    let x = area.right().saturating_sub(w).max(area.left());
    text(buf, area, x, y, s, style);
}

/// A bordered pane with a title; returns the area inside the border.
pub fn pane(buf: &mut Buffer, area: Rect, title: &str, focused: bool, theme: &Theme) -> Rect {
    let area = area.intersection(buf.area);
    let border = if focused {
        theme.border_focus()
    } else {
        theme.border()
    };
    let block = Block::bordered()
        .border_style(border)
        .title(Line::styled(format!(" {title} "), theme.title()));
    let inner = block.inner(area);
    block.render(area, buf);
    inner
}
