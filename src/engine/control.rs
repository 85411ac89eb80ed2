//! The control socket of a live run: a Unix socket in the run directory through which another
//! `gaplab attach RUN_DIR` process of the same user on the same machine can pause, resume,
//! single-step, sample and checkpoint the run.
//!
//! Protocol: one JSON request per line, `{"command":"pause"}`, answered by one line, `ok` or
//! `error: <message>`. Connections from other users are answered `error: permission denied`
//! and closed. Several viewers may be connected at once.
//!
//! The socket is `<run>/control.sock`. When that path is too long for a Unix socket address, the
//! socket lives in a private directory (`$XDG_RUNTIME_DIR/gaplab` or `/tmp/gaplab-<euid>`, mode
//! 0700) and `<run>/control.addr` holds its path.

#![cfg(unix)]

use std::collections::HashMap;
use std::fs::{self, DirBuilder};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::command::Command;
use crate::hash::fnv1a;

/// The socket's file name in the run directory.
pub const SOCKET: &str = "control.sock";
/// Written in the run directory instead when its path is too long for a socket address; holds
/// the socket's path.
pub const ADDRESS: &str = "control.addr";

/// How long a client waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request line accepted; a longer one closes the connection.
const MAX_LINE: usize = 4096;
/// How often the accept loop checks whether the server was dropped.
const POLL_MS: libc::c_int = 100;

/// Commands that may arrive over the socket (a subset of [`Command`]: no Stop, no Apply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remote {
    Pause,
    Resume,
    Step,
    SampleNow,
    Checkpoint,
}

impl Remote {
    pub fn to_command(self) -> Command {
        match self {
            Remote::Pause => Command::Pause,
            Remote::Resume => Command::Resume,
            Remote::Step => Command::Step,
            Remote::SampleNow => Command::SampleNow,
            Remote::Checkpoint => Command::Checkpoint,
        }
    }

    pub fn from_command(c: &Command) -> Option<Remote> {
        match c {
            Command::Pause => Some(Remote::Pause),
            Command::Resume => Some(Remote::Resume),
            Command::Step => Some(Remote::Step),
            Command::SampleNow => Some(Remote::SampleNow),
            Command::Checkpoint => Some(Remote::Checkpoint),
            Command::Reload(_) | Command::ConfigError(_) | Command::Stop => None,
        }
    }

