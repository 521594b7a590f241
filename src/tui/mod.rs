//! The live terminal UI: state and keys ([`app`]), layout ([`view`]) and panes
//! ([`widgets`]), all drawn from [`crate::contract::Snapshot`]s.

pub mod app;
#[doc(hidden)]
pub mod fixture;
pub mod screen;
pub mod terminal;
pub mod theme;
pub mod view;
pub mod widgets;

pub use app::{App, Pane};
pub use terminal::TuiError;
pub use theme::Theme;
pub use view::draw;
