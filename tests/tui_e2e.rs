//! The real binary in a pseudo-terminal, on the real /dev/kvm: what an operator sees and
//! does. The screen is read back through a terminal emulator (vt100).

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{CommandBuilder, PtySize, native_pty_system};

const ROWS: u16 = 30;
const COLS: u16 = 100;

struct Session {
    screen: Arc<Mutex<vt100::Parser>>,
    raw: Arc<Mutex<Vec<u8>>>,
    writer: Option<Box<dyn Write + Send>>,
    master: Option<Box<dyn portable_pty::MasterPty + Send>>,
    /// Stops the reader thread, which holds the other descriptor of the terminal's master.
    stop_reader: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    log: tempfile_path::TempLog,
}

/// A log file path that is removed at the end of the test.
mod tempfile_path {
    pub struct TempLog(pub std::path::PathBuf);
    impl Drop for TempLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Session {
    fn start(args: &[&str]) -> Session {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        // One log per session: the tests of this file run in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log =
            std::env::temp_dir().join(format!("faultline-e2e-{}-{n}.log", std::process::id()));
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_faultline"));
        cmd.args(args);
        cmd.arg("--log");
        cmd.arg(&log);
        cmd.env("TERM", "xterm-256color");
        let child = pty.slave.spawn_command(cmd).unwrap();
        drop(pty.slave);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            std::num::NonZero::new(ROWS).unwrap(),
            std::num::NonZero::new(COLS).unwrap(),
            0,
        )));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let mut reader = pty.master.try_clone_reader().unwrap();
        let master_fd = pty.master.as_raw_fd().unwrap();
        let stop_reader = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, r, stop) = (screen.clone(), raw.clone(), stop_reader.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Polls with a timeout, so that it can be stopped and its descriptor closed.
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let mut pfd = libc::pollfd {
                    fd: master_fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; the master stays open until this thread ends.
                if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                    continue;
                }
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        s.lock().unwrap().process(&buf[..n]);
                        r.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                }
            }
        });
        let writer = pty.master.take_writer().unwrap();
        Session {
            screen,
            raw,
            writer: Some(writer),
            master: Some(pty.master),
            stop_reader,
            reader: Some(reader),
            child,
            log: tempfile_path::TempLog(log),
        }
    }

    /// Closes the terminal for good, as a closed window or a dropped ssh link does: every
    /// descriptor of its master goes, and the kernel hangs up the program's session.
    fn hang_up(&mut self) {
        self.stop_reader
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.writer = None;
        self.master = None;
    }

    fn text(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let t = self.text();
            if pred(&t) {
                return t;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; screen:\n{t}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn keys(&mut self, s: &str) {
        let w = self.writer.as_mut().unwrap();
        w.write_all(s.as_bytes()).unwrap();
        w.flush().unwrap();
    }

    fn wait_exit(&mut self) -> portable_pty::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the program did not exit; screen:\n{}\nlog:\n{}",
                self.text(),
                std::fs::read_to_string(&self.log.0).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A failed test must not leave a VM running behind it.
        let _ = self.child.kill();
    }
}

/// A number that follows `label ` on the screen, e.g. `missing 1234`.
fn number_after(screen: &str, label: &str) -> Option<u64> {
    let rest = &screen[screen.find(label)? + label.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Total fault count over the vCPU rows (`vN state... faults ...`).
fn total_faults(screen: &str) -> u64 {
    screen
        .lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.trim_start_matches('│').split_whitespace().collect();
            let is_row = t.first().is_some_and(|f| {
                f.len() > 1 && f.starts_with('v') && f[1..].chars().all(|c| c.is_ascii_digit())
            });
            if !is_row {
                return None;
            }
            let at = if t.get(1) == Some(&"stalled") { 4 } else { 2 };
            t.get(at)?.parse::<u64>().ok()
        })
        .sum()
}

/// A small live run, signalled with `sig` once post-copy shows; returns its exit status.
fn signalled_run(sig: i32) -> (Session, portable_pty::ExitStatus) {
    let mut s = Session::start(&["run", "--vcpus", "1", "--mem", "128M", "--warmup", "200ms"]);
    s.wait_for("the post-copy screen", |t| {
        t.contains("post-copy") && t.contains("v0")
    });
    let pid = s.child.process_id().unwrap() as i32;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    let status = s.wait_exit();
    (s, status)
}

#[test]
fn a_closed_terminal_ends_the_run_and_the_log_keeps_its_summary() {
    let mut s = Session::start(&["run", "--vcpus", "1", "--mem", "128M", "--warmup", "200ms"]);
    s.wait_for("the post-copy screen", |t| {
        t.contains("post-copy") && t.contains("v0")
    });
    // No signal from us: the kernel's hang-up, and a terminal that no longer takes writes.
    s.hang_up();
    let status = s.wait_exit();
    // The run ends as after SIGHUP: checked, summarized in the log, and not a failure.
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&s.log.0).unwrap();
    assert!(log.contains("live view closed"), "{log}");
    assert!(
        log.contains("run finished") && log.contains("\"verified\":true"),
        "{log}"
    );
}

