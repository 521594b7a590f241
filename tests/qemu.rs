//! Real QEMU post-copy migrations on this host (QEMU 10 under TCG): `faultline qemu`
//! launching one, `faultline attach --qmp` following a pair this test starts by hand, and
//! the one-line refusals of what cannot be followed.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use faultline::qemu::qmp::Qmp;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_faultline");

mod common;

use common::Scratch;

/// One QEMU pair at a time: two TCG guests already fill the two cores CI has.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A QEMU started by the test, killed at the end.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A QEMU as the README's how-to starts one: its own QMP socket for the observer, the
/// post-copy trace events in a file with timestamps, faultline's guest on a debug console.
fn start_qemu(dir: &Scratch, side: &str, incoming: bool) -> Qemu {
    let image = dir.path("guest.bin");
    if !image.exists() {
        let w = "verify".parse().unwrap();
        let img = faultline::guest::boot::build(&w, 2, 256 << 20, 0xE9).unwrap();
        std::fs::write(&image, img.bytes).unwrap();
    }
    let p = |n: &str| dir.path(&format!("{side}{n}")).display().to_string();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "pc", "-accel", "tcg", "-m", "256M", "-smp", "2"])
        .args(["-display", "none", "-nodefaults"])
        .args(["-name", &format!("{side},debug-threads=on")])
        .arg("-kernel")
        .arg(&image)
        .args(["-chardev", &format!("file,id=con,path={}", p(".console"))])
        .args(["-device", "isa-debugcon,iobase=0xe9,chardev=con"])
        .args(["-qmp", &format!("unix:{},server=on,wait=off", p(".qmp"))])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", p("-observer.qmp")),
        ])
        .args(["-msg", "timestamp=on", "-D", &p(".trace")])
        .args(["-trace", "mark_postcopy_blocktime_*"])
        .args(["-trace", "postcopy_ram_fault_thread_request"]);
    if incoming {
        cmd.args(["-incoming", "defer"]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 must be installed (.ci/run installs it)");
    Qemu(child)
}

fn connect(path: &Path) -> Qmp {
    let start = Instant::now();
    loop {
        if let Ok(q) = Qmp::connect(path) {
            return q;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no QMP at {path:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn caps(names: &[&str]) -> Value {
    json!({"capabilities": names.iter().map(|n| json!({"capability": n, "state": true})).collect::<Vec<_>>()})
}

fn fails_with(out: &Output, code: i32, words: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(words), "{err}");
}

fn attach(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("attach")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn faultline_qemu_migrates_post_copy_and_its_stalls_agree_with_the_kernels_clock() {
    let _serial = one_at_a_time();
    let dir = Scratch::new("headless");
    let rec = dir.path("q.rec");
    let out = Command::new(BIN)
        .args([
            "qemu",
            "--headless",
            "--json",
            "--vcpus",
            "2",
            "--mem",
            "256M",
        ])
        .args(["--fetch-rate", "32MiB/s", "--precopy", "1s", "--record"])
        .arg(&rec)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["verified"], true, "{s:#}");
    assert_eq!(s["postcopy_complete"], true);
    assert_eq!(s["verify"]["mismatches"], 0);
    let q = &s["qemu"];
    assert_eq!(q["state"], "completed");
    assert!(q["trace_events"].as_u64().unwrap() > 1000);
    for v in q["vcpus"].as_array().unwrap() {
        let stall = v["stall_ms"].as_f64().unwrap();
        let off = v["offcpu_ms"].as_f64().unwrap();
        // The bar: within 5% of the vCPU thread's off-CPU time.
        assert!(off > 1000.0, "a vCPU barely stalled: {v}");
        assert!(
            (stall - off).abs() / off < 0.05,
            "stall {stall} vs off-CPU {off}"
        );
        assert!(
            v["qemu_blocktime_ms"].as_f64().is_some(),
            "QEMU's own figure: {v}"
        );
    }
    let per_vcpu = s["per_vcpu"].as_array().unwrap();
    assert_eq!(per_vcpu.len(), 2);
    for v in per_vcpu {
        assert!(v["fault_exits"].as_u64().unwrap() > 0);
        assert!(v["offcpu_ms"].as_f64().is_some() && v["qemu_blocktime_ms"].as_f64().is_some());
    }
    // Live: stalls show per vCPU while QEMU is still in post-copy.
    let recording = faultline::control::record::read(&rec).unwrap();
    let live = recording
        .snapshots
        .iter()
        .find(|s| {
            s.qemu
                .as_ref()
                .is_some_and(|q| q.state == "postcopy-active")
                && s.vcpus.iter().all(|v| v.stall_ms > 100.0)
        })
        .expect("a post-copy snapshot with every vCPU stalled");
    assert!(live.vcpus.iter().all(|v| v.faults > 0));
    // Replayed, the summary has faultline's keys and QEMU's figures beside them.
    let replay = Command::new(BIN)
        .args(["replay", "--json"])
        .arg(&rec)
        .output()
        .unwrap();
    assert!(replay.status.success());
    let r: Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert!(r["blocktime_all_ms"].as_f64().is_some());
    assert!(r["latency_us"]["p99"].as_u64().is_some());
    assert!(r["per_vcpu"][1]["stall_ms"].as_f64().unwrap() > 0.0);
    assert!(r["per_vcpu"][1]["offcpu_ms"].as_f64().is_some());
    assert!(
        r["qemu"]["vcpus"][0]["qemu_blocktime_ms"]
            .as_f64()
            .is_some()
    );
}

/// A terminal for the live view: tmux, read with capture-pane.
struct Tmux(String);

impl Tmux {
    fn start(name: &str, cmd: &str) -> Tmux {
        let s = Tmux(format!("flq-{}-{name}", std::process::id()));
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &s.0,
                "-x",
                "160",
                "-y",
                "48",
                cmd,
            ])
            .status()
            .unwrap();
        assert!(ok.success());
        s
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self, keys: &[&str]) {
        Command::new("tmux")
            .args(["send-keys", "-t", &self.0])
            .args(keys)
            .status()
            .unwrap();
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn attach_follows_a_qemu_pair_started_by_hand_throttles_pauses_and_recovers_it() {
    let _serial = one_at_a_time();
    let dir = Scratch::new("attach");
    let _dst = start_qemu(&dir, "dst", true);
    let _src = start_qemu(&dir, "src", false);
    let mut dst = connect(&dir.path("dst.qmp"));
    let mut src = connect(&dir.path("src.qmp"));
    let uri = format!("unix:{}", dir.path("mig.sock").display());
    dst.execute(
        "migrate-set-capabilities",
        Some(caps(&["postcopy-ram", "postcopy-blocktime", "events"])),
    )
    .unwrap();
    dst.execute("migrate-incoming", Some(json!({ "uri": uri })))
        .unwrap();
    src.execute(
        "migrate-set-capabilities",
        Some(caps(&["postcopy-ram", "events"])),
    )
    .unwrap();
    // Pre-copy slow enough that it cannot finish before post-copy starts (a guest with
    // little but zero pages once did, at 24 MiB/s in 1.5 s); post-copy at 24 MiB/s.
    let rate = 24u64 << 20;
    src.execute(
        "migrate-set-parameters",
        Some(json!({"max-bandwidth": 4u64 << 20, "max-postcopy-bandwidth": rate})),
    )
    .unwrap();
    let cmd = format!(
        "{BIN} attach --qmp {} --trace {} --source-qmp {} --log {}; sleep 60",
        dir.path("dst-observer.qmp").display(),
        dir.path("dst.trace").display(),
        dir.path("src-observer.qmp").display(),
        dir.path("attach.log").display()
    );
    let tmux = Tmux::start("attach", &cmd);
    tmux.wait_for("the view", 20, |s| {
        s.contains("QEMU 10") && s.contains("vCPUs (2)")
    });
    src.execute("migrate", Some(json!({ "uri": uri }))).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    src.execute("migrate-start-postcopy", None).unwrap();
    let s = tmux.wait_for("post-copy stalls", 20, |s| {
        s.contains("postcopy-active") && s.contains("stalled")
    });
    assert!(s.contains("stall by three clocks"), "{s}");
    assert!(s.contains("link up"), "{s}");
    // The throttle goes to the source's QEMU.
    tmux.keys(&["t"]);
    tmux.keys(&["-l", "16MiB/s"]);
    tmux.keys(&["Enter"]);
    let start = Instant::now();
    loop {
        let p = src.execute("query-migrate-parameters", None).unwrap();
        if p["max-postcopy-bandwidth"] == json!(16u64 << 20) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "throttle not set: {p}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    tmux.wait_for("the new throttle", 10, |s| {
        s.contains("throttle 16.0 MiB/s")
    });
    // QEMU's own post-copy recovery: pause both sides, then recover.
    tmux.keys(&["n"]);
    let s = tmux.wait_for("the pause", 10, |s| {
        s.contains("postcopy-paused") && s.contains("link DOWN")
    });
    assert!(!s.contains("NOT VERIFIED"));
    std::thread::sleep(Duration::from_secs(1));
    tmux.keys(&["n"]);
    tmux.wait_for("recovery", 10, |s| {
        s.contains("postcopy-active") || s.contains("completed")
    });
    let s = tmux.wait_for("completion", 90, |s| s.contains("completed"));
    assert!(
        s.contains("pages 65666/65666") || s.contains("100.0%"),
        "{s}"
    );
    let m = dst.execute("query-migrate", None).unwrap();
    assert_eq!(m["status"], "completed");
    // The guest checked every page it stamped: no mismatch byte on its console.
    std::thread::sleep(Duration::from_millis(500));
    let console = std::fs::read(dir.path("dst.console")).unwrap();
    assert!(
        !console.iter().any(|b| b & 0xC0 == 0x40),
        "the guest saw a bad page"
    );
    assert!(console.len() > 100, "the guest ran on the destination");
    tmux.keys(&["q"]);
    let s = tmux.wait_for("the summary", 20, |s| {
        s.contains("verified: migration completed")
    });
    assert!(s.contains("three clocks"), "{s}");
}

#[test]
fn what_cannot_be_followed_is_refused_in_one_line() {
    let _serial = one_at_a_time();
    let dir = Scratch::new("refusals");
    let trace = dir.path("t.trace");
    std::fs::write(&trace, "").unwrap();
    let t = trace.to_str().unwrap();
    fails_with(
        &attach(&["--qmp", "/nonexistent/q.sock", "--trace", t]),
        2,
        "no QMP socket there",
    );
    // A socket that speaks something else.
    let sock = dir.path("http.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    fails_with(
        &attach(&["--qmp", sock.to_str().unwrap(), "--trace", t]),
        2,
        "not a QMP socket",
    );
    // A QEMU that is nobody's destination.
    let _plain = start_qemu(&dir, "plain", false);
    let plain = dir.path("plain-observer.qmp");
    connect(&dir.path("plain.qmp"));
    fails_with(
        &attach(&["--qmp", plain.to_str().unwrap(), "--trace", t]),
        2,
        "not a migration destination",
    );
    // A destination whose trace file is not there.
    let _dst = start_qemu(&dir, "dst", true);
    connect(&dir.path("dst.qmp"));
    let out = attach(&[
        "--qmp",
        dir.path("dst-observer.qmp").to_str().unwrap(),
        "--trace",
        "/nonexistent/dst.trace",
    ]);
    fails_with(&out, 2, "/nonexistent/dst.trace: cannot read");
    // Without QEMU on PATH, `faultline qemu` says how to install it.
    let out = Command::new(BIN)
        .args(["qemu", "--headless"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    fails_with(&out, 2, "apt-get install -t bookworm-backports");
    let out = Command::new(BIN)
        .arg("qemu")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    fails_with(&out, 2, "use `faultline qemu --headless`");
}

#[test]
fn a_qemu_that_dies_mid_run_ends_the_watch_with_one_line() {
    let _serial = one_at_a_time();
    let run = Command::new(BIN)
        .args([
            "qemu",
            "--headless",
            "--fetch-rate",
            "8MiB/s",
            "--precopy",
            "1s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = run.id();
    let start = Instant::now();
    // The destination is the QEMU child started with -incoming; kill it in post-copy.
    std::thread::sleep(Duration::from_secs(4));
    let dst = Command::new("pgrep")
        .args(["-P", &pid.to_string(), "-f", "faultline-dst"])
        .output()
        .unwrap();
    let dst_pid = String::from_utf8_lossy(&dst.stdout).trim().to_string();
    assert!(!dst_pid.is_empty(), "no destination QEMU under {pid}");
    Command::new("kill")
        .args(["-9", &dst_pid])
        .status()
        .unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(40), "it hung");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(last.starts_with("faultline: DISCONNECTED:"), "{err}");
}
