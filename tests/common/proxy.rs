//! A TCP proxy that cuts connections: between a destination and its source it passes bytes
//! both ways until armed; then each connection it carries is cut (both directions shut,
//! mid-frame as likely as not) after a random number of bytes from the source, until a
//! number of cuts is reached. Armed to stall, it instead stops passing the source's bytes
//! at that point and holds the connection open, as a wedged peer or middlebox does. The
//! seed is printed so a failure can be replayed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

pub struct CuttingProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    /// Cuts (or stalls) still to make (0: pass everything).
    budget: AtomicUsize,
    /// Whether the armed budget stalls connections instead of cutting them.
    stall: AtomicBool,
    made: AtomicUsize,
    rng: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    /// Bytes from the source after which a new connection is cut, or None to leave it be.
    fn cut_point(&self) -> Option<u64> {
        let taken = self
            .budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1))
            .is_ok();
        if !taken {
            return None;
        }
        // xorshift over a shared state: the sequence of cut points follows the seed.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        Some(64 + x % (192 << 10))
    }
}

impl CuttingProxy {
    pub fn start(upstream: SocketAddr, seed: u64) -> CuttingProxy {
        eprintln!("cutting proxy: seed {seed:#x}");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            budget: AtomicUsize::new(0),
            stall: AtomicBool::new(false),
            made: AtomicUsize::new(0),
            rng: AtomicU64::new(seed | 1),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        accept_until(listener, move || s.stop.load(Ordering::Acquire), {
            let s = shared.clone();
            move |client| carry(client, &s)
        });
        CuttingProxy { addr, shared }
    }

    /// Cuts the next `cuts` connections, each after a random number of bytes.
    pub fn arm(&self, cuts: usize) {
        self.shared.stall.store(false, Ordering::Release);
        self.shared.budget.store(cuts, Ordering::Release);
    }

    /// Stalls the next `stalls` connections, each after a random number of bytes: nothing
    /// more passes from the source, and the connection stays open.
    #[allow(dead_code)]
    pub fn arm_stalls(&self, stalls: usize) {
        self.shared.stall.store(true, Ordering::Release);
        self.shared.budget.store(stalls, Ordering::Release);
    }

    /// Connections cut (or stalled) so far.
    pub fn cuts(&self) -> usize {
        self.shared.made.load(Ordering::Acquire)
    }
}

/// Accepts connections on `listener` (non-blocking) until `stopped`, each carried by
/// `carry` on a thread of its own.
pub fn accept_until(
    listener: TcpListener,
    stopped: impl Fn() -> bool + Send + 'static,
    carry: impl Fn(TcpStream) + Send + Sync + Clone + 'static,
) {
    std::thread::spawn(move || {
        while !stopped() {
            match listener.accept() {
                Ok((client, _)) => {
                    let carry = carry.clone();
                    std::thread::spawn(move || carry(client));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

fn carry(client: TcpStream, s: &Arc<Shared>) {
    let Ok(server) = TcpStream::connect(s.upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Destination to source: passed as it comes.
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    // Source to destination: cut where the armed proxy says.
    let (mut s_read, mut c_write) = (server, client);
    let mut cut_at = None;
    let mut sent = 0u64;
    let mut buf = [0u8; 16 << 10];
    loop {
        if cut_at.is_none() {
            cut_at = s.cut_point().map(|after| sent + after);
        }
        let Ok(n) = s_read.read(&mut buf) else { break };
        if n == 0 {
            break;
        }
        let mut n = n as u64;
        if let Some(at) = cut_at
            && sent + n >= at
        {
            n = at - sent;
            let _ = c_write.write_all(&buf[..n as usize]);
            if s.stall.load(Ordering::Acquire) {
                s.made.fetch_add(1, Ordering::AcqRel);
                // Held open, silent, until the destination gives up on it or the proxy goes:
                // the source's bytes are read and dropped.
                loop {
                    let gone = !matches!(s_read.read(&mut buf), Ok(n) if n > 0);
                    if gone || s.stop.load(Ordering::Acquire) {
                        return;
                    }
                }
            }
            let _ = (
                c_write.shutdown(Shutdown::Both),
                s_read.shutdown(Shutdown::Both),
            );
            s.made.fetch_add(1, Ordering::AcqRel);
            return;
        }
        if c_write.write_all(&buf[..n as usize]).is_err() {
            break;
        }
        sent += n;
    }
    let _ = c_write.shutdown(Shutdown::Write);
}
