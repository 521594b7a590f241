//! All-vCPUs-blocked time (QEMU's postcopy blocktime), worked out off the hot path from the
//! vCPUs' stall intervals, so no fault writes a line that another vCPU writes too.
//!
//! Time is accounted window by window. For a window ending at `until`, each vCPU's stalls
//! are the intervals of its fault events plus, if it was stalled at `until`, the stall in
//! progress; the time every vCPU spent stalled at once is the intersection of those sets.
//! The caller reads the clock, then each vCPU's stall in progress, then drains the events:
//! a stall ends by emitting its event before it clears its in-progress mark, so when the
//! read finds a vCPU's mark cleared (or set by that vCPU thread's next stall), its earlier
//! stalls are among the events drained after it.
//!
//! Exact but for the instructions between a stall's clock read and its mark (at the start,
//! where a window can miss them; at the end, where a window can count them): nanoseconds,
//! unless the thread is preempted right there. In uffd mode a vCPU's next stall may be
//! marked by another reader before the previous reader's event is out; that event can
//! then miss its window. Dropped events lose their stalls.

/// Half-open `[start, end)` in telemetry nanoseconds.
type Interval = (u64, u64);

#[derive(Debug, Default)]
pub struct AllBlocked {
    /// Per vCPU, stall intervals not yet wholly inside an accounted window.
    pending: Vec<Vec<Interval>>,
    accounted_until: u64,
    total_ns: u64,
}

impl AllBlocked {
    pub fn new(vcpus: usize) -> AllBlocked {
        AllBlocked {
            pending: vec![Vec::new(); vcpus],
            accounted_until: 0,
            total_ns: 0,
        }
    }

    /// A finished stall of `vcpu`.
    pub fn record(&mut self, vcpu: usize, start_ns: u64, end_ns: u64) {
        if end_ns > self.accounted_until
            && let Some(p) = self.pending.get_mut(vcpu)
        {
            p.push((start_ns, end_ns));
        }
    }

    /// Accounts time up to `until`; `stalled_since[v]` is the start of the stall vCPU `v`
    /// was in at `until`, if any.
    pub fn advance(&mut self, until: u64, stalled_since: &[Option<u64>]) {
        let from = self.accounted_until;
        if until <= from || self.pending.is_empty() {
            return;
        }
        let mut common: Option<Vec<Interval>> = None;
        for (v, pending) in self.pending.iter().enumerate() {
            let open = stalled_since
                .get(v)
                .copied()
                .flatten()
                .map(|since| (since, until));
            let mine = union_within(pending.iter().copied().chain(open), from, until);
            common = Some(match common {
                None => mine,
                Some(c) => intersect(&c, &mine),
            });
            if common.as_ref().is_some_and(Vec::is_empty) {
                break;
            }
        }
        let common_ns = common.map_or(0, |c| {
            c.iter().map(|(s, e)| e - s).fold(0u64, u64::saturating_add)
        });
        self.total_ns = self.total_ns.saturating_add(common_ns);
        for p in &mut self.pending {
            p.retain(|&(_, end)| end > until);
        }
        self.accounted_until = until;
    }

    pub fn total_ns(&self) -> u64 {
        self.total_ns
    }
}

/// The union of `intervals` clipped to `[from, until)`, sorted and disjoint.
fn union_within(intervals: impl Iterator<Item = Interval>, from: u64, until: u64) -> Vec<Interval> {
    let mut clipped: Vec<Interval> = intervals
        .map(|(s, e)| (s.max(from), e.min(until)))
        .filter(|(s, e)| s < e)
        .collect();
    clipped.sort_unstable();
    let mut out: Vec<Interval> = Vec::with_capacity(clipped.len());
    for (s, e) in clipped {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The intersection of two sorted, disjoint interval lists.
fn intersect(a: &[Interval], b: &[Interval]) -> Vec<Interval> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let s = a[i].0.max(b[j].0);
        let e = a[i].1.min(b[j].1);
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_time_when_every_vcpu_stalls_counts() {
        let mut b = AllBlocked::new(3);
        b.record(0, 100, 200);
        b.record(1, 150, 300);
        b.record(2, 0, 1000);
        b.record(0, 250, 260);
        b.advance(1000, &[None, None, None]);
        // vCPUs 0 and 1 overlap on [150, 200) and [250, 260); vCPU 2 covers both.
        assert_eq!(b.total_ns(), 60);
    }

    #[test]
    fn a_stall_in_progress_counts_up_to_the_window_and_is_not_counted_twice() {
        let mut b = AllBlocked::new(2);
        b.record(0, 0, 500);
        // vCPU 1 stalled since 400 and still is at 450.
        b.advance(450, &[None, Some(400)]);
        assert_eq!(b.total_ns(), 50);
        // Its event arrives once it ends at 480; only [450, 480) is new.
        b.record(1, 400, 480);
        b.advance(600, &[None, None]);
        assert_eq!(b.total_ns(), 80);
    }

    #[test]
    fn overlapping_reports_of_one_stall_are_merged() {
        let mut b = AllBlocked::new(1);
        b.record(0, 10, 30);
        b.record(0, 20, 40);
        b.advance(100, &[Some(35)]);
        // [10, 40) and [35, 100): one vCPU blocked from 10 on.
        assert_eq!(b.total_ns(), 90);
        // Nothing older than the window is kept or counted again.
        b.record(0, 10, 30);
        b.advance(200, &[None]);
        assert_eq!(b.total_ns(), 90);
        assert!(b.pending.iter().all(Vec::is_empty));
    }

    #[test]
    fn a_running_vcpu_means_no_time_is_blocked() {
        let mut b = AllBlocked::new(2);
        b.record(0, 0, 1000);
        b.advance(1000, &[None, None]);
        assert_eq!(b.total_ns(), 0);
    }
}
