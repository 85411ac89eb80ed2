//! A run's control socket as other processes see it: another user is refused at every layer, and
//! connections that come and go leave no file descriptor or thread behind.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command as Process;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gaplab::engine::control::{self, ControlClient, ControlServer, Remote};

/// Counting descriptors and threads of this process needs the other tests to be still.
static SERIAL: Mutex<()> = Mutex::new(());

/// Set for the copy of this test binary that plays the other user.
const RUN_ENV: &str = "GAPLAB_TEST_CONTROL_RUN";

/// The other user's side: what `gaplab` tells them when they try to pause the run.
#[test]
#[ignore = "run by the another_user_* tests, as another user"]
fn as_other_user() {
    let Some(run) = std::env::var_os(RUN_ENV) else {
        return;
    };
    let outcome = ControlClient::connect(Path::new(&run)).and_then(|mut c| c.send(Remote::Pause));
    match outcome {
        Ok(()) => println!("outcome: ok"),
        Err(e) => println!("outcome: {e:#}"),
    }
}

/// Runs [`as_other_user`] as uid/gid 65534 (nobody) against `run`; None (and a printed reason)
/// where that is impossible.
fn as_nobody(run: &Path) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: not root");
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let output = Process::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["--exact", "as_other_user", "--ignored", "--nocapture"])
        .args(["--test-threads=1"])
        .env(RUN_ENV, run)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            eprintln!("skipped: cannot run setpriv: {e}");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() && !stdout.contains("outcome: ") {
        // E.g. the test binary lies in a folder uid 65534 may not enter (a checkout under
        // /root), or a container forbids changing uid.
        eprintln!(
            "skipped: uid 65534 cannot run this test binary: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return None;
    }
    let outcome = stdout
        .lines()
        // The harness prints the test's name on the same line.
        .find_map(|l| l.split_once("outcome: ").map(|(_, outcome)| outcome))
        .unwrap_or_else(|| {
            panic!(
                "the other user's client said nothing:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    Some(outcome.to_string())
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A run directory any user may enter, so that only the control socket's own protection stands
/// between another user and the run.
fn open_run_dir(dir: &Path) -> std::path::PathBuf {
    chmod(dir, 0o755);
    let run = dir.join("run");
    fs::create_dir(&run).unwrap();
    chmod(&run, 0o755);
    run
}

#[test]
fn another_user_cannot_connect_to_the_socket_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run = open_run_dir(dir.path());
    let (tx, rx) = mpsc::channel();
    let _server = control::serve(&run, tx).unwrap();
    let Some(outcome) = as_nobody(&run) else {
        return;
    };
    assert!(
        outcome.starts_with("permission denied: the control socket")
            && outcome.contains("belongs to another user"),
        "{outcome}"
    );
    assert!(rx.try_recv().is_err());
}

#[test]
fn another_user_cannot_enter_the_private_socket_directory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut run = open_run_dir(dir.path());
    while run.as_os_str().len() <= 110 {
        run.push("a-rather-long-directory-name");
        fs::create_dir(&run).unwrap();
        chmod(&run, 0o755);
    }
    let (tx, rx) = mpsc::channel();
    let server = control::serve(&run, tx).unwrap();
    assert!(
        run.join(control::ADDRESS).exists(),
        "the socket is elsewhere"
    );
    // Only the private directory's mode keeps the other user out.
    chmod(server.socket_path(), 0o777);
    let Some(outcome) = as_nobody(&run) else {
        return;
    };
    assert!(
        outcome.starts_with("permission denied: the control socket"),
        "{outcome}"
    );
    assert!(rx.try_recv().is_err());
}

#[test]
fn another_user_reaching_the_socket_is_refused_by_its_uid() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run = open_run_dir(dir.path());
    let (tx, rx) = mpsc::channel();
    let server = control::serve(&run, tx).unwrap();
    // As if someone opened the socket up: the peer credentials check still refuses.
    chmod(server.socket_path(), 0o777);
    let Some(outcome) = as_nobody(&run) else {
        return;
    };
    assert_eq!(outcome, "the run refused pause: permission denied");
    assert!(rx.try_recv().is_err());
    // The owner is still served.
    ControlClient::connect(&run)
        .unwrap()
        .send(Remote::Step)
        .unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        gaplab::engine::command::Command::Step
    );
}

fn count(dir: &str) -> usize {
    fs::read_dir(dir).unwrap().count()
}

/// Waits until the server has no connections and this process is back to `fds` descriptors and
/// `threads` threads (connection threads leave the registry just before they end).
fn wait_for_baseline(server: &ControlServer, fds: usize, threads: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = (
            server.connections(),
            count("/proc/self/fd"),
            count("/proc/self/task"),
        );
        if now == (0, fds, threads) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "(connections, descriptors, threads) = {now:?}, expected {:?}",
            (0, fds, threads)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn connections_that_come_and_go_leak_nothing() {
    if !Path::new("/proc/self/fd").exists() {
        eprintln!("skipped: no /proc/self/fd");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel();
    let server = control::serve(dir.path(), tx).unwrap();
    let socket = server.socket_path().to_path_buf();
    let (fds, threads) = (count("/proc/self/fd"), count("/proc/self/task"));

    let mut held = Vec::new();
    for i in 0..200 {
        match i % 5 {
            // Connects and leaves without a word.
            0 => drop(UnixStream::connect(&socket).unwrap()),
            // A dashboard's key press.
            1 => ControlClient::connect(dir.path())
                .unwrap()
                .send(Remote::Step)
                .unwrap(),
            // Leaves in the middle of a line.
            2 => {
                let mut s = UnixStream::connect(&socket).unwrap();
                s.write_all(b"{\"command\": \"pa").unwrap();
            }
            // Half-closes after a partial line, then reads the server's end of it.
            3 => {
                let mut s = UnixStream::connect(&socket).unwrap();
                s.write_all(b"{\"comm").unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = String::new();
                BufReader::new(s).read_line(&mut rest).unwrap();
                assert_eq!(rest, "");
            }
            // Stays a while, closed all at once below.
            _ => held.push(UnixStream::connect(&socket).unwrap()),
        }
    }
    drop(held);
    wait_for_baseline(&server, fds, threads);
    assert_eq!(rx.try_iter().count(), 40);
}
