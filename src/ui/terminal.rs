//! The terminal while the dashboard is up: raw mode and the alternate screen, restored on
//! every way out (quit, error, panic), and no stray output on the screen meanwhile.

use std::io::{stdout, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use anyhow::Result;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::cursor::{Hide, Show};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::Terminal;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();
/// Panics of other threads while the dashboard is up: kept here instead of being printed
/// over the screen, and shown by the dashboard.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn take_panics() -> Vec<String> {
    PANICS
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default()
}

/// Leaves raw mode and the alternate screen (harmless when already left or the terminal is
/// gone).
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(stdout(), LeaveAlternateScreen, Show);
    }
}

/// Forgets the terminal without writing to it (it is gone).
pub fn abandon() {
    ACTIVE.store(false, Ordering::SeqCst);
}

fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ui_thread = std::thread::current().name() == Some("main");
            if ACTIVE.load(Ordering::SeqCst) && !ui_thread {
                if let Ok(mut p) = PANICS.lock() {
                    p.push(info.to_string());
                }
                return;
            }
            restore();
            previous(info);
        }));
    });
}

pub struct TerminalGuard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    pub fn enter() -> Result<Self> {
        install_panic_hook();
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        // Mouse capture stays off: the terminal's own selection keeps working over SSH.
        if let Err(e) = execute!(stdout(), EnterAlternateScreen, Hide) {
            restore();
            return Err(e.into());
        }
        match Terminal::new(CrosstermBackend::new(stdout())) {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore();
                Err(e.into())
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}
