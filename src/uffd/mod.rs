//! A thin, safe wrapper over the Linux userfaultfd ABI.
//!
//! Owns the userfaultfd file descriptor, its handshake, range registration and the
//! resolving ioctls (copy, continue, zeropage, wake). It knows nothing of KVM or migration.
//! The `userfaultfd` crate is not used: its -sys part needs libclang at build time,
//! and its defaults hide faults raised inside KVM (user-mode-only descriptors).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};
mod abi;

use abi::*;

/// Feature bits of `uffdio_api.features` that faultline cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features(pub u64);

impl Features {
    pub const MISSING_SHMEM: Features = Features(1 << 5);
    pub const SIGBUS: Features = Features(1 << 7);
    pub const THREAD_ID: Features = Features(1 << 8);
    pub const MINOR_SHMEM: Features = Features(1 << 10);
    pub const EXACT_ADDRESS: Features = Features(1 << 11);
    pub const MOVE: Features = Features(1 << 16);

    pub const NONE: Features = Features(0);

    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }

    /// Names of the known feature bits that are set, for reports.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::MISSING_SHMEM, "MISSING_SHMEM"),
            (Self::SIGBUS, "SIGBUS"),
            (Self::THREAD_ID, "THREAD_ID"),
            (Self::MINOR_SHMEM, "MINOR_SHMEM"),
            (Self::EXACT_ADDRESS, "EXACT_ADDRESS"),
            (Self::MOVE, "MOVE"),
        ]
        .into_iter()
        .filter(|(f, _)| self.contains(*f))
        .map(|(_, n)| n)
        .collect()
    }
}

