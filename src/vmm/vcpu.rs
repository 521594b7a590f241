//! One named thread per vCPU, running an explicit state machine (running, paused, stopped,
//! plus the terminal done and failed). Control goes in as commands on a channel; a kick
//! (immediate_exit plus a signal) makes a running vCPU leave KVM_RUN at once, even if the
//! guest never exits by itself.
//!
//! Owns the VcpuFd for the thread's lifetime and the per-vCPU lock-free counters. May not
//! block on anything shared with an observer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use super::VmmError;
use super::exit::{Handled, fill_page, handle_exit};
use super::fault::{ExitPath, FillOutcome, MissingPageHandler};
use super::memory::GuestRam;
use super::shared::{RunState, VcpuShared, VcpuStats, clock_ns};
use super::state::{CaptureSpec, VcpuState};

/// How long a command waits for the vCPU thread to answer before calling it unresponsive.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

enum Command {
    Pause(Sender<()>),
    Resume,
    Stop,
    Capture(CaptureSpec, Sender<Result<VcpuState, VmmError>>),
    Restore(Box<VcpuState>, Sender<Result<(), VmmError>>),
}

/// Pointer to the vCPU's `kvm_run.immediate_exit`. The mapping lives as long as the
/// VcpuFd, which the thread hands back through its join handle, so it outlives every kick.
struct ImmediateExit(*mut u8);
// SAFETY: a byte in a shared mapping the kernel reads with READ_ONCE; written volatile.
unsafe impl Send for ImmediateExit {}
unsafe impl Sync for ImmediateExit {}

/// A pause in flight.
pub struct PauseAck {
    id: usize,
    rx: Receiver<()>,
}

impl PauseAck {
    pub fn wait(self) -> Result<(), VmmError> {
        self.rx
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| VmmError::VcpuUnresponsive(self.id))
    }
}

/// The answer to a capture or restore in flight.
pub struct Reply<T> {
    id: usize,
    rx: Receiver<Result<T, VmmError>>,
}

impl<T> Reply<T> {
    pub fn wait(self) -> Result<T, VmmError> {
        self.rx
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| VmmError::VcpuUnresponsive(self.id))?
    }
}

