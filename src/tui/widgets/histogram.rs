//! The latency histogram: one horizontal bar per log-2 bucket, from the fastest to the
//! slowest bucket that has faults.

use std::fmt::Write;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;

use super::format::{BucketLabel, Count};
use super::{put, text, text_right};
use crate::contract::LatencyBuckets;
use crate::tui::theme::Theme;

/// Partial blocks by eighths, for bar ends.
const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
const LABEL_W: u16 = 6;

pub struct HistogramView<'a> {
    pub buckets: &'a LatencyBuckets,
    pub theme: &'a Theme,
}

impl HistogramView<'_> {
    pub fn render(&self, area: Rect, buf: &mut Buffer) {
        let area = area.intersection(buf.area);
        if area.is_empty() {
            return;
        }
        let counts = &self.buckets.counts;
        let (Some(first), Some(last)) = (
            counts.iter().position(|&c| c > 0),
            counts.iter().rposition(|&c| c > 0),
        ) else {
            text(buf, area, area.x, area.y, "no faults yet", self.theme.dim());
            return;
        };
        // Adjacent buckets merge when the rows do not fit; the label is the lower bound.
        let n = last - first + 1;
        let per = n.div_ceil(usize::from(area.height));
        let merged = |row: usize| -> u64 {
            let s = first + row * per;
            counts[s..(s + per).min(last + 1)].iter().sum()
        };
        let rows = n.div_ceil(per);
        let max = (0..rows).map(merged).max().unwrap_or(0).max(1);
        let mut s = String::new();
        let _ = write!(s, "{}", Count(max));
        let count_w = s.len() as u16 + 1;
        let bar_w = area.width.saturating_sub(LABEL_W + count_w);
        for (y, row) in (area.y..area.bottom()).zip(0..rows) {
            let v = merged(row);
            s.clear();
            let _ = write!(s, "{}", BucketLabel(first + row * per));
            text(buf, area, area.x, y, &s, self.theme.label());
            let eighths = (u128::from(v) * u128::from(bar_w) * 8 / u128::from(max)) as u16;
            let x0 = area.x + LABEL_W;
            for i in 0..eighths / 8 {
                put(buf, x0 + i, y, '█', self.theme.bar());
            }
            if !eighths.is_multiple_of(8) {
                put(
                    buf,
                    x0 + eighths / 8,
                    y,
                    EIGHTHS[usize::from(eighths % 8)],
                    self.theme.bar(),
                );
            }
            s.clear();
            let _ = write!(s, "{}", Count(v));
            if area.width >= LABEL_W + count_w {
                text_right(buf, area, y, &s, self.theme.text());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::style::{Color, Style};

    use super::*;

    #[test]
    fn bars_from_first_to_last_bucket_with_faults() {
        let mut buckets = LatencyBuckets::empty();
        buckets.counts[3] = 4;
        buckets.counts[4] = 8;
        buckets.counts[6] = 3;
        let theme = Theme::colored();
        let mut buf = Buffer::empty(Rect::new(0, 0, 20, 5));
        HistogramView {
            buckets: &buckets,
            theme: &theme,
        }
        .render(buf.area, &mut buf);
        let mut expected = Buffer::with_lines([
            "8us   ██████       4",
            "16us  ████████████ 8",
            "32us               0",
            "64us  ████▌        3",
            "                    ",
        ]);
        let gray = Style::new().fg(Color::Gray);
        let cyan = Style::new().fg(Color::Cyan);
        expected.set_style(Rect::new(0, 0, 3, 1), gray);
        expected.set_style(Rect::new(0, 1, 4, 2), gray);
        expected.set_style(Rect::new(0, 3, 4, 1), gray);
        expected.set_style(Rect::new(6, 0, 6, 1), cyan);
        expected.set_style(Rect::new(6, 1, 12, 1), cyan);
        expected.set_style(Rect::new(6, 3, 5, 1), cyan);
        assert_eq!(buf, expected);
    }

    #[test]
    fn merges_buckets_when_short_and_says_when_empty() {
        let mut buckets = LatencyBuckets::empty();
        for (i, c) in buckets.counts.iter_mut().enumerate() {
            *c = i as u64;
        }
        let theme = Theme::plain();
        let mut buf = Buffer::empty(Rect::new(0, 0, 16, 3));
        HistogramView {
            buckets: &buckets,
            theme: &theme,
        }
        .render(buf.area, &mut buf);
        // Buckets 1..=20 in rows of 7: sums 28, 77, 105.
        assert_eq!(
            buf,
            Buffer::with_lines(["2us   █▌      28", "256us ████▍   77", "32ms  ██████ 105"])
        );
        let mut buf = Buffer::empty(Rect::new(0, 0, 16, 1));
        HistogramView {
            buckets: &LatencyBuckets::empty(),
            theme: &theme,
        }
        .render(buf.area, &mut buf);
        assert_eq!(buf, Buffer::with_lines(["no faults yet   "]));
    }
}
