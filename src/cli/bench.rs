//! `faultline bench`: arguments, the sweep over configurations, and the report.

use std::time::Duration;

use clap::{Args, ValueEnum};
use faultline::bench::{
    self, BenchMode, BenchResult, DowntimeResult, FrameResult, PushResult, TrialConfig,
};
use faultline::contract::Backing;
use faultline::contract::FaultMode;
use faultline::contract::{Pattern, Prefetch, Transport, Workload};
use faultline::postcopy::assembly::Plan;
use faultline::postcopy::destination::preferred_backing;
use faultline::units::Bytes;
use serde::Serialize;

#[derive(Clone, Copy, ValueEnum)]
pub enum TelemetryArg {
    On,
    Off,
    Both,
}

#[derive(Args)]
pub struct BenchArgs {
    /// vCPU counts to measure, e.g. 1,2,4,8,16.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    vcpus: Vec<usize>,
    /// Memory each vCPU touches, e.g. 128M.
    #[arg(long, value_parser = super::args::parse_size, default_value = "128M")]
    mem_per_vcpu: u64,
    /// Fault modes to measure: prefill (memory present, the ceiling), uffd, exit.
    #[arg(long, value_delimiter = ',', default_value = "prefill,uffd,exit")]
    mode: Vec<BenchMode>,
    /// Guest memory backings to measure: shmem (allocated before the run; minor faults,
    /// filled with UFFDIO_CONTINUE), anon (allocated on fill; UFFDIO_COPY). Default: shmem
    /// where the kernel supports it, else anon. The push is timed on the first.
    #[arg(long, value_delimiter = ',')]
    backing: Vec<Backing>,
    /// How pages travel: local (copied from the source image in this process), tcp (fetched
    /// from a page server over a loopback socket). The push is timed on the first.
    #[arg(long, value_delimiter = ',', default_value = "local")]
    transport: Vec<Transport>,
    /// With --one-uffd: its handler threads; default one per vCPU up to two (more lose to
    /// wake-up contention on one userfaultfd, BENCHMARKS.md).
    #[arg(long)]
    readers: Option<usize>,
    /// One userfaultfd for all vCPUs (in uffd mode served by --readers threads) instead of
    /// one per vCPU's slice, with its own reader in uffd mode (the default: it scales,
    /// BENCHMARKS.md).
    #[arg(long)]
    one_uffd: bool,
    /// After a fault, uffd readers keep reading this long before sleeping, e.g. 100us;
    /// `auto`: 0 when pinned (a reader shares its vCPU's CPU), else 100us when every vCPU
    /// and reader has a core, else 0.
    #[arg(long, value_parser = parse_spin, default_value = "auto")]
    reader_spin: Spin,
    /// Over TCP, how long each end of a connection waits awake for the other before it
    /// sleeps, e.g. 50us; `auto`: 50us when every fetching thread and the server thread
    /// at its other end have a core, else 0.
    #[arg(long, value_parser = parse_spin, default_value = "auto")]
    net_spin: Spin,
    /// Let the scheduler place vCPU threads and uffd readers, instead of vCPU i and its
    /// reader sharing the i-th CPU (the default: BENCHMARKS.md).
    #[arg(long)]
    no_pin: bool,
    /// Delay added to each demand fetch, e.g. 100us.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    rtt: Duration,
    /// Measure with the observer on, off, or both (and their ratio).
    #[arg(long, value_enum, default_value = "on")]
    telemetry: TelemetryArg,
    /// Trials per configuration; the median is reported, with min and max.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Also time the background push alone over this much memory (0 to skip), e.g. 1G.
    #[arg(long, value_parser = super::args::parse_size, default_value = "1G")]
    push_mem: u64,
    /// Push threads for the push measurement.
    #[arg(long, default_value_t = 2)]
    push_threads: usize,
    /// Also measure switchover downtime with this many vCPUs (0 to skip).
    #[arg(long, default_value_t = 4)]
    downtime_vcpus: usize,
    /// Also time an injection of this much memory, all present, in the real engine with
    /// --downtime-vcpus vCPUs (0 to skip), e.g. 64M.
    #[arg(long, value_parser = super::args::parse_size, default_value = "64M")]
    inject_mem: u64,
    /// Also time the live view's frames: this many vCPUs over --frame-mem (0 to skip).
    #[arg(long, default_value_t = 64)]
    frame_vcpus: usize,
    #[arg(long, value_parser = super::args::parse_size, default_value = "16G")]
    frame_mem: u64,
    /// What each fault brings in besides its page: off, N pages, adaptive; a list
    /// measures each, interleaved.
    #[arg(long, value_delimiter = ',', default_value = "off")]
    prefetch: Vec<Prefetch>,
    /// Run the stall benchmark instead: each vCPU runs a workload until its working set
    /// has arrived (no push); total stall and time to the working set per prefetch
    /// strategy (--stall-prefetch), workload (--stall-workloads), mode (--mode, prefill
    /// left out), transport (--transport, with --rtt) and vCPU count (--vcpus).
    #[arg(long)]
    stall: bool,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "touch,sequential,stride,random,hotspot"
    )]
    stall_workloads: Vec<Workload>,
    #[arg(long, value_delimiter = ',', default_value = "off,16,adaptive")]
    stall_prefetch: Vec<Prefetch>,
    /// Memory each vCPU works on in the stall benchmark (a random guest touches it all
    /// only after about n ln n accesses).
    #[arg(long, value_parser = super::args::parse_size, default_value = "32M")]
    stall_mem_per_vcpu: u64,
    /// Print one JSON object with a `results` list.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy)]
