//! `faultline probe`: what this host offers, found by asking the kernel and by running a
//! tiny guest in each fault mode, never by assuming.
//!
//! Owns the probe report. Uses the VMM and the userfaultfd module; knows nothing of the UI.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvm_ioctls::Cap;
use serde::Serialize;

use crate::contract::Backing;
use crate::contract::Workload;
use crate::guest::{self};
use crate::postcopy::destination;
use crate::uffd::{Features, Fill, PageFault, Userfaultfd};
use crate::vmm::{
    self, ExitPath, FillOutcome, GuestRam, MissingPageHandler, RunState, Vm, VmConfig, VmmError,
    layout,
};

/// Pages the probe guest touches.
const PROBE_PAGES: u64 = 8;
const PROBE_MEM: u64 = layout::MIN_MEM_BYTES;
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize)]
pub struct Report {
    pub kvm: KvmReport,
    pub uffd: UffdReport,
    /// The destination memory a run gets by default; the fault modes are probed on it.
    pub backing: BackingReport,
    pub fault_modes: FaultModes,
    pub guest_code: GuestCode,
}

/// How fast this host runs the test guest's instructions.
#[derive(Debug, Serialize)]
pub struct GuestCode {
    /// Nanoseconds per guest instruction, from the difference of two loops' run times.
    pub ns_per_instruction: Option<f64>,
    /// Each instruction costs a hypervisor's emulation (PVM does this for a guest that is
    /// not PVM-aware), not the CPU's fraction of a nanosecond.
    pub emulated: Option<bool>,
    pub error: Option<String>,
}

/// Loop lengths of the guest-code timing: the difference cancels VM start and exit costs.
const SHORT_LOOP: u32 = 1_000;
const LONG_LOOP: u32 = 201_000;
/// Above this, instructions are emulated; native execution is around a nanosecond.
const EMULATED_NS: f64 = 50.0;

#[derive(Debug, Serialize)]
pub struct KvmReport {
    pub available: bool,
    pub api_version: Option<i32>,
    pub flavour: &'static str,
    pub caps: KvmCaps,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct KvmCaps {
    /// KVM_CAP_MEMORY_FAULT_INFO: EFAULTs annotated as KVM_EXIT_MEMORY_FAULT.
    pub memory_fault_info: bool,
    /// KVM_CAP_USERFAULT: null where this build's KVM headers do not define it.
    pub userfault: Option<bool>,
    pub user_memory2: bool,
    pub max_vcpus: usize,
    pub nr_vcpus: usize,
}

#[derive(Debug, Serialize)]
pub struct UffdReport {
    pub available: bool,
    pub origin: Option<&'static str>,
    pub features: Vec<&'static str>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BackingReport {
    /// `shmem` or `anon`.
    pub default: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct FaultModes {
    pub uffd: ModeResult,
    pub exit: ModeResult,
}

#[derive(Debug, Serialize, Clone)]
pub struct ModeResult {
    pub ok: bool,
    /// The exit path that worked (exit mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'static str>,
    pub detail: String,
}

impl ModeResult {
    fn failed(detail: String) -> ModeResult {
        ModeResult {
            ok: false,
            path: None,
            detail,
        }
    }
}

/// This host in a few words for a report: the kernel release and the KVM flavour.
pub fn host_line() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("Linux {kernel}, KVM {}", flavour())
}

/// The hypervisor flavour behind /dev/kvm, from loaded modules, then CPU flags.
pub fn flavour() -> &'static str {
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if module("kvm_pvm") {
        return "pvm";
    }
    if module("kvm_intel") {
        return "vmx";
    }
    if module("kvm_amd") {
        return "svm";
    }
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |f: &str| {
        flags
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|w| w == f))
    };
    if has("vmx") {
        "vmx"
    } else if has("svm") {
        "svm"
    } else {
        "unknown"
    }
}

