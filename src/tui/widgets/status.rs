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

#[cfg(test)]
mod tests {
    use ratatui::style::{Color, Modifier, Style};

    use super::*;

    #[test]
    fn errors_stand_out_and_prompts_show_a_caret() {
        let theme = Theme::colored();
        let dim = Style::new().fg(Color::DarkGray);
        let mut buf = Buffer::empty(Rect::new(0, 0, 30, 1));
        let line = StatusLine::Message {
            text: "lost the source",
            error: true,
        };
        render(buf.area, &mut buf, &line, &theme);
        let mut expected = Buffer::with_lines(["lost the source         ? help"]);
        expected.set_style(
            Rect::new(0, 0, 15, 1),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        );
        expected.set_style(Rect::new(24, 0, 6, 1), dim);
        assert_eq!(buf, expected);

        let mut buf = Buffer::empty(Rect::new(0, 0, 30, 1));
        let line = StatusLine::Prompt {
            label: "inject",
            input: "1G",
            hint: "Esc",
        };
        render(buf.area, &mut buf, &line, &theme);
        let mut expected = Buffer::with_lines(["inject> 1G  Esc         ? help"]);
        let key = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);
        expected.set_style(Rect::new(0, 0, 8, 1), key);
        expected.set_style(
            Rect::new(8, 0, 2, 1),
            Style::new().add_modifier(Modifier::BOLD),
        );
        expected.set_style(
            Rect::new(10, 0, 1, 1),
            Style::new().add_modifier(Modifier::REVERSED),
        );
        expected.set_style(Rect::new(12, 0, 3, 1), dim);
        expected.set_style(Rect::new(24, 0, 6, 1), dim);
        assert_eq!(buf, expected);
    }
}
