//! faultline: watch a KVM guest live-migrate post-copy, fault by fault.
//!
//! The library holds every part; the `faultline` binary is a thin command line over it.
//! See DESIGN.md in the repository for the map.

pub mod bench;
pub mod control;
pub mod guest;
pub mod postcopy;
pub mod probe;
pub mod qemu;
pub mod scenario;
pub mod snapshot;
pub mod striped;
pub mod telemetry;
pub mod tui;
pub mod uffd;
pub mod units;
pub mod vmm;
