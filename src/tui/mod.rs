//! The live terminal UI: state and keys ([`app`]), layout ([`view`]) and panes
//! ([`widgets`]), all drawn from [`crate::snapshot::Snapshot`]s.

pub mod theme;
pub mod widgets;
