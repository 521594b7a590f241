//! The help overlay: every key, in a centered popup.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::widgets::{Clear, Widget};

use super::{pane, text};
use crate::tui::theme::Theme;

pub const KEYS: &[(&str, &str)] = &[
    ("q  Ctrl-C", "quit"),
    ("Tab  Shift-Tab", "next / previous pane"),
    ("↑ ↓  j k", "select vCPU; move the map cursor"),
    ("PgUp PgDn Home End", "page / first / last vCPU"),
    ("← →  h l", "move the map cursor"),
    ("Enter", "vCPU detail; inject the map cell"),
    ("Esc", "close detail, help or prompt"),
    ("space", "freeze / unfreeze the display"),
    ("+ =  -", "throttle one step up / down"),
    ("t", "type a throttle (40MiB/s, unlimited)"),
    ("i", "type a range to inject (0x10000000+64M)"),
    ("p", "pause / resume the background push"),
    ("f", "prefetch: off, 16 pages, adaptive"),
    ("n", "take the link to the source down / up"),
    ("r", "migrate the guest again"),
    ("?", "this help"),
    ("mouse", "click a map cell to move the cursor"),
];

const KEY_W: u16 = 20;

/// The popup's area: the list's size, centered, clipped to `area`.
pub fn popup_area(area: Rect, extra: &[(String, String)]) -> Rect {
    let desc_w = KEYS
        .iter()
        .map(|(_, d)| d.chars().count())
        .chain(extra.iter().map(|(_, d)| d.chars().count()))
        .max()
        .unwrap_or(0) as u16;
    let w = (KEY_W + desc_w + 4).min(area.width);
    let h = ((KEYS.len() + extra.len()) as u16 + 2).min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// `extra` are the keys of the snapshot source (a replay's), listed first.
pub fn render(area: Rect, buf: &mut Buffer, extra: &[(String, String)], theme: &Theme) {
    let area = popup_area(area.intersection(buf.area), extra);
    if area.is_empty() {
        return;
    }
    Clear.render(area, buf);
    let inner = pane(buf, area, "keys  (? or Esc closes)", true, theme);
    let keys = extra
        .iter()
        .map(|(k, d)| (k.as_str(), d.as_str()))
        .chain(KEYS.iter().copied());
    for (y, (k, d)) in (inner.y..inner.bottom()).zip(keys) {
        text(buf, inner, inner.x + 1, y, k, theme.key());
        text(buf, inner, inner.x + 1 + KEY_W, y, d, theme.text());
    }
}
