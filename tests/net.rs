//! Pages over real TCP sockets: the page server in front of an image, `TcpSource`, peers
//! that break the protocol, and a source that goes away.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use faultline::postcopy::net::wire::{self, HEADER_LEN, Hello, Op, Request, Response, Status};
use faultline::postcopy::net::{ClientOptions, NetError, PageServer, TcpSource};
use faultline::postcopy::{InProcessSource, PageSource, SourceError};
use faultline::vmm::GuestRam;

const MEM: u64 = 64 << 20;

/// An image whose every page starts with its own number.
fn image() -> Arc<InProcessSource> {
    let ram = GuestRam::new(MEM).unwrap();
    for page in 0..MEM / 4096 {
        ram.write(page * 4096, &page.to_le_bytes()).unwrap();
    }
    Arc::new(InProcessSource::new(Arc::new(ram)))
}

fn serve() -> (PageServer, Arc<InProcessSource>) {
    let image = image();
    (
        PageServer::bind("127.0.0.1:0", image.clone(), Duration::ZERO).unwrap(),
        image,
    )
}

/// What a client of `server` needs to be served.
fn client_of(server: &PageServer) -> ClientOptions {
    ClientOptions {
        token: server.token(),
        ..ClientOptions::default()
    }
}

fn page_number(page: &[u8]) -> u64 {
    u64::from_le_bytes(page[..8].try_into().unwrap())
}

#[test]
fn fetched_pages_arrive_with_the_sources_checksums() {
    let (server, _image) = serve();
    let source = TcpSource::connect(server.addr(), client_of(&server)).unwrap();
    assert_eq!(source.image_size(), MEM);
    assert_eq!(source.describe(), format!("tcp {}", server.addr()));
    // 3 pages, then 2 MiB: more than one frame carries, so it travels in pieces.
    for (first, pages) in [(10u64, 3u64), (1000, 512)] {
        let mut buf = vec![0u8; (pages * 4096) as usize];
        let mut sums = Vec::new();
        source.fetch(first * 4096, &mut buf, &mut sums).unwrap();
        assert_eq!(sums.len() as u64, pages);
        for (i, (page, sum)) in buf.chunks(4096).zip(&sums).enumerate() {
            assert_eq!(page_number(page), first + i as u64);
            assert_eq!(crc32fast::hash(page), *sum);
        }
    }
}

