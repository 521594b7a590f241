//! A TCP proxy that cuts the one connection that carries a switchover, at a chosen step
//! of the handover, and passes every other connection (and every later one) untouched. It
//! reads the destination's requests (wire.rs frames) to know where the handover stands.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use faultline::postcopy::net::wire::{HEADER_LEN, Op, Request};

/// Where in the handover the connection is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The switchover request never reaches the source.
    BeforeSwitchover,
    /// The source's handover is cut after this many of its bytes (mid-frame).
    InHandover(u64),
    /// The destination's commit never reaches the source.
    BeforeCommit,
    /// The commit reaches the source; its answer is cut after this many bytes.
    InCommitAnswer(u64),
}

pub struct HandoverCutter {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    step: Step,
    /// Set once the cut was made: later connections pass.
    done: AtomicBool,
    stop: AtomicBool,
}

impl HandoverCutter {
    pub fn start(upstream: SocketAddr, step: Step) -> HandoverCutter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            step,
            done: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        super::proxy::accept_until(listener, move || s.stop.load(Ordering::Acquire), {
            let s = shared.clone();
            move |client| carry(client, &s)
        });
        HandoverCutter { addr, shared }
    }

    /// Whether the cut was made.
    pub fn cut(&self) -> bool {
        self.shared.done.load(Ordering::Acquire)
    }
}

impl Drop for HandoverCutter {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

fn shut(a: &TcpStream, b: &TcpStream) {
    let _ = (a.shutdown(Shutdown::Both), b.shutdown(Shutdown::Both));
}

fn carry(client: TcpStream, s: &Arc<Shared>) {
    let Ok(server) = TcpStream::connect(s.upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    // Bytes of the source's answers passed so far, and where to cut them (u64::MAX: never).
    let passed = Arc::new(AtomicU64::new(0));
    let cut_at = Arc::new(AtomicU64::new(u64::MAX));
    {
        let (Ok(mut s_read), Ok(mut c_write), Ok(c_other)) =
            (server.try_clone(), client.try_clone(), client.try_clone())
        else {
            return;
        };
        let (passed, cut_at) = (passed.clone(), cut_at.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 << 10];
            while let Ok(n) = s_read.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let sent = passed.load(Ordering::Acquire);
                let at = cut_at.load(Ordering::Acquire);
                if sent + n as u64 >= at {
                    let _ = c_write.write_all(&buf[..(at - sent) as usize]);
                    shut(&s_read, &c_other);
                    return;
                }
                // Counted first: the destination may answer as soon as it has them.
                passed.fetch_add(n as u64, Ordering::AcqRel);
                if c_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = c_write.shutdown(Shutdown::Write);
        });
    }
    // Destination to source, frame by frame: the hello, then requests and their payloads.
    let (mut c_read, mut s_write) = (client, server);
    let mut header = Vec::with_capacity(HEADER_LEN);
    let mut hello = true;
    let mut payload_left = 0usize;
    let mut buf = [0u8; 16 << 10];
    let mut out = Vec::with_capacity(buf.len());
    while let Ok(n) = c_read.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.clear();
        // Where the header being read starts in `out` (0 if it began in an earlier read).
        let mut header_at = 0;
        for &byte in &buf[..n] {
            if payload_left > 0 {
                payload_left -= 1;
                out.push(byte);
                continue;
            }
            if header.is_empty() {
                header_at = out.len();
            }
            header.push(byte);
            out.push(byte);
            if header.len() < HEADER_LEN {
                continue;
            }
            let frame: [u8; HEADER_LEN] = header.as_slice().try_into().unwrap();
            header.clear();
            if std::mem::take(&mut hello) {
                continue;
            }
            let Ok(request) = Request::decode(&frame) else {
                continue;
            };
            payload_left = request.payload();
            let trigger = match s.step {
                Step::BeforeSwitchover | Step::InHandover(_) => Op::Switchover,
                Step::BeforeCommit | Step::InCommitAnswer(_) => Op::Commit,
            };
            if request.op != trigger || s.done.swap(true, Ordering::AcqRel) {
                continue;
            }
            match s.step {
                Step::BeforeSwitchover | Step::BeforeCommit => {
                    // Dropped with what follows it: the source never has it whole.
                    out.truncate(header_at);
                    let _ = s_write.write_all(&out);
                    shut(&c_read, &s_write);
                    return;
                }
                // The answer to come starts after what has passed: the source answers
                // only once the request is whole.
                Step::InHandover(k) | Step::InCommitAnswer(k) => {
                    cut_at.store(passed.load(Ordering::Acquire) + k, Ordering::Release);
                }
            }
        }
        if s_write.write_all(&out).is_err() {
            return;
        }
    }
    let _ = s_write.shutdown(Shutdown::Write);
}
