//! One run: warm up the source VM, switch over, serve post-copy until every page is filled
//! and the duration is over, then prove nothing was lost and summarize.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};

use super::PostcopyError;
use super::destination::{self, Destination};
use super::source::InProcessSource;
use super::throttle::Throttle;
use crate::guest::{self, Workload};
use crate::telemetry::{Aggregate, Event, LatencySummary, Telemetry};
use crate::uffd::{Features, Userfaultfd};
use crate::units::{GpaRange, Rate};
use crate::vmm::layout::{self, BOOT_SIZE, PAGE_SIZE};
use crate::vmm::{GuestRam, MissingPageHandler, Vm, VmConfig};

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
    pub timeline: Vec<TimedAction>,
}

impl RunConfig {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Warmup = 0,
    Switchover = 1,
    Postcopy = 2,
    Complete = 3,
    Finished = 4,
}

impl Phase {
    pub fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Warmup,
            1 => Phase::Switchover,
            2 => Phase::Postcopy,
            3 => Phase::Complete,
            _ => Phase::Finished,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Warmup => "warm-up",
            Phase::Switchover => "switchover",
            Phase::Postcopy => "post-copy",
            Phase::Complete => "complete",
            Phase::Finished => "finished",
        }
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
    pub page_size: u64,
    pub pages_total: u64,
    pub pages_boot: u64,
    pub pages_demand: u64,
    pub pages_pushed: u64,
    pub pages_injected: u64,
    pub pages_refetched: u64,
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
}

/// Live view of a run for observers: the phase, and the destination once post-copy begins.
#[derive(Default)]
pub struct RunStatus {
    phase: AtomicU8,
    destination: std::sync::OnceLock<Arc<Destination>>,
}

