//! Guest workloads: machine code generated at run time with iced-x86's assembler, and the
//! port-I/O protocol through which each vCPU reports to the host.
//!
//! Owns what runs inside the VM and what its reports mean. Knows nothing of KVM.

pub mod boot;
mod codegen;
pub mod ports;

pub use codegen::{GuestProgram, Placement, Reports, VcpuStart, assemble, timing_loop};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot assemble the guest workload: {0}")]
    Assemble(#[from] iced_x86::IcedError),
    #[error("generated guest code is {len} bytes, more than the {max} the boot region holds")]
    TooLarge { len: usize, max: u64 },
    #[error(
        "guest memory of {data_pages} data pages cannot be split into {vcpus} slices of at least one page"
    )]
    TooSmall { data_pages: u64, vcpus: usize },
    #[error("a bootable guest takes 1 to {max} vCPUs, not {vcpus}")]
    TooManyVcpus { vcpus: usize, max: usize },
    #[error(
        "a bootable guest takes {} to {} of memory, not {}",
        crate::units::Bytes(*min),
        crate::units::Bytes(*max),
        crate::units::Bytes(*mem_bytes)
    )]
    MemOutOfRange { mem_bytes: u64, min: u64, max: u64 },
}
