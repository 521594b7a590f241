//! Real QEMU post-copy migrations, seen live: QMP for the migration's state and steering,
//! the destination's trace events for every fault, the kernel's schedstat for an
//! independent clock on each vCPU thread. `feed` turns them into the same snapshots
//! faultline's own runs make; `launch` starts a QEMU pair to watch (`faultline qemu`).
//!
//! Owns everything QEMU-specific. Knows nothing of KVM or the engine; the TUI sees only
//! snapshots through a `Feed`.

pub mod book;
pub mod feed;
pub mod follow;
pub mod launch;
pub mod qmp;
pub mod trace;
pub mod watch;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
    #[error("cannot keep latency histograms: {0}")]
    Telemetry(String),
    #[error("{}: not a migration destination: {why}", path.display())]
    NotDestination {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("{}: cannot read: {source}", path.display())]
    Trace {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the QEMU watcher: {0}")]
    Thread(String),
    #[error("{}: QEMU reports no vCPUs (query-cpus-fast)", path.display())]
    NoVcpus { path: std::path::PathBuf },
}
