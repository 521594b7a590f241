//! `faultline bench`: the demand-paging benchmark, after the kernel's demand_paging_test.
//! Each vCPU writes every page of its own slice once, and every page is missing at the
//! start: a fault per page, resolved by uffd handler threads (`uffd`), by the vCPU thread
//! itself (`exit`), or never missing at all (`prefill`, the ceiling).

mod extras;
mod stall;
mod trial;

pub use extras::*;
pub use stall::*;
pub use trial::run_trial;

use std::time::Duration;

use serde::Serialize;

use crate::contract::{Backing, Prefetch, Transport};
use crate::postcopy::PostcopyError;
use crate::vmm::VmmError;
use crate::vmm::layout::{self, BOOT_SIZE};

/// A trial that has not finished by then is a failure, not a slow result.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Postcopy(#[from] PostcopyError),
    #[error(transparent)]
    Uffd(#[from] crate::uffd::UffdError),
    #[error("guest code: {0}")]
    Guest(#[from] crate::guest::GuestError),
    #[error(transparent)]
    Workload(#[from] crate::contract::WorkloadError),
    #[error("{0}")]
    Config(String),
    #[error("vCPU failed during the trial: {0}")]
    GuestFailed(String),
    #[error("the trial did not finish within {0:?}")]
    Timeout(Duration),
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// A trial whose pages arrived wrong measured nothing.
    #[error("the trial's pages are wrong: {0}")]
    WrongPages(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    /// Memory present before the vCPUs start: the ceiling.
    Prefill,
    /// vCPUs sleep in the kernel; handler threads read the userfaultfd.
    Uffd,
    /// KVM_RUN returns to the vCPU thread, which fills the page itself.
    Exit,
}

impl BenchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BenchMode::Prefill => "prefill",
            BenchMode::Uffd => "uffd",
            BenchMode::Exit => "exit",
        }
    }
}

impl std::str::FromStr for BenchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "prefill" => Ok(BenchMode::Prefill),
            "uffd" => Ok(BenchMode::Uffd),
            "exit" => Ok(BenchMode::Exit),
            _ => Err(format!(
                "unknown mode '{s}' (expected prefill, uffd or exit)"
            )),
        }
    }
}

/// One configuration to measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrialConfig {
    pub mode: BenchMode,
    pub vcpus: usize,
    pub mem_per_vcpu: u64,
    /// uffd handler threads (uffd mode only).
    pub readers: usize,
    pub rtt: Duration,
    /// How long uffd readers keep reading after a fault before sleeping in poll.
    pub reader_spin: Duration,
    /// One userfaultfd (and in uffd mode one reader) per vCPU's slice instead of one for all.
    pub uffd_per_vcpu: bool,
    /// vCPU i and its uffd reader share the i-th allowed CPU: a fault's wake-ups stay on
    /// one CPU, with no cross-CPU wake-up and no idle CPU to rouse.
    pub pin: bool,
    pub telemetry: bool,
    /// What backs the VM's RAM (and so how a missing page is filled).
    pub backing: Backing,
    /// How pages travel from the source image.
    pub transport: Transport,
    /// Over TCP: how long each end of a connection waits awake for the other.
    pub net_spin: Duration,
    /// What a fault brings in besides its page.
    pub prefetch: Prefetch,
}

impl TrialConfig {
    pub fn mem_bytes(&self) -> u64 {
        BOOT_SIZE + self.vcpus as u64 * self.mem_per_vcpu
    }

    pub fn validate(&self) -> Result<(), BenchError> {
        if self.vcpus == 0 || self.vcpus > layout::MAX_VCPUS {
            return Err(BenchError::Config(format!(
                "--vcpus {}: must be 1 to {}",
                self.vcpus,
                layout::MAX_VCPUS
            )));
        }
        if self.mem_per_vcpu < 2 << 20 || !self.mem_per_vcpu.is_multiple_of(2 << 20) {
            return Err(BenchError::Config(format!(
                "--mem-per-vcpu {}: must be a multiple of 2 MiB",
                crate::units::Bytes(self.mem_per_vcpu)
            )));
        }
        let mem = self.mem_bytes().max(layout::MIN_MEM_BYTES);
        if mem > layout::MAX_MEM_BYTES {
            return Err(BenchError::Config(format!(
                "{} vCPUs x {} is more guest memory than {}",
                self.vcpus,
                crate::units::Bytes(self.mem_per_vcpu),
                crate::units::Bytes(layout::MAX_MEM_BYTES)
            )));
        }
        if self.readers == 0 {
            return Err(BenchError::Config("--readers must be at least 1".into()));
        }
        Ok(())
    }
}

/// What one trial measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub pages: u64,
    pub secs: f64,
    /// Each vCPU's pages over its own time to finish.
    pub per_vcpu_pages_per_sec: Vec<f64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub telemetry_dropped: u64,
}

