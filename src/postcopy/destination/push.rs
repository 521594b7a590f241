//! The background push: threads that stream missing pages nobody asked for yet, the
//! neighbours of recent faults first, yielding to demand fetches and within the rate limit.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Cause, Destination, PAGE};
use crate::postcopy::PostcopyError;
use crate::units::Rate;
use crate::vmm::layout::{BOOT_PAGES, PAGE_SIZE};

/// Largest contiguous run the push copies in one ioctl.
pub(super) const PUSH_BATCH_PAGES: u64 = 64;

/// Under a rate limit, the most of the budget one push batch reserves: a demand fetch
/// queues behind at most this much per push thread.
pub(super) const PUSH_BATCH_BUDGET: Duration = Duration::from_millis(1);

/// Pages after a demand fault that the push visits first.
pub(super) const NEIGHBOURHOOD_PAGES: u64 = 256;

impl Destination {
    /// Claims up to `max` (at most `PUSH_BATCH_PAGES`) contiguous missing pages from `from`;
    /// returns the first page and count, or None if none is missing from there to the end.
    pub(super) fn claim_run(&self, from: u64, max: u64) -> Option<(u64, u64)> {
        let total = self.pages.len();
        let mut p = from.max(BOOT_PAGES);
        while p < total {
            if self.pages.claim(p) {
                let mut n = 1;
                let end = self.part_end(p);
                while n < max && p + n < end && self.pages.claim(p + n) {
                    n += 1;
                }
                return Some((p, n));
            }
            p += 1;
        }
        None
    }

    /// One of `parts` push threads streaming missing pages until stopped: neighbours of
    /// recent faults first, then in address order from its own share of memory (so the
    /// threads do not fight over pages), then whatever is left anywhere. Demand fetches
    /// go first: the push yields while any wait.
    pub fn push_part(&self, part: u64, parts: u64) -> Result<(), PostcopyError> {
        let data = self.pages.len() - BOOT_PAGES;
        let mut cursor = BOOT_PAGES + data / parts.max(1) * part;
        let mut buf = Vec::with_capacity(PUSH_BATCH_PAGES as usize * PAGE);
        let mut sums = Vec::with_capacity(PUSH_BATCH_PAGES as usize);
        let mut near: Option<(u64, u64)> = None;
        while !self.stop.load(Ordering::Acquire) {
            if !self.push_enabled() || self.demand_waiting.get() > 0 || self.missing() == 0 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let hint = self.push_hint.swap(0, Ordering::Relaxed);
            if hint > 0 {
                near = Some((hint - 1, hint - 1 + NEIGHBOURHOOD_PAGES));
            }
            let batch = push_batch_pages(self.throttle.rate());
            let _gate = self.fill_gate.read();
            let claimed = match near {
                Some((from, end)) => match self.claim_run(from, batch) {
                    Some((p, n)) if p < end => {
                        near = Some((p + n, end));
                        Some((p, n))
                    }
                    other => {
                        near = None;
                        other
                    }
                },
                None => None,
            }
            .or_else(|| self.claim_run(cursor, batch))
            .or_else(|| self.claim_run(BOOT_PAGES, batch));
            let Some((page, count)) = claimed else {
                continue;
            };
            if near.is_none() {
                cursor = page + count;
            }
            if let Err(e) = self.fetch_and_copy(page, count, Cause::Push, &mut buf, &mut sums) {
                self.abandon(page..page + count, &e);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Pages in one push batch: `PUSH_BATCH_PAGES` at full speed, and under a rate limit no
/// more than `PUSH_BATCH_BUDGET` of it.
fn push_batch_pages(rate: Rate) -> u64 {
    match rate.bytes_per_sec() {
        None => PUSH_BATCH_PAGES,
        Some(rate) => {
            let budget = u128::from(rate) * PUSH_BATCH_BUDGET.as_nanos() / 1_000_000_000;
            (budget as u64 / PAGE_SIZE).clamp(1, PUSH_BATCH_PAGES)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_batches_take_a_millisecond_of_a_rate_limit_at_most() {
        assert_eq!(push_batch_pages(Rate::Unlimited), PUSH_BATCH_PAGES);
        // 40 MiB/s: 41.9 KB a millisecond, 10 pages.
        assert_eq!(push_batch_pages(Rate::BytesPerSec(40 << 20)), 10);
        assert_eq!(push_batch_pages(Rate::BytesPerSec(1 << 20)), 1);
        assert_eq!(
            push_batch_pages(Rate::BytesPerSec(10 << 30)),
            PUSH_BATCH_PAGES
        );
    }
}
