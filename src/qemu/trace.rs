//! QEMU's post-copy trace events, as its `log` trace backend writes them (`-D FILE`):
//! `TID@SECONDS.MICROS:name args` with `-msg timestamp=on` (10.0), an ISO 8601 UTC stamp
//! and a space before `name args` in later versions, `name args` without a timestamp. Both
//! the QEMU 10.0 events (`mark_postcopy_blocktime_*`) and the later ones
//! (`postcopy_blocktime_*`) are read; fields a version does not have stay `None`, never
//! made up. Times come from the line's stamp only: the events' own `time` fields are
//! monotonic (10.0: ms since tracking began; later: ns), not comparable across lines of
//! different versions, and in 10.0's end event not a time at all.

/// One post-copy event, by meaning rather than by version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    /// The fault thread read a fault: a vCPU (`cpu`: None for a thread that is not one)
    /// now waits for the page at host address `addr`. `received`: the page had already
    /// arrived, so nobody waits.
    BlocktimeBegin {
        addr: u64,
        cpu: Option<usize>,
        received: bool,
    },
    /// The page at `addr` was placed; `affected_cpus` vCPUs waited for it (10.0 counts them
    /// here; 10.1+ names each in a [`TraceEvent::BlocktimeEndOne`] first).
    BlocktimeEnd {
        addr: u64,
        affected_cpus: Option<u32>,
    },
    /// 10.1+: vCPU `cpu` (None: a thread that is not one) stopped waiting.
    BlocktimeEndOne { cpu: Option<usize> },
    /// 10.1+: thread `tid` is vCPU `cpu`.
    TidCpuMap { cpu: usize, tid: u32 },
    /// The destination asked the source for a page: where it lies in which RAM block.
    PageRequest {
        hva: u64,
        ramblock: String,
        offset: u64,
    },
}

/// A parsed line: the event, the emitting thread and when (µs since the epoch), where the
/// line's prefix says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLine {
    pub tid: Option<u32>,
    pub at_us: Option<u64>,
    pub event: TraceEvent,
}

/// What one line of the file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Event(TraceLine),
    /// A well-formed line of an event (or log message) this view does not use.
    Other,
    /// One of our events whose fields do not parse, or a line that is no trace line.
    Garbage,
}

/// Names of the events [`parse`] reads, for `-trace` options.
pub const EVENT_PATTERNS: &[&str] = &[
    "mark_postcopy_blocktime_*",
    "postcopy_blocktime_*",
    "postcopy_ram_fault_thread_request",
];

pub fn parse(line: &str) -> Parsed {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Parsed::Other;
    }
    let (tid, at_us, rest) = match split_prefix(line) {
        Some((tid, at, rest)) => (Some(tid), Some(at), rest),
        None => match split_iso_prefix(line) {
            Some((at, rest)) => (None, Some(at), rest),
            None => (None, None, line),
        },
    };
    let stamped = at_us.is_some();
    let (name, args) = rest.split_once(' ').unwrap_or((rest, ""));
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return if stamped {
            Parsed::Garbage
        } else {
            Parsed::Other
        };
    }
    let event = match name {
        "mark_postcopy_blocktime_begin" | "postcopy_blocktime_begin" => begin(args),
        "mark_postcopy_blocktime_end" | "postcopy_blocktime_end" => end(args),
        "postcopy_blocktime_end_one" => field(args, "cpu")
            .and_then(cpu_or_none)
            .map(|cpu| TraceEvent::BlocktimeEndOne { cpu }),
        "postcopy_blocktime_tid_cpu_map" => (|| {
            Some(TraceEvent::TidCpuMap {
                cpu: cpu(field(args, "cpu"))?,
                tid: num(field(args, "tid")?)? as u32,
            })
        })(),
        "postcopy_ram_fault_thread_request" => (|| {
            Some(TraceEvent::PageRequest {
                hva: num(field(args, "HVA")?)?,
                ramblock: field(args, "rb")?.to_string(),
                offset: num(field(args, "offset")?)?,
            })
        })(),
        _ => return Parsed::Other,
    };
    match event {
        Some(event) => Parsed::Event(TraceLine { tid, at_us, event }),
        None => Parsed::Garbage,
    }
}

