//! Page-fill progress: a gauge split into boot, demand-filled, prefetched and pushed pages,
//! and a line of counts, rate and ETA.

use std::fmt::Write;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;

use super::format::whole_secs;
use super::{put, text};
use crate::contract::PageCounts;
use crate::tui::theme::{MapState, Theme};
use crate::units::Rate;

pub struct FillView<'a> {
    /// Whether the page counts are known at all (a QEMU feed without its source's QMP).
    pub known: bool,
    pub pages: &'a PageCounts,
    pub pages_per_sec: f64,
    pub page_size: u64,
    pub eta_ms: Option<u64>,
    pub theme: &'a Theme,
}

impl FillView<'_> {
    pub fn render(&self, area: Rect, buf: &mut Buffer) {
        let area = area.intersection(buf.area);
        if area.is_empty() {
            return;
        }
        if !self.known {
            let msg = "page fill not known: QEMU's source says it (attach --source-qmp)";
            super::text(buf, area, area.x, area.y, msg, self.theme.dim());
            return;
        }
        let p = self.pages;
        let filled = p.boot + p.demand + p.prefetched + p.pushed;
        let pct = if p.total == 0 {
            0.0
        } else {
            filled as f64 * 100.0 / p.total as f64
        };
        let mut s = String::new();
        let _ = write!(s, " {pct:5.1}%");
        let bar_w = area.width.saturating_sub(s.len() as u16);
        // Segment ends from cumulative counts, so rounding never leaves a gap.
        let parts = [
            (p.boot, MapState::Boot),
            (p.demand, MapState::Demand),
            (p.prefetched, MapState::Prefetched),
            (p.pushed, MapState::Pushed),
        ];
        let total = p.total.max(1);
        let (mut cum, mut x) = (0u64, 0u16);
        for (n, state) in parts {
            cum += n;
            let end = (u128::from(cum.min(total)) * u128::from(bar_w) / u128::from(total)) as u16;
            let (ch, style) = self.theme.map(state);
            while x < end {
                put(buf, area.x + x, area.y, ch, style);
                x += 1;
            }
        }
        let (ch, style) = self.theme.map(MapState::Missing);
        while x < bar_w {
            put(buf, area.x + x, area.y, ch, style);
            x += 1;
        }
        text(buf, area, area.x + bar_w, area.y, &s, self.theme.value());
        if area.height < 2 {
            return;
        }
        s.clear();
        // Most wanted first: the line is cut at the right on narrow terminals.
        if p.missing == 0 && p.in_flight == 0 && p.total > 0 {
            s.push_str("all filled");
        } else if let Some(eta) = self.eta_ms {
            let _ = write!(s, "ETA {}", whole_secs(eta));
        } else {
            s.push_str("ETA -");
        }
        let _ = write!(
            s,
            " · {:.0} pages/s ({}) · demand {}",
            self.pages_per_sec,
            Rate::BytesPerSec((self.pages_per_sec.max(0.0) * self.page_size as f64) as u64),
            p.demand,
        );
        if p.prefetched > 0 {
            let _ = write!(s, " · prefetched {}", p.prefetched);
        }
        let _ = write!(
            s,
            " · pushed {} · missing {} · in flight {}",
            p.pushed, p.missing, p.in_flight,
        );
        text(buf, area, area.x, area.y + 1, &s, self.theme.text());
    }
}

#[cfg(test)]
mod tests {
    use ratatui::style::{Color, Modifier, Style};

    use super::*;

    #[test]
    fn gauge_splits_demand_and_pushed() {
        let pages = PageCounts {
            total: 100,
            boot: 10,
            demand: 20,
            pushed: 30,
            missing: 38,
            in_flight: 2,
            injected: 0,
            prefetched: 0,
        };
        let theme = Theme::colored();
        let mut buf = Buffer::empty(Rect::new(0, 0, 27, 2));
        FillView {
            known: true,
            pages: &pages,
            pages_per_sec: 256.0,
            page_size: 4096,
            eta_ms: Some(61_000),
            theme: &theme,
        }
        .render(buf.area, &mut buf);
        let mut expected =
            Buffer::with_lines(["##████▓▓▓▓▓▓░░░░░░░░  60.0%", "ETA 1m 1s · 256 pages/s (1."]);
        expected.set_style(Rect::new(0, 0, 2, 1), Style::new().fg(Color::Magenta));
        expected.set_style(Rect::new(2, 0, 4, 1), Style::new().fg(Color::Cyan));
        expected.set_style(Rect::new(6, 0, 6, 1), Style::new().fg(Color::Green));
        expected.set_style(Rect::new(12, 0, 8, 1), Style::new().fg(Color::DarkGray));
        expected.set_style(
            Rect::new(20, 0, 7, 1),
            Style::new().add_modifier(Modifier::BOLD),
        );
        assert_eq!(buf, expected);
    }
}
