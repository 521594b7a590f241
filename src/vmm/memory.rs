//! Guest RAM: one anonymous, MAP_NORESERVE mapping at gpa 0, through vm-memory.
//!
//! Owns the mapping and gpa-to-host translation. Pages of a destination VM may be missing
//! (registered with userfaultfd): callers must only read or write pages they know present.

use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::VmmError;
use super::layout::{MAX_MEM_BYTES, MIN_MEM_BYTES, PAGE_SIZE};

#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    host_base: u64,
}

impl GuestRam {
    pub fn new(size: u64) -> Result<GuestRam, VmmError> {
        if !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&size) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(VmmError::MemorySize {
                size,
                min: MIN_MEM_BYTES,
                max: MAX_MEM_BYTES,
            });
        }
        let region = MmapRegion::<()>::build(
            None,
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
        .map_err(|e| VmmError::Memory(format!("cannot map {size} bytes of guest RAM: {e}")))?;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| VmmError::Memory("guest RAM region overflows".into()))?;
        let host_base = region.as_ptr() as u64;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| VmmError::Memory(format!("cannot build guest memory: {e}")))?;
        Ok(GuestRam {
            mem,
            size,
            host_base,
        })
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
