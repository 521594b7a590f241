//! The TUI's state: the snapshot on screen and everything the operator has selected, typed
//! or asked for; keys and clicks come in, engine [`Action`]s go out.

use std::cell::Cell;

use ratatui::crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use ratatui::layout::Rect;

use super::theme::Theme;
use super::widgets::memmap::{MapGeometry, cell_bytes};
use crate::contract::Action;
use crate::contract::Snapshot;
use crate::units::{self, Bytes, GpaRange, Rate};
use crate::vmm::layout::BOOT_SIZE;

/// Throttle steps for `+` and `-`, in bytes per second; above the last comes unlimited.
pub const THROTTLE_LADDER: [u64; 10] = [
    1 << 20,
    2 << 20,
    5 << 20,
    10 << 20,
    20 << 20,
    40 << 20,
    80 << 20,
    160 << 20,
    320 << 20,
    1 << 30,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Vcpus,
    MemoryMap,
    Heatmaps,
    Histogram,
}

impl Pane {
    const ORDER: [Pane; 4] = [
        Pane::Vcpus,
        Pane::MemoryMap,
        Pane::Heatmaps,
        Pane::Histogram,
    ];

    fn index(self) -> usize {
        Pane::ORDER.iter().position(|&p| p == self).unwrap_or(0)
    }

    pub fn next(self) -> Pane {
        Pane::ORDER[(self.index() + 1) % Pane::ORDER.len()]
    }

    pub fn prev(self) -> Pane {
        Pane::ORDER[(self.index() + Pane::ORDER.len() - 1) % Pane::ORDER.len()]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    Throttle,
    Inject,
}

impl PromptKind {
    pub fn label(self) -> &'static str {
        match self {
            PromptKind::Throttle => "throttle",
            PromptKind::Inject => "inject",
        }
    }

    pub fn hint(self) -> &'static str {
        match self {
            PromptKind::Throttle => "e.g. 40MiB/s or unlimited · Enter applies, Esc cancels",
            PromptKind::Inject => "e.g. 0x10000000+64M or 256M-320M · Enter applies, Esc cancels",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub kind: PromptKind,
    pub input: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub text: String,
    pub error: bool,
}

/// What the last draw laid out, so that keys and clicks can address what is on screen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drawn {
    pub map: Option<MapGeometry>,
    /// The vCPU table's rows (headings excluded), the first vCPU shown, and how many fit.
    pub vcpu_rows: Option<Rect>,
    pub vcpu_offset: usize,
}

/// A throttle, push or link setting sent but maybe not yet seen in a snapshot: the base
/// for the next step while the snapshot it was sent against is still the newest.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    throttle: Option<Rate>,
    push: Option<bool>,
    link: Option<bool>,
}

pub struct App {
    shown: Option<Snapshot>,
    /// The newest snapshot while frozen, and how many arrived since freezing.
    held: Option<Snapshot>,
    held_count: u64,
    source_label: Option<String>,
    source_keys: Vec<(String, String)>,
    focus: Pane,
    selected: usize,
    /// Snapshot cell under the map cursor (not a displayed cell, so it survives resizes).
    map_cursor: usize,
    detail: bool,
    frozen: bool,
    help: bool,
    prompt: Option<Prompt>,
    status: Option<Status>,
    quit: bool,
    sent: Option<Sent>,
    theme: Theme,
    drawn: Cell<Drawn>,
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    /// Colours unless `NO_COLOR` says otherwise.
    pub fn new() -> App {
        App::with_theme(Theme::from_env())
    }

    pub fn with_theme(theme: Theme) -> App {
        App {
            shown: None,
            held: None,
            held_count: 0,
            source_label: None,
            source_keys: Vec::new(),
            focus: Pane::Vcpus,
            selected: 0,
            map_cursor: 0,
            detail: false,
            frozen: false,
            help: false,
            prompt: None,
            status: None,
            quit: false,
            sent: None,
            theme,
            drawn: Cell::new(Drawn::default()),
        }
    }

