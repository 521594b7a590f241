//! Every decoder of outside bytes, fed seeded random bytes and mutated valid inputs: the page
//! wire protocol (both directions), a source's offer and handover, control-socket frames,
//! recordings, scenario TOML and QEMU trace lines. None may panic, and no input may make one allocate more than a bound,
//! whatever its length fields say. `FAULTLINE_FUZZ_CASES` sets the inputs per decoder
//! (default 100000); a failure names its case and seed, to replay it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use faultline::contract::{Action, Snapshot};
use faultline::control::protocol::{self, Message, VERSION};
use faultline::postcopy::net::wire::{HEADER_LEN, Hello, Op, Request, Response, Welcome};
use faultline::units::Rate;

/// The largest single allocation made since the last reset, in bytes.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Watching;

// SAFETY: forwards to the system allocator; only records the size asked for.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// A control frame may hold 8 MiB and inflate to 64 MiB; nothing may ask for more.
const ALLOCATION_BOUND: usize = 80 << 20;

/// One decoder at a time: the allocation watch is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn cases() -> u64 {
    std::env::var("FAULTLINE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// xorshift64*: small, seeded, the same inputs on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that decoders find hard: extremes of length fields, and text that looks valid.
const INTERESTING: &[&[u8]] = &[
    &[0xFF; 8],
    &[0x00; 8],
    &[0x7F, 0xFF, 0xFF, 0xFF],
    &[0x80, 0x00, 0x00, 0x00],
    b"0xffffffffffffffff",
    b"-1",
    b"99999999999999999999",
    b"@",
    b":",
    b", ",
    b"\n",
    b"\"",
    b"{",
    b"[",
];

/// A mutation of `seed_input`, or random bytes when there is none to start from.
fn mutate(rng: &mut Rng, seed_input: &[u8]) -> Vec<u8> {
    if seed_input.is_empty() || rng.below(8) == 0 {
        let most = if rng.below(4) == 0 { 4096 } else { 64 };
        let len = rng.below(most);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut v = seed_input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = rng.next() as u8;
            }
            2 => {
                let s = INTERESTING[rng.below(INTERESTING.len())];
                let end = (at + s.len()).min(v.len());
                v.splice(at..end, s.iter().copied());
            }
            3 => v.truncate(at),
            4 => {
                let n = rng.below(16).min(v.len() - at.min(v.len()));
                v.drain(at..at + n);
            }
            5 => {
                let b = rng.next() as u8;
                v.insert(at, b);
            }
            _ => {
                let from = rng.below(v.len().max(1));
                let chunk: Vec<u8> = v[from..(from + rng.below(32)).min(v.len())].to_vec();
                v.splice(at..at, chunk);
            }
        }
    }
    v
}

/// Feeds `decode` `cases()` inputs made from `corpus`, then the kept regressions of
/// `target`; fails on a panic or an allocation over the bound.
fn fuzz(target: &str, corpus: &[Vec<u8>], decode: impl Fn(&[u8])) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = 0x5EED_0000_0000_0000 ^ target.len() as u64 ^ (target.as_bytes()[0] as u64) << 32;
    let mut inputs: Vec<(String, Vec<u8>)> = regressions(target);
    let n = cases();
    let check = |label: &str, input: &[u8]| {
        LARGEST.store(0, Ordering::Relaxed);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| decode(input)));
        let largest = LARGEST.load(Ordering::Relaxed);
        if r.is_err() || largest > ALLOCATION_BOUND {
            keep_failure(target, label, input);
        }
        assert!(
            r.is_ok(),
            "{target}: {label} panicked on {} bytes: {:?}",
            input.len(),
            String::from_utf8_lossy(&input[..input.len().min(200)])
        );
        assert!(
            largest <= ALLOCATION_BOUND,
            "{target}: {label} allocated {largest} bytes at once from {} bytes of input",
            input.len()
        );
    };
    for (name, input) in inputs.drain(..) {
        check(&format!("regression {name}"), &input);
    }
    for case in 0..n {
        let mut rng = Rng((seed ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        let start = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, start);
        check(&format!("case {case} (seed {seed:#x})"), &input);
    }
}

/// Writes a failing input where it can be copied into tests/data/fuzz/TARGET/.
fn keep_failure(target: &str, label: &str, input: &[u8]) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-failures")
        .join(target);
    let name: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if std::fs::create_dir_all(&dir).is_ok() {
        let path = dir.join(name);
        if std::fs::write(&path, input).is_ok() {
            eprintln!("{target}: the failing input is in {}", path.display());
        }
    }
}

/// Inputs that once failed, kept under tests/data/fuzz/TARGET/.
fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(target);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            Some((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).ok()?,
            ))
        })
        .collect()
}

fn frame(m: &Message, deflate: bool) -> Vec<u8> {
    let mut v = Vec::new();
    protocol::write_frame(&mut v, m, deflate).unwrap();
    v
}

fn small_snapshot() -> Snapshot {
    faultline::tui::fixture::snapshot(1, 64 << 20, 2)
}

