//! The app's state and keys, driven as an operator would, drawn into plain buffers.

use ratatui::buffer::Buffer;

use super::*;
use crate::tui::{fixture, view};
use crate::units::GpaRange;

const MIB: u64 = 1 << 20;

fn press(app: &mut App, code: KeyCode) -> Option<Action> {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        assert_eq!(press(app, KeyCode::Char(c)), None);
    }
}

fn status(app: &App) -> (&str, bool) {
    let s = app.status().expect("a status message");
    (s.text.as_str(), s.error)
}

/// An app showing a 4-vCPU, 1 GiB run in post-copy, throttled to `throttle`.
fn app_with(throttle: Option<u64>) -> App {
    let mut app = App::with_theme(Theme::plain());
    let mut s = fixture::snapshot(4, 1 << 30, 20);
    s.throttle_bytes_per_sec = throttle;
    app.on_snapshot(s);
    app
}

#[test]
fn plus_and_minus_walk_the_ladder() {
    let mut app = app_with(Some(40 * MIB));
    assert_eq!(
        press(&mut app, KeyCode::Char('+')),
        Some(Action::Throttle(Rate::BytesPerSec(80 * MIB)))
    );
    assert_eq!(status(&app), ("throttle → 80.0 MiB/s", false));
    // No snapshot since: the next step starts from what was sent.
    assert_eq!(
        press(&mut app, KeyCode::Char('=')),
        Some(Action::Throttle(Rate::BytesPerSec(160 * MIB)))
    );
    // A new snapshot is the truth again.
    let mut s = fixture::snapshot(4, 1 << 30, 21);
    s.throttle_bytes_per_sec = Some(40 * MIB);
    app.on_snapshot(s);
    assert_eq!(
        press(&mut app, KeyCode::Char('-')),
        Some(Action::Throttle(Rate::BytesPerSec(20 * MIB)))
    );
    // Between steps: up to the next one above, down to the next one below.
    let mut app = app_with(Some(25 * MIB));
    assert_eq!(
        press(&mut app, KeyCode::Char('+')),
        Some(Action::Throttle(Rate::BytesPerSec(40 * MIB)))
    );
    let mut app = app_with(Some(25 * MIB));
    assert_eq!(
        press(&mut app, KeyCode::Char('-')),
        Some(Action::Throttle(Rate::BytesPerSec(20 * MIB)))
    );
}

#[test]
fn ladder_ends() {
    let mut app = app_with(None);
    assert_eq!(press(&mut app, KeyCode::Char('+')), None);
    assert_eq!(
        status(&app),
        ("throttle already at unlimited (unlimited)", false)
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('-')),
        Some(Action::Throttle(Rate::BytesPerSec(1 << 30)))
    );
    let mut app = app_with(Some(1 << 30));
    assert_eq!(
        press(&mut app, KeyCode::Char('+')),
        Some(Action::Throttle(Rate::Unlimited))
    );
    assert_eq!(status(&app), ("throttle → unlimited", false));
    let mut app = app_with(Some(MIB));
    assert_eq!(press(&mut app, KeyCode::Char('-')), None);
    let mut empty = App::with_theme(Theme::plain());
    assert_eq!(press(&mut empty, KeyCode::Char('+')), None);
    assert!(status(&empty).1);
}

#[test]
fn typed_throttle() {
    let mut app = app_with(Some(40 * MIB));
    press(&mut app, KeyCode::Char('t'));
    typed(&mut app, "25MiB/sx");
    press(&mut app, KeyCode::Backspace);
    assert_eq!(app.prompt().map(|p| p.input.as_str()), Some("25MiB/s"));
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(Action::Throttle(Rate::BytesPerSec(25 * MIB)))
    );
    assert_eq!(app.prompt(), None);
    assert_eq!(status(&app), ("throttle → 25.0 MiB/s", false));

    press(&mut app, KeyCode::Char('t'));
    typed(&mut app, "banana");
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    let (text, error) = status(&app);
    assert!(error && text.contains("'banana'"), "{text}");
    assert_eq!(app.prompt(), None);

    // Esc cancels; keys typed into a prompt are not commands.
    press(&mut app, KeyCode::Char('t'));
    typed(&mut app, "qp r");
    assert_eq!(press(&mut app, KeyCode::Esc), None);
    assert!(!app.should_quit());
    assert_eq!(app.prompt(), None);
}

#[test]
fn typed_inject_is_checked_against_data_memory() {
    let mut app = app_with(None);
    for bad in ["0x3ff00000+2M", "0x100000+64K", "1G+4K"] {
        press(&mut app, KeyCode::Char('i'));
        typed(&mut app, bad);
        assert_eq!(press(&mut app, KeyCode::Enter), None, "{bad}");
        let (text, error) = status(&app);
        assert!(
            error && text.contains("outside guest data memory 0x200000..0x40000000"),
            "{text}"
        );
    }
    press(&mut app, KeyCode::Char('i'));
    typed(&mut app, "nonsense");
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    assert!(status(&app).1);
    press(&mut app, KeyCode::Char('i'));
    typed(&mut app, "0x10000000+64M");
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(Action::Inject(GpaRange {
            start: 0x1000_0000,
            len: 64 * MIB
        }))
    );
    assert_eq!(status(&app), ("inject 0x10000000+64.0 MiB", false));
}

