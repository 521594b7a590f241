//! Runs seen from elsewhere: the control socket (serve a run, attach to it), recordings of
//! the snapshot stream, and their replay. All speak the frames of [`protocol`].

pub mod client;
pub mod protocol;
pub mod record;
pub mod replay;
pub mod server;

use std::path::PathBuf;

pub use client::SocketFeed;
pub use protocol::{Message, ProtocolError};
pub use record::Recorder;
pub use replay::ReplayFeed;
pub use server::Server;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}: a run is already serving on this socket")]
    InUse(PathBuf),
    #[error("{0}: exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("{0}: cannot create the control socket: {1}")]
    Bind(PathBuf, #[source] std::io::Error),
    #[error("{0}: cannot connect: {1}")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("refused: {0}")]
    Refused(String),
    #[error("{path}: {source}")]
    Recording {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a faultline recording: {why}")]
    NotARecording { path: PathBuf, why: String },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Io(std::io::Error),
    #[error("a lock was poisoned by a panic")]
    Poisoned,
}
