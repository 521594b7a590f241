//! Guest RAM: one mapping at gpa 0, through vm-memory, either anonymous (MAP_NORESERVE) or
//! a memfd allocated up front with a second, always-present mapping of the same pages.
//!
//! Owns the mappings and gpa-to-host translation. Pages of a destination VM may be missing
//! (registered with userfaultfd): callers must only read or write pages they know present,
//! except through the shared backing's fill mapping, which is never registered with
//! userfaultfd and so never waits for a fill.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::VmmError;
use super::layout::{MAX_MEM_BYTES, MIN_MEM_BYTES, PAGE_SIZE};
use crate::contract::Backing;

/// The shared backing's second view of guest RAM: every page mapped, never registered
/// with userfaultfd, so fills write through it while the guest's view still faults.
#[derive(Debug)]
struct FillMapping {
    base: u64,
    len: usize,
}

impl Drop for FillMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `GuestRam::shared` created.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    host_base: u64,
    fill_mapping: Option<FillMapping>,
}

fn check_size(size: u64) -> Result<(), VmmError> {
    if !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&size) || !size.is_multiple_of(PAGE_SIZE) {
        return Err(VmmError::MemorySize {
            size,
            min: MIN_MEM_BYTES,
            max: MAX_MEM_BYTES,
        });
    }
    Ok(())
}

fn os_error(what: String) -> VmmError {
    VmmError::Memory(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// Maps every page of `[base, base+len)` now, a share of it per CPU (one thread took
/// 1.2-4.5 s for 4 GiB on the 2-core machine, two 0.65-0.85 s), so that fills never fault
/// on the fill mapping. Kernels before 5.14 lack MADV_POPULATE_WRITE: fills fault it in.
fn populate(base: u64, len: usize) -> Result<(), VmmError> {
    const MIN_SHARE: usize = 64 << 20;
    let page = PAGE_SIZE as usize;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(len.div_ceil(MIN_SHARE))
        .max(1);
    let share = len.div_ceil(threads).div_ceil(page) * page;
    let results: Vec<std::io::Result<()>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                s.spawn(move || {
                    let start = i * share;
                    let n = share.min(len.saturating_sub(start));
                    if n == 0 {
                        return Ok(());
                    }
                    // SAFETY: a page-aligned part of the fill mapping, which we own.
                    let r = unsafe {
                        libc::madvise(
                            (base + start as u64) as *mut libc::c_void,
                            n,
                            libc::MADV_POPULATE_WRITE,
                        )
                    };
                    if r == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("populate thread panicked")))
            })
            .collect()
    });
    for r in results {
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => {
                return Err(VmmError::Memory(format!(
                    "cannot map {len} bytes of guest RAM for filling: {e}"
                )));
            }
            Ok(()) => {}
        }
    }
    Ok(())
}

