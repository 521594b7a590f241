//! Every style the TUI uses, in one place, so `NO_COLOR` can take all colour away at once.

use ratatui::style::{Color, Modifier, Style};

/// Shades for a heat value, lightest first; also the only cue left without colour.
pub const HEAT_GLYPHS: [char; 5] = [' ', '░', '▒', '▓', '█'];

/// The state a memory-map cell is drawn as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapState {
    /// No pages (past the end of RAM).
    Empty,
    Missing,
    /// Mostly missing and made missing again by an injection.
    Injected,
    InFlight,
    Demand,
    /// Brought in by prefetch with a fault's page.
    Prefetched,
    Pushed,
    Boot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    color: bool,
}

impl Theme {
    /// Colour unless `NO_COLOR` is set and non-empty (<https://no-color.org>).
    pub fn from_env() -> Theme {
        Theme::for_no_color(std::env::var_os("NO_COLOR").as_deref())
    }

    /// The theme for a given value of `NO_COLOR`; pure, so tests need not touch the environment.
    pub fn for_no_color(no_color: Option<&std::ffi::OsStr>) -> Theme {
        Theme {
            color: no_color.is_none_or(|v| v.is_empty()),
        }
    }

    pub fn colored() -> Theme {
        Theme { color: true }
    }

    pub fn plain() -> Theme {
        Theme { color: false }
    }

    pub fn has_color(&self) -> bool {
        self.color
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    pub fn text(&self) -> Style {
        Style::new()
    }

    pub fn dim(&self) -> Style {
        self.fg(Color::DarkGray)
    }

    pub fn label(&self) -> Style {
        self.fg(Color::Gray)
    }

    /// Column headings.
    pub fn heading(&self) -> Style {
        self.fg(Color::Gray).add_modifier(Modifier::BOLD)
    }

    pub fn value(&self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    pub fn title(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    pub fn border(&self) -> Style {
        self.fg(Color::DarkGray)
    }

    /// The focused pane's border: bold so it still stands out without colour.
    pub fn border_focus(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    pub fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    pub fn cursor(&self) -> Style {
        self.fg(Color::White)
            .add_modifier(Modifier::REVERSED | Modifier::BOLD)
    }

    pub fn error(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    pub fn warn(&self) -> Style {
        self.fg(Color::Yellow)
    }

    pub fn good(&self) -> Style {
        self.fg(Color::Green)
    }

    pub fn frozen(&self) -> Style {
        self.fg(Color::Yellow)
            .add_modifier(Modifier::REVERSED | Modifier::BOLD)
    }

    pub fn key(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    pub fn bar(&self) -> Style {
        self.fg(Color::Cyan)
    }

    pub fn sparkline(&self) -> Style {
        self.fg(Color::Magenta)
    }

    /// A share stalled (0 to 1) as a warning level.
    pub fn stall(&self, share: f64) -> Style {
        if share >= 0.5 {
            self.error()
        } else if share >= 0.1 {
            self.warn()
        } else {
            self.text()
        }
    }

    /// Heat 0..=1 as a glyph and style: blank at 0, then four shades from cool to hot.
    pub fn heat(&self, v: f64) -> (char, Style) {
        if v.is_nan() || v <= 0.0 {
            return (HEAT_GLYPHS[0], Style::new());
        }
        let level = ((v.min(1.0) * 4.0).ceil() as usize).clamp(1, 4);
        let color = [Color::Blue, Color::Green, Color::Yellow, Color::Red][level - 1];
        (HEAT_GLYPHS[level], self.fg(color))
    }

    /// A memory-map state as a glyph and style; glyphs differ so the map reads without colour.
    pub fn map(&self, s: MapState) -> (char, Style) {
        match s {
            MapState::Empty => (' ', Style::new()),
            MapState::Missing => ('░', self.fg(Color::DarkGray)),
            MapState::Injected => ('×', self.fg(Color::LightRed).add_modifier(Modifier::BOLD)),
            MapState::InFlight => ('▒', self.fg(Color::Yellow)),
            MapState::Demand => ('█', self.fg(Color::Cyan)),
            MapState::Prefetched => ('▆', self.fg(Color::LightBlue)),
            MapState::Pushed => ('▓', self.fg(Color::Green)),
            MapState::Boot => ('#', self.fg(Color::Magenta)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn no_color_when_set_and_non_empty() {
        assert!(Theme::for_no_color(None).has_color());
        assert!(Theme::for_no_color(Some(OsStr::new(""))).has_color());
        assert!(!Theme::for_no_color(Some(OsStr::new("1"))).has_color());
    }

    #[test]
    fn heat_levels() {
        let t = Theme::plain();
        assert_eq!(t.heat(0.0).0, ' ');
        assert_eq!(t.heat(0.01).0, '░');
        assert_eq!(t.heat(0.5).0, '▒');
        assert_eq!(t.heat(0.51).0, '▓');
        assert_eq!(t.heat(1.0).0, '█');
        assert_eq!(t.heat(7.0).0, '█');
        assert_eq!(t.heat(0.7).1, Style::new());
        assert_eq!(Theme::colored().heat(0.7).1, Style::new().fg(Color::Yellow));
    }
}
