//! The port-I/O protocol between a workload and the host. Each report is one
//! `out imm8, eax`, so the host sees it as a KVM_EXIT_IO with four bytes of data.

/// Progress: the guest's own access counter divided by [`PROGRESS_EVERY`].
pub const PROGRESS: u16 = 0x10;
/// Verify mismatch: the guest page number (gpa >> 12) whose content was wrong.
pub const VERIFY_ERROR: u16 = 0x11;
/// A finite workload finished: the value is the number of accesses it made.
pub const DONE: u16 = 0x12;

/// log2 of the accesses between two progress reports.
pub const PROGRESS_SHIFT: u32 = 12;
/// Accesses between two progress reports.
pub const PROGRESS_EVERY: u64 = 1 << PROGRESS_SHIFT;

/// The console form ([`crate::guest::Reports::Console`]): one byte a report, the vCPU
/// index in the low six bits and the kind in the top two, so reports of vCPUs writing at
/// once never interleave. A progress byte stands for [`PROGRESS_EVERY`] more accesses.
pub const CONSOLE_PROGRESS: u8 = 0x00;
pub const CONSOLE_VERIFY_ERROR: u8 = 0x40;
pub const CONSOLE_DONE: u8 = 0x80;
/// The vCPU reached its workload (sent once, by the boot code).
pub const CONSOLE_STARTED: u8 = 0xC0;
/// vCPUs the console form can name.
pub const CONSOLE_MAX_VCPUS: usize = 64;

/// One console byte, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleReport {
    Progress { vcpu: usize },
    VerifyMismatch { vcpu: usize },
    Done { vcpu: usize },
    Started { vcpu: usize },
}

impl ConsoleReport {
    pub fn decode(byte: u8) -> ConsoleReport {
        let vcpu = usize::from(byte & 0x3F);
        match byte & 0xC0 {
            CONSOLE_PROGRESS => ConsoleReport::Progress { vcpu },
            CONSOLE_VERIFY_ERROR => ConsoleReport::VerifyMismatch { vcpu },
            CONSOLE_DONE => ConsoleReport::Done { vcpu },
            _ => ConsoleReport::Started { vcpu },
        }
    }
}

/// One report from the guest, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Total accesses so far (a multiple of [`PROGRESS_EVERY`]).
    Progress {
        accesses: u64,
    },
    VerifyMismatch {
        gpa: u64,
    },
    Done {
        accesses: u64,
    },
    /// A write to a port the protocol does not define.
    Unknown {
        port: u16,
        value: u32,
    },
}

/// Decodes a KVM_EXIT_IO write.
pub fn decode(port: u16, data: &[u8]) -> Report {
    let mut raw = [0u8; 4];
    let n = data.len().min(4);
    raw[..n].copy_from_slice(&data[..n]);
    let value = u32::from_le_bytes(raw);
    match port {
        PROGRESS => Report::Progress {
            accesses: u64::from(value) << PROGRESS_SHIFT,
        },
        VERIFY_ERROR => Report::VerifyMismatch {
            gpa: u64::from(value) << 12,
        },
        DONE => Report::Done {
            accesses: u64::from(value),
        },
        _ => Report::Unknown { port, value },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_bytes_name_the_vcpu_and_the_kind() {
        assert_eq!(
            ConsoleReport::decode(CONSOLE_PROGRESS | 5),
            ConsoleReport::Progress { vcpu: 5 }
        );
        assert_eq!(
            ConsoleReport::decode(CONSOLE_VERIFY_ERROR | 63),
            ConsoleReport::VerifyMismatch { vcpu: 63 }
        );
        assert_eq!(
            ConsoleReport::decode(CONSOLE_DONE),
            ConsoleReport::Done { vcpu: 0 }
        );
        assert_eq!(
            ConsoleReport::decode(CONSOLE_STARTED | 1),
            ConsoleReport::Started { vcpu: 1 }
        );
    }

    #[test]
    fn decodes_each_report() {
        assert_eq!(
            decode(PROGRESS, &3u32.to_le_bytes()),
            Report::Progress {
                accesses: 3 * PROGRESS_EVERY
            }
        );
        assert_eq!(
            decode(VERIFY_ERROR, &0x345u32.to_le_bytes()),
            Report::VerifyMismatch { gpa: 0x345000 }
        );
        assert_eq!(
            decode(0x99, &[7]),
            Report::Unknown {
                port: 0x99,
                value: 7
            }
        );
    }
}
