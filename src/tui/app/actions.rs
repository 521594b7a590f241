//! Keys that become actions for the feed: the throttle ladder and prompt, the push and the
//! link toggles, injection typed or under the map cursor. Each says in the status line what
//! it sent, or why it sent nothing.

use ratatui::crossterm::event::{KeyCode, KeyEvent};

use super::{App, Prompt, PromptKind, Sent, THROTTLE_LADDER};
use crate::contract::{Action, Prefetch};

/// The fixed window the prefetch key offers between off and adaptive.
const PREFETCH_STEP: u32 = 16;
use crate::tui::widgets::memmap::cell_bytes;
use crate::units::{self, Bytes, GpaRange, Rate};
use crate::vmm::layout::BOOT_SIZE;

impl App {
    pub(super) fn prompt_key(&mut self, k: KeyEvent) -> Option<Action> {
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

    pub(super) fn open_prompt(&mut self, kind: PromptKind) {
        self.prompt = Some(Prompt {
            kind,
            input: String::new(),
        });
    }

    /// The setting last sent if no snapshot has come since, else what the newest shows.
    pub(super) fn pending(&self) -> Option<Sent> {
        let seq = self.latest()?.seq;
        self.sent.filter(|s| s.seq == seq)
    }

    pub(super) fn step_throttle(&mut self, up: bool) -> Option<Action> {
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

    pub(super) fn send_throttle(&mut self, r: Rate) -> Option<Action> {
        self.remember(|s| s.throttle = Some(r));
        self.set_info(format!("throttle → {r}"));
        Some(Action::Throttle(r))
    }

    pub(super) fn toggle_push(&mut self) -> Option<Action> {
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

    /// The next prefetch strategy: off, a fixed window, adaptive, and round again.
    pub(super) fn cycle_prefetch(&mut self) -> Option<Action> {
        let Some(latest) = self.latest() else {
            self.set_error("no snapshot yet: the prefetch strategy is unknown");
            return None;
        };
        let Some(shown) = latest.prefetch.as_ref() else {
            self.set_error(if latest.qemu.is_some() {
                "QEMU's post-copy has no prefetch setting"
            } else {
                "this feed does not say its prefetch strategy"
            });
            return None;
        };
        let now = match self.pending().and_then(|s| s.prefetch) {
            Some(p) => p,
            None => shown.strategy.parse().unwrap_or_default(),
        };
        let next = match now {
            Prefetch::Off => Prefetch::Fixed(PREFETCH_STEP),
            Prefetch::Fixed(_) => Prefetch::Adaptive,
            Prefetch::Adaptive => Prefetch::Off,
        };
        self.remember(|s| s.prefetch = Some(next));
        self.set_info(format!("prefetch → {next}"));
        Some(Action::Prefetch(next))
    }

    pub(super) fn toggle_link(&mut self) -> Option<Action> {
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

    pub(super) fn remember(&mut self, f: impl FnOnce(&mut Sent)) {
        let Some(seq) = self.latest().map(|l| l.seq) else {
            return;
        };
        let mut s = self.pending().unwrap_or(Sent {
            seq,
            throttle: None,
            push: None,
            link: None,
            prefetch: None,
        });
        f(&mut s);
        self.sent = Some(s);
    }

    pub(super) fn inject_typed(&mut self, input: &str) -> Option<Action> {
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

    pub(super) fn send_inject(&mut self, r: GpaRange) -> Option<Action> {
        self.set_info(format!("inject {:#x}+{}", r.start, Bytes(r.len)));
        Some(Action::Inject(r))
    }

    /// Injects the displayed cell under the map cursor, clipped to data memory.
    pub(super) fn inject_cursor(&mut self) -> Option<Action> {
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
}
