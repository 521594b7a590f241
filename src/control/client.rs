//! `faultline attach`: the TUI's feed from a run served on a control socket.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use super::protocol::{self, Message, VERSION};
use super::{ControlError, Recorder};
use crate::contract::Action;
use crate::contract::Snapshot;
use crate::contract::{Feed, Notice};

/// Snapshots queued before older ones are dropped: the UI only ever wants the newest.
const QUEUE: usize = 8;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SocketFeed {
    path: PathBuf,
    writer: UnixStream,
    snapshots: Receiver<Arc<Snapshot>>,
    notices: Receiver<Notice>,
    lost: Arc<AtomicBool>,
    /// The last snapshot seen, for the caller's final word after the UI closes.
    last: Option<Arc<Snapshot>>,
    recorder_error: Arc<Mutex<Option<String>>>,
}

impl SocketFeed {
    /// Connects, says hello, and starts reading snapshots (recording them if asked).
    pub fn connect(
        path: &Path,
        mut recorder: Option<Recorder>,
    ) -> Result<SocketFeed, ControlError> {
        let stream =
            UnixStream::connect(path).map_err(|e| ControlError::Connect(path.to_path_buf(), e))?;
        let mut writer = stream.try_clone().map_err(ControlError::Io)?;
        let mut reader = stream;
        protocol::write_frame(
            &mut writer,
            &Message::Hello {
                version: VERSION,
                peer: "faultline attach".into(),
            },
            false,
        )?;
        reader
            .set_read_timeout(Some(HELLO_TIMEOUT))
            .map_err(ControlError::Io)?;
        match protocol::read_frame(&mut reader)? {
            Some(Message::Hello { .. }) => {}
            Some(Message::Error { message }) => return Err(ControlError::Refused(message)),
            _ => return Err(ControlError::Refused("the server did not say hello".into())),
        }
        reader.set_read_timeout(None).map_err(ControlError::Io)?;
        let (snap_tx, snapshots) = bounded(QUEUE);
        let (notice_tx, notices) = bounded(QUEUE);
        let lost = Arc::new(AtomicBool::new(false));
        let recorder_error = Arc::new(Mutex::new(None));
        let (flag, oldest, rec_err) = (lost.clone(), snapshots.clone(), recorder_error.clone());
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("attach-in".into())
            .spawn(move || {
                let why = loop {
                    match protocol::read_frame(&mut reader) {
                        Ok(Some(Message::Snapshot(s))) => {
                            if let Some(r) = recorder.as_mut()
                                && let Err(e) = r.write(&s)
                            {
                                if let Ok(mut slot) = rec_err.lock() {
                                    *slot = Some(e.to_string());
                                }
                                recorder = None;
                            }
                            push_newest(&snap_tx, &oldest, Arc::new(*s));
                        }
                        Ok(Some(Message::Error { message })) => {
                            let _ = notice_tx.try_send(Notice::Error(message));
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break format!("{shown}: the run closed the connection"),
                        Err(e) => break format!("{shown}: connection lost: {e}"),
                    }
                };
                flag.store(true, Ordering::Release);
                let _ = notice_tx.try_send(Notice::Error(why));
            })
            .map_err(ControlError::Io)?;
        Ok(SocketFeed {
            path: path.to_path_buf(),
            writer,
            snapshots,
            notices,
            lost,
            last: None,
            recorder_error,
        })
    }

    /// Whether the connection has ended.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    pub fn last(&self) -> Option<&Arc<Snapshot>> {
        self.last.as_ref()
    }

    pub fn recorder_error(&self) -> Option<String> {
        self.recorder_error.lock().ok().and_then(|e| e.clone())
    }
}

/// Queues `s`, dropping the oldest queued snapshot when full.
fn push_newest(tx: &Sender<Arc<Snapshot>>, oldest: &Receiver<Arc<Snapshot>>, s: Arc<Snapshot>) {
    let mut item = s;
    while let Err(crossbeam_channel::TrySendError::Full(back)) = tx.try_send(item) {
        let _ = oldest.try_recv();
        item = back;
    }
}

impl Feed for SocketFeed {
    fn latest(&mut self) -> Option<Arc<Snapshot>> {
        let s = self.snapshots.try_iter().last()?;
        self.last = Some(s.clone());
        Some(s)
    }

    fn act(&mut self, action: Action) -> Result<(), String> {
        if self.lost() {
            return Err(format!("{}: not connected", self.path.display()));
        }
        protocol::write_frame(&mut self.writer, &Message::Command(action), false)
            .map_err(|e| format!("{}: cannot send: {e}", self.path.display()))
    }

    fn label(&self) -> Option<String> {
        Some(if self.lost() {
            "DISCONNECTED".into()
        } else {
            format!("ATTACHED {}", self.path.display())
        })
    }

    fn notice(&mut self) -> Option<Notice> {
        self.notices.try_recv().ok()
    }
}
