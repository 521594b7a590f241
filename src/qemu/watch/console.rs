//! The debug console of faultline's own guest: one byte a report (see
//! [`crate::guest::ports::ConsoleReport`]), counted per vCPU.

use crate::guest::ports::{ConsoleReport, PROGRESS_EVERY};

/// Per-vCPU guest progress, from the console of faultline's own guest.
#[derive(Debug, Default, Clone)]
pub(super) struct Console {
    pub(super) progress: Vec<u64>,
    pub(super) started: Vec<bool>,
    pub(super) mismatches: u64,
}

impl Console {
    pub(super) fn new(vcpus: usize) -> Console {
        Console {
            progress: vec![0; vcpus],
            started: vec![false; vcpus],
            mismatches: 0,
        }
    }

    pub(super) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match ConsoleReport::decode(b) {
                ConsoleReport::Progress { vcpu } => {
                    if let Some(p) = self.progress.get_mut(vcpu) {
                        *p += PROGRESS_EVERY;
                    }
                }
                ConsoleReport::VerifyMismatch { .. } => self.mismatches += 1,
                ConsoleReport::Started { vcpu } => {
                    if let Some(s) = self.started.get_mut(vcpu) {
                        *s = true;
                    }
                }
                ConsoleReport::Done { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_bytes_count_progress_and_mismatches_per_vcpu() {
        let mut c = Console::new(2);
        c.feed(&[0xC0, 0xC1, 0x00, 0x01, 0x01, 0x41, 0x7F]);
        assert_eq!(c.started, vec![true, true]);
        assert_eq!(c.progress, vec![PROGRESS_EVERY, 2 * PROGRESS_EVERY]);
        assert_eq!(c.mismatches, 2);
    }
}
