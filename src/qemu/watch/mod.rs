//! The watcher: follows one QEMU post-copy migration. Ten times a second it reads the
//! destination's new trace lines, polls both sides' QMP, samples every vCPU thread's
//! schedstat and the guest's console, and makes a [`Snapshot`]; between ticks it carries
//! out the operator's actions through QMP. It runs on its own thread (see `feed`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod console;
mod picture;
mod steer;
mod summary;

use console::Console;

use super::QemuError;
use super::book::StallBook;
use super::follow::Follower;
use super::qmp::Qmp;
use super::trace::{self, Parsed};
use crate::contract::{Phase, RunInfo, Snapshot};
use crate::guest::ports::CONSOLE_MAX_VCPUS;
use crate::telemetry::schedstat::ThreadClock;
use crate::units::Rate;

/// What to follow.
#[derive(Debug, Clone)]
pub struct Target {
    /// The destination's QMP socket (one of its own for the observer).
    pub dst_qmp: PathBuf,
    /// The destination's trace log (`-D FILE`).
    pub trace: PathBuf,
    /// The source's QMP socket: page counts, throttle, pause and recovery.
    pub src_qmp: Option<PathBuf>,
    /// Where a recovered migration reconnects (`migrate-recover` / `migrate resume`).
    pub recover_uri: Option<String>,
    /// The debug consoles of faultline's own guest, destination and source, if it runs it.
    pub console: Option<PathBuf>,
    pub src_console: Option<PathBuf>,
    /// Names for the header: the scenario and the workload.
    pub scenario: String,
    pub workload: String,
}

/// QEMU's migration states, as the destination reports them, by the view's phases.
pub fn phase_of(state: &str) -> Phase {
    match state {
        "postcopy-active" | "postcopy-paused" | "postcopy-recover" | "postcopy-recover-setup" => {
            Phase::Postcopy
        }
        "device" | "pre-switchover" | "postcopy-device" => Phase::Switchover,
        "completed" => Phase::Complete,
        "failed" | "cancelled" => Phase::Failed,
        _ => Phase::Warmup,
    }
}

/// How far ahead of this host's clock a trace stamp may be (the same host: clock steps).
const FUTURE_SLACK_US: u64 = 60_000_000;