    /// The name used on the wire (`sample_now`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Remote::Pause => "pause",
            Remote::Resume => "resume",
            Remote::Step => "step",
            Remote::SampleNow => "sample_now",
            Remote::Checkpoint => "checkpoint",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server

type Connections = Arc<Mutex<HashMap<u64, UnixStream>>>;

/// Listens for commands for one run and forwards each to the engine. Dropping it stops
/// listening, closes the open connections and removes the socket (and `control.addr`).
pub struct ControlServer {
    socket: PathBuf,
    /// (device, inode) of our socket file, so that drop never removes someone else's.
    socket_id: (u64, u64),
    addr_file: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    connections: Connections,
    accept: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Where the socket is bound.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
        if let Ok(m) = fs::symlink_metadata(&self.socket) {
            if (m.dev(), m.ino()) == self.socket_id {
                let _ = fs::remove_file(&self.socket);
            }
        }
        if let Some(addr) = &self.addr_file {
            if read_addr(addr).as_deref() == Some(self.socket.as_path()) {
                let _ = fs::remove_file(addr);
            }
        }
        let connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for stream in connections.values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Binds the control socket of `run_dir` (owner-only, mode 0600) and forwards the commands that
/// arrive on it to `tx`, from a background thread, until the returned server is dropped.
///
/// A stale socket left by a killed run is replaced; a socket some live process answers on is an
/// error (the run is already controlled by a running gaplab).
pub fn serve(run_dir: &Path, tx: Sender<Command>) -> Result<ControlServer> {
    let run_dir = fs::canonicalize(run_dir)
        .with_context(|| format!("cannot open the run directory {}", run_dir.display()))?;
    let addr_file = run_dir.join(ADDRESS);
    let local = run_dir.join(SOCKET);
    let socket = if fits(&local) {
        local
    } else {
        private_dir()?.join(format!(
            "{:016x}.sock",
            fnv1a(run_dir.as_os_str().as_bytes())
        ))
    };

    match UnixStream::connect(&socket) {
        Ok(_) => bail!(
            "{} is already controlled by a running gaplab (its control socket {} answers)",
            run_dir.display(),
            socket.display()
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            // Left by a run that was killed: nobody listens.
            let _ = fs::remove_file(&socket);
        }
        Err(_) => {}
    }

    let listener = bind_owner_only(&socket)
        .with_context(|| format!("cannot create the control socket {}", socket.display()))?;
    let meta = fs::symlink_metadata(&socket)?;
    let mut server = ControlServer {
        socket_id: (meta.dev(), meta.ino()),
        socket: socket.clone(),
        addr_file: None,
        stop: Arc::new(AtomicBool::new(false)),
        connections: Arc::default(),
        accept: None,
    };

    if socket.starts_with(&run_dir) {
        // A control.addr left from an earlier layout would point nowhere.
        let _ = fs::remove_file(&addr_file);
    } else {
        write_addr(&addr_file, &socket)
            .with_context(|| format!("cannot write {}", addr_file.display()))?;
        server.addr_file = Some(addr_file);
    }

    let stop = server.stop.clone();
    let connections = server.connections.clone();
    server.accept = Some(
        std::thread::Builder::new()
            .name("gaplab-control".into())
            .spawn(move || accept_loop(listener, tx, stop, connections))
            .context("cannot start the control socket thread")?,
    );
    Ok(server)
}

/// Whether a peer with `peer_uid` may control a run owned by `our_uid`.
fn allowed(peer_uid: u32, our_uid: u32) -> bool {
    peer_uid == our_uid
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn accept_loop(
    listener: UnixListener,
    tx: Sender<Command>,
    stop: Arc<AtomicBool>,
    connections: Connections,
) {
    let our_uid = euid();
    let mut next_id = 0u64;
    while !stop.load(Ordering::SeqCst) {
        match readable(listener.as_raw_fd(), POLL_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(POLL_MS as u64));
                continue;
            }
        }
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: back off rather than spin.
                std::thread::sleep(Duration::from_millis(POLL_MS as u64));
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        if !matches!(peer_uid(&stream), Ok(uid) if allowed(uid, our_uid)) {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = stream.write_all(b"error: permission denied\n");
            continue;
        }
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let id = next_id;
        next_id += 1;
        connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, clone);
        let tx = tx.clone();
        let registry = connections.clone();
        let spawned = std::thread::Builder::new()
            .name("gaplab-control-conn".into())
            .spawn(move || {
                handle_connection(stream, &tx);
                registry
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
            });
        if spawned.is_err() {
            connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        }
    }
}

/// Answers the requests of one connection until the client disconnects.
fn handle_connection(stream: UnixStream, tx: &Sender<Command>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE {
                let _ = writer.write_all(b"error: request too long\n");
            }
            // Otherwise the client left mid-line.
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reply = match parse_request(&line) {
            Ok(remote) => match tx.send(remote.to_command()) {
                Ok(()) => "ok\n".to_string(),
                Err(_) => "error: the run no longer takes commands\n".to_string(),
            },
            Err(message) => format!("error: {}\n", message.replace('\n', " ")),
        };
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn parse_request(line: &[u8]) -> Result<Remote, String> {
    const EXPECTED: &str = r#"expected {"command": "..."}"#;
    let value: Value =
        serde_json::from_slice(line).map_err(|e| format!("bad request ({EXPECTED}): {e}"))?;
    let name = value
        .get("command")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("bad request ({EXPECTED})"))?;
    serde_json::from_value(Value::String(name.to_string())).map_err(|_| {
        format!("unknown command {name:?} (expected pause, resume, step, sample_now or checkpoint)")
    })
}

/// Waits up to `timeout_ms` for `fd` to become readable.
fn readable(fd: RawFd, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call, and we pass a count of 1.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n > 0)
    }
}

/// The user id of the process at the other end of a Unix stream.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the size of `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("short SO_PEERCRED answer"));
    }
    Ok(cred.uid)
}