/// How the descriptor was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `/dev/userfaultfd` (Linux 6.1+), not subject to `vm.unprivileged_userfaultfd`.
    Device,
    /// The `userfaultfd(2)` system call.
    Syscall,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Device => "device",
            Origin::Syscall => "syscall",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error("cannot open userfaultfd (neither /dev/userfaultfd nor the syscall worked): {0}")]
    Open(#[source] io::Error),
    #[error("userfaultfd API handshake failed: {0}")]
    Api(#[source] io::Error),
    #[error("this kernel's userfaultfd lacks features {missing:?}")]
    MissingFeatures { missing: Vec<&'static str> },
    #[error("cannot register {len:#x} bytes at {start:#x} with userfaultfd: {source}")]
    Register {
        start: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot unregister {len:#x} bytes at {start:#x} from userfaultfd: {source}")]
    Unregister {
        start: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot copy {len:#x} bytes into {dst:#x}: {source}")]
    Copy {
        dst: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot map {len:#x} bytes of cached pages at {dst:#x}: {source}")]
    Continue {
        dst: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot map zero page at {dst:#x}: {source}")]
    Zeropage {
        dst: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot wake waiters on {len:#x} bytes at {start:#x}: {source}")]
    Wake {
        start: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot read a userfaultfd event: {0}")]
    Read(#[source] io::Error),
}

pub type Result<T> = std::result::Result<T, UffdError>;

/// A page fault reported by userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    /// Faulting host virtual address (page aligned unless EXACT_ADDRESS was asked for).
    pub address: u64,
    pub write: bool,
    /// Thread id of the faulting thread, when THREAD_ID was negotiated (else 0).
    pub thread_id: u32,
}

/// What a resolving ioctl found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// This call filled the range.
    Filled,
    /// The range was already present: someone else filled it. Waiters were woken.
    AlreadyPresent,
}

/// How far a resolving ioctl got over its range.
enum Resolved {
    All,
    /// Stopped at a page already present, `done` bytes in.
    StoppedAtPresent {
        done: u64,
    },
}

/// An open userfaultfd with its negotiated features.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    features: Features,
    origin: Origin,
}

fn open_raw(nonblocking: bool) -> Result<(OwnedFd, Origin)> {
    // Never UFFD_USER_MODE_ONLY: faults taken inside KVM are kernel-mode faults.
    let flags = libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 };
    let device_err = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/userfaultfd")
    {
        Ok(dev) => {
            // SAFETY: USERFAULTFD_IOC_NEW takes the flags by value and returns a new fd.
            let fd = unsafe { ioctl_with_val(&dev, USERFAULTFD_IOC_NEW(), flags as libc::c_ulong) };
            if fd >= 0 {
                // SAFETY: the kernel just handed us this descriptor; we own it.
                return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, Origin::Device));
            }
            io::Error::last_os_error()
        }
        Err(e) => e,
    };
    // SAFETY: plain syscall with integer flags.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags & !UFFD_USER_MODE_ONLY) };
    if fd >= 0 {
        // SAFETY: as above.
        return Ok((
            unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            Origin::Syscall,
        ));
    }
    let sys_err = io::Error::last_os_error();
    Err(UffdError::Open(io::Error::new(
        sys_err.kind(),
        format!("/dev/userfaultfd: {device_err}; syscall: {sys_err}"),
    )))
}

fn api(fd: &OwnedFd, features: Features) -> Result<Features> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features: features.0,
        ioctls: 0,
    };
    // SAFETY: `api` is a valid uffdio_api the kernel reads and writes.
    let ret = unsafe { ioctl_with_mut_ref(fd, UFFDIO_API(), &mut api) };
    if ret < 0 {
        return Err(UffdError::Api(io::Error::last_os_error()));
    }
    Ok(Features(api.features))
}

impl Userfaultfd {
    /// Features this kernel's userfaultfd offers (opens and closes a probe descriptor).
    pub fn available_features() -> Result<(Features, Origin)> {
        let (fd, origin) = open_raw(true)?;
        Ok((api(&fd, Features::NONE)?, origin))
    }

    /// Opens a userfaultfd that requires `required` features. Reads block unless
    /// `nonblocking`; a blocking descriptor suits a dedicated handler thread.
    pub fn new(required: Features, nonblocking: bool) -> Result<Userfaultfd> {
        let (available, _) = Self::available_features()?;
        if !available.contains(required) {
            let missing = Features(required.0 & !available.0).names();
            return Err(UffdError::MissingFeatures { missing });
        }
        let (fd, origin) = open_raw(nonblocking)?;
        api(&fd, required)?;
        Ok(Userfaultfd {
            fd,
            features: required,
            origin,
        })
    }

    pub fn features(&self) -> Features {
        self.features
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Registers `[start, start+len)` for missing-page faults.
    pub fn register_missing(&self, start: u64, len: u64) -> Result<()> {
        self.register(start, len, UFFDIO_REGISTER_MODE_MISSING)
    }

    /// Registers `[start, start+len)` of a shared-memory mapping for minor faults: pages
    /// that are in the page cache but not mapped here fault, to be resolved by
    /// [`Userfaultfd::continue_pages`]. Needs the MINOR_SHMEM feature.
    pub fn register_minor(&self, start: u64, len: u64) -> Result<()> {
        self.register(start, len, UFFDIO_REGISTER_MODE_MINOR)
    }

    fn register(&self, start: u64, len: u64, mode: u64) -> Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode,
            ioctls: 0,
        };
        // SAFETY: valid uffdio_register for the duration of the call.
        let ret = unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_REGISTER(), &mut reg) };
        if ret < 0 {
            return Err(UffdError::Register {
                start,
                len,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        let range = UffdioRange { start, len };
        // SAFETY: valid uffdio_range for the duration of the call.
        let ret = unsafe { ioctl_with_ref(&self.fd, UFFDIO_UNREGISTER(), &range) };
        if ret < 0 {
            return Err(UffdError::Unregister {
                start,
                len,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Atomically copies `len` bytes from `src` into the missing range at `dst` and
    /// wakes the threads waiting on it.
    ///
    /// # Safety
    /// `src` must be valid for reading `len` bytes; `dst` must lie in a registered range.
    pub unsafe fn copy(&self, dst: u64, src: *const u8, len: u64, wake: bool) -> Result<Fill> {
        let mode = if wake { 0 } else { UFFDIO_COPY_MODE_DONTWAKE };
        let filled = self.resolve_range(
            dst,
            len,
            wake,
            |done| {
                let mut copy = UffdioCopy {
                    dst: dst + done,
                    src: src as u64 + done,
                    len: len - done,
                    mode,
                    copy: 0,
                };
                // SAFETY: valid uffdio_copy; the caller vouches for the addresses.
                let ret = unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_COPY(), &mut copy) };
                (ret, copy.copy)
            },
            |dst, len, source| UffdError::Copy { dst, len, source },
        )?;
        // A copy that stopped at a present page after copying some did fill those.
        Ok(match filled {
            Resolved::All => Fill::Filled,
            Resolved::StoppedAtPresent { done } if done > 0 => Fill::Filled,
            Resolved::StoppedAtPresent { .. } => Fill::AlreadyPresent,
        })
    }

    /// Maps the already cached pages of `[dst, dst+len)` (a minor-fault range) and, with
    /// `wake`, wakes the threads waiting on them. The page contents must have been written
    /// through another mapping of the same memory first. [`Fill::AlreadyPresent`] when any
    /// page of the range was mapped already (the kernel stops at the first such page).
    pub fn continue_pages(&self, dst: u64, len: u64, wake: bool) -> Result<Fill> {
        let mode = if wake {
            0
        } else {
            UFFDIO_CONTINUE_MODE_DONTWAKE
        };
        let mapped = self.resolve_range(
            dst,
            len,
            wake,
            |done| {
                let mut cont = UffdioContinue {
                    range: UffdioRange {
                        start: dst + done,
                        len: len - done,
                    },
                    mode,
                    mapped: 0,
                };
                // SAFETY: valid uffdio_continue for the duration of the call; the kernel
                // only maps pages that already back the range.
                let ret = unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_CONTINUE(), &mut cont) };
                (ret, cont.mapped)
            },
            |dst, len, source| UffdError::Continue { dst, len, source },
        )?;
        Ok(match mapped {
            Resolved::All => Fill::Filled,
            Resolved::StoppedAtPresent { .. } => Fill::AlreadyPresent,
        })
    }

    /// Issues a resolving ioctl over `[dst, dst+len)` until all of it is done: `call(done)`
    /// starts it `done` bytes in and returns its result and the bytes it resolved. A partial
    /// run or a concurrent mm change (EAGAIN) goes on from where it stopped; a page already
    /// present (EEXIST) ends it, waking the range's waiters when `wake`.
    fn resolve_range(
        &self,
        dst: u64,
        len: u64,
        wake: bool,
        mut call: impl FnMut(u64) -> (i32, i64),
        error: impl Fn(u64, u64, io::Error) -> UffdError,
    ) -> Result<Resolved> {
        let mut done = 0u64;
        while done < len {
            let (ret, progress) = call(done);
            if progress > 0 {
                done += progress as u64;
            }
            if ret >= 0 {
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => continue,
                Some(libc::EEXIST) => {
                    if wake {
                        self.wake(dst, len)?;
                    }
                    return Ok(Resolved::StoppedAtPresent { done });
                }
                _ => return Err(error(dst + done, len - done, err)),
            }
        }
        Ok(Resolved::All)
    }

    /// Maps the shared zero page over the missing page range at `dst` and wakes waiters.
    pub fn zeropage(&self, dst: u64, len: u64) -> Result<Fill> {
        loop {
            let mut zp = UffdioZeropage {
                range: UffdioRange { start: dst, len },
                mode: 0,
                zeropage: 0,
            };
            // SAFETY: valid uffdio_zeropage for the duration of the call.
            let ret = unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_ZEROPAGE(), &mut zp) };
            if ret >= 0 {
                return Ok(Fill::Filled);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => continue,
                Some(libc::EEXIST) => {
                    self.wake(dst, len)?;
                    return Ok(Fill::AlreadyPresent);
                }
                _ => return Err(UffdError::Zeropage { dst, source: err }),
            }
        }
    }

    /// Wakes threads sleeping on faults in `[start, start+len)`.
    pub fn wake(&self, start: u64, len: u64) -> Result<()> {
        let range = UffdioRange { start, len };
        // SAFETY: valid uffdio_range for the duration of the call.
        let ret = unsafe { ioctl_with_ref(&self.fd, UFFDIO_WAKE(), &range) };
        if ret < 0 {
            return Err(UffdError::Wake {
                start,
                len,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads up to `out.len()` page-fault events. Returns 0 when a non-blocking
    /// descriptor has none. Events other than page faults are skipped.
    pub fn read_faults(&self, out: &mut [PageFault]) -> Result<usize> {
        const BATCH: usize = 64;
        let mut msgs = [UffdMsg::default(); BATCH];
        let want = out.len().min(BATCH);
        if want == 0 {
            return Ok(0);
        }
        let n = loop {
            // SAFETY: reading into a buffer of `want` uffd_msg structs.
            let ret = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr().cast(),
                    want * std::mem::size_of::<UffdMsg>(),
                )
            };
            if ret >= 0 {
                break ret as usize / std::mem::size_of::<UffdMsg>();
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(0),
                Some(libc::EINTR) => continue,
                _ => return Err(UffdError::Read(err)),
            }
        };
        let mut count = 0;
        for msg in msgs.iter().take(n) {
            if msg.event == UFFD_EVENT_PAGEFAULT {
                out[count] = PageFault {
                    address: msg.address,
                    write: msg.flags & UFFD_PAGEFAULT_FLAG_WRITE != 0,
                    thread_id: msg.ptid,
                };
                count += 1;
            }
        }
        Ok(count)
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Userfaultfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests;
