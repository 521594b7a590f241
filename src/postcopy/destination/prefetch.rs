//! Prefetch: which pages a demand fault brings in besides its own. `off` fetches the
//! faulting page alone; a fixed N the N pages after it; `adaptive` follows each vCPU's
//! faults: two neighbouring faults, or three a stride apart (either direction), make a
//! stream, and the next fault brings in a window of the stream's next pages. A
//! window the stream goes on past (its next fault is just beyond it) was used: the window
//! doubles; a stream that jumps elsewhere halves it, down to nothing.
//!
//! The detectors are per vCPU, written only by the thread resolving that vCPU's fault (a
//! vCPU has one at a time), so relaxed atomics suffice; a race costs a worse guess, never
//! a wrong page: what is fetched is still claimed page by page in the page-state map.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::contract::{MAX_PREFETCH_PAGES, Prefetch};

/// A stream's window of contiguous pages starts here and doubles up to the most a fetch
/// carries (1 MiB with the faulting page).
const FIRST_WINDOW: u32 = 8;
/// A strided window costs a fetch a page: it starts and stays smaller.
const FIRST_STRIDED_WINDOW: u32 = 4;
pub(super) const MOST_STRIDED: u32 = 32;
/// Farther apart than this, two faults are not taken for a stream.
pub(super) const MOST_STRIDE_PAGES: i64 = 64;

/// Which pages to bring in after a fault at page `q`: `q + stride * k` for k in 1..=count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    pub stride: i64,
    pub count: u32,
}

impl Window {
    pub const NONE: Window = Window {
        stride: 1,
        count: 0,
    };

    pub fn is_contiguous(self) -> bool {
        self.stride.abs() == 1
    }
}

#[derive(Default)]
struct Detector {
    /// The last fault's page, plus one (0: none yet).
    last: AtomicU64,
    /// Pages from the fault before the last to the last: the stream's step once confirmed.
    stride: AtomicI64,
    /// The adaptive window, in pages of the stream.
    window: AtomicU32,
    /// The last window: the fault page that would go on past it, plus one (0: none out),
    /// and the pages it brought in.
    expect: AtomicU64,
    outstanding: AtomicU64,
}

pub(super) struct Prefetcher {
    strategy: AtomicU32,
    /// One per vCPU, then one for faults of threads that are not vCPUs.
    detectors: Vec<CachePadded<Detector>>,
}

/// What the detector learned from a fault.
pub(super) struct Seen {
    pub window: Window,
    /// Pages of the last window now known to be used.
    pub used: u64,
}

impl Prefetcher {
    pub fn new(vcpus: usize, strategy: Prefetch) -> Prefetcher {
        Prefetcher {
            strategy: AtomicU32::new(strategy.to_word()),
            detectors: (0..=vcpus).map(|_| CachePadded::default()).collect(),
        }
    }

    pub fn strategy(&self) -> Prefetch {
        Prefetch::from_word(self.strategy.load(Ordering::Relaxed))
    }

    pub fn set_strategy(&self, p: Prefetch) {
        self.strategy.store(p.to_word(), Ordering::Relaxed);
    }

    /// Learns from `vcpu`'s fault at `page` and says what to bring in with it.
    pub fn on_fault(&self, vcpu: Option<usize>, page: u64) -> Seen {
        let strategy = self.strategy();
        if strategy == Prefetch::Off {
            return Seen {
                window: Window::NONE,
                used: 0,
            };
        }
        let i = vcpu.map_or(self.detectors.len() - 1, |v| {
            v.min(self.detectors.len() - 1)
        });
        let d = &self.detectors[i];
        let last = d.last.load(Ordering::Relaxed).checked_sub(1);
        d.last.store(page + 1, Ordering::Relaxed);
        let stride = d.stride.load(Ordering::Relaxed);
        let mut window = d.window.load(Ordering::Relaxed);
        // Did the stream go on past the last window?
        // Plain loads, and stores only where something changes: a random guest's faults
        // (no window out) then cost the detector one store.
        let expect = take(&d.expect).checked_sub(1);
        let outstanding = take(&d.outstanding);
        let went_on = expect.is_some_and(|e| goes_on(page, e, stride, window));
        let used = if went_on { outstanding } else { 0 };
        let delta = last.map(|l| page as i64 - l as i64);
        let streaming = if went_on {
            window = (window * 2).min(most(stride));
            true
        } else {
            if outstanding > 0 {
                window /= 2;
            }
            // A neighbour makes a stream at once; a longer stride when it repeats.
            match delta {
                Some(delta) if delta == stride && delta != 0 => true,
                Some(delta) if delta != 0 && delta.abs() <= MOST_STRIDE_PAGES => {
                    d.stride.store(delta, Ordering::Relaxed);
                    delta.abs() == 1
                }
                _ => false,
            }
        };
        let stride = d.stride.load(Ordering::Relaxed);
        let w = match strategy {
            Prefetch::Off => Window::NONE,
            Prefetch::Fixed(n) => Window {
                stride: 1,
                count: n,
            },
            Prefetch::Adaptive if streaming => {
                if window == 0 {
                    window = first(stride);
                }
                // A window grown on another stride is held to this one's most.
                window = window.min(most(stride));
                Window {
                    stride,
                    count: window,
                }
            }
            Prefetch::Adaptive => Window::NONE,
        };
        if d.window.load(Ordering::Relaxed) != window {
            d.window.store(window, Ordering::Relaxed);
        }
        Seen { window: w, used }
    }