fn begin(args: &str) -> Option<TraceEvent> {
    let received = field(args, "already_received").or_else(|| field(args, "exist"));
    Some(TraceEvent::BlocktimeBegin {
        addr: num(field(args, "addr")?)?,
        cpu: cpu_or_none(field(args, "cpu")?)?,
        received: num(received?)? != 0,
    })
}

fn end(args: &str) -> Option<TraceEvent> {
    Some(TraceEvent::BlocktimeEnd {
        addr: num(field(args, "addr")?)?,
        affected_cpus: match field(args, "affected_cpu").or_else(|| field(args, "affected_cpus")) {
            Some(v) => Some(num(v)? as u32),
            None => None,
        },
    })
}

/// `TID@SECONDS.MICROS:` and the rest of the line.
fn split_prefix(line: &str) -> Option<(u32, u64, &str)> {
    let (tid, rest) = line.split_once('@')?;
    let (stamp, rest) = rest.split_once(':')?;
    let (secs, micros) = stamp.split_once('.')?;
    if micros.len() != 6 {
        return None;
    }
    let tid = tid.parse().ok()?;
    let at = secs
        .parse::<u64>()
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add(micros.parse::<u64>().ok()?)?;
    Some((tid, at, rest))
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z ` (UTC) and the rest of the line.
fn split_iso_prefix(line: &str) -> Option<(u64, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(str::parse::<u64>);
    let (h, mi, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let valid = (1970..=9999).contains(&y)
        && (1..=12).contains(&m)
        && (1..=31).contains(&day)
        && h <= 23
        && mi <= 59
        && sec <= 60;
    if !valid {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros = format!("{frac:0<6}")[..6].parse::<u64>().ok()?;
    let days = u64::try_from(days_from_civil(y, m, day)).ok()?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    Some((secs * 1_000_000 + micros, rest))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The value of `key` in "key: value, key: value" or "key=value key=value".
fn field<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    args.split([',', ' '])
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .windows(2)
        .find_map(|w| (w[0].strip_suffix(':') == Some(key)).then_some(w[1]))
        .or_else(|| {
            args.split([',', ' '])
                .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
        })
}

/// Decimal, or hexadecimal with 0x.
fn num(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

fn cpu(v: Option<&str>) -> Option<usize> {
    v?.parse().ok()
}

/// A vCPU index, or None (-1: not a vCPU); None overall when it is no number.
fn cpu_or_none(v: &str) -> Option<Option<usize>> {
    let n: i64 = v.parse().ok()?;
    Some(usize::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(line: &str) -> TraceLine {
        match parse(line) {
            Parsed::Event(e) => e,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn reads_qemu_10_0_lines_with_timestamps() {
        let b = event(
            "8948@1796529422.758473:mark_postcopy_blocktime_begin addr: 0x7fa0633f8000, dd: 0x559d2ad66c70, time: 2117, cpu: 0, already_received: 0",
        );
        assert_eq!(b.tid, Some(8948));
        assert_eq!(b.at_us, Some(1_796_529_422_758_473));
        assert_eq!(
            b.event,
            TraceEvent::BlocktimeBegin {
                addr: 0x7fa0_633f_8000,
                cpu: Some(0),
                received: false
            }
        );
        let e = event(
            "8949@1796529422.756388:mark_postcopy_blocktime_end addr: 0x7fa05c000000, dd: 0x559d2ad66c70, time: 0, affected_cpu: 1",
        );
        assert_eq!(
            e.event,
            TraceEvent::BlocktimeEnd {
                addr: 0x7fa0_5c00_0000,
                affected_cpus: Some(1)
            }
        );
        let r = event(
            "8948@1796529422.758461:postcopy_ram_fault_thread_request Request for HVA=0x7fa0633f8000 rb=pc.ram offset=0x75f8000 pid=8847",
        );
        assert_eq!(
            r.event,
            TraceEvent::PageRequest {
                hva: 0x7fa0_633f_8000,
                ramblock: "pc.ram".into(),
                offset: 0x75f_8000
            }
        );
    }

    #[test]
    fn a_fault_of_a_thread_that_is_no_vcpu_has_no_cpu() {
        let b = event(
            "mark_postcopy_blocktime_begin addr: 0x1000, dd: 0x5, time: 3, cpu: -1, already_received: 1",
        );
        assert_eq!((b.tid, b.at_us), (None, None));
        assert_eq!(
            b.event,
            TraceEvent::BlocktimeBegin {
                addr: 0x1000,
                cpu: None,
                received: true
            }
        );
    }

    #[test]
    fn reads_lines_of_qemu_10_1_and_later() {
        // The format strings of 10.2's migration/trace-events, with its ISO 8601 stamps.
        let b = event(
            "2026-12-06T03:58:11.343464Z postcopy_blocktime_begin addr: 0x7f0000001000, time: 123456789, cpu: 1, exist: 0",
        );
        assert_eq!(b.at_us, Some(1_796_529_491_343_464));
        assert_eq!(b.tid, None);
        assert_eq!(
            b.event,
            TraceEvent::BlocktimeBegin {
                addr: 0x7f00_0000_1000,
                cpu: Some(1),
                received: false
            }
        );
        assert_eq!(
            event("2026-12-06T03:58:11Z postcopy_blocktime_end addr: 0x7f0000001000, time: 5, affected_cpus: 1, affected_non_cpus: 0").event,
            TraceEvent::BlocktimeEnd {
                addr: 0x7f00_0000_1000,
                affected_cpus: Some(1)
            }
        );
        assert_eq!(
            parse("2026-12-06T03:58:11Z postcopy_blocktime_end_one cpu: 1, left_faults: 0"),
            Parsed::Event(TraceLine {
                tid: None,
                at_us: Some(1_796_529_491_000_000),
                event: TraceEvent::BlocktimeEndOne { cpu: Some(1) }
            })
        );
        assert_eq!(
            event("postcopy_blocktime_tid_cpu_map cpu: 3, tid: 4242").event,
            TraceEvent::TidCpuMap { cpu: 3, tid: 4242 }
        );
        let other = event(
            "2026-12-06T03:58:11.5Z postcopy_blocktime_begin addr: 0x1000, time: 1, cpu: -1, exist: 1",
        );
        assert_eq!(other.at_us, Some(1_796_529_491_500_000));
        assert!(matches!(
            other.event,
            TraceEvent::BlocktimeBegin { cpu: None, .. }
        ));
    }

    #[test]
    fn reads_the_sample_of_a_real_qemu_10_0_trace() {
        let sample = include_str!("../../tests/data/qemu-10.0-postcopy.trace");
        let (mut events, mut garbage) = (0, 0);
        for l in sample.lines() {
            match parse(l) {
                Parsed::Event(_) => events += 1,
                Parsed::Garbage => garbage += 1,
                Parsed::Other => {}
            }
        }
        assert!(events > 100, "{events}");
        assert_eq!(garbage, 0);
    }

    #[test]
    fn other_events_and_garbage_are_told_apart() {
        assert_eq!(
            parse("8949@1796529422.756391:postcopy_place_page host=0x7fa05c000000"),
            Parsed::Other
        );
        assert_eq!(
            parse("qemu-system-x86_64: warning: something"),
            Parsed::Other
        );
        assert_eq!(parse(""), Parsed::Other);
        assert_eq!(
            parse("8948@1796529422.758473:mark_postcopy_blocktime_begin addr: zz, cpu: 0"),
            Parsed::Garbage
        );
        assert_eq!(
            parse("8948@1796529422.7:mark_postcopy_blocktime_begin"),
            Parsed::Other
        );
        assert_eq!(parse("12@34.567890:\u{1}\u{2}"), Parsed::Garbage);
        assert_eq!(
            parse(
                "mark_postcopy_blocktime_begin addr: 0x1, cpu: 99999999999999999999, already_received: 0"
            ),
            Parsed::Garbage
        );
    }
}
