//! Complete vCPU state for migration: what KVM keeps per vCPU, captured from a paused
//! vCPU and restored into another VM's vCPU so the guest continues where it stopped.

use kvm_bindings::{
    Msrs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs,
};
use kvm_ioctls::VcpuFd;

use super::VmmError;

/// MSRs whose values a running long-mode guest depends on (EFER travels in sregs).
pub const MIGRATED_MSRS: &[u32] = &[
    0x10,        // IA32_TSC
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0x1a0,       // IA32_MISC_ENABLE
    0x277,       // IA32_PAT
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
];

/// Everything needed to continue a vCPU elsewhere.
#[derive(Clone)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    /// None where the host has no XSAVE.
    pub xcrs: Option<kvm_xcrs>,
    pub msrs: Vec<kvm_msr_entry>,
    pub lapic: kvm_lapic_state,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .field("xcrs", &self.xcrs.is_some())
            .finish_non_exhaustive()
    }
}

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::VcpuState { what, source }
}

impl VcpuState {
    /// Reads the state of a vCPU that is not running. `msr_indices` are the MSRs to take:
    /// [`MIGRATED_MSRS`] filtered by what the host supports.
    pub fn capture(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, VmmError> {
        let mp_state = vcpu.get_mp_state().map_err(err("mp_state"))?;
        let regs = vcpu.get_regs().map_err(err("regs"))?;
        let sregs = vcpu.get_sregs().map_err(err("sregs"))?;
        let fpu = vcpu.get_fpu().map_err(err("fpu"))?;
        let xcrs = vcpu.get_xcrs().ok();
        let entries: Vec<kvm_msr_entry> = msr_indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VmmError::TooManyMsrs)?;
        let read = vcpu.get_msrs(&mut msrs).map_err(err("msrs"))?;
        let msrs = msrs.as_slice()[..read].to_vec();
        let lapic = vcpu.get_lapic().map_err(err("lapic"))?;
        let events = vcpu.get_vcpu_events().map_err(err("vcpu events"))?;
        Ok(VcpuState {
            regs,
            sregs,
            fpu,
            xcrs,
            msrs,
            lapic,
            events,
            mp_state,
        })
    }

    /// Writes this state into a vCPU that is not running.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), VmmError> {
        vcpu.set_mp_state(self.mp_state).map_err(err("mp_state"))?;
        vcpu.set_regs(&self.regs).map_err(err("regs"))?;
        vcpu.set_sregs(&self.sregs).map_err(err("sregs"))?;
        vcpu.set_fpu(&self.fpu).map_err(err("fpu"))?;
        if let Some(xcrs) = &self.xcrs {
            vcpu.set_xcrs(xcrs).map_err(err("xcrs"))?;
        }
        let msrs = Msrs::from_entries(&self.msrs).map_err(|_| VmmError::TooManyMsrs)?;
        let written = vcpu.set_msrs(&msrs).map_err(err("msrs"))?;
        if written != self.msrs.len() {
            return Err(VmmError::MsrRestore {
                index: self.msrs.get(written).map_or(0, |m| m.index),
            });
        }
        vcpu.set_lapic(&self.lapic).map_err(err("lapic"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(err("vcpu events"))?;
        Ok(())
    }
}