#[test]
fn put_back_writes_the_image_at_the_source() {
    let (server, image) = serve();
    let source = TcpSource::connect(server.addr(), client_of(&server)).unwrap();
    let data = vec![0xabu8; 8192];
    source.put_back(20 * 4096, &data).unwrap();
    let mut back = vec![0u8; 8192];
    image.image().read(20 * 4096, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(image.image().read_u64(22 * 4096).unwrap(), 22);
}

#[test]
fn each_thread_that_fetches_keeps_one_connection() {
    // Both ends wait awake a little for each other, as with cores to spare.
    let spin = Duration::from_micros(50);
    let server = PageServer::bind("127.0.0.1:0", image(), spin).unwrap();
    let options = ClientOptions {
        spin,
        ..client_of(&server)
    };
    let source = Arc::new(TcpSource::connect(server.addr(), options).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let source = source.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                for page in (t * 1000..t * 1000 + 200).map(|p| p + 512) {
                    let mut sums = Vec::new();
                    source.fetch(page * 4096, &mut buf, &mut sums).unwrap();
                    assert_eq!(page_number(&buf), page);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // 800 fetches: one connection per thread, and the one that learned the image size.
    let connections = server.connections();
    assert_eq!(connections, 5);
}

#[test]
fn a_range_outside_the_image_is_refused_without_losing_the_connection() {
    let (server, _image) = serve();
    let source = TcpSource::connect(server.addr(), client_of(&server)).unwrap();
    let mut buf = vec![0u8; 8192];
    let err = source
        .fetch(MEM - 4096, &mut buf, &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(err, SourceError::OutOfRange { size: MEM, .. }),
        "{err}"
    );
    // The server's own check, for a client that does not check first.
    let mut raw = hello(&server);
    send(
        &mut raw,
        Request {
            op: Op::Fetch,
            gpa: MEM,
            len: 4096,
        },
    );
    let (r, why) = response(&mut raw);
    assert_eq!((r.status, r.detail), (Status::OutOfRange, MEM));
    assert!(why.contains("outside"), "{why}");
    // Still in step: the next request is answered.
    send(
        &mut raw,
        Request {
            op: Op::Fetch,
            gpa: 4096,
            len: 4096,
        },
    );
    let mut header = [0u8; HEADER_LEN];
    raw.read_exact(&mut header).unwrap();
    assert_eq!(Response::decode(&header).unwrap(), Response::ok(4096));
}

fn connect(server: &PageServer) -> TcpStream {
    let s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn hello(server: &PageServer) -> TcpStream {
    let mut s = connect(server);
    s.write_all(
        &Hello {
            token: server.token(),
        }
        .encode(),
    )
    .unwrap();
    let mut welcome = [0u8; HEADER_LEN];
    s.read_exact(&mut welcome).unwrap();
    assert_eq!(wire::Welcome::decode(&welcome).unwrap().image_size, MEM);
    s
}

fn send(s: &mut TcpStream, r: Request) {
    s.write_all(&r.encode()).unwrap();
}

/// Reads an error response and its reason.
fn response(s: &mut TcpStream) -> (Response, String) {
    let mut header = [0u8; HEADER_LEN];
    s.read_exact(&mut header).unwrap();
    let r = Response::decode(&header).unwrap();
    let mut why = vec![0u8; r.len as usize];
    s.read_exact(&mut why).unwrap();
    (r, String::from_utf8(why).unwrap())
}

/// The server answers `frames` with a Malformed response naming `expected`, then hangs up.
fn assert_refused(mut s: TcpStream, frames: &[u8], expected: &str) {
    s.write_all(frames).unwrap();
    let (r, why) = response(&mut s);
    assert_eq!(r.status, Status::Malformed);
    assert!(why.contains(expected), "{why:?} lacks {expected:?}");
    let mut rest = [0u8; 1];
    assert_eq!(s.read(&mut rest).unwrap(), 0, "the connection stays open");
}

#[test]
fn a_peer_that_breaks_the_protocol_is_told_why_and_dropped_while_others_are_served() {
    let (server, _image) = serve();
    let source = TcpSource::connect(server.addr(), client_of(&server)).unwrap();
    assert_refused(
        connect(&server),
        b"GET / HTTP/1.1\r\n",
        "not a faultline page stream",
    );
    let mut old = Hello { token: 0 }.encode();
    old[4] = 7;
    assert_refused(connect(&server), &old, "protocol version 7");
    // Only the destination the server was made for knows its token.
    let stranger = Hello {
        token: server.token() ^ 1,
    };
    assert_refused(connect(&server), &stranger.encode(), "wrong token");
    let err = TcpSource::connect(server.addr(), ClientOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("wrong token"), "{err}");
    let mut bad_op = Request {
        op: Op::Fetch,
        gpa: 4096,
        len: 4096,
    }
    .encode();
    bad_op[0] = 9;
    assert_refused(hello(&server), &bad_op, "unknown request 9");
    let huge = Request {
        op: Op::PutBack,
        gpa: 4096,
        len: 4096,
    };
    let mut huge = huge.encode();
    huge[4..8].copy_from_slice(&(64u32 << 20).to_le_bytes());
    assert_refused(hello(&server), &huge, "bytes in one frame");
    let unaligned = Request {
        op: Op::Fetch,
        gpa: 4096 + 12,
        len: 4096,
    };
    assert_refused(hello(&server), &unaligned.encode(), "not whole pages");
    // A client that hangs up mid-frame costs nothing but its connection.
    let mut cut = hello(&server);
    cut.write_all(&huge[..5]).unwrap();
    drop(cut);
    // A well-behaved client was served all along.
    let mut buf = vec![0u8; 4096];
    source.fetch(600 * 4096, &mut buf, &mut Vec::new()).unwrap();
    assert_eq!(page_number(&buf), 600);
}

#[test]
fn a_source_that_goes_away_fails_the_fetch_with_its_address() {
    let (server, _image) = serve();
    let addr = server.addr();
    let source = TcpSource::connect(addr, client_of(&server)).unwrap();
    let mut buf = vec![0u8; 4096];
    source.fetch(4096, &mut buf, &mut Vec::new()).unwrap();
    drop(server);
    // The pooled connection finds the source gone...
    let err = source.fetch(4096, &mut buf, &mut Vec::new()).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err.cause::<NetError>(), Some(NetError::Lost { .. })),
        "{text}"
    );
    assert!(
        text.contains(&addr.to_string()) && text.contains("connection lost"),
        "{text}"
    );
    // ...and a new one cannot be made.
    let err = source.fetch(4096, &mut buf, &mut Vec::new()).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err.cause::<NetError>(), Some(NetError::Connect { .. })),
        "{text}"
    );
    assert!(
        text.starts_with(&format!("cannot connect to the page source at {addr}")),
        "{text}"
    );
    assert!(!text.contains('\n'));
}

