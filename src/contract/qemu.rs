//! What a real QEMU migration adds to the common picture: QEMU's own state and figures,
//! and each vCPU's stall by three clocks.

use serde::{Deserialize, Serialize};

/// A real QEMU migration as the QEMU feed sees it, beyond the common picture: QEMU's own
/// state and figures, and each vCPU thread's off-CPU time from the kernel, beside
/// faultline's stall over the same window. `None` is "not known", never zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QemuView {
    /// QEMU's version, from its QMP greeting.
    pub version: String,
    /// The destination's migration state, as QEMU names it (`postcopy-active`, ...).
    pub state: String,
    /// Whether page counts come from the source's QMP (`--source-qmp`).
    pub pages_known: bool,
    /// Post-copy trace events read, and lines skipped as garbage.
    pub trace_events: u64,
    pub trace_garbage: u64,
    /// Faults of QEMU threads that are not vCPUs.
    pub non_vcpu_faults: u64,
    /// QEMU's own all-vCPUs blocktime, once it reports it (at completion).
    pub blocktime_ms: Option<f64>,
    /// The window the off-CPU times cover, in ms since the observer started.
    pub window_ms: Option<(u64, u64)>,
    pub vcpus: Vec<QemuVcpu>,
}

/// One vCPU's stall by three clocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QemuVcpu {
    pub vcpu: usize,
    pub thread_id: Option<u32>,
    /// faultline's stall (paired trace events) within the window.
    pub stall_ms: Option<f64>,
    /// The vCPU thread's wall time less time on a CPU and in a run queue, within the window.
    pub offcpu_ms: Option<f64>,
    /// QEMU's own `postcopy-vcpu-blocktime`, once it reports it.
    pub qemu_blocktime_ms: Option<f64>,
}

impl QemuVcpu {
    /// How far `figure` lies from the off-CPU time, as a fraction (+0.05 is 5% over).
    pub fn deviation(&self, figure: Option<f64>) -> Option<f64> {
        let off = self.offcpu_ms.filter(|&o| o > 0.0)?;
        Some((figure? - off) / off)
    }
}
