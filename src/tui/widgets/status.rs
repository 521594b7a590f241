//! The bottom line: the open prompt, or the last message (errors stand out), and the help
//! hint at the right.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;

use super::{put, text, text_right};
use crate::tui::theme::Theme;

pub enum StatusLine<'a> {
    Message {
        text: &'a str,
        error: bool,
    },
    Prompt {
        label: &'a str,
        input: &'a str,
        hint: &'a str,
    },
    Empty,
}

const HINT: &str = "? help";

pub fn render(area: Rect, buf: &mut Buffer, line: &StatusLine<'_>, theme: &Theme) {
    let area = area.intersection(buf.area);
    if area.is_empty() {
        return;
    }
    let room = if area.width > HINT.len() as u16 + 10 {
        text_right(buf, area, area.y, HINT, theme.dim());
        Rect {
            width: area.width - HINT.len() as u16 - 1,
            ..area
        }
    } else {
        area
    };
    match line {
        StatusLine::Message { text: t, error } => {
            let style = if *error { theme.error() } else { theme.text() };
            text(buf, room, room.x, room.y, t, style);
        }
        StatusLine::Prompt { label, input, hint } => {
            let mut x = text(buf, room, room.x, room.y, label, theme.key());
            x = text(buf, room, x, room.y, "> ", theme.key());
            x = text(buf, room, x, room.y, input, theme.value());
            // The caret: a reversed cell where the next character goes.
            if x < room.right() {
                put(buf, x, room.y, ' ', theme.selected());
            }
            text(buf, room, x + 2, room.y, hint, theme.dim());
        }
        StatusLine::Empty => {}
    }
}
