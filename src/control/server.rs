//! Serves a run on a Unix socket: every observer gets the snapshot stream and may send
//! commands. A bad peer or a bad frame closes that one connection; the run never notices.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::ControlError;
use super::protocol::{self, Message, ProtocolError, VERSION};
use crate::contract::Action;
use crate::postcopy::RunStatus;

/// How long a new peer has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates the socket at `path`, mode 0600. A stale socket file (no one listening) is
/// replaced; a live one is refused.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControlError::NotASocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
    }
    // Owner-only from the first moment: no window in which others could connect.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
    Ok(listener)
}

/// The serving side; stops accepting and removes the socket file on drop.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `status`'s snapshots to every observer and passes their commands on.
    pub fn start(
        path: &Path,
        listener: UnixListener,
        status: Arc<RunStatus>,
        actions: Sender<Action>,
    ) -> Result<Server, ControlError> {
        listener.set_nonblocking(true).map_err(ControlError::Io)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let accept = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(listener, status, actions, flag))
            .map_err(ControlError::Io)?;
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(Server {
            path: path.to_path_buf(),
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: UnixListener,
    status: Arc<RunStatus>,
    actions: Sender<Action>,
    stop: Arc<AtomicBool>,
) {
    let mut next_id = 0u64;
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                next_id += 1;
                let (status, actions, stop) = (status.clone(), actions.clone(), stop.clone());
                let id = next_id;
                let spawned = std::thread::Builder::new()
                    .name(format!("observer{id}"))
                    .spawn(move || {
                        if let Err(e) = serve_peer(id, stream, &status, &actions, &stop) {
                            tracing::warn!(observer = id, "connection closed: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!("cannot serve an observer: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The uid of the process at the other end of `stream`.
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the size we pass.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Sends `message` as an error frame (best effort) and closes the connection.
fn refuse(writer: &Mutex<UnixStream>, message: String) -> ControlError {
    if let Ok(mut w) = writer.lock() {
        let _ = protocol::write_frame(
            &mut *w,
            &Message::Error {
                message: message.clone(),
            },
            false,
        );
        let _ = w.flush();
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
    ControlError::Refused(message)
}

fn serve_peer(
    id: u64,
    stream: UnixStream,
    status: &Arc<RunStatus>,
    actions: &Sender<Action>,
    stop: &AtomicBool,
) -> Result<(), ControlError> {
    stream.set_nonblocking(false).map_err(ControlError::Io)?;
    let writer = Arc::new(Mutex::new(stream.try_clone().map_err(ControlError::Io)?));
    let mut reader = stream;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match peer_uid(&reader) {
        Ok(uid) if uid == me || uid == 0 => {}
        Ok(uid) => {
            return Err(refuse(
                &writer,
                format!("uid {uid} may not observe this run"),
            ));
        }
        Err(e) => {
            return Err(refuse(
                &writer,
                format!("cannot check peer credentials: {e}"),
            ));
        }
    }
    reader
        .set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(ControlError::Io)?;
    match protocol::read_frame(&mut reader) {
        Ok(Some(Message::Hello { version, .. })) if version == VERSION => {}
        Ok(Some(Message::Hello { version, .. })) => {
            return Err(refuse(
                &writer,
                ProtocolError::WrongVersion(version).to_string(),
            ));
        }
        Ok(Some(other)) => {
            return Err(refuse(
                &writer,
                format!("expected hello, got {}", kind(&other)),
            ));
        }
        Ok(None) => return Ok(()),
        Err(e) => return Err(refuse(&writer, e.to_string())),
    }
    reader.set_read_timeout(None).map_err(ControlError::Io)?;
    {
        let mut w = writer.lock().map_err(|_| ControlError::Poisoned)?;
        protocol::write_frame(
            &mut *w,
            &Message::Hello {
                version: VERSION,
                peer: "faultline run".into(),
            },
            false,
        )?;
    }
    tracing::info!(observer = id, "observer attached");

    // Snapshots go out on their own thread: a slow observer only ever delays itself.
    let closed = Arc::new(AtomicBool::new(false));
    let sender = {
        let (writer, closed, snapshots) = (writer.clone(), closed.clone(), status.subscribe());
        std::thread::Builder::new()
            .name(format!("observer{id}-out"))
            .spawn(move || {
                while !closed.load(Ordering::Acquire) {
                    let Some(s) = snapshots.recv_timeout(Duration::from_millis(200)) else {
                        continue;
                    };
                    let Ok(mut w) = writer.lock() else { break };
                    let m = Message::Snapshot(Box::new(Arc::unwrap_or_clone(s)));
                    if protocol::write_frame(&mut *w, &m, false).is_err() {
                        break;
                    }
                }
                closed.store(true, Ordering::Release);
            })
            .map_err(ControlError::Io)?
    };
    let result = loop {
        if stop.load(Ordering::Acquire) || closed.load(Ordering::Acquire) {
            break Ok(());
        }
        match protocol::read_frame(&mut reader) {
            Ok(None) => break Ok(()),
            Ok(Some(Message::Command(a))) => {
                tracing::info!(observer = id, action = ?a, "command");
                if actions.try_send(a).is_err() {
                    let _ = writer.lock().map(|mut w| {
                        protocol::write_frame(
                            &mut *w,
                            &Message::Error {
                                message: "the run is not taking commands now".into(),
                            },
                            false,
                        )
                    });
                }
            }
            Ok(Some(other)) => {
                break Err(refuse(
                    &writer,
                    format!("unexpected {} frame", kind(&other)),
                ));
            }
            Err(ProtocolError::Io(_)) if closed.load(Ordering::Acquire) => break Ok(()),
            Err(e) => break Err(refuse(&writer, e.to_string())),
        }
    };
    closed.store(true, Ordering::Release);
    if let Ok(w) = writer.lock() {
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
    let _ = sender.join();
    tracing::info!(observer = id, "observer detached");
    result
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Hello { .. } => "hello",
        Message::Snapshot(_) => "snapshot",
        Message::Command(_) => "command",
        Message::Error { .. } => "error",
    }
}
