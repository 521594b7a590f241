//! Pages over a real socket: a page server in front of the source's memory image, and a
//! `PageSource` that fetches from it over TCP, so a migration pays a network stack's
//! costs (system calls, wake-ups, copies) as a VMM's post-copy does.

pub mod client;
pub mod server;
pub mod wire;

pub use client::TcpSource;
pub use server::PageServer;

use std::net::SocketAddr;
use std::sync::Arc;

use super::source::{InProcessSource, PageSource};

/// What a destination fetches from: `image` itself, or a page server in front of it on the
/// loopback interface, returned too (it serves for as long as it lives).
pub fn page_source(
    transport: Transport,
    image: Arc<InProcessSource>,
) -> Result<(Arc<dyn PageSource>, Option<PageServer>), NetError> {
    match transport {
        Transport::Local => Ok((image, None)),
        Transport::Tcp => {
            let server = PageServer::bind("127.0.0.1:0", image)?;
            let client = TcpSource::connect(server.addr())?;
            Ok((Arc::new(client), Some(server)))
        }
    }
}

/// How pages travel from the source to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// Copied straight from the source's image in this process.
    #[default]
    Local,
    /// Fetched over TCP from a page server on the loopback interface.
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Local => "local",
            Transport::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Transport, String> {
        match s {
            "local" => Ok(Transport::Local),
            "tcp" => Ok(Transport::Tcp),
            other => Err(format!(
                "unknown page transport '{other}' (expected local or tcp)"
            )),
        }
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
    #[error("cannot start a page server thread: {0}")]
    Thread(#[source] std::io::Error),
}
