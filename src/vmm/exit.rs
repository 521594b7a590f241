//! What a vCPU thread does with each return of KVM_RUN, as a function of the exit, guest
//! RAM, the fault handler and the vCPU's counters alone: every kind of exit is handled and
//! tested without KVM (as firecracker's `handle_kvm_exit`). Exits that need the vCPU's
//! registers (where the guest was, an instruction fetch to translate) go back to the caller.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kvm_ioctls::VcpuExit;

use super::fault::{ExitPath, FillOutcome, MissingPageHandler};
use super::layout::PAGE_SIZE;
use super::memory::GuestRam;
use super::shared::{RunState, VcpuShared};
use crate::guest::ports;

/// KVM_MEMORY_EXIT_FLAG_USERFAULT: the memory fault came from a KVM_MEM_USERFAULT memslot.
const MEMORY_EXIT_FLAG_USERFAULT: u64 = 1 << 4;

/// What the vCPU loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Handled {
    Continue,
    /// The guest reported DONE.
    Done,
    Failed(String),
    /// The guest did something it must not; the caller says where (its rip).
    FailedInGuest(String),
    /// An emulation failure: on PVM an instruction fetch from a missing page, which the
    /// caller finds by translating rip.
    EmulationFailure,
}

pub(super) fn handle_exit(
    exit: Result<VcpuExit<'_>, kvm_ioctls::Error>,
    ram: &GuestRam,
    handler: &Option<Arc<dyn MissingPageHandler>>,
    shared: &VcpuShared,
) -> Handled {
    let done = |r: Result<(), String>| match r {
        Ok(()) => Handled::Continue,
        Err(why) => Handled::Failed(why),
    };
    match exit {
        Ok(VcpuExit::IoOut(port, data)) => match shared.stats.record(ports::decode(port, data)) {
            Some(RunState::Done) => Handled::Done,
            _ => Handled::Continue,
        },
        Ok(VcpuExit::IoIn(_, data)) => {
            data.fill(0xff);
            Handled::Continue
        }
        Ok(VcpuExit::MmioRead(addr, data)) if ram.contains(addr, data.len() as u64) => done(
            // Fill, then complete the access against guest memory, now present.
            fill_page(handler, shared, addr, ExitPath::Mmio)
                .and_then(|_| ram.read(addr, data).map_err(|e| e.to_string())),
        ),
        Ok(VcpuExit::MmioRead(addr, _)) => {
            Handled::Failed(format!("guest read unmapped address {addr:#x}"))
        }
        Ok(VcpuExit::MmioWrite(addr, data)) if ram.contains(addr, data.len() as u64) => done(
            fill_page(handler, shared, addr, ExitPath::Mmio)
                .and_then(|_| ram.write(addr, data).map_err(|e| e.to_string())),
        ),
        Ok(VcpuExit::MmioWrite(addr, _)) => {
            Handled::Failed(format!("guest wrote unmapped address {addr:#x}"))
        }
        Ok(VcpuExit::MemoryFault { flags, gpa, .. }) => {
            let path = if flags & MEMORY_EXIT_FLAG_USERFAULT != 0 {
                ExitPath::KvmUserfault
            } else {
                ExitPath::MemoryFault
            };
            done(fill_page(handler, shared, gpa, path).map(|_| ()))
        }
        Ok(VcpuExit::InternalError) => Handled::EmulationFailure,
        Ok(VcpuExit::Shutdown) => Handled::FailedInGuest("shut down (triple fault)".into()),
        Ok(VcpuExit::Hlt) => Handled::FailedInGuest("halted".into()),
        Ok(VcpuExit::FailEntry(reason, _)) => Handled::Failed(format!(
            "KVM could not enter the guest (reason {reason:#x})"
        )),
        Ok(other) => Handled::FailedInGuest(format!("made an unexpected exit {other:?}")),
        // A kick (immediate_exit and a signal) or a retry: the loop looks at its commands.
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Handled::Continue,
        Err(e) => Handled::Failed(format!("KVM_RUN failed: {e}")),
    }
}

