//! `faultline bench`: the demand-paging benchmark, after the kernel's demand_paging_test.
//! Each vCPU writes every page of its own slice once, and every page is missing at the
//! start: a fault per page, resolved by uffd handler threads (`uffd`), by the vCPU thread
//! itself (`exit`), or never missing at all (`prefill`, the ceiling).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::contract::{Backing, FaultMode, Transport, Workload};
use crate::guest::{self};
use crate::postcopy::assembly::Plan;
use crate::postcopy::net::{self, ClientOptions, NetError, PageServer};
use crate::postcopy::{
    Destination, InProcessSource, PostcopyError, SourceError, Throttle, destination,
};
use crate::telemetry::{Aggregate, Telemetry};
use crate::uffd::{Features, Userfaultfd};
use crate::units::Rate;
use crate::vmm::layout::{self, BOOT_SIZE, PAGE_SIZE};
use crate::vmm::{GuestRam, MissingPageHandler, RunState, Vm, VmConfig, VmmError};

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

/// A benchmark's connections fail at once if the source is lost: nothing takes it down.
fn options(spin: Duration) -> ClientOptions {
    ClientOptions {
        spin,
        recover: Duration::ZERO,
        ..ClientOptions::default()
    }
}

fn source_error(e: NetError) -> BenchError {
    BenchError::Postcopy(PostcopyError::Source(SourceError::from(e)))
}

/// Makes every page of `ram` present by writing one byte to it.
fn prefill(ram: &GuestRam) -> Result<(), VmmError> {
    let mut gpa = BOOT_SIZE;
    while gpa < ram.size() {
        ram.write(gpa, &[1])?;
        gpa += PAGE_SIZE;
    }
    Ok(())
}

impl TrialConfig {
    /// How the destination is assembled; None for prefill, which has no missing page.
    pub fn plan(&self) -> Option<Plan> {
        let mode = match self.mode {
            BenchMode::Prefill => return None,
            BenchMode::Uffd => FaultMode::Uffd,
            BenchMode::Exit => FaultMode::Exit,
        };
        Some(Plan {
            mode,
            backing: self.backing,
            vcpus: self.vcpus,
            per_slice: self.uffd_per_vcpu,
            readers: self.readers,
            push_threads: 0,
        })
    }
}

