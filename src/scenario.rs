//! Scenarios: TOML files (and built-ins under assets/scenarios/) that describe a run and a
//! timeline of actions. Errors name the file, line and column and say what was expected.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::contract::{Action, FaultMode, RunConfig, TimedAction};
use crate::contract::{Sharing, Workload};
use crate::units;

/// Built-in scenarios, by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("default", include_str!("../assets/scenarios/default.toml")),
    ("hotspot", include_str!("../assets/scenarios/hotspot.toml")),
    (
        "throttled",
        include_str!("../assets/scenarios/throttled.toml"),
    ),
    (
        "many-vcpus",
        include_str!("../assets/scenarios/many-vcpus.toml"),
    ),
    (
        "inject-storm",
        include_str!("../assets/scenarios/inject-storm.toml"),
    ),
    ("outage", include_str!("../assets/scenarios/outage.toml")),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScenarioError {
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot read scenario {file}: {message}")]
    Read { file: String, message: String },
    #[error("no scenario file or built-in scenario named '{0}' (built-ins: {built_ins})", built_ins = built_in_names())]
    NotFound(String),
}

fn built_in_names() -> String {
    BUILT_IN
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[allow(dead_code)]
    description: Option<String>,
    vcpus: Option<Spanned<usize>>,
    mem: Option<Spanned<String>>,
    workload: Option<Spanned<String>>,
    sharing: Option<Sharing>,
    hot_pages: Option<u64>,
    stride_pages: Option<u64>,
    mode: Option<FaultMode>,
    readers: Option<Spanned<usize>>,
    fetch_rate: Option<Spanned<String>>,
    rtt: Option<Spanned<String>>,
    warmup: Option<Spanned<String>>,
    duration: Option<Spanned<String>>,
    push: Option<bool>,
    prefetch: Option<Spanned<String>>,
    backing: Option<Spanned<String>>,
    transport: Option<Spanned<String>>,
    link_timeout: Option<Spanned<String>>,
    #[serde(default)]
    timeline: Vec<Spanned<Entry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    at: Spanned<String>,
    inject: Option<Spanned<String>>,
    throttle: Option<Spanned<String>>,
    push: Option<bool>,
    prefetch: Option<Spanned<String>>,
    link: Option<bool>,
    /// Migrate the guest again, from the current destination to a new one.
    migrate: Option<Spanned<bool>>,
}

/// The configuration every scenario starts from.
pub fn defaults() -> RunConfig {
    RunConfig::default()
}

struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn at(&self, offset: usize, message: String) -> ScenarioError {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ScenarioError::Invalid {
            file: self.file.into(),
            line,
            column,
            message,
        }
    }

    fn value<T, E: std::fmt::Display>(
        &self,
        v: &Spanned<String>,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, ScenarioError> {
        parse(v.get_ref()).map_err(|e| self.at(v.span().start, e.to_string()))
    }

    fn duration(&self, v: &Spanned<String>) -> Result<Duration, ScenarioError> {
        self.value(v, |s| {
            humantime::parse_duration(s).map_err(|e| format!("invalid duration '{s}': {e}"))
        })
    }
}

