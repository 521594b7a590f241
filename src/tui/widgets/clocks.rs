//! The three-clocks pane of a QEMU migration, where the memory map stands for faultline's
//! own runs (QEMU does not say which pages are where): each vCPU's stall by faultline, its
//! thread's off-CPU time by the kernel, and QEMU's own figure, with how far each lies from
//! the kernel's.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;

use super::text;
use crate::contract::{QemuVcpu, QemuView};
use crate::tui::theme::Theme;

/// Off by more than this from the kernel's clock is worth a colour.
const TOLERANCE: f64 = 0.05;

pub struct ClocksView<'a> {
    pub qemu: &'a QemuView,
    pub theme: &'a Theme,
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

impl ClocksView<'_> {
    fn deviation(&self, v: &QemuVcpu, figure: Option<f64>) -> (String, Style) {
        match v.deviation(figure) {
            Some(d) if d.abs() > TOLERANCE => (format!("{:+.0}%", d * 100.0), self.theme.warn()),
            Some(d) => (format!("{:+.1}%", d * 100.0), self.theme.good()),
            None => ("-".into(), self.theme.dim()),
        }
    }

    pub fn render(&self, area: Rect, buf: &mut Buffer) {
        let area = area.intersection(buf.area);
        if area.is_empty() {
            return;
        }
        let q = self.qemu;
        let t = self.theme;
        let mut y = area.y;
        let head = format!(
            "QEMU {} · {} · {} events{}",
            q.version,
            q.state,
            q.trace_events,
            if q.trace_garbage > 0 {
                format!(", {} garbage", q.trace_garbage)
            } else {
                String::new()
            }
        );
        text(buf, area, area.x, y, &head, t.text());
        y += 1;
        let window = match q.window_ms {
            Some((a, b)) => format!(
                "stall ms over post-copy ({:.1} s)",
                b.saturating_sub(a) as f64 / 1000.0
            ),
            None => "stall ms: post-copy not begun".into(),
        };
        text(buf, area, area.x, y, &window, t.dim());
        y += 1;
        text(
            buf,
            area,
            area.x,
            y,
            "vcpu faultline off-CPU    Δ   QEMU     Δ",
            t.label(),
        );
        y += 1;
        for v in &q.vcpus {
            if y >= area.bottom() {
                break;
            }
            let (d1, s1) = self.deviation(v, v.stall_ms);
            let (d2, s2) = self.deviation(v, v.qemu_blocktime_ms);
            let mut x = area.x;
            x = text(buf, area, x, y, &format!("v{:<3}", v.vcpu), t.label());
            x = text(
                buf,
                area,
                x,
                y,
                &format!("{:>9} {:>8} ", ms(v.stall_ms), ms(v.offcpu_ms)),
                t.value(),
            );
            x = text(buf, area, x, y, &format!("{d1:>5}"), s1);
            x = text(
                buf,
                area,
                x,
                y,
                &format!(" {:>6} ", ms(v.qemu_blocktime_ms)),
                t.value(),
            );
            text(buf, area, x, y, &format!("{d2:>5}"), s2);
            y += 1;
        }
        if y < area.bottom() {
            let note = if q.vcpus.iter().all(|v| v.qemu_blocktime_ms.is_none()) {
                "QEMU reports its own figure at completion"
            } else {
                "Δ: against the thread's off-CPU time (schedstat)"
            };
            text(buf, area, area.x, y, note, t.dim());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> QemuView {
        QemuView {
            version: "10.0.2".into(),
            state: "completed".into(),
            pages_known: true,
            trace_events: 71373,
            trace_garbage: 2,
            non_vcpu_faults: 0,
            blocktime_ms: Some(0.0),
            window_ms: Some((2000, 9300)),
            vcpus: vec![
                QemuVcpu {
                    vcpu: 0,
                    thread_id: Some(100),
                    stall_ms: Some(6856.0),
                    offcpu_ms: Some(6868.0),
                    qemu_blocktime_ms: Some(2659.0),
                },
                QemuVcpu {
                    vcpu: 1,
                    thread_id: Some(101),
                    stall_ms: Some(7168.0),
                    offcpu_ms: Some(7181.0),
                    qemu_blocktime_ms: None,
                },
            ],
        }
    }

    fn row(buf: &Buffer, y: u16) -> String {
        (0..buf.area.width)
            .map(|x| buf[(x, y)].symbol().to_string())
            .collect()
    }

    #[test]
    fn shows_three_clocks_and_flags_qemus_gap() {
        let theme = Theme::plain();
        let q = view();
        let area = Rect::new(0, 0, 60, 7);
        let mut buf = Buffer::empty(area);
        ClocksView {
            qemu: &q,
            theme: &theme,
        }
        .render(area, &mut buf);
        assert!(row(&buf, 0).starts_with("QEMU 10.0.2 · completed · 71373 events, 2 garbage"));
        assert!(row(&buf, 1).contains("(7.3 s)"), "{}", row(&buf, 1));
        let v0 = row(&buf, 3);
        assert!(
            v0.contains("6856") && v0.contains("6868") && v0.contains("2659"),
            "{v0}"
        );
        assert!(v0.contains("-0.2%") && v0.contains("-61%"), "{v0}");
        let v1 = row(&buf, 4);
        assert!(v1.trim_end().ends_with('-'), "{v1}");
        assert!(row(&buf, 5).starts_with("Δ: against"));
    }
}
