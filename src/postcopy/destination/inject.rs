//! Making a range missing again without losing data: its content goes back to the source,
//! then the pages leave the guest's view and fault on their next access.
//!
//! Shared RAM pauses the guest only to take the pages (claimed, so a fault on one waits)
//! and unmap them from its view, which stops its writes; no vCPU is then between a fill
//! and the access it completes against guest memory (exit mode), which an unmapped page
//! would fault. Their content is still in the memfd, and goes back to the source from the
//! fill view while the guest runs on; then they are missing. Only vCPUs that touch the
//! range wait, as for any page in flight. Anonymous RAM has no second view: its pages go
//! back, straight from guest memory, while the guest stays paused, and are then dropped.

use std::time::{Duration, Instant};

use super::Destination;
use crate::contract::Backing;
use crate::postcopy::PostcopyError;
use crate::units::GpaRange;
use crate::vmm::layout::{BOOT_PAGES, PAGE_SHIFT, PAGE_SIZE};

/// What an injection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    pub pages: u64,
    /// How long the guest was paused for it.
    pub paused: Duration,
    /// How long the range's pages were out of the guest's reach before they were missing
    /// (a fault on one waited at most this).
    pub unavailable: Duration,
}

impl Destination {
    /// Makes `range` missing again without losing data: the destination's content of every
    /// present page goes back to the source first. `guest(true)` pauses every vCPU and
    /// `guest(false)` resumes them; they are paused only for what needs it.
    pub fn inject(
        &self,
        range: GpaRange,
        guest: &mut dyn FnMut(bool) -> Result<(), PostcopyError>,
    ) -> Result<Injected, PostcopyError> {
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
        let started = Instant::now();
        // Pages made missing are counted as such even when a later run fails.
        let mut made_missing = 0;
        let mut hold = Hold {
            guest,
            since: None,
            paused: Duration::ZERO,
        };
        let r = match self.ram.backing() {
            Backing::Shared => self.inject_shared(first, end, &mut made_missing, &mut hold),
            Backing::Anonymous => hold.pause().and_then(|()| {
                let r = self.inject_paused(first, end, &mut made_missing);
                hold.resume().and(r)
            }),
        };
        let paused = hold.paused;
        self.missing.add(made_missing);
        self.telemetry.run.pages_injected.add(made_missing);
        r?;
        Ok(Injected {
            pages: made_missing,
            paused,
            unavailable: started.elapsed(),
        })
    }

