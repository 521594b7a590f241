//! The test VM: a KVM VM with guest RAM, started directly in 64-bit long mode, one thread
//! per vCPU. Owns /dev/kvm, the VM and vCPU file descriptors and guest RAM. Knows nothing
//! of migration or of any observer; faults on missing RAM go to a [`MissingPageHandler`].

mod exit;
pub mod fault;
pub mod layout;
pub mod memory;
pub mod shared;
pub mod state;
pub mod vcpu;

use std::io;
use std::sync::Arc;

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_fpu, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};

pub use fault::{ExitPath, FillOutcome, MissingPageHandler};
pub use memory::GuestRam;
pub use shared::{RunState, VcpuShared, VcpuStats, dominant_exit_path};
pub use state::{CaptureSpec, VcpuState};
pub use vcpu::{PauseAck, Reply, VcpuHandle};

use crate::guest::{GuestProgram, VcpuStart};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("/dev/kvm does not exist: load the KVM module (kvm_intel, kvm_amd or kvm_pvm)")]
    KvmMissing,
    #[error("permission denied opening /dev/kvm: run as root or add your user to the 'kvm' group")]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(#[source] io::Error),
    #[error("KVM API version {0} is not the supported version 12")]
    KvmApiVersion(i32),
    #[error("cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory of {size} bytes is outside {min}..={max} or not page aligned")]
    MemorySize { size: u64, min: u64, max: u64 },
    #[error("{0}")]
    Memory(String),
    #[error("{vcpus} vCPUs requested; this VM supports 1 to {max}")]
    VcpuCount { vcpus: usize, max: usize },
    #[error("cannot capture or restore vCPU {what}: {source}")]
    VcpuState {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("too many MSRs for one KVM_GET_MSRS call")]
    TooManyMsrs,
    #[error("KVM refused to restore MSR {index:#x}")]
    MsrRestore { index: u32 },
    /// vCPU state bytes from a peer that is not this build, or cut short.
    #[error("vCPU state does not decode: {0}")]
    StateFormat(String),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(#[source] io::Error),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(#[source] io::Error),
    #[error("vCPU {0} has exited")]
    VcpuGone(usize),
    #[error("vCPU {0} did not answer within 10 s")]
    VcpuUnresponsive(usize),
    #[error("vCPU {0} must be paused for this")]
    NotPaused(usize),
    #[error("the guest program does not fit the boot region: {0}")]
    Program(String),
    #[error("{0} vCPU states given for a VM of {1} vCPUs")]
    StateCount(usize, usize),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

/// Opens /dev/kvm with an error that says what to do about it.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => VmmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmmError::KvmPermission,
        errno => VmmError::KvmOpen(io::Error::from_raw_os_error(errno)),
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(VmmError::KvmApiVersion(version));
    }
    Ok(kvm)
}

/// Shape of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmConfig {
    pub vcpus: usize,
    pub mem_bytes: u64,
}

/// A running (or paused) KVM VM and its vCPU threads.
pub struct Vm {
    // Field order is drop order: vCPU threads end before the VM and its memory go.
    vcpus: Vec<VcpuHandle>,
    _vm: VmFd,
    _kvm: Kvm,
    ram: Arc<GuestRam>,
    capture: CaptureSpec,
    config: VmConfig,
}

impl Vm {
    /// A VM with fresh RAM and no fault handler.
    pub fn new(config: VmConfig) -> Result<Vm, VmmError> {
        let ram = Arc::new(GuestRam::new(config.mem_bytes)?);
        Vm::with_ram(config, ram, None)
    }

    /// A VM over `ram`; faults on missing pages that reach a vCPU thread go to `handler`.
    /// vCPU threads start paused.
    pub fn with_ram(
        config: VmConfig,
        ram: Arc<GuestRam>,
        handler: Option<Arc<dyn MissingPageHandler>>,
    ) -> Result<Vm, VmmError> {
        let kvm = open_kvm()?;
        let max = kvm.get_max_vcpus().min(layout::MAX_VCPUS);
        if config.vcpus == 0 || config.vcpus > max {
            return Err(VmmError::VcpuCount {
                vcpus: config.vcpus,
                max,
            });
        }
        let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram.size(),
            userspace_addr: ram.host_base(),
        };
        // SAFETY: the region is guest RAM, which outlives the VM (dropped after it).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("add guest RAM to the VM"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("read the supported CPUID"))?;
        let supported_msrs = kvm
            .get_msr_index_list()
            .map_err(kvm_err("read the MSR index list"))?;
        let capture = CaptureSpec {
            msr_indices: state::MIGRATED_MSRS
                .iter()
                .copied()
                .filter(|m| supported_msrs.as_slice().contains(m))
                .collect(),
            xcrs: kvm.check_extension(kvm_ioctls::Cap::Xcrs),
        };

