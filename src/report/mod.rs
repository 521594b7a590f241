//! `faultline report`: one self-contained HTML page from a recording, to attach to a bug
//! report or a review: the run's identity, its timeline of phases and actions, the stall
//! and fault heatmaps over the whole run, the fill curve, the latency histograms, the
//! per-vCPU table and the verdict. Figures are inline SVG; the page fetches nothing.

mod figures;
mod page;
pub mod series;

use crate::contract::Snapshot;
use crate::control::record::Recording;

/// Columns of the run-wide heatmaps.
const COLUMNS: usize = 120;

/// One figure: its element id in the page, and the SVG document.
#[derive(Debug, Clone)]
pub struct Figure {
    pub id: String,
    pub svg: String,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub html: String,
    pub figures: Vec<Figure>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}: the recording holds no snapshot")]
    Empty(String),
}

/// The report of `rec`, named `name` (the recording's file) in the page.
pub fn build(rec: &Recording, name: &str) -> Result<Report, ReportError> {
    let snaps: Vec<&Snapshot> = rec.snapshots.iter().map(|s| s.as_ref()).collect();
    let last = *snaps
        .last()
        .ok_or_else(|| ReportError::Empty(name.into()))?;
    let end_ms = last.elapsed_ms.max(1);
    let mut figures = Vec::new();
    let mut add = |id: &str, doc: svg::Document| {
        figures.push(Figure {
            id: id.to_string(),
            svg: doc.to_string(),
        })
    };
    add(
        "timeline",
        figures::timeline(&series::marks(&snaps), end_ms),
    );
    let stall_rows: Vec<(String, Vec<f64>)> = series::stall_shares(&snaps, COLUMNS)
        .into_iter()
        .enumerate()
        .map(|(v, row)| (format!("vCPU {v}"), row))
        .collect();
    add(
        "stall-heatmap",
        figures::heatmap(
            "stall-heatmap",
            "Stall by vCPU over the run (share of each column's time spent stalled)",
            &stall_rows,
            end_ms,
            "% stalled",
        ),
    );
    add(
        "fault-heatmap",
        figures::heatmap(
            "fault-heatmap",
            "Faults by memory region over the run",
            &fault_rows(&snaps, end_ms),
            end_ms,
            "% of the busiest cell's faults",
        ),
    );
    add(
        "fill",
        figures::fill_curve(&series::fill_curve(&snaps), last.pages.total, end_ms),
    );
    add(
        "latency",
        figures::histogram(
            "latency",
            "Fault latency, all vCPUs (faults per bucket)",
            &last.histogram,
        ),
    );
    for v in &last.vcpus {
        let id = format!("latency-vcpu-{}", v.id);
        add(
            &id,
            figures::histogram(
                &id,
                &format!("Fault latency, vCPU {} (faults per bucket)", v.id),
                &v.histogram,
            ),
        );
    }
    let html = page::html(name, rec, last, &figures);
    Ok(Report { html, figures })
}

/// Each snapshot keeps the last minute of fault columns; reading one every this often
/// finds every column of the run while it was still kept.
const FAULT_STITCH_MS: u64 = 20_000;

/// The fault heatmap over the whole run: columns are `column_ms` spans counted from the
/// run's start (the newest of a snapshot is the one it was taken in, still filling), so
/// each column is taken from the latest snapshot that holds it, read every
/// [`FAULT_STITCH_MS`] and at the end; placed on the run's time axis, each cell a share of
/// the busiest.
fn fault_rows(snaps: &[&Snapshot], end_ms: u64) -> Vec<(String, Vec<f64>)> {
    let Some(last) = snaps.last() else {
        return Vec::new();
    };
    let rows = last.fault_heatmap.rows.len();
    let column_ms = last.fault_heatmap.column_ms.max(1);
    // Absolute column index -> counts per region row.
    let mut columns: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
    let mut read_at: Option<u64> = None;
    for (i, s) in snaps.iter().enumerate() {
        let h = &s.fault_heatmap;
        let due = read_at.is_none_or(|t| s.elapsed_ms >= t.saturating_add(FAULT_STITCH_MS));
        if !(due || i + 1 == snaps.len()) || h.rows.len() != rows || h.column_ms != column_ms {
            continue;
        }
        read_at = Some(s.elapsed_ms);
        let newest = s.elapsed_ms / column_ms;
        let n = h.rows.first().map_or(0, Vec::len) as u64;
        for c in 0..n {
            let Some(k) = newest.saturating_add(1 + c).checked_sub(n) else {
                continue;
            };
            let counts = h
                .rows
                .iter()
                .map(|r| r.get(c as usize).copied().unwrap_or(0));
            columns.insert(k, counts.collect());
        }
    }
    let most = columns
        .values()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let col_ms = end_ms as f64 / COLUMNS as f64;
    (0..rows)
        .map(|r| {
            let mut cells = vec![0.0; COLUMNS];
            for (&k, counts) in &columns {
                let at = k.saturating_mul(column_ms);
                let count = counts.get(r).copied().unwrap_or(0) as f64;
                series::spread(&mut cells, at, at.saturating_add(column_ms), end_ms, count);
            }
            // As shares of the busiest cell.
            for cell in &mut cells {
                *cell = (*cell / col_ms * column_ms as f64 / most).min(1.0);
            }
            let gpa = (r as u64).saturating_mul(last.fault_region_bytes);
            (format!("{gpa:#x}"), cells)
        })
        .collect()
}
