//! The contract between a vCPU thread and whoever makes missing guest pages present
//! when KVM_RUN returns to the vCPU with a fault (the `exit` fault mode).

use serde::Serialize;

/// How the fault reached the vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitPath {
    /// KVM_EXIT_MEMORY_FAULT with KVM_MEMORY_EXIT_FLAG_USERFAULT (KVM_MEM_USERFAULT memslots).
    KvmUserfault,
    /// KVM_RUN failed with EFAULT and annotated the exit as KVM_EXIT_MEMORY_FAULT.
    MemoryFault,
    /// A data access surfaced as KVM_EXIT_MMIO at a RAM address (PVM hosts).
    Mmio,
    /// An instruction fetch surfaced as an emulation failure (PVM hosts).
    InstructionFetch,
}

impl ExitPath {
    pub const ALL: [ExitPath; 4] = [
        ExitPath::KvmUserfault,
        ExitPath::MemoryFault,
        ExitPath::Mmio,
        ExitPath::InstructionFetch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExitPath::KvmUserfault => "kvm-userfault",
            ExitPath::MemoryFault => "memory-fault",
            ExitPath::Mmio => "mmio",
            ExitPath::InstructionFetch => "instruction-fetch",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a fill found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// The page was missing and is now present.
    Filled,
    /// The page was already present (filled by someone else meanwhile, or never missing).
    AlreadyPresent,
}

/// Makes missing guest pages present on behalf of a vCPU thread.
pub trait MissingPageHandler: Send + Sync {
    /// Makes the page holding `gpa` present before returning. Runs on vCPU `vcpu`'s thread.
    fn fill(&self, vcpu: usize, gpa: u64, path: ExitPath) -> Result<FillOutcome, String>;
}