#[test]
fn page_wire_headers_never_panic_either_way() {
    let corpus: Vec<Vec<u8>> = vec![
        Hello { token: 0x1234 }.encode().to_vec(),
        Welcome {
            image_size: 1 << 30,
        }
        .encode()
        .to_vec(),
        Request {
            op: Op::Fetch,
            gpa: 0x20_0000,
            len: 4096,
        }
        .encode()
        .to_vec(),
        Request::control(Op::Finish).encode().to_vec(),
        Response::ok(4096).encode().to_vec(),
        Response::answer_part(1 << 20, 5 << 20).encode().to_vec(),
    ];
    fuzz("wire", &corpus, |input| {
        let mut h = [0u8; HEADER_LEN];
        let n = input.len().min(HEADER_LEN);
        h[..n].copy_from_slice(&input[..n]);
        let _ = Hello::decode(&h);
        let _ = Welcome::decode(&h);
        if let Ok(r) = Request::decode(&h) {
            let _ = r.payload();
        }
        let _ = Response::decode(&h);
    });
}

#[test]
fn switchover_handovers_and_offers_never_panic_or_overallocate() {
    use faultline::postcopy::Offer;
    use faultline::postcopy::remote::Handover;
    let handover = Handover {
        id: 0x5eed,
        baseline_per_sec: Vec::new(),
        states: Vec::new(),
        boot: vec![(0x1000, vec![7; 64]), (0x3000, vec![9; 32])],
    };
    let offer = Offer::new("default", 2, 64 << 20, &"verify".parse().unwrap());
    let corpus = vec![handover.encode(), serde_json::to_vec(&offer).unwrap()];
    fuzz("handover", &corpus, |input| {
        // The count is checked against the guest's before any state is read.
        for vcpus in 0..3 {
            let _ = Handover::decode(input, vcpus);
        }
        if let Ok(o) = serde_json::from_slice::<Offer>(input) {
            let _ = o.workload();
        }
    });
}

#[test]
fn control_frames_never_panic_or_overallocate() {
    let corpus: Vec<Vec<u8>> = [false, true]
        .into_iter()
        .flat_map(|deflate| {
            [
                frame(
                    &Message::Hello {
                        version: VERSION,
                        peer: "faultline attach".into(),
                    },
                    deflate,
                ),
                frame(
                    &Message::Command(Action::Throttle(Rate::BytesPerSec(1 << 20))),
                    deflate,
                ),
                frame(&Message::Command(Action::Link(false)), deflate),
                frame(
                    &Message::Error {
                        message: "no".into(),
                    },
                    deflate,
                ),
                frame(&Message::Snapshot(Box::new(small_snapshot())), deflate),
            ]
        })
        .collect();
    fuzz("control", &corpus, |input| {
        let mut r = input;
        // A stream of frames: read until it ends or breaks.
        for _ in 0..8 {
            match protocol::read_frame(&mut r) {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    });
}

#[test]
fn recordings_never_panic_or_overallocate() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/recorded-before-the-contract.rec");
    let whole = std::fs::read(&path).unwrap();
    // The header and the first frames: a whole recording is too slow to parse 100k times.
    let mut head = Vec::new();
    let mut r = &whole[..];
    for _ in 0..2 {
        let before = r.len();
        protocol::read_frame(&mut r).unwrap();
        head.extend_from_slice(&whole[whole.len() - before..whole.len() - r.len()]);
    }
    let corpus = vec![head, whole[..whole.len().min(2048)].to_vec()];
    fuzz("recording", &corpus, |input| {
        let _ = faultline::control::record::read_from(input, Path::new("fuzz.rec"));
    });
}

#[test]
fn scenario_files_never_panic() {
    let corpus: Vec<Vec<u8>> = faultline::scenario::BUILT_IN
        .iter()
        .map(|(_, text)| text.as_bytes().to_vec())
        .collect();
    fuzz("scenario", &corpus, |input| {
        let _ = faultline::scenario::parse("fuzz.toml", &String::from_utf8_lossy(input));
    });
}

#[test]
fn qemu_trace_lines_never_panic() {
    let sample = include_str!("data/qemu-10.0-postcopy.trace");
    let mut corpus: Vec<Vec<u8>> = sample.lines().map(|l| l.as_bytes().to_vec()).collect();
    corpus.push(
        b"2026-12-06T03:58:11.343464Z postcopy_blocktime_begin addr: 0x7f0000001000, time: 1, cpu: 1, exist: 0"
            .to_vec(),
    );
    corpus.push(b"postcopy_blocktime_end_one cpu: -1, left_faults: 0".to_vec());
    fuzz("qemu-trace", &corpus, |input| {
        let _ = faultline::qemu::trace::parse(&String::from_utf8_lossy(input));
    });
}

#[test]
fn qemu_trace_chunks_never_panic_the_stall_book() {
    use faultline::qemu::book::StallBook;
    use faultline::qemu::trace::{Parsed, parse};
    let sample = include_str!("data/qemu-10.0-postcopy.trace");
    let lines: Vec<&str> = sample.lines().collect();
    let corpus: Vec<Vec<u8>> = lines
        .chunks(24)
        .map(|c| c.join("\n").into_bytes())
        .collect();
    fuzz("qemu-book", &corpus, |input| {
        let text = String::from_utf8_lossy(input);
        let events: Vec<_> = text
            .lines()
            .filter_map(|l| match parse(l) {
                Parsed::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        let epoch = events.iter().filter_map(|e| e.at_us).min().unwrap_or(0);
        let Ok(mut book) = StallBook::new(2, 256 << 20, epoch) else {
            return;
        };
        for e in &events {
            book.fold(e);
        }
        let now = events
            .iter()
            .filter_map(|e| e.at_us)
            .max()
            .map_or(0, |t| book.ns_of(t));
        book.advance(now);
        let _ = book.stall_heatmap(now);
        let _ = (book.stall_share(0, now), book.stall_ns_within(1, 0, now));
        book.close_all(now);
    });
}
