//! `faultline report` from a real recording: the page opens in headless Chromium with no
//! console error, its DOM holds every figure, its tables say what the recording's summary
//! says, and its screenshot is not blank; a cut recording is reported as far as it goes.

mod common;

use std::process::Command;

use common::{Scratch, faultline, stderr};

/// A short run of the default scenario's guest, recorded.
fn record(dir: &Scratch) -> std::path::PathBuf {
    let rec = dir.path("run.rec");
    let out = faultline()
        .args([
            "run",
            "--headless",
            "--vcpus",
            "2",
            "--mem",
            "256M",
            "--duration",
            "2s",
        ])
        .args(["--warmup", "500ms", "--record"])
        .arg(&rec)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    rec
}

fn chromium() -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-logging=stderr",
    ]);
    c
}

#[test]
fn a_report_of_a_real_run_opens_in_chromium_and_says_what_the_summary_says() {
    let dir = Scratch::new("report");
    let rec = record(&dir);
    let html = dir.path("run.html");
    let svgs = dir.path("svg");
    let out = faultline()
        .arg("report")
        .arg(&rec)
        .arg("-o")
        .arg(&html)
        .arg("--svg")
        .arg(&svgs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(&html).unwrap();
    let summary = faultline::control::record::read(&rec)
        .unwrap()
        .snapshots
        .last()
        .and_then(|s| s.summary.clone())
        .expect("a finished run's summary");

    // Opened by a browser: the DOM it built, and nothing said on its console.
    let browsed = chromium()
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs (scripts/test installs it)");
    assert!(browsed.status.success(), "{}", stderr(&browsed));
    let console = stderr(&browsed);
    assert!(
        !console.contains("CONSOLE") && !console.contains("Uncaught"),
        "{console}"
    );
    let dom = String::from_utf8_lossy(&browsed.stdout);
    let mut figures = vec![
        "timeline".to_string(),
        "stall-heatmap".into(),
        "fault-heatmap".into(),
        "fill".into(),
        "latency".into(),
    ];
    figures.extend((0..summary.vcpus).map(|v| format!("latency-vcpu-{v}")));
    for id in &figures {
        // The browser's DOM: an svg element of that id, whatever order its attributes came in.
        assert!(
            dom.split("<svg ").skip(1).any(|tag| tag
                .split('>')
                .next()
                .is_some_and(|attrs| attrs.contains(&format!("id=\"{id}\"")))),
            "no figure {id}"
        );
        let file = svgs.join(format!("{id}.svg"));
        assert!(
            std::fs::metadata(&file).is_ok_and(|m| m.len() > 500),
            "{file:?}"
        );
    }
    // The tables are the summary's numbers.
    assert!(dom.contains(&format!(
        "{}: {} pages checked, {} mismatches, {} guest errors",
        summary.verdict(),
        summary.verify.pages_checked,
        summary.verify.mismatches,
        summary.verify.guest_errors
    )));
    for v in &summary.per_vcpu {
        let row = format!(
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            v.vcpu,
            v.fault_exits,
            v.stall_ms,
            v.latency_us.p50,
            v.latency_us.p99,
            v.latency_us.max,
            v.guest_progress
        );
        assert!(page.contains(&row), "vCPU {} row missing: {row}", v.vcpu);
    }
    assert!(page.contains(&format!(
        "{} pages: {} demand",
        summary.pages_total, summary.pages_demand
    )));
    assert!(page.contains(&summary.scenario));

    // Drawn: a screenshot with more than a page's worth of one colour in it.
    let shot = dir.path("shot.png");
    let out = chromium()
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1000,1600")
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let pixels = &buf[..info.buffer_size()];
    let px = info.color_type.samples();
    let mut colours: Vec<&[u8]> = pixels.chunks(px).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(
        colours.len() > 50,
        "a blank screenshot: {} colours",
        colours.len()
    );
}

#[test]
fn a_cut_recording_is_reported_as_far_as_it_goes_and_a_stranger_file_refused() {
    let dir = Scratch::new("report-cut");
    let rec = record(&dir);
    let whole = std::fs::read(&rec).unwrap();
    let cut = dir.path("cut.rec");
    std::fs::write(&cut, &whole[..whole.len() * 2 / 3]).unwrap();
    let html = dir.path("cut.html");
    let out = faultline()
        .arg("report")
        .arg(&cut)
        .arg("-o")
        .arg(&html)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cut short"), "{err}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("id=\"cut\""), "the page says it is cut");
    assert!(page.contains("not known: the recording ends before the run did"));

    let junk = dir.path("junk.rec");
    std::fs::write(&junk, b"this is not a recording at all").unwrap();
    let out = faultline().arg("report").arg(&junk).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}