    /// Runs of present pages in `[first, end)`, each taken by `take` (false: not present),
    /// none across two userfaultfds' parts (one ioctl serves a run).
    fn present_runs(&self, first: u64, end: u64, take: impl Fn(u64) -> bool) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for p in first..end {
            if !take(p) {
                continue;
            }
            match runs.last_mut() {
                Some((start, n)) if *start + *n == p && self.part_start(p) <= *start => *n += 1,
                _ => runs.push((p, 1)),
            }
        }
        runs
    }

    fn inject_shared(
        &self,
        first: u64,
        end: u64,
        missing: &mut u64,
        hold: &mut Hold,
    ) -> Result<(), PostcopyError> {
        // Taken and out of the guest's view together, with no fill in between and no vCPU
        // running.
        hold.pause()?;
        let runs = {
            let gate = self.fill_gate.write();
            let runs = self.present_runs(first, end, |p| self.pages.take_page(p));
            for &(page, n) in &runs {
                if let Err(e) = self.unmap(page, n) {
                    // Mapped again, as they were: nothing is lost.
                    for &(p, k) in &runs {
                        self.give_back(p, k);
                    }
                    drop(gate);
                    hold.resume()?;
                    return Err(e);
                }
            }
            runs
        };
        hold.resume()?;
        for (i, &(page, n)) in runs.iter().enumerate() {
            let (gpa, len) = (page << PAGE_SHIFT, n * PAGE_SIZE);
            let fill = self
                .ram
                .fill_addr(gpa)
                .filter(|_| self.ram.contains(gpa, len))
                .ok_or_else(|| PostcopyError::Map {
                    gpa,
                    len,
                    why: "outside guest RAM".into(),
                })?;
            // SAFETY: the fill mapping holds the range (checked); the pages are taken, so
            // no fill writes them, and out of the guest's view, so the guest cannot.
            let content = unsafe { std::slice::from_raw_parts(fill as *const u8, len as usize) };
            if let Err(e) = self.source.put_back(gpa, content) {
                // The source has the runs before this one; this and the rest go back into
                // the guest's view as they were.
                for &(p, k) in &runs[i..] {
                    self.give_back(p, k);
                }
                for &(p, k) in &runs[..i] {
                    self.release(p, k);
                    *missing += k;
                }
                return Err(e.into());
            }
        }
        for &(page, n) in &runs {
            self.release(page, n);
            *missing += n;
        }
        Ok(())
    }

    /// The vCPUs are paused: the content goes back straight from guest memory.
    fn inject_paused(&self, first: u64, end: u64, missing: &mut u64) -> Result<(), PostcopyError> {
        let _gate = self.fill_gate.write();
        let runs = self.present_runs(first, end, |p| self.pages.get(p).is_present());
        for (page, n) in runs {
            let (gpa, len) = (page << PAGE_SHIFT, n * PAGE_SIZE);
            let host = self.ram.host_base() + gpa;
            // SAFETY: the range is inside guest RAM (checked by the caller), the vCPUs are
            // paused and no fill runs (the gate), so nothing writes it meanwhile.
            let content = unsafe { std::slice::from_raw_parts(host as *const u8, len as usize) };
            self.source.put_back(gpa, content)?;
            self.unmap(page, n)?;
            for q in page..page + n {
                *missing += u64::from(self.pages.drop_page(q));
            }
        }
        Ok(())
    }

    /// Takes `n` pages from `page` out of the guest's view (shared RAM keeps them in the
    /// memfd; anonymous RAM loses them): the next access faults to the userfaultfd.
    fn unmap(&self, page: u64, n: u64) -> Result<(), PostcopyError> {
        let host = self.ram.host_base() + (page << PAGE_SHIFT);
        // SAFETY: whole pages inside guest RAM.
        let r = unsafe {
            libc::madvise(
                host as *mut libc::c_void,
                (n * PAGE_SIZE) as usize,
                libc::MADV_DONTNEED,
            )
        };
        if r != 0 {
            return Err(PostcopyError::Drop(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Taken pages are missing now; vCPUs asleep on them try again and fault anew.
    fn release(&self, page: u64, n: u64) {
        for q in page..page + n {
            self.pages.release_taken(q);
        }
        self.wake_range(page, n);
    }

    /// Taken pages go back to the guest as they were (their content never left the memfd).
    fn give_back(&self, page: u64, n: u64) {
        let host = self.ram.host_base() + (page << PAGE_SHIFT);
        if let Ok(uffd) = self.uffd_for(page)
            && let Err(e) = uffd.continue_pages(host, n * PAGE_SIZE, true)
        {
            tracing::warn!("cannot map back pages of a failed injection: {e}");
        }
        for q in page..page + n {
            self.pages.restore_taken(q);
        }
    }

    fn wake_range(&self, page: u64, n: u64) {
        let host = self.ram.host_base() + (page << PAGE_SHIFT);
        if let Ok(uffd) = self.uffd_for(page)
            && let Err(e) = uffd.wake(host, n * PAGE_SIZE)
        {
            tracing::warn!("cannot wake faults on injected pages: {e}");
        }
    }
}

/// The guest's pause around the parts of an injection that need it, timed.
struct Hold<'a> {
    guest: &'a mut dyn FnMut(bool) -> Result<(), PostcopyError>,
    since: Option<Instant>,
    paused: Duration,
}

impl Hold<'_> {
    fn pause(&mut self) -> Result<(), PostcopyError> {
        self.since = Some(Instant::now());
        (self.guest)(true)
    }

    fn resume(&mut self) -> Result<(), PostcopyError> {
        let r = (self.guest)(false);
        if let Some(t) = self.since.take() {
            self.paused += t.elapsed();
        }
        r
    }
}
