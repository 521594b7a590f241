//! What a vCPU thread shares with everyone else, lock-free: its run state, its thread id,
//! its counters (progress, fault exits by path, its own span), and why it failed.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use super::fault::ExitPath;
use crate::guest::ports::Report;

/// The state a vCPU thread is in, as it last published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RunState {
    Running = 0,
    Paused = 1,
    Stopped = 2,
    /// A finite workload reported DONE; the vCPU no longer runs.
    Done = 3,
    /// An exit the thread could not handle; see [`VcpuHandle::failure`].
    Failed = 4,
}

impl RunState {
    fn from_u8(v: u8) -> RunState {
        match v {
            0 => RunState::Running,
            1 => RunState::Paused,
            2 => RunState::Stopped,
            3 => RunState::Done,
            _ => RunState::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopped => "stopped",
            RunState::Done => "done",
            RunState::Failed => "failed",
        }
    }
}

/// Lock-free per-vCPU counters, written by the vCPU thread, read by anyone.
#[derive(Debug)]
pub struct VcpuStats {
    /// The guest's own access count at its last progress report.
    pub guest_accesses: AtomicU64,
    pub progress_reports: AtomicU64,
    pub verify_mismatches: AtomicU64,
    /// Gpa of the first page the guest found wrong (u64::MAX if none).
    pub first_mismatch_gpa: AtomicU64,
    /// All KVM_RUN returns, kicks included.
    pub exits: AtomicU64,
    /// Fault exits resolved on this thread, by [`ExitPath::index`].
    pub fault_exits: [AtomicU64; 4],
    /// Accesses the guest reported with DONE.
    pub done_accesses: AtomicU64,
    /// When the vCPU thread first left pause for the guest, and when it saw DONE, in
    /// [`clock_ns`] (0: not yet): a run's own span, free of its controller's polling.
    pub first_resumed_ns: AtomicU64,
    pub done_ns: AtomicU64,
}

/// Nanoseconds since the first call in this process, plus one so that no reading is 0:
/// the clock of [`VcpuStats`] spans.
pub fn clock_ns() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
        + 1
}

impl Default for VcpuStats {
    fn default() -> Self {
        VcpuStats {
            guest_accesses: AtomicU64::new(0),
            progress_reports: AtomicU64::new(0),
            verify_mismatches: AtomicU64::new(0),
            first_mismatch_gpa: AtomicU64::new(u64::MAX),
            exits: AtomicU64::new(0),
            fault_exits: Default::default(),
            done_accesses: AtomicU64::new(0),
            first_resumed_ns: AtomicU64::new(0),
            done_ns: AtomicU64::new(0),
        }
    }
}

/// The fault path the given vCPUs took most often, if they took any.
pub fn dominant_exit_path<'a>(stats: impl IntoIterator<Item = &'a VcpuStats>) -> Option<ExitPath> {
    let mut counts = [0u64; 4];
    for s in stats {
        for (c, n) in counts.iter_mut().zip(&s.fault_exits) {
            *c += n.load(Ordering::Relaxed);
        }
    }
    ExitPath::ALL
        .into_iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .max_by_key(|(_, n)| *n)
        .map(|(p, _)| p)
}

impl VcpuStats {
    pub fn fault_exits_total(&self) -> u64 {
        self.fault_exits
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub(super) fn record(&self, report: Report) -> Option<RunState> {
        match report {
            Report::Progress { accesses } => {
                self.guest_accesses.store(accesses, Ordering::Relaxed);
                self.progress_reports.fetch_add(1, Ordering::Relaxed);
            }
            Report::VerifyMismatch { gpa } => {
                self.verify_mismatches.fetch_add(1, Ordering::Relaxed);
                let _ = self.first_mismatch_gpa.compare_exchange(
                    u64::MAX,
                    gpa,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Report::Done { accesses } => {
                self.done_ns.store(clock_ns(), Ordering::Relaxed);
                self.done_accesses.store(accesses, Ordering::Relaxed);
                return Some(RunState::Done);
            }
            Report::Unknown { .. } => {}
        }
        None
    }
}

/// What the vCPU thread and its controller share.
#[derive(Debug)]
// Lines of its own: the vCPU thread writes its stats on every exit, and the shared states
// of two vCPUs are allocated side by side.
#[repr(align(128))]
pub struct VcpuShared {
    pub id: usize,
    pub stats: VcpuStats,
    pub(super) state: AtomicU8,
    /// Kernel thread id of the vCPU thread (0 until it starts), to attribute uffd faults.
    pub(super) tid: AtomicU32,
    pub(super) failure: Mutex<Option<String>>,
}

impl VcpuShared {
    /// A vCPU's shared part before its thread starts: paused, no thread id yet.
    pub(crate) fn new(id: usize) -> VcpuShared {
        VcpuShared {
            id,
            stats: VcpuStats::default(),
            state: AtomicU8::new(RunState::Paused as u8),
            tid: AtomicU32::new(0),
            failure: Mutex::new(None),
        }
    }

    pub fn state(&self) -> RunState {
        RunState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn thread_id(&self) -> u32 {
        self.tid.load(Ordering::Acquire)
    }

    pub(super) fn publish(&self, s: RunState) {
        self.state.store(s as u8, Ordering::Release);
    }
}