/// Probes the host. Fails only when /dev/kvm cannot be used at all.
pub fn run() -> Result<Report, VmmError> {
    let kvm = vmm::open_kvm()?;
    let caps = KvmCaps {
        memory_fault_info: kvm
            .check_extension_raw(u64::from(kvm_bindings::KVM_CAP_MEMORY_FAULT_INFO))
            > 0,
        userfault: None,
        user_memory2: kvm.check_extension(Cap::UserMemory2),
        max_vcpus: kvm.get_max_vcpus(),
        nr_vcpus: kvm.get_nr_vcpus(),
    };
    let kvm_report = KvmReport {
        available: true,
        api_version: Some(kvm.get_api_version()),
        flavour: flavour(),
        caps,
        error: None,
    };
    drop(kvm);

    let uffd_report = match Userfaultfd::available_features() {
        Ok((features, origin)) => UffdReport {
            available: true,
            origin: Some(origin.as_str()),
            features: features.names(),
            error: None,
        },
        Err(e) => UffdReport {
            available: false,
            origin: None,
            features: vec![],
            error: Some(e.to_string()),
        },
    };
    let backing = destination::preferred_backing();
    let fault_modes = FaultModes {
        uffd: probe_uffd_mode(backing),
        exit: probe_exit_mode(backing),
    };
    Ok(Report {
        kvm: kvm_report,
        uffd: uffd_report,
        backing: BackingReport {
            default: backing.as_str(),
            reason: match backing {
                Backing::Shared => "minor faults on shared memory, filled with UFFDIO_CONTINUE",
                Backing::Anonymous => {
                    "this kernel's userfaultfd lacks MINOR_SHMEM: missing faults, UFFDIO_COPY"
                }
            },
        },
        fault_modes,
        guest_code: probe_guest_code(),
    })
}

/// Seconds from resume to DONE of a one-vCPU guest running `iterations` of the timing loop.
fn time_loop(iterations: u32) -> Result<f64, String> {
    let vm = Vm::new(VmConfig {
        vcpus: 1,
        mem_bytes: PROBE_MEM,
    })
    .map_err(|e| e.to_string())?;
    let program =
        guest::timing_loop(iterations, &layout::placement(PROBE_MEM)).map_err(|e| e.to_string())?;
    vm.load(&program).map_err(|e| e.to_string())?;
    run_until_done(&vm).map(|d| d.as_secs_f64())
}

fn probe_guest_code() -> GuestCode {
    match time_loop(SHORT_LOOP).and_then(|short| Ok((short, time_loop(LONG_LOOP)?))) {
        Ok((short, long)) => {
            let instructions = 2.0 * f64::from(LONG_LOOP - SHORT_LOOP);
            let ns = ((long - short) * 1e9 / instructions).max(0.0);
            GuestCode {
                ns_per_instruction: Some(ns),
                emulated: Some(ns > EMULATED_NS),
                error: None,
            }
        }
        Err(e) => GuestCode {
            ns_per_instruction: None,
            emulated: None,
            error: Some(e),
        },
    }
}

/// A VM of one vCPU whose data pages are missing (registered with `uffd`) and whose guest
/// writes `PROBE_PAGES` of them, then reports DONE.
struct ProbeGuest {
    vm: Vm,
    ram: Arc<GuestRam>,
}

impl ProbeGuest {
    fn new(
        backing: Backing,
        uffd: &Userfaultfd,
        handler_for: impl FnOnce(Arc<GuestRam>) -> Option<Arc<dyn MissingPageHandler>>,
    ) -> Result<Self, String> {
        let ram = Arc::new(GuestRam::with_backing(PROBE_MEM, backing).map_err(|e| e.to_string())?);
        let handler = handler_for(ram.clone());
        let config = VmConfig {
            vcpus: 1,
            mem_bytes: PROBE_MEM,
        };
        let vm = Vm::with_ram(config, ram.clone(), handler).map_err(|e| e.to_string())?;
        let workload: Workload = "touch"
            .parse()
            .map_err(|e: crate::contract::WorkloadError| e.to_string())?;
        let program = guest::assemble(
            &workload,
            1,
            &guest::Placement {
                data_pages: PROBE_PAGES,
                ..layout::placement(PROBE_MEM)
            },
        )
        .map_err(|e| e.to_string())?;
        // The boot region is loaded before registration, so only data pages are missing.
        vm.load(&program).map_err(|e| e.to_string())?;
        let (data, len) = (layout::data_gpa(), ram.size() - layout::data_gpa());
        destination::register(uffd, backing, ram.host_base() + data, len)
            .map_err(|e| e.to_string())?;
        Ok(ProbeGuest { vm, ram })
    }

