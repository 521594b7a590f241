//! A migration between two `faultline` processes: `faultline source` runs the guest on real
//! KVM and serves it over TCP; `faultline run --source ADDR --token T` takes it over
//! post-copy and proves every page arrived.

mod common;

use common::{faultline, stderr};

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `faultline source`; killed when dropped.
struct Source {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Its stderr, line by line (each also passed on to the test's).
    errors: mpsc::Receiver<String>,
    addr: String,
    token: String,
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Source {
    fn start(args: &[&str]) -> Source {
        let mut child = faultline()
            .arg("source")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("faultline source starts");
        let lines = read_lines(child.stdout.take().expect("stdout"));
        let (tx, errors) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("source: {line}");
                let _ = tx.send(line);
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the source says what it serves");
        assert!(first.contains("serving it on"), "{first}");
        let how = lines
            .recv_timeout(Duration::from_secs(5))
            .expect("the source says how to take it over");
        // take it over with: faultline run --source ADDR --token T
        let words: Vec<&str> = how.split_whitespace().collect();
        let after = |flag| {
            let i = words.iter().position(|w| *w == flag).expect(flag);
            words[i + 1].to_string()
        };
        Source {
            addr: after("--source"),
            token: after("--token"),
            child,
            lines,
            errors,
        }
    }

    /// Waits for the source to end by itself; its exit status and what it printed.
    fn wait(mut self, within: Duration) -> (bool, Vec<String>) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // To the end of its output: the reader thread may still be passing it on.
                let said = drain(&self.lines, Duration::from_secs(5));
                return (status.success(), said);
            }
            assert!(Instant::now() < deadline, "the source did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn take_over(source: &Source, extra: &[&str]) -> Output {
    faultline()
        .args(["run", "--headless", "--json", "--source", &source.addr])
        .args(["--token", &source.token])
        .args(extra)
        .output()
        .expect("faultline run")
}

#[test]
fn a_guest_served_by_another_process_is_taken_over_and_every_page_verified() {
    for mode in ["exit", "uffd"] {
        let source = Source::start(&["--vcpus", "2", "--mem", "64M", "--workload", "verify"]);
        let out = take_over(
            &source,
            &[
                "--mode",
                mode,
                // Long enough for every vCPU to report progress (one report per 4096
                // accesses) on a loaded 2-core machine.
                "--duration",
                "2s",
                "--fetch-rate",
                "unlimited",
            ],
        );
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
        // The guest is the source's, not the destination scenario's.
        assert_eq!(s["vcpus"], 2, "{s}");
        assert_eq!(s["mem_bytes"], 64 << 20, "{s}");
        assert_eq!(s["workload"], "verify", "{s}");
        assert_eq!(s["mode"], mode, "{s}");
        assert_eq!(s["transport"], "tcp", "{s}");
        assert_eq!(s["verified"], true, "{s}");
        assert_eq!(s["verify"]["mismatches"], 0, "{s}");
        assert_eq!(s["verify"]["guest_errors"], 0, "{s}");
        assert_eq!(s["verify"]["pages_checked"], (64 << 20) / 4096 - 512, "{s}");
        let fetched = s["pages_demand"].as_u64().unwrap() + s["pages_pushed"].as_u64().unwrap();
        assert_eq!(fetched, (64 << 20) / 4096 - 512, "{s}");
        // The guest ran on at the destination: its vCPUs faulted and made progress there.
        for v in s["per_vcpu"].as_array().unwrap() {
            assert!(v["guest_progress"].as_u64().unwrap() > 0, "{s}");
        }
        // Told it is needed no more, the source ends by itself.
        let (ok, said) = source.wait(Duration::from_secs(10));
        assert!(ok, "{said:?}");
        assert!(said.iter().any(|l| l.contains("switched over")), "{said:?}");
        assert!(
            said.iter().any(|l| l.contains("has every page")),
            "{said:?}"
        );
    }
}

#[test]
fn a_wrong_token_or_an_early_finish_is_refused_and_the_source_serves_on() {
    let source = Source::start(&["--vcpus", "1", "--mem", "64M"]);
    let wrong = if source.token == "0000000000000001" {
        "0000000000000002"
    } else {
        "0000000000000001"
    };
    let out = faultline()
        .args([
            "run",
            "--headless",
            "--source",
            &source.addr,
            "--token",
            wrong,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&source.addr) && err.contains("wrong token"),
        "{err}"
    );
    // A finish before any switchover would release a source whose guest runs there still.
    let e = faultline::postcopy::net::control(
        source.addr.parse().unwrap(),
        u64::from_str_radix(&source.token, 16).unwrap(),
        faultline::postcopy::net::wire::Op::Finish,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("has not been handed over"), "{e}");
    // The right token still takes the guest over.
    let out = take_over(&source, &["--duration", "0s", "--fetch-rate", "unlimited"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_source_that_dies_mid_run_fails_the_destination_promptly_in_one_line() {
    let mut source = Source::start(&["--vcpus", "2", "--mem", "64M"]);
    let mut dest = faultline()
        .args(["run", "--headless", "--source", &source.addr])
        .args(["--token", &source.token])
        .args([
            "--duration",
            "60s",
            "--fetch-rate",
            "1MiB/s",
            "--link-timeout",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, notes) = mpsc::channel();
    let err = dest.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("switched over")) {
        seen.push(
            notes
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no switchover: {seen:?}")),
        );
    }
    let switched = seen.last().unwrap();
    assert!(
        switched.contains(&format!(
            "pages over tcp from the source at {}",
            source.addr
        )),
        "{switched}"
    );
    std::thread::sleep(Duration::from_millis(300));
    source.child.kill().unwrap();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = dest.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the destination still runs without its source"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    seen.extend(notes.try_iter());
    assert_eq!(status.code(), Some(1), "{seen:?}");
    let last = seen.last().unwrap();
    assert!(
        last.starts_with("faultline: ") && last.contains(&source.addr),
        "{seen:?}"
    );
}

#[test]
fn bad_source_arguments_are_one_line_errors() {
    let run = |args: &[&str]| faultline().args(args).output().unwrap();
    // Nothing listens there.
    let out = run(&[
        "run",
        "--headless",
        "--source",
        "127.0.0.1:1",
        "--token",
        "0123456789abcdef",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot connect to the page source at 127.0.0.1:1"),
        "{err}"
    );
    // The guest is the source's to choose.
    let out = run(&[
        "run",
        "--source",
        "127.0.0.1:1",
        "--token",
        "0123456789abcdef",
        "--vcpus",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--vcpus"), "{}", stderr(&out));
    for (args, expected) in [
        (&["run", "--source", "127.0.0.1:1"][..], "--token <TOKEN>"),
        (
            &["run", "--source", "127.0.0.1:1", "--token", "xyz"][..],
            "'xyz' is not 16 hex digits",
        ),
        (
            &[
                "run",
                "--source",
                "127.0.0.1:1",
                "--token",
                "+123456789abcdef",
            ][..],
            "'+123456789abcdef' is not 16 hex digits",
        ),
        (
            &["run", "--source", "nowhere", "--token", "0123456789abcdef"][..],
            "--source nowhere: not a HOST:PORT address",
        ),
        (&["source", "--listen", "nowhere"][..], "--listen nowhere"),
        (&["source", "--vcpus", "0"][..], "--vcpus 0"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_guest_runs_in_one_place_only_and_can_move_on_from_its_first_destination() {
    let source = Source::start(&["--vcpus", "2", "--mem", "64M", "--workload", "verify"]);
    // The first destination migrates the guest again, to a VM of its own, after 500 ms.
    let dir = std::env::temp_dir().join(format!("faultline-remote-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("onward.toml");
    std::fs::write(
        &scenario,
        "duration = \"1500ms\"\nfetch_rate = \"unlimited\"\n[[timeline]]\nat = \"500ms\"\nmigrate = true\n",
    )
    .unwrap();
    let first = faultline()
        .args(["run", "--headless", "--json"])
        .arg(&scenario)
        .args(["--source", &source.addr, "--token", &source.token])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut said = Vec::new();
    while !said.iter().any(|l: &String| l.contains("switched over")) {
        assert!(Instant::now() < deadline, "no switchover: {said:?}");
        said.extend(source.lines.recv_timeout(Duration::from_millis(100)));
    }
    // A second destination finds the guest gone.
    let second = take_over(&source, &["--duration", "0s"]);
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    let err = stderr(&second);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("handed over already"), "{err}");
    let out = first.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert_eq!(s["migrations"], 2, "{s}");
    assert_eq!(s["verified"], true, "{s}");
    // Both migrations were checked: the one from the other process and the one after.
    assert_eq!(
        s["verify"]["pages_checked"],
        2 * ((64 << 20) / 4096 - 512),
        "{s}"
    );
    // The source was released when the guest moved on, not at the end of the run.
    let (ok, rest) = source.wait(Duration::from_secs(10));
    assert!(ok, "{rest:?}");
}

#[test]
fn a_switchover_whose_answer_cannot_be_sent_leaves_the_guest_running_at_the_source() {
    use faultline::postcopy::net::wire::{HEADER_LEN, Hello, Op, Request};
    use std::io::{Read, Write};
    let source = Source::start(&["--vcpus", "2", "--mem", "64M"]);
    // A destination that asks for the switchover and is gone (reset) before the answer.
    let mut conn = std::net::TcpStream::connect(&source.addr).unwrap();
    let token = u64::from_str_radix(&source.token, 16).unwrap();
    conn.write_all(&Hello { token }.encode()).unwrap();
    let mut welcome = [0u8; HEADER_LEN];
    conn.read_exact(&mut welcome).unwrap();
    conn.write_all(&Request::control(Op::Switchover).encode())
        .unwrap();
    socket2::SockRef::from(&conn)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(conn);
    std::thread::sleep(Duration::from_millis(300));
    // The guest was not given up: a real destination takes it over, every page verified.
    let out = take_over(&source, &["--duration", "0s", "--fetch-rate", "unlimited"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["verified"], true, "{summary}");
    let (ok, said) = source.wait(Duration::from_secs(30));
    assert!(ok, "{said:?}");
    // One switchover only was announced: the one that got through.
    assert_eq!(
        said.iter().filter(|l| l.contains("switched over")).count(),
        1,
        "{said:?}"
    );
}

#[test]
fn twenty_cuts_of_the_connection_cost_time_never_a_page_in_either_mode() {
    use common::proxy::CuttingProxy;
    use std::net::ToSocketAddrs;
    for (mode, seed) in [("exit", 0xC07_0001_u64), ("uffd", 0xC07_0002)] {
        let source = Source::start(&["--vcpus", "2", "--mem", "128M", "--workload", "verify"]);
        let upstream = source.addr.to_socket_addrs().unwrap().next().unwrap();
        let proxy = CuttingProxy::start(upstream, seed);
        let mut run = faultline()
            .args(["run", "--headless", "--source"])
            .arg(proxy.addr.to_string())
            .args(["--token", &source.token, "--mode", mode])
            .args(["--duration", "3s", "--fetch-rate", "32MiB/s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Cuts begin once the guest runs at the destination: the handover has tests of its own.
        let notes = read_lines_of(run.stderr.take().unwrap());
        let started = Instant::now();
        loop {
            let line = source
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the source says it handed the guest over");
            if line.contains("switched over") {
                break;
            }
        }
        let mut said = Vec::new();
        proxy.arm(20);
        let out = run.wait_with_output().unwrap();
        said.extend(notes.try_iter());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{mode}: {text}\n{said:?}");
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("{mode}: no '{start}' line in {text}"))
                .to_string()
        };
        assert!(
            line("verified:").contains(" 0 mismatches"),
            "{mode}: {text}"
        );
        // Every page arrived once: no page applied twice, none lost.
        let pages = line("pages:");
        let count = |what: &str| -> u64 {
            let words: Vec<&str> = pages.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            let i = words.iter().position(|w| *w == what).unwrap();
            words[i - 1].parse().unwrap()
        };
        assert_eq!(
            count("demand") + count("pushed"),
            (128 << 20) / 4096 - 512,
            "{mode}: {pages}"
        );
        assert!(proxy.cuts() >= 20, "{mode}: only {} cuts", proxy.cuts());
        if let Some(l) = text.lines().find(|l| l.contains("broke and were replaced")) {
            eprintln!("{mode}: {} cuts made; {l}", proxy.cuts());
        }
        assert!(
            text.contains("connections to the source broke and were replaced"),
            "{mode}: {text}"
        );
        assert!(
            said.iter()
                .any(|l| l.contains("connection to the source broke")),
            "{mode}: {said:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{mode}: too slow"
        );
        let (ok, _) = source.wait(Duration::from_secs(15));
        assert!(ok, "{mode}: the source did not end cleanly");
    }
}

fn read_lines_of(err: std::process::ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn a_handover_cut_at_any_step_leaves_the_guest_in_exactly_one_place() {
    use common::handover_cut::{HandoverCutter, Step};
    use std::net::ToSocketAddrs;
    // Before the commit reaches the source, the source keeps the guest; after, the
    // destination learns the outcome on a new connection and runs it.
    let steps = [
        (Step::BeforeSwitchover, false),
        (Step::InHandover(5), false),
        (Step::InHandover(HEADER + 300), false),
        (Step::BeforeCommit, true),
        (Step::InCommitAnswer(3), true),
    ];
    const HEADER: u64 = faultline::postcopy::net::wire::HEADER_LEN as u64;
    for (step, migrates) in steps {
        let source = Source::start(&["--vcpus", "2", "--mem", "64M", "--workload", "verify"]);
        let upstream = source.addr.to_socket_addrs().unwrap().next().unwrap();
        let cutter = HandoverCutter::start(upstream, step);
        let mut cmd = faultline();
        cmd.args(["run", "--headless", "--json", "--source"])
            .arg(cutter.addr.to_string())
            .args(["--token", &source.token])
            .args(["--duration", "500ms", "--fetch-rate", "unlimited"]);
        let first = output_within(cmd, Duration::from_secs(60));
        assert!(cutter.cut(), "{step:?}: the handover was never cut");
        let mut said: Vec<String> = Vec::new();
        if migrates {
            assert!(first.status.success(), "{step:?}: {}", stderr(&first));
            let s: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
            assert_eq!(s["verified"], true, "{step:?}: {s}");
            let (ok, rest) = source.wait(Duration::from_secs(30));
            assert!(ok, "{step:?}: {rest:?}");
            said.extend(rest);
        } else {
            // One line: the source keeps the guest.
            assert_eq!(first.status.code(), Some(1), "{step:?}: {}", stderr(&first));
            let err = stderr(&first);
            assert_eq!(err.lines().count(), 1, "{step:?}: {err}");
            assert!(err.contains("keeps the guest"), "{step:?}: {err}");
            // The source runs it on (after its wait, if it had paused it)...
            if step != Step::BeforeSwitchover {
                let deadline = Instant::now() + Duration::from_secs(15);
                while !said.iter().any(|l| l.contains("the guest runs on here")) {
                    assert!(Instant::now() < deadline, "{step:?}: {said:?}");
                    said.extend(source.lines.recv_timeout(Duration::from_millis(100)));
                }
            }
            // ...and a destination that is not cut off takes it over, every page verified.
            let second = take_over(
                &source,
                &["--duration", "300ms", "--fetch-rate", "unlimited"],
            );
            assert!(second.status.success(), "{step:?}: {}", stderr(&second));
            let s: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
            assert_eq!(s["verified"], true, "{step:?}: {s}");
            let (ok, rest) = source.wait(Duration::from_secs(30));
            assert!(ok, "{step:?}: {rest:?}");
            said.extend(rest);
        }
        // The guest was given up once, never twice, never to nobody.
        assert_eq!(
            said.iter().filter(|l| l.contains("switched over")).count(),
            1,
            "{step:?}: {said:?}"
        );
        eprintln!(
            "{step:?}: as promised; the destination said {:?}, the source {said:?}",
            stderr(&first).trim()
        );
    }
}

/// Every line `rx` gets until its sender is gone (the stream's end), for up to `within`.
fn drain(rx: &mpsc::Receiver<String>, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    lines
}

/// Runs `cmd` to its end, output captured; fails the test if it takes over `within`.
fn output_within(mut cmd: std::process::Command, within: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).map(|_| v)
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).map(|_| v)
    });
    let Some(status) = wait_for(&mut child, within) else {
        let _ = child.kill();
        panic!("{cmd:?} still runs after {within:?}");
    };
    Output {
        status,
        stdout: out.join().unwrap().unwrap(),
        stderr: err.join().unwrap().unwrap(),
    }
}

/// Moments in `[0, within)`, from a seed printed for a replay.
fn moments(seed: u64, n: usize, within: Duration) -> Vec<Duration> {
    eprintln!("kill moments: seed {seed:#x}");
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(x % within.as_millis() as u64)
        })
        .collect()
}

fn wait_for(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_source_killed_at_any_moment_ends_its_destination_in_one_line() {
    // From the offer through the boot copy, the switchover and post-copy.
    for (i, at) in moments(0x5011_CE5E, 4, Duration::from_millis(2500))
        .into_iter()
        .enumerate()
    {
        let mut source = Source::start(&["--vcpus", "2", "--mem", "64M"]);
        let mut dest = faultline()
            .args(["run", "--headless", "--source", &source.addr])
            .args(["--token", &source.token])
            .args(["--duration", "60s", "--fetch-rate", "1MiB/s"])
            .args(["--link-timeout", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let notes = read_lines_of(dest.stderr.take().unwrap());
        std::thread::sleep(at);
        source.child.kill().unwrap();
        // A commit in flight waits out the source's 5 s before it gives up.
        let status = wait_for(&mut dest, Duration::from_secs(20));
        let _ = dest.kill();
        let status = status.unwrap_or_else(|| panic!("kill {i} at {at:?}: the destination hangs"));
        let said = drain(&notes, Duration::from_secs(5));
        assert_eq!(status.code(), Some(1), "kill {i} at {at:?}: {said:?}");
        let last = said.last().expect("a line");
        assert!(
            last.starts_with("faultline: ") && last.contains(&source.addr),
            "kill {i} at {at:?}: {said:?}"
        );
        eprintln!("kill {i} at {at:?}: {last}");
    }
}

#[test]
fn a_destination_killed_at_any_moment_leaves_the_source_keeping_or_giving_up_the_guest() {
    // The handover comes within a few hundred ms of the start: most moments fall before.
    let mut at = moments(0xDE57_C1A0, 4, Duration::from_millis(700));
    at.push(Duration::from_secs(2));
    for (i, at) in at.into_iter().enumerate() {
        let mut source = Source::start(&[
            "--vcpus",
            "2",
            "--mem",
            "64M",
            "--workload",
            "verify",
            "--abandon-after",
            "2s",
        ]);
        let mut dest = faultline()
            .args(["run", "--headless", "--source", &source.addr])
            .args(["--token", &source.token])
            .args(["--duration", "60s", "--fetch-rate", "1MiB/s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        dest.kill().unwrap();
        let _ = dest.wait();
        // An unconfirmed handover is taken back within 5 s; a guest handed over is given
        // up 2 s after its destination is gone.
        let ended = wait_for(&mut source.child, Duration::from_secs(9));
        match ended {
            Some(status) => {
                let said = drain(&source.lines, Duration::from_secs(5));
                let errors = drain(&source.errors, Duration::from_secs(5));
                assert_eq!(
                    status.code(),
                    Some(1),
                    "kill {i} at {at:?}: {said:?} {errors:?}"
                );
                assert!(
                    said.iter().any(|l| l.contains("switched over")),
                    "kill {i} at {at:?}: gave up a guest it never handed over: {said:?}"
                );
                assert!(
                    errors
                        .last()
                        .is_some_and(|l| l.contains("went away without finishing")),
                    "kill {i} at {at:?}: {errors:?}"
                );
                eprintln!("kill {i} at {at:?}: the source gave up: {errors:?}");
            }
            None => {
                let said: Vec<String> = source.lines.try_iter().collect();
                // It kept the guest: a destination takes it over, every page verified.
                assert!(
                    !said.iter().any(|l| l.contains("switched over")),
                    "kill {i} at {at:?}: handed over, yet still running: {said:?}"
                );
                let out = take_over(
                    &source,
                    &["--duration", "300ms", "--fetch-rate", "unlimited"],
                );
                assert!(out.status.success(), "kill {i} at {at:?}: {}", stderr(&out));
                let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(s["verified"], true, "kill {i} at {at:?}: {s}");
                eprintln!("kill {i} at {at:?}: the source kept the guest: {said:?}");
            }
        }
    }
}
