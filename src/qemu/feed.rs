//! The TUI's feed from a real QEMU migration: a [`Watcher`] on its own thread makes a
//! snapshot every tick and publishes it (the newest kept, nobody waits); operator actions
//! go to it over a bounded channel and come back as status-line notices. What QEMU cannot
//! do is refused here, before anything is sent.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use super::QemuError;
use super::watch::Watcher;
use crate::contract::{Action, Summary};
use crate::contract::{Feed, Notice};
use crate::contract::{Phase, Snapshot};
use crate::postcopy::RunStatus;
use crate::postcopy::status::Subscription;

const TICK: Duration = Duration::from_millis(100);

/// How the watch ended, and the run's summary.
#[derive(Debug)]
pub struct Ended {
    pub summary: Summary,
    /// Why QEMU went away before the observer stopped, if it did.
    pub lost: Option<String>,
}

pub struct QemuFeed {
    status: Arc<RunStatus>,
    snapshots: Subscription,
    actions: Sender<Action>,
    notices: Receiver<Notice>,
    thread: Option<JoinHandle<Ended>>,
    label: String,
    last: Option<Arc<Snapshot>>,
}

impl QemuFeed {
    /// Starts watching on a thread of its own.
    pub fn start(watcher: Watcher, label: String) -> Result<QemuFeed, QemuError> {
        let status = Arc::new(RunStatus::default());
        let snapshots = status.subscribe();
        let (actions, action_rx) = bounded(16);
        let (notice_tx, notices) = bounded(16);
        let shared = status.clone();
        let thread = std::thread::Builder::new()
            .name("qemu-watch".into())
            .spawn(move || watch(watcher, &shared, &action_rx, &notice_tx))
            .map_err(|e| QemuError::Thread(e.to_string()))?;
        Ok(QemuFeed {
            status,
            snapshots,
            actions,
            notices,
            thread: Some(thread),
            label,
            last: None,
        })
    }

    /// Where snapshots are published (for a recorder, or a launcher's own wait).
    pub fn status(&self) -> &Arc<RunStatus> {
        &self.status
    }

    /// Whether the watch has ended (QEMU went away, or [`QemuFeed::finish`] began).
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops watching and returns the summary (the final snapshot carries it too).
    pub fn finish(mut self) -> Result<Ended, QemuError> {
        self.status.request_stop();
        let thread = self
            .thread
            .take()
            .ok_or_else(|| QemuError::Thread("the watch has already ended".into()))?;
        thread
            .join()
            .map_err(|_| QemuError::Thread("the QEMU watcher panicked".into()))
    }
}

impl Drop for QemuFeed {
    fn drop(&mut self) {
        self.status.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(
    mut w: Watcher,
    status: &RunStatus,
    actions: &Receiver<Action>,
    notices: &Sender<Notice>,
) -> Ended {
    let mut next = Instant::now();
    let mut last: Option<Snapshot> = None;
    let lost = loop {
        for a in actions.try_iter() {
            let _ = notices.try_send(match w.act(a) {
                Ok(m) => Notice::Info(m),
                Err(m) => Notice::Error(m),
            });
        }
        match w.tick() {
            Ok(s) => {
                status.set_phase(s.phase);
                status.publish(Arc::new(s.clone()));
                last = Some(s);
            }
            Err(e) => {
                let why = format!("DISCONNECTED: {e}");
                tracing::warn!(%why, "QEMU watch ends");
                let _ = notices.try_send(Notice::Error(why.clone()));
                break Some(why);
            }
        }
        if status.stop_requested() {
            break None;
        }
        next += TICK;
        let now = Instant::now();
        match next.checked_duration_since(now) {
            Some(d) => std::thread::sleep(d),
            None => next = now,
        }
    };
    let mut fin = last.unwrap_or_else(|| w.picture());
    let summary = w.summary(&fin);
    // A snapshot of its own: observers and recorders skip one they have seen.
    fin.seq += 1;
    fin.phase = if lost.is_some() && fin.phase != Phase::Complete {
        Phase::Failed
    } else {
        Phase::Finished
    };
    fin.summary = Some(summary.clone());
    fin.message = lost.clone().or(fin.message);
    status.set_phase(fin.phase);
    status.publish(Arc::new(fin));
    Ended { summary, lost }
}

impl Feed for QemuFeed {
    fn latest(&mut self) -> Option<Arc<Snapshot>> {
        let s = self.snapshots.latest()?;
        self.last = Some(s.clone());
        Some(s)
    }

    fn act(&mut self, action: Action) -> Result<(), String> {
        if self.ended() {
            return Err("the QEMU watch has ended: nothing left to act on (q quits)".into());
        }
        self.actions
            .try_send(action)
            .map_err(|_| "the QEMU watcher is busy; try again".to_string())
    }

    fn label(&self) -> Option<String> {
        Some(self.label.clone())
    }

    fn notice(&mut self) -> Option<Notice> {
        self.notices.try_recv().ok()
    }
}
