//! One migration's destination: the VM that now runs the guest, its userfaultfds, readers,
//! push threads and page source, assembled before the source pauses (like QEMU's
//! -incoming), and the switchover that moves the guest into it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::PostcopyError;
use super::assembly::{Plan, Workers};
use super::destination::{self, Destination};
use super::net::{self, ClientOptions, LinkSwitch, PageServer, TcpSource};
use super::source::{InProcessSource, PageSource, SourceError};
use super::status::{LiveMigration, RunStatus};
use super::throttle::Throttle;
use super::verify::{compare_data, compare_fetched};
use crate::contract::{Phase, Remote, RunConfig, Sharing};
use crate::telemetry::Telemetry;
use crate::units::Rate;
use crate::vmm::layout::{self, BOOT_SIZE, PAGE_SIZE};
use crate::vmm::{GuestRam, Vm, VmConfig};

/// Background push threads at most.
const PUSH_THREADS: usize = 2;

/// The page server's link, when pages travel over TCP. Up again when the leg ends, however
/// it ends, so no thread that fetches waits for a link that nobody is left to restore.
pub(super) struct LinkControl(pub(super) Option<LinkSwitch>);

impl LinkControl {
    pub(super) fn switch(&self) -> Option<&LinkSwitch> {
        self.0.as_ref()
    }