#[test]
fn nothing_listening_is_a_one_line_connect_error() {
    // A port that was free a moment ago.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = TcpSource::connect(addr, ClientOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, NetError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn a_port_in_use_is_a_one_line_listen_error() {
    let (server, image) = serve();
    let err = PageServer::bind(server.addr(), image, Duration::ZERO)
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot serve pages on {}", server.addr())),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn a_fetch_waits_out_a_link_outage_and_gets_its_page() {
    let (server, _image) = serve();
    let options = ClientOptions {
        recover: Duration::from_secs(20),
        ..client_of(&server)
    };
    let source = Arc::new(TcpSource::connect(server.addr(), options).unwrap());
    let mut buf = vec![0u8; 4096];
    source.fetch(700 * 4096, &mut buf, &mut Vec::new()).unwrap();
    let link = server.link();
    link.set(false);
    assert!(!link.is_up());
    let fetcher = {
        let source = source.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            let mut sums = Vec::new();
            let started = std::time::Instant::now();
            source.fetch(800 * 4096, &mut buf, &mut sums).unwrap();
            (
                started.elapsed(),
                page_number(&buf),
                page_number(&buf[4096..]),
                sums,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !fetcher.is_finished(),
        "a fetch got through a link that is down"
    );
    link.set(true);
    let (waited, first, second, sums) = fetcher.join().unwrap();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert_eq!((first, second), (800, 801));
    // Retried whole: one checksum per page, none left from the failed attempt.
    assert_eq!(sums.len(), 2);
}

#[test]
fn a_source_that_stays_away_past_the_recovery_window_fails_the_fetch() {
    let (server, _image) = serve();
    let options = ClientOptions {
        recover: Duration::from_millis(200),
        ..client_of(&server)
    };
    let source = TcpSource::connect(server.addr(), options).unwrap();
    server.link().set(false);
    let started = std::time::Instant::now();
    let err = source
        .fetch(4096, &mut vec![0u8; 4096], &mut Vec::new())
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(200));
    let text = err.to_string();
    assert!(
        matches!(err.cause::<NetError>(), Some(NetError::Unreachable { .. })),
        "{text}"
    );
    assert!(text.starts_with("gave up after 0."), "{text}");
    assert!(text.contains(&server.addr().to_string()), "{text}");
}

/// How the fake server below answers one request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Good,
    /// Ok, but one page short.
    WrongLength,
    UnknownStatus,
    /// Half the data, then the connection closes.
    Truncated,
    /// The source's own failure: an error answer, the connection stays in step.
    Failed,
}