/// Asks the handler to make the page of `gpa` present and counts the exit.
pub(super) fn fill_page(
    handler: &Option<Arc<dyn MissingPageHandler>>,
    shared: &VcpuShared,
    gpa: u64,
    path: ExitPath,
) -> Result<FillOutcome, String> {
    let Some(handler) = handler else {
        return Err(format!(
            "guest touched missing RAM at {gpa:#x} ({}) and no fault handler is installed",
            path.as_str()
        ));
    };
    let outcome = handler.fill(shared.id, gpa & !(PAGE_SIZE - 1), path)?;
    shared.stats.fault_exits[path.index()].fetch_add(1, Ordering::Relaxed);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A handler that records what it was asked and makes nothing present (the page is
    /// ordinary memory here), or fails when told to.
    #[derive(Default)]
    struct Recorder {
        fills: Mutex<Vec<(usize, u64, ExitPath)>>,
        fail: bool,
    }

    impl MissingPageHandler for Recorder {
        fn fill(&self, vcpu: usize, gpa: u64, path: ExitPath) -> Result<FillOutcome, String> {
            self.fills.lock().unwrap().push((vcpu, gpa, path));
            if self.fail {
                Err("the source is gone".into())
            } else {
                Ok(FillOutcome::Filled)
            }
        }
    }

    const MIB: u64 = 1 << 20;

    fn setup(
        fail: bool,
    ) -> (
        GuestRam,
        Arc<Recorder>,
        Option<Arc<dyn MissingPageHandler>>,
        VcpuShared,
    ) {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let rec = Arc::new(Recorder {
            fail,
            ..Recorder::default()
        });
        let handler: Option<Arc<dyn MissingPageHandler>> = Some(rec.clone());
        (ram, rec, handler, VcpuShared::new(3))
    }

    #[test]
    fn an_mmio_read_of_ram_fills_the_page_then_reads_guest_memory() {
        let (ram, rec, handler, shared) = setup(false);
        ram.write(0x20_1008, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let mut data = [0u8; 8];
        let h = handle_exit(
            Ok(VcpuExit::MmioRead(0x20_1008, &mut data)),
            &ram,
            &handler,
            &shared,
        );
        assert_eq!(h, Handled::Continue);
        assert_eq!(data, [1, 2, 3, 4, 5, 6, 7, 8]);
        // The handler is asked for the page, not the byte.
        assert_eq!(
            *rec.fills.lock().unwrap(),
            vec![(3, 0x20_1000, ExitPath::Mmio)]
        );
        assert_eq!(
            shared.stats.fault_exits[ExitPath::Mmio.index()].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn an_mmio_write_of_ram_fills_the_page_then_lands_in_guest_memory() {
        let (ram, _rec, handler, shared) = setup(false);
        let data = 0xdead_beef_u32.to_le_bytes();
        let h = handle_exit(
            Ok(VcpuExit::MmioWrite(0x30_0004, &data)),
            &ram,
            &handler,
            &shared,
        );
        assert_eq!(h, Handled::Continue);
        let mut back = [0u8; 4];
        ram.read(0x30_0004, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn mmio_outside_ram_is_a_failure_and_nothing_is_filled() {
        let (ram, rec, handler, shared) = setup(false);
        let mut data = [0u8; 4];
        let h = handle_exit(
            Ok(VcpuExit::MmioRead(0xfee0_0000, &mut data)),
            &ram,
            &handler,
            &shared,
        );
        assert_eq!(
            h,
            Handled::Failed("guest read unmapped address 0xfee00000".into())
        );
        let h = handle_exit(
            Ok(VcpuExit::MmioWrite(128 * MIB, &data)),
            &ram,
            &handler,
            &shared,
        );
        assert!(matches!(h, Handled::Failed(w) if w.starts_with("guest wrote unmapped")));
        assert!(rec.fills.lock().unwrap().is_empty());
    }

    #[test]
    fn memory_faults_name_their_path_by_the_userfault_flag() {
        let (ram, rec, handler, shared) = setup(false);
        let userfault = VcpuExit::MemoryFault {
            flags: MEMORY_EXIT_FLAG_USERFAULT,
            gpa: 0x40_0123,
            size: 4096,
        };
        assert_eq!(
            handle_exit(Ok(userfault), &ram, &handler, &shared),
            Handled::Continue
        );
        let plain = VcpuExit::MemoryFault {
            flags: 0,
            gpa: 0x50_0000,
            size: 4096,
        };
        assert_eq!(
            handle_exit(Ok(plain), &ram, &handler, &shared),
            Handled::Continue
        );
        assert_eq!(
            *rec.fills.lock().unwrap(),
            vec![
                (3, 0x40_0000, ExitPath::KvmUserfault),
                (3, 0x50_0000, ExitPath::MemoryFault)
            ]
        );
    }

    #[test]
    fn a_fault_without_a_handler_or_with_a_failing_one_fails_the_vcpu() {
        let (ram, _rec, _handler, shared) = setup(false);
        let fault = || VcpuExit::MemoryFault {
            flags: 0,
            gpa: 0x40_0000,
            size: 4096,
        };
        let h = handle_exit(Ok(fault()), &ram, &None, &shared);
        assert!(matches!(h, Handled::Failed(w) if w.contains("no fault handler is installed")));
        let (ram, _rec, failing, shared) = setup(true);
        assert_eq!(
            handle_exit(Ok(fault()), &ram, &failing, &shared),
            Handled::Failed("the source is gone".into())
        );
        assert_eq!(
            shared.stats.fault_exits[ExitPath::MemoryFault.index()].load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn reports_count_progress_and_done_ends_the_loop() {
        let (ram, _rec, handler, shared) = setup(false);
        let progress = 3u32.to_le_bytes();
        let h = handle_exit(
            Ok(VcpuExit::IoOut(ports::PROGRESS, &progress)),
            &ram,
            &handler,
            &shared,
        );
        assert_eq!(h, Handled::Continue);
        assert_eq!(
            shared.stats.guest_accesses.load(Ordering::Relaxed),
            3 * ports::PROGRESS_EVERY
        );
        let done = 7u32.to_le_bytes();
        let h = handle_exit(
            Ok(VcpuExit::IoOut(ports::DONE, &done)),
            &ram,
            &handler,
            &shared,
        );
        assert_eq!(h, Handled::Done);
        let mut input = [0u8; 2];
        let h = handle_exit(
            Ok(VcpuExit::IoIn(0x60, &mut input)),
            &ram,
            &handler,
            &shared,
        );
        assert_eq!((h, input), (Handled::Continue, [0xff, 0xff]));
    }

    #[test]
    fn kicks_continue_and_what_the_guest_must_not_do_fails_where_it_was() {
        let (ram, _rec, handler, shared) = setup(false);
        let kick = Err(kvm_ioctls::Error::new(libc::EINTR));
        assert_eq!(
            handle_exit(kick, &ram, &handler, &shared),
            Handled::Continue
        );
        let broken = Err(kvm_ioctls::Error::new(libc::EFAULT));
        assert!(
            matches!(handle_exit(broken, &ram, &handler, &shared), Handled::Failed(w) if w.starts_with("KVM_RUN failed"))
        );
        assert_eq!(
            handle_exit(Ok(VcpuExit::Shutdown), &ram, &handler, &shared),
            Handled::FailedInGuest("shut down (triple fault)".into())
        );
        assert_eq!(
            handle_exit(Ok(VcpuExit::Hlt), &ram, &handler, &shared),
            Handled::FailedInGuest("halted".into())
        );
        assert_eq!(
            handle_exit(Ok(VcpuExit::InternalError), &ram, &handler, &shared),
            Handled::EmulationFailure
        );
    }
}
