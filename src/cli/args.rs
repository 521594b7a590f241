//! What several subcommands take: the guest's shape, sizes and rates, and the error that
//! is the user's input (exit code 2).

use clap::Args;
use faultline::contract::{RunConfig, Sharing, Workload};
use faultline::scenario;
use faultline::units::{self, Rate};

#[derive(Args, Default)]
pub struct GuestArgs {
    /// vCPUs, 1 to 64.
    #[arg(long)]
    pub vcpus: Option<usize>,
    /// Guest memory, e.g. 256M or 1G.
    #[arg(long, value_parser = parse_size)]
    pub mem: Option<u64>,
    /// PATTERN-OP (sequential, random, hotspot, stride x read, write, mixed), verify or touch.
    #[arg(long)]
    pub workload: Option<Workload>,
    /// All vCPUs work on the same memory instead of their own slices.
    #[arg(long)]
    pub shared: bool,
}

impl GuestArgs {
    /// Scenario `name` (the built-in default if none) with these flags over its guest.
    pub fn config(&self, name: Option<&str>) -> Result<RunConfig, UsageError> {
        let mut c =
            scenario::load(name.unwrap_or("default")).map_err(|e| UsageError(e.to_string()))?;
        if let Some(v) = self.vcpus {
            c.vcpus = v;
        }
        if let Some(m) = self.mem {
            c.mem_bytes = m;
        }
        if let Some(w) = self.workload {
            let sharing = c.workload.sharing;
            c.workload = w;
            c.workload.sharing = sharing;
        }
        if self.shared {
            c.workload.sharing = Sharing::Shared;
        }
        Ok(c)
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    units::parse_size(s).map_err(|e| e.to_string())
}

pub fn parse_rate(s: &str) -> Result<Rate, String> {
    units::parse_rate(s).map_err(|e| e.to_string())
}

/// `on` or `off`.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("'{other}': expected on or off")),
    }
}

/// An error that is the user's input, not the run: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
