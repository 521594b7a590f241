//! `TcpSource`: a `PageSource` that fetches from a page server. Each thread that fetches
//! keeps a connection of its own (opened on its first fetch), so concurrent faults never
//! queue behind one another on a socket, and a fault touches nothing another fetcher
//! writes: no pool, no lock.

use std::cell::RefCell;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::wire::{
    HEADER_LEN, Hello, MAX_CONTROL_ANSWER, MAX_PAYLOAD, MAX_REASON, Op, Request, Response, Status,
    Welcome, checksum_bytes,
};
use super::{NetError, SpinRead};
use crate::postcopy::source::{PageSource, SourceError};
use crate::vmm::layout::PAGE_SIZE;

/// Room for a response header, a page and its checksum in one read.
const READ_BUFFER: usize = 16 << 10;

struct Connection {
    reader: BufReader<SpinRead>,
    writer: TcpStream,
    scratch: Vec<u8>,
    /// The socket's read timeout: how long an answer may take.
    timeout: Duration,
}

/// How a `TcpSource` behaves on its connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long a fetch waits for its answer awake before it sleeps in the kernel (worth
    /// it only with a core to spare).
    pub spin: Duration,
    /// How long a request keeps trying to reach a source it lost (reconnecting, as
    /// post-copy recovery does) before it fails; zero fails at once.
    pub recover: Duration,
    /// The page server's token ([`super::PageServer::token`]).
    pub token: u64,
}

/// How long a connect waits for a source that does not answer (a host that is down drops
/// the SYN; the kernel alone would try for two minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a control request waits for its answer (a switchover pauses the source's
/// vCPUs: milliseconds).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fetch or put-back waits for its answer before its connection counts as
/// stalled (open, but carrying nothing) and is replaced: a source answers in microseconds,
/// and the throttle and round trip are paid before the request goes out.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// The first wait between attempts to reach a lost source; it doubles up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(1);
const RETRY_LAST: Duration = Duration::from_millis(50);

pub struct TcpSource {
    addr: SocketAddr,
    image_size: u64,
    options: ClientOptions,
    /// Tells threads' connections to this source from those to a source that is gone.
    alive: Arc<()>,
    /// Connections that broke under a request (each one is replaced).
    lost: std::sync::atomic::AtomicU64,
}

thread_local! {
    /// This thread's connection to each source it fetches from.
    static CONNECTIONS: RefCell<Vec<(Weak<()>, Connection)>> = const { RefCell::new(Vec::new()) };
}

/// What became of one request: the connection can be reused unless the error broke it.
enum Failure {
    /// The server answered with an error; the connection is still in step.
    Answered(SourceError),
    /// The server refused the request; the connection is still in step.
    Refused(NetError),
    Broken(NetError),
}