/// The stamp of the first timestamped event line of a trace file, if any is there yet.
fn first_stamp(path: &std::path::Path) -> Option<u64> {
    use std::io::{BufRead, BufReader};
    let f = std::fs::File::open(path).ok()?;
    BufReader::new(f)
        .lines()
        .take(10_000)
        .map_while(Result::ok)
        .find_map(|l| match trace::parse(&l) {
            Parsed::Event(e) => e.at_us,
            _ => None,
        })
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A QMP event's own timestamp, in wall-clock µs.
fn event_us(e: &Value) -> Option<u64> {
    let t = e.get("timestamp")?;
    Some(t["seconds"].as_u64()? * 1_000_000 + t["microseconds"].as_u64()?)
}

/// The source's figures from its last `query-migrate`.
#[derive(Debug, Default, Clone)]
struct SourceFigures {
    total: u64,
    remaining: u64,
    requests: u64,
    page_size: u64,
    bytes_per_sec: u64,
    downtime_us: Option<u64>,
    transferred: u64,
    /// Bytes sent since the switch to post-copy.
    postcopy_bytes: u64,
}

pub struct Watcher {
    target: Target,
    dst: Qmp,
    src: Option<Qmp>,
    trace: Follower,
    console: Option<(Follower, Console)>,
    src_console: Option<(Follower, Console)>,
    book: StallBook,
    clocks: Vec<ThreadClock>,
    info: RunInfo,
    start: Instant,
    seq: u64,
    state: String,
    migration: u32,
    trace_events: u64,
    trace_garbage: u64,
    /// Events without a timestamp (QEMU run without `-msg timestamp=on`): not timed.
    trace_unstamped: u64,
    /// When the destination's vCPUs began running post-copy, and when it completed
    /// (wall-clock µs, from QMP events or else from polling).
    postcopy_from_us: Option<u64>,
    completed_at_us: Option<u64>,
    source: Option<SourceFigures>,
    throttle: Option<Rate>,
    qemu_blocktime_ms: Option<f64>,
    qemu_vcpu_blocktime_ms: Vec<Option<f64>>,
    /// Pre-copy pace per vCPU (accesses/s), from the source's console.
    baseline: Vec<f64>,
    /// Samples of each vCPU's progress over the last second, for its current pace.
    progress_window: std::collections::VecDeque<(Instant, Vec<u64>)>,
    message: Option<String>,
    recoveries: u32,
    trace_drained_after_completion: bool,
}

impl Watcher {
    /// Connects to everything, or says in one line what is wrong with the target.
    pub fn connect(target: Target) -> Result<Watcher, QemuError> {
        let mut dst = Qmp::connect(&target.dst_qmp)?;
        let status = dst.execute("query-status", None)?;
        let migrate = dst.execute("query-migrate", None)?;
        let run_state = status["status"].as_str().unwrap_or("");
        if migrate.get("ram").is_some() {
            return Err(QemuError::NotDestination {
                path: target.dst_qmp.clone(),
                why: "it is the source of a migration (give its QMP as --source-qmp)".into(),
            });
        }
        if run_state != "inmigrate" && migrate.get("status").is_none() {
            return Err(QemuError::NotDestination {
                path: target.dst_qmp.clone(),
                why: format!("it is {run_state} and was not started with -incoming"),
            });
        }
        let src = match &target.src_qmp {
            Some(p) => Some(Qmp::connect(p)?),
            None => None,
        };
        let trace = Follower::open(&target.trace).map_err(|source| QemuError::Trace {
            path: target.trace.clone(),
            source,
        })?;
        let cpus = dst.execute("query-cpus-fast", None)?;
        let mut tids: Vec<(usize, u32)> = cpus
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| {
                        Some((
                            c["cpu-index"].as_u64()? as usize,
                            c["thread-id"].as_u64()? as u32,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        tids.sort_unstable();
        if tids.is_empty() {
            return Err(QemuError::NoVcpus {
                path: target.dst_qmp.clone(),
            });
        }
        let vcpus = tids.len();
        let mem = dst.execute("query-memory-size-summary", None)?;
        let mem_bytes = mem["base-memory"].as_u64().unwrap_or(0);
        // Time 0 is the earliest event in the trace, or now: a watch that starts in the
        // middle of a migration still times what came before it.
        let epoch_us = wall_us().min(first_stamp(&target.trace).unwrap_or(u64::MAX));
        let open_console = |p: &Option<PathBuf>| -> Result<_, QemuError> {
            match p {
                Some(p) => Ok(Some((
                    Follower::open(p).map_err(|source| QemuError::Trace {
                        path: p.clone(),
                        source,
                    })?,
                    Console::new(vcpus.min(CONSOLE_MAX_VCPUS)),
                ))),
                None => Ok(None),
            }
        };
        let console = open_console(&target.console)?;
        let src_console = open_console(&target.src_console)?;
        let info = RunInfo {
            scenario: target.scenario.clone(),
            mode: crate::contract::FaultMode::Uffd,
            workload: target.workload.clone(),
            vcpus,
            mem_bytes,
            backing: None,
            transport: None,
            source: Some(format!("QEMU {}", dst.version())),
            page_size: 4096,
            host: Some(crate::probe::host_line()),
        };
        let mut w = Watcher {
            book: StallBook::new(vcpus, mem_bytes, epoch_us)?,
            clocks: tids.iter().map(|&(_, tid)| ThreadClock::new(tid)).collect(),
            info,
            start: Instant::now(),
            seq: 0,
            state: migrate["status"].as_str().unwrap_or("none").to_string(),
            migration: 1,
            trace_events: 0,
            trace_garbage: 0,
            trace_unstamped: 0,
            postcopy_from_us: None,
            completed_at_us: None,
            source: None,
            throttle: None,
            qemu_blocktime_ms: None,
            qemu_vcpu_blocktime_ms: vec![None; vcpus],
            baseline: vec![0.0; vcpus],
            progress_window: Default::default(),
            message: None,
            recoveries: 0,
            trace_drained_after_completion: false,
            target,
            dst,
            src,
            trace,
            console,
            src_console,
        };
        w.read_throttle();
        Ok(w)
    }

    pub fn qemu_version(&self) -> &str {
        self.dst.version()
    }

    /// Mismatches the guest reported, where it is faultline's own.
    pub fn guest_mismatches(&self) -> Option<u64> {
        self.console.as_ref().map(|(_, c)| c.mismatches)
    }

    fn ns_now(&self) -> u64 {
        self.book.ns_of(wall_us())
    }

    /// Reads everything new and makes a snapshot. An error is QEMU gone (or its QMP).
    pub fn tick(&mut self) -> Result<Snapshot, QemuError> {
        self.read_trace()?;
        self.read_consoles();
        self.poll_destination()?;
        // The source may go once its part is done (a script quits it after completion):
        // the destination is what this watch follows.
        if let Err(e) = self.poll_source() {
            tracing::info!(%e, "the source's QMP is gone");
            self.message = Some(format!("source QMP gone: {e}"));
            self.src = None;
        }
        let now = self.ns_now();
        for c in &mut self.clocks {
            c.sample(now);
        }
        // Completed as of the last tick, and the trace read since: every page is there.
        if let Some(done) = self.completed_at_us
            && self.trace_drained_after_completion
        {
            self.book.close_all(self.book.ns_of(done));
        }
        self.trace_drained_after_completion = self.completed_at_us.is_some();
        self.book.advance(now);
        Ok(self.snapshot(now))
    }

    /// A snapshot of what is known now, without reading anything new.
    pub fn picture(&mut self) -> Snapshot {
        let now = self.ns_now();
        self.snapshot(now)
    }

    fn read_trace(&mut self) -> Result<(), QemuError> {
        let (lines, dropped) = self.trace.read_lines().map_err(|source| QemuError::Trace {
            path: self.target.trace.clone(),
            source,
        })?;
        self.trace_garbage += dropped;
        // A stamp far ahead of this host's clock is no time at all.
        let latest = wall_us() + FUTURE_SLACK_US;
        for l in lines {
            match trace::parse(&l) {
                Parsed::Event(e) if e.at_us.is_some_and(|t| t > latest) => {
                    self.trace_garbage += 1;
                }
                Parsed::Event(e) if e.at_us.is_none() => self.trace_unstamped += 1,
                Parsed::Event(e) => {
                    self.trace_events += 1;
                    self.book.fold(&e);
                }
                Parsed::Garbage => self.trace_garbage += 1,
                Parsed::Other => {}
            }
        }
        Ok(())
    }

    fn read_consoles(&mut self) {
        for (f, c) in self.console.iter_mut().chain(self.src_console.iter_mut()) {
            if let Ok(bytes) = f.read_new() {
                c.feed(&bytes);
            }
        }
        let Some((_, c)) = &self.console else {
            return;
        };
        let now = Instant::now();
        self.progress_window.push_back((now, c.progress.clone()));
        while self
            .progress_window
            .front()
            .is_some_and(|(t, _)| now - *t > Duration::from_millis(1100))
        {
            self.progress_window.pop_front();
        }
        // Until the switchover, the source's pace is each vCPU's baseline.
        if self.postcopy_from_us.is_none()
            && let Some((_, src)) = &self.src_console
        {
            let secs = self.start.elapsed().as_secs_f64().max(0.1);
            self.baseline = src.progress.iter().map(|&p| p as f64 / secs).collect();
        }
    }

    fn poll_destination(&mut self) -> Result<(), QemuError> {
        let m = self.dst.execute("query-migrate", None)?;
        let state = m["status"].as_str().unwrap_or("none").to_string();
        for e in self.dst.take_events() {
            let at = event_us(&e);
            match (e["event"].as_str(), e["data"]["status"].as_str()) {
                (Some("MIGRATION"), Some("postcopy-active")) if self.postcopy_from_us.is_none() => {
                    self.postcopy_from_us = at;
                }
                (Some("RESUME"), _) if self.completed_at_us.is_none() => {
                    // The vCPUs run from here: the off-CPU window starts no earlier.
                    if let Some(at) = at {
                        self.postcopy_from_us =
                            Some(self.postcopy_from_us.map_or(at, |p| p.max(at)));
                    }
                }
                (Some("MIGRATION"), Some("completed")) => self.completed_at_us = at,
                _ => {}
            }
        }
        if phase_of(&state) == Phase::Postcopy && self.postcopy_from_us.is_none() {
            self.postcopy_from_us = Some(wall_us());
        }
        if state == "completed" && self.completed_at_us.is_none() {
            self.completed_at_us = Some(wall_us());
        }
        if state != self.state {
            tracing::info!(from = %self.state, to = %state, "QEMU migration state");
            self.message = Some(format!("QEMU: {} -> {state}", self.state));
            self.state = state;
        }
        if let Some(b) = m.get("postcopy-blocktime").and_then(Value::as_f64) {
            self.qemu_blocktime_ms = Some(b);
        }
        if let Some(v) = m.get("postcopy-vcpu-blocktime").and_then(Value::as_array) {
            for (i, b) in v.iter().enumerate() {
                if let Some(slot) = self.qemu_vcpu_blocktime_ms.get_mut(i) {
                    *slot = b.as_f64();
                }
            }
        }
        Ok(())
    }

    fn poll_source(&mut self) -> Result<(), QemuError> {
        let Some(src) = self.src.as_mut() else {
            return Ok(());
        };
        let m = src.execute("query-migrate", None)?;
        src.take_events();
        let ram = &m["ram"];
        if ram.is_object() {
            let page_size = ram["page-size"].as_u64().unwrap_or(4096).max(1);
            self.source = Some(SourceFigures {
                total: ram["total"].as_u64().unwrap_or(0),
                remaining: ram["remaining"].as_u64().unwrap_or(0),
                requests: ram["postcopy-requests"].as_u64().unwrap_or(0),
                page_size,
                bytes_per_sec: (ram["mbps"].as_f64().unwrap_or(0.0) * 1e6 / 8.0) as u64,
                downtime_us: m["downtime"].as_u64().map(|ms| ms * 1000),
                transferred: ram["transferred"].as_u64().unwrap_or(0),
                postcopy_bytes: ram["postcopy-bytes"].as_u64().unwrap_or(0),
            });
        }
        Ok(())
    }

    fn read_throttle(&mut self) {
        let Some(src) = self.src.as_mut() else {
            return;
        };
        if let Ok(p) = src.execute("query-migrate-parameters", None) {
            self.throttle = p["max-postcopy-bandwidth"].as_u64().map(|b| {
                if b == 0 {
                    Rate::Unlimited
                } else {
                    Rate::BytesPerSec(b)
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_states_map_to_phases() {
        assert_eq!(phase_of("active"), Phase::Warmup);
        assert_eq!(phase_of("postcopy-active"), Phase::Postcopy);
        assert_eq!(phase_of("postcopy-paused"), Phase::Postcopy);
        assert_eq!(phase_of("postcopy-recover"), Phase::Postcopy);
        assert_eq!(phase_of("device"), Phase::Switchover);
        assert_eq!(phase_of("completed"), Phase::Complete);
        assert_eq!(phase_of("failed"), Phase::Failed);
    }
}
