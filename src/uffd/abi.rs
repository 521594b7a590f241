//! The kernel's userfaultfd ABI, as `linux/userfaultfd.h` defines it: the constants, the
//! `repr(C)` structs and the ioctl numbers. Nothing here runs.

use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

pub(super) const UFFDIO: u32 = 0xAA;
pub(super) const UFFD_API: u64 = 0xAA;
pub(super) const UFFD_USER_MODE_ONLY: i32 = 1;

pub(super) const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub(super) const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub(super) const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub(super) const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;
pub(super) const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
pub(super) const UFFDIO_CONTINUE_MODE_DONTWAKE: u64 = 1 << 0;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UffdioZeropage {
    pub range: UffdioRange,
    pub mode: u64,
    pub zeropage: i64,
}

/// `struct uffdio_continue`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UffdioContinue {
    pub range: UffdioRange,
    pub mode: u64,
    pub mapped: i64,
}

/// `struct uffd_msg`, restricted to the page-fault member of its union.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UffdMsg {
    pub event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    pub flags: u64,
    pub address: u64,
    pub ptid: u32,
    pub pad: u32,
}

ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3F, UffdioApi);
ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, UffdioRegister);
ioctl_ior_nr!(UFFDIO_UNREGISTER, UFFDIO, 0x01, UffdioRange);
ioctl_ior_nr!(UFFDIO_WAKE, UFFDIO, 0x02, UffdioRange);
ioctl_iowr_nr!(UFFDIO_COPY, UFFDIO, 0x03, UffdioCopy);
ioctl_iowr_nr!(UFFDIO_ZEROPAGE, UFFDIO, 0x04, UffdioZeropage);
ioctl_iowr_nr!(UFFDIO_CONTINUE, UFFDIO, 0x07, UffdioContinue);
ioctl_io_nr!(USERFAULTFD_IOC_NEW, UFFDIO, 0x00);
