//! The vCPU table: one row per vCPU with its state, faults, stall share, latencies, guest
//! progress against its baseline and a fault sparkline; columns drop by priority when narrow.

use std::fmt::Write;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;

use super::format::{Count, Micros};
use super::{put, text};
use crate::contract::{Activity, VcpuSnapshot};
use crate::tui::theme::Theme;

const SPARK: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
const SPARK_MIN_W: u16 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Id,
    State,
    Faults,
    Rate,
    Stall,
    P50,
    P99,
    Max,
    Progress,
    Spark,
}

impl Col {
    /// Display order.
    const ALL: [Col; 10] = [
        Col::Id,
        Col::State,
        Col::Faults,
        Col::Rate,
        Col::Stall,
        Col::P50,
        Col::P99,
        Col::Max,
        Col::Progress,
        Col::Spark,
    ];
    /// The order columns are kept in when the table is narrow.
    const PRIORITY: [Col; 10] = [
        Col::Id,
        Col::State,
        Col::Stall,
        Col::Faults,
        Col::P99,
        Col::Progress,
        Col::Spark,
        Col::Rate,
        Col::Max,
        Col::P50,
    ];

    fn heading(self) -> &'static str {
        match self {
            Col::Id => "vcpu",
            Col::State => "state",
            Col::Faults => "faults",
            Col::Rate => "f/s",
            Col::Stall => "stall",
            Col::P50 => "p50",
            Col::P99 => "p99",
            Col::Max => "max",
            Col::Progress => "prog",
            Col::Spark => "fault history",
        }
    }

    /// Width including the one-column gap after it (the sparkline's is its minimum).
    fn width(self) -> u16 {
        match self {
            Col::Id => 5,
            Col::State => 26,
            Col::Faults => 8,
            Col::Rate | Col::P50 | Col::P99 | Col::Max => 7,
            Col::Stall | Col::Progress => 6,
            Col::Spark => SPARK_MIN_W,
        }
    }

    fn right_aligned(self) -> bool {
        !matches!(self, Col::Id | Col::State | Col::Spark)
    }
}

/// The columns that fit `width`, in display order, with their widths.
fn columns(width: u16) -> Vec<(Col, u16)> {
    let mut keep = [false; Col::ALL.len()];
    let mut used = 0u16;
    for c in Col::PRIORITY {
        if used + c.width() <= width {
            used += c.width();
            keep[Col::ALL.iter().position(|&a| a == c).unwrap_or(0)] = true;
        }
    }
    Col::ALL
        .iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(&c, _)| {
            let w = if c == Col::Spark {
                c.width() + (width - used)
            } else {
                c.width()
            };
            (c, w)
        })
        .collect()
}

/// The first row shown: moves as little as possible to keep `selected` visible.
pub fn scroll_offset(prev: usize, selected: usize, visible: usize, len: usize) -> usize {
    let visible = visible.max(1);
    let mut off = prev.min(len.saturating_sub(visible));
    if selected < off {
        off = selected;
    } else if selected >= off + visible {
        off = selected + 1 - visible;
    }
    off
}

pub struct VcpuTable<'a> {
    pub vcpus: &'a [VcpuSnapshot],
    pub selected: usize,
    /// First row shown (see [`scroll_offset`]).
    pub offset: usize,
    pub theme: &'a Theme,
}