#[test]
fn sigterm_restores_the_terminal_and_still_checks_the_run() {
    let (s, status) = signalled_run(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    let raw = String::from_utf8_lossy(&s.raw.lock().unwrap()).to_string();
    assert!(raw.contains("\x1b[?1049l"), "alternate screen not left");
    assert!(!s.screen.lock().unwrap().screen().alternate_screen());
    assert!(s.text().contains("verified"), "{}", s.text());
}

fn percent_filled(screen: &str) -> Option<f64> {
    screen.lines().find_map(|l| {
        let l = l.trim_end();
        let p = l.strip_suffix('%')?;
        p.rsplit(' ').next()?.parse().ok()
    })
}

#[test]
fn a_live_run_shows_vcpus_and_progress_takes_throttle_and_quits_cleanly() {
    let mut s = Session::start(&[
        "run",
        "--vcpus",
        "2",
        "--mem",
        "256M",
        "--fetch-rate",
        "8MiB/s",
        "--warmup",
        "300ms",
    ]);
    let first = s.wait_for("the post-copy screen", |t| {
        t.contains("post-copy") && t.contains("v0") && t.contains("v1") && t.contains("8.0 MiB/s")
    });
    let p0 = percent_filled(&first).unwrap_or(0.0);
    let later = s.wait_for("the gauge to move", |t| {
        percent_filled(t).is_some_and(|p| p > p0 + 1.0)
    });
    assert!(total_faults(&later) > 0, "{later}");

    // `+` steps the throttle up the ladder; the header shows it.
    s.keys("+");
    s.wait_for("the new throttle", |t| t.contains("throttle 10.0 MiB/s"));

    // `?` opens the help over everything; Esc closes it.
    s.keys("?");
    s.wait_for("help", |t| t.contains("Enter") && t.contains("quit"));
    s.keys("\x1b");
    // A lone Esc followed at once by a key reads as Alt+key: let it land first.
    s.wait_for("help to close", |t| !t.contains("quit"));

    // A bad rate is refused in the status line, and the run goes on.
    s.keys("tbanana\r");
    s.wait_for("the error", |t| t.contains("banana"));

    s.keys("q");
    let status = s.wait_exit();
    assert!(status.success(), "exit {status:?}");
    let raw = s.raw.lock().unwrap().clone();
    let raw = String::from_utf8_lossy(&raw);
    // Left the alternate screen and showed the cursor again; then the summary.
    assert!(raw.contains("\x1b[?1049l"), "alternate screen not left");
    assert!(raw.contains("\x1b[?25h"), "cursor not shown again");
    assert!(!s.screen.lock().unwrap().screen().alternate_screen());
    let after = s.text();
    assert!(after.contains("verified"), "{after}");
}

#[test]
fn a_link_taken_down_stalls_the_vcpus_until_it_comes_back() {
    let mut s = Session::start(&[
        "run",
        "--vcpus",
        "2",
        "--mem",
        "256M",
        "--transport",
        "tcp",
        "--fetch-rate",
        "8MiB/s",
        "--warmup",
        "300ms",
    ]);
    s.wait_for("the post-copy screen over tcp", |t| {
        t.contains("post-copy") && t.contains("v1") && t.contains("link up")
    });
    s.keys("n");
    // Both vCPUs fault all along: both end up waiting on the source.
    let down = s.wait_for("the link down and both vCPUs stalled", |t| {
        t.contains("link DOWN") && t.matches("stalled").count() >= 2
    });
    let faults_down = total_faults(&down);
    s.keys("n");
    s.wait_for("the link back and faults going on", |t| {
        t.contains("link up") && total_faults(t) > faults_down + 100
    });
    s.keys("q");
    assert!(s.wait_exit().success());
    assert!(s.text().contains("verified"), "{}", s.text());
}

#[test]
fn the_prefetch_key_turns_on_windows_and_the_view_counts_what_they_bring() {
    let mut s = Session::start(&[
        "run",
        "--vcpus",
        "2",
        "--mem",
        "512M",
        "--workload",
        "sequential-write",
        "--push",
        "off",
        "--fetch-rate",
        "16MiB/s",
        "--warmup",
        "300ms",
    ]);
    s.wait_for("the post-copy screen", |t| {
        t.contains("post-copy") && t.contains("v1")
    });
    // Off by default, so the header says nothing of it; two presses: 16 pages, adaptive.
    let before = s.text();
    assert!(!before.contains("prefetch "), "{before}");
    s.keys("f");
    s.wait_for("a fixed window in force", |t| t.contains("prefetch 16"));
    s.keys("f");
    s.wait_for("adaptive prefetch bringing pages in", |t| {
        t.contains("prefetch adaptive") && number_after(t, "prefetched").is_some_and(|n| n > 1000)
    });
    s.keys("q");
    assert!(s.wait_exit().success());
    let end = s.text();
    assert!(end.contains("verified"), "{end}");
}

#[test]
fn an_injected_range_turns_missing_and_faults_follow() {
    let mut s = Session::start(&[
        "run",
        "--vcpus",
        "2",
        "--mem",
        "256M",
        "--workload",
        "sequential-read",
        "--fetch-rate",
        "unlimited",
        "--warmup",
        "300ms",
    ]);
    let done = s.wait_for("post-copy to complete", |t| {
        t.contains("complete") && t.contains("v1")
    });
    let faults_before = total_faults(&done);
    // With the push paused, only the vCPUs' own faults bring pages back.
    s.keys("p");
    s.wait_for("push off", |t| t.contains("push off"));
    // 64 MiB that both vCPUs read through: it goes missing and comes back on demand.
    s.keys("i0x4000000+64M\r");
    assert_eq!(number_after(&done, "missing"), Some(0), "{done}");
    let after = s.wait_for("the injection", |t| t.contains("injected"));
    assert!(after.contains("injected 16384 pages"), "{after}");
    // The pages turn missing at once (the push is off), and the vCPUs fault them back in.
    let missing = s.wait_for("missing pages", |t| {
        number_after(t, "missing").is_some_and(|m| m > 0)
    });
    assert!(
        number_after(&missing, "missing").unwrap() <= 16384,
        "{missing}"
    );
    let refaulted = s.wait_for("new faults", |t| total_faults(t) > faults_before);
    assert!(
        number_after(&refaulted, "demand").is_some_and(|d| d > 0),
        "{refaulted}"
    );

    // A range outside RAM is refused where it is typed; nothing is sent.
    s.keys("i0x40000000+1M\r");
    s.wait_for("the refusal", |t| t.contains("outside"));

    s.keys("q");
    assert!(s.wait_exit().success());
}

#[test]
fn attach_watches_and_steers_a_headless_run_and_replay_shows_its_recording() {
    let dir = std::env::temp_dir().join(format!("faultline-attach-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (sock, rec) = (dir.join("run.sock"), dir.join("run.rec"));
    let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args([
            "run",
            "--headless",
            "--vcpus",
            "2",
            "--mem",
            "256M",
            "--warmup",
            "200ms",
        ])
        .args(["--fetch-rate", "8MiB/s", "--duration", "4s", "--control"])
        .arg(&sock)
        .arg("--record")
        .arg(&rec)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no control socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut s = Session::start(&["attach", sock.to_str().unwrap()]);
    s.wait_for("the served run", |t| {
        t.contains("post-copy") && t.contains("v1") && t.contains("ATTACHED")
    });
    s.keys("+");
    s.wait_for("the throttle it set", |t| t.contains("throttle 10.0 MiB/s"));
    s.keys("q");
    assert!(s.wait_exit().success());
    assert!(s.text().contains("detached"), "{}", s.text());
    assert!(
        run.wait().unwrap().success(),
        "the run outlives its observer"
    );

    let mut r = Session::start(&["replay", rec.to_str().unwrap(), "--speed", "8"]);
    r.wait_for("the replay", |t| {
        t.contains("v1") && t.contains("REPLAY 8x")
    });
    r.keys("?");
    r.wait_for("the replay keys in the help", |t| t.contains("seek 5 s"));
    r.keys("\x1b");
    r.wait_for("help to close", |t| !t.contains("seek 5 s"));
    r.keys(">");
    r.wait_for("the new speed", |t| t.contains("REPLAY 16x"));
    r.keys(" ");
    r.wait_for("the pause", |t| t.contains("PAUSED"));
    r.keys(" ");
    r.wait_for("the end of the run", |t| t.contains("finished"));
    // Once nothing new arrives to overwrite the status line: a recording takes no orders.
    r.keys("p");
    r.wait_for("the refusal", |t| t.contains("cannot be steered"));
    r.keys("q");
    assert!(r.wait_exit().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_live_view_takes_over_a_guest_from_another_process_and_names_it() {
    use std::io::BufRead;
    let mut source = std::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["source", "--vcpus", "2", "--mem", "128M"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(source.stdout.take().unwrap()).lines();
    let mut how = String::new();
    while !how.contains("--token") {
        how = lines
            .next()
            .expect("the source says how to take it over")
            .unwrap();
    }
    let words: Vec<&str> = how.split_whitespace().collect();
    let after = |flag| words[words.iter().position(|w| *w == flag).unwrap() + 1];
    let (addr, token) = (after("--source"), after("--token"));
    let mut s = Session::start(&[
        "run",
        "--source",
        addr,
        "--token",
        token,
        "--fetch-rate",
        "8MiB/s",
    ]);
    let from = format!("from {addr}");
    s.wait_for("post-copy from the other process", |t| {
        t.contains("post-copy") && t.contains("v1") && t.contains(&from)
    });
    s.keys("n");
    s.wait_for("why the link key does nothing", |t| {
        t.contains("the source is another process")
    });
    s.keys("q");
    assert!(s.wait_exit().success());
    assert!(s.text().contains("verified"), "{}", s.text());
    // Released once the destination had every page, the source ends by itself.
    let start = Instant::now();
    let status = loop {
        if let Some(st) = source.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = source.kill();
            panic!("the source did not end");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}
