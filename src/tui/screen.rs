//! One frame of the view as plain text, for a report, an email or a test: the same drawing
//! as the terminal's, into a buffer instead of a screen.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;

use super::{App, view};

/// The view of `app` on a `width` x `height` screen, one line a row, trailing blanks cut.
pub fn text(app: &App, width: u16, height: u16) -> String {
    // A buffer backend cannot fail.
    let Ok(mut t) = Terminal::new(TestBackend::new(width, height));
    let Ok(_) = t.draw(|f| view::draw(f, app));
    buffer_text(t.backend().buffer())
}

/// A drawn buffer as text, one line a row, trailing blanks cut.
pub fn buffer_text(buf: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A screen size as `WIDTHxHEIGHT`, each at least 20 by 8.
pub fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("'{s}' is not a screen size such as 160x48");
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let (w, h): (u16, u16) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if w < 20 || h < 8 || w > 1000 || h > 500 {
        return Err(format!("screen size {w}x{h}: from 20x8 to 1000x500"));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::{Theme, fixture};

    #[test]
    fn a_frame_comes_out_as_lines_of_the_asked_size() {
        let mut app = App::with_theme(Theme::plain());
        app.on_snapshot(fixture::snapshot(4, 1 << 30, 10));
        let t = text(&app, 100, 30);
        assert_eq!(t.lines().count(), 30);
        assert!(t.lines().all(|l| l.chars().count() <= 100));
        assert!(t.starts_with("faultline"), "{t}");
        assert_eq!(parse_size("160x48"), Ok((160, 48)));
        assert!(parse_size("160").is_err());
        assert!(parse_size("10x5").unwrap_err().contains("from 20x8"));
    }
}