/// Runs one trial: a fresh VM, every data page missing (unless prefill), the touch guest.
pub fn run_trial(c: &TrialConfig) -> Result<Trial, BenchError> {
    c.validate()?;
    let mem = c.mem_bytes().max(layout::MIN_MEM_BYTES);
    let vm_config = VmConfig {
        vcpus: c.vcpus,
        mem_bytes: mem,
    };
    let workload: Workload = "touch".parse()?;
    // The VM may be larger than asked (its minimum size); the guest touches only its slices.
    let mut placement = layout::placement(mem);
    placement.data_pages = c.vcpus as u64 * c.mem_per_vcpu / PAGE_SIZE;
    let data_pages = placement.data_pages;
    let program = guest::assemble(&workload, c.vcpus, &placement)?;
    let ram = Arc::new(GuestRam::with_backing(mem, c.backing)?);
    // Room for every event of a vCPU (a fault per page of its slice): the aggregator reads
    // them after the trial, not during.
    let capacity = (data_pages / c.vcpus as u64) as usize + 1024;
    let telemetry = Arc::new(Telemetry::with_capacity(c.vcpus, capacity, c.telemetry));
    // The same assembly as a migration's destination, without push threads.
    let plan = c.plan();
    let mut dest = None;
    // Serves the image for the whole trial when pages travel over TCP.
    let _server: Option<PageServer>;
    let handler: Option<Arc<dyn MissingPageHandler>> = match (c.mode, plan) {
        (BenchMode::Prefill, _) | (_, None) => {
            prefill(&ram)?;
            None
        }
        (_, Some(plan)) => {
            let uffds = plan.userfaultfds()?;
            // A source image in real memory, as a migration's would be.
            let image = GuestRam::new(mem)?;
            prefill(&image)?;
            let image = Arc::new(InProcessSource::new(Arc::new(image)));
            let (source, server) =
                net::page_source(c.transport, image, options(c.net_spin)).map_err(source_error)?;
            _server = server;
            let d = Arc::new(Destination::with_uffds(
                ram.clone(),
                uffds,
                source,
                Throttle::new(Rate::Unlimited),
                c.rtt,
                telemetry.clone(),
            )?);
            d.set_push(false);
            d.set_reader_spin(c.reader_spin);
            let h = plan.handler(&d);
            dest = Some((d, plan));
            h
        }
    };
    let vm = Vm::with_ram(vm_config, ram, handler)?;
    vm.load(&program)?;
    let cpus = Arc::new(allowed_cpus());
    // Stopped and joined however the trial ends.
    let workers = match &dest {
        Some((d, plan)) => {
            d.set_vcpu_tids(vm.vcpus().iter().map(|v| v.shared().thread_id()).collect());
            let (pin, cpus) = (c.pin, cpus.clone());
            // Reader i shares vCPU i's CPU, so a fault's wake-ups stay on one CPU.
            Some(plan.start(
                d,
                move |i| if pin { pin_thread(0, &cpus, i) } else { Ok(()) },
            )?)
        }
        None => None,
    };
    if c.pin {
        for (i, v) in vm.vcpus().iter().enumerate() {
            pin_thread(v.shared().thread_id() as i32, &cpus, i)?;
        }
    }

    let start = Instant::now();
    vm.resume_all()?;
    let mut done = vec![false; c.vcpus];
    while done.iter().any(|d| !d) {
        if let Some(f) = vm.failure() {
            return Err(BenchError::GuestFailed(f));
        }
        if start.elapsed() > TRIAL_TIMEOUT {
            return Err(BenchError::Timeout(TRIAL_TIMEOUT));
        }
        for (d, v) in done.iter_mut().zip(vm.vcpus()) {
            *d = *d || v.state() == RunState::Done;
        }
        // Coarse polling is enough: the times come from the vCPU threads themselves.
        std::thread::sleep(Duration::from_millis(10));
    }
    // Timed on the vCPU threads, as a C program would, not by this coarse poll.
    let spans: Vec<(u64, u64)> = vm
        .vcpus()
        .iter()
        .map(|v| {
            let s = v.stats();
            (
                s.first_resumed_ns.load(Ordering::Relaxed),
                s.done_ns.load(Ordering::Relaxed),
            )
        })
        .collect();
    if let Some(i) = spans.iter().position(|&(from, to)| from == 0 || to < from) {
        return Err(BenchError::GuestFailed(format!(
            "vCPU {i} reached DONE with no span of its own ({:?})",
            spans[i]
        )));
    }
    let first = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let last = spans.iter().map(|s| s.1).max().unwrap_or(0);
    let secs = last.saturating_sub(first) as f64 / 1e9;
    if let Some(w) = workers {
        w.finish()?;
    }
    let pages_per_vcpu = data_pages / c.vcpus as u64;
    let per_vcpu_pages_per_sec = spans
        .iter()
        .map(|(from, to)| pages_per_vcpu as f64 / (to.saturating_sub(*from) as f64 / 1e9).max(1e-9))
        .collect();
    let mut aggregate =
        Aggregate::new(c.vcpus).map_err(|e| BenchError::Telemetry(e.to_string()))?;
    for e in telemetry.drain() {
        aggregate.fold(&e);
    }
    let latency = aggregate.latency();
    Ok(Trial {
        pages: pages_per_vcpu * c.vcpus as u64,
        secs,
        per_vcpu_pages_per_sec,
        p50_us: latency.p50,
        p99_us: latency.p99,
        telemetry_dropped: telemetry.dropped(),
    })
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
    let mut r: Vec<f64> = a
        .rounds_pages_per_sec
        .iter()
        .zip(&b.rounds_pages_per_sec)
        .map(|(x, y)| x / y.max(1e-9))
        .collect();
    if r.is_empty() {
        return a.pages_per_sec / b.pages_per_sec.max(1e-9);
    }
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set for sched_getaffinity to fill.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a cpu_set_t of the size passed; pid 0 is this thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: cpu < CPU_SETSIZE, inside `set`.
        .filter(|&cpu| r == 0 && unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() { vec![0] } else { cpus }
}

/// Binds thread `tid` (0: the calling thread) to the `slot`-th CPU of `cpus`, wrapping.
fn pin_thread(tid: i32, cpus: &[usize], slot: usize) -> Result<(), PostcopyError> {
    let cpu = cpus.get(slot % cpus.len().max(1)).copied().unwrap_or(0);
    // SAFETY: a zeroed cpu_set_t is empty; `cpu` came from the allowed set, so it is
    // below CPU_SETSIZE.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(PostcopyError::Config(format!(
            "cannot pin a thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        )))
    }
}

