//! `faultline replay`: a recording played back through the same TUI, with pause, speed
//! (1x to 64x) and seeking by time.

use std::sync::Arc;
use std::time::Instant;

use ratatui::crossterm::event::{KeyCode, KeyEvent};

use crate::contract::Action;
use crate::contract::Snapshot;
use crate::contract::{Feed, Notice};

const MAX_SPEED: u32 = 64;
/// How far `,` and `.` seek.
const SEEK_MS: u64 = 5_000;

pub struct ReplayFeed {
    snapshots: Vec<Arc<Snapshot>>,
    /// Playback position, in the recording's own milliseconds since its run started.
    clock_ms: f64,
    speed: u32,
    paused: bool,
    last_tick: Instant,
    shown: Option<usize>,
    notice: Option<Notice>,
}

impl ReplayFeed {
    /// Plays `snapshots` (in order) from the first, at `speed`.
    pub fn new(snapshots: Vec<Arc<Snapshot>>, speed: u32, cut: Option<String>) -> ReplayFeed {
        let clock_ms = snapshots.first().map_or(0.0, |s| s.elapsed_ms as f64);
        let notice = Some(match cut {
            Some(why) => Notice::Error(format!(
                "recording cut short ({why}); replaying what is there"
            )),
            None => Notice::Info(Self::keys_hint(speed)),
        });
        ReplayFeed {
            snapshots,
            clock_ms,
            speed: speed.clamp(1, MAX_SPEED),
            paused: false,
            last_tick: Instant::now(),
            shown: None,
            notice,
        }
    }

    fn keys_hint(speed: u32) -> String {
        format!("replay {speed}x · space pause · < > speed · , . seek 5s · Home/End")
    }

    fn end_ms(&self) -> f64 {
        self.snapshots.last().map_or(0.0, |s| s.elapsed_ms as f64)
    }

    fn start_ms(&self) -> f64 {
        self.snapshots.first().map_or(0.0, |s| s.elapsed_ms as f64)
    }

    fn status(&self) -> String {
        format!(
            "replay {}x{} · {:.1}s of {:.1}s",
            self.speed,
            if self.paused { " paused" } else { "" },
            (self.clock_ms - self.start_ms()) / 1000.0,
            (self.end_ms() - self.start_ms()) / 1000.0
        )
    }
}

impl Feed for ReplayFeed {
    fn latest(&mut self) -> Option<Arc<Snapshot>> {
        let now = Instant::now();
        if !self.paused {
            let dt = now.duration_since(self.last_tick).as_secs_f64() * 1000.0;
            self.clock_ms = (self.clock_ms + dt * f64::from(self.speed)).min(self.end_ms());
        }
        self.last_tick = now;
        // The last snapshot at or before the clock.
        let at = self
            .snapshots
            .partition_point(|s| s.elapsed_ms as f64 <= self.clock_ms)
            .checked_sub(1)?;
        if self.shown == Some(at) {
            return None;
        }
        self.shown = Some(at);
        self.snapshots.get(at).cloned()
    }

    fn act(&mut self, _action: Action) -> Result<(), String> {
        Err("this is a recording: it cannot be steered (space pauses, < > change speed)".into())
    }

    fn on_key(&mut self, key: &KeyEvent) -> Option<String> {
        match key.code {
            KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char('>') => self.speed = (self.speed * 2).min(MAX_SPEED),
            KeyCode::Char('<') => self.speed = (self.speed / 2).max(1),
            KeyCode::Char('.') => {
                self.clock_ms = (self.clock_ms + SEEK_MS as f64).min(self.end_ms());
            }
            KeyCode::Char(',') => {
                self.clock_ms = (self.clock_ms - SEEK_MS as f64).max(self.start_ms());
                self.shown = None;
            }
            KeyCode::Home => {
                self.clock_ms = self.start_ms();
                self.shown = None;
            }
            KeyCode::End => self.clock_ms = self.end_ms(),
            _ => return None,
        }
        Some(self.status())
    }

    fn keys(&self) -> Vec<(String, String)> {
        [
            ("space", "replay: pause / play"),
            ("< >", "replay: half / double speed (1x-64x)"),
            (", .", "replay: seek 5 s back / forward"),
            ("Home End", "replay: start / end"),
        ]
        .into_iter()
        .map(|(k, d)| (k.to_string(), d.to_string()))
        .collect()
    }

    fn label(&self) -> Option<String> {
        Some(format!(
            "REPLAY {}x{} {:.1}/{:.1}s",
            self.speed,
            if self.paused { " PAUSED" } else { "" },
            (self.clock_ms - self.start_ms()) / 1000.0,
            (self.end_ms() - self.start_ms()) / 1000.0
        ))
    }

    fn notice(&mut self) -> Option<Notice> {
        self.notice.take()
    }
}
