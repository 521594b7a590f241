//! The report's figures, drawn as SVG documents with the `svg` crate: a shared time axis,
//! heatmaps, a fill curve and latency histograms, each with its axes and units.

use svg::Document;
use svg::node::element::{Group, Line, Polyline, Rectangle, Text, Title};

use super::series::{FillPoint, Mark};
use crate::contract::LatencyBuckets;

const WIDTH: f64 = 900.0;
/// Room left of the plot for row labels, and below it for the time axis.
const LEFT: f64 = 110.0;
const RIGHT: f64 = 20.0;
const AXIS: f64 = 34.0;
const TOP: f64 = 26.0;

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn document(id: &str, height: f64, title: &str) -> Document {
    Document::new()
        .set("id", id)
        .set("viewBox", (0, 0, WIDTH, height))
        .set("width", WIDTH)
        .set("height", height)
        .set("font-family", "sans-serif")
        .set("font-size", 11)
        .add(Title::new(title))
        .add(
            Text::new(title)
                .set("x", LEFT)
                .set("y", 16)
                .set("font-size", 13)
                .set("font-weight", "bold"),
        )
}

fn text(x: f64, y: f64, s: impl Into<String>) -> Text {
    Text::new(s).set("x", x).set("y", y)
}

fn line(x1: f64, y1: f64, x2: f64, y2: f64) -> Line {
    Line::new()
        .set("x1", x1)
        .set("y1", y1)
        .set("x2", x2)
        .set("y2", y2)
        .set("stroke", "#444")
        .set("stroke-width", 1)
}

/// A time axis under a plot from `y`, 0 to `end_ms`, ticks at round seconds.
fn time_axis(y: f64, end_ms: u64) -> Group {
    let mut g = Group::new().add(line(LEFT, y, LEFT + plot_width(), y));
    let secs = (end_ms as f64 / 1000.0).max(0.001);
    let step = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|s| secs / s <= 12.0)
        .unwrap_or(1200.0);
    let mut t = 0.0;
    // A bounded number of ticks, whatever a damaged recording says of its length.
    while t <= secs + 1e-9 && t / step <= 20.0 {
        let x = LEFT + t / secs * plot_width();
        g = g
            .add(line(x, y, x, y + 4.0))
            .add(text(x, y + 15.0, format!("{t}")).set("text-anchor", "middle"));
        t += step;
    }
    g.add(text(LEFT + plot_width(), y + 28.0, "seconds since start").set("text-anchor", "end"))
}

fn x_of(ms: u64, end_ms: u64) -> f64 {
    LEFT + ms as f64 / end_ms.max(1) as f64 * plot_width()
}

/// A warm colour for a share from 0 (pale) to 1 (dark red).
fn heat(share: f64) -> String {
    let s = share.clamp(0.0, 1.0);
    let (r, g, b) = (255.0 - 75.0 * s, 245.0 - 225.0 * s, 230.0 - 210.0 * s);
    format!("rgb({},{},{})", r as u8, g as u8, b as u8)
}

/// Phases and operator actions on the run's time axis, one lane a kind.
pub fn timeline(marks: &[Mark], end_ms: u64) -> Document {
    let lanes = [
        "phase",
        "migration",
        "throttle",
        "prefetch",
        "push",
        "link",
        "inject",
    ];
    let lane_h = 22.0;
    let height = TOP + lanes.len() as f64 * lane_h + AXIS + 8.0;
    let mut doc = document("timeline", height, "Timeline: phases and operator actions");
    for (i, lane) in lanes.iter().enumerate() {
        let y = TOP + i as f64 * lane_h + lane_h / 2.0;
        doc = doc
            .add(text(LEFT - 8.0, y + 4.0, *lane).set("text-anchor", "end"))
            .add(line(LEFT, y, LEFT + plot_width(), y).set("stroke", "#ddd"));
        for m in marks.iter().filter(|m| m.kind == *lane) {
            let x = x_of(m.at_ms, end_ms);
            doc = doc.add(
                Group::new()
                    .set("class", "mark")
                    .add(Title::new(format!(
                        "{:.1} s: {}",
                        m.at_ms as f64 / 1000.0,
                        m.label
                    )))
                    .add(
                        Rectangle::new()
                            .set("x", x - 3.0)
                            .set("y", y - 7.0)
                            .set("width", 6)
                            .set("height", 14)
                            .set("fill", "#3465a4"),
                    )
                    .add(text(x + 5.0, y - 3.0, m.label.clone()).set("font-size", 9)),
            );
        }
    }
    doc.add(time_axis(TOP + lanes.len() as f64 * lane_h, end_ms))
}

