//! The page server: serves the source's memory image over TCP, a thread per connection (a
//! destination opens one per thread that fetches at once). A client that breaks the
//! protocol gets an error response and loses its connection; the others go on.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::NetError;
use super::wire::{
    self, HEADER_LEN, Hello, MAX_CONTROL_ANSWER, MAX_PAYLOAD, Op, Request, Response, Status,
    Welcome, WireError,
};
use crate::postcopy::source::{InProcessSource, PageSource, SourceError};

/// How often the accept loop looks at its stop flag.
const ACCEPT_POLL_MS: i32 = 50;
/// Room for a request header and a put-back of a few pages in one read.
const READ_BUFFER: usize = 64 << 10;
/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once at most: a thread each. A destination opens one per
/// fetching thread (vCPUs, readers, push threads: 70 at most).
const MAX_CONNECTIONS: usize = 256;
/// After a failed accept (out of descriptors, say), the loop waits this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Wire(#[from] WireError),
    #[error("wrong token in its hello")]
    Token,
    #[error("a migration control request to a server that serves pages only")]
    NoControl,
}

/// What a source in another process answers besides pages: the migration's control
/// requests (wire.rs). Called from connection threads, never from a fault path.
pub trait MigrationControl: Send + Sync {
    /// The guest on offer, as JSON.
    fn describe(&self) -> Vec<u8>;
    /// Pauses the guest and answers with what the destination resumes it from; the guest
    /// stays paused here until the destination commits the handover, and is taken back if
    /// it does not. It runs in one place only, so a call while another is pending or after
    /// a handover is refused.
    fn switch_over(&self) -> Result<Vec<u8>, String>;
    /// The destination has handover `id` whole and runs the guest from it: the guest is
    /// given up here. Refused if the source took it back, or handed it to another.
    fn commit(&self, id: u64) -> Result<(), String>;
    /// The destination has every page and needs the source no more: refused before the
    /// guest has been handed over.
    fn finish(&self) -> Result<(), String>;
    /// Whether `answer`, to an accepted `op`, was written: an unwritten switchover resumes
    /// the guest here at once; a written finish releases the source.
    fn answered(&self, op: Op, answer: &[u8], written: bool);
}

/// Serves one image until dropped; dropping it closes every connection.
pub struct PageServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// What the accept loop, the server's owner and its link switches share (never the
/// destination's fault path: only accepting, the link and stopping take the lock).
struct Shared {
    /// What a client's hello must carry.
    token: u64,
    stop: AtomicBool,
    connections: AtomicU64,
    link: Mutex<Link>,
}

struct Link {
    up: bool,
    /// Each open connection, to hang up on when the link goes down or the server stops.
    served: Vec<(TcpStream, JoinHandle<()>)>,
}

