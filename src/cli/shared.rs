//! What several subcommands share: the check for a terminal, and a recording fed from a
//! run's snapshots on its own thread.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use faultline::contract::Phase;
use faultline::control::{self, Recorder};
use faultline::postcopy::RunStatus;

use super::args::UsageError;

pub fn need_terminal(what: &str) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(UsageError(format!("{what} needs a terminal on stdin and stdout")).into());
    }
    Ok(())
}

/// A recording fed from a run's snapshots on its own thread; `finish` waits for the last.
pub struct RecordingThread {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), control::ControlError>>,
}

impl RecordingThread {
    /// Waits until the final snapshot is written (the engine has published it by now).
    pub fn finish(self) -> anyhow::Result<()> {
        self.done.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the recording thread panicked"))??;
        Ok(())
    }
}

pub fn spawn_recorder(
    mut recorder: Recorder,
    status: &RunStatus,
) -> anyhow::Result<RecordingThread> {
    let snapshots = status.subscribe();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let thread = std::thread::Builder::new()
        .name("record".into())
        .spawn(move || {
            loop {
                match snapshots.recv_timeout(Duration::from_millis(100)) {
                    Some(s) => {
                        recorder.write(&s)?;
                        if s.summary.is_some() || s.phase == Phase::Failed {
                            return Ok(());
                        }
                    }
                    None if flag.load(Ordering::Acquire) => return Ok(()),
                    None => {}
                }
            }
        })
        .context("cannot start the recording thread")?;
    Ok(RecordingThread { done, thread })
}