    /// Runs until DONE, or says why it did not.
    fn run(&self) -> Result<(), String> {
        run_until_done(&self.vm).map(|_| ())
    }
}

/// Resumes `vm` and waits for its first vCPU to report DONE; returns how long that took.
fn run_until_done(vm: &Vm) -> Result<Duration, String> {
    let start = Instant::now();
    vm.resume_all().map_err(|e| e.to_string())?;
    let vcpu = &vm.vcpus()[0];
    loop {
        match vcpu.state() {
            RunState::Done => return Ok(start.elapsed()),
            RunState::Failed => {
                return Err(vcpu.failure().unwrap_or_else(|| "vCPU failed".into()));
            }
            _ if start.elapsed() > PROBE_TIMEOUT => {
                let _ = vm.pause_all();
                return Err(format!(
                    "the guest did not finish within {}s",
                    PROBE_TIMEOUT.as_secs()
                ));
            }
            _ => std::thread::sleep(Duration::from_micros(100)),
        }
    }
}

/// Fills every fault with a zero page, like a fresh destination with nothing to fetch:
/// a copy for anonymous RAM; shared RAM already holds zeros, so mapping it in is enough.
fn resolve(uffd: &Userfaultfd, ram: &GuestRam, addr: u64) -> Result<Fill, String> {
    let page = addr & !(layout::PAGE_SIZE - 1);
    match ram.backing() {
        Backing::Shared => uffd.continue_pages(page, layout::PAGE_SIZE, true),
        Backing::Anonymous => {
            let zero = [0u8; layout::PAGE_SIZE as usize];
            // SAFETY: `zero` is a live page-sized buffer; `page` is in the registered range.
            unsafe { uffd.copy(page, zero.as_ptr(), layout::PAGE_SIZE, true) }
        }
    }
    .map_err(|e| e.to_string())
}

fn probe_uffd_mode(backing: Backing) -> ModeResult {
    let features = Features::THREAD_ID.union(destination::backing_features(backing));
    let uffd = match Userfaultfd::new(features, true) {
        Ok(u) => Arc::new(u),
        Err(e) => return ModeResult::failed(e.to_string()),
    };
    let guest = match ProbeGuest::new(backing, &uffd, |_| None) {
        Ok(g) => g,
        Err(e) => return ModeResult::failed(e),
    };
    let vcpu_tid = guest.vm.vcpus()[0].shared().thread_id();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let uffd = uffd.clone();
        let ram = guest.ram.clone();
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<(u64, u64), String> {
            let mut faults = [PageFault {
                address: 0,
                write: false,
                thread_id: 0,
            }; 16];
            let (mut handled, mut attributed) = (0u64, 0u64);
            while !stop.load(Ordering::Acquire) {
                let n = uffd.read_faults(&mut faults).map_err(|e| e.to_string())?;
                if n == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
                for f in &faults[..n] {
                    resolve(&uffd, &ram, f.address)?;
                    handled += 1;
                    attributed += u64::from(f.thread_id == vcpu_tid);
                }
            }
            Ok((handled, attributed))
        })
    };
    let run = guest.run();
    stop.store(true, Ordering::Release);
    let counts = reader
        .join()
        .unwrap_or_else(|_| Err("the fault reader panicked".into()));
    drop(guest);
    match (run, counts) {
        (Ok(()), Ok((handled, attributed))) if handled > 0 && attributed == handled => ModeResult {
            ok: true,
            path: None,
            detail: format!(
                "{handled} faults read from userfaultfd, each attributed to the vCPU thread"
            ),
        },
        (Ok(()), Ok((handled, attributed))) => ModeResult::failed(format!(
            "{handled} faults read, {attributed} attributed to the vCPU thread"
        )),
        (Err(e), _) | (_, Err(e)) => ModeResult::failed(e),
    }
}

/// Resolves faults on the vCPU thread itself (the `exit` mode).
struct ExitProbeHandler {
    uffd: Arc<Userfaultfd>,
    ram: Arc<GuestRam>,
}