    pub(super) fn is_down(&self) -> bool {
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
pub(super) struct Leg {
    /// First, so it is dropped first: the link is back before the vCPUs and workers that
    /// may be waiting on it are stopped.
    pub(super) link: LinkControl,
    pub(super) number: u32,
    pub(super) vm: Vm,
    pub(super) dest: Arc<Destination>,
    /// What the checks compare against: the source's image here, or the pages of a source
    /// in another process.
    pub(super) reference: Reference,
    /// A source in another process, told when it is needed no more.
    pub(super) remote: Option<Remote>,
    /// Each vCPU's pace on the source before the first switchover.
    pub(super) baseline: Vec<f64>,
    pub(super) workers: Workers,
    pub(super) switched_at: Instant,
    pub(super) downtime: Duration,
    /// Serves `image` when pages travel over TCP; dropped after the workers that fetch.
    pub(super) _server: Option<PageServer>,
}

impl Leg {
    /// Brings in every missing page at full speed; the guest keeps running.
    pub(super) fn fill_rest(&self) {
        self.dest.throttle.set_rate(Rate::Unlimited);
        self.dest.set_push(true);
        while self.dest.missing() > 0 && !self.workers.any_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Pages that differ between source and destination, and pages compared: every data
    /// page, but for the qwords the workload writes (the verify workload checks those with
    /// its own stamps). Checksum failures of pages in transit count as differences.
    pub(super) fn compare(&self, config: &RunConfig) -> Result<(u64, u64), PostcopyError> {
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
    pub(super) fn release_source(&self, status: &RunStatus) {
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
    pub(super) fn link(&self) -> Result<&LinkSwitch, &'static str> {
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
pub(super) enum Reference {
    Image(Arc<InProcessSource>),
    Fetched(Arc<dyn PageSource>),
}

/// How the switchover pauses the guest: here, or by asking the source over a connection
/// opened beforehand.
pub(super) enum Pause<'a> {
    Local(&'a Vm),
    Remote(super::remote::PreparedSwitchover),
}

/// What the operator has set that a new migration carries over.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub rate: Rate,
    pub push: bool,
    pub prefetch: crate::contract::Prefetch,
}

/// Where a leg's guest comes from.
pub(super) enum LegSource {
    /// A VM of this process, running; paused at switchover.
    Local(Vm),
    /// A source in another process, which pauses its guest when asked.
    Remote(Remote),
}

/// Moves the guest from `source_vm` to a new destination VM whose memory is all missing,
/// and starts serving it. Downtime runs from the source's pause to the destination's resume.
pub(super) fn switch_over(
    config: &RunConfig,
    from: LegSource,
    number: u32,
    baseline: &[f64],
    settings: Option<Settings>,
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
    // Two push threads reach the copy bandwidth one cannot (BENCHMARKS.md); the throttle
    // is shared, so a rate limit still holds for both together.
    let plan = Plan {
        mode: config.mode,
        backing,
        vcpus: config.vcpus,
        per_slice: config.workload.sharing == Sharing::Own,
        readers: config.readers,
        push_threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(PUSH_THREADS)),
    };
    let uffds = plan.userfaultfds()?;
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
    let options = ClientOptions {
        spin: plan.socket_spin(),
        recover: config.link_timeout,
        ..ClientOptions::default()
    };
    // The server's token is filled in by `page_source`, which makes the server.
    let (source, server, reference): (Arc<dyn PageSource>, _, _) = match &from {
        LegSource::Local(source_vm) => {
            let image = Arc::new(InProcessSource::new(source_vm.ram().clone()));
            let (source, server) = net::page_source(
                config.transport,
                image.clone(),
                options,
                config.relay.as_ref(),
            )
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
    let Settings {
        rate,
        push,
        prefetch,
    } = settings.unwrap_or(Settings {
        rate: config.fetch_rate,
        push: config.push,
        prefetch: config.prefetch,
    });
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
    dest.set_prefetch(prefetch);
    let handler = plan.handler(&dest);
    // The boot region goes ahead while the source runs; the switchover moves only the
    // parts a running guest can change.
    copy_boot(&from, source.as_ref(), &dest_ram, 0, BOOT_SIZE)?;
    let vm = Vm::with_ram(vm_config, dest_ram.clone(), handler)?;
    dest.set_vcpu_tids(vm.vcpus().iter().map(|v| v.shared().thread_id()).collect());
    // Server threads of this process count against the cores; a remote source's do not.
    dest.set_reader_spin(plan.reader_spin(config.transport));
    let workers = plan.start(&dest, |_| Ok(()))?;

    tracing::debug!(number, "destination ready");
    // A remote switchover's connection is opened before the pause, not during it.
    let pause = match &from {
        LegSource::Local(source_vm) => Pause::Local(source_vm),
        LegSource::Remote(remote) => Pause::Remote(remote.prepare()?),
    };
    status.set_phase(Phase::Switchover);
    let t0 = Instant::now();
    let (states, baseline, uncommitted) = match pause {
        Pause::Local(source_vm) => {
            let states = source_vm.pause_and_capture_all()?;
            for (gpa, len) in layout::live_boot_ranges(config.mem_bytes, config.vcpus) {
                dest_ram.copy_from(source_vm.ram(), gpa, len)?;
            }
            (states, baseline.to_vec(), None)
        }
        Pause::Remote(prepared) => {
            let (handover, uncommitted) = prepared.fetch(config.vcpus)?;
            // The boot pages a running guest changes come with the handover.
            for (gpa, bytes) in &handover.boot {
                dest_ram.write(*gpa, bytes)?;
            }
            (
                handover.states,
                handover.baseline_per_sec,
                Some(uncommitted),
            )
        }
    };
    // Every restore lands before any vCPU runs: a running vCPU would take the CPU that
    // the others need to finish theirs.
    vm.restore_all(states)?;
    // Only a guest restored here is taken from the source; a failure above leaves it there.
    if let Some(u) = uncommitted {
        u.commit(config.link_timeout)?;
    }
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
                return Err(PostcopyError::DamagedBootPage {
                    gpa: gpa + (bad * page) as u64,
                });
            }
            Ok(dest_ram.write(gpa, &buf)?)
        }
    }
}

pub(super) fn shared(vm: &Vm) -> Vec<Arc<crate::vmm::VcpuShared>> {
    vm.vcpus().iter().map(|v| v.shared().clone()).collect()
}