/// The user id of the process at the other end of a Unix stream.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut uid: libc::uid_t = 0;
    let mut gid: libc::gid_t = 0;
    // SAFETY: `uid` and `gid` are valid for writes.
    if unsafe { libc::getpeereid(stream.as_raw_fd(), &mut uid, &mut gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(uid)
}

/// Binds `path` so that only its owner can ever connect: the socket is bound inside a fresh
/// 0700 directory next to `path`, made 0600, and only then renamed into place.
fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let staging = make_staging_dir(parent)?;
    let temp = staging.join("s");
    let bound = UnixListener::bind(&temp).and_then(|listener| {
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o600))?;
        fs::rename(&temp, path)?;
        Ok(listener)
    });
    let _ = fs::remove_file(&temp);
    let _ = fs::remove_dir(&staging);
    bound
}

/// A new private (0700) directory `<parent>/.ctlXXXXXX`. `.ctlXXXXXX/s` is exactly as long as
/// `control.sock`, so whatever socket path fits, its staging path fits too.
fn make_staging_dir(parent: &Path) -> io::Result<PathBuf> {
    let seed = format!("{}:{:?}", std::process::id(), std::time::SystemTime::now());
    let mut h = fnv1a(seed.as_bytes());
    for _ in 0..16 {
        let dir = parent.join(format!(".ctl{:06x}", h & 0xff_ffff));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => h = fnv1a(&h.to_le_bytes()),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        ErrorKind::AlreadyExists,
        "cannot create a staging directory for the control socket",
    ))
}

/// Whether `path` fits in a Unix socket address (`sun_path`, NUL-terminated).
fn fits(path: &Path) -> bool {
    // SAFETY: sockaddr_un is plain old data; an all-zero value is valid.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    path.as_os_str().len() < addr.sun_path.len()
}

/// The directory for sockets of runs whose own path is too long: `$XDG_RUNTIME_DIR/gaplab` when
/// usable, else `/tmp/gaplab-<euid>`. Either must be ours and closed to others.
fn private_dir() -> Result<PathBuf> {
    // Longest name we put there: a 16-digit hash plus ".sock".
    let longest = "0123456789abcdef.sock";
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(runtime).join("gaplab");
        if fits(&dir.join(longest)) && ensure_private(&dir).is_ok() {
            return Ok(dir);
        }
    }
    let dir = PathBuf::from(format!("/tmp/gaplab-{}", euid()));
    ensure_private(&dir)?;
    Ok(dir)
}

fn ensure_private(dir: &Path) -> Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta =
        fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != euid() || meta.mode() & 0o077 != 0 {
        bail!(
            "{} is not a private directory (it must be a directory owned by you with mode 0700); \
             remove it or fix its permissions",
            dir.display()
        );
    }
    Ok(())
}

fn write_addr(addr_file: &Path, socket: &Path) -> io::Result<()> {
    let temp = addr_file.with_extension("addr.tmp");
    let mut bytes = socket.as_os_str().as_bytes().to_vec();
    bytes.push(b'\n');
    fs::write(&temp, bytes)?;
    fs::rename(&temp, addr_file)
}

