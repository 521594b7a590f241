//! What a run is asked to do: its configuration, the fault modes and backings, and the
//! actions an operator or a timeline takes while it runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::names::names;
use super::workload::Workload;
use crate::units::{GpaRange, Rate};

/// How long a fetch keeps reconnecting to a lost source before the run fails, by default.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(60);

/// How a fault reaches userspace on the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// vCPUs sleep in the kernel; handler threads read the userfaultfd.
    Uffd,
    /// KVM_RUN returns to the vCPU thread, which fills the page itself.
    Exit,
}

names!(FaultMode, "fault mode", { Uffd => "uffd", Exit => "exit" });

/// Something the operator or a scenario's timeline does to a running migration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Make a range missing again on the destination.
    Inject(GpaRange),
    /// Change what a demand fault brings in besides its page.
    Prefetch(super::Prefetch),
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
    /// What a demand fault brings in besides its page.
    pub prefetch: super::Prefetch,
    /// What backs the destination's RAM; None: the kernel's best (see `postcopy::destination`).
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
    /// Over `Transport::Tcp` with a page server of this process: where fetches connect to
    /// reach it, given its address (a relay in between, such as a test's cutting proxy).
    /// None: straight to it. Unused with local copies or a source in another process.
    pub relay: Option<Relay>,
}

/// Maps a page server's address to the one its clients connect to.
#[derive(Clone)]
pub struct Relay(pub Arc<dyn Fn(SocketAddr) -> SocketAddr + Send + Sync>);

impl Relay {
    pub fn route(&self, server: SocketAddr) -> SocketAddr {
        (self.0)(server)
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relay")
    }
}

/// The same relay, not merely one that routes alike.
impl PartialEq for Relay {
    fn eq(&self, other: &Relay) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The configuration every scenario starts from: the built-in `default`'s guest, no
/// limit, exit mode; a literal names what it changes and takes the rest from here.
impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            scenario: "custom".into(),
            vcpus: 4,
            mem_bytes: 1 << 30,
            workload: Workload::new(
                super::workload::Pattern::Hotspot,
                super::workload::Operation::Mixed,
            ),
            mode: FaultMode::Exit,
            readers: 2,
            fetch_rate: Rate::Unlimited,
            rtt: Duration::ZERO,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            push: true,
            prefetch: super::Prefetch::Off,
            backing: None,
            transport: Transport::Local,
            link_timeout: LINK_TIMEOUT,
            timeline: Vec::new(),
            remote: None,
            relay: None,
        }
    }
}

impl RunConfig {
    /// How pages travel: over TCP from a source in another process, else as configured.
    pub fn transport(&self) -> Transport {
        match self.remote {
            Some(_) => Transport::Tcp,
            None => self.transport,
        }
    }
}

/// What backs guest RAM, which decides how a missing page is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backing {
    /// Private anonymous memory: a missing page is allocated when it is filled
    /// (userfaultfd missing faults, UFFDIO_COPY).
    Anonymous,
    /// A memfd allocated in full before the guest runs, like a VMM's preallocated RAM: a
    /// missing page is one not yet mapped into the guest's view. It is filled by writing
    /// it through the fill mapping and mapping it in (minor faults, UFFDIO_CONTINUE), so
    /// a fault costs no allocation on either side.
    Shared,
}

names!(Backing, "memory backing", { Anonymous => "anon", Shared => "shmem" });

/// How pages travel from the source to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// Copied straight from the source's image in this process.
    #[default]
    Local,
    /// Fetched over TCP from a page server on the loopback interface.
    Tcp,
}

names!(Transport, "page transport", { Local => "local", Tcp => "tcp" });

/// Where a destination finds its source: the address and the token the source printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    pub addr: SocketAddr,
    pub token: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_reads_back_as_its_value_in_text_and_json() {
        for m in FaultMode::ALL {
            assert_eq!(m.as_str().parse::<FaultMode>(), Ok(*m));
            let j = serde_json::to_string(m).unwrap();
            assert_eq!(serde_json::from_str::<FaultMode>(&j).unwrap(), *m);
        }
        assert_eq!(
            serde_json::to_string(&Backing::Anonymous).unwrap(),
            "\"anon\""
        );
        assert_eq!(serde_json::to_string(&Transport::Tcp).unwrap(), "\"tcp\"");
        assert_eq!(
            "shm".parse::<Backing>(),
            Err("unknown memory backing 'shm' (expected anon or shmem)".into())
        );
        let bad = serde_json::from_str::<Transport>("\"udp\"")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("unknown page transport 'udp'"), "{bad}");
    }
}
