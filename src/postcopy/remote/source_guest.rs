//! The source's side of a migration between processes: its running guest, handed over at
//! a destination's switchover and given up only on that destination's commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::{COMMIT_WAIT, Handover, Offer};
use crate::postcopy::net::wire::{MAX_CONTROL_ANSWER, Op};
use crate::postcopy::net::{self, MigrationControl};
use crate::vmm::layout;
use crate::vmm::{Vm, state::VcpuState};

/// The source's side: its running guest, until a destination takes it over.
pub struct SourceGuest {
    offer: Offer,
    /// The guest runs in one place only: once handed over, a second switchover is refused.
    guest: Mutex<Slot>,
    /// When the guest started, and its accesses then, for the baseline.
    pace_from: Mutex<(Instant, Vec<u64>)>,
    finished: AtomicBool,
}

/// Where the source's guest is.
enum Slot {
    Running(Vm),
    /// Paused, handover `id` sent `since`: given up when a destination commits it, taken
    /// back if none does within [`COMMIT_WAIT`].
    Handing {
        vm: Vm,
        id: u64,
        since: Instant,
    },
    HandedOver {
        id: u64,
    },
    /// Only while a transition moves the VM out under the lock.
    Vacant,
}

impl Slot {
    fn vm(&self) -> Option<&Vm> {
        match self {
            Slot::Running(vm) | Slot::Handing { vm, .. } => Some(vm),
            Slot::HandedOver { .. } | Slot::Vacant => None,
        }
    }
}

/// Resumes `vm`, paused for a handover nobody took, and says how that went.
fn run_on(vm: Vm, why: &str) -> (Slot, String) {
    let said = match vm.resume_all() {
        Ok(()) => format!("{why}; the guest runs on here"),
        Err(e) => format!("{why}, and the guest cannot resume here: {e}"),
    };
    (Slot::Running(vm), said)
}