impl MissingPageHandler for ExitProbeHandler {
    fn fill(&self, _vcpu: usize, gpa: u64, _path: ExitPath) -> Result<FillOutcome, String> {
        let host = self
            .ram
            .host_addr(gpa)
            .ok_or_else(|| format!("fault at {gpa:#x} outside RAM"))?;
        Ok(match resolve(&self.uffd, &self.ram, host)? {
            Fill::Filled => FillOutcome::Filled,
            Fill::AlreadyPresent => FillOutcome::AlreadyPresent,
        })
    }
}

fn probe_exit_mode(backing: Backing) -> ModeResult {
    let features = Features::SIGBUS.union(destination::backing_features(backing));
    let uffd = match Userfaultfd::new(features, true) {
        Ok(u) => Arc::new(u),
        Err(e) => return ModeResult::failed(format!("needs UFFD_FEATURE_SIGBUS: {e}")),
    };
    let handler_uffd = uffd.clone();
    let guest = match ProbeGuest::new(backing, &uffd, move |ram| {
        Some(Arc::new(ExitProbeHandler {
            uffd: handler_uffd,
            ram,
        }))
    }) {
        Ok(g) => g,
        Err(e) => return ModeResult::failed(e),
    };
    if let Err(e) = guest.run() {
        return ModeResult::failed(e);
    }
    let stats = guest.vm.vcpus()[0].stats();
    let used: Vec<(ExitPath, u64)> = ExitPath::ALL
        .iter()
        .map(|p| (*p, stats.fault_exits[p.index()].load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect();
    match used.iter().max_by_key(|(_, n)| *n) {
        Some((path, _)) => ModeResult {
            ok: true,
            path: Some(path.as_str()),
            detail: used
                .iter()
                .map(|(p, n)| format!("{n} faults through {}", p.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
        },
        None => ModeResult::failed("the guest finished without a single fault exit".into()),
    }
}

/// The report as human-readable lines.
pub fn render_text(r: &Report) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mode = |m: &ModeResult| {
        let status = if m.ok { "ok" } else { "NOT USABLE" };
        match m.path {
            Some(p) => format!("{status} via {p} ({})", m.detail),
            None => format!("{status} ({})", m.detail),
        }
    };
    let mut out = String::new();
    out.push_str(&format!(
        "kvm          /dev/kvm, API {}, flavour {}\n",
        r.kvm.api_version.unwrap_or(0),
        r.kvm.flavour
    ));
    out.push_str(&format!(
        "  caps       memory_fault_info {}, userfault {}, user_memory2 {}, max vCPUs {} (recommended {})\n",
        yes(r.kvm.caps.memory_fault_info),
        r.kvm
            .caps
            .userfault
            .map_or("not defined by this build's KVM headers", yes),
        yes(r.kvm.caps.user_memory2),
        r.kvm.caps.max_vcpus,
        r.kvm.caps.nr_vcpus
    ));
    match &r.uffd.error {
        None => out.push_str(&format!(
            "userfaultfd  {}, features {}\n",
            r.uffd.origin.unwrap_or("?"),
            r.uffd.features.join(" ")
        )),
        Some(e) => out.push_str(&format!("userfaultfd  unavailable: {e}\n")),
    }
    out.push_str(&format!(
        "backing      {} ({})\n",
        r.backing.default, r.backing.reason
    ));
    out.push_str(&format!("mode uffd    {}\n", mode(&r.fault_modes.uffd)));
    out.push_str(&format!("mode exit    {}\n", mode(&r.fault_modes.exit)));
    let g = &r.guest_code;
    out.push_str(&match (g.ns_per_instruction, g.emulated, &g.error) {
        (Some(ns), Some(true), _) => format!(
            "guest code   emulated, {ns:.0} ns an instruction (the hypervisor runs this guest \
             instruction by instruction: guest-side loops cost as much as faults)\n"
        ),
        (Some(ns), _, _) => format!("guest code   native, {ns:.1} ns an instruction\n"),
        (_, _, Some(e)) => format!("guest code   not timed: {e}\n"),
        _ => "guest code   not timed\n".into(),
    });
    out
}
