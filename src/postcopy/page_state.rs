//! The state of every guest page on the destination, in one atomic byte per page: the low
//! bits hold the state, the top bit remembers that the page was injected (made missing
//! again) at least once. Claiming a missing page is a compare-and-swap, so exactly one
//! party ever copies a page in.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageState {
    Missing = 0,
    /// Claimed by a fetcher; its copy is in flight.
    Requested = 1,
    FilledByDemand = 2,
    FilledByPush = 3,
    /// Part of the boot region: moved with the vCPU state, never missing.
    Boot = 4,
    /// Brought in by prefetch with a fault's page.
    FilledByPrefetch = 5,
}

/// Every state of a page that arrived after the switchover.
const FILLED: [PageState; 3] = [
    PageState::FilledByDemand,
    PageState::FilledByPush,
    PageState::FilledByPrefetch,
];

/// Set once a page has been injected; kept through later transitions.
const INJECTED: u8 = 0x80;
const STATE: u8 = 0x07;

impl PageState {
    fn from_u8(v: u8) -> PageState {
        match v & STATE {
            0 => PageState::Missing,
            1 => PageState::Requested,
            2 => PageState::FilledByDemand,
            3 => PageState::FilledByPush,
            5 => PageState::FilledByPrefetch,
            _ => PageState::Boot,
        }
    }

    pub fn is_present(self) -> bool {
        matches!(
            self,
            PageState::FilledByDemand
                | PageState::FilledByPush
                | PageState::FilledByPrefetch
                | PageState::Boot
        )
    }
}

#[derive(Debug)]
pub struct PageStateMap {
    pages: Vec<AtomicU8>,
}

impl PageStateMap {
    /// `total` pages, the first `boot` of them present.
    pub fn new(total: u64, boot: u64) -> PageStateMap {
        let pages = (0..total)
            .map(|p| {
                AtomicU8::new(if p < boot {
                    PageState::Boot
                } else {
                    PageState::Missing
                } as u8)
            })
            .collect();
        PageStateMap { pages }
    }

    pub fn len(&self) -> u64 {
        self.pages.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    fn raw(&self, page: u64) -> Option<&AtomicU8> {
        self.pages.get(page as usize)
    }

    pub fn get(&self, page: u64) -> PageState {
        self.raw(page).map_or(PageState::Boot, |p| {
            PageState::from_u8(p.load(Ordering::Acquire))
        })
    }

    /// Whether the page has ever been made missing again.
    pub fn was_injected(&self, page: u64) -> bool {
        self.raw(page)
            .is_some_and(|p| p.load(Ordering::Relaxed) & INJECTED != 0)
    }

    /// Moves the page from state `from` to `to`, keeping the injected mark.
    fn transition(&self, page: u64, from: PageState, to: u8) -> bool {
        let Some(p) = self.raw(page) else {
            return false;
        };
        let mut cur = p.load(Ordering::Acquire);
        loop {
            if PageState::from_u8(cur) != from {
                return false;
            }
            match p.compare_exchange_weak(
                cur,
                (cur & INJECTED) | to,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Claims a missing page for fetching. False if someone else has it or it is present.
    pub fn claim(&self, page: u64) -> bool {
        self.transition(page, PageState::Missing, PageState::Requested as u8)
    }

    /// Marks a claimed page as filled.
    pub fn set_filled(&self, page: u64, by: PageState) {
        self.transition(page, PageState::Requested, by as u8);
    }

    /// Returns a claimed page to missing (its fetch failed or was abandoned).
    pub fn unclaim(&self, page: u64) {
        self.transition(page, PageState::Requested, PageState::Missing as u8);
    }

    /// Takes a filled page back for an injection: claimed (in flight) until
    /// [`Self::release_taken`], so faults on it wait and no one fills it. Returns whether
    /// it was filled.
    pub fn take_page(&self, page: u64) -> bool {
        FILLED
            .into_iter()
            .any(|from| self.transition(page, from, PageState::Requested as u8))
    }

    /// A page taken for an injection is missing now, and marked injected.
    pub fn release_taken(&self, page: u64) {
        self.transition(
            page,
            PageState::Requested,
            INJECTED | PageState::Missing as u8,
        );
    }

    /// Gives a taken page back as it was, filled (its injection failed).
    pub fn restore_taken(&self, page: u64) {
        self.transition(page, PageState::Requested, PageState::FilledByDemand as u8);
    }

    /// Pages of `pages` (clipped to the map) in each state, and how many were ever injected.
    pub fn tally(&self, pages: std::ops::Range<u64>) -> Tally {
        let end = pages.end.min(self.len()) as usize;
        let start = (pages.start as usize).min(end);
        // One counter per byte value, no branches: the map can be millions of pages.
        let mut by_value = [0u64; 256];
        let slice = &self.pages[start..end];
        let mut chunks = slice.chunks_exact(16);
        for chunk in &mut chunks {
            // Runs of one state are the common case: count them without a per-page
            // increment chain on one counter.
            let first = chunk[0].load(Ordering::Relaxed);
            if chunk.iter().all(|p| p.load(Ordering::Relaxed) == first) {
                by_value[usize::from(first)] += 16;
            } else {
                for p in chunk {
                    by_value[usize::from(p.load(Ordering::Relaxed))] += 1;
                }
            }
        }
        for p in chunks.remainder() {
            by_value[usize::from(p.load(Ordering::Relaxed))] += 1;
        }
        let mut t = Tally::default();
        for (v, &n) in by_value.iter().enumerate().filter(|(_, n)| **n > 0) {
            t.by_state[PageState::from_u8(v as u8) as usize] += n;
            if v as u8 & INJECTED != 0 {
                t.injected += n;
            }
        }
        t
    }
}

/// Page counts by state over a range, from [`PageStateMap::tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Indexed by `PageState as usize`: missing, requested, demand, push, boot, prefetch.
    pub by_state: [u64; 6],
    pub injected: u64,
}

impl Tally {
    pub fn get(&self, s: PageState) -> u64 {
        self.by_state[s as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_claimed_once() {
        let m = PageStateMap::new(8, 2);
        assert_eq!(m.get(0), PageState::Boot);
        assert!(!m.claim(1), "boot pages are never claimed");
        assert!(m.claim(5));
        assert!(!m.claim(5));
        m.set_filled(5, PageState::FilledByDemand);
        assert!(m.get(5).is_present());
        assert!(!m.claim(5));
        assert!(!m.was_injected(5));
        assert!(m.take_page(5));
        m.release_taken(5);
        assert!(!m.take_page(5), "a missing page cannot be taken");
        assert!(m.claim(5));
        m.set_filled(5, PageState::FilledByPush);
        assert!(m.was_injected(5), "the injected mark survives a refetch");
        assert_eq!(m.get(5), PageState::FilledByPush);
        let all = m.tally(0..8);
        assert_eq!(all.by_state, [5, 0, 0, 1, 2, 0]);
        assert_eq!(all.injected, 1);
        assert_eq!(
            m.tally(4..100).get(PageState::FilledByPush),
            1,
            "clipped to the map"
        );
        assert_eq!(m.tally(6..8).by_state, [2, 0, 0, 0, 0, 0]);
        // A prefetched page is present, and counted as such.
        assert!(m.claim(6));
        m.set_filled(6, PageState::FilledByPrefetch);
        assert!(m.get(6).is_present());
        assert_eq!(m.tally(6..8).get(PageState::FilledByPrefetch), 1);
    }
}
