//! One run: warm up the source VM, switch over, serve post-copy until every page is filled
//! and the duration is over, then prove nothing was lost and summarize.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};

use super::PostcopyError;
use super::destination::{self, Destination};
use super::monitor::Monitor;
use super::net::{self, ClientOptions, LinkSwitch, PageServer, TcpSource, Transport};
use super::remote::Remote;
use super::source::{InProcessSource, PageSource, SourceError};
use super::status::{LiveMigration, RunStatus};
use super::throttle::Throttle;
use crate::guest::{self, Sharing, Workload};
pub use crate::snapshot::Phase;
use crate::snapshot::RunInfo;
use crate::telemetry::{Aggregate, Event, LatencySummary, Telemetry};
use crate::uffd::{Features, Userfaultfd};
use crate::units::{GpaRange, Rate};
use crate::vmm::layout::{self, BOOT_SIZE, PAGE_SIZE};
use crate::vmm::{Backing, GuestRam, MissingPageHandler, Vm, VmConfig};

/// Background push threads at most.
const PUSH_THREADS: usize = 2;
/// How long a fetch keeps reconnecting to a lost source before the run fails, by default.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(60);

/// How a fault reaches userspace on the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    /// vCPUs sleep in the kernel; handler threads read the userfaultfd.
    Uffd,
    /// KVM_RUN returns to the vCPU thread, which fills the page itself.
    Exit,
}

impl FaultMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultMode::Uffd => "uffd",
            FaultMode::Exit => "exit",
        }
    }
}

/// Something the operator or a scenario's timeline does to a running migration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Make a range missing again on the destination.
    Inject(GpaRange),
    /// Set the fetch-rate limit.
    Throttle(Rate),
    /// Pause (false) or resume (true) the background push.
    Push(bool),
    /// Migrate the running guest again, from the current destination to a new one.
    Remigrate,
    /// Take the link between source and destination down (false) or up (true): pages
    /// over TCP only. While it is down every fetch waits, and vCPUs that fault stall.
    Link(bool),
}

/// An action at a time after switchover.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimedAction {
    pub at: Duration,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub scenario: String,
    pub vcpus: usize,
    pub mem_bytes: u64,
    pub workload: Workload,
    pub mode: FaultMode,
    pub readers: usize,
    pub fetch_rate: Rate,
    pub rtt: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    pub push: bool,
    /// What backs the destination's RAM; None: [`destination::preferred_backing`].
    pub backing: Option<Backing>,
    /// How pages travel from the source to the destination.
    pub transport: Transport,
    /// Over TCP, how long a fetch keeps trying to reach a lost source before the run fails.
    pub link_timeout: Duration,
    pub timeline: Vec<TimedAction>,
    /// A source in another process (`faultline source`) whose guest this run takes over,
    /// instead of a source VM of its own; `vcpus`, `mem_bytes` and `workload` must be the
    /// ones it offers, and pages travel over TCP.
    pub remote: Option<Remote>,
}

impl RunConfig {
    /// How pages travel: over TCP from a source in another process, else as configured.
    pub fn transport(&self) -> Transport {
        match self.remote {
            Some(_) => Transport::Tcp,
            None => self.transport,
        }
    }

