//! faultline: watch a KVM guest live-migrate post-copy, fault by fault.
//!
//! The library holds every part; the `faultline` binary is a thin command line over it.
//! The map of the parts is the README's "How it is built"; `contract` is where to start.

// Library code returns errors; only tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod contract;
pub mod control;
pub mod guest;
pub mod postcopy;
pub mod probe;
pub mod qemu;
pub mod report;
pub mod scenario;
pub mod striped;
pub mod telemetry;
pub mod tui;
pub mod uffd;
pub mod units;
pub mod vmm;
