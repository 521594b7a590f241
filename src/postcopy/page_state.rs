//! The state of every guest page on the destination, one atomic byte per page. Claiming a
//! missing page is a compare-and-swap, so exactly one party ever copies a page in.

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
}

impl PageState {
    fn from_u8(v: u8) -> PageState {
        match v {
            0 => PageState::Missing,
            1 => PageState::Requested,
            2 => PageState::FilledByDemand,
            3 => PageState::FilledByPush,
            _ => PageState::Boot,
        }
    }

    pub fn is_present(self) -> bool {
        matches!(
            self,
            PageState::FilledByDemand | PageState::FilledByPush | PageState::Boot
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

    pub fn get(&self, page: u64) -> PageState {
        self.pages.get(page as usize).map_or(PageState::Boot, |p| {
            PageState::from_u8(p.load(Ordering::Acquire))
        })
    }

    /// Claims a missing page for fetching. False if someone else has it or it is present.
    pub fn claim(&self, page: u64) -> bool {
        self.pages.get(page as usize).is_some_and(|p| {
            p.compare_exchange(
                PageState::Missing as u8,
                PageState::Requested as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        })
    }

    /// Marks a claimed page as filled.
    pub fn set_filled(&self, page: u64, by: PageState) {
        if let Some(p) = self.pages.get(page as usize) {
            p.store(by as u8, Ordering::Release);
        }
    }

    /// Returns a claimed page to missing (its fetch failed or was abandoned).
    pub fn unclaim(&self, page: u64) {
        if let Some(p) = self.pages.get(page as usize) {
            p.store(PageState::Missing as u8, Ordering::Release);
        }
    }

    /// Makes a present page missing again; returns whether it was present.
    pub fn drop_page(&self, page: u64) -> bool {
        match self.pages.get(page as usize) {
            Some(p) => {
                let old = PageState::from_u8(p.load(Ordering::Acquire));
                if matches!(old, PageState::FilledByDemand | PageState::FilledByPush) {
                    p.store(PageState::Missing as u8, Ordering::Release);
                    true
                } else {
                    false
                }
            }
            None => false,
        }
    }

    /// Pages in each state: (missing, requested, demand, push, boot).
    pub fn counts(&self) -> [u64; 5] {
        let mut c = [0u64; 5];
        for p in &self.pages {
            c[p.load(Ordering::Relaxed).min(4) as usize] += 1;
        }
        c
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
        assert!(m.drop_page(5));
        assert!(m.claim(5));
        assert_eq!(m.counts(), [5, 1, 0, 0, 2]);
    }
}