impl VcpuTable<'_> {
    pub fn render(&self, area: Rect, buf: &mut Buffer) {
        let area = area.intersection(buf.area);
        if area.is_empty() {
            return;
        }
        let cols = columns(area.width);
        let mut x = area.x;
        for &(c, w) in &cols {
            let h = c.heading();
            let hx = if c.right_aligned() {
                x + (w - 1).saturating_sub(h.len() as u16)
            } else {
                x
            };
            text(buf, area, hx, area.y, h, self.theme.heading());
            x += w;
        }
        // One scale for every sparkline so rows compare.
        let spark_max = self
            .vcpus
            .iter()
            .flat_map(|v| v.sparkline.iter().copied())
            .max()
            .unwrap_or(0);
        let mut s = String::new();
        let rows = (area.y + 1..area.bottom()).zip(self.vcpus.iter().enumerate().skip(self.offset));
        for (y, (i, v)) in rows {
            let mut x = area.x;
            for &(c, w) in &cols {
                s.clear();
                let style = self.cell(c, v, &mut s);
                if c == Col::Spark {
                    self.sparkline(buf, x, y, w, &v.sparkline, spark_max);
                } else if c.right_aligned() {
                    let sx = x + (w - 1).saturating_sub(s.chars().count() as u16);
                    text(buf, Rect::new(x, y, w - 1, 1), sx, y, &s, style);
                } else {
                    text(buf, Rect::new(x, y, w - 1, 1), x, y, &s, style);
                }
                x += w;
            }
            if i == self.selected {
                buf.set_style(Rect::new(area.x, y, area.width, 1), self.theme.selected());
            }
        }
    }

    /// Writes column `c` of `v` into `s`; returns its style.
    fn cell(&self, c: Col, v: &VcpuSnapshot, s: &mut String) -> Style {
        let t = self.theme;
        match c {
            Col::Id => {
                let _ = write!(s, "v{}", v.id);
                t.value()
            }
            Col::State => match v.activity {
                Activity::Running => {
                    s.push_str("running");
                    t.good()
                }
                Activity::Stalled { gpa, for_us } => {
                    let _ = write!(s, "stalled {gpa:#x} {}", Micros(for_us));
                    if for_us >= 100_000 {
                        t.error()
                    } else {
                        t.warn()
                    }
                }
                Activity::Paused => {
                    s.push_str("paused");
                    t.dim()
                }
                Activity::Done => {
                    s.push_str("done");
                    t.dim()
                }
                Activity::Failed => {
                    s.push_str("failed");
                    t.error()
                }
            },
            Col::Faults => {
                let _ = write!(s, "{}", Count(v.faults));
                t.text()
            }
            Col::Rate => {
                let _ = write!(s, "{}", Count(v.faults_per_sec.max(0.0).round() as u64));
                t.text()
            }
            Col::Stall => {
                let _ = write!(s, "{:.0}%", (v.stall_share * 100.0).clamp(0.0, 100.0));
                t.stall(v.stall_share)
            }
            Col::P50 | Col::P99 | Col::Max => {
                let us = match c {
                    Col::P50 => v.latency.p50_us,
                    Col::P99 => v.latency.p99_us,
                    _ => v.latency.max_us,
                };
                let _ = write!(s, "{}", Micros(us));
                t.text()
            }
            Col::Progress => {
                if v.baseline_per_sec > 0.0 {
                    let pct = v.progress_per_sec / v.baseline_per_sec * 100.0;
                    let _ = write!(s, "{:.0}%", pct.clamp(0.0, 999.0));
                    t.stall(1.0 - pct / 100.0)
                } else {
                    s.push('-');
                    t.dim()
                }
            }
            Col::Spark => t.sparkline(),
        }
    }

    /// The newest points that fit, one column each, right-aligned, on the shared scale.
    fn sparkline(&self, buf: &mut Buffer, x: u16, y: u16, w: u16, points: &[u32], max: u32) {
        let shown = points.len().min(usize::from(w));
        let x = x + w - shown as u16;
        for (i, &p) in points[points.len() - shown..].iter().enumerate() {
            let level = if max == 0 {
                0
            } else {
                (u64::from(p) * 8).div_ceil(u64::from(max)) as usize
            };
            put(
                buf,
                x + i as u16,
                y,
                SPARK[level.min(8)],
                self.theme.sparkline(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::style::{Color, Modifier};

    use super::*;
    use crate::contract::{Latency, LatencyBuckets};

    fn vcpu(id: usize, activity: Activity, stall_share: f64, sparkline: Vec<u32>) -> VcpuSnapshot {
        VcpuSnapshot {
            id,
            activity,
            faults: 1200 * id as u64 + 7,
            faults_per_sec: 40.0,
            stall_share,
            stall_ms: 0.0,
            latency: Latency {
                p50_us: 180,
                p99_us: 2_400,
                max_us: 31_000,
            },
            progress_per_sec: 500.0,
            baseline_per_sec: 1000.0,
            sparkline,
            histogram: LatencyBuckets::empty(),
            top_regions: vec![],
        }
    }

    #[test]
    fn columns_drop_by_priority() {
        let names = |w| {
            columns(w)
                .iter()
                .map(|(c, _)| c.heading())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(40), ["vcpu", "state", "stall"]);
        assert_eq!(
            names(78),
            [
                "vcpu",
                "state",
                "faults",
                "f/s",
                "stall",
                "p99",
                "prog",
                "fault history"
            ]
        );
        assert_eq!(columns(78).last(), Some(&(Col::Spark, 13)));
        assert_eq!(names(120).len(), 10);
    }

    #[test]
    fn scrolling_keeps_the_selection_visible() {
        assert_eq!(scroll_offset(0, 3, 5, 64), 0);
        assert_eq!(scroll_offset(0, 5, 5, 64), 1);
        assert_eq!(scroll_offset(10, 4, 5, 64), 4);
        assert_eq!(scroll_offset(60, 63, 5, 64), 59);
        assert_eq!(scroll_offset(0, 63, 5, 64), 59);
        assert_eq!(scroll_offset(3, 0, 10, 4), 0);
    }

    #[test]
    fn renders_rows_with_state_styles_and_selection() {
        let vcpus = [
            vcpu(0, Activity::Running, 0.0, vec![0, 1, 2, 4, 8]),
            vcpu(
                1,
                Activity::Stalled {
                    gpa: 0x1234000,
                    for_us: 3_200,
                },
                0.62,
                vec![8, 8, 0, 0, 1],
            ),
            vcpu(2, Activity::Done, 0.15, vec![]),
        ];
        let theme = Theme::colored();
        let mut buf = Buffer::empty(Rect::new(0, 0, 70, 4));
        VcpuTable {
            vcpus: &vcpus,
            selected: 1,
            offset: 0,
            theme: &theme,
        }
        .render(buf.area, &mut buf);
        let mut expected = Buffer::with_lines([
            "vcpu state                      faults stall    p99  prog fault histor",
            "v0   running                         7    0%  2.4ms   50%         ▁▂▄█",
            "v1   stalled 0x1234000 3.2ms      1207   62%  2.4ms   50%        ██  ▁",
            "v2   done                         2407   15%  2.4ms   50%             ",
        ]);
        let heading = Style::new().fg(Color::Gray).add_modifier(Modifier::BOLD);
        for (x, w) in [(0, 4), (5, 5), (32, 6), (39, 5), (48, 3), (53, 4), (58, 12)] {
            expected.set_style(Rect::new(x, 0, w, 1), heading);
        }
        let bold = Style::new().add_modifier(Modifier::BOLD);
        expected.set_style(Rect::new(0, 1, 2, 3), bold);
        expected.set_style(Rect::new(5, 1, 7, 1), Style::new().fg(Color::Green));
        expected.set_style(Rect::new(5, 2, 23, 1), Style::new().fg(Color::Yellow));
        expected.set_style(Rect::new(5, 3, 4, 1), Style::new().fg(Color::DarkGray));
        let red = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
        expected.set_style(Rect::new(41, 2, 3, 1), red);
        expected.set_style(Rect::new(41, 3, 3, 1), Style::new().fg(Color::Yellow));
        // Half the baseline's progress is as bad as half the time stalled.
        expected.set_style(Rect::new(54, 1, 3, 3), red);
        expected.set_style(Rect::new(65, 1, 5, 2), Style::new().fg(Color::Magenta));
        expected.set_style(
            Rect::new(0, 2, 70, 1),
            Style::new().add_modifier(Modifier::REVERSED),
        );
        assert_eq!(buf, expected);
    }
}
