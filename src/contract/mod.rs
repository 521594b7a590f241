//! The contract: the plain, typed, serializable data every side of faultline shares. What a
//! run is asked to do (`RunConfig`, `Action`), what an observer sees of it (`Snapshot`),
//! what it comes to (`Summary`), and the `Feed` through which a front end sees any run.
//! Recordings and the control protocol are this data on the wire.
//!
//! A leaf: every other part imports it; it imports none of them (only `units`, a leaf too).

mod feed;
mod names;
mod prefetch;
mod qemu;
mod run;
mod snapshot;
mod summary;
mod workload;

pub use feed::{Feed, Notice};
pub use prefetch::{MAX_PREFETCH_PAGES, Prefetch, PrefetchStatus};
pub use qemu::{QemuVcpu, QemuView};
pub use run::{
    Action, Backing, FaultMode, LINK_TIMEOUT, Relay, Remote, RunConfig, TimedAction, Transport,
};
pub use snapshot::*;
pub use summary::{
    InjectionSummary, LatencySummary, LegSummary, Summary, VcpuSummary, VerifySummary,
};
pub use workload::{LAST_QWORD, Operation, Pattern, Sharing, Workload, WorkloadError};