/// Runs every configuration once per round, `repeat` rounds, every other round in reverse
/// order: drift in the machine (other load, memory state) spreads over all of them, and
/// neighbours in the list (telemetry on and off) take turns going first, so a ratio over
/// the trials of one round pairs measurements made side by side.
pub fn measure_interleaved(
    configs: &[TrialConfig],
    repeat: usize,
) -> Result<Vec<BenchResult>, BenchError> {
    let mut trials: Vec<Vec<Trial>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 0..repeat.max(1) {
        let mut order: Vec<usize> = (0..configs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            trials[i].push(run_trial(&configs[i])?);
        }
    }
    Ok(configs
        .iter()
        .zip(trials)
        .map(|(c, t)| summarize(c, t))
        .collect())
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

/// Background push alone: how fast the destination fills when no vCPU asks for anything.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PushResult {
    pub backing: &'static str,
    pub transport: &'static str,
    pub threads: usize,
    pub bytes: u64,
    pub secs: f64,
    pub bytes_per_sec: f64,
    pub bytes_per_sec_min: f64,
    pub bytes_per_sec_max: f64,
}

/// The median of `repeat` push trials, with the spread.
pub fn measure_push(
    mem_bytes: u64,
    threads: usize,
    repeat: usize,
    backing: Backing,
    transport: Transport,
) -> Result<PushResult, BenchError> {
    let mut trials = (0..repeat.max(1))
        .map(|_| run_push_trial(mem_bytes, threads, backing, transport))
        .collect::<Result<Vec<_>, _>>()?;
    trials.sort_by(|a, b| a.bytes_per_sec.total_cmp(&b.bytes_per_sec));
    let mut median = trials[trials.len() / 2];
    median.bytes_per_sec_min = trials[0].bytes_per_sec;
    median.bytes_per_sec_max = trials[trials.len() - 1].bytes_per_sec;
    Ok(median)
}

