//! The TUI's state: the snapshot on screen and everything the operator has selected, typed
//! or asked for; keys and clicks come in, engine [`Action`]s go out.

mod actions;

use std::cell::Cell;

use ratatui::crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use ratatui::layout::Rect;

use super::theme::Theme;
use super::widgets::memmap::MapGeometry;
use crate::contract::Action;
use crate::contract::Snapshot;
use crate::units::Rate;

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
    prefetch: Option<crate::contract::Prefetch>,
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
            KeyCode::Char('f') => return self.cycle_prefetch(),
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
mod tests;