impl Shared {
    fn link(&self) -> MutexGuard<'_, Link> {
        // A panicked connection thread leaves nothing half-done under this lock.
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes a page server's link down and up again: down, every connection is hung up on and
/// new ones are closed as soon as they are accepted, as if the network between source and
/// destination had failed; up, connections are served again.
#[derive(Clone)]
pub struct LinkSwitch(Arc<Shared>);

impl LinkSwitch {
    pub fn set(&self, up: bool) {
        let mut link = self.0.link();
        link.up = up;
        if !up {
            for (stream, _) in &link.served {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    pub fn is_up(&self) -> bool {
        self.0.link().up
    }
}

impl PageServer {
    /// Listens on `addr` (port 0 picks a free one) and serves `image`. After answering, a
    /// connection waits for the next request awake for up to `spin` before it sleeps.
    pub fn bind(
        addr: impl ToSocketAddrs,
        image: Arc<InProcessSource>,
        spin: Duration,
    ) -> Result<Self, NetError> {
        Self::bind_with(addr, image, spin, new_token(), None)
    }

    /// Like [`PageServer::bind`], for a source whose destination is another process: it
    /// also answers `control`'s requests, and clients must say `token`.
    pub fn bind_migration(
        addr: impl ToSocketAddrs,
        image: Arc<InProcessSource>,
        spin: Duration,
        token: u64,
        control: Arc<dyn MigrationControl>,
    ) -> Result<Self, NetError> {
        Self::bind_with(addr, image, spin, token, Some(control))
    }

    fn bind_with(
        addr: impl ToSocketAddrs,
        image: Arc<InProcessSource>,
        spin: Duration,
        token: u64,
        control: Option<Arc<dyn MigrationControl>>,
    ) -> Result<Self, NetError> {
        let shown = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map_or_else(|| "the given address".to_string(), |a| a.to_string());
        let listen_error = |source| NetError::Listen {
            addr: shown.clone(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(listen_error)?;
        let local = listener.local_addr().map_err(listen_error)?;
        let shared = Arc::new(Shared {
            token,
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            link: Mutex::new(Link {
                up: true,
                served: Vec::new(),
            }),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("page-server".into())
                .spawn(move || accept_loop(&listener, &image, control, spin, &shared))
                .map_err(NetError::Thread)?
        };
        Ok(PageServer {
            addr: local,
            shared,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted and served so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Connections being served now.
    pub fn open_connections(&self) -> usize {
        let mut link = self.shared.link();
        link.served.retain(|(_, t)| !t.is_finished());
        link.served.len()
    }

    /// What a client must say in its hello to be served.
    pub fn token(&self) -> u64 {
        self.shared.token
    }

    /// The switch for this server's link.
    pub fn link(&self) -> LinkSwitch {
        LinkSwitch(self.shared.clone())
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A token nobody can guess: std seeds each RandomState from the system's randomness.
pub fn new_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn accept_loop(
    listener: &TcpListener,
    image: &Arc<InProcessSource>,
    control: Option<Arc<dyn MigrationControl>>,
    spin: Duration,
    shared: &Shared,
) {
    while !shared.stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the timeout lets the loop notice `stop`.
        if unsafe { libc::poll(&mut pfd, 1, ACCEPT_POLL_MS) } <= 0 {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("page server: accept failed: {e}");
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        // Checked and recorded under the lock, so a link going down finds every
        // connection it must hang up on.
        let mut link = shared.link();
        link.served.retain(|(_, t)| !t.is_finished());
        if !link.up {
            continue;
        }
        if link.served.len() >= MAX_CONNECTIONS {
            tracing::warn!("page server: {MAX_CONNECTIONS} connections already; {peer} refused");
            continue;
        }
        let Ok(handle) = stream.try_clone() else {
            tracing::warn!("page server: cannot keep a handle on {peer}; connection refused");
            continue;
        };
        let image = image.clone();
        let control = control.clone();
        let token = shared.token;
        let spawned = std::thread::Builder::new()
            .name(format!(
                "page-serve{}",
                shared.connections.load(Ordering::Relaxed)
            ))
            .spawn(move || {
                if let Err(e) = serve(&stream, &image, control.as_deref(), spin, token) {
                    tracing::warn!("page server: client {peer}: {e}; connection closed");
                }
                // Others hold a handle too: hang up now, not when the server stops.
                let _ = stream.shutdown(Shutdown::Both);
            });
        match spawned {
            Ok(t) => {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                link.served.push((handle, t));
            }
            Err(e) => tracing::warn!("page server: cannot serve {peer}: {e}"),
        }
    }
    // Unblocks every connection's read, then waits for its thread.
    let served = std::mem::take(&mut shared.link().served);
    for (stream, thread) in served {
        let _ = stream.shutdown(Shutdown::Both);
        let _ = thread.join();
    }
}

/// Reads a frame header; false if the peer closed the connection cleanly before it.
fn read_header(r: &mut impl Read, b: &mut [u8; HEADER_LEN]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut b[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Sends a control answer as a run of frames (wire.rs), reusing `frame`.
fn send_answer(w: &mut impl Write, frame: &mut Vec<u8>, answer: &[u8]) -> std::io::Result<()> {
    let mut to_come = answer.len() as u64;
    let mut parts = answer.chunks(MAX_PAYLOAD as usize).peekable();
    // An empty answer is still one frame.
    if parts.peek().is_none() {
        return w.write_all(&Response::ok(0).encode());
    }
    for part in parts {
        to_come -= part.len() as u64;
        frame.clear();
        frame.extend_from_slice(&Response::answer_part(part.len() as u32, to_come).encode());
        frame.extend_from_slice(part);
        w.write_all(frame)?;
    }
    Ok(())
}

/// Sends an error response whose payload is `why`.
fn refuse(w: &mut impl Write, status: Status, detail: u64, why: &str) -> std::io::Result<()> {
    let why = wire::reason(why);
    let mut frame = Vec::with_capacity(HEADER_LEN + why.len());
    frame.extend_from_slice(
        &Response {
            status,
            len: why.len() as u32,
            detail,
        }
        .encode(),
    );
    frame.extend_from_slice(why.as_bytes());
    w.write_all(&frame)
}

/// Answers a source's failure to serve a well-formed request; the connection stays up.
fn refuse_source(w: &mut impl Write, e: &SourceError) -> std::io::Result<()> {
    match e {
        SourceError::OutOfRange { size, .. } => {
            refuse(w, Status::OutOfRange, *size, &e.to_string())
        }
        // The client says whose failure it was: send only what failed.
        SourceError::Io(why) => refuse(w, Status::Failed, 0, why),
        _ => refuse(w, Status::Failed, 0, &e.to_string()),
    }
}

fn serve(
    stream: &TcpStream,
    image: &InProcessSource,
    control: Option<&dyn MigrationControl>,
    spin: Duration,
    token: u64,
) -> Result<(), ConnError> {
    super::tune(stream)?;
    let mut reader = BufReader::with_capacity(
        READ_BUFFER,
        super::SpinRead {
            stream: stream.try_clone()?,
            spin,
        },
    );
    let mut writer = stream;
    let mut header = [0u8; HEADER_LEN];
    // A peer that connects and says nothing must not keep a thread for ever.
    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    if !read_header(&mut reader, &mut header)? {
        return Ok(());
    }
    stream.set_read_timeout(None)?;
    match Hello::decode(&header) {
        Err(e) => {
            refuse(&mut writer, Status::Malformed, 0, &e.to_string())?;
            return Err(e.into());
        }
        Ok(hello) if hello.token != token => {
            let why = "wrong token: this page server serves only its own destination";
            refuse(&mut writer, Status::Malformed, 0, why)?;
            return Err(ConnError::Token);
        }
        Ok(_) => {}
    }
    writer.write_all(
        &Welcome {
            image_size: image.image().size(),
        }
        .encode(),
    )?;
    // One response frame: header, data, checksums; reused for every request.
    let mut frame =
        Vec::with_capacity(HEADER_LEN + MAX_PAYLOAD as usize + wire::checksum_bytes(MAX_PAYLOAD));
    let mut sums = Vec::new();
    loop {
        if !read_header(&mut reader, &mut header)? {
            return Ok(());
        }
        let request = match Request::decode(&header) {
            Ok(r) => r,
            Err(e) => {
                refuse(&mut writer, Status::Malformed, 0, &e.to_string())?;
                return Err(e.into());
            }
        };
        let len = request.len as usize;
        match request.op {
            Op::Fetch => {
                frame.clear();
                frame.resize(HEADER_LEN + len, 0);
                sums.clear();
                match image.fetch(request.gpa, &mut frame[HEADER_LEN..], &mut sums) {
                    Ok(()) => {
                        frame[..HEADER_LEN].copy_from_slice(&Response::ok(request.len).encode());
                        for s in &sums {
                            frame.extend_from_slice(&s.to_le_bytes());
                        }
                        writer.write_all(&frame)?;
                    }
                    Err(e) => refuse_source(&mut writer, &e)?,
                }
            }
            Op::PutBack => {
                frame.clear();
                frame.resize(len, 0);
                reader.read_exact(&mut frame)?;
                match image.put_back(request.gpa, &frame) {
                    Ok(()) => writer.write_all(&Response::ok(0).encode())?,
                    Err(e) => refuse_source(&mut writer, &e)?,
                }
            }
            Op::Describe | Op::Switchover | Op::Finish | Op::Commit => {
                let Some(control) = control else {
                    let why = "this page server serves pages only: there is no migration \
                               to control";
                    refuse(&mut writer, Status::Malformed, 0, why)?;
                    return Err(ConnError::NoControl);
                };
                let answer = match request.op {
                    Op::Describe => Ok(control.describe()),
                    Op::Switchover => control.switch_over(),
                    Op::Commit => control.commit(request.gpa).map(|()| Vec::new()),
                    _ => control.finish().map(|()| Vec::new()),
                };
                match answer {
                    Ok(bytes) if bytes.len() as u64 <= MAX_CONTROL_ANSWER => {
                        let sent = send_answer(&mut writer, &mut frame, &bytes);
                        control.answered(request.op, &bytes, sent.is_ok());
                        sent?;
                    }
                    Ok(bytes) => {
                        control.answered(request.op, &bytes, false);
                        let why = format!(
                            "an answer of {} bytes is over the {MAX_CONTROL_ANSWER} a control \
                             answer may take",
                            bytes.len()
                        );
                        refuse(&mut writer, Status::Failed, 0, &why)?;
                    }
                    Err(why) => refuse(&mut writer, Status::Failed, 0, &why)?,
                }
            }
        }
    }
}
