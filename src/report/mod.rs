//! `faultline report`: one self-contained HTML page from a recording, to attach to a bug
//! report or a review: the run's identity, its timeline of phases and actions, the stall
//! and fault heatmaps over the whole run, the fill curve, the latency histograms, the
//! per-vCPU table and the verdict. Figures are inline SVG; the page fetches nothing.

mod figures;
mod page;
pub mod series;

use crate::contract::{HEATMAP_COLUMNS, Snapshot};
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
            &fault_title(last),
            &fault_rows(last, end_ms),
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

fn fault_title(last: &Snapshot) -> String {
    let window = last.fault_heatmap.column_ms * HEATMAP_COLUMNS as u64;
    if last.elapsed_ms > window {
        format!(
            "Faults by memory region (the last {} s the recording keeps of them)",
            window / 1000
        )
    } else {
        "Faults by memory region over the run".into()
    }
}

/// The last snapshot's fault heatmap placed on the run's time axis (its columns are
/// `column_ms` spans from the run's start, the newest the one it was taken in), each cell a
/// share of the busiest.
fn fault_rows(last: &Snapshot, end_ms: u64) -> Vec<(String, Vec<f64>)> {
    let h = &last.fault_heatmap;
    let most = h.rows.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    h.rows
        .iter()
        .enumerate()
        .map(|(r, row)| {
            let mut cells = vec![0.0; COLUMNS];
            // Columns count from the run's start: the newest is the one `last` fell in.
            let newest = last.elapsed_ms / h.column_ms.max(1);
            let n = row.len() as u64;
            for (c, &count) in row.iter().enumerate() {
                let Some(k) = newest.saturating_add(1 + c as u64).checked_sub(n) else {
                    continue;
                };
                let at = k.saturating_mul(h.column_ms);
                series::spread(&mut cells, at, at + h.column_ms, end_ms, count as f64);
            }
            // As shares of the busiest cell.
            let col_ms = end_ms as f64 / COLUMNS as f64;
            for cell in &mut cells {
                *cell = (*cell / col_ms * h.column_ms as f64 / most).min(1.0);
            }
            let gpa = (r as u64).saturating_mul(last.fault_region_bytes);
            (format!("{gpa:#x}"), cells)
        })
        .collect()
}
