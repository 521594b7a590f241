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

/// What a capture takes on this host, probed once per VM.
#[derive(Debug, Clone, Default)]
pub struct CaptureSpec {
    /// [`MIGRATED_MSRS`] filtered by what the host supports.
    pub msr_indices: Vec<u32>,
    /// The host has XCRs to save (KVM_CAP_XCRS).
    pub xcrs: bool,
}

impl VcpuState {
    /// Reads the state of a vCPU that is not running.
    pub fn capture(vcpu: &VcpuFd, spec: &CaptureSpec) -> Result<VcpuState, VmmError> {
        let mp_state = vcpu.get_mp_state().map_err(err("mp_state"))?;
        let regs = vcpu.get_regs().map_err(err("regs"))?;
        let sregs = vcpu.get_sregs().map_err(err("sregs"))?;
        let fpu = vcpu.get_fpu().map_err(err("fpu"))?;
        let xcrs = if spec.xcrs {
            Some(vcpu.get_xcrs().map_err(err("xcrs"))?)
        } else {
            None
        };
        let entries: Vec<kvm_msr_entry> = spec
            .msr_indices
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

/// KVM's per-vCPU structs: plain C data with no pointers, for which every bit pattern is a
/// valid value, so their bytes can cross a socket between two builds of the same layout.
/// None has implicit padding (no uninitialised byte is read): the kernel's ABI spells its
/// padding out as fields, and kvm-bindings derives zerocopy's `IntoBytes`, which proves it,
/// for every one of them but `kvm_fpu`, whose `pad1`/`pad2` fields fill its gaps.
///
/// # Safety
/// Only for `#[repr(C)]` types without pointers, references, implicit padding or invalid
/// bit patterns.
unsafe trait Pod: Copy + Default {
    const NAME: &'static str;
}

macro_rules! pod {
    ($($t:ident),*) => {
        // SAFETY: bindgen's plain C structs (integers, integer arrays and unions of them).
        $(unsafe impl Pod for $t { const NAME: &'static str = stringify!($t); })*
    };
}
pod!(
    kvm_regs,
    kvm_sregs,
    kvm_fpu,
    kvm_xcrs,
    kvm_msr_entry,
    kvm_lapic_state,
    kvm_vcpu_events,
    kvm_mp_state
);

/// Appends a struct as its length (u32 LE) and its bytes.
fn put<T: Pod>(out: &mut Vec<u8>, value: &T) {
    let len = std::mem::size_of::<T>();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    // SAFETY: `value` is a live T of `len` bytes, and a Pod has no padding that matters:
    // its bytes are read as plain data, not interpreted.
    let bytes = unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), len) };
    out.extend_from_slice(bytes);
}

fn take_bytes<'a>(input: &mut &'a [u8], len: usize, what: &str) -> Result<&'a [u8], VmmError> {
    if input.len() < len {
        return Err(VmmError::StateFormat(format!(
            "cut short in {what}: {} bytes left, {len} needed",
            input.len()
        )));
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Ok(head)
}

fn take_u32(input: &mut &[u8], what: &str) -> Result<u32, VmmError> {
    let b = take_bytes(input, 4, what)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a struct written by [`put`]; a length other than this build's is refused.
fn take<T: Pod>(input: &mut &[u8]) -> Result<T, VmmError> {
    let len = take_u32(input, T::NAME)? as usize;
    let want = std::mem::size_of::<T>();
    if len != want {
        return Err(VmmError::StateFormat(format!(
            "{} is {len} bytes at the source and {want} here: different builds",
            T::NAME
        )));
    }
    let bytes = take_bytes(input, len, T::NAME)?;
    let mut value = T::default();
    // SAFETY: `bytes` holds exactly size_of::<T>() bytes, and any bytes are a valid Pod.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), len)
    };
    Ok(value)
}

/// MSRs a vCPU carries at most on the wire (far above [`MIGRATED_MSRS`]).
const MAX_WIRE_MSRS: u32 = 256;

impl VcpuState {
    /// Appends this state in the form [`VcpuState::decode`] reads, for another process
    /// of the same build (the source of a migration across processes or hosts).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put(out, &self.regs);
        put(out, &self.sregs);
        put(out, &self.fpu);
        match &self.xcrs {
            Some(x) => {
                out.push(1);
                put(out, x);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(self.msrs.len() as u32).to_le_bytes());
        for m in &self.msrs {
            put(out, m);
        }
        put(out, &self.lapic);
        put(out, &self.events);
        put(out, &self.mp_state);
    }

