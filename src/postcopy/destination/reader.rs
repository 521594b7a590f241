//! The uffd mode's handler threads: each reads faults from its userfaultfd and fills
//! them, timing every vCPU's stall; a reader shared by vCPUs holds the stall of a page in
//! flight open until it lands (deferred.rs) rather than wait for it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Demand, Destination, deferred};
use crate::contract::Prefetch;
use crate::postcopy::PostcopyError;
use crate::uffd::PageFault;

impl Destination {
    /// Handles faults read from userfaultfd `index` until stopped (the `uffd` mode).
    pub fn serve_uffd_of(&self, index: usize) -> Result<(), PostcopyError> {
        let uffd = self
            .uffds
            .get(index)
            .ok_or(PostcopyError::NoUserfaultfd(index))?;
        let mut faults = [PageFault {
            address: 0,
            write: false,
            thread_id: 0,
        }; 32];
        let base = self.ram.host_base();
        let spin = Duration::from_nanos(self.reader_spin_ns.load(Ordering::Relaxed));
        // A page in flight (claimed by the push) wakes its vCPU only when it lands: a
        // reader of one vCPU's faults waits for it, so the stall is timed whole; a reader
        // shared by vCPUs goes on to the next fault and holds that stall open until the
        // page lands (deferred.rs).
        let wait = self.readers_wait.load(Ordering::Relaxed);
        let listener = match wait || !self.telemetry.enabled() {
            true => None,
            false => self.landings.join(),
        };
        let mut held = listener.map(|l| (l, deferred::HeldStalls::new(l, &self.telemetry)));
        let mut last_fault = std::time::Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            // A page may have landed while its stall was being held: end it before sleeping.
            if let Some((_, h)) = &mut held
                && !h.is_empty()
            {
                h.end_landed(&self.pages);
            }
            // No clock read per loop when there is no spinning to time.
            if spin.is_zero() || last_fault.elapsed() >= spin {
                let mut pfds = [
                    libc::pollfd {
                        fd: std::os::fd::AsRawFd::as_raw_fd(&**uffd),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: listener.map_or(-1, |l| l.fd()),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: two valid pollfds (a negative fd is skipped); a timeout lets the
                // loop notice `stop`.
                let ready = unsafe { libc::poll(pfds.as_mut_ptr(), 2, 20) };
                if let Some((l, h)) = &mut held
                    && pfds[1].revents & libc::POLLIN != 0
                {
                    l.consume();
                    h.end_landed(&self.pages);
                }
                if ready <= 0 || pfds[0].revents & libc::POLLIN == 0 {
                    continue;
                }
            }
            let n = uffd.read_faults(&mut faults)?;
            if n > 0 && !spin.is_zero() {
                last_fault = std::time::Instant::now();
            }
            for f in &faults[..n] {
                let gpa = f.address.wrapping_sub(base);
                // Whose fault: for the figures, and for the stream detector of each vCPU.
                let vcpu = if self.telemetry.enabled() || self.prefetch() == Prefetch::Adaptive {
                    self.vcpu_of_tid(f.thread_id)
                } else {
                    None
                };
                if let Some((_, h)) = &mut held {
                    h.new_fault_of(vcpu);
                }
                let stall = self.telemetry.stall_begin(vcpu, gpa);
                match (self.demand(vcpu, gpa, wait)?, &mut held) {
                    (Demand::InFlight, Some((_, h))) => h.hold(stall, gpa),
                    _ => self.telemetry.stall_end(stall),
                }
            }
        }
        Ok(())
    }
}