/// Controller side of one vCPU thread.
pub struct VcpuHandle {
    shared: Arc<VcpuShared>,
    commands: Sender<Command>,
    immediate_exit: ImmediateExit,
    thread: Option<JoinHandle<VcpuFd>>,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn install_kick_handler() -> Result<(), VmmError> {
    // Registered once per process; every later caller sees the first outcome.
    static INSTALLED: OnceLock<Option<i32>> = OnceLock::new();
    let failed = INSTALLED.get_or_init(|| {
        register_signal_handler(kick_signal(), kick_handler)
            .err()
            .map(|e| e.errno())
    });
    match failed {
        None => Ok(()),
        Some(errno) => Err(VmmError::Signal(std::io::Error::from_raw_os_error(*errno))),
    }
}

impl VcpuHandle {
    /// Starts the thread for `fd`, paused.
    pub(crate) fn spawn(
        id: usize,
        mut fd: VcpuFd,
        ram: Arc<GuestRam>,
        handler: Option<Arc<dyn MissingPageHandler>>,
    ) -> Result<VcpuHandle, VmmError> {
        install_kick_handler()?;
        let immediate_exit = ImmediateExit(&mut fd.get_kvm_run().immediate_exit as *mut u8);
        let shared = Arc::new(VcpuShared::new(id));
        let (tx, rx) = unbounded();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let mut runner = Runner {
                    fd,
                    shared: thread_shared,
                    ram,
                    handler,
                    commands: rx,
                };
                runner.run();
                runner.fd
            })
            .map_err(VmmError::Thread)?;
        let handle = VcpuHandle {
            shared,
            commands: tx,
            immediate_exit,
            thread: Some(thread),
        };
        // Wait for the thread to publish its tid, so uffd attribution works from the start.
        while handle.shared.thread_id() == 0 {
            std::thread::yield_now();
        }
        Ok(handle)
    }

    pub fn id(&self) -> usize {
        self.shared.id
    }

    pub fn shared(&self) -> &Arc<VcpuShared> {
        &self.shared
    }

    pub fn stats(&self) -> &VcpuStats {
        &self.shared.stats
    }

    pub fn state(&self) -> RunState {
        self.shared.state()
    }

    /// Why the vCPU failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().ok().and_then(|f| f.clone())
    }

    fn send(&self, cmd: Command) -> Result<(), VmmError> {
        self.commands
            .send(cmd)
            .map_err(|_| VmmError::VcpuGone(self.shared.id))
    }

    /// Makes the thread leave KVM_RUN now and look at its commands.
    fn kick(&self) {
        // SAFETY: the kvm_run mapping outlives this handle's thread (see ImmediateExit).
        unsafe { std::ptr::write_volatile(self.immediate_exit.0, 1) };
        if let Some(t) = &self.thread {
            // A thread that has already returned cannot be signalled; that is fine.
            let _ = t.kill(kick_signal());
        }
    }

    /// Asks the vCPU to stop running guest code; [`PauseAck::wait`] returns once it is out
    /// of KVM_RUN. Lets a controller kick every vCPU before waiting for any.
    pub fn begin_pause(&self) -> Result<PauseAck, VmmError> {
        let (ack_tx, ack_rx) = bounded(1);
        self.send(Command::Pause(ack_tx))?;
        self.kick();
        Ok(PauseAck {
            id: self.shared.id,
            rx: ack_rx,
        })
    }

    /// Stops the vCPU from running guest code; returns once it is out of KVM_RUN.
    pub fn pause(&self) -> Result<(), VmmError> {
        self.begin_pause()?.wait()
    }

    pub fn resume(&self) -> Result<(), VmmError> {
        self.send(Command::Resume)
    }

    /// Asks a paused vCPU for its state; the answer comes on the returned channel, so a
    /// controller can ask every vCPU before waiting for any.
    pub fn begin_capture(&self, spec: &CaptureSpec) -> Result<Reply<VcpuState>, VmmError> {
        let (tx, rx) = bounded(1);
        self.send(Command::Capture(spec.clone(), tx))?;
        Ok(Reply {
            id: self.shared.id,
            rx,
        })
    }

    /// Captures the state of a paused vCPU.
    pub fn capture(&self, spec: &CaptureSpec) -> Result<VcpuState, VmmError> {
        self.begin_capture(spec)?.wait()
    }

    /// Restores `state` into a paused vCPU; the outcome comes on the returned channel.
    pub fn begin_restore(&self, state: VcpuState) -> Result<Reply<()>, VmmError> {
        let (tx, rx) = bounded(1);
        self.send(Command::Restore(Box::new(state), tx))?;
        Ok(Reply {
            id: self.shared.id,
            rx,
        })
    }

    /// Restores `state` into a paused vCPU.
    pub fn restore(&self, state: VcpuState) -> Result<(), VmmError> {
        self.begin_restore(state)?.wait()
    }

    /// Ends the thread and waits for it.
    pub fn stop(&mut self) {
        if self.send(Command::Stop).is_ok() {
            self.kick();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Runner {
    fd: VcpuFd,
    shared: Arc<VcpuShared>,
    ram: Arc<GuestRam>,
    handler: Option<Arc<dyn MissingPageHandler>>,
    commands: Receiver<Command>,
}

/// What one exit means for the state machine.
enum Outcome {
    Continue,
    Done,
    Failed(String),
}

impl Runner {
    fn run(&mut self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        self.shared.tid.store(tid, Ordering::Release);
        let mut state = RunState::Paused;
        loop {
            self.shared.publish(state);
            match state {
                RunState::Running => {
                    // Clear before draining: a kick that lands after the drain keeps it set.
                    self.fd.set_kvm_immediate_exit(0);
                    while let Ok(cmd) = self.commands.try_recv() {
                        state = self.apply(cmd, state);
                    }
                    if state != RunState::Running {
                        continue;
                    }
                    match self.run_once() {
                        Outcome::Continue => {}
                        Outcome::Done => state = RunState::Done,
                        Outcome::Failed(why) => {
                            if let Ok(mut f) = self.shared.failure.lock() {
                                *f = Some(why);
                            }
                            state = RunState::Failed;
                        }
                    }
                }
                RunState::Stopped => return,
                RunState::Paused | RunState::Done | RunState::Failed => {
                    match self.commands.recv() {
                        Ok(cmd) => state = self.apply(cmd, state),
                        Err(_) => return,
                    }
                }
            }
        }
    }

    fn apply(&mut self, cmd: Command, state: RunState) -> RunState {
        let not_running = state != RunState::Running;
        match cmd {
            Command::Pause(ack) => {
                let next = if state == RunState::Running {
                    RunState::Paused
                } else {
                    state
                };
                // Publish before acking: whoever waited may look at the state next.
                self.shared.publish(next);
                let _ = ack.send(());
                next
            }
            Command::Resume => {
                if state == RunState::Paused {
                    let _ = self.shared.stats.first_resumed_ns.compare_exchange(
                        0,
                        clock_ns(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    RunState::Running
                } else {
                    state
                }
            }
            Command::Stop => RunState::Stopped,
            Command::Capture(spec, reply) => {
                let r = if not_running {
                    VcpuState::capture(&self.fd, &spec)
                } else {
                    Err(VmmError::NotPaused(self.shared.id))
                };
                let _ = reply.send(r);
                state
            }
            Command::Restore(vs, reply) => {
                let r = if not_running {
                    vs.restore(&self.fd)
                } else {
                    Err(VmmError::NotPaused(self.shared.id))
                };
                let _ = reply.send(r);
                state
            }
        }
    }

    fn fill(&self, gpa: u64, path: ExitPath) -> Result<FillOutcome, String> {
        fill_page(&self.handler, &self.shared, gpa, path)
    }

    fn run_once(&mut self) -> Outcome {
        let id = self.shared.id;
        let exit = self.fd.run();
        self.shared.stats.exits.fetch_add(1, Ordering::Relaxed);
        let result = match handle_exit(exit, &self.ram, &self.handler, &self.shared) {
            Handled::Continue => Ok(()),
            Handled::Done => return Outcome::Done,
            Handled::Failed(why) => Err(why),
            Handled::FailedInGuest(what) => Err(self.describe(&what)),
            Handled::EmulationFailure => self.instruction_fetch_fault(),
        };
        match result {
            Ok(()) => Outcome::Continue,
            Err(why) => Outcome::Failed(format!("vCPU {id}: {why}")),
        }
    }

    /// On PVM an instruction fetch from a missing page is an emulation failure: find the
    /// page through the guest's page tables, fill it, and let the vCPU retry.
    fn instruction_fetch_fault(&mut self) -> Result<(), String> {
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let translated = self
            .fd
            .translate_gva(rip)
            .ok()
            .filter(|t| t.valid != 0)
            .map(|t| t.physical_address);
        match translated {
            Some(gpa) if self.ram.contains(gpa, 1) && self.handler.is_some() => {
                match self.fill(gpa, ExitPath::InstructionFetch)? {
                    FillOutcome::Filled => Ok(()),
                    FillOutcome::AlreadyPresent => {
                        Err(self.describe("hit an emulation failure on a present page"))
                    }
                }
            }
            _ => Err(self.describe("hit an emulation failure")),
        }
    }

    fn describe(&self, what: &str) -> String {
        match self.fd.get_regs() {
            Ok(r) => format!("guest {what} at rip {:#x}", r.rip),
            Err(_) => format!("guest {what}"),
        }
    }
}
