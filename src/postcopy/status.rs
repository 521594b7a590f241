//! What a run shares with its observers: the phase, the migration in progress, a stop
//! request, short notes for the status line, and the subscribers that receive snapshots.
//! None of it is touched on a fault path: the engine writes at phase changes, the monitor
//! reads at its tick.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::Destination;
use crate::contract::{Phase, Snapshot};
use crate::vmm::VcpuShared;

/// Snapshots queued per subscriber before newer ones are dropped for it.
const SUBSCRIBER_QUEUE: usize = 8;
const NOTE_QUEUE: usize = 64;

/// The VM whose vCPUs run now: the source during warm-up, then each destination in turn.
pub struct LiveMigration {
    /// 0 during warm-up, then 1, 2, ... per migration.
    pub number: u32,
    pub vcpus: Vec<Arc<VcpuShared>>,
    pub dest: Option<Arc<Destination>>,
    /// The page server's link, when pages travel over TCP.
    pub link: Option<super::net::LinkSwitch>,
    pub switched_at: Option<Instant>,
    pub downtime: Option<Duration>,
    /// Each vCPU's guest accesses per second during warm-up, on the source.
    pub baseline_per_sec: Vec<f64>,
}

pub struct RunStatus {
    phase: AtomicU8,
    live: RwLock<Option<Arc<LiveMigration>>>,
    stop: AtomicBool,
    notes: (Sender<String>, Receiver<String>),
    subscribers: Mutex<Vec<Subscriber>>,
}

/// The publishing end of a subscription; it keeps a receiver too, to drop the oldest
/// snapshot when the queue is full, so a slow observer sees the newest, never a stale one.
struct Subscriber {
    tx: Sender<Arc<Snapshot>>,
    oldest: Receiver<Arc<Snapshot>>,
    gone: Arc<AtomicBool>,
}

/// A stream of snapshots; dropping it unsubscribes.
pub struct Subscription {
    rx: Receiver<Arc<Snapshot>>,
    gone: Arc<AtomicBool>,
}

impl Subscription {
    /// For `select!` and blocking reads.
    pub fn receiver(&self) -> &Receiver<Arc<Snapshot>> {
        &self.rx
    }

    /// The newest snapshot queued, if any, skipping older ones.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.rx.try_iter().last()
    }

    pub fn recv_timeout(&self, d: Duration) -> Option<Arc<Snapshot>> {
        self.rx.recv_timeout(d).ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.gone.store(true, Ordering::Release);
    }
}

impl Default for RunStatus {
    fn default() -> Self {
        RunStatus {
            phase: AtomicU8::new(Phase::Warmup as u8),
            live: RwLock::new(None),
            stop: AtomicBool::new(false),
            notes: bounded(NOTE_QUEUE),
            subscribers: Mutex::new(Vec::new()),
        }
    }
}

impl RunStatus {
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    pub(crate) fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    /// The migration in progress, if the run has started.
    pub fn live(&self) -> Option<Arc<LiveMigration>> {
        self.live.read().ok().and_then(|l| l.clone())
    }

    pub(crate) fn set_live(&self, m: LiveMigration) {
        if let Ok(mut l) = self.live.write() {
            *l = Some(Arc::new(m));
        }
    }

    /// Asks the run to end: it stops the guest, fills what is missing and checks the data.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// A line for observers' status lines; dropped if nobody reads them fast enough.
    pub fn note(&self, text: impl Into<String>) {
        let text = text.into();
        tracing::info!("{text}");
        let _ = self.notes.0.try_send(text);
    }

    pub(crate) fn take_notes(&self) -> impl Iterator<Item = String> + '_ {
        self.notes.1.try_iter()
    }

    /// A new stream of snapshots. A subscriber that falls behind loses its oldest queued
    /// snapshots, never slows the run.
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = bounded(SUBSCRIBER_QUEUE);
        let gone = Arc::new(AtomicBool::new(false));
        if let Ok(mut s) = self.subscribers.lock() {
            s.push(Subscriber {
                tx,
                oldest: rx.clone(),
                gone: gone.clone(),
            });
        }
        Subscription { rx, gone }
    }

    pub(crate) fn publish(&self, snapshot: Arc<Snapshot>) {
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.retain(|s| !s.gone.load(Ordering::Acquire));
            for s in subs.iter() {
                let mut item = snapshot.clone();
                while let Err(TrySendError::Full(back)) = s.tx.try_send(item) {
                    let _ = s.oldest.try_recv();
                    item = back;
                }
            }
        }
    }
}