/// A page server that breaks the protocol on purpose: it answers requests, in order and
/// whatever connection they come on, as `script` says. Returns its address and a count of
/// the connections it accepted.
fn scripted_server(
    script: Vec<Answer>,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut script = script.into_iter();
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            let mut header = [0u8; HEADER_LEN];
            conn.read_exact(&mut header).unwrap();
            Hello::decode(&header).unwrap();
            conn.write_all(&wire::Welcome { image_size: MEM }.encode())
                .unwrap();
            while conn.read_exact(&mut header).is_ok() {
                let r = Request::decode(&header).unwrap();
                let data: Vec<u8> = (0..r.len as u64 / 4096)
                    .flat_map(|p| {
                        let mut page = vec![0u8; 4096];
                        page[..8].copy_from_slice(&(r.gpa / 4096 + p).to_le_bytes());
                        page
                    })
                    .collect();
                let mut frame = Vec::new();
                let answer = script.next().unwrap_or(Answer::Good);
                match answer {
                    Answer::Good | Answer::WrongLength | Answer::Truncated => {
                        let len = match answer {
                            Answer::WrongLength => r.len - 4096,
                            _ => r.len,
                        };
                        frame.extend_from_slice(&Response::ok(len).encode());
                        frame.extend_from_slice(&data[..len as usize]);
                        for page in data[..len as usize].chunks(4096) {
                            frame.extend_from_slice(&crc32fast::hash(page).to_le_bytes());
                        }
                        if let Answer::Truncated = answer {
                            frame.truncate(HEADER_LEN + 2048);
                        }
                    }
                    Answer::UnknownStatus => {
                        let mut h = Response::ok(r.len).encode();
                        h[0] = 42;
                        frame.extend_from_slice(&h);
                    }
                    Answer::Failed => {
                        let why = b"disk on fire";
                        let h = Response {
                            status: Status::Failed,
                            len: why.len() as u32,
                            detail: 0,
                        };
                        frame.extend_from_slice(&h.encode());
                        frame.extend_from_slice(why);
                    }
                }
                conn.write_all(&frame).unwrap();
                if matches!(answer, Answer::Truncated) {
                    break;
                }
            }
        }
    });
    (addr, accepted)
}

#[test]
fn a_server_that_breaks_the_protocol_costs_the_client_its_connection_never_its_step() {
    use std::sync::atomic::Ordering;
    let script = vec![
        Answer::WrongLength,
        Answer::Good,
        Answer::UnknownStatus,
        Answer::Truncated,
        Answer::Failed,
        Answer::Good,
    ];
    let (addr, accepted) = scripted_server(script);
    let source = TcpSource::connect(addr, ClientOptions::default()).unwrap();
    let mut buf = vec![0u8; 8192];
    let mut fetch = |page: u64| {
        let mut sums = Vec::new();
        source
            .fetch(page * 4096, &mut buf, &mut sums)
            .map(|()| (page_number(&buf), page_number(&buf[4096..]), sums.len()))
    };
    let err = fetch(600).unwrap_err().to_string();
    assert!(err.contains("answered 4096 bytes where 8192"), "{err}");
    // A new connection, in step from its start.
    assert_eq!(fetch(601).unwrap(), (601, 602, 2));
    let err = fetch(603).unwrap_err().to_string();
    assert!(err.contains("unknown response status 42"), "{err}");
    let err = fetch(604).unwrap_err().to_string();
    assert!(
        err.contains("connection lost: the source closed it"),
        "{err}"
    );
    // The source's own failure is an answer: the connection stays, and serves the next.
    let err = fetch(605).unwrap_err().to_string();
    assert_eq!(err, format!("page source at {addr}: disk on fire"));
    assert_eq!(fetch(606).unwrap(), (606, 607, 2));
    // The handshake's, then one after each broken answer (three), and none after the
    // source's failure.
    assert_eq!(accepted.load(Ordering::Relaxed), 5);
}

/// The next connection to `listener`, its client's hello read (and checked).
fn accept_hello(listener: &std::net::TcpListener) -> TcpStream {
    let (mut conn, _) = listener.accept().unwrap();
    let mut header = [0u8; HEADER_LEN];
    conn.read_exact(&mut header).unwrap();
    Hello::decode(&header).unwrap();
    conn
}

#[test]
fn a_server_that_refuses_the_hello_says_why() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut conn = accept_hello(&listener);
        let why = b"protocol version 1 is not supported (this build speaks 2)";
        let h = Response {
            status: Status::Malformed,
            len: why.len() as u32,
            detail: 0,
        };
        conn.write_all(&h.encode()).unwrap();
        conn.write_all(why).unwrap();
    });
    let err = TcpSource::connect(addr, ClientOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, NetError::Refused { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("page source at {addr}: protocol version 1 is not supported (this build speaks 2)")
    );
}