/// Parses scenario `text`, named `file` in errors, over [`defaults`].
pub fn parse(file: &str, text: &str) -> Result<RunConfig, ScenarioError> {
    let loc = Locator { file, text };
    let f: File = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        loc.at(offset, e.message().trim().to_string())
    })?;
    let mut c = defaults();
    c.scenario = Path::new(file)
        .file_stem()
        .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned());
    if let Some(v) = &f.vcpus {
        if *v.get_ref() == 0 {
            return Err(loc.at(v.span().start, "vcpus must be at least 1".into()));
        }
        c.vcpus = *v.get_ref();
    }
    if let Some(v) = &f.mem {
        c.mem_bytes = loc.value(v, units::parse_size)?;
    }
    if let Some(v) = &f.workload {
        c.workload = loc.value(v, str::parse::<Workload>)?;
    }
    if let Some(s) = f.sharing {
        c.workload.sharing = s;
    }
    if let Some(h) = f.hot_pages {
        c.workload.hot_pages = h;
    }
    if let Some(s) = f.stride_pages {
        c.workload.stride_pages = s;
    }
    if let Some(m) = f.mode {
        c.mode = m;
    }
    if let Some(r) = &f.readers {
        if *r.get_ref() == 0 {
            return Err(loc.at(r.span().start, "readers must be at least 1".into()));
        }
        c.readers = *r.get_ref();
    }
    if let Some(v) = &f.fetch_rate {
        c.fetch_rate = loc.value(v, units::parse_rate)?;
    }
    if let Some(v) = &f.rtt {
        c.rtt = loc.duration(v)?;
    }
    if let Some(v) = &f.link_timeout {
        c.link_timeout = loc.duration(v)?;
    }
    if let Some(v) = &f.warmup {
        c.warmup = loc.duration(v)?;
    }
    if let Some(v) = &f.duration {
        c.duration = loc.duration(v)?;
    }
    if let Some(b) = &f.backing {
        c.backing = Some(loc.value(b, str::parse::<crate::contract::Backing>)?);
    }
    if let Some(t) = &f.transport {
        c.transport = loc.value(t, str::parse::<crate::contract::Transport>)?;
    }
    if let Some(p) = f.push {
        c.push = p;
    }
    if let Some(p) = &f.prefetch {
        c.prefetch = loc.value(p, str::parse::<crate::contract::Prefetch>)?;
    }
    for entry in &f.timeline {
        let e = entry.get_ref();
        let at = loc.duration(&e.at)?;
        let mut actions = Vec::new();
        if let Some(r) = &e.inject {
            actions.push(Action::Inject(loc.value(r, units::parse_range)?));
        }
        if let Some(r) = &e.throttle {
            actions.push(Action::Throttle(loc.value(r, units::parse_rate)?));
        }
        if let Some(p) = e.push {
            actions.push(Action::Push(p));
        }
        if let Some(p) = &e.prefetch {
            actions.push(Action::Prefetch(loc.value(p, str::parse)?));
        }
        if let Some(l) = e.link {
            actions.push(Action::Link(l));
        }
        if let Some(m) = &e.migrate {
            if !*m.get_ref() {
                return Err(loc.at(
                    m.span().start,
                    "migrate = false does nothing: leave the entry out".into(),
                ));
            }
            actions.push(Action::Remigrate);
        }
        if actions.len() != 1 {
            return Err(loc.at(
                entry.span().start,
                "each timeline entry needs exactly one of inject, throttle, push, link or migrate"
                    .into(),
            ));
        }
        for action in actions {
            c.timeline.push(TimedAction { at, action });
        }
    }
    Ok(c)
}