impl Trial {
    pub fn pages_per_sec(&self) -> f64 {
        self.pages as f64 / self.secs.max(1e-9)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p99: u64,
}

/// One configuration over its repeats: the median trial, with the spread.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    pub mode: BenchMode,
    pub vcpus: usize,
    /// `anon` or `shmem`.
    pub backing: &'static str,
    /// `local` or `tcp`.
    pub transport: &'static str,
    /// What each fault brought in besides its page.
    pub prefetch: String,
    pub readers: usize,
    pub uffd_per_vcpu: bool,
    /// vCPU i (and its uffd reader) bound to the i-th CPU.
    pub pinned: bool,
    pub reader_spin_us: u64,
    /// Over TCP: how long each end of a connection waits awake for the other.
    pub net_spin_us: u64,
    pub telemetry: bool,
    pub pages: u64,
    pub secs: f64,
    pub pages_per_sec: f64,
    pub pages_per_sec_min: f64,
    pub pages_per_sec_max: f64,
    pub per_vcpu_pages_per_sec: f64,
    pub latency_us: LatencyUs,
    pub repeats: usize,
    /// Each trial's pages/s, round by round.
    pub rounds_pages_per_sec: Vec<f64>,
    pub telemetry_dropped: u64,
}

/// The median over rounds of `a`'s pages/s over `b`'s in the same round: a paired ratio,
/// steadier than the ratio of medians when the machine drifts from round to round.
pub fn paired_ratio(a: &BenchResult, b: &BenchResult) -> f64 {
    if a.rounds_pages_per_sec.is_empty() || b.rounds_pages_per_sec.is_empty() {
        return a.pages_per_sec / b.pages_per_sec.max(1e-9);
    }
    paired_median(&a.rounds_pages_per_sec, &b.rounds_pages_per_sec)
}

/// The median over rounds of `a[i] / b[i]` (0 when there are none).
pub fn paired_median(a: &[f64], b: &[f64]) -> f64 {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y.max(1e-9)).collect();
    r.sort_by(f64::total_cmp);
    r.get(r.len() / 2).copied().unwrap_or(0.0)
}

/// Runs every configuration once per round, `repeat` rounds, every other round in reverse
/// order: drift in the machine (other load, memory state) spreads over all of them, and
/// neighbours in the list (telemetry on and off) take turns going first, so a ratio over
/// the trials of one round pairs measurements made side by side.
pub fn measure_interleaved(
    configs: &[TrialConfig],
    repeat: usize,
) -> Result<Vec<BenchResult>, BenchError> {
    let trials = interleaved(configs, repeat, run_trial)?;
    Ok(configs
        .iter()
        .zip(trials)
        .map(|(c, t)| summarize(c, t))
        .collect())
}

/// Each configuration's trials, `repeat` rounds of one trial each, every other round in
/// reverse order.
pub(crate) fn interleaved<C, T>(
    configs: &[C],
    repeat: usize,
    run: impl Fn(&C) -> Result<T, BenchError>,
) -> Result<Vec<Vec<T>>, BenchError> {
    let mut trials: Vec<Vec<T>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 0..repeat.max(1) {
        let mut order: Vec<usize> = (0..configs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            trials[i].push(run(&configs[i])?);
        }
    }
    Ok(trials)
}

fn summarize(c: &TrialConfig, mut trials: Vec<Trial>) -> BenchResult {
    let rounds = trials.iter().map(Trial::pages_per_sec).collect();
    trials.sort_by(|a, b| a.pages_per_sec().total_cmp(&b.pages_per_sec()));
    let min = trials.first().map_or(0.0, Trial::pages_per_sec);
    let max = trials.last().map_or(0.0, Trial::pages_per_sec);
    let median = &trials[trials.len() / 2];
    let per_vcpu = median.per_vcpu_pages_per_sec.iter().sum::<f64>()
        / median.per_vcpu_pages_per_sec.len().max(1) as f64;
    BenchResult {
        mode: c.mode,
        vcpus: c.vcpus,
        backing: c.backing.as_str(),
        transport: c.transport.as_str(),
        prefetch: c.prefetch.to_string(),
        readers: match c.mode {
            BenchMode::Uffd if c.uffd_per_vcpu => c.vcpus,
            BenchMode::Uffd => c.readers,
            _ => 0,
        },
        uffd_per_vcpu: c.mode != BenchMode::Prefill && c.uffd_per_vcpu,
        pinned: c.pin,
        net_spin_us: if c.transport == Transport::Tcp {
            c.net_spin.as_micros() as u64
        } else {
            0
        },
        reader_spin_us: if c.mode == BenchMode::Uffd {
            c.reader_spin.as_micros() as u64
        } else {
            0
        },
        telemetry: c.telemetry,
        pages: median.pages,
        secs: median.secs,
        pages_per_sec: median.pages_per_sec(),
        pages_per_sec_min: min,
        pages_per_sec_max: max,
        per_vcpu_pages_per_sec: per_vcpu,
        latency_us: LatencyUs {
            p50: median.p50_us,
            p99: median.p99_us,
        },
        repeats: trials.len(),
        rounds_pages_per_sec: rounds,
        telemetry_dropped: median.telemetry_dropped,
    }
}
