//! What a workload does, independent of how it is encoded.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Offset of the verify workload's second stamp: the last qword of the page, to catch
/// torn pages.
pub const LAST_QWORD: i32 = 4096 - 8;

/// The order in which a vCPU visits the pages of its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Page after page, wrapping around.
    Sequential,
    /// Uniformly random pages (xorshift64 in a register).
    Random,
    /// Seven accesses in eight go to a small hot set at the start of the memory.
    Hotspot,
    /// Every `stride`-th page, wrapping around.
    Stride,
    /// Sequential passes that check each page's generation stamp and write the next one.
    Verify,
    /// One sequential write pass over the memory, then a `DONE` report (the benchmark).
    Touch,
}

/// What a vCPU does at each page it visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Read,
    Write,
    /// Alternating reads and writes.
    Mixed,
}

/// Whether vCPUs share memory or each owns a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    #[default]
    Own,
    Shared,
}

/// A complete workload description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub pattern: Pattern,
    pub op: Operation,
    pub sharing: Sharing,
    /// Size of the hot set of [`Pattern::Hotspot`], in pages.
    pub hot_pages: u64,
    /// Distance between visits of [`Pattern::Stride`], in pages.
    pub stride_pages: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkloadError {
    #[error(
        "unknown workload '{0}': expected PATTERN[-OP] with PATTERN one of sequential, random, hotspot, stride and OP one of read, write, mixed; or verify; or touch"
    )]
    Unknown(String),
    #[error("workload '{0}' always uses its own operation; drop the '-{1}'")]
    FixedOperation(String, String),
}

impl Workload {
    pub fn new(pattern: Pattern, op: Operation) -> Workload {
        Workload {
            pattern,
            op,
            sharing: Sharing::Own,
            hot_pages: 64,
            stride_pages: 17,
        }
    }

    /// Every named workload, as accepted by `FromStr`.
    pub fn all_names() -> Vec<String> {
        let mut names = Vec::new();
        for p in ["sequential", "random", "hotspot", "stride"] {
            for o in ["read", "write", "mixed"] {
                names.push(format!("{p}-{o}"));
            }
        }
        names.push("verify".into());
        names.push("touch".into());
        names
    }

    /// Byte offsets in a page of the qwords the workload may write (every write of every
    /// workload lands on one of these); the rest of each page keeps what arrived, so a run
    /// can compare even a writing guest's memory with the source image.
    pub fn written_qwords(&self) -> &'static [usize] {
        const FIRST_AND_LAST: [usize; 2] = [0, LAST_QWORD as usize];
        match self.pattern {
            Pattern::Verify => &FIRST_AND_LAST,
            _ if self.writes() => &FIRST_AND_LAST[..1],
            _ => &[],
        }
    }

    /// Whether the workload writes guest memory.
    pub fn writes(&self) -> bool {
        matches!(self.pattern, Pattern::Verify | Pattern::Touch) || self.op != Operation::Read
    }

    /// Whether the workload ends by itself.
    pub fn is_finite(&self) -> bool {
        self.pattern == Pattern::Touch
    }
}

impl FromStr for Workload {
    type Err = WorkloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (pattern, op) = match s.split_once('-') {
            Some((p, o)) => (p, Some(o)),
            None => (s, None),
        };
        let pattern = match pattern {
            "sequential" | "seq" => Pattern::Sequential,
            "random" => Pattern::Random,
            "hotspot" => Pattern::Hotspot,
            "stride" => Pattern::Stride,
            "verify" => Pattern::Verify,
            "touch" => Pattern::Touch,
            _ => return Err(WorkloadError::Unknown(s.into())),
        };
        let fixed = matches!(pattern, Pattern::Verify | Pattern::Touch);
        let op = match (op, fixed) {
            (Some(o), true) => return Err(WorkloadError::FixedOperation(s.into(), o.into())),
            (None, true) => Operation::Write,
            (None, false) => Operation::Mixed,
            (Some("read"), false) => Operation::Read,
            (Some("write"), false) => Operation::Write,
            (Some("mixed"), false) => Operation::Mixed,
            (Some(_), false) => return Err(WorkloadError::Unknown(s.into())),
        };
        Ok(Workload::new(pattern, op))
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Mixed => "mixed",
        };
        match self.pattern {
            Pattern::Verify => write!(f, "verify"),
            Pattern::Touch => write!(f, "touch"),
            Pattern::Sequential => write!(f, "sequential-{op}"),
            Pattern::Random => write!(f, "random-{op}"),
            Pattern::Hotspot => write!(f, "hotspot-{op}"),
            Pattern::Stride => write!(f, "stride-{op}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for name in Workload::all_names() {
            let w: Workload = name.parse().unwrap();
            assert_eq!(w.to_string(), name);
        }
    }

    #[test]
    fn bare_pattern_means_mixed() {
        let w: Workload = "hotspot".parse().unwrap();
        assert_eq!(w.op, Operation::Mixed);
    }

    #[test]
    fn rejects_unknown_names_and_ops() {
        assert!(matches!(
            "zigzag".parse::<Workload>(),
            Err(WorkloadError::Unknown(_))
        ));
        assert!(matches!(
            "random-erase".parse::<Workload>(),
            Err(WorkloadError::Unknown(_))
        ));
        assert!(matches!(
            "verify-read".parse::<Workload>(),
            Err(WorkloadError::FixedOperation(..))
        ));
    }
}