impl GuestRam {
    /// Anonymous guest RAM, allocated as the guest touches it.
    pub fn new(size: u64) -> Result<GuestRam, VmmError> {
        check_size(size)?;
        let region = MmapRegion::<()>::build(
            None,
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
        .map_err(|e| VmmError::Memory(format!("cannot map {size} bytes of guest RAM: {e}")))?;
        GuestRam::from_region(region, size, None)
    }

    /// Guest RAM of `backing`.
    pub fn with_backing(size: u64, backing: Backing) -> Result<GuestRam, VmmError> {
        match backing {
            Backing::Anonymous => GuestRam::new(size),
            Backing::Shared => GuestRam::shared(size),
        }
    }

    /// Guest RAM in a memfd whose every page is allocated now, plus a fill mapping.
    pub fn shared(size: u64) -> Result<GuestRam, VmmError> {
        check_size(size)?;
        // SAFETY: a NUL-terminated name and valid flags.
        let fd = unsafe { libc::memfd_create(c"faultline-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_error("cannot create a memfd for guest RAM".into()));
        }
        // SAFETY: `fd` was just returned to us and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = File::from(fd);
        file.set_len(size)
            .map_err(|e| VmmError::Memory(format!("cannot size guest RAM to {size} bytes: {e}")))?;
        // Allocated before the guest runs, so no fault or fill pays for an allocation.
        // SAFETY: fallocate on our own memfd.
        if unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, size as i64) }
            != 0
        {
            return Err(os_error(format!(
                "cannot allocate {size} bytes of shared guest RAM"
            )));
        }
        // SAFETY: a fresh shared mapping of the whole memfd; checked below.
        let alias = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if alias == libc::MAP_FAILED {
            return Err(os_error(format!(
                "cannot map {size} bytes of guest RAM for filling"
            )));
        }
        let fill_mapping = FillMapping {
            base: alias as u64,
            len: size as usize,
        };
        populate(fill_mapping.base, fill_mapping.len)?;
        // The guest's view: not populated, so every page starts unmapped there.
        let region = MmapRegion::<()>::build(
            Some(FileOffset::new(file, 0)),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(|e| VmmError::Memory(format!("cannot map {size} bytes of guest RAM: {e}")))?;
        GuestRam::from_region(region, size, Some(fill_mapping))
    }

    fn from_region(
        region: MmapRegion<()>,
        size: u64,
        fill_mapping: Option<FillMapping>,
    ) -> Result<GuestRam, VmmError> {
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| VmmError::Memory("guest RAM region overflows".into()))?;
        let host_base = region.as_ptr() as u64;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| VmmError::Memory(format!("cannot build guest memory: {e}")))?;
        Ok(GuestRam {
            mem,
            size,
            host_base,
            fill_mapping,
        })
    }

    pub fn backing(&self) -> Backing {
        if self.fill_mapping.is_some() {
            Backing::Shared
        } else {
            Backing::Anonymous
        }
    }

    /// Host address of `gpa` in the fill mapping (shared backing only): the same page as
    /// the guest's, populated up front and never registered with userfaultfd.
    pub fn fill_addr(&self, gpa: u64) -> Option<u64> {
        self.fill_mapping
            .as_ref()
            .filter(|_| gpa < self.size)
            .map(|m| m.base + gpa)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn pages(&self) -> u64 {
        self.size / PAGE_SIZE
    }

    /// Host virtual address of the first byte of RAM.
    pub fn host_base(&self) -> u64 {
        self.host_base
    }

    /// Host virtual address of `gpa`, if it lies in RAM.
    pub fn host_addr(&self, gpa: u64) -> Option<u64> {
        (gpa < self.size).then(|| self.host_base + gpa)
    }

    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len).is_some_and(|end| end <= self.size)
    }

    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), VmmError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| VmmError::Memory(format!("cannot write guest memory at {gpa:#x}: {e}")))
    }

    /// Copies `data` into `[gpa, gpa + len)` in one memcpy, where [`Self::write`]'s
    /// volatile copy runs at a tenth of the speed (64 MiB: 612 ms against tens). For
    /// memory no running vCPU touches meanwhile: a paused guest's, or an image's.
    pub fn write_bulk(&self, gpa: u64, data: &[u8]) -> Result<(), VmmError> {
        let len = data.len() as u64;
        if !self.contains(gpa, len) {
            return Err(VmmError::Memory(format!(
                "cannot write {len:#x} bytes at {gpa:#x}: outside guest RAM"
            )));
        }
        // SAFETY: the range lies inside this live mapping (checked above) and `data` is
        // valid for reading `len` bytes; the caller keeps vCPUs off the range. Overlap
        // cannot happen for a source in another mapping; `copy` allows it regardless.
        unsafe { std::ptr::copy(data.as_ptr(), (self.host_base + gpa) as *mut u8, data.len()) };
        Ok(())
    }

    pub fn read(&self, gpa: u64, data: &mut [u8]) -> Result<(), VmmError> {
        self.mem
            .read_slice(data, GuestAddress(gpa))
            .map_err(|e| VmmError::Memory(format!("cannot read guest memory at {gpa:#x}: {e}")))
    }

    pub fn write_u64s(&self, gpa: u64, words: &[u64]) -> Result<(), VmmError> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.write(gpa, &bytes)
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64, VmmError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Copies all of `src` into this RAM (same size). Both must be fully present.
    pub fn copy_all_from(&self, src: &GuestRam) -> Result<(), VmmError> {
        if src.size != self.size {
            return Err(VmmError::Memory(format!(
                "cannot copy {} bytes of RAM into {} bytes",
                src.size, self.size
            )));
        }
        // SAFETY: two distinct live mappings of `size` bytes; present by the caller's promise.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.host_base as *const u8,
                self.host_base as *mut u8,
                self.size as usize,
            )
        };
        Ok(())
    }

    /// Copies `[gpa, gpa + len)` from `src` into the same range here, in one memcpy.
    pub fn copy_from(&self, src: &GuestRam, gpa: u64, len: u64) -> Result<(), VmmError> {
        if src.host_base == self.host_base {
            return Err(VmmError::Memory("cannot copy guest RAM onto itself".into()));
        }
        if !src.contains(gpa, len) || !self.contains(gpa, len) {
            return Err(VmmError::Memory(format!(
                "cannot copy {len:#x} bytes at {gpa:#x}: outside guest RAM"
            )));
        }
        // SAFETY: both ranges are inside distinct live mappings (checked above); the range
        // is never registered with a userfaultfd (the caller copies only the boot region
        // or fully present memory).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (src.host_base + gpa) as *const u8,
                (self.host_base + gpa) as *mut u8,
                len as usize,
            )
        };
        Ok(())
    }

    /// The page at `gpa` as a slice of host memory.
    ///
    /// # Safety
    /// The page must be present (not a missing userfaultfd page) for as long as the slice
    /// is read, and the guest may be writing it concurrently.
    pub unsafe fn page_slice(&self, gpa: u64) -> &[u8] {
        let page = gpa & !(PAGE_SIZE - 1);
        // SAFETY: within the mapping (checked by debug assertion), per the caller's promise.
        debug_assert!(page < self.size);
        unsafe {
            std::slice::from_raw_parts((self.host_base + page) as *const u8, PAGE_SIZE as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_ram_shows_fill_mapping_writes_in_the_guest_view() {
        let ram = GuestRam::shared(MIN_MEM_BYTES).unwrap();
        assert_eq!(ram.backing(), Backing::Shared);
        let gpa = 3 * PAGE_SIZE + 16;
        let fill = ram.fill_addr(gpa).unwrap();
        // SAFETY: inside the fill mapping, which is fully populated.
        unsafe { std::ptr::write_volatile(fill as *mut u64, 0xfeed_beef) };
        assert_eq!(ram.read_u64(gpa).unwrap(), 0xfeed_beef);
        ram.write_u64s(gpa + 8, &[7]).unwrap();
        // SAFETY: as above.
        assert_eq!(
            unsafe { std::ptr::read_volatile((fill + 8) as *const u64) },
            7
        );
        assert_eq!(ram.fill_addr(ram.size()), None);
    }

    #[test]
    fn anonymous_ram_has_no_fill_mapping() {
        let ram = GuestRam::new(MIN_MEM_BYTES).unwrap();
        assert_eq!(ram.backing(), Backing::Anonymous);
        assert_eq!(ram.fill_addr(0), None);
    }

    #[test]
    fn backing_names_round_trip_and_bad_ones_say_what_is_expected() {
        for b in [Backing::Anonymous, Backing::Shared] {
            assert_eq!(b.as_str().parse::<Backing>(), Ok(b));
        }
        let err = "hugetlb".parse::<Backing>().unwrap_err();
        assert!(
            err.contains("'hugetlb'") && err.contains("anon or shmem"),
            "{err}"
        );
    }
}
