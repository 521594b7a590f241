//! The subcommands of the `faultline` binary, one file each, and what they share.

pub mod args;
pub mod bench;
pub mod logging;
pub mod observe;
pub mod probe;
pub mod qemu;
pub mod report;
pub mod run;
pub mod shared;
pub mod source;
pub mod summary;
