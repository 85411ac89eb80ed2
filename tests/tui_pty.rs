//! The real binary in a pseudo-terminal, read through a terminal emulator: the dashboard comes
//! up, answers keys (help, pause, resume, quit), restores the terminal; training survives the
//! terminal hanging up; `gaplab attach` shows a run and steers a live one over its socket.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{native_pty_system, Child, CommandBuilder, PtySize};

struct Term {
    parser: Arc<Mutex<vt100::Parser>>,
    writer: Option<Box<dyn Write + Send>>,
    child: Box<dyn Child + Send + Sync>,
    /// Set to close the terminal (all its master descriptors), as a dropped SSH link does.
    hangup: Arc<AtomicBool>,
}

fn spawn(args: &[&str], cwd: &Path) -> Term {
    let pty = native_pty_system();
    let pair = pty
        .openpty(PtySize {
            rows: 40,
            cols: 120,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_gaplab"));
    cmd.args(args);
    cmd.cwd(cwd);
    cmd.env("TERM", "xterm-256color");
    cmd.env_remove("NO_COLOR");
    let child = pair.slave.spawn_command(cmd).unwrap();
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().unwrap();
    let writer = pair.master.take_writer().unwrap();
    let parser = Arc::new(Mutex::new(vt100::Parser::new(40, 120, 0)));
    let hangup = Arc::new(AtomicBool::new(false));
    let (p, h, master) = (parser.clone(), hangup.clone(), pair.master);
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || h.load(Ordering::SeqCst) {
                break;
            }
            p.lock().unwrap().process(&buf[..n]);
        }
        // The last descriptors of the terminal's master side close here.
        drop(reader);
        drop(master);
    });
    Term {
        parser,
        writer: Some(writer),
        child,
        hangup,
    }
}

/// A child process killed when the test ends, passed or failed.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Term {
    // A failed test must not leave a trainer behind: gaplab survives its terminal going away
    // by design.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
    }
}

impl Term {
    fn screen(&self) -> String {
        self.parser.lock().unwrap().screen().contents()
    }

    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.screen();
            if f(&s) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn press(&mut self, keys: &str) {
        let w = self.writer.as_mut().expect("terminal open");
        w.write_all(keys.as_bytes()).unwrap();
        w.flush().unwrap();
    }

    fn hang_up(&mut self) {
        self.writer = None;
        self.hangup.store(true, Ordering::SeqCst);
    }

    fn wait_exit(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.exit_code();
            }
            assert!(
                Instant::now() < deadline,
                "gaplab did not exit; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }
}

/// The tiny workspace with `steps` steps, in a temporary folder.
fn workspace(dir: &Path, steps: usize) -> PathBuf {
    common::tiny_workspace(dir, |text| {
        text.replace("steps = 6", &format!("steps = {steps}"))
            .replace("interval = 3", "interval = 50")
            .replace("interval = 2\n", "interval = 100\n")
    })
}

fn run_dirs(ws: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ws.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.toml").exists())
        .collect();
    v.sort();
    v
}

fn status(run: &Path) -> String {
    std::fs::read_to_string(run.join("status.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dashboard_answers_keys_and_restores_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace(tmp.path(), 1_000_000);
    let mut t = spawn(
        &["train", ws.to_str().unwrap(), "--variant", "dpo"],
        tmp.path(),
    );
    t.wait_for("the dashboard", |s| {
        s.contains("Loss") && s.contains("running")
    });
    assert!(t.parser.lock().unwrap().screen().alternate_screen());
    t.press("?");
    // The help's title says "keys (any key closes)", or how far it scrolled when it is
    // taller than the terminal.
    t.wait_for("help", |s| {
        s.contains("┌ keys ") && s.contains("pause / resume training")
    });
    t.press("\x1b");
    t.wait_for("help closed", |s| !s.contains("┌ keys "));
    t.press(" ");
    t.wait_for("paused", |s| s.contains("paused"));
    let run = run_dirs(&ws).pop().unwrap();
    wait_until("status paused", || status(&run) == "paused");
    t.press(" ");
    t.wait_for("running again", |s| s.contains("● running"));
    t.press("q");
    t.wait_for("the quit question", |s| {
        s.contains("Stop training and quit?")
    });
    t.press("y");
    assert_eq!(t.wait_exit(), 130, "stopped runs exit with 130");
    let screen = t.parser.lock().unwrap();
    assert!(!screen.screen().alternate_screen(), "alternate screen left");
    assert!(screen.screen().contents().contains("stopped at step"));
    drop(screen);
    assert_eq!(status(&run), "stopped");
    assert!(gaplab::runlog::RunDir::open(&run)
        .unwrap()
        .latest_checkpoint()
        .is_some());
}

#[test]
fn training_survives_a_hang_up_and_attach_brings_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace(tmp.path(), 400);
    let mut t = spawn(
        &["train", ws.to_str().unwrap(), "--variant", "dpo"],
        tmp.path(),
    );
    t.wait_for("the dashboard", |s| {
        s.contains("Loss") && s.contains("running")
    });
    let run = run_dirs(&ws).pop().unwrap();
    // The SSH connection drops: the terminal goes away under the process.
    t.hang_up();
    wait_until("training to finish without a terminal", || {
        status(&run) == "finished"
    });
    assert_eq!(t.wait_exit(), 0);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"step\":400,"), "every step ran");

