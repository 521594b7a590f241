//! Runs served on a control socket, observed by several peers, recorded and replayed; the
//! real binary on the real /dev/kvm.

mod common;

use common::{Scratch, faultline};

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use faultline::contract::Action;
use faultline::control::protocol::{self, Message, VERSION};
use faultline::units::Rate;

/// A headless run serving `sock` (and recording to `record`), as a child process.
fn serve(sock: &Path, record: &Path, duration: &str) -> Child {
    let child = faultline()
        .args([
            "run",
            "--headless",
            "--json",
            "--vcpus",
            "2",
            "--mem",
            "128M",
        ])
        .args([
            "--fetch-rate",
            "8MiB/s",
            "--warmup",
            "200ms",
            "--duration",
            duration,
        ])
        .arg("--control")
        .arg(sock)
        .arg("--record")
        .arg(record)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the socket never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn hello(stream: &mut UnixStream) {
    protocol::write_frame(
        stream,
        &Message::Hello {
            version: VERSION,
            peer: "test".into(),
        },
        false,
    )
    .unwrap();
    match protocol::read_frame(stream).unwrap() {
        Some(Message::Hello { version, .. }) => assert_eq!(version, VERSION),
        other => panic!("expected hello, got {other:?}"),
    }
}

fn observer(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    hello(&mut s);
    s
}

/// Reads snapshots until one satisfies `pred`.
fn snapshot_where(
    s: &mut UnixStream,
    pred: impl Fn(&faultline::contract::Snapshot) -> bool,
) -> faultline::contract::Snapshot {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no such snapshot came"
        );
        if let Some(Message::Snapshot(snap)) = protocol::read_frame(s).unwrap()
            && pred(&snap)
        {
            return *snap;
        }
    }
}

/// What the server says before it closes a connection.
fn refusal(s: &mut UnixStream) -> String {
    loop {
        match protocol::read_frame(s) {
            Ok(Some(Message::Error { message })) => return message,
            Ok(Some(_)) => {}
            other => panic!("expected an error frame, got {other:?}"),
        }
    }
}

fn finish(child: Child) -> (Output, serde_json::Value) {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let v = serde_json::from_slice(&out.stdout).unwrap();
    (out, v)
}

#[test]
fn observers_share_a_run_and_bad_peers_only_hurt_themselves() {
    let dir = Scratch::new("observers");
    let (sock, rec) = (dir.path("run.sock"), dir.path("run.rec"));
    let run = serve(&sock, &rec, "3s");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );

    // A second run on the same live socket is refused, with one line, before it starts.
    let out = faultline()
        .args(["run", "--headless", "--mem", "64M", "--control"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already serving"));

    let mut a = observer(&sock);
    let mut b = observer(&sock);
    snapshot_where(&mut b, |s| s.throttle == "8.0 MiB/s");
    protocol::write_frame(
        &mut a,
        &Message::Command(Action::Throttle(Rate::BytesPerSec(16 << 20))),
        false,
    )
    .unwrap();
    // The other observer sees the change in its stream.
    snapshot_where(&mut b, |s| s.throttle == "16.0 MiB/s");

    // An observer killed in the middle of a frame.
    let mut c = observer(&sock);
    let mut frame = Vec::new();
    protocol::write_frame(&mut frame, &Message::Command(Action::Push(true)), false).unwrap();
    c.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(c);

    // Each kind of bad frame: refused with a reason, that connection closed.
    let mut good = Vec::new();
    protocol::write_frame(&mut good, &Message::Command(Action::Push(true)), false).unwrap();
    let mut bad_magic = good.clone();
    bad_magic[0] = b'Z';
    let mut bad_version = good.clone();
    bad_version[2] = VERSION + 1;
    let mut oversized = good.clone();
    oversized[4..8].copy_from_slice(&(protocol::MAX_FRAME + 1).to_be_bytes());
    let mut garbage = good.clone();
    let n = garbage.len();
    garbage[n - 3..].copy_from_slice(b"}}}");
    for (bad, why) in [
        (&bad_magic, "magic"),
        (&bad_version, "version"),
        (&oversized, "limit"),
        (&garbage, "malformed"),
    ] {
        let mut s = observer(&sock);
        s.write_all(bad).unwrap();
        let message = refusal(&mut s);
        assert!(message.contains(why), "{why}: {message}");
    }
    // A peer that does not start with hello.
    let mut rude = UnixStream::connect(&sock).unwrap();
    rude.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    rude.write_all(&good).unwrap();
    assert!(refusal(&mut rude).contains("hello"));

    drop(a);
    let summary = snapshot_where(&mut b, |s| s.summary.is_some())
        .summary
        .unwrap();
    let (_, printed) = finish(run);
    assert_eq!(printed["verified"], true, "{printed:#}");
    assert_eq!(serde_json::to_value(&summary).unwrap(), printed);
    assert!(
        !sock.exists(),
        "the socket file is removed when the run ends"
    );

    // The recording replays to the same summary.
    let out = faultline()
        .arg("replay")
        .arg(&rec)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replayed, printed);

    // Cut in the middle of its last frame, it still reads up to there.
    let whole = faultline::control::record::read(&rec).unwrap();
    assert!(whole.cut.is_none());
    let bytes = std::fs::read(&rec).unwrap();
    let cut = dir.path("cut.rec");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let part = faultline::control::record::read(&cut).unwrap();
    assert_eq!(part.snapshots.len(), whole.snapshots.len() - 1);
    assert!(part.cut.unwrap().contains("middle of a frame"));
    assert_eq!(
        part.snapshots[..],
        whole.snapshots[..whole.snapshots.len() - 1]
    );
    let out = faultline()
        .arg("replay")
        .arg(&cut)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ends before the run finished"));
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = Scratch::new("stale");
    let sock = dir.path("stale.sock");
    // A socket file whose run is gone.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let run = serve(&sock, &dir.path("r.rec"), "500ms");
    let (_, printed) = finish(run);
    assert_eq!(printed["verified"], true);
}