fn read_addr(addr_file: &Path) -> Option<PathBuf> {
    let bytes = fs::read(addr_file).ok()?;
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    (!bytes.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
}

// ---------------------------------------------------------------------------------------------
// Client

/// A connection to a live run's control socket.
pub struct ControlClient {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    /// Connects to the control socket of `run_dir` (following `control.addr` when present).
    /// Fails with a clear message when the run is not live (no socket) or not running (a stale
    /// socket left by a killed run).
    pub fn connect(run_dir: &Path) -> Result<ControlClient> {
        let socket = match read_addr(&run_dir.join(ADDRESS)) {
            Some(path) => path,
            None => {
                let local = run_dir.join(SOCKET);
                if fits(&local) {
                    local
                } else {
                    // A long relative path may still name a socket whose absolute path fits.
                    fs::canonicalize(run_dir).map_or(local, |d| d.join(SOCKET))
                }
            }
        };
        let stream = match UnixStream::connect(&socket) {
            Ok(stream) => stream,
            Err(e) if e.kind() == ErrorKind::NotFound => bail!(
                "{} is not live: it has no control socket (the run has ended or was never started)",
                run_dir.display()
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => bail!(
                "{} is not running: nobody answers on its control socket (left by a run that was \
                 killed)",
                run_dir.display()
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot connect to the control socket {}", socket.display())
                })
            }
        };
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(ControlClient { stream, reader })
    }

    /// Sends one command and waits (up to a few seconds) for the run's answer.
    pub fn send(&mut self, cmd: Remote) -> Result<()> {
        let request = format!("{}\n", serde_json::json!({ "command": cmd }));
        self.stream
            .write_all(request.as_bytes())
            .with_context(|| format!("cannot send {} to the run", cmd.name()))?;
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(0) => bail!("the run closed the control connection"),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => bail!(
                "the run did not answer {} within {} s",
                cmd.name(),
                TIMEOUT.as_secs()
            ),
            Err(e) => return Err(e).context("cannot read the run's answer"),
        }
        let answer = answer.trim_end();
        if answer == "ok" {
            Ok(())
        } else if let Some(message) = answer.strip_prefix("error: ") {
            bail!("the run refused {}: {message}", cmd.name())
        } else {
            bail!("unexpected answer from the run: {answer:?}")
        }
    }
}