/// Loads a scenario from a file path, or a built-in by name.
pub fn load(name_or_path: &str) -> Result<RunConfig, ScenarioError> {
    let path = Path::new(name_or_path);
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
            file: name_or_path.into(),
            message: e.to_string(),
        })?;
        return parse(name_or_path, &text);
    }
    let name = name_or_path.strip_suffix(".toml").unwrap_or(name_or_path);
    match BUILT_IN.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => {
            let mut c = parse(&format!("assets/scenarios/{n}.toml"), text)?;
            c.scenario = (*n).into();
            Ok(c)
        }
        None => Err(ScenarioError::NotFound(name_or_path.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Rate;

    #[test]
    fn every_built_in_parses() {
        for (name, _) in BUILT_IN {
            let c = load(name).unwrap();
            assert_eq!(c.scenario, *name);
        }
        let storm = load("inject-storm").unwrap();
        assert_eq!(storm.timeline.len(), 5);
        assert_eq!(
            load("throttled").unwrap().fetch_rate,
            Rate::BytesPerSec(8 << 20)
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let err = parse("s.toml", "vcpus = 2\nvcpu = 3\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("s.toml:2:1: "), "{text}");
        assert!(text.contains("vcpu"), "{text}");
    }

    #[test]
    fn bad_value_points_at_the_value() {
        let err = parse("s.toml", "vcpus = 2\nfetch_rate = \"fast\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("s.toml:2:14: invalid rate 'fast'"),
            "{text}"
        );
        let err = parse("s.toml", "workload = \"zigzag\"").unwrap_err();
        assert!(err.to_string().contains("unknown workload 'zigzag'"));
        let err = parse("s.toml", "vcpus = \"four\"").unwrap_err();
        assert!(err.to_string().starts_with("s.toml:1:9: "), "{err}");
        let err = parse("s.toml", "vcpus = 2\nbacking = \"hugetlb\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("s.toml:2:11: unknown memory backing 'hugetlb'"),
            "{err}"
        );
    }

    #[test]
    fn transport_is_local_unless_the_file_says_tcp() {
        use crate::contract::Transport;
        assert_eq!(
            parse("s.toml", "vcpus = 2").unwrap().transport,
            Transport::Local
        );
        assert_eq!(
            parse("s.toml", "transport = \"tcp\"").unwrap().transport,
            Transport::Tcp
        );
        let err = parse("s.toml", "vcpus = 2\ntransport = \"udp\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("s.toml:2:13: unknown page transport 'udp'"),
            "{err}"
        );
        // The slow-link and outage built-ins send their pages over a real socket.
        assert_eq!(load("throttled").unwrap().transport, Transport::Tcp);
        let outage = load("outage").unwrap();
        assert_eq!(outage.transport, Transport::Tcp);
        assert_eq!(outage.timeline.len(), 2);
    }

    #[test]
    fn backing_is_chosen_at_run_time_unless_the_file_names_one() {
        assert_eq!(parse("s.toml", "vcpus = 2").unwrap().backing, None);
        let c = parse("s.toml", "backing = \"anon\"").unwrap();
        assert_eq!(c.backing, Some(crate::contract::Backing::Anonymous));
    }

    #[test]
    fn a_timeline_can_take_the_link_down_and_up() {
        let text = "transport = \"tcp\"\nlink_timeout = \"5s\"\n[[timeline]]\nat = \"1s\"\nlink = false\n\
                    [[timeline]]\nat = \"3s\"\nlink = true\n";
        let c = parse("t.toml", text).unwrap();
        assert_eq!(c.link_timeout, Duration::from_secs(5));
        let actions: Vec<_> = c.timeline.iter().map(|t| (t.at, t.action)).collect();
        assert_eq!(
            actions,
            vec![
                (Duration::from_secs(1), Action::Link(false)),
                (Duration::from_secs(3), Action::Link(true)),
            ]
        );
    }

    #[test]
    fn prefetch_is_a_key_and_a_timeline_action_and_a_bad_one_says_where() {
        use crate::contract::Prefetch;
        let text = "prefetch = \"adaptive\"\n[[timeline]]\nat = \"1s\"\nprefetch = \"32\"\n\
                    [[timeline]]\nat = \"2s\"\nprefetch = \"off\"\n";
        let c = parse("p.toml", text).unwrap();
        assert_eq!(c.prefetch, Prefetch::Adaptive);
        let actions: Vec<_> = c.timeline.iter().map(|t| t.action).collect();
        assert_eq!(
            actions,
            vec![
                Action::Prefetch(Prefetch::Fixed(32)),
                Action::Prefetch(Prefetch::Off)
            ]
        );
        let err = parse("p.toml", "prefetch = \"lots\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.toml:1:12: unknown prefetch 'lots'"),
            "{err}"
        );
    }

    #[test]
    fn a_timeline_can_migrate_again_and_says_where_a_false_one_is() {
        let c = parse("m.toml", "[[timeline]]\nat = \"2s\"\nmigrate = true\n").unwrap();
        assert_eq!(c.timeline[0].action, Action::Remigrate);
        assert_eq!(c.timeline[0].at, Duration::from_secs(2));
        let err = parse("m.toml", "[[timeline]]\nat = \"2s\"\nmigrate = false\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.toml:3:11: migrate = false does nothing: leave the entry out"
        );
    }

    #[test]
    fn timeline_entry_with_two_actions_is_rejected() {
        let text = "[[timeline]]\nat = \"1s\"\npush = false\nthrottle = \"1M\"\n";
        let err = parse("t.toml", text).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
    }

    #[test]
    fn unknown_scenario_lists_the_built_ins() {
        let err = load("nope").unwrap_err();
        assert!(err.to_string().contains("default, hotspot"), "{err}");
    }
}
