//! The wrapper on the real kernel: faults of one thread served by another, every resolving
//! ioctl, and the errors a caller can meet.

use super::*;
use std::sync::Arc;
use std::sync::mpsc;

const PAGE: usize = 4096;

struct Anon {
    ptr: *mut u8,
    len: usize,
}
// SAFETY: the mapping is plain memory, shared deliberately between test threads.
unsafe impl Send for Anon {}
unsafe impl Sync for Anon {}

impl Anon {
    fn new(len: usize) -> Anon {
        // SAFETY: anonymous private mapping, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Anon {
            ptr: ptr.cast(),
            len,
        }
    }
    fn addr(&self) -> u64 {
        self.ptr as u64
    }
}
impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: unmapping what new() mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

#[test]
fn reports_features_including_thread_id_and_sigbus() {
    let (features, _) = Userfaultfd::available_features().expect("userfaultfd must be usable");
    assert!(features.contains(Features::THREAD_ID));
    assert!(features.contains(Features::SIGBUS));
    assert!(features.names().contains(&"THREAD_ID"));
}

#[test]
fn fault_from_thread_is_resolved_by_copy_with_thread_id() {
    let uffd = Userfaultfd::new(Features::THREAD_ID, false).unwrap();
    let mem = Arc::new(Anon::new(4 * PAGE));
    uffd.register_missing(mem.addr(), mem.len as u64).unwrap();

    let (tid_tx, tid_rx) = mpsc::channel();
    let reader_mem = mem.clone();
    let toucher = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        // SAFETY: reading inside the mapping; the fault is resolved by the test.
        unsafe { std::ptr::read_volatile(reader_mem.ptr.add(PAGE + 8) as *const u64) }
    });
    let tid = tid_rx.recv().unwrap();

    let mut faults = [PageFault {
        address: 0,
        write: false,
        thread_id: 0,
    }; 4];
    let n = uffd.read_faults(&mut faults).unwrap();
    assert_eq!(n, 1);
    assert_eq!(faults[0].address, mem.addr() + PAGE as u64);
    assert!(!faults[0].write);
    assert_eq!(faults[0].thread_id, tid);

    let mut page = vec![0u8; PAGE];
    page[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    // SAFETY: `page` is a live PAGE-sized buffer; the destination page is registered.
    let fill = unsafe { uffd.copy(faults[0].address, page.as_ptr(), PAGE as u64, true) };
    assert_eq!(fill.unwrap(), Fill::Filled);
    assert_eq!(toucher.join().unwrap(), 0x1122_3344_5566_7788);

    // Copying the same page again finds it present: EEXIST, treated as already filled.
    // SAFETY: as above.
    let again = unsafe { uffd.copy(faults[0].address, page.as_ptr(), PAGE as u64, true) };
    assert_eq!(again.unwrap(), Fill::AlreadyPresent);
}

#[test]
fn write_fault_is_resolved_by_zeropage() {
    let uffd = Userfaultfd::new(Features::THREAD_ID, false).unwrap();
    let mem = Arc::new(Anon::new(2 * PAGE));
    uffd.register_missing(mem.addr(), mem.len as u64).unwrap();
    let writer_mem = mem.clone();
    let writer = std::thread::spawn(move || {
        // SAFETY: writing inside the mapping; the fault is resolved by the test.
        unsafe { std::ptr::write_volatile(writer_mem.ptr as *mut u64, 42) };
        // SAFETY: as above, now present.
        unsafe { std::ptr::read_volatile(writer_mem.ptr as *const u64) }
    });
    let mut faults = [PageFault {
        address: 0,
        write: false,
        thread_id: 0,
    }; 1];
    assert_eq!(uffd.read_faults(&mut faults).unwrap(), 1);
    assert!(faults[0].write);
    assert_eq!(faults[0].address, mem.addr());
    // Zeropage maps the page read-only-shared; the write then takes an ordinary COW.
    assert_eq!(
        uffd.zeropage(mem.addr(), PAGE as u64).unwrap(),
        Fill::Filled
    );
    assert_eq!(writer.join().unwrap(), 42);
    assert_eq!(
        uffd.zeropage(mem.addr(), PAGE as u64).unwrap(),
        Fill::AlreadyPresent
    );
}

#[test]
fn minor_fault_is_resolved_by_writing_the_cache_and_continuing() {
    let uffd = Userfaultfd::new(Features::MINOR_SHMEM, false).unwrap();
    let len = 2 * PAGE;
    // SAFETY: a fresh memfd, sized and mapped twice below; every call is checked.
    let (guest, fill) = unsafe {
        let fd = libc::memfd_create(c"uffd-test".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(libc::fallocate(fd, 0, 0, len as i64), 0);
        let map = |flags| {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | flags,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            p as u64
        };
        let r = (map(0), map(libc::MAP_POPULATE));
        libc::close(fd);
        r
    };
    uffd.register_minor(guest, len as u64).unwrap();
    let reader = std::thread::spawn(move || {
        // SAFETY: reading the guest view; the minor fault is resolved by the test.
        unsafe { std::ptr::read_volatile((guest + PAGE as u64) as *const u64) }
    });
    let mut faults = [PageFault {
        address: 0,
        write: false,
        thread_id: 0,
    }; 1];
    assert_eq!(uffd.read_faults(&mut faults).unwrap(), 1);
    assert_eq!(faults[0].address, guest + PAGE as u64);
    // SAFETY: the fill view is populated and never registered.
    unsafe { std::ptr::write_volatile((fill + PAGE as u64) as *mut u64, 99) };
    assert_eq!(
        uffd.continue_pages(faults[0].address, PAGE as u64, true)
            .unwrap(),
        Fill::Filled
    );
    assert_eq!(reader.join().unwrap(), 99);
    assert_eq!(
        uffd.continue_pages(faults[0].address, PAGE as u64, true)
            .unwrap(),
        Fill::AlreadyPresent
    );
    // SAFETY: unmapping the two views made above.
    unsafe {
        libc::munmap(guest as *mut libc::c_void, len);
        libc::munmap(fill as *mut libc::c_void, len);
    }
}

#[test]
fn nonblocking_read_returns_zero_without_events() {
    let uffd = Userfaultfd::new(Features::NONE, true).unwrap();
    let mem = Anon::new(PAGE);
    uffd.register_missing(mem.addr(), PAGE as u64).unwrap();
    let mut faults = [PageFault {
        address: 0,
        write: false,
        thread_id: 0,
    }; 1];
    assert_eq!(uffd.read_faults(&mut faults).unwrap(), 0);
    uffd.unregister(mem.addr(), PAGE as u64).unwrap();
    // Unregistered memory faults in normally again.
    // SAFETY: reading an ordinary anonymous page.
    assert_eq!(unsafe { std::ptr::read_volatile(mem.ptr as *const u64) }, 0);
}

#[test]
fn register_outside_a_mapping_names_the_range() {
    let uffd = Userfaultfd::new(Features::NONE, true).unwrap();
    let err = uffd.register_missing(0x1000, 0x1000).unwrap_err();
    assert!(err.to_string().contains("0x1000"), "{err}");
}
