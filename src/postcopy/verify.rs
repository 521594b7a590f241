//! Verification: proving nothing was lost. Every data page of the destination is compared
//! with the source's (in this process, or fetched from a source in another), and the verify
//! guest's own reports are counted.

use std::sync::atomic::Ordering;

use super::PostcopyError;
use super::source::PageSource;
use crate::vmm::layout::{self, PAGE_SIZE};
use crate::vmm::{GuestRam, Vm};

/// Pages the verify guest found wrong on `vm`.
pub(super) fn guest_errors(vm: &Vm) -> u64 {
    vm.vcpus()
        .iter()
        .map(|v| v.stats().verify_mismatches.load(Ordering::Relaxed))
        .sum()
}

/// Compares the data pages of two RAMs: (pages that differ, pages compared). The boot
/// region is left out: the CPU sets accessed and dirty bits in the guest's page tables.
pub(super) fn compare_data(a: &GuestRam, b: &GuestRam, skip_qwords: &[usize]) -> (u64, u64) {
    let mut differ = 0;
    for page in layout::BOOT_PAGES..a.pages() {
        let gpa = page * PAGE_SIZE;
        // SAFETY: the source is fully present, and every destination page has been filled.
        let same = unsafe { same_except(a.page_slice(gpa), b.page_slice(gpa), skip_qwords) };
        differ += u64::from(!same);
    }
    (differ, a.pages() - layout::BOOT_PAGES)
}

/// [`compare_data`] against a source in another process, fetched a chunk at a time.
pub(super) fn compare_fetched(
    source: &dyn PageSource,
    dest: &GuestRam,
    skip_qwords: &[usize],
) -> Result<(u64, u64), PostcopyError> {
    const CHUNK_PAGES: u64 = 256;
    let mut buf = vec![0u8; (CHUNK_PAGES * PAGE_SIZE) as usize];
    let mut sums = Vec::new();
    let mut differ = 0;
    let mut page = layout::BOOT_PAGES;
    while page < dest.pages() {
        let count = CHUNK_PAGES.min(dest.pages() - page);
        let chunk = &mut buf[..(count * PAGE_SIZE) as usize];
        sums.clear();
        source.fetch(page * PAGE_SIZE, chunk, &mut sums)?;
        for (i, theirs) in chunk.chunks(PAGE_SIZE as usize).enumerate() {
            // SAFETY: every destination page has been filled before the checks.
            let ours = unsafe { dest.page_slice((page + i as u64) * PAGE_SIZE) };
            differ += u64::from(!same_except(theirs, ours, skip_qwords));
        }
        page += count;
    }
    Ok((differ, dest.pages() - layout::BOOT_PAGES))
}

/// Whether two pages are equal but for the qwords at `skip` (ascending byte offsets).
fn same_except(a: &[u8], b: &[u8], skip: &[usize]) -> bool {
    let mut from = 0;
    for &at in skip {
        if a.get(from..at) != b.get(from..at) {
            return false;
        }
        from = at + 8;
    }
    a.get(from..) == b.get(from..)
}

#[cfg(test)]
mod tests {
    use super::same_except;

    #[test]
    fn pages_compare_equal_but_for_the_skipped_qwords() {
        let a = vec![7u8; 4096];
        let mut b = a.clone();
        b[0] = 1;
        b[4090] = 1;
        assert!(same_except(&a, &b, &[0, 4088]));
        assert!(!same_except(&a, &b, &[0]));
        b[8] = 1;
        assert!(!same_except(&a, &b, &[0, 4088]));
        assert!(same_except(&a, &a, &[]));
    }
}