    /// Checks what can be checked before any VM starts.
    pub fn validate(&self) -> Result<(), PostcopyError> {
        let bad = |m: String| Err(PostcopyError::Config(m));
        if self.vcpus == 0 || self.vcpus > layout::MAX_VCPUS {
            return bad(format!(
                "--vcpus {}: must be 1 to {}",
                self.vcpus,
                layout::MAX_VCPUS
            ));
        }
        if !(layout::MIN_MEM_BYTES..=layout::MAX_MEM_BYTES).contains(&self.mem_bytes)
            || !self.mem_bytes.is_multiple_of(PAGE_SIZE)
        {
            return bad(format!(
                "--mem {}: must be a whole number of pages from {} to {}",
                crate::units::Bytes(self.mem_bytes),
                crate::units::Bytes(layout::MIN_MEM_BYTES),
                crate::units::Bytes(layout::MAX_MEM_BYTES)
            ));
        }
        if self.readers == 0 {
            return bad("--readers must be at least 1".into());
        }
        for t in &self.timeline {
            if let Action::Inject(r) = t.action
                && (r.start < BOOT_SIZE || r.end() > self.mem_bytes)
            {
                return bad(format!(
                    "inject at {}: range {:#x}+{:#x} is outside guest data memory {:#x}..{:#x}",
                    humantime::format_duration(t.at),
                    r.start,
                    r.len,
                    BOOT_SIZE,
                    self.mem_bytes
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifySummary {
    pub pages_checked: u64,
    pub mismatches: u64,
    pub guest_errors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VcpuSummary {
    pub vcpu: usize,
    pub fault_exits: u64,
    pub stall_ms: f64,
    pub latency_us: LatencySummary,
    pub guest_progress: u64,
    /// The vCPU thread's time off the CPU over the same window (QEMU migrations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offcpu_ms: Option<f64>,
    /// QEMU's own `postcopy-vcpu-blocktime` for this vCPU (QEMU migrations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_blocktime_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InjectionSummary {
    pub gpa: u64,
    pub pages: u64,
    pub pause_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub scenario: String,
    pub mode: String,
    pub exit_path: Option<String>,
    pub workload: String,
    pub vcpus: usize,
    pub mem_bytes: u64,
    /// The destination's memory backing: anon or shmem.
    pub backing: String,
    /// How pages travelled: local or tcp.
    #[serde(default = "local_transport")]
    pub transport: String,
    pub page_size: u64,
    pub pages_total: u64,
    pub pages_boot: u64,
    pub pages_demand: u64,
    pub pages_pushed: u64,
    pub pages_injected: u64,
    pub pages_refetched: u64,
    /// Migrations in this run (the operator can start more); the figures are the last one's.
    pub migrations: u32,
    pub downtime_us: u64,
    pub postcopy_ms: u64,
    pub postcopy_complete: bool,
    pub bytes_transferred: u64,
    pub transfer_bytes_per_sec: u64,
    pub throttle: String,
    pub blocktime_all_ms: f64,
    pub injections: Vec<InjectionSummary>,
    pub verified: bool,
    pub verify: VerifySummary,
    pub telemetry_dropped: u64,
    pub latency_us: LatencySummary,
    pub per_vcpu: Vec<VcpuSummary>,
    /// A real QEMU migration's own figures and the vCPU threads' off-CPU times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<crate::snapshot::QemuView>,
}

impl Summary {
    /// The one word a summary ends on.
    pub fn verdict(&self) -> &'static str {
        if self.verified {
            "verified"
        } else {
            "NOT VERIFIED"
        }
    }
}

fn local_transport() -> String {
    Transport::Local.as_str().into()
}

/// Sleeps up to `d`, returning early with an error if a vCPU of `vm` fails.
fn run_for(vm: &Vm, d: Duration) -> Result<(), PostcopyError> {
    let end = Instant::now() + d;
    loop {
        if let Some(f) = vm.failure() {
            return Err(PostcopyError::GuestFailed(f));
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(5)));
    }
}

/// Threads serving the destination; stopped and joined on drop.
struct Workers {
    dest: Arc<Destination>,
    threads: Vec<JoinHandle<Result<(), PostcopyError>>>,
}

impl Workers {
    fn finish(mut self) -> Result<(), PostcopyError> {
        self.dest.stop();
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .map_err(|_| PostcopyError::Panicked)
                .and_then(|r| r);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// Stops the rest after one ended early, and returns why it ended. With no reader
    /// left, vCPUs waiting in the kernel for pages are let go, so they can be stopped.
    fn failure(self) -> PostcopyError {
        let dest = self.dest.clone();
        let e = match self.finish() {
            Err(e) => e,
            Ok(()) => PostcopyError::Config("a post-copy thread stopped early".into()),
        };
        dest.release_faults();
        e
    }

    fn any_finished(&self) -> bool {
        self.threads.iter().any(|t| t.is_finished())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.dest.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The page server's link, when pages travel over TCP. Up again when the leg ends, however
/// it ends, so no thread that fetches waits for a link that nobody is left to restore.
struct LinkControl(Option<LinkSwitch>);

impl LinkControl {
    fn switch(&self) -> Option<&LinkSwitch> {
        self.0.as_ref()
    }

    fn is_down(&self) -> bool {
        self.0.as_ref().is_some_and(|l| !l.is_up())
    }
}

impl Drop for LinkControl {
    fn drop(&mut self) {
        if let Some(l) = &self.0 {
            l.set(true);
        }
    }
}

/// One migration: the destination VM that now runs the guest, and what serves it.
struct Leg {
    /// First, so it is dropped first: the link is back before the vCPUs and workers that
    /// may be waiting on it are stopped.
    link: LinkControl,
    number: u32,
    vm: Vm,
    dest: Arc<Destination>,
    /// What the checks compare against: the source's image here, or the pages of a source
    /// in another process.
    reference: Reference,
    /// A source in another process, told when it is needed no more.
    remote: Option<Remote>,
    /// Each vCPU's pace on the source before the first switchover.
    baseline: Vec<f64>,
    workers: Workers,
    switched_at: Instant,
    downtime: Duration,
    /// Serves `image` when pages travel over TCP; dropped after the workers that fetch.
    _server: Option<PageServer>,
}

impl Leg {
    /// Brings in every missing page at full speed; the guest keeps running.
    fn fill_rest(&self) {
        self.dest.throttle.set_rate(Rate::Unlimited);
        self.dest.set_push(true);
        while self.dest.missing() > 0 && !self.workers.any_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Pages that differ between source and destination, and pages compared: every data
    /// page, but for the qwords the workload writes (the verify workload checks those with
    /// its own stamps). Checksum failures of pages in transit count as differences.
    fn compare(&self, config: &RunConfig) -> Result<(u64, u64), PostcopyError> {
        let run = &self.dest.telemetry().run;
        let skip = config.workload.written_qwords();
        let (m, n) = match &self.reference {
            Reference::Image(image) => compare_data(image.image(), self.dest.ram(), skip),
            Reference::Fetched(source) => compare_fetched(source.as_ref(), self.dest.ram(), skip)?,
        };
        Ok((m + run.checksum_mismatches.get(), n))
    }

    /// Tells a source in another process that this destination has every page. The run
    /// does not depend on it: a source that cannot be told is noted.
    fn release_source(&self, status: &RunStatus) {
        if let Some(remote) = &self.remote {
            match remote.finish() {
                Ok(()) => status.note(format!(
                    "migration {}: the source at {} is released",
                    self.number, remote.addr
                )),
                Err(e) => status.note(format!("the source could not be released: {e}")),
            }
        }
    }

    /// Why the operator cannot take this leg's link down, if they cannot.
    fn link(&self) -> Result<&LinkSwitch, &'static str> {
        match (self.link.switch(), &self.remote) {
            (Some(l), _) => Ok(l),
            (None, Some(_)) => Err("the source is another process: faultline cannot cut that \
                                    link (outages are simulated by a page server of this \
                                    process, --transport tcp)"),
            (None, None) => Err("pages are copied locally: there is no link to take down \
                                 (--transport tcp has one)"),
        }
    }
}

/// What a leg's pages are checked against at the end.
enum Reference {
    Image(Arc<InProcessSource>),
    Fetched(Arc<dyn PageSource>),
}

/// How the switchover pauses the guest: here, or by asking the source over a connection
/// opened beforehand.
enum Pause<'a> {
    Local(&'a Vm),
    Remote(super::remote::PreparedSwitchover),
}

/// Where a leg's guest comes from.
enum LegSource {
    /// A VM of this process, running; paused at switchover.
    Local(Vm),
    /// A source in another process, which pauses its guest when asked.
    Remote(Remote),
}

/// Moves the guest from `source_vm` to a new destination VM whose memory is all missing,
/// and starts serving it. Downtime runs from the source's pause to the destination's resume.
fn switch_over(
    config: &RunConfig,
    from: LegSource,
    number: u32,
    baseline: &[f64],
    settings: Option<(Rate, bool)>,
    status: &RunStatus,
) -> Result<Leg, PostcopyError> {
    let vm_config = VmConfig {
        vcpus: config.vcpus,
        mem_bytes: config.mem_bytes,
    };
    // The destination is made ready before the source stops, like QEMU's -incoming.
    let backing = config
        .backing
        .unwrap_or_else(destination::preferred_backing);
    let features = match config.mode {
        FaultMode::Uffd => Features::THREAD_ID,
        FaultMode::Exit => Features::SIGBUS,
    }
    .union(destination::backing_features(backing));
    // A slice per vCPU: a userfaultfd per slice, so one vCPU's faults never queue behind
    // another's and each slice is a VMA of its own, whose locks no other vCPU takes
    // (BENCHMARKS.md); shared memory keeps one, read by `readers` in uffd mode.
    let per_slice = config.workload.sharing == Sharing::Own;
    let uffds = (0..if per_slice { config.vcpus } else { 1 })
        .map(|_| Userfaultfd::new(features, true).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    // Shared RAM is allocated and mapped here, while the source still runs: say so, and
    // how long it took.
    let size = crate::units::Bytes(config.mem_bytes);
    status.note(format!(
        "migration {number}: making {size} of {backing} RAM ready on the destination"
    ));
    let made = Instant::now();
    let dest_ram = Arc::new(GuestRam::with_backing(config.mem_bytes, backing)?);
    status.note(format!(
        "migration {number}: destination RAM ready ({size} {backing}) in {} ms",
        made.elapsed().as_millis()
    ));
    let telemetry = Arc::new(Telemetry::new(config.vcpus));
    // Two push threads reach the copy bandwidth one cannot (BENCHMARKS.md); the throttle
    // is shared, so a rate limit still holds for both together.
    let parts =
        std::thread::available_parallelism().map_or(1, |n| n.get().min(PUSH_THREADS)) as u64;
    let reader_count = match (config.mode, per_slice) {
        (FaultMode::Exit, _) => 0,
        (FaultMode::Uffd, true) => config.vcpus,
        (FaultMode::Uffd, false) => config.readers.max(1),
    };
    // Who fetches: the vCPUs themselves or the readers (a vCPU sleeps while its fault is
    // fetched, so only the vCPUs beyond one per reader compete), and the push threads.
    let spin = match config.mode {
        FaultMode::Exit => net::socket_spin(config.vcpus + parts as usize, 0),
        FaultMode::Uffd => net::socket_spin(
            reader_count + parts as usize,
            config.vcpus.saturating_sub(reader_count),
        ),
    };
    // The server's token is filled in by `page_source`, which makes the server.
    let options = ClientOptions {
        spin,
        recover: config.link_timeout,
        ..ClientOptions::default()
    };
    let (source, server, reference): (Arc<dyn PageSource>, _, _) = match &from {
        LegSource::Local(source_vm) => {
            let image = Arc::new(InProcessSource::new(source_vm.ram().clone()));
            let (source, server) = net::page_source(config.transport, image.clone(), options)
                .map_err(SourceError::from)?;
            (source, server, Reference::Image(image))
        }
        LegSource::Remote(remote) => {
            let options = ClientOptions {
                token: remote.token,
                ..options
            };
            let tcp = TcpSource::connect(remote.addr, options).map_err(SourceError::from)?;
            // The offer shaped this guest; the image must be the one it described.
            if tcp.image_size() != config.mem_bytes {
                return Err(super::remote::RemoteError::Offer {
                    addr: remote.addr,
                    why: format!(
                        "it offered {} of memory but serves {}",
                        crate::units::Bytes(config.mem_bytes),
                        crate::units::Bytes(tcp.image_size())
                    ),
                }
                .into());
            }
            let source: Arc<dyn PageSource> = Arc::new(tcp);
            (source.clone(), None, Reference::Fetched(source))
        }
    };
    let link = LinkControl(server.as_ref().map(PageServer::link));
    let (rate, push) = settings.unwrap_or((config.fetch_rate, config.push));
    let dest = Arc::new(Destination::with_uffds(
        dest_ram.clone(),
        uffds,
        source.clone(),
        Throttle::new(rate),
        config.rtt,
        telemetry,
    )?);
    // The push waits for the switchover: before it, it would only take CPU from the pause.
    dest.set_push(false);
    let handler: Option<Arc<dyn MissingPageHandler>> = match config.mode {
        FaultMode::Uffd => None,
        FaultMode::Exit => Some(dest.clone()),
    };
    // The boot region goes ahead while the source runs; the switchover moves only the
    // parts a running guest can change.
    copy_boot(&from, source.as_ref(), &dest_ram, 0, BOOT_SIZE)?;
    let vm = Vm::with_ram(vm_config, dest_ram.clone(), handler)?;
    dest.set_vcpu_tids(vm.vcpus().iter().map(|v| v.shared().thread_id()).collect());
    let mut workers = Workers {
        dest: dest.clone(),
        threads: Vec::new(),
    };
    if config.mode == FaultMode::Uffd {
        let readers: Vec<usize> = if per_slice {
            (0..dest.uffd_count()).collect()
        } else {
            vec![0; config.readers.max(1)]
        };
        // Over TCP every fetcher has a server thread at the other end.
        let servers = match config.transport {
            Transport::Tcp => reader_count + parts as usize,
            Transport::Local => 0,
        };
        dest.set_reader_spin(destination::auto_reader_spin(
            config.vcpus + readers.len() + parts as usize + servers,
        ));
        for (i, u) in readers.into_iter().enumerate() {
            workers.threads.push(destination::spawn(
                format!("uffd-reader{i}"),
                dest.clone(),
                move |d| d.serve_uffd_of(u),
            )?);
        }
    }
    for i in 0..parts {
        workers.threads.push(destination::spawn(
            format!("push{i}"),
            dest.clone(),
            move |d| d.push_part(i, parts),
        )?);
    }

    tracing::debug!(number, "destination ready");
    // A remote switchover's connection is opened before the pause, not during it.
    let pause = match &from {
        LegSource::Local(source_vm) => Pause::Local(source_vm),
        LegSource::Remote(remote) => Pause::Remote(remote.prepare()?),
    };
    status.set_phase(Phase::Switchover);
    let t0 = Instant::now();
    let (states, baseline) = match pause {
        Pause::Local(source_vm) => {
            let states = source_vm.pause_and_capture_all()?;
            for (gpa, len) in layout::live_boot_ranges(config.mem_bytes, config.vcpus) {
                dest_ram.copy_from(source_vm.ram(), gpa, len)?;
            }
            (states, baseline.to_vec())
        }
        Pause::Remote(prepared) => {
            let handover = prepared.switch_over(config.vcpus)?;
            // The boot pages a running guest changes come with the handover.
            for (gpa, bytes) in &handover.boot {
                dest_ram.write(*gpa, bytes)?;
            }
            (handover.states, handover.baseline_per_sec)
        }
    };
    // Every restore lands before any vCPU runs: a running vCPU would take the CPU that
    // the others need to finish theirs.
    vm.restore_all(states)?;
    vm.resume_all()?;
    let downtime = t0.elapsed();
    dest.set_push(push);
    let switched_at = Instant::now();
    let remote = match from {
        LegSource::Local(source_vm) => {
            drop(source_vm);
            None
        }
        LegSource::Remote(remote) => Some(remote),
    };
    status.set_live(LiveMigration {
        number,
        vcpus: shared(&vm),
        dest: Some(dest.clone()),
        link: link.switch().cloned(),
        switched_at: Some(switched_at),
        downtime: Some(downtime),
        baseline_per_sec: baseline.clone(),
    });
    status.set_phase(Phase::Postcopy);
    let via = match (&server, &remote) {
        (Some(s), _) => format!("; pages over tcp from {}", s.addr()),
        (None, Some(r)) => format!("; pages over tcp from the source at {}", r.addr),
        (None, None) => String::new(),
    };
    status.note(format!(
        "migration {number}: switched over, downtime {} us{via}",
        downtime.as_micros()
    ));
    Ok(Leg {
        link,
        number,
        vm,
        dest,
        reference,
        remote,
        baseline,
        workers,
        switched_at,
        downtime,
        _server: server,
    })
}

/// Copies `len` bytes of the boot region at `gpa` to the destination: from the source VM's
/// RAM, or fetched from a source in another process (its checksums checked).
fn copy_boot(
    from: &LegSource,
    source: &dyn PageSource,
    dest_ram: &GuestRam,
    gpa: u64,
    len: u64,
) -> Result<(), PostcopyError> {
    match from {
        LegSource::Local(vm) => Ok(dest_ram.copy_from(vm.ram(), gpa, len)?),
        LegSource::Remote(_) => {
            let mut buf = vec![0u8; len as usize];
            let mut sums = Vec::new();
            source.fetch(gpa, &mut buf, &mut sums)?;
            let page = PAGE_SIZE as usize;
            if let Some(bad) = buf
                .chunks(page)
                .zip(&sums)
                .position(|(p, &sum)| crc32fast::hash(p) != sum)
            {
                return Err(PostcopyError::Config(format!(
                    "boot page {:#x} arrived damaged (checksum mismatch)",
                    gpa + (bad * page) as u64
                )));
            }
            Ok(dest_ram.write(gpa, &buf)?)
        }
    }
}

fn shared(vm: &Vm) -> Vec<Arc<crate::vmm::VcpuShared>> {
    vm.vcpus().iter().map(|v| v.shared().clone()).collect()
}

/// How the migrations went, for the summary: the last destination and the checks of all.
struct Outcome {
    /// What the verify guest found wrong on the VMs it left behind.
    earlier_guest_errors: u64,
    number: u32,
    vm: Vm,
    dest: Arc<Destination>,
    downtime: Duration,
    injections: Vec<InjectionSummary>,
    postcopy: Duration,
    postcopy_complete: bool,
    mismatches: u64,
    pages_checked: u64,
}

fn run_info(config: &RunConfig) -> RunInfo {
    RunInfo {
        scenario: config.scenario.clone(),
        mode: config.mode.as_str().to_string(),
        workload: config.workload.to_string(),
        vcpus: config.vcpus,
        mem_bytes: config.mem_bytes,
        backing: config.backing.map(|b| b.as_str().to_string()),
        transport: Some(config.transport().as_str().to_string()),
        source: config.remote.map(|r| r.addr.to_string()),
        page_size: PAGE_SIZE,
    }
}

/// Runs a whole migration; `controls` carries operator actions while it runs. Snapshots go
/// to `status`'s subscribers all along, the last one with the summary or the error.
pub fn run(
    config: &RunConfig,
    status: &RunStatus,
    controls: Option<&Receiver<Action>>,
) -> Result<Summary, PostcopyError> {
    config.validate()?;
    // Chosen once, so every migration of the run and its observers see the same backing.
    let config = &RunConfig {
        backing: Some(
            config
                .backing
                .unwrap_or_else(destination::preferred_backing),
        ),
        ..config.clone()
    };
    let monitor = Monitor::new(run_info(config))?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("monitor".into())
            .spawn_scoped(s, || monitor.run(status, &stop))
            .map_err(PostcopyError::Thread)?;
        // Stops the monitor however migrate ends, a panic included: the scope waits for it.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let guard = StopOnDrop(&stop);
        let outcome = migrate(config, status, controls);
        drop(guard);
        let mut monitor = handle.join().map_err(|_| PostcopyError::Panicked)?;
        // Fold the last events in before the latency figures are read.
        monitor.catch_up(status);
        match outcome {
            Ok(o) => {
                let summary = summarize(config, &o, monitor.aggregate());
                status.set_phase(Phase::Finished);
                let verdict = if summary.verified {
                    format!(
                        "finished: verified, {} pages checked",
                        summary.verify.pages_checked
                    )
                } else {
                    format!(
                        "finished: NOT verified ({} mismatches, {} guest errors)",
                        summary.verify.mismatches, summary.verify.guest_errors
                    )
                };
                monitor.finish(status, Some(summary.clone()), Some(verdict));
                Ok(summary)
            }
            Err(e) => {
                status.set_phase(Phase::Failed);
                monitor.finish(status, None, Some(format!("run failed: {e}")));
                Err(e)
            }
        }
    })
}

/// Starts the source VM and runs its workload for the warm-up; returns it running, with
/// each vCPU's pace (accesses a second) as the baseline.
fn warm_up(config: &RunConfig, status: &RunStatus) -> Result<(Vm, Vec<f64>), PostcopyError> {
    let vm_config = VmConfig {
        vcpus: config.vcpus,
        mem_bytes: config.mem_bytes,
    };
    let program = guest::assemble(
        &config.workload,
        config.vcpus,
        &layout::placement(config.mem_bytes),
    )?;

    // The source runs the workload for the warm-up; its pace is each vCPU's baseline.
    status.set_phase(Phase::Warmup);
    let source_vm = Vm::new(vm_config)?;
    source_vm.load(&program)?;
    status.set_live(LiveMigration {
        number: 0,
        vcpus: shared(&source_vm),
        dest: None,
        link: None,
        switched_at: None,
        downtime: None,
        baseline_per_sec: Vec::new(),
    });
    // The baseline comes from the warm-up's second half: the first pays for the source's
    // own first touches of fresh memory.
    let accesses = |vm: &Vm| -> Vec<u64> {
        vm.vcpus()
            .iter()
            .map(|v| v.stats().guest_accesses.load(Ordering::Relaxed))
            .collect()
    };
    let warm_start = Instant::now();
    source_vm.resume_all()?;
    tracing::debug!("warm-up: source running");
    run_for(&source_vm, config.warmup / 2)?;
    let (half_at, half) = (Instant::now(), accesses(&source_vm));
    run_for(&source_vm, config.warmup - config.warmup / 2)?;
    let secs = half_at.elapsed().as_secs_f64().max(1e-6);
    let whole_secs = warm_start.elapsed().as_secs_f64().max(1e-6);
    // A guest too slow to report in the second half is paced over the whole warm-up.
    let baseline: Vec<f64> = accesses(&source_vm)
        .iter()
        .zip(&half)
        .map(|(&end, &mid)| match end.saturating_sub(mid) {
            0 => end as f64 / whole_secs,
            d => d as f64 / secs,
        })
        .collect();

    tracing::debug!(?baseline, "warm-up done");
    Ok((source_vm, baseline))
}

fn migrate(
    config: &RunConfig,
    status: &RunStatus,
    controls: Option<&Receiver<Action>>,
) -> Result<Outcome, PostcopyError> {
    let mut leg = match config.remote {
        Some(remote) => {
            status.set_phase(Phase::Warmup);
            status.note(format!(
                "taking over the guest of the source at {}",
                remote.addr
            ));
            switch_over(config, LegSource::Remote(remote), 1, &[], None, status)?
        }
        None => {
            let (source_vm, baseline) = warm_up(config, status)?;
            switch_over(
                config,
                LegSource::Local(source_vm),
                1,
                &baseline,
                None,
                status,
            )?
        }
    };
    let mut earlier_guest_errors = 0;
    let first_switch = leg.switched_at;
    let mut timeline = config.timeline.clone();
    timeline.sort_by_key(|a| a.at);
    let mut timeline = timeline.into_iter().peekable();
    let mut injections = Vec::new();
    let mut complete_at: Option<Duration> = None;
    let (mut mismatches, mut pages_checked) = (0, 0);
    loop {
        if let Some(f) = leg.vm.failure() {
            return Err(PostcopyError::GuestFailed(f));
        }
        // Handler and push threads end only when stopped: one that ended has failed, and
        // the vCPUs it served would wait for their pages for ever.
        if leg.workers.any_finished() {
            let Leg { workers, .. } = leg;
            return Err(workers.failure());
        }
        let elapsed = first_switch.elapsed();
        let mut actions = Vec::new();
        while timeline.peek().is_some_and(|a| a.at <= elapsed) {
            if let Some(a) = timeline.next() {
                actions.push(a.action);
            }
        }
        if let Some(rx) = controls {
            actions.extend(rx.try_iter());
        }
        for action in actions {
            if action == Action::Remigrate && leg.link.is_down() {
                status.note(
                    "new migration refused: the link is down, and the rest of this one \
                     must come from the source first",
                );
                continue;
            }
            if action == Action::Remigrate {
                status.note(format!(
                    "migration {}: filling the rest before migrating again",
                    leg.number
                ));
                // The operator's throttle and push carry over; filling the rest changes both.
                let settings = (leg.dest.throttle.rate(), leg.dest.push_enabled());
                leg.fill_rest();
                // The source is done with either way: a failed check ends the run.
                let compared = leg.compare(config);
                leg.release_source(status);
                let (m, n) = compared?;
                mismatches += m;
                pages_checked += n;
                earlier_guest_errors += guest_errors(&leg.vm);
                let Leg {
                    number,
                    vm,
                    workers,
                    baseline,
                    ..
                } = leg;
                workers.finish()?;
                leg = switch_over(
                    config,
                    LegSource::Local(vm),
                    number + 1,
                    &baseline,
                    Some(settings),
                    status,
                )?;
                injections.clear();
                complete_at = None;
                continue;
            }
            match apply(&leg.dest, &leg.vm, leg.link(), action) {
                Ok(Some(inj)) => {
                    status.note(format!(
                        "injected {} pages at {:#x}; guest paused {} us",
                        inj.pages, inj.gpa, inj.pause_us
                    ));
                    complete_at = None;
                    injections.push(inj);
                }
                Ok(None) => status.note(describe(action)),
                // An operator's bad range is reported; the run goes on.
                Err(e @ (PostcopyError::BadRange { .. } | PostcopyError::Refused(_))) => {
                    status.note(e.to_string())
                }
                Err(e) => return Err(e),
            }
        }
        if leg.dest.missing() == 0 {
            if complete_at.is_none() {
                complete_at = Some(leg.switched_at.elapsed());
                status.set_phase(Phase::Complete);
            }
        } else if complete_at.is_some() {
            complete_at = None;
            status.set_phase(Phase::Postcopy);
        }
        if elapsed >= config.duration || status.stop_requested() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }

    // The rest comes from the source: bring the link back first (a vCPU waiting on a
    // fetch cannot pause until it returns).
    if leg.link.is_down() {
        if let Some(l) = leg.link.switch() {
            l.set(true);
        }
        status.note("link up again to finish the run");
    }
    // Stop the guest; bring in whatever is still missing so the checks see every page.
    leg.vm.pause_all()?;
    let postcopy_complete = complete_at.is_some();
    if leg.dest.missing() > 0 {
        leg.fill_rest();
        complete_at = Some(leg.switched_at.elapsed());
    }
    let compared = leg.compare(config);
    leg.release_source(status);
    let (m, n) = compared?;
    let Leg {
        number,
        vm,
        dest,
        workers,
        switched_at,
        downtime,
        ..
    } = leg;
    workers.finish()?;
    Ok(Outcome {
        earlier_guest_errors,
        number,
        vm,
        dest,
        downtime,
        injections,
        postcopy: complete_at.unwrap_or_else(|| switched_at.elapsed()),
        postcopy_complete,
        mismatches: mismatches + m,
        pages_checked: pages_checked + n,
    })
}

/// Pages the verify guest found wrong on `vm`.
fn guest_errors(vm: &Vm) -> u64 {
    vm.vcpus()
        .iter()
        .map(|v| v.stats().verify_mismatches.load(Ordering::Relaxed))
        .sum()
}

fn describe(action: Action) -> String {
    match action {
        Action::Throttle(r) => format!("fetch rate set to {r}"),
        Action::Push(true) => "background push resumed".into(),
        Action::Push(false) => "background push paused: only demand fetches run".into(),
        Action::Inject(r) => format!("inject {:#x}+{:#x}", r.start, r.len),
        Action::Remigrate => "new migration".into(),
        Action::Link(false) => "link down: the destination cannot reach the source; \
                                faults wait for it"
            .into(),
        Action::Link(true) => "link up: fetches resume".into(),
    }
}

fn summarize(config: &RunConfig, o: &Outcome, aggregate: &Aggregate) -> Summary {
    let leg = o;
    let telemetry = leg.dest.telemetry();
    let run = &telemetry.run;
    let guest_errors = o.earlier_guest_errors + guest_errors(&leg.vm);
    let exit_path = match config.mode {
        FaultMode::Uffd => None,
        FaultMode::Exit => crate::vmm::dominant_exit_path(leg.vm.vcpus().iter().map(|v| v.stats()))
            .map(|p| p.as_str()),
    };
    let bytes = run.bytes_transferred.get();
    let per_vcpu = leg
        .vm
        .vcpus()
        .iter()
        .enumerate()
        .map(|(i, v)| VcpuSummary {
            vcpu: i,
            fault_exits: telemetry.vcpus[i].faults.load(Ordering::Relaxed),
            stall_ms: telemetry.vcpus[i].stall_ns.load(Ordering::Relaxed) as f64 / 1e6,
            latency_us: aggregate.vcpu_latency(i),
            guest_progress: v.stats().guest_accesses.load(Ordering::Relaxed),
            offcpu_ms: None,
            qemu_blocktime_ms: None,
        })
        .collect();
    Summary {
        scenario: config.scenario.clone(),
        mode: config.mode.as_str().to_string(),
        exit_path: exit_path.map(str::to_string),
        workload: config.workload.to_string(),
        vcpus: config.vcpus,
        mem_bytes: config.mem_bytes,
        backing: leg.dest.ram().backing().as_str().to_string(),
        transport: config.transport().as_str().to_string(),
        page_size: PAGE_SIZE,
        pages_total: leg.dest.ram().pages(),
        pages_boot: layout::BOOT_PAGES,
        pages_demand: run.pages_demand.get(),
        pages_pushed: run.pages_pushed.get(),
        pages_injected: run.pages_injected.get(),
        pages_refetched: run.pages_refetched.get(),
        migrations: leg.number,
        downtime_us: leg.downtime.as_micros() as u64,
        postcopy_ms: o.postcopy.as_millis() as u64,
        postcopy_complete: o.postcopy_complete,
        bytes_transferred: bytes,
        transfer_bytes_per_sec: (bytes as f64 / o.postcopy.as_secs_f64().max(1e-9)) as u64,
        throttle: config.fetch_rate.to_string(),
        blocktime_all_ms: aggregate.blocktime_all_ns() as f64 / 1e6,
        injections: o.injections.clone(),
        verified: o.mismatches == 0 && guest_errors == 0 && leg.dest.missing() == 0,
        verify: VerifySummary {
            pages_checked: o.pages_checked,
            mismatches: o.mismatches,
            guest_errors,
        },
        telemetry_dropped: telemetry.dropped(),
        latency_us: aggregate.latency(),
        per_vcpu,
        qemu: None,
    }
}

/// Applies one action; an injection pauses the vCPUs while pages change hands.
fn apply(
    dest: &Destination,
    vm: &Vm,
    link: Result<&LinkSwitch, &str>,
    action: Action,
) -> Result<Option<InjectionSummary>, PostcopyError> {
    match action {
        Action::Throttle(rate) => dest.throttle.set_rate(rate),
        Action::Push(on) => dest.set_push(on),
        // Handled by the run loop, which owns the VMs.
        Action::Remigrate => {}
        Action::Link(up) => match link {
            Ok(l) => l.set(up),
            Err(why) => return Err(PostcopyError::Refused(why.into())),
        },
        // The pages' content goes back to the source, and the pages would wait for it.
        Action::Inject(_) if link.is_ok_and(|l| !l.is_up()) => {
            return Err(PostcopyError::Refused(
                "injection refused: the link is down, and the pages' content must go back \
                 to the source"
                    .into(),
            ));
        }
        Action::Inject(range) => {
            let t = Instant::now();
            vm.pause_all()?;
            let r = dest.inject(range);
            vm.resume_all()?;
            let pause = t.elapsed();
            let pages = r?;
            dest.telemetry().emit(Event::Inject {
                gpa: range.start,
                pages,
                at_ns: dest.telemetry().now_ns(),
                pause_ns: pause.as_nanos() as u64,
            });
            return Ok(Some(InjectionSummary {
                gpa: range.start,
                pages,
                pause_us: pause.as_micros() as u64,
            }));
        }
    }
    Ok(None)
}

/// Compares the data pages of two RAMs: (pages that differ, pages compared). The boot
/// region is left out: the CPU sets accessed and dirty bits in the guest's page tables.
fn compare_data(a: &GuestRam, b: &GuestRam, skip_qwords: &[usize]) -> (u64, u64) {
    let mut differ = 0;
    for page in layout::BOOT_PAGES..a.pages() {
        let gpa = page * PAGE_SIZE;
        // SAFETY: the source is fully present, and every destination page has been filled.
        let same = unsafe { same_except(a.page_slice(gpa), b.page_slice(gpa), skip_qwords) };
        differ += u64::from(!same);
    }
    (differ, a.pages() - layout::BOOT_PAGES)
}

/// [`compare_data`] against a source in another process, fetched a chunk at a time.
fn compare_fetched(
    source: &dyn PageSource,
    dest: &GuestRam,
    skip_qwords: &[usize],
) -> Result<(u64, u64), PostcopyError> {
    const CHUNK_PAGES: u64 = 256;
    let mut buf = vec![0u8; (CHUNK_PAGES * PAGE_SIZE) as usize];
    let mut sums = Vec::new();
    let mut differ = 0;
    let mut page = layout::BOOT_PAGES;
    while page < dest.pages() {
        let count = CHUNK_PAGES.min(dest.pages() - page);
        let chunk = &mut buf[..(count * PAGE_SIZE) as usize];
        sums.clear();
        source.fetch(page * PAGE_SIZE, chunk, &mut sums)?;
        for (i, theirs) in chunk.chunks(PAGE_SIZE as usize).enumerate() {
            // SAFETY: every destination page has been filled before the checks.
            let ours = unsafe { dest.page_slice((page + i as u64) * PAGE_SIZE) };
            differ += u64::from(!same_except(theirs, ours, skip_qwords));
        }
        page += count;
    }
    Ok((differ, dest.pages() - layout::BOOT_PAGES))
}

/// Whether two pages are equal but for the qwords at `skip` (ascending byte offsets).
fn same_except(a: &[u8], b: &[u8], skip: &[usize]) -> bool {
    let mut from = 0;
    for &at in skip {
        if a.get(from..at) != b.get(from..at) {
            return false;
        }
        from = at + 8;
    }
    a.get(from..) == b.get(from..)
}

#[cfg(test)]
mod tests {
    use super::same_except;

    #[test]
    fn pages_compare_equal_but_for_the_skipped_qwords() {
        let a = vec![7u8; 4096];
        let mut b = a.clone();
        b[0] = 1;
        b[4090] = 1;
        assert!(same_except(&a, &b, &[0, 4088]));
        assert!(!same_except(&a, &b, &[0]));
        b[8] = 1;
        assert!(!same_except(&a, &b, &[0, 4088]));
        assert!(same_except(&a, &a, &[]));
    }
}