/// Rows of shares (0 to 1) over the run's time, one labelled row each, with a legend.
pub fn heatmap(
    id: &str,
    title: &str,
    rows: &[(String, Vec<f64>)],
    end_ms: u64,
    unit: &str,
) -> Document {
    let row_h = (240.0 / rows.len().max(1) as f64).clamp(6.0, 22.0);
    let height = TOP + rows.len() as f64 * row_h + AXIS + 24.0;
    let mut doc = document(id, height, title);
    for (r, (label, cells)) in rows.iter().enumerate() {
        let y = TOP + r as f64 * row_h;
        if row_h >= 9.0 || r % 4 == 0 {
            doc = doc
                .add(text(LEFT - 8.0, y + row_h * 0.75, label.clone()).set("text-anchor", "end"));
        }
        let w = plot_width() / cells.len().max(1) as f64;
        // The row's ground, then only the cells with something in them.
        doc = doc.add(
            Rectangle::new()
                .set("x", LEFT)
                .set("y", y)
                .set("width", plot_width())
                .set("height", row_h)
                .set("fill", heat(0.0)),
        );
        for (c, &v) in cells.iter().enumerate().filter(|(_, v)| **v >= 0.005) {
            doc = doc.add(
                Rectangle::new()
                    .set("x", LEFT + c as f64 * w)
                    .set("y", y)
                    .set("width", w + 0.5)
                    .set("height", row_h)
                    .set("fill", heat(v))
                    .add(Title::new(format!("{label}: {:.0}{unit}", v * 100.0))),
            );
        }
    }
    let axis_y = TOP + rows.len() as f64 * row_h;
    doc = doc.add(time_axis(axis_y, end_ms));
    // The legend: pale is none, dark red all.
    let ly = axis_y + AXIS + 4.0;
    for i in 0..=10 {
        doc = doc.add(
            Rectangle::new()
                .set("x", LEFT + i as f64 * 14.0)
                .set("y", ly)
                .set("width", 14)
                .set("height", 10)
                .set("fill", heat(i as f64 / 10.0)),
        );
    }
    doc.add(text(LEFT + 160.0, ly + 9.0, format!("0 to 100{unit}")))
}

/// A line of the fill curve: its name, colour, and value at a point.
type Series = (&'static str, &'static str, fn(&FillPoint) -> u64);

/// Pages present by how they came, over time, against the total.
pub fn fill_curve(points: &[FillPoint], total: u64, end_ms: u64) -> Document {
    let plot_h = 200.0;
    let height = TOP + plot_h + AXIS + 24.0;
    let mut doc = document("fill", height, "Fill: pages present, by how they came");
    let y_of = |pages: u64| TOP + plot_h - pages as f64 / total.max(1) as f64 * plot_h;
    doc = doc
        .add(line(LEFT, TOP, LEFT, TOP + plot_h))
        .add(text(LEFT - 8.0, TOP + 8.0, format!("{total}")).set("text-anchor", "end"))
        .add(text(LEFT - 8.0, TOP + plot_h, "0").set("text-anchor", "end"))
        .add(text(LEFT - 8.0, TOP + plot_h / 2.0, "pages").set("text-anchor", "end"));
    let series: [Series; 3] = [
        ("demand", "#06989a", |p| p.demand),
        ("prefetched", "#729fcf", |p| p.prefetched),
        ("pushed", "#4e9a06", |p| p.pushed),
    ];
    for (i, (name, colour, value)) in series.iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x_of(p.at_ms, end_ms), y_of(value(p))))
            .collect();
        doc = doc
            .add(
                Polyline::new()
                    .set("class", "series")
                    .set("points", pts.join(" "))
                    .set("fill", "none")
                    .set("stroke", *colour)
                    .set("stroke-width", 2),
            )
            .add(
                text(
                    LEFT + 10.0 + i as f64 * 110.0,
                    TOP + plot_h + AXIS + 18.0,
                    *name,
                )
                .set("fill", *colour),
            );
    }
    doc.add(time_axis(TOP + plot_h, end_ms))
}

/// Fault latencies in their log-2 buckets: a bar a bucket, its count on it.
pub fn histogram(id: &str, title: &str, buckets: &LatencyBuckets) -> Document {
    let plot_h = 140.0;
    let height = TOP + plot_h + AXIS + 8.0;
    let mut doc = document(id, height, title);
    let n = buckets.counts.len().max(1);
    let most = buckets.counts.iter().copied().max().unwrap_or(0).max(1);
    let w = plot_width() / n as f64;
    for (i, &count) in buckets.counts.iter().enumerate() {
        let h = count as f64 / most as f64 * plot_h;
        let x = LEFT + i as f64 * w;
        let lower = LatencyBuckets::lower_us(i.min(63));
        let label = if lower >= 1000 {
            format!("{}ms", lower / 1000)
        } else {
            format!("{lower}us")
        };
        doc = doc
            .add(
                Rectangle::new()
                    .set("x", x + 1.0)
                    .set("y", TOP + plot_h - h)
                    .set("width", (w - 2.0).max(1.0))
                    .set("height", h)
                    .set("fill", "#3465a4")
                    .add(Title::new(format!("from {label}: {count} faults"))),
            )
            .add(
                text(x + w / 2.0, TOP + plot_h + 14.0, label)
                    .set("text-anchor", "middle")
                    .set("font-size", 9),
            );
        if count > 0 {
            doc = doc.add(
                text(x + w / 2.0, TOP + plot_h - h - 2.0, format!("{count}"))
                    .set("text-anchor", "middle")
                    .set("font-size", 8),
            );
        }
    }
    doc.add(line(LEFT, TOP + plot_h, LEFT + plot_width(), TOP + plot_h))
        .add(
            text(
                LEFT + plot_width(),
                TOP + plot_h + 28.0,
                "fault latency (bucket's lower bound)",
            )
            .set("text-anchor", "end"),
        )
}