        let mut vcpus = Vec::with_capacity(config.vcpus);
        for id in 0..config.vcpus {
            let fd = vm
                .create_vcpu(id as u64)
                .map_err(kvm_err("create a vCPU"))?;
            let mut cpuid = cpuid.clone();
            for e in cpuid.as_mut_slice() {
                // Leaf 1 EBX[31:24]: initial APIC id.
                if e.function == 1 {
                    e.ebx = (e.ebx & 0x00ff_ffff) | ((id as u32) << 24);
                }
            }
            fd.set_cpuid2(&cpuid)
                .map_err(kvm_err("set the vCPU's CPUID"))?;
            let mut sregs = fd.get_sregs().map_err(kvm_err("read sregs"))?;
            layout::long_mode_sregs(&mut sregs);
            fd.set_sregs(&sregs)
                .map_err(kvm_err("enter long mode (set sregs)"))?;
            let fpu = kvm_fpu {
                fcw: 0x37f,
                mxcsr: 0x1f80,
                ..Default::default()
            };
            fd.set_fpu(&fpu).map_err(kvm_err("set the FPU"))?;
            vcpus.push(VcpuHandle::spawn(id, fd, ram.clone(), handler.clone())?);
        }
        Ok(Vm {
            vcpus,
            _vm: vm,
            _kvm: kvm,
            ram,
            capture,
            config,
        })
    }

    pub fn config(&self) -> VmConfig {
        self.config
    }

    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    pub fn vcpus(&self) -> &[VcpuHandle] {
        &self.vcpus
    }

    /// Writes the GDT, page tables and `program`'s code into the boot region, and points
    /// every vCPU at its entry. vCPUs must be paused.
    pub fn load(&self, program: &GuestProgram) -> Result<(), VmmError> {
        if program.starts.len() != self.vcpus.len() {
            return Err(VmmError::StateCount(program.starts.len(), self.vcpus.len()));
        }
        if program.code_gpa < layout::CODE_GPA
            || program.code_gpa + program.code.len() as u64 > layout::CODE_GPA + layout::CODE_MAX
        {
            return Err(VmmError::Program(format!(
                "{} bytes of code at {:#x}",
                program.code.len(),
                program.code_gpa
            )));
        }
        self.ram.write_u64s(layout::GDT_GPA, &layout::gdt())?;
        for (gpa, words) in layout::page_tables(self.ram.size()) {
            self.ram.write_u64s(gpa, &words)?;
        }
        self.ram.write(program.code_gpa, &program.code)?;
        for (vcpu, start) in self.vcpus.iter().zip(&program.starts) {
            let mut state = vcpu.capture(&self.capture)?;
            apply_start(&mut state.regs, start);
            // Application processors wait for a SIPI otherwise.
            state.mp_state.mp_state = kvm_bindings::KVM_MP_STATE_RUNNABLE;
            vcpu.restore(state)?;
        }
        Ok(())
    }

    pub fn pause_all(&self) -> Result<(), VmmError> {
        // Kick everyone first, then wait: the pause takes one round trip, not one per vCPU.
        let acks = self
            .vcpus
            .iter()
            .map(|v| v.begin_pause())
            .collect::<Result<Vec<_>, _>>()?;
        acks.into_iter().try_for_each(|a| a.wait())
    }

    pub fn resume_all(&self) -> Result<(), VmmError> {
        self.vcpus.iter().try_for_each(|v| v.resume())
    }

    /// The state of every vCPU; all must be paused. All vCPU threads work at once.
    pub fn capture_all(&self) -> Result<Vec<VcpuState>, VmmError> {
        let replies = self
            .vcpus
            .iter()
            .map(|v| v.begin_capture(&self.capture))
            .collect::<Result<Vec<_>, _>>()?;
        replies.into_iter().map(|r| r.wait()).collect()
    }

    /// Pauses every vCPU and captures its state in one round trip per vCPU: the capture is
    /// queued behind the pause, so each thread does both without waiting to be woken twice.
    pub fn pause_and_capture_all(&self) -> Result<Vec<VcpuState>, VmmError> {
        let pending = self
            .vcpus
            .iter()
            .map(|v| Ok((v.begin_pause()?, v.begin_capture(&self.capture)?)))
            .collect::<Result<Vec<_>, VmmError>>()?;
        pending
            .into_iter()
            .map(|(ack, state)| {
                ack.wait()?;
                state.wait()
            })
            .collect()
    }

    /// Restores one state per vCPU; all must be paused. All vCPU threads work at once.
    pub fn restore_all(&self, states: Vec<VcpuState>) -> Result<(), VmmError> {
        if states.len() != self.vcpus.len() {
            return Err(VmmError::StateCount(states.len(), self.vcpus.len()));
        }
        let replies = self
            .vcpus
            .iter()
            .zip(states)
            .map(|(v, s)| v.begin_restore(s))
            .collect::<Result<Vec<_>, _>>()?;
        replies.into_iter().try_for_each(|r| r.wait())
    }

    /// The first vCPU failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.vcpus.iter().find_map(|v| v.failure())
    }
}

fn apply_start(regs: &mut kvm_bindings::kvm_regs, s: &VcpuStart) {
    *regs = kvm_bindings::kvm_regs {
        rip: s.rip,
        rsp: s.rsp,
        rdi: s.rdi,
        rsi: s.rsi,
        r8: s.r8,
        r9: s.r9,
        r10: s.r10,
        r11: s.r11,
        rflags: 0x2,
        ..Default::default()
    };
}
