//! The monitor's arithmetic, apart from any engine: rates over a window of samples, the
//! rolling heatmap columns, stall shares of a column, the memory map before switchover and
//! a vCPU's top regions. Pure functions, unit-tested here.

use std::collections::VecDeque;
use std::time::Instant;

use super::{BOOT_PAGES, PAGE_SIZE, TOP_REGIONS, WINDOW};
use crate::contract::{MapCell, RegionStall};

/// One sample of a vCPU's cumulative counters.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct VcpuSample {
    pub at: Option<Instant>,
    pub faults: u64,
    pub stalled_ns: u64,
    pub accesses: u64,
}

/// Regions of at least a page, `parts` of them covering `mem` bytes.
pub(super) fn region_size(mem: u64, parts: usize) -> u64 {
    mem.div_ceil(parts as u64).div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE
}

/// The memory map before the switchover: every page missing but the boot region's.
pub(super) fn empty_map(mem_bytes: u64, region_bytes: u64) -> Vec<MapCell> {
    let total = mem_bytes / PAGE_SIZE;
    let per_cell = region_bytes / PAGE_SIZE;
    (0..total.div_ceil(per_cell))
        .map(|c| {
            let pages = ((c + 1) * per_cell).min(total) - c * per_cell;
            let boot = BOOT_PAGES.saturating_sub(c * per_cell).min(pages);
            MapCell {
                missing: (pages - boot) as u32,
                boot: boot as u32,
                ..MapCell::default()
            }
        })
        .collect()
}

/// Stall ns per column as a share of the column (0 to 100); the newest column has run
/// only `newest_ns` so far.
pub(super) fn stall_percentages(
    columns: &VecDeque<Vec<u64>>,
    column_ns: u64,
    newest_ns: u64,
) -> VecDeque<Vec<u8>> {
    let last = columns.len().saturating_sub(1);
    columns
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let len = if k == last { newest_ns } else { column_ns }.max(1);
            c.iter()
                .map(|ns| (ns.saturating_mul(100) / len).min(100) as u8)
                .collect()
        })
        .collect()
}

/// A vCPU's regions by stall time, largest first (ties by address), at most
/// [`TOP_REGIONS`]; `regions[k]` is (stall ns, faults) of the k-th region.
pub(super) fn top_regions(regions: &[(u64, u64)], region_bytes: u64) -> Vec<RegionStall> {
    let mut top: Vec<RegionStall> = regions
        .iter()
        .enumerate()
        .filter(|(_, r)| r.1 > 0)
        .map(|(k, r)| RegionStall {
            gpa: k as u64 * region_bytes,
            bytes: region_bytes,
            stall_us: r.0 / 1000,
            faults: r.1,
        })
        .collect();
    top.sort_unstable_by(|a, b| b.stall_us.cmp(&a.stall_us).then(a.gpa.cmp(&b.gpa)));
    top.truncate(TOP_REGIONS);
    top
}

/// Faults/s, share of time stalled and guest accesses/s over the window.
pub(super) fn rates(w: &VecDeque<VcpuSample>) -> (f64, f64, f64) {
    let (Some(a), Some(b)) = (w.front(), w.back()) else {
        return (0.0, 0.0, 0.0);
    };
    let (Some(ta), Some(tb)) = (a.at, b.at) else {
        return (0.0, 0.0, 0.0);
    };
    let dt = (tb - ta).as_secs_f64();
    if dt <= 0.0 {
        return (0.0, 0.0, 0.0);
    }
    // A new VM's progress counter reads 0 until the guest's first report there.
    let progress = w
        .iter()
        .find(|s| s.accesses > 0)
        .and_then(|s| Some((s.at?, s.accesses)))
        .filter(|(t, _)| tb > *t)
        .map_or(0.0, |(t, acc)| {
            b.accesses.saturating_sub(acc) as f64 / (tb - t).as_secs_f64()
        });
    (
        b.faults.saturating_sub(a.faults) as f64 / dt,
        (b.stalled_ns.saturating_sub(a.stalled_ns) as f64 / 1e9 / dt).min(1.0),
        progress,
    )
}

pub(super) fn push_window<T>(w: &mut VecDeque<T>, v: T) {
    roll(w, v, WINDOW);
}

/// Appends `v`, dropping the oldest beyond `cap`.
pub(crate) fn roll<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    q.push_back(v);
    while q.len() > cap {
        q.pop_front();
    }
}

