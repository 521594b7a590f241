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