#[test]
fn bad_recordings_and_sockets_are_one_line_errors() {
    let dir = Scratch::new("bad");
    let junk = dir.path("junk.rec");
    std::fs::write(&junk, b"this is not a recording").unwrap();
    let out = faultline()
        .arg("replay")
        .arg(&junk)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a faultline recording"));

    let file = dir.path("plain");
    std::fs::write(&file, b"x").unwrap();
    let out = faultline()
        .args(["run", "--headless", "--control"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert!(
        file.exists(),
        "a file that is not a socket is never removed"
    );
}

#[test]
fn a_recording_made_before_the_contract_module_still_reads_and_replays() {
    // Made by the binary of 78bc36b, when mode, backing and transport travelled as strings.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/recorded-before-the-contract.rec");
    let rec = faultline::control::record::read(&path).unwrap();
    assert!(rec.cut.is_none());
    let last = rec.snapshots.last().unwrap();
    assert_eq!(last.run.mode, faultline::contract::FaultMode::Exit);
    assert_eq!(last.run.backing, Some(faultline::contract::Backing::Shared));
    assert_eq!(
        last.run.transport,
        Some(faultline::contract::Transport::Local)
    );
    let summary = last.summary.as_ref().unwrap();
    assert!(summary.verified);
    assert!(summary.legs.is_empty() && summary.throttle_initial.is_none());
    let out = faultline()
        .args(["replay", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["mode"], "exit");
    assert_eq!(j["backing"], "shmem");
    assert_eq!(j["transport"], "local");
}

#[test]
fn replay_prints_one_frame_at_a_moment_as_text_and_says_when_the_moment_is_past_the_end() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/recorded-before-the-contract.rec");
    let rec = faultline::control::record::read(&path).unwrap();
    let mid = rec.snapshots[rec.snapshots.len() / 2].elapsed_ms;
    let out = faultline()
        .arg("replay")
        .arg(&path)
        .args(["--screen", "--size", "100x30", "--at"])
        .arg(format!("{mid}ms"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 30, "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    // The frame of that moment: the header's elapsed time is the snapshot's.
    let header = text.lines().next().unwrap();
    assert!(header.starts_with("faultline"), "{text}");
    assert!(
        header.contains(&format!("elapsed {}s", mid / 1000)),
        "{header} at {mid} ms"
    );
    let out = faultline()
        .arg("replay")
        .arg(&path)
        .args(["--screen", "--at", "999s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("the recording ends at"), "{err}");
}
