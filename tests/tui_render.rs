//! Whole screens of the TUI, drawn from the scripted fixture stream, as insta snapshots.

use faultline::contract::Action;
use faultline::tui::fixture::{self, INJECT_STEP};
use faultline::tui::screen::buffer_text;
use faultline::tui::{App, Pane, Theme, draw};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{
    KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use ratatui::style::Color;

const GIB: u64 = 1 << 30;

fn terminal(w: u16, h: u16, app: &App) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw(f, app)).unwrap();
    t
}

fn screen(w: u16, h: u16, app: &App) -> String {
    faultline::tui::screen::text(app, w, h)
}

/// An app fed the fixture stream up to `step`, as the terminal loop would.
fn app_at(vcpus: usize, mem: u64, step: u64) -> App {
    let mut app = App::with_theme(Theme::colored());
    for s in step.saturating_sub(3)..=step {
        app.on_snapshot(fixture::snapshot(vcpus, mem, s));
    }
    app
}

fn key(app: &mut App, code: KeyCode) -> Option<Action> {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn keys(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

#[test]
fn the_header_names_a_socket_transport_and_its_link_and_stays_quiet_about_local_copies() {
    let header = |transport: &str, link_up: Option<bool>| {
        let mut app = App::with_theme(Theme::colored());
        let mut s = fixture::snapshot(4, GIB, 20);
        s.run.transport = Some(transport.parse().unwrap());
        s.link_up = link_up;
        app.on_snapshot(s);
        screen(160, 48, &app)
            .lines()
            .take(2)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let tcp = header("tcp", Some(true));
    assert!(
        tcp.contains("/s tcp") && tcp.contains("push on  link up"),
        "{tcp}"
    );
    let down = header("tcp", Some(false));
    assert!(down.contains("link DOWN"), "{down}");
    let local = header("local", None);
    assert!(
        !local.contains("local") && !local.contains("tcp") && !local.contains("link"),
        "{local}"
    );
    assert!(!local.contains("from"), "{local}");
}

#[test]
fn the_header_names_a_source_in_another_process_for_its_migration_only() {
    let header = |migration: u32| {
        let mut app = App::with_theme(Theme::colored());
        let mut s = fixture::snapshot(4, GIB, 20);
        s.run.transport = Some(faultline::contract::Transport::Tcp);
        s.run.source = Some("10.0.0.7:7070".into());
        s.migration = migration;
        app.on_snapshot(s);
        let first = screen(160, 48, &app)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        // The link key explains why it does nothing.
        key(&mut app, KeyCode::Char('n'));
        (first, screen(160, 48, &app))
    };
    let (first, after_n) = header(1);
    assert!(first.contains("from 10.0.0.7:7070"), "{first}");
    assert!(
        after_n.contains("the source is another process: its link cannot be cut from here"),
        "{after_n}"
    );
    // A later migration's source is this process's earlier destination.
    let (first, after_n) = header(2);
    assert!(!first.contains("from"), "{first}");
    assert!(after_n.contains("pages are copied locally"), "{after_n}");
}

#[test]
fn waiting_for_the_first_snapshot() {
    let app = App::with_theme(Theme::colored());
    insta::assert_snapshot!("waiting_80x24", screen(80, 24, &app));
}

#[test]
fn postcopy_4_vcpus_80x24() {
    insta::assert_snapshot!("postcopy_4v_80x24", screen(80, 24, &app_at(4, GIB, 20)));
}

#[test]
fn postcopy_64_vcpus_80x24_after_injection() {
    let app = app_at(64, 16 * GIB, INJECT_STEP + 2);
    insta::assert_snapshot!("postcopy_64v_80x24", screen(80, 24, &app));
}

#[test]
fn postcopy_4_vcpus_160x48() {
    insta::assert_snapshot!("postcopy_4v_160x48", screen(160, 48, &app_at(4, GIB, 20)));
}

/// Each common size gets the panes by what they need: the heatmaps the width that shows
/// their history, the map the columns left over.
#[test]
fn postcopy_16_vcpus_at_120x40_and_240x64() {
    insta::assert_snapshot!(
        "postcopy_16v_120x40",
        screen(120, 40, &app_at(16, 4 * GIB, 20))
    );
    insta::assert_snapshot!(
        "postcopy_16v_240x64",
        screen(240, 64, &app_at(16, 4 * GIB, 20))
    );
}

#[test]
fn postcopy_64_vcpus_160x48_scrolled_with_map_cursor() {
    let mut app = app_at(64, 16 * GIB, INJECT_STEP + 2);
    terminal(160, 48, &app);
    for _ in 0..40 {
        key(&mut app, KeyCode::Down);
    }
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.focus(), Pane::MemoryMap);
    for c in ['j', 'j', 'l', 'l', 'l'] {
        key(&mut app, KeyCode::Char(c));
    }
    insta::assert_snapshot!("postcopy_64v_160x48_map", screen(160, 48, &app));
}

#[test]
fn finished_80x24() {
    let app = app_at(4, GIB, fixture::FINISH_STEP);
    insta::assert_snapshot!("finished_4v_80x24", screen(80, 24, &app));
}

#[test]
fn help_open() {
    let mut app = app_at(4, GIB, 20);
    key(&mut app, KeyCode::Char('?'));
    insta::assert_snapshot!("help_80x24", screen(80, 24, &app));
}

#[test]
fn detail_open() {
    let mut app = app_at(64, 16 * GIB, INJECT_STEP + 2);
    for _ in 0..5 {
        key(&mut app, KeyCode::Char('j'));
    }
    key(&mut app, KeyCode::Enter);
    assert!(app.detail());
    insta::assert_snapshot!("detail_64v_80x24", screen(80, 24, &app));
    insta::assert_snapshot!("detail_64v_160x48", screen(160, 48, &app));
}

#[test]
fn prompt_open() {
    let mut app = app_at(4, GIB, 20);
    key(&mut app, KeyCode::Char('t'));
    keys(&mut app, "25MiB/s");
    insta::assert_snapshot!("prompt_80x24", screen(80, 24, &app));
}

#[test]
fn frozen_marker_and_held_snapshot() {
    let mut app = app_at(4, GIB, 20);
    key(&mut app, KeyCode::Char(' '));
    app.on_snapshot(fixture::snapshot(4, GIB, 21));
    app.on_snapshot(fixture::snapshot(4, GIB, 22));
    let s = screen(80, 24, &app);
    assert!(s.lines().next().unwrap().ends_with("FROZEN +2"), "{s}");
    assert!(s.contains("elapsed 10s"), "{s}");
    key(&mut app, KeyCode::Char(' '));
    assert!(screen(80, 24, &app).contains("elapsed 11s"));
}

#[test]
fn no_color_means_no_colour_anywhere() {
    for (w, h) in [(80, 24), (160, 48)] {
        let mut app = app_at(64, 16 * GIB, INJECT_STEP + 2);
        let mut app_plain = App::with_theme(Theme::plain());
        for s in INJECT_STEP..=INJECT_STEP + 2 {
            app_plain.on_snapshot(fixture::snapshot(64, 16 * GIB, s));
        }
        for a in [&mut app, &mut app_plain] {
            key(a, KeyCode::Tab);
            key(a, KeyCode::Char('t'));
        }
        let colored = terminal(w, h, &app);
        let plain = terminal(w, h, &app_plain);
        let cells = plain.backend().buffer().content();
        for c in cells {
            assert_eq!((c.fg, c.bg), (Color::Reset, Color::Reset), "{c:?}");
        }
        // Same glyphs, and modifiers still mark the cursor and focus.
        assert_eq!(
            buffer_text(colored.backend().buffer()),
            buffer_text(plain.backend().buffer())
        );
        assert!(
            cells
                .iter()
                .any(|c| c.modifier.contains(ratatui::style::Modifier::REVERSED))
        );
        assert!(
            colored
                .backend()
                .buffer()
                .content()
                .iter()
                .any(|c| c.fg != Color::Reset)
        );
    }
}

#[test]
fn small_and_odd_sizes_do_not_panic() {
    let mut apps = vec![
        App::with_theme(Theme::plain()),
        app_at(4, GIB, 20),
        app_at(64, 16 * GIB, 40),
    ];
    let mut help = app_at(4, GIB, 20);
    key(&mut help, KeyCode::Char('?'));
    let mut detail = app_at(64, GIB, 20);
    key(&mut detail, KeyCode::Enter);
    let mut prompt = app_at(4, GIB, 20);
    key(&mut prompt, KeyCode::Char('i'));
    keys(&mut prompt, "0x10000000+64M");
    let mut map = app_at(4, GIB, 20);
    key(&mut map, KeyCode::Tab);
    apps.extend([help, detail, prompt, map]);
    for app in &apps {
        for (w, h) in [
            (0, 0),
            (1, 1),
            (20, 5),
            (80, 3),
            (40, 10),
            (10, 40),
            (79, 23),
            (300, 100),
            (119, 30),
            (120, 29),
        ] {
            terminal(w, h, app);
        }
    }
}

#[test]
fn clicking_a_drawn_map_cell_moves_the_cursor_and_enter_injects_it() {
    let mut app = app_at(4, GIB, 20);
    let t = terminal(160, 48, &app);
    let g = app.drawn_map().expect("the map was drawn");
    drop(t);
    // The fourth cell of the third row.
    app.on_mouse(MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column: g.grid.x + 3,
        row: g.grid.y + 2,
        modifiers: KeyModifiers::NONE,
    });
    assert_eq!(app.focus(), Pane::MemoryMap);
    let cell = 2 * usize::from(g.cols) + 3;
    assert_eq!(app.map_cursor(), cell * g.per);
    let region = app.snapshot().unwrap().memory_map.region_bytes * g.per as u64;
    let Some(Action::Inject(r)) = key(&mut app, KeyCode::Enter) else {
        panic!("no inject")
    };
    assert_eq!((r.start, r.len), (cell as u64 * region, region));
    let s = screen(160, 48, &app);
    assert!(s.contains(&format!("inject {:#x}+", r.start)), "{s}");
}