/// Why an unconfirmed handover is taken back.
fn unconfirmed() -> String {
    format!(
        "no destination confirmed the handover within {} s",
        COMMIT_WAIT.as_secs()
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing is left half-done under these locks.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SourceGuest {
    /// `vm` must be running its workload.
    pub fn new(offer: Offer, vm: Vm) -> SourceGuest {
        let accesses = accesses(&vm);
        SourceGuest {
            offer,
            guest: Mutex::new(Slot::Running(vm)),
            pace_from: Mutex::new((Instant::now(), accesses)),
            finished: AtomicBool::new(false),
        }
    }

    /// Starts the baseline's window now: the guest's pace before the switchover is
    /// measured from the last call (the source calls this once its guest is warm).
    pub fn mark_pace(&self) {
        if let Slot::Running(vm) = &*lock(&self.guest) {
            *lock(&self.pace_from) = (Instant::now(), accesses(vm));
        }
    }

    pub fn switched_over(&self) -> bool {
        matches!(*lock(&self.guest), Slot::HandedOver { .. })
    }

    /// Takes back a guest whose handover no destination committed within [`COMMIT_WAIT`]
    /// and runs it on here; says what happened when it did. (A late commit takes it back
    /// too, and is refused: this is for the source that hears nothing.)
    pub fn take_back_unconfirmed(&self) -> Option<String> {
        let mut slot = lock(&self.guest);
        let Slot::Handing { since, .. } = &*slot else {
            return None;
        };
        if since.elapsed() < COMMIT_WAIT {
            return None;
        }
        let Slot::Handing { vm, .. } = std::mem::replace(&mut *slot, Slot::Vacant) else {
            return None;
        };
        let (running, said) = run_on(vm, &unconfirmed());
        *slot = running;
        Some(said)
    }

    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Why the guest stopped on its own, if it did (before any switchover).
    pub fn failure(&self) -> Option<String> {
        lock(&self.guest).vm().and_then(Vm::failure)
    }

    /// Pauses the guest and encodes what the destination resumes it from. The guest is
    /// given up only once its handover is whole and written ([`Self::answered`]); until
    /// then it can run on here.
    fn hand_over(&self) -> Result<Vec<u8>, String> {
        let mut slot = lock(&self.guest);
        let vm = match &*slot {
            Slot::Running(vm) => vm,
            Slot::Handing { .. } => {
                return Err("another destination is taking the guest over".into());
            }
            Slot::HandedOver { .. } | Slot::Vacant => {
                return Err(
                    "the guest has been handed over already: it runs at another destination".into(),
                );
            }
        };
        let id = net::new_token();
        let handover = vm
            .pause_and_capture_all()
            .map_err(|e| e.to_string())
            .and_then(|states| self.handover(vm, id, states));
        match handover {
            Ok(bytes) => {
                if let Slot::Running(vm) = std::mem::replace(&mut *slot, Slot::Vacant) {
                    *slot = Slot::Handing {
                        vm,
                        id,
                        since: Instant::now(),
                    };
                }
                Ok(bytes)
            }
            Err(why) => match vm.resume_all() {
                Ok(()) => Err(format!("{why}; the guest runs on at the source")),
                Err(e) => Err(format!("{why}; the guest could not be resumed either: {e}")),
            },
        }
    }

    /// Settles handover `id` once its answer was written (the commit is awaited from now)
    /// or was not (the guest runs on here at once). Another handover's slot is left be.
    fn settle(&self, id: u64, written: bool) {
        let mut slot = lock(&self.guest);
        match std::mem::replace(&mut *slot, Slot::Vacant) {
            Slot::Handing { vm, id: sent, .. } if sent == id && written => {
                *slot = Slot::Handing {
                    vm,
                    id,
                    since: Instant::now(),
                };
            }
            Slot::Handing { vm, id: sent, .. } if sent == id => {
                let (running, said) = run_on(vm, "the handover could not be sent");
                tracing::warn!("{said}");
                *slot = running;
            }
            other => *slot = other,
        }
    }

    /// A destination has handover `id` and runs the guest: give it up, once. A commit
    /// later than [`COMMIT_WAIT`] takes the guest back instead, whoever else would.
    fn commit_handover(&self, id: u64) -> Result<(), String> {
        let mut slot = lock(&self.guest);
        match std::mem::replace(&mut *slot, Slot::Vacant) {
            Slot::Handing {
                vm,
                id: sent,
                since,
            } if sent == id => {
                if since.elapsed() >= COMMIT_WAIT {
                    let (running, said) = run_on(vm, &unconfirmed());
                    *slot = running;
                    return Err(said);
                }
                *slot = Slot::HandedOver { id };
                // Its vCPU threads end away from the lock and the answer the destination
                // waits for (its downtime); the RAM lives on in the page server's image.
                let _ = std::thread::Builder::new()
                    .name("retire-guest".into())
                    .spawn(move || drop(vm));
                Ok(())
            }
            // A repeat whose first answer was lost.
            Slot::HandedOver { id: given } if given == id => {
                *slot = Slot::HandedOver { id };
                Ok(())
            }
            other => {
                let why = match &other {
                    Slot::Running(_) => {
                        format!("{}; the guest runs on at the source", unconfirmed())
                    }
                    _ => "that handover is not the source's last: another destination has the \
                          guest"
                        .into(),
                };
                *slot = other;
                Err(why)
            }
        }
    }

    /// The encoded handover of `vm`, paused, whose vCPUs are in `states`.
    fn handover(&self, vm: &Vm, id: u64, states: Vec<VcpuState>) -> Result<Vec<u8>, String> {
        let (since, before) = lock(&self.pace_from).clone();
        let secs = since.elapsed().as_secs_f64().max(1e-6);
        let baseline_per_sec = accesses(vm)
            .iter()
            .zip(before.iter().chain(std::iter::repeat(&0)))
            .map(|(&now, &then)| now.saturating_sub(then) as f64 / secs)
            .collect();
        let config = vm.config();
        let boot = layout::live_boot_ranges(config.mem_bytes, config.vcpus)
            .into_iter()
            .map(|(gpa, len)| {
                let mut bytes = vec![0u8; len as usize];
                vm.ram().read(gpa, &mut bytes).map(|()| (gpa, bytes))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let bytes = Handover {
            id,
            baseline_per_sec,
            states,
            boot,
        }
        .encode();
        // Checked here, while the guest can still run on, not by the server after.
        if bytes.len() as u64 > MAX_CONTROL_ANSWER {
            return Err(format!(
                "a handover of {} bytes is over the {MAX_CONTROL_ANSWER} a control answer \
                 may take",
                bytes.len()
            ));
        }
        Ok(bytes)
    }
}

fn accesses(vm: &Vm) -> Vec<u64> {
    vm.vcpus()
        .iter()
        .map(|v| v.stats().guest_accesses.load(Ordering::Relaxed))
        .collect()
}

impl MigrationControl for SourceGuest {
    fn describe(&self) -> Vec<u8> {
        serde_json::to_vec(&self.offer).unwrap_or_default()
    }

    fn switch_over(&self) -> Result<Vec<u8>, String> {
        self.hand_over()
    }

    fn commit(&self, id: u64) -> Result<(), String> {
        self.commit_handover(id)
    }

    fn finish(&self) -> Result<(), String> {
        if self.switched_over() {
            Ok(())
        } else {
            Err("the guest has not been handed over: there is nothing to finish".into())
        }
    }

    fn answered(&self, op: Op, answer: &[u8], written: bool) {
        match op {
            // The handover's id leads its encoding.
            Op::Switchover => {
                if let Some(id) = answer.first_chunk::<8>() {
                    self.settle(u64::from_le_bytes(*id), written);
                }
            }
            Op::Finish if written => self.finished.store(true, Ordering::Release),
            _ => {}
        }
    }
}

/// Shares a source guest with the page server that answers for it.
pub fn control(guest: &Arc<SourceGuest>) -> Arc<dyn MigrationControl> {
    guest.clone()
}