    /// Records the window brought in after `vcpu`'s fault at `page`: of the `span` pages
    /// `stride` apart it covered, `count` were fetched (others had the rest first).
    pub fn brought(&self, vcpu: Option<usize>, page: u64, stride: i64, span: u32, count: u64) {
        if count == 0 {
            return;
        }
        let i = vcpu.map_or(self.detectors.len() - 1, |v| {
            v.min(self.detectors.len() - 1)
        });
        let d = &self.detectors[i];
        let next = page as i64 + stride * (i64::from(span) + 1);
        if next >= 0 {
            d.expect.store(next as u64 + 1, Ordering::Relaxed);
            d.outstanding.store(count, Ordering::Relaxed);
        }
    }
}

/// The value of `a`, which is left zero.
fn take(a: &AtomicU64) -> u64 {
    let v = a.load(Ordering::Relaxed);
    if v != 0 {
        a.store(0, Ordering::Relaxed);
    }
    v
}

fn first(stride: i64) -> u32 {
    if stride.abs() == 1 {
        FIRST_WINDOW
    } else {
        FIRST_STRIDED_WINDOW
    }
}

fn most(stride: i64) -> u32 {
    if stride.abs() == 1 {
        MAX_PREFETCH_PAGES
    } else {
        MOST_STRIDED
    }
}

/// Whether a fault at `page` goes on past a window whose next page was `expect`: that
/// page, or a later one of the stream within a window's length (others brought some in).
fn goes_on(page: u64, expect: u64, stride: i64, window: u32) -> bool {
    if page == expect {
        return true;
    }
    if stride == 0 {
        return false;
    }
    let ahead = (page as i64 - expect as i64) * stride.signum();
    ahead > 0
        && ahead % stride.abs() == 0
        && ahead / stride.abs() <= i64::from(window.max(FIRST_WINDOW))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds faults at `pages` and brings in each window whole; returns the windows.
    fn feed(p: &Prefetcher, pages: impl IntoIterator<Item = u64>) -> (Vec<Window>, u64) {
        let mut used = 0;
        let windows = pages
            .into_iter()
            .map(|q| {
                let seen = p.on_fault(Some(0), q);
                used += seen.used;
                let w = seen.window;
                p.brought(Some(0), q, w.stride, w.count, u64::from(w.count));
                seen.window
            })
            .collect();
        (windows, used)
    }

    #[test]
    fn a_sequential_stream_gets_windows_that_double_while_used() {
        let p = Prefetcher::new(1, Prefetch::Adaptive);
        // Two faults a page apart make a stream; each next fault is just past the window.
        let (w, _) = feed(&p, [1000, 1001]);
        assert_eq!(w[0].count, 0);
        assert_eq!(
            w[1],
            Window {
                stride: 1,
                count: 8
            }
        );
        let (w, used) = feed(&p, [1010, 1027, 1060]);
        assert_eq!(
            w.iter().map(|w| w.count).collect::<Vec<_>>(),
            vec![16, 32, 64]
        );
        assert_eq!(used, 8 + 16 + 32);
    }

    #[test]
    fn backward_and_strided_streams_are_followed() {
        let p = Prefetcher::new(1, Prefetch::Adaptive);
        let (w, _) = feed(&p, [5000, 4999]);
        assert_eq!(
            w[1],
            Window {
                stride: -1,
                count: 8
            }
        );
        let p = Prefetcher::new(1, Prefetch::Adaptive);
        let (w, _) = feed(&p, [100, 117, 134]);
        assert_eq!(w[1].count, 0);
        assert_eq!(
            w[2],
            Window {
                stride: 17,
                count: 4
            }
        );
        // Past the window of 4: 134 + 17 * 5.
        let (w, used) = feed(&p, [134 + 17 * 5]);
        assert_eq!(
            w[0],
            Window {
                stride: 17,
                count: 8
            }
        );
        assert_eq!(used, 4);
    }

    #[test]
    fn random_faults_get_no_window_and_a_broken_stream_shrinks_it() {
        let p = Prefetcher::new(1, Prefetch::Adaptive);
        let (w, used) = feed(&p, [10, 5000, 90, 70_000, 3, 40_000]);
        assert!(w.iter().all(|w| w.count == 0), "{w:?}");
        assert_eq!(used, 0);
        let p = Prefetcher::new(1, Prefetch::Adaptive);
        let (w, _) = feed(&p, [0, 1, 10, 27]);
        assert_eq!(w[3].count, 32);
        // The stream jumps away: the window halves, and no stream is seen there.
        let (w, used) = feed(&p, [90_000]);
        assert_eq!((w[0].count, used), (0, 0));
        let (w, _) = feed(&p, [90_001]);
        assert_eq!(w[0].count, 16);
    }

    #[test]
    fn a_window_grown_on_a_sequential_stream_is_held_to_the_strided_most() {
        let p = Prefetcher::new(1, Prefetch::Adaptive);
        // Sequential until the window is the most a fetch takes.
        let mut q = 0;
        for _ in 0..8 {
            let seen = p.on_fault(Some(0), q);
            p.brought(
                Some(0),
                q,
                1,
                seen.window.count,
                u64::from(seen.window.count),
            );
            q += u64::from(seen.window.count) + 1;
        }
        // Then a jump, and a stride of 17.
        let (w, _) = feed(&p, [1_000_000, 1_000_017, 1_000_034]);
        assert_eq!(w[2].stride, 17);
        assert!(w[2].count <= MOST_STRIDED, "{w:?}");
    }

    #[test]
    fn fixed_brings_the_same_window_every_time_and_off_none() {
        let p = Prefetcher::new(2, Prefetch::Fixed(16));
        let (w, _) = feed(&p, [7, 9000, 3]);
        assert!(w.iter().all(|w| *w
            == Window {
                stride: 1,
                count: 16
            }));
        p.set_strategy(Prefetch::Off);
        let (w, _) = feed(&p, [8, 9]);
        assert!(w.iter().all(|w| w.count == 0));
    }
}
