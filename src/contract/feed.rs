//! The one way into the TUI: a `Feed` gives snapshots and takes actions. The engine in this
//! process, a control socket, a recording and a real QEMU are each one.

use std::sync::Arc;

use crossterm::event::KeyEvent;

use super::run::Action;
use super::snapshot::Snapshot;

/// Where the TUI's snapshots come from and where its actions go.
pub trait Feed {
    /// The newest snapshot since the last call, if any; never blocks.
    fn latest(&mut self) -> Option<Arc<Snapshot>>;
    /// Carries out an operator's action; the error is shown in the status line.
    fn act(&mut self, action: Action) -> Result<(), String>;
    /// A key of the feed's own (a replay's pause, speed, seek), seen before the UI's keys;
    /// `Some` takes it, with a line for the status bar.
    fn on_key(&mut self, _key: &KeyEvent) -> Option<String> {
        None
    }
    /// The keys [`Feed::on_key`] takes, as (keys, what they do), for the help overlay.
    fn keys(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Where the snapshots come from, for the header, if not a live engine here.
    fn label(&self) -> Option<String> {
        None
    }
    /// Something the operator should know (a lost connection), once.
    fn notice(&mut self) -> Option<Notice> {
        None
    }
}

/// A line from the feed for the status bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Info(String),
    Error(String),
}
