//! What a report draws, taken out of a recording's snapshots: the marks of the timeline,
//! each vCPU's stall over the whole run, the fill curve.

use crate::contract::{Phase, Snapshot};

/// Something that happened at a moment of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub at_ms: u64,
    /// `phase`, `migration`, `throttle`, `prefetch`, `push`, `link`, `inject`.
    pub kind: &'static str,
    pub label: String,
}

/// Phase changes and operator actions, in time order, from what the snapshots show.
pub fn marks(snapshots: &[&Snapshot]) -> Vec<Mark> {
    let mut out = Vec::new();
    let mut prev: Option<&Snapshot> = None;
    // Each snapshot lists its migration's latest injections: each is drawn once.
    let mut injections_seen = std::collections::HashSet::new();
    for s in snapshots {
        let at_ms = s.elapsed_ms;
        let mut mark = |kind, label: String| out.push(Mark { at_ms, kind, label });
        match prev {
            None => mark("phase", s.phase.as_str().to_string()),
            Some(p) => {
                if p.phase != s.phase {
                    mark("phase", s.phase.as_str().to_string());
                }
                if p.migration != s.migration && s.migration > 1 {
                    mark("migration", format!("migration {}", s.migration));
                }
                if p.throttle != s.throttle && !p.throttle.is_empty() {
                    mark("throttle", format!("throttle {}", s.throttle));
                }
                let strategy = |x: &Snapshot| x.prefetch.as_ref().map(|p| p.strategy.clone());
                if strategy(p) != strategy(s)
                    && let Some(now) = strategy(s)
                    && strategy(p).is_some()
                {
                    mark("prefetch", format!("prefetch {now}"));
                }
                if p.push_enabled != s.push_enabled && s.phase != Phase::Finished {
                    mark("push", format!("push {}", on_off(s.push_enabled)));
                }
                if let (Some(a), Some(b)) = (p.link_up, s.link_up)
                    && a != b
                {
                    mark("link", format!("link {}", if b { "up" } else { "DOWN" }));
                }
            }
        }
        // Their times count from the migration's switchover.
        let switched_ms = s.elapsed_ms.saturating_sub(s.postcopy_ms);
        for i in &s.injections {
            if injections_seen.insert((s.migration, i.at_ms, i.gpa, i.pages)) {
                out.push(Mark {
                    at_ms: switched_ms.saturating_add(i.at_ms),
                    kind: "inject",
                    label: format!("inject {} pages at {:#x}", i.pages, i.gpa),
                });
            }
        }
        prev = Some(s);
    }
    out.sort_by_key(|m| m.at_ms);
    out
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Each vCPU's share of each of `columns` equal spans of the run spent stalled (0 to 1),
/// from the growth of its stall time between snapshots, spread over the spans between them.
pub fn stall_shares(snapshots: &[&Snapshot], columns: usize) -> Vec<Vec<f64>> {
    let vcpus = snapshots.iter().map(|s| s.vcpus.len()).max().unwrap_or(0);
    let end = snapshots.last().map_or(0, |s| s.elapsed_ms).max(1);
    let mut stalled = vec![vec![0.0f64; columns]; vcpus];
    for pair in snapshots.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // A new migration starts its counters again: nothing to take from that step.
        if a.migration != b.migration {
            continue;
        }
        for (v, row) in stalled.iter_mut().enumerate() {
            let grown = match (a.vcpus.get(v), b.vcpus.get(v)) {
                (Some(x), Some(y)) => (y.stall_ms - x.stall_ms).max(0.0),
                _ => 0.0,
            };
            spread(row, a.elapsed_ms, b.elapsed_ms, end, grown);
        }
    }
    let col_ms = end as f64 / columns.max(1) as f64;
    for row in &mut stalled {
        for cell in row.iter_mut() {
            *cell = (*cell / col_ms).clamp(0.0, 1.0);
        }
    }
    stalled
}

/// Adds `amount`, which accrued evenly over `[from_ms, to_ms)`, to the columns of `row`
/// (equal spans of `[0, end_ms)`) in proportion to their overlap with it.
pub fn spread(row: &mut [f64], from_ms: u64, to_ms: u64, end_ms: u64, amount: f64) {
    let n = row.len();
    if n == 0 || to_ms <= from_ms || amount <= 0.0 {
        return;
    }
    let col_ms = end_ms.max(1) as f64 / n as f64;
    let (from, to) = (from_ms as f64, to_ms.min(end_ms) as f64);
    if to <= from {
        return;
    }
    let per_ms = amount / (to_ms - from_ms) as f64;
    let first = ((from / col_ms) as usize).min(n - 1);
    let last = ((to / col_ms).ceil() as usize).clamp(first + 1, n);
    for (c, cell) in row.iter_mut().enumerate().take(last).skip(first) {
        let (c0, c1) = (c as f64 * col_ms, (c + 1) as f64 * col_ms);
        let overlap = (to.min(c1) - from.max(c0)).max(0.0);
        *cell += overlap * per_ms;
    }
}

/// Pages present by how they came, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillPoint {
    pub at_ms: u64,
    pub demand: u64,
    pub prefetched: u64,
    pub pushed: u64,
}

/// The fill at each snapshot of post-copy.
pub fn fill_curve(snapshots: &[&Snapshot]) -> Vec<FillPoint> {
    snapshots
        .iter()
        .filter(|s| matches!(s.phase, Phase::Postcopy | Phase::Complete | Phase::Finished))
        .map(|s| FillPoint {
            at_ms: s.elapsed_ms,
            demand: s.pages.demand,
            prefetched: s.pages.prefetched,
            pushed: s.pages.pushed,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::fixture;

    #[test]
    fn marks_follow_what_changed_and_shares_stay_between_zero_and_one() {
        let snaps: Vec<Snapshot> = (0..40).map(|i| fixture::snapshot(2, 1 << 30, i)).collect();
        let refs: Vec<&Snapshot> = snaps.iter().collect();
        let m = marks(&refs);
        assert_eq!(m.first().map(|m| m.kind), Some("phase"));
        assert!(m.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        let shares = stall_shares(&refs, 30);
        assert_eq!(shares.len(), 2);
        assert!(shares.iter().flatten().all(|&x| (0.0..=1.0).contains(&x)));
        let fill = fill_curve(&refs);
        assert!(fill.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }

    #[test]
    fn spread_shares_an_amount_by_overlap_and_keeps_it_whole() {
        let mut row = vec![0.0; 10];
        // 100 ms columns; 30 over 250..550 ms: 5 in the 3rd, 10 in the 4th and 5th, 5 in the 6th.
        spread(&mut row, 250, 550, 1000, 30.0);
        let want = [0.0, 0.0, 5.0, 10.0, 10.0, 5.0, 0.0, 0.0, 0.0, 0.0];
        for (got, want) in row.iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{row:?}");
        }
    }
}
