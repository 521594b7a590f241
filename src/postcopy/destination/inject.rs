//! Making a range missing again without losing data: its content goes back to the source,
//! then the pages leave the guest's view and fault on their next access.
//!
//! The guest is paused only to take the pages (claimed, so a fault on one waits) and set
//! their content aside, out of its view, which stops its writes; no vCPU is then between
//! a fill and the access it completes against guest memory (exit mode), which a page gone
//! from its view would fault. The pages move, page tables and all, to a mapping of their
//! own (`MREMAP_DONTUNMAP`: the guest's range stays, empty and still registered). The
//! content then goes back to the source while the guest runs on, and the pages are
//! missing. Only vCPUs that touch the range wait, as for any page in flight.

use std::time::{Duration, Instant};

use super::Destination;
use crate::contract::Backing;
use crate::postcopy::PostcopyError;
use crate::uffd::Fill;
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
        let r = self.inject_taken(first, end, &mut made_missing, &mut hold);
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

    fn inject_taken(
        &self,
        first: u64,
        end: u64,
        missing: &mut u64,
        hold: &mut Hold,
    ) -> Result<(), PostcopyError> {
        // Taken and set aside together, with no fill in between and no vCPU running.
        hold.pause()?;
        let (runs, aside) = {
            let gate = self.fill_gate.write();
            let runs = self.present_runs(first, end, |p| self.pages.take_page(p));
            let mut aside = Vec::with_capacity(runs.len());
            for &(page, n) in &runs {
                match self.set_aside(page, n) {
                    Ok(a) => aside.push(a),
                    Err(e) => {
                        // Back in the guest's view as they were: nothing is lost.
                        for (i, &(p, k)) in runs.iter().enumerate() {
                            self.give_back(p, k, aside.get(i));
                        }
                        drop(gate);
                        hold.resume()?;
                        return Err(e);
                    }
                }
            }
            (runs, aside)
        };
        // A guest that cannot be resumed still gets its content back where it belongs.
        let resumed = hold.resume();
        self.put_back_taken(&runs, &aside, missing)?;
        resumed
    }

    /// Sends the content of taken `runs`, set aside in `aside`, back to the source; then
    /// they are missing. On a failure, the runs not sent go back into the guest's view.
    fn put_back_taken(
        &self,
        runs: &[(u64, u64)],
        aside: &[Aside],
        missing: &mut u64,
    ) -> Result<(), PostcopyError> {
        for (i, (&(page, _), content)) in runs.iter().zip(aside).enumerate() {
            if let Err(e) = self.source.put_back(page << PAGE_SHIFT, content.bytes()) {
                // The source has the runs before this one; this and the rest go back into
                // the guest's view as they were.
                for (&(p, k), a) in runs[i..].iter().zip(&aside[i..]) {
                    self.give_back(p, k, Some(a));
                }
                for &(p, k) in &runs[..i] {
                    self.release(p, k);
                    *missing += k;
                }
                return Err(e.into());
            }
        }
        for &(page, n) in runs {
            self.release(page, n);
            *missing += n;
        }
        Ok(())
    }

    /// Takes `n` taken pages from `page` out of the guest's view, their content kept where
    /// the returned [`Aside`] says: the next access faults to the userfaultfd. Moving the
    /// page tables costs far less than unmapping page by page, and leaves the range
    /// mapped, empty and registered; dropping the moved pages waits for the guest to run.
    fn set_aside(&self, page: u64, n: u64) -> Result<Aside, PostcopyError> {
        let (gpa, len) = (page << PAGE_SHIFT, n * PAGE_SIZE);
        let host = self.ram.host_base() + gpa;
        // SAFETY: whole pages inside guest RAM (checked by the caller), one VMA (a run
        // never spans two userfaultfds' parts); the kernel picks where they go.
        let moved = unsafe {
            libc::mremap(
                host as *mut libc::c_void,
                len as usize,
                len as usize,
                libc::MREMAP_MAYMOVE | libc::MREMAP_DONTUNMAP,
                // No address asked for, said: the kernel reads it whatever the flags.
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if moved != libc::MAP_FAILED {
            return Ok(Aside::Moved {
                addr: moved as u64,
                len,
            });
        }
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOMEM)) {
            return Err(PostcopyError::Drop(e));
        }
        // A kernel that cannot move them and keep the range (before 5.7; 5.13 for shared
        // memory), or no room for another mapping: shared RAM keeps them in the memfd,
        // anonymous RAM in a copy.
        let aside = match self.ram.backing() {
            Backing::Shared => Aside::InMemfd {
                addr: self.fill_range(gpa, len)?,
                len,
            },
            Backing::Anonymous => {
                // SAFETY: whole pages inside guest RAM; no vCPU runs and no fill.
                Aside::Copied(
                    unsafe { std::slice::from_raw_parts(host as *const u8, len as usize) }.to_vec(),
                )
            }
        };
        self.unmap(page, n)?;
        Ok(aside)
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

    /// Taken pages go back to the guest as they were; `aside`, where their content went
    /// (None: it never left the guest's view).
    fn give_back(&self, page: u64, n: u64, aside: Option<&Aside>) {
        let (host, len) = (self.ram.host_base() + (page << PAGE_SHIFT), n * PAGE_SIZE);
        let r = self.uffd_for(page).and_then(|uffd| {
            Ok(match (aside, self.ram.backing()) {
                (None, _) => Fill::Filled,
                // The memfd has them still.
                (Some(_), Backing::Shared) => uffd.continue_pages(host, len, true)?,
                // SAFETY: the content set aside is `len` readable bytes; the range is
                // registered and its pages taken, so nothing else fills them.
                (Some(a), Backing::Anonymous) => unsafe {
                    uffd.copy(host, a.bytes().as_ptr(), len, true)?
                },
            })
        });
        if let Err(e) = r {
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

/// Where the content of a run of taken pages is while it goes back to the source.
enum Aside {
    /// Moved to a mapping of its own, unmapped when dropped.
    Moved { addr: u64, len: u64 },
    /// Shared RAM, unmapped from the guest's view: still in the memfd, seen through the
    /// fill mapping.
    InMemfd { addr: u64, len: u64 },
    /// Anonymous RAM, unmapped: a copy.
    Copied(Vec<u8>),
}

impl Aside {
    fn bytes(&self) -> &[u8] {
        match *self {
            Aside::InMemfd { addr, len } | Aside::Moved { addr, len } => {
                // SAFETY: `len` mapped bytes at `addr` for as long as `self` lives; the
                // pages are taken and out of the guest's view, so nothing writes them.
                unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) }
            }
            Aside::Copied(ref copy) => copy,
        }
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        if let Aside::Moved { addr, len } = *self {
            // SAFETY: the mapping mremap made for these pages, used by nothing else now.
            unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
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
