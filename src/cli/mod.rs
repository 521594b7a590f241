//! Subcommands of the `faultline` binary that are more than a few lines.

pub mod bench;
pub mod observe;
pub mod qemu;
pub mod source;