#[test]
fn enter_on_the_map_injects_the_cell_under_the_cursor() {
    let mut app = app_with(None);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.focus(), Pane::MemoryMap);
    // Before any draw: one displayed cell per region (2 MiB), 32 to a row.
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    let (text, error) = status(&app);
    assert!(error && text.contains("boot region"), "{text}");
    for c in ['l', 'l', 'j', 'h', 'l'] {
        press(&mut app, KeyCode::Char(c));
    }
    assert_eq!(app.map_cursor(), 34);
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(Action::Inject(GpaRange {
            start: 34 * 2 * MIB,
            len: 2 * MIB
        }))
    );
    // Drawn with 4 regions to a cell: the first cell loses the boot region.
    app.set_drawn(Drawn {
        map: Some(MapGeometry {
            grid: Rect::new(0, 0, 16, 8),
            cols: 16,
            per: 4,
            count: 128,
        }),
        ..Drawn::default()
    });
    press(&mut app, KeyCode::Home);
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(Action::Inject(GpaRange {
            start: 2 * MIB,
            len: 6 * MIB
        }))
    );
    assert_eq!(status(&app), ("inject 0x200000+6.0 MiB", false));
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Right);
    assert_eq!(app.map_cursor(), 17 * 4);
    press(&mut app, KeyCode::End);
    assert_eq!(app.map_cursor(), 127 * 4);
    press(&mut app, KeyCode::Down);
    assert_eq!(app.map_cursor(), 127 * 4);
}

#[test]
fn the_link_key_toggles_a_tcp_link_and_explains_a_local_run() {
    let mut app = app_with(None);
    assert_eq!(press(&mut app, KeyCode::Char('n')), None);
    assert_eq!(
        status(&app),
        (
            "pages are copied locally: no link to take down (--transport tcp)",
            true
        )
    );
    let mut s = fixture::snapshot(4, 1 << 30, 21);
    s.link_up = Some(true);
    app.on_snapshot(s);
    assert_eq!(
        press(&mut app, KeyCode::Char('n')),
        Some(Action::Link(false))
    );
    assert_eq!(
        status(&app),
        ("link → DOWN (faults wait for the source)", false)
    );
    // Pressed again before a snapshot shows the change: back up, not down twice.
    assert_eq!(
        press(&mut app, KeyCode::Char('n')),
        Some(Action::Link(true))
    );
    let mut s = fixture::snapshot(4, 1 << 30, 22);
    s.link_up = Some(false);
    app.on_snapshot(s);
    assert_eq!(
        press(&mut app, KeyCode::Char('n')),
        Some(Action::Link(true))
    );
}

#[test]
fn push_remigrate_and_quit() {
    let mut app = app_with(None);
    assert_eq!(
        press(&mut app, KeyCode::Char('p')),
        Some(Action::Push(false))
    );
    assert_eq!(status(&app), ("push → off (demand faults only)", false));
    assert_eq!(
        press(&mut app, KeyCode::Char('p')),
        Some(Action::Push(true))
    );
    assert_eq!(press(&mut app, KeyCode::Char('r')), Some(Action::Remigrate));
    assert!(status(&app).0.starts_with("remigrate"));
    assert!(!app.should_quit());
    press(&mut app, KeyCode::Char('q'));
    assert!(app.should_quit());

    let mut app = app_with(None);
    press(&mut app, KeyCode::Char('i'));
    app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(app.should_quit());
}

#[test]
fn the_prefetch_key_steps_through_the_strategies_and_is_refused_where_unknown() {
    use crate::contract::{Prefetch, PrefetchStatus};
    let mut app = app_with(None);
    // The fixture's feed says no strategy (a QEMU feed or an old recording would not).
    assert_eq!(press(&mut app, KeyCode::Char('f')), None);
    assert!(status(&app).1, "an error is shown");
    let mut s = fixture::snapshot(4, 1 << 30, 30);
    s.prefetch = Some(PrefetchStatus {
        strategy: "off".into(),
        pages: 0,
        used: 0,
    });
    app.on_snapshot(s);
    assert_eq!(
        press(&mut app, KeyCode::Char('f')),
        Some(Action::Prefetch(Prefetch::Fixed(16)))
    );
    assert_eq!(status(&app), ("prefetch → 16", false));
    // Before the next snapshot, the key goes on from what it sent.
    assert_eq!(
        press(&mut app, KeyCode::Char('f')),
        Some(Action::Prefetch(Prefetch::Adaptive))
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('f')),
        Some(Action::Prefetch(Prefetch::Off))
    );
}

