//! Pages over a real socket: a page server in front of the source's memory image, and a
//! `PageSource` that fetches from it over TCP, so a migration pays a network stack's
//! costs (system calls, wake-ups, copies) as a VMM's post-copy does.

pub mod client;
pub mod server;
pub mod wire;

pub use client::{ClientOptions, ControlConnection, TcpSource, control};
pub use server::{LinkSwitch, MigrationControl, PageServer, new_token};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::source::{InProcessSource, PageSource, SourceError};
use crate::contract::{Relay, Transport};

/// What a destination fetches from: `image` itself, or a page server in front of it on the
/// loopback interface, returned too (it serves for as long as it lives), reached through
/// `relay` if one is given. Both ends of a connection wait awake for up to `options.spin`
/// before sleeping: see [`socket_spin`].
pub fn page_source(
    transport: Transport,
    image: Arc<InProcessSource>,
    options: ClientOptions,
    relay: Option<&Relay>,
) -> Result<(Arc<dyn PageSource>, Option<PageServer>), NetError> {
    match transport {
        Transport::Local => Ok((image, None)),
        Transport::Tcp => {
            let server = PageServer::bind("127.0.0.1:0", image, options.spin)?;
            let options = ClientOptions {
                token: server.token(),
                ..options
            };
            let addr = relay.map_or(server.addr(), |r| r.route(server.addr()));
            let client = TcpSource::connect(addr, options)?;
            Ok((Arc::new(client), Some(server)))
        }
    }
}

/// How long each end of a page connection waits awake for the other, given `fetchers`
/// threads that fetch at once (each with a server thread at the other end) and `others`
/// busy threads besides: a wait awake saves a sleep and a wake-up on each side of every
/// request (1.6-1.8x the demand rate with a core to spare), but with fewer cores than
/// threads it takes the CPU the other side needs (half the rate: BENCHMARKS.md).
pub fn socket_spin(fetchers: usize, others: usize) -> Duration {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if 2 * fetchers + others <= cores {
        SOCKET_SPIN
    } else {
        Duration::ZERO
    }
}

const SOCKET_SPIN: Duration = Duration::from_micros(50);

impl From<NetError> for SourceError {
    fn from(e: NetError) -> SourceError {
        SourceError::Unreachable(Box::new(e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot serve pages on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the page source at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("page source at {addr}: connection lost: {source}")]
    Lost {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The peer broke the protocol; the connection is dropped.
    #[error("page source at {addr}: bad frame: {source}")]
    Wire {
        addr: SocketAddr,
        #[source]
        source: wire::WireError,
    },
    #[error("page source at {addr}: {why}")]
    Refused { addr: SocketAddr, why: String },
    /// A lost source did not come back within the recovery window.
    #[error("gave up after {:.1} s without the source: {last}", waited.as_secs_f64())]
    Unreachable {
        waited: Duration,
        last: Box<NetError>,
    },
    #[error("cannot start a page server thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Sets up a migration socket at either end: no Nagle delay on small requests, and a peer
/// whose host vanished (no FIN ever comes) noticed within about [`DEAD_PEER_AFTER`] rather
/// than the kernel's two hours: keepalive probes while the line is idle, a user timeout
/// while sent data waits for its acknowledgement (probes are not sent then).
pub(crate) fn tune(stream: &std::net::TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    let socket = socket2::SockRef::from(stream);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(DEAD_PEER_AFTER))
}

/// How long a silent, vanished peer keeps a connection open: idle time, then three probes.
pub const DEAD_PEER_AFTER: Duration = Duration::from_secs(5 + 2 * 3);

/// A socket reader that, when nothing has arrived yet, keeps asking for up to `spin`
/// before it sleeps in the kernel: an answer due within microseconds then costs no
/// sleep and wake-up on either side.
pub(crate) struct SpinRead {
    pub stream: std::net::TcpStream,
    pub spin: std::time::Duration,
}

impl std::io::Read for SpinRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        if self.spin.is_zero() {
            return std::io::Read::read(&mut self.stream, buf);
        }
        let fd = self.stream.as_raw_fd();
        let mut started: Option<std::time::Instant> = None;
        loop {
            // SAFETY: `buf` is valid for writing `buf.len()` bytes.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => {}
                std::io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
            let t0 = *started.get_or_insert_with(std::time::Instant::now);
            if t0.elapsed() >= self.spin {
                return std::io::Read::read(&mut self.stream, buf);
            }
            std::hint::spin_loop();
        }
    }
}
