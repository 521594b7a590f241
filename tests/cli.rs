//! The `faultline` binary as a user runs it.

mod common;

use common::{faultline, stderr};

use std::process::{Command, Output};

#[test]
fn probe_json_reports_both_fault_modes_ok_on_this_host() {
    let out = faultline().args(["probe", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kvm"]["available"], true);
    assert_eq!(v["kvm"]["api_version"], 12);
    assert!(
        ["vmx", "svm", "pvm", "unknown"].contains(&v["kvm"]["flavour"].as_str().unwrap()),
        "{v}"
    );
    assert!(v["kvm"]["caps"]["max_vcpus"].as_u64().unwrap() >= 1);
    assert_eq!(v["uffd"]["available"], true);
    let features: Vec<&str> = v["uffd"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(features.contains(&"THREAD_ID") && features.contains(&"SIGBUS"));
    // The fault modes were probed on the backing runs get: shmem wherever minor faults
    // on shared memory exist.
    let expected = if features.contains(&"MINOR_SHMEM") {
        "shmem"
    } else {
        "anon"
    };
    assert_eq!(v["backing"]["default"], expected, "{v}");
    assert_eq!(v["fault_modes"]["uffd"]["ok"], true, "{v}");
    assert_eq!(v["fault_modes"]["exit"]["ok"], true, "{v}");
    assert!(
        ["kvm-userfault", "memory-fault", "mmio", "instruction-fetch"]
            .contains(&v["fault_modes"]["exit"]["path"].as_str().unwrap()),
        "{v}"
    );
    // The guest's own code was timed; whether it is emulated depends on the host.
    let code = &v["guest_code"];
    assert!(code["ns_per_instruction"].as_f64().unwrap() >= 0.0, "{v}");
    assert_eq!(
        code["emulated"].as_bool().unwrap(),
        code["ns_per_instruction"].as_f64().unwrap() > 50.0,
        "{v}"
    );
}

#[test]
fn probe_text_names_each_mode() {
    let out = faultline().arg("probe").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("backing      "), "{text}");
    assert!(text.contains("mode uffd    ok"), "{text}");
    assert!(text.contains("mode exit    ok via"), "{text}");
    assert!(text.contains("guest code   "), "{text}");
}

#[test]
fn missing_dev_kvm_is_a_one_line_error_with_exit_code_2() {
    // A private mount namespace with an empty /dev: the real binary finds no /dev/kvm.
    let out = Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs none /dev && exec \"$0\" probe",
        ])
        .arg(env!("CARGO_BIN_EXE_faultline"))
        .output()
        .expect("unshare (util-linux) is needed for this test");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/dev/kvm does not exist"), "{err}");
}

#[test]
fn unreadable_dev_kvm_says_permission_denied() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_faultline"))
        .arg("probe")
        .output()
        .expect("setpriv (util-linux) is needed for this test");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("permission denied"), "{err}");
}

#[test]
fn unknown_flag_is_rejected_with_exit_code_2() {
    let out = faultline().arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--bogus"));
}

