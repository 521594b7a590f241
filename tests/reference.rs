//! The C reference of BENCHMARKS.md (bench/reference/demand_paging.c) builds with the
//! system's C compiler and does its work in every mode and backing on the real /dev/kvm:
//! it checks itself (every page's content, one fault per page) and exits non-zero if not.

use std::path::PathBuf;
use std::process::Command;

fn build() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demand_paging");
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bench/reference/demand_paging.c"
    );
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
        .arg(&out)
        .arg(src)
        .output()
        .unwrap_or_else(|e| panic!("{cc}: {e}"));
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

#[test]
fn the_c_reference_fills_every_page_in_every_mode_and_backing() {
    let bin = build_once();
    for mode in ["prefill", "uffd", "exit"] {
        for backing in ["anon", "shmem"] {
            let out = Command::new(&bin)
                .args(["-M", mode, "-b", backing, "-v", "2", "-m", "16", "-r", "1"])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{mode} {backing}: {}{stdout}",
                String::from_utf8_lossy(&out.stderr)
            );
            // 2 vCPUs x 16 MiB = 8192 pages, and a rate for them.
            let trial = stdout.lines().next().unwrap_or_default();
            assert!(
                trial.contains(&format!("mode={mode} backing={backing} vcpus=2 pages=8192")),
                "{trial}"
            );
            let rate: f64 = stdout
                .lines()
                .last()
                .and_then(|l| l.split("pages_per_sec=").nth(1))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("no rate in {stdout}"));
            assert!(rate > 0.0, "{stdout}");
        }
    }
}

#[test]
fn the_c_reference_refuses_a_bad_flag_in_one_line() {
    let bin = build_once();
    let out = Command::new(&bin).args(["-M", "fast"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "demand_paging: -M fast: expected prefill, uffd or exit"
    );
}

/// Built once for all tests here: they share the output path.
fn build_once() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build).clone()
}