    let mut a = spawn(&["attach", run.to_str().unwrap()], tmp.path());
    a.wait_for("the attached dashboard", |s| {
        s.contains("step 400/400") && s.contains("finished")
    });
    a.press("q");
    assert_eq!(a.wait_exit(), 0);
}

#[test]
fn attach_steers_a_live_run_over_its_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace(tmp.path(), 1_000_000);
    let mut trainer = Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_gaplab"))
            .args([
                "train",
                ws.to_str().unwrap(),
                "--variant",
                "dpo",
                "--headless",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the run to start", || {
        run_dirs(&ws)
            .first()
            .is_some_and(|r| status(r) == "running" && r.join("control.sock").exists())
    });
    let run = run_dirs(&ws).pop().unwrap();
    let mut a = spawn(&["attach", run.to_str().unwrap()], tmp.path());
    a.wait_for("the attached dashboard", |s| {
        s.contains("Loss") && s.contains("running")
    });
    a.press(" ");
    wait_until("the run to pause", || status(&run) == "paused");
    a.wait_for("paused shown", |s| s.contains("paused"));
    a.press(" ");
    wait_until("the run to resume", || status(&run) == "running");
    // A second viewer at the same time, read through the same socket.
    let mut b = spawn(&["attach", ws.to_str().unwrap()], tmp.path());
    b.wait_for("the second viewer", |s| s.contains("running"));
    b.press("q");
    assert_eq!(b.wait_exit(), 0);
    // Quitting a viewer leaves the run alone.
    a.press("q");
    assert_eq!(a.wait_exit(), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&run), "running");
    unsafe { kill(trainer.0.id() as i32, 2) };
    assert_eq!(trainer.0.wait().unwrap().code(), Some(130));
    assert_eq!(status(&run), "stopped");
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Whether some cell of the screen has this background colour.
fn has_background(t: &Term, rgb: (u8, u8, u8)) -> bool {
    let parser = t.parser.lock().unwrap();
    let screen = parser.screen();
    let (rows, cols) = screen.size();
    (0..rows).any(|r| {
        (0..cols).any(|c| {
            screen
                .cell(r, c)
                .is_some_and(|cell| cell.bgcolor() == vt100::Color::Rgb(rgb.0, rgb.1, rgb.2))
        })
    })
}