/// Pushes `mem_bytes` of guest memory at an unlimited rate into a destination no vCPU
/// touches, and times it until no page is missing.
pub fn run_push_trial(
    mem_bytes: u64,
    threads: usize,
    backing: Backing,
    transport: Transport,
) -> Result<PushResult, BenchError> {
    let mem = mem_bytes.max(layout::MIN_MEM_BYTES);
    let image = GuestRam::new(mem)?;
    prefill(&image)?;
    let image = Arc::new(InProcessSource::new(Arc::new(image)));
    let spin = net::socket_spin(threads.max(1), 0);
    let (source, _server) =
        net::page_source(transport, image, options(spin)).map_err(source_error)?;
    let ram = Arc::new(GuestRam::with_backing(mem, backing)?);
    let dest = Arc::new(Destination::new(
        ram,
        Arc::new(Userfaultfd::new(
            destination::backing_features(backing),
            true,
        )?),
        source,
        Throttle::new(Rate::Unlimited),
        Duration::ZERO,
        Arc::new(Telemetry::new(1)),
    )?);
    let bytes = dest.missing() * PAGE_SIZE;
    let start = Instant::now();
    let parts = threads.max(1) as u64;
    let pushers = (0..parts)
        .map(|i| {
            destination::spawn(format!("push{i}"), dest.clone(), move |d| {
                d.push_part(i, parts)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    while dest.missing() > 0 && !pushers.iter().any(|p| p.is_finished()) {
        if start.elapsed() > TRIAL_TIMEOUT {
            dest.stop();
            return Err(BenchError::Timeout(TRIAL_TIMEOUT));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let secs = start.elapsed().as_secs_f64();
    dest.stop();
    for p in pushers {
        p.join()
            .map_err(|_| BenchError::GuestFailed("a push thread panicked".into()))??;
    }
    Ok(PushResult {
        backing: backing.as_str(),
        transport: transport.as_str(),
        threads: parts as usize,
        bytes,
        secs,
        bytes_per_sec: bytes as f64 / secs.max(1e-9),
        bytes_per_sec_min: 0.0,
        bytes_per_sec_max: 0.0,
    })
}

/// Switchover downtime of the real engine, from the source's pause to the destination's
/// resume, over several runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DowntimeResult {
    pub vcpus: usize,
    pub runs: usize,
    pub median_us: u64,
    pub min_us: u64,
    pub max_us: u64,
}

pub fn measure_downtime(vcpus: usize, runs: usize) -> Result<DowntimeResult, BenchError> {
    let config = crate::contract::RunConfig {
        scenario: "bench-downtime".into(),
        vcpus,
        mem_bytes: 256 << 20,
        workload: "hotspot-mixed".parse()?,
        readers: 1,
        warmup: Duration::from_millis(200),
        duration: Duration::ZERO,
        ..Default::default()
    };

    let mut downtimes = (0..runs.max(1))
        .map(|_| {
            crate::postcopy::run(&config, &crate::postcopy::RunStatus::default(), None)
                .map(|s| s.downtime_us)
        })
        .collect::<Result<Vec<_>, _>>()?;
    downtimes.sort_unstable();
    Ok(DowntimeResult {
        vcpus,
        runs: downtimes.len(),
        median_us: downtimes[downtimes.len() / 2],
        min_us: downtimes[0],
        max_us: downtimes[downtimes.len() - 1],
    })
}

/// What a frame of the live view costs: building the snapshot from the engine's state
/// (counters, events, the page-state map) and drawing it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameResult {
    pub vcpus: usize,
    pub mem_bytes: u64,
    pub width: u16,
    pub height: u16,
    pub frames: usize,
    /// Fault events folded into each snapshot.
    pub events_per_frame: usize,
    pub build_us_median: u64,
    pub build_us_max: u64,
    pub draw_us_median: u64,
    pub draw_us_max: u64,
}

/// Builds and draws `frames` frames of a run with `vcpus` vCPUs over `mem_bytes`, with
/// fault events arriving between frames, and times both halves.
pub fn measure_frame(
    vcpus: usize,
    mem_bytes: u64,
    (width, height): (u16, u16),
    frames: usize,
) -> Result<FrameResult, BenchError> {
    if vcpus == 0 || vcpus > layout::MAX_VCPUS || mem_bytes < layout::MIN_MEM_BYTES {
        return Err(BenchError::Config(format!(
            "frame measurement: 1 to {} vCPUs and at least {} of memory",
            layout::MAX_VCPUS,
            crate::units::Bytes(layout::MIN_MEM_BYTES)
        )));
    }
    use crate::contract::RunInfo;
    use crate::postcopy::{LiveMigration, Monitor, RunStatus};
    use crate::telemetry::Event;

    const EVENTS_PER_FRAME: usize = 5000;
    let ram = Arc::new(GuestRam::new(mem_bytes)?);
    let telemetry = Arc::new(Telemetry::new(vcpus));
    let dest = Arc::new(Destination::new(
        ram,
        Arc::new(Userfaultfd::new(Features::NONE, true)?),
        Arc::new(InProcessSource::new(Arc::new(GuestRam::new(mem_bytes)?))),
        Throttle::new(Rate::Unlimited),
        Duration::ZERO,
        telemetry.clone(),
    )?);
    let status = RunStatus::default();
    status.set_live(LiveMigration {
        number: 1,
        vcpus: Vec::new(),
        dest: Some(dest),
        link: None,
        switched_at: Some(Instant::now()),
        downtime: Some(Duration::ZERO),
        baseline_per_sec: vec![1.0; vcpus],
    });
    let mut monitor = Monitor::new(RunInfo {
        scenario: "bench-frame".into(),
        mode: crate::contract::FaultMode::Exit,
        workload: "random-read".into(),
        vcpus,
        mem_bytes,
        backing: Some(crate::contract::Backing::Anonymous),
        transport: Some(crate::contract::Transport::Local),
        source: None,
        page_size: PAGE_SIZE,
    })?;
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))
        .map_err(|e| BenchError::Config(format!("test terminal: {e}")))?;
    let mut app = crate::tui::App::new();
    let (mut build, mut draw) = (Vec::new(), Vec::new());
    let mut gpa = BOOT_SIZE;
    for _ in 0..frames.max(1) {
        let now = telemetry.now_ns();
        for i in 0..EVENTS_PER_FRAME {
            gpa = BOOT_SIZE + (gpa * 7919 + 4096) % (mem_bytes - BOOT_SIZE) / PAGE_SIZE * PAGE_SIZE;
            telemetry.emit(Event::Fault {
                vcpu: Some((i % vcpus) as u16),
                gpa,
                start_ns: now,
                end_ns: now + 1000 * (1 + i as u64 % 5000),
            });
        }
        let t = Instant::now();
        let snapshot = monitor.tick(&status);
        build.push(t.elapsed());
        app.on_snapshot(snapshot);
        let t = Instant::now();
        terminal
            .draw(|f| crate::tui::draw(f, &app))
            .map_err(|e| BenchError::Config(format!("test terminal: {e}")))?;
        draw.push(t.elapsed());
    }
    build.sort_unstable();
    draw.sort_unstable();
    let us = |d: &Duration| d.as_micros() as u64;
    Ok(FrameResult {
        vcpus,
        mem_bytes,
        width,
        height,
        frames: build.len(),
        events_per_frame: EVENTS_PER_FRAME,
        build_us_median: us(&build[build.len() / 2]),
        build_us_max: build.last().map_or(0, us),
        draw_us_median: us(&draw[draw.len() / 2]),
        draw_us_max: draw.last().map_or(0, us),
    })
}
