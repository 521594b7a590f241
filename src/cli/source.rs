//! `faultline source`: the source half of a migration between two processes or hosts. It
//! runs the guest and waits for a destination (`faultline run --source ADDR --token T`)
//! to take it over, then serves its pages until the destination has them all.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use faultline::guest;
use faultline::postcopy::net::{self, PageServer};
use faultline::postcopy::{InProcessSource, Offer, SourceGuest, remote};
use faultline::units::Bytes;
use faultline::vmm::{Vm, VmConfig, layout};

use super::args::{GuestArgs, UsageError};

#[derive(Args)]
pub struct SourceArgs {
    /// A scenario file or built-in whose guest (vCPUs, memory, workload) is served; the
    /// rest of it is the destination's to choose.
    scenario: Option<String>,
    /// Where destinations connect, e.g. 0.0.0.0:7070; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The token a destination must present (16 hex digits). Default: a random one.
    #[arg(long, value_parser = parse_token)]
    token: Option<u64>,
    /// After the switchover, how long to wait for a destination that went away without
    /// finishing (it may reconnect) before giving up on it.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    abandon_after: Duration,
    #[command(flatten)]
    guest: GuestArgs,
}

pub(crate) fn parse_token(s: &str) -> Result<u64, String> {
    // from_str_radix alone would take a leading '+'.
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("'{s}' is not 16 hex digits"));
    }
    u64::from_str_radix(s, 16).map_err(|_| format!("'{s}' is not 16 hex digits"))
}

pub fn run(args: SourceArgs) -> anyhow::Result<bool> {
    let c = args.guest.config(args.scenario.as_deref())?;
    c.validate().map_err(|e| UsageError(e.to_string()))?;
    let listen = args
        .listen
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| UsageError(format!("--listen {}: not a HOST:PORT address", args.listen)))?;
    drop(faultline::vmm::open_kvm()?);

    let program = guest::assemble(&c.workload, c.vcpus, &layout::placement(c.mem_bytes))?;
    let vm = Vm::new(VmConfig {
        vcpus: c.vcpus,
        mem_bytes: c.mem_bytes,
    })?;
    vm.load(&program)?;
    let image = Arc::new(InProcessSource::new(vm.ram().clone()));
    vm.resume_all()?;
    let offer = Offer::new(&c.scenario, c.vcpus, c.mem_bytes, &c.workload);
    let guest = Arc::new(SourceGuest::new(offer, vm));
    let token = args.token.unwrap_or_else(net::new_token);
    // A server thread per fetching thread of the destination, which may be on this host.
    let spin = net::socket_spin(c.vcpus, c.vcpus);
    let server = PageServer::bind_migration(listen, image, spin, token, remote::control(&guest))
        .map_err(|e| UsageError(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "faultline source: a {}-vCPU {} guest ({}, scenario {}) runs; serving it on {}",
        c.vcpus,
        Bytes(c.mem_bytes),
        c.workload,
        c.scenario,
        server.addr()
    )?;
    writeln!(
        out,
        "take it over with: faultline run --source {} --token {token:016x}",
        reachable(server.addr())
    )?;
    out.flush()?;
    drop(out);

    let started = Instant::now();
    let mut paced = false;
    let mut switched_at: Option<Instant> = None;
    let mut alone_since: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(f) = guest.failure() {
            anyhow::bail!("the guest failed before any destination took it over: {f}");
        }
        // The baseline is the guest's pace after its first touches of fresh memory.
        if !paced && started.elapsed() >= c.warmup / 2 {
            guest.mark_pace();
            paced = true;
        }
        if guest.finished() {
            println!(
                "faultline source: the destination has every page; released after {} connections",
                server.connections()
            );
            return Ok(true);
        }
        if let Some(said) = guest.take_back_unconfirmed() {
            println!("faultline source: {said}");
        }
        if switched_at.is_none() && guest.switched_over() {
            switched_at = Some(Instant::now());
            println!("faultline source: switched over; the guest runs at the destination now");
        }
        if switched_at.is_some() {
            if server.open_connections() > 0 {
                alone_since = None;
            } else if alone_since.get_or_insert_with(Instant::now).elapsed() >= args.abandon_after {
                anyhow::bail!(
                    "the destination went away without finishing and did not come back \
                     within {}; the pages it had not fetched are lost",
                    humantime::format_duration(args.abandon_after)
                );
            }
        }
    }
}

/// `addr` as another host would dial it: a wildcard listen address names no host, so this
/// host's name stands in for it.
fn reachable(addr: std::net::SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return addr.to_string();
    }
    let mut name = [0u8; 256];
    // SAFETY: gethostname writes at most `name.len()` bytes into `name`.
    let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let end = name.iter().position(|&b| b == 0).unwrap_or(0);
    match std::str::from_utf8(&name[..end]) {
        Ok(host) if ok && !host.is_empty() => format!("{host}:{}", addr.port()),
        _ => format!("HOST:{}", addr.port()),
    }
}