#[test]
fn freeze_keeps_the_old_snapshot() {
    let mut app = App::with_theme(Theme::plain());
    app.on_snapshot(fixture::snapshot(4, 1 << 30, 10));
    press(&mut app, KeyCode::Char(' '));
    assert!(app.frozen());
    app.on_snapshot(fixture::snapshot(4, 1 << 30, 11));
    app.on_snapshot(fixture::snapshot(4, 1 << 30, 12));
    assert_eq!(app.snapshot().map(|s| s.seq), Some(11));
    assert_eq!(app.held_count(), 2);
    // Commands act on the newest, not the frozen picture.
    let mut s = fixture::snapshot(4, 1 << 30, 13);
    s.push_enabled = false;
    app.on_snapshot(s);
    assert_eq!(
        press(&mut app, KeyCode::Char('p')),
        Some(Action::Push(true))
    );
    press(&mut app, KeyCode::Char(' '));
    assert!(!app.frozen());
    assert_eq!(app.snapshot().map(|s| s.seq), Some(14));
    assert_eq!(app.held_count(), 0);
}

#[test]
fn selection_scrolls_through_64_vcpus() {
    let mut app = App::with_theme(Theme::plain());
    app.on_snapshot(fixture::snapshot(64, 16 << 30, 20));
    let draw = |app: &App| {
        let mut buf = Buffer::empty(Rect::new(0, 0, 80, 24));
        view::render(buf.area, &mut buf, app);
        buf
    };
    let row_of = |buf: &Buffer, id: usize| {
        let r = app_rows(buf);
        r.iter().position(|l| l.starts_with(&format!("│v{id} ")))
    };
    let buf = draw(&app);
    let rows = app.drawn().vcpu_rows.expect("the table was drawn");
    let page = usize::from(rows.height);
    assert_eq!((app.drawn().vcpu_offset, page), (0, 5));
    assert!(row_of(&buf, 0).is_some() && row_of(&buf, 5).is_none());
    press(&mut app, KeyCode::End);
    assert_eq!(app.selected(), 63);
    let buf = draw(&app);
    assert_eq!(app.drawn().vcpu_offset, 59);
    assert!(row_of(&buf, 63).is_some() && row_of(&buf, 58).is_none());
    press(&mut app, KeyCode::PageUp);
    assert_eq!(app.selected(), 58);
    draw(&app);
    assert_eq!(app.drawn().vcpu_offset, 58);
    for _ in 0..3 {
        press(&mut app, KeyCode::Char('k'));
    }
    press(&mut app, KeyCode::Up);
    assert_eq!(app.selected(), 54);
    draw(&app);
    assert_eq!(app.drawn().vcpu_offset, 54);
    press(&mut app, KeyCode::PageDown);
    press(&mut app, KeyCode::Char('j'));
    assert_eq!(app.selected(), 60);
    press(&mut app, KeyCode::Home);
    let buf = draw(&app);
    assert_eq!((app.selected(), app.drawn().vcpu_offset), (0, 0));
    assert!(row_of(&buf, 0).is_some());
    // A smaller run clamps the selection.
    press(&mut app, KeyCode::End);
    app.on_snapshot(fixture::snapshot(4, 1 << 30, 21));
    assert_eq!(app.selected(), 3);
}

fn app_rows(buf: &Buffer) -> Vec<String> {
    (0..buf.area.height)
        .map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect())
        .collect()
}

#[test]
fn panes_detail_help_and_escape() {
    let mut app = app_with(None);
    let order: Vec<Pane> = (0..4)
        .map(|_| {
            press(&mut app, KeyCode::Tab);
            app.focus()
        })
        .collect();
    assert_eq!(
        order,
        [
            Pane::MemoryMap,
            Pane::Heatmaps,
            Pane::Histogram,
            Pane::Vcpus
        ]
    );
    press(&mut app, KeyCode::BackTab);
    assert_eq!(app.focus(), Pane::Histogram);
    press(&mut app, KeyCode::Tab);
    press(&mut app, KeyCode::Enter);
    assert!(app.detail());
    press(&mut app, KeyCode::Down);
    assert_eq!(app.selected(), 1);
    press(&mut app, KeyCode::Esc);
    assert!(!app.detail());
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Enter);
    assert!(!app.detail());
    // Help swallows commands until closed.
    press(&mut app, KeyCode::Char('?'));
    assert!(app.help());
    assert_eq!(press(&mut app, KeyCode::Char('-')), None);
    press(&mut app, KeyCode::Esc);
    assert!(!app.help());
    assert!(press(&mut app, KeyCode::Char('-')).is_some());
    // Releases (kitty keyboard protocol) are not presses.
    let mut release = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
    release.kind = KeyEventKind::Release;
    app.on_key(release);
    assert!(!app.should_quit());
}

#[test]
fn engine_messages_and_errors_reach_the_status_line() {
    let mut app = App::with_theme(Theme::plain());
    app.on_snapshot(fixture::snapshot(4, 1 << 30, 20));
    assert_eq!(status(&app), ("post-copy: serving faults", false));
    press(&mut app, KeyCode::Char('r'));
    // The same engine message again does not hide the operator's.
    app.on_snapshot(fixture::snapshot(4, 1 << 30, 21));
    assert!(status(&app).0.starts_with("remigrate"));
    app.set_error("engine: lost the source");
    assert_eq!(status(&app), ("engine: lost the source", true));
}