#[test]
fn edits_of_the_config_and_the_theme_show_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace(tmp.path(), 1_000_000);
    // Evaluations and checkpoints only at the ends: the log keeps what this test looks for.
    let file = ws.join("gaplab.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("interval = 50", "interval = 0")
        .replace("interval = 100\n", "interval = 0\n");
    std::fs::write(&file, &text).unwrap();
    let theme = tmp.path().join("mine.toml");
    let dark =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("themes/dark.toml"))
            .unwrap();
    std::fs::write(&theme, dark.replace("name = \"dark\"", "name = \"mine\"")).unwrap();
    let mut t = spawn(
        &[
            "train",
            ws.to_str().unwrap(),
            "--variant",
            "dpo",
            "--theme",
            theme.to_str().unwrap(),
            "--color",
            "truecolor",
        ],
        tmp.path(),
    );
    t.wait_for("the dashboard", |s| {
        s.contains("Loss") && s.contains("running")
    });
    assert!(has_background(&t, (0x26, 0x26, 0x26)), "the status bar");

    // The theme: the status bar changes colour, no key pressed.
    std::fs::write(
        &theme,
        std::fs::read_to_string(&theme)
            .unwrap()
            .replace("bg = \"#262626\"", "bg = \"#123456\""),
    )
    .unwrap();
    wait_until("the new status bar colour", || {
        has_background(&t, (0x12, 0x34, 0x56))
    });
    // A broken theme keeps the current one and says why.
    std::fs::write(&theme, "[styles]\ntext = 3\n").unwrap();
    t.wait_for("the theme error", |s| {
        s.contains("theme error, keeping mine")
    });
    assert!(has_background(&t, (0x12, 0x34, 0x56)));

    // The config: a live change is applied and shown; an invalid edit is shown with its place.
    std::fs::write(&file, text.replace("beta = 0.1", "beta = 0.25")).unwrap();
    t.wait_for("the applied change", |s| {
        s.contains("train.beta 0.1 -> 0.25")
    });
    std::fs::write(&file, text.replace("beta = 0.1", "beta = \"high\"")).unwrap();
    t.wait_for("the rejected edit", |s| {
        s.contains("config rejected: gaplab.toml:13:8") && s.contains("train.beta: invalid type")
    });
    t.press("q");
    t.wait_for("the quit question", |s| {
        s.contains("Stop training and quit?")
    });
    t.press("y");
    assert_eq!(t.wait_exit(), 130);
}

/// The token view opens with its key during a live run, its cursor moves token by token, and
/// it switches response and pair; the help lists its keys.
#[test]
fn token_view_opens_with_keys_during_a_live_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace(tmp.path(), 1_000_000);
    let mut t = spawn(
        &["train", ws.to_str().unwrap(), "--variant", "dpo-poet"],
        tmp.path(),
    );
    t.wait_for("the dashboard", |s| {
        s.contains("Loss") && s.contains("running")
    });
    t.press("T");
    // Waits for the whole view: a screen read mid-redraw may show the title only.
    t.wait_for("the token view of pair 1", |s| {
        s.contains("Tokens: pair #1 · step ")
            && s.contains("▶ chosen")
            && s.contains("rejected")
            && s.contains("prefix margin m(t)")
            && s.contains("policy")
            && s.contains("t1 \"")
    });
    t.press("ll");
    t.wait_for("the cursor on the third token", |s| s.contains("t3 \""));
    t.press("\x1b[D");
    t.wait_for("the cursor back on the second token", |s| {
        s.contains("t2 \"")
    });
    t.press("\x1b[B");
    t.wait_for("the rejected response", |s| s.contains("▶ rejected"));
    t.press("n");
    t.wait_for("the second pair", |s| s.contains("Tokens: pair #2"));
    t.press("?");
    t.wait_for("the help with the token view's key", |s| {
        s.contains("token view: the pair under the cursor")
    });
    // The token view's own keys are further down the help.
    t.press("jjjjjjjjjjjjjjjjjjjjjjjjj");
    t.wait_for("the help's token view section", |s| {
        s.contains("previous token") && s.contains("close the token view")
    });
    t.press("\x1b");
    t.wait_for("help closed", |s| !s.contains("close the token view"));
    t.press("\x1b");
    t.wait_for("the token view closed", |s| {
        !s.contains("Tokens: pair") && s.contains("Gap:")
    });
    t.press("q");
    t.wait_for("the quit question", |s| {
        s.contains("Stop training and quit?")
    });
    t.press("y");
    assert_eq!(t.wait_exit(), 130);
}