impl TcpSource {
    /// Connects to the page server at `addr` and learns the size of its image.
    pub fn connect(addr: SocketAddr, options: ClientOptions) -> Result<TcpSource, NetError> {
        // This connection only learns the size: the threads that fetch open their own.
        let (_, image_size) = open(addr, options)?;
        Ok(TcpSource {
            addr,
            image_size,
            options,
            alive: Arc::new(()),
            lost: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// This thread's connection to this source, taken out of its slot (or a new one).
    fn take_connection(&self) -> Result<Connection, NetError> {
        let mine = CONNECTIONS.with_borrow_mut(|conns| {
            let i = conns
                .iter()
                .position(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.alive)))?;
            Some(conns.swap_remove(i).1)
        });
        match mine {
            Some(c) => Ok(c),
            None => open(self.addr, self.options).map(|(c, _)| c),
        }
    }

    /// Puts this thread's connection back, closing any kept for sources that are gone.
    fn keep_connection(&self, conn: Connection) {
        CONNECTIONS.with_borrow_mut(|conns| {
            conns.retain(|(w, _)| w.strong_count() > 0);
            conns.push((Arc::downgrade(&self.alive), conn));
        });
    }

    pub fn image_size(&self) -> u64 {
        self.image_size
    }

    fn check(&self, gpa: u64, len: u64) -> Result<(), SourceError> {
        let fits = gpa
            .checked_add(len)
            .is_some_and(|end| end <= self.image_size);
        if fits && gpa.is_multiple_of(PAGE_SIZE) && len.is_multiple_of(PAGE_SIZE) {
            Ok(())
        } else {
            Err(SourceError::OutOfRange {
                gpa,
                len,
                size: self.image_size,
            })
        }
    }

    /// Runs `work` on this thread's connection (opened if it has none), kept for the next
    /// request unless the work broke it. A lost source is tried again, on new connections,
    /// for up to `options.recover`; `work` must be safe to repeat.
    fn with_connection<T>(
        &self,
        mut work: impl FnMut(&mut Connection) -> Result<T, Failure>,
    ) -> Result<T, SourceError> {
        let mut lost_since: Option<Instant> = None;
        let mut wait = RETRY_FIRST;
        loop {
            let attempt = self
                .take_connection()
                .map_err(Failure::Broken)
                .and_then(|mut conn| {
                    let r = work(&mut conn);
                    if !matches!(r, Err(Failure::Broken(_))) {
                        self.keep_connection(conn);
                    }
                    r
                });
            let e = match attempt {
                Ok(v) => return Ok(v),
                Err(Failure::Answered(e)) => return Err(e),
                Err(Failure::Refused(e)) => return Err(e.into()),
                Err(Failure::Broken(e)) => e,
            };
            if matches!(e, NetError::Lost { .. }) {
                self.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if !matches!(e, NetError::Lost { .. } | NetError::Connect { .. }) {
                return Err(e.into());
            }
            let since = *lost_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.options.recover {
                return Err(if self.options.recover.is_zero() {
                    e.into()
                } else {
                    NetError::Unreachable {
                        waited: since.elapsed(),
                        last: Box::new(e),
                    }
                    .into()
                });
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(RETRY_LAST);
        }
    }
}

/// A connection that failed under a request; an early end of stream says who ended it,
/// a read timeout (`waited`) that nothing came.
fn lost(addr: SocketAddr, waited: Duration, source: std::io::Error) -> NetError {
    use std::io::ErrorKind;
    let source = match source.kind() {
        ErrorKind::UnexpectedEof => std::io::Error::new(source.kind(), "the source closed it"),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => std::io::Error::new(
            ErrorKind::TimedOut,
            format!("no answer for {:.1} s (stalled)", waited.as_secs_f64()),
        ),
        _ => source,
    };
    NetError::Lost { addr, source }
}

/// Opens a connection and says hello; returns it with the image size the server reports.
fn open(addr: SocketAddr, options: ClientOptions) -> Result<(Connection, u64), NetError> {
    let connect = |source| NetError::Connect { addr, source };
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(connect)?;
    super::tune(&stream).map_err(connect)?;
    // A peer that accepts but never greets (not a faultline source) fails the open.
    stream
        .set_read_timeout(Some(CONTROL_TIMEOUT))
        .map_err(connect)?;
    let mut conn = Connection {
        reader: BufReader::with_capacity(
            READ_BUFFER,
            SpinRead {
                stream: stream.try_clone().map_err(connect)?,
                spin: options.spin,
            },
        ),
        writer: stream,
        scratch: Vec::new(),
        timeout: CONTROL_TIMEOUT,
    };
    conn.writer
        .write_all(
            &Hello {
                token: options.token,
            }
            .encode(),
        )
        .map_err(|e| lost(addr, CONTROL_TIMEOUT, e))?;
    let mut header = [0u8; HEADER_LEN];
    conn.reader
        .read_exact(&mut header)
        .map_err(|e| lost(addr, CONTROL_TIMEOUT, e))?;
    // A server that refuses the hello answers with an error response, not a welcome.
    if let Ok(r) = Response::decode(&header)
        && r.status == Status::Malformed
    {
        return Err(NetError::Refused {
            addr,
            why: read_reason(&mut conn, r.len).unwrap_or_else(|_| "hello refused".into()),
        });
    }
    let welcome = Welcome::decode(&header).map_err(|source| NetError::Wire { addr, source })?;
    // Keepalive notices a vanished source; this, one that holds the line open but sends
    // nothing (a wedged process or middlebox).
    conn.writer
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(connect)?;
    conn.writer
        .set_write_timeout(Some(ANSWER_TIMEOUT))
        .map_err(connect)?;
    conn.timeout = ANSWER_TIMEOUT;
    Ok((conn, welcome.image_size))
}

fn read_reason(conn: &mut Connection, len: u32) -> std::io::Result<String> {
    let mut why = vec![0u8; (len as usize).min(MAX_REASON)];
    conn.reader.read_exact(&mut why)?;
    Ok(String::from_utf8_lossy(&why).into_owned())
}

/// Sends `request` (with `payload` for a put-back) and reads the response header; an
/// error response is read whole and turned into the source's error.
fn exchange(
    addr: SocketAddr,
    conn: &mut Connection,
    request: Request,
    payload: &[u8],
) -> Result<Response, Failure> {
    let waited = conn.timeout;
    let broken = |e| Failure::Broken(lost(addr, waited, e));
    if payload.is_empty() {
        conn.writer.write_all(&request.encode()).map_err(broken)?;
    } else {
        conn.scratch.clear();
        conn.scratch.extend_from_slice(&request.encode());
        conn.scratch.extend_from_slice(payload);
        conn.writer.write_all(&conn.scratch).map_err(broken)?;
    }
    receive(addr, conn, request)
}

/// Reads the response to `request` (sent already) and checks it; an error response is read
/// whole and turned into the source's error.
fn receive(addr: SocketAddr, conn: &mut Connection, request: Request) -> Result<Response, Failure> {
    let waited = conn.timeout;
    let broken = |e| Failure::Broken(lost(addr, waited, e));
    let mut header = [0u8; HEADER_LEN];
    conn.reader.read_exact(&mut header).map_err(broken)?;
    let response = Response::decode(&header)
        .map_err(|source| Failure::Broken(NetError::Wire { addr, source }))?;
    // A control request's answer is as long as it is.
    let expected = match request.op {
        Op::Fetch => Some(request.len),
        Op::PutBack => Some(0),
        _ => None,
    };
    match response.status {
        Status::Ok if expected.is_none_or(|e| e == response.len) => Ok(response),
        Status::Ok => Err(Failure::Broken(NetError::Refused {
            addr,
            why: format!(
                "answered {} bytes where {} were asked for",
                response.len,
                expected.unwrap_or_default()
            ),
        })),
        Status::OutOfRange => {
            read_reason(conn, response.len).map_err(broken)?;
            Err(Failure::Answered(SourceError::OutOfRange {
                gpa: request.gpa,
                len: u64::from(request.len),
                size: response.detail,
            }))
        }
        Status::Malformed => {
            let why = read_reason(conn, response.len).map_err(broken)?;
            Err(Failure::Broken(NetError::Refused { addr, why }))
        }
        Status::Failed => {
            let why = read_reason(conn, response.len).map_err(broken)?;
            Err(Failure::Refused(NetError::Refused { addr, why }))
        }
    }
}

impl PageSource for TcpSource {
    fn connections_lost(&self) -> u64 {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn fetch(&self, gpa: u64, buf: &mut [u8], checksums: &mut Vec<u32>) -> Result<(), SourceError> {
        self.check(gpa, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let addr = self.addr;
        let had = checksums.len();
        self.with_connection(|conn| {
            // A repeat after a lost connection starts over.
            checksums.truncate(had);
            let waited = conn.timeout;
            let broken = |e| Failure::Broken(lost(addr, waited, e));
            let mut at = gpa;
            for chunk in buf.chunks_mut(MAX_PAYLOAD as usize) {
                let request = Request {
                    op: Op::Fetch,
                    gpa: at,
                    len: chunk.len() as u32,
                };
                exchange(addr, conn, request, &[])?;
                conn.reader.read_exact(chunk).map_err(broken)?;
                let mut sums = [0u8; 4];
                for _ in 0..checksum_bytes(request.len) / 4 {
                    conn.reader.read_exact(&mut sums).map_err(broken)?;
                    checksums.push(u32::from_le_bytes(sums));
                }
                at += chunk.len() as u64;
            }
            Ok(())
        })
    }

    /// Every request goes out before any answer is read: the pages cost one round trip.
    fn fetch_pages(
        &self,
        gpas: &[u64],
        buf: &mut [u8],
        checksums: &mut Vec<u32>,
    ) -> Result<(), SourceError> {
        let page = PAGE_SIZE as usize;
        if buf.len() != gpas.len() * page {
            return Err(SourceError::Io(format!(
                "{} bytes for {} pages",
                buf.len(),
                gpas.len()
            )));
        }
        for &gpa in gpas {
            self.check(gpa, PAGE_SIZE)?;
        }
        let addr = self.addr;
        let had = checksums.len();
        let request = |gpa| Request {
            op: Op::Fetch,
            gpa,
            len: PAGE_SIZE as u32,
        };
        self.with_connection(|conn| {
            // A repeat after a lost connection starts over.
            checksums.truncate(had);
            let waited = conn.timeout;
            let broken = |e| Failure::Broken(lost(addr, waited, e));
            conn.scratch.clear();
            for &gpa in gpas {
                conn.scratch.extend_from_slice(&request(gpa).encode());
            }
            conn.writer.write_all(&conn.scratch).map_err(broken)?;
            for (&gpa, chunk) in gpas.iter().zip(buf.chunks_mut(page)) {
                receive(addr, conn, request(gpa))?;
                conn.reader.read_exact(chunk).map_err(broken)?;
                let mut sum = [0u8; 4];
                conn.reader.read_exact(&mut sum).map_err(broken)?;
                checksums.push(u32::from_le_bytes(sum));
            }
            Ok(())
        })
    }

    fn put_back(&self, gpa: u64, data: &[u8]) -> Result<(), SourceError> {
        self.check(gpa, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.with_connection(|conn| {
            let mut at = gpa;
            for chunk in data.chunks(MAX_PAYLOAD as usize) {
                let request = Request {
                    op: Op::PutBack,
                    gpa: at,
                    len: chunk.len() as u32,
                };
                exchange(self.addr, conn, request, chunk)?;
                at += chunk.len() as u64;
            }
            Ok(())
        })
    }

    fn describe(&self) -> String {
        format!("tcp {}", self.addr)
    }
}

/// A connection for migration control requests (wire.rs), opened ahead of the moment
/// they matter: a switchover then pays no connect, hello or server thread start.
pub struct ControlConnection {
    addr: SocketAddr,
    conn: Connection,
}

impl ControlConnection {
    pub fn open(addr: SocketAddr, token: u64) -> Result<ControlConnection, NetError> {
        let options = ClientOptions {
            token,
            ..ClientOptions::default()
        };
        let (conn, _) = open(addr, options)?;
        let mut c = ControlConnection { addr, conn };
        c.set_timeout(CONTROL_TIMEOUT)?;
        Ok(c)
    }

    /// How long each answer from now on may take before the request fails as lost.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), NetError> {
        let addr = self.addr;
        // The same socket as the reader's.
        self.conn
            .writer
            .set_read_timeout(Some(timeout))
            .map_err(|source| NetError::Connect { addr, source })?;
        self.conn.timeout = timeout;
        Ok(())
    }

    /// Sends `op` and returns the answer's bytes, on a connection used for nothing else.
    pub fn request(mut self, op: Op) -> Result<Vec<u8>, NetError> {
        self.ask(Request::control(op))
    }

    /// Sends a control `request` and returns the answer's bytes. After an error the
    /// connection may be out of step: drop it.
    pub fn ask(&mut self, request: Request) -> Result<Vec<u8>, NetError> {
        let addr = self.addr;
        let response = match exchange(addr, &mut self.conn, request, &[]) {
            Ok(r) => r,
            Err(Failure::Broken(e)) | Err(Failure::Refused(e)) => {
                return Err(e);
            }
            Err(Failure::Answered(e)) => {
                return Err(NetError::Refused {
                    addr,
                    why: e.to_string(),
                });
            }
        };
        let refused = |why: String| NetError::Refused { addr, why };
        let total = u64::from(response.len).saturating_add(response.detail);
        if total > MAX_CONTROL_ANSWER {
            return Err(refused(format!(
                "announced an answer of {total} bytes: at most {MAX_CONTROL_ANSWER}"
            )));
        }
        let mut answer = Vec::with_capacity(total as usize);
        let mut part = response;
        loop {
            let at = answer.len();
            answer.resize(at + part.len as usize, 0);
            self.conn
                .reader
                .read_exact(&mut answer[at..])
                .map_err(|e| lost(addr, self.conn.timeout, e))?;
            if part.detail == 0 {
                return Ok(answer);
            }
            let to_come = part.detail;
            let mut header = [0u8; HEADER_LEN];
            self.conn
                .reader
                .read_exact(&mut header)
                .map_err(|e| lost(addr, self.conn.timeout, e))?;
            part = Response::decode(&header).map_err(|source| NetError::Wire { addr, source })?;
            // Each part must carry on where the last said it would, with something in it.
            if part.status != Status::Ok
                || part.len == 0
                || u64::from(part.len).saturating_add(part.detail) != to_come
            {
                return Err(refused(format!(
                    "an answer's part of {} bytes with {} to come, where {to_come} were to come",
                    part.len, part.detail
                )));
            }
        }
    }
}

/// Sends one migration control request to the source at `addr` on a connection of its
/// own, and returns the answer's bytes.
pub fn control(addr: SocketAddr, token: u64, op: Op) -> Result<Vec<u8>, NetError> {
    ControlConnection::open(addr, token)?.request(op)
}
