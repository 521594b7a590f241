//! A migration between two processes, or two hosts: `faultline source` runs the guest and
//! serves its memory and its switchover over TCP (a page server that also answers the
//! control requests of wire.rs); `faultline run --source ADDR` is the destination, which
//! learns the guest from the offer, copies the boot region while the source runs, asks
//! for the switchover and fetches every other page as post-copy does.

mod source_guest;

pub use source_guest::{SourceGuest, control};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::net::wire::{Op, Request};
use super::net::{self, ControlConnection, NetError};
use crate::contract::{Remote, Sharing, Workload};
use crate::vmm::layout::BOOT_SIZE;
use crate::vmm::{VmmError, state::VcpuState};

/// The offer's format; a destination refuses any other.
pub const OFFER_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the source at {addr} sent an offer this build cannot read: {why}")]
    Offer { addr: SocketAddr, why: String },
    #[error("the source at {addr} sent a switchover this build cannot read: {why}")]
    Handover { addr: SocketAddr, why: String },
    /// The guest stays at the source: the handover did not reach here whole.
    #[error("the source at {addr} keeps the guest: {why}")]
    KeptBySource { addr: SocketAddr, why: String },
    /// The source answered no; `why` says where the guest is.
    #[error("the source at {addr} refused {what}: {why}")]
    Refused {
        addr: SocketAddr,
        what: &'static str,
        why: String,
    },
    #[error(
        "the handover from {addr} could not be confirmed within {:.1} s ({last}); the \
         source runs the guest on unless a confirmation reached it, and says which",
        waited.as_secs_f64()
    )]
    Unconfirmed {
        addr: SocketAddr,
        waited: Duration,
        last: Box<NetError>,
    },
}

/// What a source serves: the guest a destination must build to take it over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub version: u32,
    /// The source's scenario name, for the destination's header and summary.
    pub scenario: String,
    pub vcpus: usize,
    pub mem_bytes: u64,
    /// The workload as `--workload` spells it.
    pub workload: String,
    /// The vCPUs work on the same memory instead of their own slices.
    pub shared: bool,
}

impl Offer {
    pub fn new(scenario: &str, vcpus: usize, mem_bytes: u64, workload: &Workload) -> Offer {
        Offer {
            version: OFFER_VERSION,
            scenario: scenario.to_string(),
            vcpus,
            mem_bytes,
            workload: workload.to_string(),
            shared: workload.sharing == Sharing::Shared,
        }
    }

    /// The offered workload, with its sharing.
    pub fn workload(&self) -> Result<Workload, String> {
        let mut w: Workload = self.workload.parse().map_err(|e| format!("{e}"))?;
        w.sharing = if self.shared {
            Sharing::Shared
        } else {
            Sharing::Own
        };
        Ok(w)
    }
}

/// What the source hands over at switchover: each vCPU's pace before it (the baseline the
/// live view compares against), its state, and the parts of the boot region a running
/// guest changes (page tables' accessed bits, stacks), so the pause costs one round trip.
#[derive(Debug, Clone)]
pub struct Handover {
    /// What the destination commits it by: one handover among the source's attempts.
    pub id: u64,
    pub baseline_per_sec: Vec<f64>,
    pub states: Vec<VcpuState>,
    /// (gpa, bytes) inside the boot region.
    pub boot: Vec<(u64, Vec<u8>)>,
}