fn quick_run(extra: &[&str]) -> Output {
    faultline()
        .args(["run", "--headless", "--mem", "64M", "--vcpus", "2"])
        .args([
            "--warmup",
            "100ms",
            "--duration",
            "300ms",
            "--fetch-rate",
            "unlimited",
        ])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn headless_json_run_prints_the_summary_object() {
    let out = quick_run(&["--json", "--mode", "uffd", "--workload", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "scenario",
        "mode",
        "exit_path",
        "vcpus",
        "mem_bytes",
        "page_size",
        "pages_total",
        "pages_demand",
        "pages_pushed",
        "pages_injected",
        "pages_refetched",
        "downtime_us",
        "postcopy_ms",
        "bytes_transferred",
        "blocktime_all_ms",
        "verified",
        "telemetry_dropped",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["scenario"], "default");
    assert_eq!(v["mode"], "uffd");
    assert_eq!(v["exit_path"], serde_json::Value::Null);
    assert_eq!(v["verified"], true);
    assert_eq!(v["verify"]["mismatches"], 0);
    assert_eq!(v["per_vcpu"].as_array().unwrap().len(), 2);
    assert!(v["per_vcpu"][0]["latency_us"]["p99"].is_u64());
}

#[test]
fn headless_text_run_ends_with_the_verdict() {
    let out = quick_run(&["--mode", "exit"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("exit mode via"), "{text}");
    assert!(
        text.lines().last().unwrap().starts_with("verified:"),
        "{text}"
    );
}

#[test]
fn a_run_over_tcp_says_so_and_verifies() {
    let out = quick_run(&[
        "--mode",
        "exit",
        "--workload",
        "verify",
        "--transport",
        "tcp",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The engine's notes reach stderr as they happen, each once.
    let err = stderr(&out);
    assert_eq!(
        err.matches("migration 1: switched over").count(),
        1,
        "{err}"
    );
    assert!(err.contains("; pages over tcp from 127.0.0.1:"), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("(tcp, throttle unlimited)"), "{text}");
    assert!(
        text.lines().last().unwrap().starts_with("verified:"),
        "{text}"
    );
}

#[test]
fn bench_over_tcp_reports_the_transport_of_each_result_and_the_push() {
    let out = faultline()
        .args([
            "bench",
            "--vcpus",
            "1",
            "--mode",
            "exit,uffd",
            "--transport",
            "tcp",
        ])
        .args(["--mem-per-vcpu", "8M", "--repeat", "1", "--push-mem", "64M"])
        .args(["--downtime-vcpus", "0", "--frame-vcpus", "0", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{v:#}");
    for r in results {
        assert_eq!(r["transport"], "tcp", "{r}");
        assert!(r["pages_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(v["push"]["transport"], "tcp");
    assert_eq!(v["push"]["bytes"].as_u64().unwrap(), 62 << 20);
}

#[test]
fn bench_stall_checks_every_trial_s_pages_and_adaptive_brings_a_stream_in_ahead() {
    let out = faultline()
        .args(["bench", "--stall", "--vcpus", "1", "--mode", "exit,uffd"])
        .args(["--stall-workloads", "sequential,random"])
        .args([
            "--stall-prefetch",
            "off,adaptive",
            "--stall-mem-per-vcpu",
            "4M",
        ])
        .args(["--repeat", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2 * 2 * 2, "{v:#}");
    for r in results {
        let set = r["working_set_pages"].as_u64().unwrap();
        // Each trial's working set (and what came with it) was found filled once, with
        // its own content.
        assert!(r["pages_checked"].as_u64().unwrap() >= set, "{r}");
        let prefetched = r["pages_prefetched"].as_u64().unwrap();
        match (
            r["workload"].as_str().unwrap(),
            r["prefetch"].as_str().unwrap(),
        ) {
            (_, "off") => assert_eq!(prefetched, 0, "{r}"),
            ("sequential-mixed", _) => {
                assert!(prefetched * 2 > set, "{r}");
                assert!(r["faults"].as_u64().unwrap() * 10 < set, "{r}");
            }
            _ => assert!(prefetched * 10 < set, "a random guest is no stream: {r}"),
        }
    }
}

#[test]
fn bad_scenario_file_names_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("faultline-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "vcpus = 2\nmem = \"lots\"\n").unwrap();
    let out = faultline()
        .args(["run", "--headless"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad.toml:2:7: invalid size 'lots'"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_scenario_and_bad_values_exit_2() {
    for args in [
        vec!["run", "--headless", "no-such-scenario"],
        vec!["run", "--headless", "--mem", "12Q"],
        vec!["run", "--headless", "--vcpus", "0"],
        vec!["run", "--headless", "--mem", "16M"],
        vec!["run", "--headless", "--fetch-rate", "fast"],
        vec!["run", "--headless", "--workload", "zigzag"],
        vec!["run", "--headless", "--rtt", "soon"],
        vec!["run", "--headless", "--backing", "hugetlb"],
        vec!["run", "--headless", "--transport", "udp"],
        vec!["run", "--headless", "--link-timeout", "soon"],
    ] {
        let out = faultline().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
}

#[test]
fn run_without_dev_kvm_exits_2() {
    let out = Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs none /dev && exec \"$0\" run --headless",
        ])
        .arg(env!("CARGO_BIN_EXE_faultline"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("/dev/kvm does not exist"));
}

#[test]
fn bench_json_measures_every_mode_and_the_extras() {
    let out = faultline()
        .args([
            "bench",
            "--vcpus",
            "1,2",
            "--mode",
            "prefill,uffd,exit",
            "--mem-per-vcpu",
            "16M",
            "--telemetry",
            "both",
            "--repeat",
            "1",
            "--push-mem",
            "64M",
            "--downtime-vcpus",
            "2",
            "--frame-vcpus",
            "8",
            "--frame-mem",
            "1G",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    // Per vCPU count: prefill once, uffd and exit each with telemetry on and off.
    assert_eq!(results.len(), 2 * 5, "{v:#}");
    for r in results {
        let vcpus = r["vcpus"].as_u64().unwrap();
        assert_eq!(r["pages"].as_u64().unwrap(), vcpus * 16 * 256, "{r}");
        let pps = r["pages_per_sec"].as_f64().unwrap();
        assert!(pps > 0.0);
        let secs = r["secs"].as_f64().unwrap();
        assert!(
            (pps * secs - r["pages"].as_f64().unwrap()).abs() < 1.0,
            "{r}"
        );
        assert!(r["per_vcpu_pages_per_sec"].as_f64().unwrap() > 0.0);
        let lat = &r["latency_us"];
        let faulted = r["mode"] != "prefill" && r["telemetry"] == true;
        assert_eq!(lat["p50"].as_u64().unwrap() > 0, faulted, "{r}");
        assert!(lat["p50"].as_u64() <= lat["p99"].as_u64());
        assert_eq!(r["telemetry_dropped"], 0);
        // By default vCPU i (and its reader) is bound to CPU i.
        assert_eq!(r["pinned"], true, "{r}");
        if r["mode"] == "uffd" {
            // By default each vCPU has its own userfaultfd and reader.
            assert_eq!(r["uffd_per_vcpu"], true, "{r}");
            assert_eq!(r["readers"].as_u64().unwrap(), vcpus, "{r}");
        }
    }
    assert_eq!(v["telemetry_ratios"].as_array().unwrap().len(), 4);
    assert!(v["push"]["bytes_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(v["push"]["bytes"].as_u64().unwrap(), 62 << 20);
    assert!(v["downtime"]["median_us"].as_u64().unwrap() > 0);
    let frames = v["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 2);
    assert!(frames[0]["draw_us_median"].as_u64().unwrap() > 0);
}

#[test]
fn bench_refuses_bad_sizes_and_modes_with_one_line() {
    for args in [
        &["bench", "--mem-per-vcpu", "3M"][..],
        &["bench", "--mode", "teleport"][..],
        &["bench", "--vcpus", "0"][..],
        &["bench", "--reader-spin", "soon"][..],
        &["bench", "--backing", "hugetlb"][..],
        &["bench", "--transport", "udp"][..],
        &["bench", "--stall", "--stall-workloads", "verify"][..],
    ] {
        let out = faultline().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.trim().lines().count() <= 3, "{args:?}: {err}");
    }
}

#[test]
fn the_live_view_without_a_terminal_says_so() {
    let out = faultline().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--headless"), "{}", stderr(&out));
}
