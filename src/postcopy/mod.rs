//! Post-copy live migration between two KVM VMs: the page source, the destination with its
//! fault delivery, the background push, the throttle, region injection, and the run that
//! ties them together with integrity checks.
//!
//! Uses `vmm`, `guest` and `telemetry`; knows nothing of the UI.

pub mod assembly;
pub mod destination;
pub mod engine;
pub mod feed;
mod leg;
mod limits;
pub mod monitor;
pub mod net;
mod outcome;
pub mod page_state;
pub mod remote;
pub mod source;
pub mod status;
pub mod throttle;
mod verify;

pub use destination::Destination;
pub use engine::run;
pub use feed::EngineFeed;
pub use monitor::Monitor;
pub use remote::{Offer, SourceGuest};
pub use source::{InProcessSource, PageSource, SourceError};
pub use status::{LiveMigration, RunStatus};
pub use throttle::Throttle;

#[derive(Debug, thiserror::Error)]
pub enum PostcopyError {
    #[error(transparent)]
    Vmm(#[from] crate::vmm::VmmError),
    #[error(transparent)]
    Uffd(#[from] crate::uffd::UffdError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Remote(#[from] remote::RemoteError),
    #[error(transparent)]
    Guest(#[from] crate::guest::GuestError),
    #[error(
        "range {start:#x}+{len:#x} is outside guest data memory ({min:#x}..{max:#x}; the boot region cannot be made missing)"
    )]
    BadRange {
        start: u64,
        len: u64,
        min: u64,
        max: u64,
    },
    /// Shared RAM only: mapping filled pages into the guest's view failed or found a page
    /// already mapped, so some of them may be visible; they stay claimed, never refilled.
    #[error("cannot map filled pages at {gpa:#x}+{len:#x} into the guest's view: {why}")]
    Map { gpa: u64, len: u64, why: String },
    #[error("cannot drop pages of an injected range: {0}")]
    Drop(#[source] std::io::Error),
    #[error("cannot start a post-copy thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("a post-copy thread panicked")]
    Panicked,
    #[error("the guest failed: {0}")]
    GuestFailed(String),
    #[error("cannot set up telemetry: {0}")]
    Telemetry(String),
    #[error("a post-copy thread stopped early")]
    StoppedEarly,
    #[error("boot page {gpa:#x} arrived damaged (checksum mismatch)")]
    DamagedBootPage { gpa: u64 },
    #[error("the destination has no userfaultfd {0}")]
    NoUserfaultfd(usize),
    #[error("cannot pin a thread to CPU {cpu}: {source}")]
    Pin { cpu: usize, source: std::io::Error },
    #[error("{0}")]
    Config(String),
    /// An operator's action that cannot be done now; the run goes on.
    #[error("{0}")]
    Refused(String),
}