impl Handover {
    /// The id (u64 LE), vCPU count (u32 LE), the baselines (f64 LE each), the states, then
    /// the boot ranges: their count (u32), and each as gpa (u64), length (u32) and bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&(self.states.len() as u32).to_le_bytes());
        for b in &self.baseline_per_sec {
            out.extend_from_slice(&b.to_le_bytes());
        }
        for s in &self.states {
            s.encode(&mut out);
        }
        out.extend_from_slice(&(self.boot.len() as u32).to_le_bytes());
        for (gpa, bytes) in &self.boot {
            out.extend_from_slice(&gpa.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    pub fn decode(bytes: &[u8], vcpus: usize) -> Result<Handover, String> {
        let (id, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or("no handover id".to_string())?;
        let (count, mut rest) = rest
            .split_first_chunk::<4>()
            .ok_or("no vCPU count".to_string())?;
        let count = u32::from_le_bytes(*count) as usize;
        if count != vcpus {
            return Err(format!("{count} vCPU states for a guest of {vcpus} vCPUs"));
        }
        let mut baseline_per_sec = Vec::with_capacity(count);
        for _ in 0..count {
            let (b, after) = rest
                .split_first_chunk::<8>()
                .ok_or("cut short in the baselines".to_string())?;
            baseline_per_sec.push(f64::from_le_bytes(*b));
            rest = after;
        }
        let states = (0..count)
            .map(|_| VcpuState::decode(&mut rest))
            .collect::<Result<Vec<_>, VmmError>>()
            .map_err(|e| e.to_string())?;
        let cut = || "cut short in the boot ranges".to_string();
        let (ranges, after) = rest.split_first_chunk::<4>().ok_or_else(cut)?;
        rest = after;
        let mut boot = Vec::new();
        for _ in 0..u32::from_le_bytes(*ranges) {
            let (gpa, after) = rest.split_first_chunk::<8>().ok_or_else(cut)?;
            let (len, after) = after.split_first_chunk::<4>().ok_or_else(cut)?;
            let (gpa, len) = (u64::from_le_bytes(*gpa), u32::from_le_bytes(*len) as usize);
            if gpa
                .checked_add(len as u64)
                .is_none_or(|end| end > BOOT_SIZE)
            {
                return Err(format!(
                    "boot range {gpa:#x}+{len:#x} is outside the boot region"
                ));
            }
            if after.len() < len {
                return Err(cut());
            }
            let (bytes, after) = after.split_at(len);
            boot.push((gpa, bytes.to_vec()));
            rest = after;
        }
        if !rest.is_empty() {
            return Err(format!("{} bytes left over after the handover", rest.len()));
        }
        Ok(Handover {
            id: u64::from_le_bytes(*id),
            baseline_per_sec,
            states,
            boot,
        })
    }
}

impl Remote {
    /// Asks the source what it serves.
    pub fn describe(&self) -> Result<Offer, RemoteError> {
        let bytes = net::control(self.addr, self.token, Op::Describe)?;
        let bad = |why: String| RemoteError::Offer {
            addr: self.addr,
            why,
        };
        let offer: Offer = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if offer.version != OFFER_VERSION {
            return Err(bad(format!(
                "offer version {} (this build reads {OFFER_VERSION})",
                offer.version
            )));
        }
        offer.workload().map_err(bad)?;
        Ok(offer)
    }

    /// Opens the connection the switchover will go over, ahead of the pause.
    pub fn prepare(&self) -> Result<PreparedSwitchover, RemoteError> {
        Ok(PreparedSwitchover {
            remote: *self,
            conn: ControlConnection::open(self.addr, self.token)?,
        })
    }

    /// Tells the source the destination has every page.
    pub fn finish(&self) -> Result<(), RemoteError> {
        net::control(self.addr, self.token, Op::Finish)?;
        Ok(())
    }
}

/// A connection to the source, open and greeted, waiting to ask for the switchover.
pub struct PreparedSwitchover {
    remote: Remote,
    conn: ControlConnection,
}

impl PreparedSwitchover {
    /// Has the source pause its guest and send the handover. The guest is not yet this
    /// destination's: it becomes so when [`Uncommitted::commit`] succeeds, which must come
    /// after the state is restored here and before it runs. An error, or an uncommitted
    /// handover dropped, leaves the guest at the source (it takes it back within
    /// [`COMMIT_WAIT`]).
    pub fn fetch(mut self, vcpus: usize) -> Result<(Handover, Uncommitted), RemoteError> {
        let addr = self.remote.addr;
        let bytes = self
            .conn
            .ask(Request::control(Op::Switchover))
            .map_err(|e| match e {
                NetError::Refused { why, .. } => RemoteError::Refused {
                    addr,
                    what: "the switchover",
                    why,
                },
                e => RemoteError::KeptBySource {
                    addr,
                    why: format!(
                        "the switchover did not complete ({e}); it runs the guest on (within \
                         {} s if it had paused it)",
                        COMMIT_WAIT.as_secs()
                    ),
                },
            })?;
        let handover = Handover::decode(&bytes, vcpus).map_err(|why| RemoteError::Handover {
            addr,
            why: format!("{why}; the source takes the guest back, unconfirmed"),
        })?;
        let uncommitted = Uncommitted {
            remote: self.remote,
            conn: self.conn,
            id: handover.id,
        };
        Ok((handover, uncommitted))
    }
}

/// A handover received whole and not yet committed: the guest is still the source's.
pub struct Uncommitted {
    remote: Remote,
    conn: ControlConnection,
    id: u64,
}

impl Uncommitted {
    /// Commits the handover: on the switchover's connection, then, if an answer is lost,
    /// again on new ones until the source answers (its verdict stands: the guest handed
    /// over, or taken back after [`COMMIT_WAIT`]), for up to `within` while it cannot be
    /// reached. Once this returns Ok the guest is this destination's to run.
    pub fn commit(self, within: Duration) -> Result<(), RemoteError> {
        let Remote { addr, token } = self.remote;
        let within = within.max(COMMIT_WAIT + 2 * COMMIT_ANSWER_WAIT);
        let started = Instant::now();
        let mut conn = Some(self.conn);
        let mut wait = Duration::from_millis(5);
        loop {
            let attempt = match conn.take() {
                Some(c) => Ok(c),
                None => ControlConnection::open(addr, token),
            }
            .and_then(|mut c| {
                c.set_timeout(COMMIT_ANSWER_WAIT)?;
                c.ask(Request::commit(self.id))
            });
            let last = match attempt {
                Ok(_) => return Ok(()),
                // The source answered: it took the guest back, or gave it to another.
                Err(NetError::Refused { why, .. }) => {
                    return Err(RemoteError::Refused {
                        addr,
                        what: "the commit of its handover",
                        why,
                    });
                }
                Err(e) => e,
            };
            if started.elapsed() >= within {
                return Err(RemoteError::Unconfirmed {
                    addr,
                    waited: started.elapsed(),
                    last: Box::new(last),
                });
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(200));
        }
    }
}

/// How long a source keeps its paused guest for a destination to commit the handover it
/// sent, before it takes the guest back and runs it on.
pub const COMMIT_WAIT: Duration = Duration::from_secs(5);

/// How long one commit waits for its answer before it is tried again on a new connection.
const COMMIT_ANSWER_WAIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_carries_the_workload_and_its_sharing() {
        let mut w: Workload = "random-mixed".parse().expect("workload");
        w.sharing = Sharing::Shared;
        let offer = Offer::new("demo", 3, 256 << 20, &w);
        let json = serde_json::to_vec(&offer).expect("json");
        let back: Offer = serde_json::from_slice(&json).expect("parses");
        assert_eq!(back, offer);
        assert_eq!(back.workload(), Ok(w));
        let bad = Offer {
            workload: "zigzag".into(),
            ..offer
        };
        assert!(bad.workload().is_err());
    }

    #[test]
    fn a_handover_survives_the_wire_and_must_match_its_guest() {
        let state = |rip| {
            let mut s = VcpuState {
                regs: Default::default(),
                sregs: Default::default(),
                fpu: Default::default(),
                xcrs: None,
                msrs: Vec::new(),
                lapic: Default::default(),
                events: Default::default(),
                mp_state: Default::default(),
            };
            s.regs.rip = rip;
            s
        };
        let h = Handover {
            id: 0x1d,
            baseline_per_sec: vec![1.5, 2.5],
            states: vec![state(0x1000), state(0x2000)],
            boot: vec![(0, vec![1; 4096]), (0x14_0000, vec![2; 8192])],
        };
        let bytes = h.encode();
        let back = Handover::decode(&bytes, 2).expect("decodes");
        assert_eq!(back.id, 0x1d);
        assert_eq!(back.baseline_per_sec, vec![1.5, 2.5]);
        assert_eq!(back.states[1].regs.rip, 0x2000);
        assert_eq!(back.boot, h.boot);
        let outside = Handover {
            boot: vec![(BOOT_SIZE - 4096, vec![0; 8192])],
            ..h.clone()
        };
        let e = Handover::decode(&outside.encode(), 2).expect_err("outside");
        assert!(e.contains("outside the boot region"), "{e}");
        assert_eq!(
            Handover::decode(&bytes, 3).expect_err("count").as_str(),
            "2 vCPU states for a guest of 3 vCPUs"
        );
        let e = Handover::decode(&bytes[..bytes.len() - 1], 2).expect_err("cut");
        assert!(e.contains("cut short"), "{e}");
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Handover::decode(&long, 2).expect_err("long").as_str(),
            "1 bytes left over after the handover"
        );
    }
}
