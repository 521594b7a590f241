//! Making a range missing again without losing data: its content goes back to the source,
//! then the pages leave the guest's view and fault on their next access.

use super::Destination;
use crate::postcopy::PostcopyError;
use crate::units::GpaRange;
use crate::vmm::layout::{BOOT_PAGES, PAGE_SHIFT, PAGE_SIZE};

impl Destination {
    /// Makes `range` missing again without losing data: the destination's content of every
    /// present page goes back to the source first, then the pages are dropped. The caller
    /// must have paused the vCPUs. Returns the number of pages dropped.
    pub fn inject(&self, range: GpaRange) -> Result<u64, PostcopyError> {
        let first_data = BOOT_PAGES * PAGE_SIZE;
        if range.start < first_data || !self.ram.contains(range.start, range.len) {
            return Err(PostcopyError::BadRange {
                start: range.start,
                len: range.len,
                min: first_data,
                max: self.ram.size(),
            });
        }
        let first = range.start >> PAGE_SHIFT;
        let end = range.end().div_ceil(PAGE_SIZE);
        // No fill may be in flight while pages change hands.
        let _gate = self.fill_gate.write();
        let mut dropped = 0;
        let mut p = first;
        while p < end {
            if !self.pages.get(p).is_present() {
                p += 1;
                continue;
            }
            let run_start = p;
            while p < end && self.pages.get(p).is_present() {
                p += 1;
            }
            let gpa = run_start << PAGE_SHIFT;
            let len = (p - run_start) * PAGE_SIZE;
            let mut data = vec![0u8; len as usize];
            self.ram.read(gpa, &mut data)?;
            self.source.put_back(gpa, &data)?;
            let host = self.ram.host_base() + gpa;
            // SAFETY: drops whole pages inside guest RAM; the next access faults to the uffd.
            let r = unsafe {
                libc::madvise(host as *mut libc::c_void, len as usize, libc::MADV_DONTNEED)
            };
            if r != 0 {
                return Err(PostcopyError::Drop(std::io::Error::last_os_error()));
            }
            for q in run_start..p {
                dropped += u64::from(self.pages.drop_page(q));
            }
        }
        self.missing.add(dropped);
        self.telemetry.run.pages_injected.add(dropped);
        Ok(dropped)
    }
}