    /// Reads one state from the front of `input`, leaving the rest.
    pub fn decode(input: &mut &[u8]) -> Result<VcpuState, VmmError> {
        let regs = take(input)?;
        let sregs = take(input)?;
        let fpu = take(input)?;
        let xcrs = match take_bytes(input, 1, "xcrs")?[0] {
            0 => None,
            1 => Some(take(input)?),
            b => {
                return Err(VmmError::StateFormat(format!(
                    "xcrs marker {b}: expected 0 or 1"
                )));
            }
        };
        let count = take_u32(input, "msr count")?;
        if count > MAX_WIRE_MSRS {
            return Err(VmmError::StateFormat(format!(
                "{count} MSRs: at most {MAX_WIRE_MSRS}"
            )));
        }
        let msrs = (0..count).map(|_| take(input)).collect::<Result<_, _>>()?;
        Ok(VcpuState {
            regs,
            sregs,
            fpu,
            xcrs,
            msrs,
            lapic: take(input)?,
            events: take(input)?,
            mp_state: take(input)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VcpuState {
        let mut s = VcpuState {
            regs: kvm_regs::default(),
            sregs: kvm_sregs::default(),
            fpu: kvm_fpu::default(),
            xcrs: Some(kvm_xcrs::default()),
            msrs: vec![
                kvm_msr_entry {
                    index: 0x10,
                    data: 12345,
                    ..Default::default()
                },
                kvm_msr_entry {
                    index: 0xc000_0082,
                    data: 0xffff_8000_0000_1000,
                    ..Default::default()
                },
            ],
            lapic: kvm_lapic_state::default(),
            events: kvm_vcpu_events::default(),
            mp_state: kvm_mp_state { mp_state: 3 },
        };
        s.regs.rip = 0x1234_5678;
        s.regs.rsp = 0x9000;
        s.sregs.cr3 = 0x2000;
        s.sregs.efer = 0x500;
        s.fpu.mxcsr = 0x1f80;
        s.lapic.regs[0x20] = 7;
        s.events.exception.nr = 14;
        s
    }

    #[test]
    fn a_state_survives_encode_and_decode_and_leaves_what_follows() {
        let s = sample();
        let mut bytes = Vec::new();
        s.encode(&mut bytes);
        bytes.extend_from_slice(b"next");
        let mut input = bytes.as_slice();
        let back = VcpuState::decode(&mut input).expect("decodes");
        assert_eq!(input, b"next");
        assert_eq!(back.regs.rip, 0x1234_5678);
        assert_eq!(back.regs.rsp, 0x9000);
        assert_eq!(back.sregs.cr3, 0x2000);
        assert_eq!(back.sregs.efer, 0x500);
        assert_eq!(back.fpu.mxcsr, 0x1f80);
        assert!(back.xcrs.is_some());
        assert_eq!(back.msrs.len(), 2);
        assert_eq!(back.msrs[1].index, 0xc000_0082);
        assert_eq!(back.msrs[1].data, 0xffff_8000_0000_1000);
        assert_eq!(back.lapic.regs[0x20], 7);
        assert_eq!(back.events.exception.nr, 14);
        assert_eq!(back.mp_state.mp_state, 3);
    }

    #[test]
    fn cut_or_foreign_state_is_refused_with_what_is_wrong() {
        let mut bytes = Vec::new();
        sample().encode(&mut bytes);
        let mut cut = &bytes[..bytes.len() - 2];
        let e = VcpuState::decode(&mut cut)
            .expect_err("cut short")
            .to_string();
        assert!(e.contains("cut short in kvm_mp_state"), "{e}");
        // A build whose kvm_regs differs in size.
        let mut foreign = bytes.clone();
        foreign[0] = foreign[0].wrapping_add(8);
        let e = VcpuState::decode(&mut foreign.as_slice())
            .expect_err("foreign")
            .to_string();
        assert!(
            e.contains("kvm_regs is") && e.contains("different builds"),
            "{e}"
        );
    }
}