#[test]
fn a_server_that_serves_pages_only_refuses_migration_control_and_says_why() {
    let (server, _image) = serve();
    for op in [Op::Describe, Op::Switchover, Op::Finish] {
        let e = faultline::postcopy::net::control(server.addr(), server.token(), op)
            .expect_err("no migration to control")
            .to_string();
        assert!(
            e.contains(&server.addr().to_string()) && e.contains("serves pages only"),
            "{e}"
        );
    }
    // Pages are still served.
    let source = TcpSource::connect(server.addr(), client_of(&server)).unwrap();
    let mut page = vec![0u8; 4096];
    source.fetch(7 * 4096, &mut page, &mut Vec::new()).unwrap();
    assert_eq!(page_number(&page), 7);
}

/// A migration's control side whose switchover answer is `answer`; it releases once.
struct Answers {
    answer: Vec<u8>,
    released: std::sync::atomic::AtomicBool,
}

impl faultline::postcopy::net::MigrationControl for Answers {
    fn describe(&self) -> Vec<u8> {
        b"{}".to_vec()
    }
    fn switch_over(&self) -> Result<Vec<u8>, String> {
        Ok(self.answer.clone())
    }
    fn commit(&self, _id: u64) -> Result<(), String> {
        Ok(())
    }
    fn finish(&self) -> Result<(), String> {
        Ok(())
    }
    fn answered(&self, op: Op, _answer: &[u8], written: bool) {
        if op == Op::Finish && written {
            self.released
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

#[test]
fn a_control_answer_bigger_than_a_frame_arrives_whole_in_parts() {
    use std::sync::atomic::Ordering;
    // Two and a half frames' worth, every byte telling where it belongs.
    let answer: Vec<u8> = (0..(wire::MAX_PAYLOAD as usize * 5 / 2))
        .map(|i| (i % 251) as u8)
        .collect();
    let control = Arc::new(Answers {
        answer: answer.clone(),
        released: false.into(),
    });
    let server =
        PageServer::bind_migration("127.0.0.1:0", image(), Duration::ZERO, 7, control.clone())
            .unwrap();
    let got = faultline::postcopy::net::control(server.addr(), 7, Op::Switchover).unwrap();
    assert_eq!(got.len(), answer.len());
    assert!(got == answer, "the parts arrived out of order or changed");
    // An empty answer is one frame; the source is released only once it is written.
    assert!(!control.released.load(Ordering::Acquire));
    let got = faultline::postcopy::net::control(server.addr(), 7, Op::Finish).unwrap();
    assert!(got.is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !control.released.load(Ordering::Acquire) {
        assert!(std::time::Instant::now() < deadline, "never released");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A control server that answers with `frames` as they are, once, after the handshake.
fn control_server(frames: Vec<u8>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut conn = accept_hello(&listener);
        conn.write_all(&wire::Welcome { image_size: MEM }.encode())
            .unwrap();
        let mut header = [0u8; HEADER_LEN];
        conn.read_exact(&mut header).unwrap();
        conn.write_all(&frames).unwrap();
        // Holds the connection open: a client must not wait on it past its timeout.
        std::thread::sleep(Duration::from_secs(30));
    });
    addr
}

#[test]
fn a_control_answer_whose_parts_do_not_add_up_is_refused() {
    let mut frames = Vec::new();
    frames.extend_from_slice(&Response::answer_part(4, 10).encode());
    frames.extend_from_slice(b"abcd");
    // Says 10 bytes are to come, then sends 3 with none after them.
    frames.extend_from_slice(&Response::answer_part(3, 0).encode());
    frames.extend_from_slice(b"efg");
    let addr = control_server(frames);
    let e = faultline::postcopy::net::control(addr, 0, Op::Describe)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&addr.to_string()) && e.contains("where 10 were to come"),
        "{e}"
    );
    // An answer announced past the limit is refused before anything is read into memory.
    let mut frames = Vec::new();
    frames.extend_from_slice(&Response::answer_part(0, u64::MAX / 2).encode());
    let addr = control_server(frames);
    let e = faultline::postcopy::net::control(addr, 0, Op::Describe)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most"), "{e}");
}

#[test]
fn a_source_that_never_answers_a_control_request_fails_it_within_the_timeout() {
    let addr = control_server(Vec::new());
    let started = std::time::Instant::now();
    let e = faultline::postcopy::net::control(addr, 0, Op::Switchover)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&addr.to_string()) && e.contains("no answer for"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
}