/// Whether `run_dir` has a live control socket that someone answers on.
pub fn is_live(run_dir: &Path) -> bool {
    ControlClient::connect(run_dir).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{self, Receiver};

    const ALL: [Remote; 5] = [
        Remote::Pause,
        Remote::Resume,
        Remote::Step,
        Remote::SampleNow,
        Remote::Checkpoint,
    ];

    fn recv(rx: &Receiver<Command>) -> Command {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a command arrives")
    }

    fn raw(run_dir: &Path) -> (UnixStream, BufReader<UnixStream>) {
        let stream = UnixStream::connect(run_dir.join(SOCKET)).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        (stream, reader)
    }

    fn ask(stream: &mut UnixStream, reader: &mut BufReader<UnixStream>, line: &str) -> String {
        stream.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        answer
    }

    #[test]
    fn remote_round_trips_commands_and_json() {
        for r in ALL {
            assert_eq!(Remote::from_command(&r.to_command()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), Value::from(r.name()));
        }
        assert_eq!(Remote::from_command(&Command::Stop), None);
    }

    #[test]
    fn commands_arrive_in_order_from_several_clients() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let _server = serve(dir.path(), tx).unwrap();
        assert!(is_live(dir.path()));

        let mut a = ControlClient::connect(dir.path()).unwrap();
        let mut b = ControlClient::connect(dir.path()).unwrap();
        for r in ALL {
            a.send(r).unwrap();
            assert_eq!(recv(&rx), r.to_command());
        }
        for r in ALL.iter().rev() {
            b.send(*r).unwrap();
            assert_eq!(recv(&rx), r.to_command());
        }
        a.send(Remote::Pause).unwrap();
        b.send(Remote::Resume).unwrap();
        assert_eq!(recv(&rx), Command::Pause);
        assert_eq!(recv(&rx), Command::Resume);
    }

    #[test]
    fn socket_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel();
        let _server = serve(dir.path(), tx).unwrap();
        let meta = fs::symlink_metadata(dir.path().join(SOCKET)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // No staging directory is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SOCKET)]);
    }

    #[test]
    fn bad_requests_get_errors_and_the_connection_survives() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let _server = serve(dir.path(), tx).unwrap();
        let (mut s, mut r) = raw(dir.path());

        assert!(ask(&mut s, &mut r, "not json\n").starts_with("error: bad request"));
        assert!(ask(&mut s, &mut r, "{\"cmd\":1}\n").starts_with("error: bad request"));
        let unknown = ask(&mut s, &mut r, "{\"command\":\"stop\"}\n");
        assert!(
            unknown.starts_with("error: unknown command \"stop\""),
            "{unknown}"
        );
        assert!(ask(&mut s, &mut r, "\u{0}\u{ff}\n").starts_with("error: "));
        assert_eq!(
            ask(&mut s, &mut r, "{\"command\":\"sample_now\"}\n"),
            "ok\n"
        );
        assert_eq!(recv(&rx), Command::SampleNow);
        assert!(rx.try_recv().is_err());

        // A client leaving mid-line does not disturb the server.
        let (mut t, _) = raw(dir.path());
        t.write_all(b"{\"comm").unwrap();
        drop(t);
        // Nor does an endless line.
        let (mut u, mut ur) = raw(dir.path());
        let answer = ask(&mut u, &mut ur, &"x".repeat(MAX_LINE * 2));
        assert_eq!(answer, "error: request too long\n");
        assert_eq!(ask(&mut s, &mut r, "{\"command\":\"step\"}\n"), "ok\n");
        assert_eq!(recv(&rx), Command::Step);
    }

    #[test]
    fn engine_gone_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let _server = serve(dir.path(), tx).unwrap();
        drop(rx);
        let err = ControlClient::connect(dir.path())
            .unwrap()
            .send(Remote::Pause)
            .unwrap_err();
        assert!(
            err.to_string().contains("no longer takes commands"),
            "{err}"
        );
    }

    #[test]
    fn drop_removes_the_socket_and_closes_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel();
        let server = serve(dir.path(), tx).unwrap();
        let mut client = ControlClient::connect(dir.path()).unwrap();
        drop(server);
        assert!(!dir.path().join(SOCKET).exists());
        assert!(!is_live(dir.path()));
        let err = ControlClient::connect(dir.path()).err().unwrap();
        assert!(err.to_string().contains("is not live"), "{err}");
        assert!(client.send(Remote::Pause).is_err());
    }

    #[test]
    fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(UnixListener::bind(dir.path().join(SOCKET)).unwrap());
        assert!(dir.path().join(SOCKET).exists());
        let err = ControlClient::connect(dir.path()).err().unwrap();
        assert!(err.to_string().contains("is not running"), "{err}");
        assert!(!is_live(dir.path()));

        let (tx, rx) = mpsc::channel();
        let _server = serve(dir.path(), tx.clone()).unwrap();
        ControlClient::connect(dir.path())
            .unwrap()
            .send(Remote::Checkpoint)
            .unwrap();
        assert_eq!(recv(&rx), Command::Checkpoint);

        let err = serve(dir.path(), tx).err().unwrap();
        assert!(
            err.to_string()
                .contains("already controlled by a running gaplab"),
            "{err}"
        );
        assert!(is_live(dir.path()));
    }

    #[test]
    fn long_run_directory_goes_through_control_addr() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = dir.path().to_path_buf();
        while run.as_os_str().len() <= 130 {
            run.push("a-rather-long-directory-name");
        }
        fs::create_dir_all(&run).unwrap();
        assert!(!fits(&run.join(SOCKET)));

        let (tx, rx) = mpsc::channel();
        let server = serve(&run, tx).unwrap();
        let socket = read_addr(&run.join(ADDRESS)).expect("control.addr is written");
        assert_eq!(socket, server.socket_path());
        assert!(fits(&socket));
        let meta = fs::symlink_metadata(&socket).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let parent = fs::symlink_metadata(socket.parent().unwrap()).unwrap();
        assert_eq!(parent.mode() & 0o077, 0);

        assert!(is_live(&run));
        ControlClient::connect(&run)
            .unwrap()
            .send(Remote::Resume)
            .unwrap();
        assert_eq!(recv(&rx), Command::Resume);

        drop(server);
        assert!(!socket.exists());
        assert!(!run.join(ADDRESS).exists());
        assert!(!is_live(&run));
    }

    #[test]
    fn staging_path_is_as_long_as_the_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let staging = make_staging_dir(dir.path()).unwrap();
        assert_eq!(
            staging.join("s").as_os_str().len(),
            dir.path().join(SOCKET).as_os_str().len()
        );
        let meta = fs::symlink_metadata(&staging).unwrap();
        assert_eq!(meta.mode() & 0o077, 0);
    }

    #[test]
    fn only_the_same_user_is_allowed() {
        assert!(allowed(1000, 1000));
        assert!(allowed(0, 0));
        assert!(!allowed(1001, 1000));
        assert!(!allowed(0, 1000));
        assert!(!allowed(1000, 0));

        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(peer_uid(&a).unwrap(), euid());
        assert_eq!(peer_uid(&b).unwrap(), euid());
    }
}