/// Columns of rows into rows of columns.
pub(crate) fn transpose<T: Copy>(cols: &VecDeque<Vec<T>>) -> Vec<Vec<T>> {
    let rows = cols.back().map_or(0, Vec::len);
    (0..rows)
        .map(|r| cols.iter().filter_map(|c| c.get(r).copied()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(at: Instant, faults: u64, stalled_ns: u64, accesses: u64) -> VcpuSample {
        VcpuSample {
            at: Some(at),
            faults,
            stalled_ns,
            accesses,
        }
    }

    #[test]
    fn rates_are_deltas_over_the_window() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(500);
        let w = VecDeque::from([sample(t0, 100, 0, 1000), sample(t1, 150, 250_000_000, 3000)]);
        let (faults, stall, progress) = rates(&w);
        assert!((faults - 100.0).abs() < 1e-9);
        assert!((stall - 0.5).abs() < 1e-9);
        assert!((progress - 4000.0).abs() < 1e-9);
    }

    #[test]
    fn a_window_with_one_sample_or_none_has_no_rates() {
        assert_eq!(rates(&VecDeque::new()), (0.0, 0.0, 0.0));
        let w = VecDeque::from([sample(Instant::now(), 5, 5, 5)]);
        assert_eq!(rates(&w), (0.0, 0.0, 0.0));
    }

    #[test]
    fn progress_counts_from_the_first_report_of_a_new_vm_and_stall_share_caps_at_one() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // A new VM reads 0 accesses until the guest's first report there.
        let w = VecDeque::from([
            sample(ms(0), 0, 0, 0),
            sample(ms(100), 0, 0, 4096),
            sample(ms(300), 0, 900_000_000, 8192),
        ]);
        let (_, stall, progress) = rates(&w);
        assert!((progress - 4096.0 / 0.2).abs() < 1e-6, "{progress}");
        assert_eq!(stall, 1.0);
    }

    #[test]
    fn roll_keeps_the_newest_and_transpose_turns_columns_into_rows() {
        let mut q = VecDeque::new();
        for v in 0..5 {
            roll(&mut q, v, 3);
        }
        assert_eq!(q, VecDeque::from([2, 3, 4]));
        let mut w = VecDeque::new();
        for v in 0..(WINDOW + 4) {
            push_window(&mut w, v);
        }
        assert_eq!(w.len(), WINDOW);
        let cols = VecDeque::from([vec![1, 2], vec![3, 4], vec![5, 6]]);
        assert_eq!(transpose(&cols), vec![vec![1, 3, 5], vec![2, 4, 6]]);
    }

    #[test]
    fn stall_percentages_scale_the_newest_column_by_its_own_length() {
        let cols = VecDeque::from([vec![250, 1000], vec![50, 200]]);
        let p = stall_percentages(&cols, 1000, 100);
        assert_eq!(p, VecDeque::from([vec![25, 100], vec![50, 100]]));
    }

    #[test]
    fn regions_are_whole_pages_and_the_empty_map_leaves_only_boot_present() {
        assert_eq!(region_size(1 << 30, 512), 2 << 20);
        assert_eq!(region_size(4096 * 3, 512), 4096);
        let mem = 64u64 << 20;
        let cells = empty_map(mem, 2 << 20);
        assert_eq!(cells.len(), 32);
        let boot: u64 = cells.iter().map(|c| u64::from(c.boot)).sum();
        let missing: u64 = cells.iter().map(|c| u64::from(c.missing)).sum();
        assert_eq!(boot, BOOT_PAGES);
        assert_eq!(boot + missing, mem / PAGE_SIZE);
    }

    #[test]
    fn top_regions_sort_by_stall_then_address_and_drop_the_quiet() {
        let mut regions = vec![(0u64, 0u64); 10];
        regions[2] = (5_000_000, 3);
        regions[7] = (9_000_000, 1);
        regions[4] = (5_000_000, 8);
        let top = top_regions(&regions, 4096);
        let order: Vec<u64> = top.iter().map(|r| r.gpa / 4096).collect();
        assert_eq!(order, vec![7, 2, 4]);
        assert_eq!(top[0].stall_us, 9000);
        let many: Vec<(u64, u64)> = (1..=20).map(|k| (k * 1000, 1)).collect();
        assert_eq!(top_regions(&many, 4096).len(), TOP_REGIONS);
    }
}