    /// The snapshot on screen: the newest, or the one current when the display was frozen.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.shown.as_ref()
    }

    /// The newest snapshot, frozen or not: what commands act on.
    fn latest(&self) -> Option<&Snapshot> {
        self.held.as_ref().or(self.shown.as_ref())
    }

    pub fn focus(&self) -> Pane {
        self.focus
    }

    pub fn selected(&self) -> usize {
        self.selected
    }

    pub fn map_cursor(&self) -> usize {
        self.map_cursor
    }

    pub fn detail(&self) -> bool {
        self.detail
    }

    pub fn frozen(&self) -> bool {
        self.frozen
    }

    /// Snapshots that arrived since the display was frozen.
    pub fn held_count(&self) -> u64 {
        self.held_count
    }

    pub fn help(&self) -> bool {
        self.help
    }

    pub fn prompt(&self) -> Option<&Prompt> {
        self.prompt.as_ref()
    }

    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }

    pub fn theme(&self) -> &Theme {
        &self.theme
    }

    pub fn should_quit(&self) -> bool {
        self.quit
    }

    pub fn drawn(&self) -> Drawn {
        self.drawn.get()
    }

    /// Where the last draw put the memory map, if it fit.
    pub fn drawn_map(&self) -> Option<MapGeometry> {
        self.drawn.get().map
    }

    /// Called by the draw pass with what it laid out.
    pub fn set_drawn(&self, d: Drawn) {
        self.drawn.set(d);
    }

    /// An engine error (or any failure of the terminal loop) for the status line.
    /// Names where the snapshots come from, in the header (a replay and its speed).
    pub fn set_source_label(&mut self, label: Option<String>) {
        self.source_label = label;
    }

    pub fn source_label(&self) -> Option<&str> {
        self.source_label.as_deref()
    }

    /// Keys the snapshot source takes itself (a replay's), for the help overlay.
    pub fn set_source_keys(&mut self, keys: Vec<(String, String)>) {
        self.source_keys = keys;
    }

    pub fn source_keys(&self) -> &[(String, String)] {
        &self.source_keys
    }

    /// A plain message for the status line (a replay's speed, an attach's state).
    pub fn set_message(&mut self, msg: impl Into<String>) {
        self.status = Some(Status {
            text: msg.into(),
            error: false,
        });
    }

    pub fn set_error(&mut self, msg: impl Into<String>) {
        self.status = Some(Status {
            text: msg.into(),
            error: true,
        });
    }

    fn set_info(&mut self, msg: impl Into<String>) {
        self.status = Some(Status {
            text: msg.into(),
            error: false,
        });
    }

    pub fn on_snapshot(&mut self, s: Snapshot) {
        // A new engine message replaces whatever the status line said.
        if let Some(m) = &s.message
            && self.latest().and_then(|l| l.message.as_ref()) != Some(m)
        {
            self.status = Some(Status {
                text: m.clone(),
                error: s.phase == crate::contract::Phase::Failed,
            });
        }
        if self.frozen {
            self.held = Some(s);
            self.held_count += 1;
        } else {
            self.shown = Some(s);
        }
        self.clamp();
    }

    fn clamp(&mut self) {
        if let Some(s) = &self.shown {
            self.selected = self.selected.min(s.vcpus.len().saturating_sub(1));
            self.map_cursor = self
                .map_cursor
                .min(s.memory_map.cells.len().saturating_sub(1));
        }
    }

    /// Handles a key; returns the action to send to the engine, if any.
    pub fn on_key(&mut self, k: KeyEvent) -> Option<Action> {
        if k.kind == KeyEventKind::Release {
            return None;
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return None;
        }
        if self.prompt.is_some() {
            return self.prompt_key(k);
        }
        if self.help {
            match k.code {
                KeyCode::Esc | KeyCode::Char('?') | KeyCode::Enter => self.help = false,
                KeyCode::Char('q') => self.quit = true,
                _ => {}
            }
            return None;
        }
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab => self.focus = self.focus.next(),
            KeyCode::BackTab => self.focus = self.focus.prev(),
            KeyCode::Esc => {
                if self.detail {
                    self.detail = false;
                } else {
                    self.status = None;
                }
            }
            KeyCode::Char(' ') => self.toggle_freeze(),
            KeyCode::Char('+' | '=') => return self.step_throttle(true),
            KeyCode::Char('-') => return self.step_throttle(false),
            KeyCode::Char('t') => self.open_prompt(PromptKind::Throttle),
            KeyCode::Char('i') => self.open_prompt(PromptKind::Inject),
            KeyCode::Char('p') => return self.toggle_push(),
            KeyCode::Char('n') => return self.toggle_link(),
            KeyCode::Char('r') => {
                self.set_info("remigrate: migrating the guest again");
                return Some(Action::Remigrate);
            }
            _ if self.detail || matches!(self.focus, Pane::Vcpus | Pane::Heatmaps) => {
                if k.code == KeyCode::Enter && self.focus == Pane::Vcpus {
                    self.detail = !self.detail;
                } else {
                    self.move_selection(k.code);
                }
            }
            KeyCode::Enter if self.focus == Pane::MemoryMap => return self.inject_cursor(),
            _ if self.focus == Pane::MemoryMap => self.move_map_cursor(k.code),
            _ => {}
        }
        None
    }

    fn prompt_key(&mut self, k: KeyEvent) -> Option<Action> {
        let p = self.prompt.as_mut()?;
        match k.code {
            KeyCode::Esc => self.prompt = None,
            KeyCode::Backspace => {
                p.input.pop();
            }
            KeyCode::Char(c) => p.input.push(c),
            KeyCode::Enter => {
                let p = self.prompt.take()?;
                return match p.kind {
                    PromptKind::Throttle => match units::parse_rate(&p.input) {
                        Ok(r) => self.send_throttle(r),
                        Err(e) => {
                            self.set_error(e.to_string());
                            None
                        }
                    },
                    PromptKind::Inject => self.inject_typed(&p.input),
                };
            }
            _ => {}
        }
        None
    }

    fn open_prompt(&mut self, kind: PromptKind) {
        self.prompt = Some(Prompt {
            kind,
            input: String::new(),
        });
    }

    fn toggle_freeze(&mut self) {
        self.frozen = !self.frozen;
        if self.frozen {
            self.set_info("frozen: snapshots keep arriving; space shows the newest");
        } else {
            if let Some(s) = self.held.take() {
                self.shown = Some(s);
            }
            self.held_count = 0;
            self.clamp();
            self.set_info("live");
        }
    }

    /// The setting last sent if no snapshot has come since, else what the newest shows.
    fn pending(&self) -> Option<Sent> {
        let seq = self.latest()?.seq;
        self.sent.filter(|s| s.seq == seq)
    }

    fn step_throttle(&mut self, up: bool) -> Option<Action> {
        let Some(latest) = self.latest() else {
            self.set_error("no snapshot yet: the current throttle is unknown");
            return None;
        };
        let now = self.pending().and_then(|s| s.throttle).unwrap_or(
            match latest.throttle_bytes_per_sec {
                Some(b) => Rate::BytesPerSec(b),
                None => Rate::Unlimited,
            },
        );
        let next = match (now, up) {
            (Rate::Unlimited, true) => None,
            (Rate::Unlimited, false) => THROTTLE_LADDER.last().copied().map(Rate::BytesPerSec),
            (Rate::BytesPerSec(b), true) => Some(
                THROTTLE_LADDER
                    .iter()
                    .find(|&&s| s > b)
                    .map_or(Rate::Unlimited, |&s| Rate::BytesPerSec(s)),
            ),
            (Rate::BytesPerSec(b), false) => THROTTLE_LADDER
                .iter()
                .rev()
                .find(|&&s| s < b)
                .map(|&s| Rate::BytesPerSec(s)),
        };
        match next {
            Some(r) => self.send_throttle(r),
            None => {
                let end = if up { "unlimited" } else { "the lowest step" };
                self.set_info(format!("throttle already at {end} ({now})"));
                None
            }
        }
    }

    fn send_throttle(&mut self, r: Rate) -> Option<Action> {
        self.remember(|s| s.throttle = Some(r));
        self.set_info(format!("throttle → {r}"));
        Some(Action::Throttle(r))
    }

    fn toggle_push(&mut self) -> Option<Action> {
        let Some(latest) = self.latest() else {
            self.set_error("no snapshot yet: the push state is unknown");
            return None;
        };
        let on = !self
            .pending()
            .and_then(|s| s.push)
            .unwrap_or(latest.push_enabled);
        self.remember(|s| s.push = Some(on));
        self.set_info(if on {
            "push → on"
        } else {
            "push → off (demand faults only)"
        });
        Some(Action::Push(on))
    }

    fn toggle_link(&mut self) -> Option<Action> {
        let Some(latest) = self.latest() else {
            self.set_error("no snapshot yet: the link state is unknown");
            return None;
        };
        let Some(up_now) = latest.link_up else {
            self.set_error(if latest.run.source.is_some() && latest.migration <= 1 {
                "the source is another process: its link cannot be cut from here"
            } else {
                "pages are copied locally: no link to take down (--transport tcp)"
            });
            return None;
        };
        let up = !self.pending().and_then(|s| s.link).unwrap_or(up_now);
        self.remember(|s| s.link = Some(up));
        self.set_info(if up {
            "link → up (fetches resume)"
        } else {
            "link → DOWN (faults wait for the source)"
        });
        Some(Action::Link(up))
    }

    fn remember(&mut self, f: impl FnOnce(&mut Sent)) {
        let Some(seq) = self.latest().map(|l| l.seq) else {
            return;
        };
        let mut s = self.pending().unwrap_or(Sent {
            seq,
            throttle: None,
            push: None,
            link: None,
        });
        f(&mut s);
        self.sent = Some(s);
    }

    fn inject_typed(&mut self, input: &str) -> Option<Action> {
        let r = match units::parse_range(input) {
            Ok(r) => r,
            Err(e) => {
                self.set_error(e.to_string());
                return None;
            }
        };
        let Some(mem) = self.latest().map(|l| l.run.mem_bytes) else {
            self.set_error("no snapshot yet: the guest's memory size is unknown");
            return None;
        };
        if r.start < BOOT_SIZE || r.end() > mem {
            self.set_error(format!(
                "inject {:#x}+{}: outside guest data memory {BOOT_SIZE:#x}..{mem:#x}",
                r.start,
                Bytes(r.len)
            ));
            return None;
        }
        self.send_inject(r)
    }

    fn send_inject(&mut self, r: GpaRange) -> Option<Action> {
        self.set_info(format!("inject {:#x}+{}", r.start, Bytes(r.len)));
        Some(Action::Inject(r))
    }

    /// The geometry of the last drawn map, or one cell per snapshot cell before any draw.
    fn map_geometry(&self) -> Option<MapGeometry> {
        let cells = self.shown.as_ref()?.memory_map.cells.len();
        self.drawn.get().map.or(Some(MapGeometry {
            grid: Rect::default(),
            cols: 32,
            per: 1,
            count: cells,
        }))
    }

    /// Injects the displayed cell under the map cursor, clipped to data memory.
    fn inject_cursor(&mut self) -> Option<Action> {
        let (Some(s), Some(g)) = (self.shown.as_ref(), self.map_geometry()) else {
            self.set_error("no snapshot yet");
            return None;
        };
        let (start, end) = cell_bytes(&s.memory_map, &g, self.map_cursor / g.per, s.run.mem_bytes);
        let start = start.max(BOOT_SIZE);
        if end <= start {
            self.set_error(format!(
                "{:#x}..{BOOT_SIZE:#x} is the boot region: it moves with the vCPU state and cannot be injected",
                start.min(end)
            ));
            return None;
        }
        self.send_inject(GpaRange {
            start,
            len: end - start,
        })
    }

    fn move_selection(&mut self, code: KeyCode) {
        let n = self.shown.as_ref().map_or(0, |s| s.vcpus.len());
        if n == 0 {
            return;
        }
        let page = self
            .drawn
            .get()
            .vcpu_rows
            .map_or(10, |r| usize::from(r.height).max(1));
        let last = n - 1;
        self.selected = match code {
            KeyCode::Up | KeyCode::Char('k') => self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => (self.selected + 1).min(last),
            KeyCode::PageUp => self.selected.saturating_sub(page),
            KeyCode::PageDown => (self.selected + page).min(last),
            KeyCode::Home => 0,
            KeyCode::End => last,
            _ => self.selected,
        };
    }

    fn move_map_cursor(&mut self, code: KeyCode) {
        let Some(g) = self.map_geometry() else {
            return;
        };
        let (i, cols, last) = (
            self.map_cursor / g.per,
            usize::from(g.cols),
            g.count.saturating_sub(1),
        );
        let j = match code {
            KeyCode::Left | KeyCode::Char('h') => i.saturating_sub(1),
            KeyCode::Right | KeyCode::Char('l') => (i + 1).min(last),
            KeyCode::Up | KeyCode::Char('k') => i.checked_sub(cols).unwrap_or(i),
            KeyCode::Down | KeyCode::Char('j') if i + cols <= last => i + cols,
            KeyCode::Home => 0,
            KeyCode::End => last,
            _ => i,
        };
        self.map_cursor = j * g.per;
    }

    /// A left click moves the map cursor or selects a vCPU; the wheel moves the selection.
    pub fn on_mouse(&mut self, m: MouseEvent) {
        let d = self.drawn.get();
        match m.kind {
            MouseEventKind::Down(MouseButton::Left) => {
                if let Some(g) = d.map
                    && let Some(i) = g.cell_at(m.column, m.row)
                {
                    self.focus = Pane::MemoryMap;
                    self.map_cursor = i * g.per;
                } else if let Some(r) = d.vcpu_rows
                    && r.contains((m.column, m.row).into())
                {
                    let i = d.vcpu_offset + usize::from(m.row - r.y);
                    if i < self.shown.as_ref().map_or(0, |s| s.vcpus.len()) {
                        self.focus = Pane::Vcpus;
                        self.selected = i;
                    }
                }
            }
            MouseEventKind::ScrollUp => self.move_selection(KeyCode::Up),
            MouseEventKind::ScrollDown => self.move_selection(KeyCode::Down),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::buffer::Buffer;

    use super::*;
    use crate::tui::{fixture, view};

    const MIB: u64 = 1 << 20;

    fn press(app: &mut App, code: KeyCode) -> Option<Action> {
        app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn typed(app: &mut App, s: &str) {
        for c in s.chars() {
            assert_eq!(press(app, KeyCode::Char(c)), None);
        }
    }

    fn status(app: &App) -> (&str, bool) {
        let s = app.status().expect("a status message");
        (s.text.as_str(), s.error)
    }

    /// An app showing a 4-vCPU, 1 GiB run in post-copy, throttled to `throttle`.
    fn app_with(throttle: Option<u64>) -> App {
        let mut app = App::with_theme(Theme::plain());
        let mut s = fixture::snapshot(4, 1 << 30, 20);
        s.throttle_bytes_per_sec = throttle;
        app.on_snapshot(s);
        app
    }

    #[test]
    fn plus_and_minus_walk_the_ladder() {
        let mut app = app_with(Some(40 * MIB));
        assert_eq!(
            press(&mut app, KeyCode::Char('+')),
            Some(Action::Throttle(Rate::BytesPerSec(80 * MIB)))
        );
        assert_eq!(status(&app), ("throttle → 80.0 MiB/s", false));
        // No snapshot since: the next step starts from what was sent.
        assert_eq!(
            press(&mut app, KeyCode::Char('=')),
            Some(Action::Throttle(Rate::BytesPerSec(160 * MIB)))
        );
        // A new snapshot is the truth again.
        let mut s = fixture::snapshot(4, 1 << 30, 21);
        s.throttle_bytes_per_sec = Some(40 * MIB);
        app.on_snapshot(s);
        assert_eq!(
            press(&mut app, KeyCode::Char('-')),
            Some(Action::Throttle(Rate::BytesPerSec(20 * MIB)))
        );
        // Between steps: up to the next one above, down to the next one below.
        let mut app = app_with(Some(25 * MIB));
        assert_eq!(
            press(&mut app, KeyCode::Char('+')),
            Some(Action::Throttle(Rate::BytesPerSec(40 * MIB)))
        );
        let mut app = app_with(Some(25 * MIB));
        assert_eq!(
            press(&mut app, KeyCode::Char('-')),
            Some(Action::Throttle(Rate::BytesPerSec(20 * MIB)))
        );
    }

    #[test]
    fn ladder_ends() {
        let mut app = app_with(None);
        assert_eq!(press(&mut app, KeyCode::Char('+')), None);
        assert_eq!(
            status(&app),
            ("throttle already at unlimited (unlimited)", false)
        );
        assert_eq!(
            press(&mut app, KeyCode::Char('-')),
            Some(Action::Throttle(Rate::BytesPerSec(1 << 30)))
        );
        let mut app = app_with(Some(1 << 30));
        assert_eq!(
            press(&mut app, KeyCode::Char('+')),
            Some(Action::Throttle(Rate::Unlimited))
        );
        assert_eq!(status(&app), ("throttle → unlimited", false));
        let mut app = app_with(Some(MIB));
        assert_eq!(press(&mut app, KeyCode::Char('-')), None);
        let mut empty = App::with_theme(Theme::plain());
        assert_eq!(press(&mut empty, KeyCode::Char('+')), None);
        assert!(status(&empty).1);
    }

    #[test]
    fn typed_throttle() {
        let mut app = app_with(Some(40 * MIB));
        press(&mut app, KeyCode::Char('t'));
        typed(&mut app, "25MiB/sx");
        press(&mut app, KeyCode::Backspace);
        assert_eq!(app.prompt().map(|p| p.input.as_str()), Some("25MiB/s"));
        assert_eq!(
            press(&mut app, KeyCode::Enter),
            Some(Action::Throttle(Rate::BytesPerSec(25 * MIB)))
        );
        assert_eq!(app.prompt(), None);
        assert_eq!(status(&app), ("throttle → 25.0 MiB/s", false));

        press(&mut app, KeyCode::Char('t'));
        typed(&mut app, "banana");
        assert_eq!(press(&mut app, KeyCode::Enter), None);
        let (text, error) = status(&app);
        assert!(error && text.contains("'banana'"), "{text}");
        assert_eq!(app.prompt(), None);

        // Esc cancels; keys typed into a prompt are not commands.
        press(&mut app, KeyCode::Char('t'));
        typed(&mut app, "qp r");
        assert_eq!(press(&mut app, KeyCode::Esc), None);
        assert!(!app.should_quit());
        assert_eq!(app.prompt(), None);
    }

    #[test]
    fn typed_inject_is_checked_against_data_memory() {
        let mut app = app_with(None);
        for bad in ["0x3ff00000+2M", "0x100000+64K", "1G+4K"] {
            press(&mut app, KeyCode::Char('i'));
            typed(&mut app, bad);
            assert_eq!(press(&mut app, KeyCode::Enter), None, "{bad}");
            let (text, error) = status(&app);
            assert!(
                error && text.contains("outside guest data memory 0x200000..0x40000000"),
                "{text}"
            );
        }
        press(&mut app, KeyCode::Char('i'));
        typed(&mut app, "nonsense");
        assert_eq!(press(&mut app, KeyCode::Enter), None);
        assert!(status(&app).1);
        press(&mut app, KeyCode::Char('i'));
        typed(&mut app, "0x10000000+64M");
        assert_eq!(
            press(&mut app, KeyCode::Enter),
            Some(Action::Inject(GpaRange {
                start: 0x1000_0000,
                len: 64 * MIB
            }))
        );
        assert_eq!(status(&app), ("inject 0x10000000+64.0 MiB", false));
    }

    #[test]
    fn enter_on_the_map_injects_the_cell_under_the_cursor() {
        let mut app = app_with(None);
        press(&mut app, KeyCode::Tab);
        assert_eq!(app.focus(), Pane::MemoryMap);
        // Before any draw: one displayed cell per region (2 MiB), 32 to a row.
        assert_eq!(press(&mut app, KeyCode::Enter), None);
        let (text, error) = status(&app);
        assert!(error && text.contains("boot region"), "{text}");
        for c in ['l', 'l', 'j', 'h', 'l'] {
            press(&mut app, KeyCode::Char(c));
        }
        assert_eq!(app.map_cursor(), 34);
        assert_eq!(
            press(&mut app, KeyCode::Enter),
            Some(Action::Inject(GpaRange {
                start: 34 * 2 * MIB,
                len: 2 * MIB
            }))
        );
        // Drawn with 4 regions to a cell: the first cell loses the boot region.
        app.set_drawn(Drawn {
            map: Some(MapGeometry {
                grid: Rect::new(0, 0, 16, 8),
                cols: 16,
                per: 4,
                count: 128,
            }),
            ..Drawn::default()
        });
        press(&mut app, KeyCode::Home);
        assert_eq!(
            press(&mut app, KeyCode::Enter),
            Some(Action::Inject(GpaRange {
                start: 2 * MIB,
                len: 6 * MIB
            }))
        );
        assert_eq!(status(&app), ("inject 0x200000+6.0 MiB", false));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Right);
        assert_eq!(app.map_cursor(), 17 * 4);
        press(&mut app, KeyCode::End);
        assert_eq!(app.map_cursor(), 127 * 4);
        press(&mut app, KeyCode::Down);
        assert_eq!(app.map_cursor(), 127 * 4);
    }

    #[test]
    fn the_link_key_toggles_a_tcp_link_and_explains_a_local_run() {
        let mut app = app_with(None);
        assert_eq!(press(&mut app, KeyCode::Char('n')), None);
        assert_eq!(
            status(&app),
            (
                "pages are copied locally: no link to take down (--transport tcp)",
                true
            )
        );
        let mut s = fixture::snapshot(4, 1 << 30, 21);
        s.link_up = Some(true);
        app.on_snapshot(s);
        assert_eq!(
            press(&mut app, KeyCode::Char('n')),
            Some(Action::Link(false))
        );
        assert_eq!(
            status(&app),
            ("link → DOWN (faults wait for the source)", false)
        );
        // Pressed again before a snapshot shows the change: back up, not down twice.
        assert_eq!(
            press(&mut app, KeyCode::Char('n')),
            Some(Action::Link(true))
        );
        let mut s = fixture::snapshot(4, 1 << 30, 22);
        s.link_up = Some(false);
        app.on_snapshot(s);
        assert_eq!(
            press(&mut app, KeyCode::Char('n')),
            Some(Action::Link(true))
        );
    }

    #[test]
    fn push_remigrate_and_quit() {
        let mut app = app_with(None);
        assert_eq!(
            press(&mut app, KeyCode::Char('p')),
            Some(Action::Push(false))
        );
        assert_eq!(status(&app), ("push → off (demand faults only)", false));
        assert_eq!(
            press(&mut app, KeyCode::Char('p')),
            Some(Action::Push(true))
        );
        assert_eq!(press(&mut app, KeyCode::Char('r')), Some(Action::Remigrate));
        assert!(status(&app).0.starts_with("remigrate"));
        assert!(!app.should_quit());
        press(&mut app, KeyCode::Char('q'));
        assert!(app.should_quit());

        let mut app = app_with(None);
        press(&mut app, KeyCode::Char('i'));
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(app.should_quit());
    }

    #[test]
    fn freeze_keeps_the_old_snapshot() {
        let mut app = App::with_theme(Theme::plain());
        app.on_snapshot(fixture::snapshot(4, 1 << 30, 10));
        press(&mut app, KeyCode::Char(' '));
        assert!(app.frozen());
        app.on_snapshot(fixture::snapshot(4, 1 << 30, 11));
        app.on_snapshot(fixture::snapshot(4, 1 << 30, 12));
        assert_eq!(app.snapshot().map(|s| s.seq), Some(11));
        assert_eq!(app.held_count(), 2);
        // Commands act on the newest, not the frozen picture.
        let mut s = fixture::snapshot(4, 1 << 30, 13);
        s.push_enabled = false;
        app.on_snapshot(s);
        assert_eq!(
            press(&mut app, KeyCode::Char('p')),
            Some(Action::Push(true))
        );
        press(&mut app, KeyCode::Char(' '));
        assert!(!app.frozen());
        assert_eq!(app.snapshot().map(|s| s.seq), Some(14));
        assert_eq!(app.held_count(), 0);
    }

    #[test]
    fn selection_scrolls_through_64_vcpus() {
        let mut app = App::with_theme(Theme::plain());
        app.on_snapshot(fixture::snapshot(64, 16 << 30, 20));
        let draw = |app: &App| {
            let mut buf = Buffer::empty(Rect::new(0, 0, 80, 24));
            view::render(buf.area, &mut buf, app);
            buf
        };
        let row_of = |buf: &Buffer, id: usize| {
            let r = app_rows(buf);
            r.iter().position(|l| l.starts_with(&format!("│v{id} ")))
        };
        let buf = draw(&app);
        let rows = app.drawn().vcpu_rows.expect("the table was drawn");
        let page = usize::from(rows.height);
        assert_eq!((app.drawn().vcpu_offset, page), (0, 5));
        assert!(row_of(&buf, 0).is_some() && row_of(&buf, 5).is_none());
        press(&mut app, KeyCode::End);
        assert_eq!(app.selected(), 63);
        let buf = draw(&app);
        assert_eq!(app.drawn().vcpu_offset, 59);
        assert!(row_of(&buf, 63).is_some() && row_of(&buf, 58).is_none());
        press(&mut app, KeyCode::PageUp);
        assert_eq!(app.selected(), 58);
        draw(&app);
        assert_eq!(app.drawn().vcpu_offset, 58);
        for _ in 0..3 {
            press(&mut app, KeyCode::Char('k'));
        }
        press(&mut app, KeyCode::Up);
        assert_eq!(app.selected(), 54);
        draw(&app);
        assert_eq!(app.drawn().vcpu_offset, 54);
        press(&mut app, KeyCode::PageDown);
        press(&mut app, KeyCode::Char('j'));
        assert_eq!(app.selected(), 60);
        press(&mut app, KeyCode::Home);
        let buf = draw(&app);
        assert_eq!((app.selected(), app.drawn().vcpu_offset), (0, 0));
        assert!(row_of(&buf, 0).is_some());
        // A smaller run clamps the selection.
        press(&mut app, KeyCode::End);
        app.on_snapshot(fixture::snapshot(4, 1 << 30, 21));
        assert_eq!(app.selected(), 3);
    }

    fn app_rows(buf: &Buffer) -> Vec<String> {
        (0..buf.area.height)
            .map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect())
            .collect()
    }

    #[test]
    fn panes_detail_help_and_escape() {
        let mut app = app_with(None);
        let order: Vec<Pane> = (0..4)
            .map(|_| {
                press(&mut app, KeyCode::Tab);
                app.focus()
            })
            .collect();
        assert_eq!(
            order,
            [
                Pane::MemoryMap,
                Pane::Heatmaps,
                Pane::Histogram,
                Pane::Vcpus
            ]
        );
        press(&mut app, KeyCode::BackTab);
        assert_eq!(app.focus(), Pane::Histogram);
        press(&mut app, KeyCode::Tab);
        press(&mut app, KeyCode::Enter);
        assert!(app.detail());
        press(&mut app, KeyCode::Down);
        assert_eq!(app.selected(), 1);
        press(&mut app, KeyCode::Esc);
        assert!(!app.detail());
        press(&mut app, KeyCode::Enter);
        press(&mut app, KeyCode::Enter);
        assert!(!app.detail());
        // Help swallows commands until closed.
        press(&mut app, KeyCode::Char('?'));
        assert!(app.help());
        assert_eq!(press(&mut app, KeyCode::Char('-')), None);
        press(&mut app, KeyCode::Esc);
        assert!(!app.help());
        assert!(press(&mut app, KeyCode::Char('-')).is_some());
        // Releases (kitty keyboard protocol) are not presses.
        let mut release = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        app.on_key(release);
        assert!(!app.should_quit());
    }

    #[test]
    fn engine_messages_and_errors_reach_the_status_line() {
        let mut app = App::with_theme(Theme::plain());
        app.on_snapshot(fixture::snapshot(4, 1 << 30, 20));
        assert_eq!(status(&app), ("post-copy: serving faults", false));
        press(&mut app, KeyCode::Char('r'));
        // The same engine message again does not hide the operator's.
        app.on_snapshot(fixture::snapshot(4, 1 << 30, 21));
        assert!(status(&app).0.starts_with("remigrate"));
        app.set_error("engine: lost the source");
        assert_eq!(status(&app), ("engine: lost the source", true));
    }
}
