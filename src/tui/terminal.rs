//! The terminal side of the TUI: raw mode and the alternate screen (restored on quit, on
//! panic and on SIGTERM), and the loop that draws at a fixed frame rate from whatever
//! [`Feed`] supplies snapshots and takes the operator's actions.

use std::io::{self, Stdout, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{
    self, DisableMouseCapture, EnableMouseCapture, Event, KeyEventKind,
};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};

use super::{App, draw};
use crate::contract::{Feed, Notice};

/// Frames per second: smooth enough to watch stalls come and go, cheap enough to ignore.
pub const FPS: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error("terminal: {0}")]
    Io(#[from] io::Error),
    #[error("cannot watch for SIGTERM: {0}")]
    Signal(io::Error),
}

/// Raw mode, the alternate screen and mouse reporting, undone on drop and on panic.
pub struct TerminalGuard {
    /// Dropped by hand: ratatui's drop prints to stderr when it cannot show the cursor,
    /// and printing to a terminal that has hung up panics.
    terminal: std::mem::ManuallyDrop<Terminal<CrosstermBackend<Stdout>>>,
}

fn restore() {
    let _ = disable_raw_mode();
    let mut out = io::stdout();
    let _ = execute!(
        out,
        DisableMouseCapture,
        LeaveAlternateScreen,
        ratatui::crossterm::cursor::Show
    );
    let _ = out.flush();
}

impl TerminalGuard {
    pub fn enter() -> Result<TerminalGuard, TuiError> {
        // A panic anywhere must leave a usable shell behind it, then report as usual.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        enable_raw_mode()?;
        let mut out = io::stdout();
        if let Err(e) = execute!(out, EnterAlternateScreen, EnableMouseCapture) {
            restore();
            return Err(e.into());
        }
        let terminal = match Terminal::new(CrosstermBackend::new(out)) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e.into());
            }
        };
        Ok(TerminalGuard {
            terminal: std::mem::ManuallyDrop::new(terminal),
        })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
        if self.terminal.show_cursor().is_ok() {
            // SAFETY: dropped once, here; the field is not used again.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.terminal) };
        }
        // Otherwise the terminal is gone: its buffers are left to the process's end.
    }
}

/// Whether a terminal error means the terminal itself has gone (hung up, closed).
fn is_hang_up(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::ENXIO))
}

/// Signal handlers of the loop, removed when it ends: after it, a signal acts as usual.
struct SignalHandlers(Vec<signal_hook::SigId>);

impl Drop for SignalHandlers {
    fn drop(&mut self) {
        for id in self.0.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `q` or Ctrl-C.
    Quit,
    /// SIGTERM, SIGHUP or SIGINT from outside, or the terminal hung up.
    Signal,
}

/// True if the terminal has gone away (window closed, ssh link dropped): reads then
/// return nothing forever, and no SIGHUP is promised to reach us.
fn hung_up() -> bool {
    // No events asked for: a hang-up is reported regardless, and input is left alone.
    let mut pfd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd; no wait.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    ready > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Terminal input, read on a thread of its own. Crossterm's reader never returns once the
/// terminal hangs up under it (a read of nothing is not an end to it: it reads again), so
/// the loop must not call it: the loop stays free to notice the hang-up and end, and the
/// process's end takes the reader with it.
struct Input {
    events: crossbeam_channel::Receiver<io::Result<Event>>,
    stop: Arc<AtomicBool>,
}

/// How often the input thread looks at its stop flag.
const INPUT_POLL: Duration = Duration::from_millis(50);

impl Input {
    fn start() -> Result<Input, TuiError> {
        let (tx, events) = crossbeam_channel::bounded(256);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("tui-input".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    let event = match event::poll(INPUT_POLL) {
                        Ok(false) => continue,
                        Ok(true) => event::read(),
                        Err(e) => Err(e),
                    };
                    let failed = event.is_err();
                    if tx.send(event).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(TuiError::Io)?;
        Ok(Input { events, stop })
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        // Not joined: on a hung-up terminal the thread may never come back.
        self.stop.store(true, Ordering::Release);
    }
}

/// Runs the UI until the operator quits, the terminal goes away or a terminating signal
/// arrives.
pub fn run(feed: &mut dyn Feed, app: &mut App) -> Result<Exit, TuiError> {
    match run_loop(feed, app) {
        // A terminal that stops taking reads or writes has hung up: as good as SIGHUP.
        Err(TuiError::Io(e)) if is_hang_up(&e) => Ok(Exit::Signal),
        other => other,
    }
}

fn run_loop(feed: &mut dyn Feed, app: &mut App) -> Result<Exit, TuiError> {
    let signalled = Arc::new(AtomicBool::new(false));
    let mut handlers = SignalHandlers(Vec::new());
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        handlers
            .0
            .push(signal_hook::flag::register(sig, signalled.clone()).map_err(TuiError::Signal)?);
    }
    app.set_source_keys(feed.keys());
    let mut guard = TerminalGuard::enter()?;
    let input = Input::start()?;
    let frame = Duration::from_secs(1) / FPS;
    let mut next_frame = Instant::now();
    let mut dirty = true;
    loop {
        if signalled.load(Ordering::Relaxed) {
            return Ok(Exit::Signal);
        }
        let label = feed.label();
        if app.source_label() != label.as_deref() {
            app.set_source_label(label);
            dirty = true;
        }
        match feed.notice() {
            Some(Notice::Info(m)) => app.set_message(m),
            Some(Notice::Error(m)) => app.set_error(m),
            None => {}
        }
        if let Some(s) = feed.latest() {
            app.on_snapshot(Arc::unwrap_or_clone(s));
            dirty = true;
        }
        let now = Instant::now();
        if dirty && now >= next_frame {
            guard.terminal.draw(|f| draw(f, app))?;
            dirty = false;
            next_frame = now + frame;
        }
        if hung_up() {
            return Ok(Exit::Signal);
        }
        // Input is taken between frames; a key is handled at once and drawn next frame.
        let wait = next_frame
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(5));
        let first = match input.events.recv_timeout(wait) {
            Ok(e) => Some(e),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(TuiError::Io(io::Error::other("terminal input stopped")));
            }
        };
        for event in first.into_iter().chain(input.events.try_iter()) {
            match event? {
                Event::Key(k) if k.kind != KeyEventKind::Release && app.prompt().is_none() => {
                    if let Some(m) = feed.on_key(&k) {
                        app.set_message(m);
                    } else if let Some(action) = app.on_key(k)
                        && let Err(e) = feed.act(action)
                    {
                        app.set_error(e);
                    }
                }
                Event::Key(k) => {
                    if let Some(action) = app.on_key(k)
                        && let Err(e) = feed.act(action)
                    {
                        app.set_error(e);
                    }
                }
                Event::Mouse(m) => app.on_mouse(m),
                Event::Resize(..) => guard.terminal.autoresize()?,
                _ => {}
            }
            dirty = true;
        }
        if app.should_quit() {
            return Ok(Exit::Quit);
        }
    }
}