enum Spin {
    Auto,
    Fixed(Duration),
}

fn parse_spin(s: &str) -> Result<Spin, String> {
    if s == "auto" {
        return Ok(Spin::Auto);
    }
    humantime::parse_duration(s)
        .map(Spin::Fixed)
        .map_err(|e| format!("{e} (expected `auto` or a duration such as 100us)"))
}

#[derive(Serialize)]
struct Ratio {
    mode: BenchMode,
    vcpus: usize,
    backing: &'static str,
    transport: &'static str,
    /// pages/s with telemetry on over pages/s with it off: the median of the rounds' ratios.
    telemetry_ratio: f64,
}

#[derive(Serialize)]
struct Report {
    mem_per_vcpu: u64,
    repeat: usize,
    results: Vec<BenchResult>,
    telemetry_ratios: Vec<Ratio>,
    push: Option<PushResult>,
    downtime: Option<DowntimeResult>,
    injection: Option<bench::InjectionResult>,
    frames: Vec<FrameResult>,
}

fn k(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else {
        format!("{:.1}k", v / 1e3)
    }
}

fn print_row(r: &BenchResult) {
    println!(
        "{:<8} {:<7} {:<5} {:<8} {:>5} {:>7} {:>9} {:>9} {:>7.3} {:>10} {:>19} {:>10} {:>7} {:>7}",
        r.mode.as_str(),
        r.backing,
        r.transport,
        r.prefetch,
        r.vcpus,
        if r.mode == BenchMode::Uffd {
            r.readers.to_string()
        } else {
            "-".into()
        },
        if r.mode == BenchMode::Prefill {
            "-"
        } else if r.telemetry {
            "on"
        } else {
            "off"
        },
        r.pages,
        r.secs,
        k(r.pages_per_sec),
        format!("({} - {})", k(r.pages_per_sec_min), k(r.pages_per_sec_max)),
        k(r.per_vcpu_pages_per_sec),
        r.latency_us.p50,
        r.latency_us.p99
    );
    if r.telemetry_dropped > 0 {
        println!("  ({} telemetry events dropped)", r.telemetry_dropped);
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<bool> {
    let telemetry: &[bool] = match args.telemetry {
        TelemetryArg::On => &[true],
        TelemetryArg::Off => &[false],
        TelemetryArg::Both => &[true, false],
    };
    let backings = if args.backing.is_empty() {
        vec![preferred_backing()]
    } else {
        args.backing.clone()
    };
    let mut configs = Vec::new();
    for &vcpus in &args.vcpus {
        let transports = &args.transport;
        for (&mode, &backing, &transport) in args.mode.iter().flat_map(|m| {
            backings
                .iter()
                .flat_map(move |b| transports.iter().map(move |t| (m, b, t)))
        }) {
            // The observer has nothing to observe when no page is ever missing.
            let telem: &[bool] = if mode == BenchMode::Prefill {
                &[false]
            } else {
                telemetry
            };
            let readers = args.readers.unwrap_or(vcpus.min(2));
            // The thread and spin policy of a migration's destination (prefill has none).
            let plan = Plan {
                mode: if mode == BenchMode::Uffd {
                    FaultMode::Uffd
                } else {
                    FaultMode::Exit
                },
                backing,
                vcpus,
                per_slice: !args.one_uffd,
                readers,
                push_threads: 0,
            };
            let reader_spin = match args.reader_spin {
                Spin::Fixed(d) => d,
                // A pinned reader shares its vCPU's CPU: spinning would only delay the vCPU.
                Spin::Auto if !args.no_pin => Duration::ZERO,
                Spin::Auto => plan.reader_spin(transport),
            };
            let net_spin = match args.net_spin {
                Spin::Fixed(d) => d,
                Spin::Auto => plan.socket_spin(),
            };
            // Prefetch matters only where pages are missing.
            let prefetches: &[Prefetch] = if mode == BenchMode::Prefill {
                &[Prefetch::Off]
            } else {
                &args.prefetch
            };
            for (&t, &prefetch) in telem
                .iter()
                .flat_map(|t| prefetches.iter().map(move |p| (t, p)))
            {
                configs.push(TrialConfig {
                    mode,
                    vcpus,
                    mem_per_vcpu: args.mem_per_vcpu,
                    readers,
                    rtt: args.rtt,
                    reader_spin,
                    net_spin,
                    uffd_per_vcpu: !args.one_uffd,
                    pin: !args.no_pin,
                    telemetry: t,
                    backing,
                    transport,
                    prefetch,
                });
            }
        }
    }
    for c in &configs {
        c.validate()
            .map_err(|e| super::args::UsageError(e.to_string()))?;
    }
    let usage = |m: String| super::args::UsageError(m);
    if args.downtime_vcpus > faultline::vmm::layout::MAX_VCPUS {
        return Err(usage(format!(
            "--downtime-vcpus {}: at most 64",
            args.downtime_vcpus
        ))
        .into());
    }
    if args.frame_vcpus > faultline::vmm::layout::MAX_VCPUS
        || (args.frame_vcpus > 0 && args.frame_mem < faultline::vmm::layout::MIN_MEM_BYTES)
    {
        return Err(usage("--frame-vcpus at most 64, --frame-mem at least 64M".into()).into());
    }
    if !args.inject_mem.is_multiple_of(4096) || args.inject_mem > 4 << 30 {
        return Err(usage("--inject-mem: whole pages, at most 4G (or 0 to skip)".into()).into());
    }
    if args.push_mem > 0 && args.push_mem < faultline::vmm::layout::MIN_MEM_BYTES {
        return Err(usage("--push-mem: at least 64M (or 0 to skip)".into()).into());
    }
    drop(faultline::vmm::open_kvm()?);
    if args.stall {
        return stall(&args, &configs);
    }
    if !args.json {
        println!(
            "demand paging: each vCPU writes {} once; median of {} trials; {}",
            Bytes(args.mem_per_vcpu),
            args.repeat.max(1),
            if args.no_pin {
                "threads placed by the scheduler"
            } else {
                "vCPU i and its uffd reader on CPU i"
            }
        );
        println!(
            "{:<8} {:<7} {:<5} {:<8} {:>5} {:>7} {:>9} {:>9} {:>7} {:>10} {:>19} {:>10} {:>7} {:>7}",
            "mode",
            "memory",
            "via",
            "prefetch",
            "vcpus",
            "readers",
            "telemetry",
            "pages",
            "secs",
            "pages/s",
            "(min - max)",
            "per vCPU",
            "p50 us",
            "p99 us"
        );
    }
    // Each vCPU count is one group, its configurations interleaved trial by trial.
    let mut results = Vec::new();
    for &vcpus in &args.vcpus {
        let group: Vec<TrialConfig> = configs
            .iter()
            .filter(|c| c.vcpus == vcpus)
            .copied()
            .collect();
        for r in bench::measure_interleaved(&group, args.repeat)? {
            if !args.json {
                print_row(&r);
            }
            results.push(r);
        }
    }
    let ratios: Vec<Ratio> = results
        .iter()
        .filter(|r| r.telemetry)
        .filter_map(|on| {
            let off = results.iter().find(|o| {
                !o.telemetry
                    && o.mode == on.mode
                    && o.vcpus == on.vcpus
                    && o.backing == on.backing
                    && o.transport == on.transport
                    && o.prefetch == on.prefetch
            })?;
            Some(Ratio {
                mode: on.mode,
                vcpus: on.vcpus,
                backing: on.backing,
                transport: on.transport,
                telemetry_ratio: bench::paired_ratio(on, off),
            })
        })
        .collect();
    let push = (args.push_mem > 0)
        .then(|| {
            bench::measure_push(
                args.push_mem,
                args.push_threads,
                args.repeat,
                backings[0],
                args.transport.first().copied().unwrap_or_default(),
            )
        })
        .transpose()?;
    let downtime = (args.downtime_vcpus > 0)
        .then(|| bench::measure_downtime(args.downtime_vcpus, args.repeat.max(5)))
        .transpose()?;
    let injection = (args.inject_mem > 0 && args.downtime_vcpus > 0)
        .then(|| {
            bench::measure_injection(
                args.downtime_vcpus,
                args.inject_mem,
                backings[0],
                args.transport.first().copied().unwrap_or_default(),
                args.repeat.max(5),
            )
        })
        .transpose()?;
    let frames = if args.frame_vcpus > 0 {
        [(80, 24), (160, 48)]
            .into_iter()
            .map(|size| bench::measure_frame(args.frame_vcpus, args.frame_mem, size, 50))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    if args.json {
        let report = Report {
            frames,
            push,
            downtime,
            injection,
            mem_per_vcpu: args.mem_per_vcpu,
            repeat: args.repeat.max(1),
            results,
            telemetry_ratios: ratios,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &ratios {
            println!(
                "telemetry on/off, {} ({}, {}) at {} vCPUs: {:.3} (median of the rounds' ratios)",
                r.mode.as_str(),
                r.backing,
                r.transport,
                r.vcpus,
                r.telemetry_ratio
            );
        }
        if let Some(p) = push {
            println!(
                "push alone ({}, {}), {} threads: {} in {:.3} s = {:.2} GB/s (min {:.2}, max {:.2})",
                p.backing,
                p.transport,
                p.threads,
                Bytes(p.bytes),
                p.secs,
                p.bytes_per_sec / 1e9,
                p.bytes_per_sec_min / 1e9,
                p.bytes_per_sec_max / 1e9
            );
        }
        for f in &frames {
            println!(
                "live view frame, {} vCPUs, {} map, {}x{}: build {} us, draw {} us (median; max {} + {})",
                f.vcpus,
                Bytes(f.mem_bytes),
                f.width,
                f.height,
                f.build_us_median,
                f.draw_us_median,
                f.build_us_max,
                f.draw_us_max
            );
        }
        if let Some(d) = downtime {
            println!(
                "switchover downtime, {} vCPUs: median {} us (min {}, max {}) over {} runs",
                d.vcpus, d.median_us, d.min_us, d.max_us, d.runs
            );
        }
        if let Some(i) = injection {
            println!(
                "injection of {} ({} pages, {}, {}), {} vCPUs: guest paused median {} us (min {}, \
                 max {}), range unavailable median {} us (max {}) over {} runs",
                Bytes(i.bytes),
                i.pages,
                i.backing,
                i.transport,
                i.vcpus,
                i.median_us,
                i.min_us,
                i.max_us,
                i.unavailable_median_us,
                i.unavailable_max_us,
                i.runs
            );
        }
    }
    Ok(true)
}

#[derive(Serialize)]
struct StallReport {
    mem_per_vcpu: u64,
    repeat: usize,
    results: Vec<bench::StallResult>,
}

/// The stall benchmark over the demand-paging configurations (telemetry on, pages
/// missing), each with every workload and prefetch strategy asked for.
fn stall(args: &BenchArgs, configs: &[TrialConfig]) -> anyhow::Result<bool> {
    if args
        .stall_workloads
        .iter()
        .any(|w| w.pattern == Pattern::Verify)
    {
        return Err(super::args::UsageError(
            "--stall-workloads: verify stamps every page, so it has no place in a benchmark whose \
             trials check each page's own content (touch, sequential, stride, random, hotspot)"
                .into(),
        )
        .into());
    }
    let mut stall_configs = Vec::new();
    for c in configs
        .iter()
        .filter(|c| c.mode != BenchMode::Prefill && c.telemetry)
        .filter(|c| c.prefetch == args.prefetch[0])
    {
        for w in &args.stall_workloads {
            for &prefetch in &args.stall_prefetch {
                stall_configs.push(bench::StallConfig {
                    trial: TrialConfig {
                        prefetch,
                        mem_per_vcpu: args.stall_mem_per_vcpu,
                        ..*c
                    },
                    workload: *w,
                });
            }
        }
    }
    if stall_configs.is_empty() {
        return Err(super::args::UsageError(
            "--stall needs a mode with missing pages (uffd or exit) and telemetry on".into(),
        )
        .into());
    }
    for c in &stall_configs {
        c.trial
            .validate()
            .map_err(|e| super::args::UsageError(e.to_string()))?;
        // A stride that shares a factor with the slice never visits all of it.
        let slice = args.stall_mem_per_vcpu / 4096;
        let stride = c.workload.stride_pages % slice.max(1);
        if c.workload.pattern == faultline::contract::Pattern::Stride && gcd(stride, slice) != 1 {
            return Err(super::args::UsageError(format!(
                "--stall-mem-per-vcpu {}: a stride of {} pages never visits all {slice} \
                 pages of a slice; take a size whose page count shares no factor with it",
                Bytes(args.stall_mem_per_vcpu),
                c.workload.stride_pages
            ))
            .into());
        }
    }
    if !args.json {
        println!(
            "stall until the working set arrives: no push, {} a vCPU; median of {} trials",
            Bytes(args.stall_mem_per_vcpu),
            args.repeat.max(1)
        );
        println!(
            "{:<6} {:<5} {:>5} {:>6} {:<16} {:<8} {:>10} {:>19} {:>8} {:>8} {:>8} {:>8} {:>7}",
            "mode",
            "via",
            "vcpus",
            "rtt",
            "workload",
            "prefetch",
            "stall ms",
            "(min - max)",
            "gain",
            "to WS ms",
            "faults",
            "prefetch",
            "used"
        );
    }
    let results = bench::measure_stall(&stall_configs, args.repeat)?;
    if args.json {
        let report = StallReport {
            mem_per_vcpu: args.stall_mem_per_vcpu,
            repeat: args.repeat.max(1),
            results,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(true);
    }
    for r in &results {
        // The demand path alone's stall over this one's, round by round: 3.00x is a third.
        let off = results.iter().find(|o| {
            o.prefetch == "off"
                && o.workload == r.workload
                && o.transport == r.transport
                && o.mode == r.mode
                && o.vcpus == r.vcpus
        });
        let vs_off = off.map_or_else(
            || "-".into(),
            |o| {
                format!(
                    "{:.2}x",
                    bench::paired_median(&o.rounds_stall_ms, &r.rounds_stall_ms)
                )
            },
        );
        println!(
            "{:<6} {:<5} {:>5} {:>6} {:<16} {:<8} {:>10.1} {:>19} {:>8} {:>8.1} {:>8} {:>8} {:>6.0}%",
            r.mode,
            r.transport,
            r.vcpus,
            format!("{}us", r.rtt_us),
            r.workload,
            r.prefetch,
            r.stall_ms,
            format!("({:.1} - {:.1})", r.stall_ms_min, r.stall_ms_max),
            vs_off,
            r.to_working_set_ms,
            r.faults,
            r.pages_prefetched,
            100.0 * r.prefetch_used as f64 / r.pages_prefetched.max(1) as f64
        );
    }
    Ok(true)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}