impl RunStatus {
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    pub fn destination(&self) -> Option<&Arc<Destination>> {
        self.destination.get()
    }
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
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.dest.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs a whole migration; `controls` carries operator actions while it runs.
pub fn run(
    config: &RunConfig,
    status: &RunStatus,
    controls: Option<&Receiver<Action>>,
) -> Result<Summary, PostcopyError> {
    config.validate()?;
    let vm_config = VmConfig {
        vcpus: config.vcpus,
        mem_bytes: config.mem_bytes,
    };
    let program = guest::assemble(
        &config.workload,
        config.vcpus,
        &layout::placement(config.mem_bytes),
    )?;

    // The source runs the workload for the warm-up.
    status.set_phase(Phase::Warmup);
    let source_vm = Vm::new(vm_config)?;
    source_vm.load(&program)?;
    source_vm.resume_all()?;
    run_for(&source_vm, config.warmup)?;

    // The destination is made ready before the source stops, like QEMU's -incoming.
    let features = match config.mode {
        FaultMode::Uffd => Features::THREAD_ID,
        FaultMode::Exit => Features::SIGBUS,
    };
    let uffd = Arc::new(Userfaultfd::new(features, true)?);
    let dest_ram = Arc::new(GuestRam::new(config.mem_bytes)?);
    let telemetry = Arc::new(Telemetry::new(config.vcpus));
    let source = Arc::new(InProcessSource::new(source_vm.ram().clone()));
    let dest = Arc::new(Destination::new(
        dest_ram.clone(),
        uffd,
        source.clone(),
        Throttle::new(config.fetch_rate),
        config.rtt,
        telemetry.clone(),
    )?);
    dest.set_push(config.push);
    let handler: Option<Arc<dyn MissingPageHandler>> = match config.mode {
        FaultMode::Uffd => None,
        FaultMode::Exit => Some(dest.clone()),
    };
    let dest_vm = Vm::with_ram(vm_config, dest_ram.clone(), handler)?;
    dest.set_vcpu_tids(
        dest_vm
            .vcpus()
            .iter()
            .map(|v| v.shared().thread_id())
            .collect(),
    );
    let mut workers = Workers {
        dest: dest.clone(),
        threads: Vec::new(),
    };
    if config.mode == FaultMode::Uffd {
        for i in 0..config.readers.max(1) {
            workers.threads.push(destination::spawn(
                format!("uffd-reader{i}"),
                dest.clone(),
                Destination::serve_uffd,
            )?);
        }
    }
    workers.threads.push(destination::spawn(
        "push".into(),
        dest.clone(),
        Destination::push,
    )?);
    let _ = status.destination.set(dest.clone());

    // Switchover: downtime runs from the source's pause to the destination's resume.
    status.set_phase(Phase::Switchover);
    let t0 = Instant::now();
    source_vm.pause_all()?;
    let states = source_vm.capture_all()?;
    let mut boot = vec![0u8; BOOT_SIZE as usize];
    source_vm.ram().read(0, &mut boot)?;
    dest_ram.write(0, &boot)?;
    dest_vm.restore_all(states)?;
    dest_vm.resume_all()?;
    let downtime = t0.elapsed();
    let switched_at = Instant::now();
    drop(source_vm);
    status.set_phase(Phase::Postcopy);

    let mut timeline = config.timeline.clone();
    timeline.sort_by_key(|a| a.at);
    let mut timeline = timeline.into_iter().peekable();
    let mut injections = Vec::new();
    let mut complete_at: Option<Duration> = None;
    loop {
        if let Some(f) = dest_vm.failure() {
            return Err(PostcopyError::GuestFailed(f));
        }
        let elapsed = switched_at.elapsed();
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
            if let Some(inj) = apply(&dest, &dest_vm, action)? {
                complete_at = None;
                injections.push(inj);
            }
        }
        if dest.missing() == 0 {
            if complete_at.is_none() {
                complete_at = Some(elapsed);
                status.set_phase(Phase::Complete);
            }
        } else if complete_at.is_some() {
            complete_at = None;
            status.set_phase(Phase::Postcopy);
        }
        if elapsed >= config.duration {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }

    // Stop the guest; bring in whatever is still missing so the checks see every page.
    dest_vm.pause_all()?;
    let postcopy_complete = complete_at.is_some();
    if dest.missing() > 0 {
        dest.throttle.set_rate(Rate::Unlimited);
        dest.set_push(true);
        while dest.missing() > 0 {
            if workers.threads.iter().any(|t| t.is_finished()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        complete_at = Some(switched_at.elapsed());
    }
    workers.finish()?;
    status.set_phase(Phase::Finished);

    let mut aggregate =
        Aggregate::new(config.vcpus).map_err(|e| PostcopyError::Telemetry(e.to_string()))?;
    for e in telemetry.receiver().try_iter() {
        aggregate.fold(&e);
    }

    // Integrity: checksums were checked on arrival; a read-only guest must have left the
    // destination identical to the source image; a verify guest checks its own stamps.
    let run = &telemetry.run;
    let mut mismatches = run.checksum_mismatches.load(Ordering::Relaxed);
    let mut pages_checked =
        run.pages_demand.load(Ordering::Relaxed) + run.pages_pushed.load(Ordering::Relaxed);
    if !config.workload.writes() {
        let (m, n) = compare_data(source.image(), &dest_ram);
        mismatches += m;
        pages_checked = n;
    }
    let guest_errors: u64 = dest_vm
        .vcpus()
        .iter()
        .map(|v| v.stats().verify_mismatches.load(Ordering::Relaxed))
        .sum();
    let exit_path = match config.mode {
        FaultMode::Uffd => None,
        FaultMode::Exit => dominant_exit_path(&dest_vm),
    };
    let postcopy = complete_at.unwrap_or_else(|| switched_at.elapsed());
    let bytes = run.bytes_transferred.load(Ordering::Relaxed);
    let per_vcpu = dest_vm
        .vcpus()
        .iter()
        .enumerate()
        .map(|(i, v)| VcpuSummary {
            vcpu: i,
            fault_exits: telemetry.vcpus[i].faults.load(Ordering::Relaxed),
            stall_ms: telemetry.vcpus[i].stall_ns.load(Ordering::Relaxed) as f64 / 1e6,
            latency_us: aggregate.vcpu_latency(i),
            guest_progress: v.stats().guest_accesses.load(Ordering::Relaxed),
        })
        .collect();
    let pages_total = dest_ram.pages();
    Ok(Summary {
        scenario: config.scenario.clone(),
        mode: config.mode.as_str().to_string(),
        exit_path: exit_path.map(str::to_string),
        workload: config.workload.to_string(),
        vcpus: config.vcpus,
        mem_bytes: config.mem_bytes,
        page_size: PAGE_SIZE,
        pages_total,
        pages_boot: layout::BOOT_PAGES,
        pages_demand: run.pages_demand.load(Ordering::Relaxed),
        pages_pushed: run.pages_pushed.load(Ordering::Relaxed),
        pages_injected: run.pages_injected.load(Ordering::Relaxed),
        pages_refetched: run.pages_refetched.load(Ordering::Relaxed),
        downtime_us: downtime.as_micros() as u64,
        postcopy_ms: postcopy.as_millis() as u64,
        postcopy_complete,
        bytes_transferred: bytes,
        transfer_bytes_per_sec: (bytes as f64 / postcopy.as_secs_f64().max(1e-9)) as u64,
        throttle: config.fetch_rate.to_string(),
        blocktime_all_ms: telemetry.blocktime_all_ns() as f64 / 1e6,
        injections,
        verified: mismatches == 0 && guest_errors == 0 && dest.missing() == 0,
        verify: VerifySummary {
            pages_checked,
            mismatches,
            guest_errors,
        },
        telemetry_dropped: telemetry.dropped(),
        latency_us: aggregate.latency(),
        per_vcpu,
    })
}

/// Applies one action; an injection pauses the vCPUs while pages change hands.
fn apply(
    dest: &Destination,
    vm: &Vm,
    action: Action,
) -> Result<Option<InjectionSummary>, PostcopyError> {
    match action {
        Action::Throttle(rate) => dest.throttle.set_rate(rate),
        Action::Push(on) => dest.set_push(on),
        // Handled by the run loop, which owns the VMs.
        Action::Remigrate => {}
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
fn compare_data(a: &GuestRam, b: &GuestRam) -> (u64, u64) {
    let mut differ = 0;
    for page in layout::BOOT_PAGES..a.pages() {
        let gpa = page * PAGE_SIZE;
        // SAFETY: the source is fully present, and every destination page has been filled.
        let same = unsafe { a.page_slice(gpa) == b.page_slice(gpa) };
        differ += u64::from(!same);
    }
    (differ, a.pages() - layout::BOOT_PAGES)
}

fn dominant_exit_path(vm: &Vm) -> Option<&'static str> {
    crate::vmm::ExitPath::ALL
        .iter()
        .map(|p| {
            let n: u64 = vm
                .vcpus()
                .iter()
                .map(|v| v.stats().fault_exits[p.index()].load(Ordering::Relaxed))
                .sum();
            (n, p.as_str())
        })
        .filter(|(n, _)| *n > 0)
        .max()
        .map(|(_, s)| s)
}
