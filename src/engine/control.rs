//! The control socket of a live run: a Unix socket in the run directory through which another
//! `gaplab attach RUN_DIR` process of the same user on the same machine can pause, resume,
//! single-step, sample and checkpoint the run.
//!
//! Protocol: one JSON request per line, `{"command":"pause"}`, answered by one line, `ok` or
//! `error: <message>`; blank lines are ignored. Connections from other users are answered
//! `error: permission denied` and closed. Several viewers may be connected at once.
//!
//! A dashboard keeps its connection open, idle, for as long as it follows the run, so idle time
//! between requests is unlimited. What one client cannot do is hold the run or the other viewers
//! hostage: a request line must be complete within [`Limits::line_deadline`] of its first byte
//! and no longer than [`Limits::max_line`], a client that does not read its answers is dropped
//! after [`Limits::write_timeout`], and at most [`Limits::max_connections`] are served at once.
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
use std::time::{Duration, Instant};

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
/// Longest request line accepted; a longer one closes the connection. Requests are ~30 bytes.
const MAX_LINE: usize = 4096;
/// How long a request line may take from its first byte to its newline. A client sends each
/// request in one write, so only a stalled or hostile one comes near this.
const LINE_DEADLINE: Duration = Duration::from_secs(10);
/// How long writing one answer may block: a client that never reads its answers fills the
/// socket buffer, and would otherwise pin its connection thread forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once, each with its own thread: far more than anyone attaches (one per
/// dashboard), far fewer than the threads a process can have.
const MAX_CONNECTIONS: usize = 256;
/// Bytes read from a connection at a time; with `MAX_LINE`, bounds a connection's buffer.
const CHUNK: usize = 1024;
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

/// What one client may take of the server: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line in bytes, newline excluded.
    pub max_line: usize,
    /// Time from a request line's first byte to its newline.
    pub line_deadline: Duration,
    /// Time writing one answer may block.
    pub write_timeout: Duration,
    /// Connections served at once; the next is answered `error: too many connections` and closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_line: MAX_LINE,
            line_deadline: LINE_DEADLINE,
            write_timeout: WRITE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

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

    /// How many clients are connected now.
    pub fn connections(&self) -> usize {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
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
    serve_with(run_dir, tx, Limits::default())
}

/// [`serve`] with other limits on clients (tests use short ones).
pub fn serve_with(run_dir: &Path, tx: Sender<Command>, limits: Limits) -> Result<ControlServer> {
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
            .spawn(move || accept_loop(listener, tx, stop, connections, limits))
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
    limits: Limits,
) {
    let our_uid = euid();
    let mut next_id = 0u64;
    // Non-blocking, so that a client gone between poll and accept cannot stall the loop.
    let _ = listener.set_nonblocking(true);
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
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                continue
            }
            Err(_) => {
                // Out of file descriptors and the like: back off rather than spin.
                std::thread::sleep(Duration::from_millis(POLL_MS as u64));
                continue;
            }
        };
        if !matches!(peer_uid(&stream), Ok(uid) if allowed(uid, our_uid)) {
            refuse(stream, "permission denied");
            continue;
        }
        let mut registry = connections.lock().unwrap_or_else(PoisonError::into_inner);
        if registry.len() >= limits.max_connections {
            drop(registry);
            refuse(
                stream,
                &format!("too many connections ({})", limits.max_connections),
            );
            continue;
        }
        if stream.set_nonblocking(false).is_err()
            || stream
                .set_write_timeout(Some(limits.write_timeout))
                .is_err()
        {
            continue;
        }
        // Kept so that dropping the server can shut every connection down.
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let id = next_id;
        next_id += 1;
        registry.insert(id, clone);
        drop(registry);
        let tx = tx.clone();
        let registry = connections.clone();
        let spawned = std::thread::Builder::new()
            .name("gaplab-control-conn".into())
            .spawn(move || {
                handle_connection(&stream, &tx, &limits);
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

/// Answers a connection we will not serve with one line and closes it, without ever waiting
/// for the client (the write is non-blocking; a fresh socket's buffer has room for the line).
fn refuse(stream: UnixStream, message: &str) {
    let _ = stream.set_nonblocking(true);
    let _ = (&stream).write_all(format!("error: {message}\n").as_bytes());
}

/// Answers the requests of one connection until the client disconnects or breaks a limit.
fn handle_connection(stream: &UnixStream, tx: &Sender<Command>, limits: &Limits) {
    let mut writer = stream;
    let mut lines = Lines::default();
    loop {
        let line = match lines.next(stream, limits) {
            Next::Line(line) => line,
            Next::Closed => return,
            Next::TooLong => {
                let _ = writer.write_all(b"error: request too long\n");
                return;
            }
            Next::TooSlow => {
                let message = format!(
                    "error: request not completed within {} s\n",
                    limits.line_deadline.as_secs_f64()
                );
                let _ = writer.write_all(message.as_bytes());
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if writer.write_all(answer(&line, tx).as_bytes()).is_err() {
            // Gone, or not reading its answers for `write_timeout`.
            return;
        }
    }
}

/// The answer line to one request line.
fn answer(line: &[u8], tx: &Sender<Command>) -> String {
    match parse_request(line) {
        Ok(remote) => match tx.send(remote.to_command()) {
            Ok(()) => "ok\n".to_string(),
            Err(_) => "error: the run no longer takes commands\n".to_string(),
        },
        Err(message) => format!("error: {}\n", message.replace(['\n', '\r'], " ")),
    }
}

/// What reading a connection gave.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// A complete line, newline included.
    Line(Vec<u8>),
    /// End of stream, or a read error.
    Closed,
    /// More than `max_line` bytes without a newline.
    TooLong,
    /// A line started but not finished within `line_deadline`.
    TooSlow,
}

/// Splits a connection into request lines. Holds at most `max_line + CHUNK` bytes.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
    /// When the unfinished line in `buf` began to arrive.
    started: Option<Instant>,
}

impl Lines {
    fn next(&mut self, mut stream: &UnixStream, limits: &Limits) -> Next {
        let mut chunk = [0u8; CHUNK];
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                if end > limits.max_line {
                    return Next::TooLong;
                }
                let rest = self.buf.split_off(end + 1);
                let line = std::mem::replace(&mut self.buf, rest);
                self.started = (!self.buf.is_empty()).then(Instant::now);
                return Next::Line(line);
            }
            if self.buf.len() > limits.max_line {
                return Next::TooLong;
            }
            // Idle between lines: wait as long as it takes. Mid-line: only until the deadline.
            let timeout = match self.started {
                None => None,
                Some(started) => match limits.line_deadline.checked_sub(started.elapsed()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Next::TooSlow,
                },
            };
            if stream.set_read_timeout(timeout).is_err() {
                return Next::Closed;
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Next::Closed,
                Ok(n) => {
                    self.started.get_or_insert_with(Instant::now);
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                // Timed out: the deadline check above decides.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => return Next::Closed,
            }
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
            Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
                "permission denied: the control socket {} of {} belongs to another user (only \
                 the user who started a run can control it)",
                socket.display(),
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
        if let Err(e) = self.stream.write_all(request.as_bytes()) {
            // A run that refused the connection (another user, too many viewers) said why
            // before closing it.
            let mut answer = String::new();
            if self.reader.read_line(&mut answer).is_ok() {
                if let Some(message) = answer.trim_end().strip_prefix("error: ") {
                    bail!("the run refused {}: {message}", cmd.name())
                }
            }
            return Err(e).with_context(|| format!("cannot send {} to the run", cmd.name()));
        }
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

    /// Limits short enough for tests to run into.
    fn short() -> Limits {
        Limits {
            max_line: 64,
            line_deadline: Duration::from_millis(300),
            write_timeout: Duration::from_millis(200),
            max_connections: 3,
        }
    }

    /// Everything the server says until it closes the connection. Closing with a request still
    /// unread resets the connection once its last answer has been read.
    fn read_to_end(reader: &mut BufReader<UnixStream>) -> String {
        let mut rest = String::new();
        loop {
            match reader.read_line(&mut rest) {
                Ok(0) => return rest,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return rest,
                Err(e) => panic!("{e} after {rest:?}"),
            }
        }
    }

    /// Waits until the server has `n` connections (the registry follows closes asynchronously).
    fn wait_for_connections(server: &ControlServer, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.connections() != n {
            assert!(
                Instant::now() < deadline,
                "{} connections, expected {n}",
                server.connections()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn lines_are_split_and_the_buffer_stays_bounded() {
        let limits = short();
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut lines = Lines::default();
        client.write_all(b"a\n\nbc\nd").unwrap();
        assert_eq!(lines.next(&server, &limits), Next::Line(b"a\n".to_vec()));
        assert_eq!(lines.next(&server, &limits), Next::Line(b"\n".to_vec()));
        assert_eq!(lines.next(&server, &limits), Next::Line(b"bc\n".to_vec()));
        client.write_all(b"e\n").unwrap();
        assert_eq!(lines.next(&server, &limits), Next::Line(b"de\n".to_vec()));
        // A line of exactly max_line bytes passes; one more byte does not, newline or not.
        let max = vec![b'x'; limits.max_line];
        client.write_all(&max).unwrap();
        client.write_all(b"\n").unwrap();
        assert_eq!(
            lines.next(&server, &limits),
            Next::Line([max.as_slice(), b"\n"].concat())
        );
        client.write_all(&[b'y'; 65]).unwrap();
        client.write_all(b"\n").unwrap();
        assert_eq!(lines.next(&server, &limits), Next::TooLong);

        let mut lines = Lines::default();
        let writer = std::thread::spawn(move || {
            // Far more than the limit; the reader gives up long before the end.
            let _ = client.write_all(&vec![b'z'; 1 << 20]);
        });
        assert_eq!(lines.next(&server, &limits), Next::TooLong);
        assert!(lines.buf.len() <= limits.max_line + CHUNK);
        drop(server);
        writer.join().unwrap();
    }

    #[test]
    fn a_line_left_unfinished_is_cut_off_but_an_idle_connection_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let limits = short();
        let _server = serve_with(dir.path(), tx, limits).unwrap();
        let (mut idle, mut idle_reader) = raw(dir.path());
        let (mut slow, mut slow_reader) = raw(dir.path());

        // Bytes trickled without a newline do not extend the deadline.
        slow.write_all(b"{\"command\"").unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(25));
                if slow.write_all(b" ").is_err() {
                    break;
                }
            }
        });
        assert_eq!(
            read_to_end(&mut slow_reader),
            "error: request not completed within 0.3 s\n"
        );
        trickle.join().unwrap();

        // Idle for several deadlines between requests: still served.
        assert_eq!(
            ask(&mut idle, &mut idle_reader, "{\"command\":\"pause\"}\n"),
            "ok\n"
        );
        std::thread::sleep(limits.line_deadline * 3);
        assert_eq!(
            ask(&mut idle, &mut idle_reader, "{\"command\":\"resume\"}\n"),
            "ok\n"
        );
        assert_eq!(recv(&rx), Command::Pause);
        assert_eq!(recv(&rx), Command::Resume);
    }

    #[test]
    fn a_ten_megabyte_line_is_refused_and_others_are_still_served() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let _server = serve(dir.path(), tx).unwrap();
        let (mut other, mut other_reader) = raw(dir.path());
        let (mut huge, mut huge_reader) = raw(dir.path());
        let writer = std::thread::spawn(move || {
            // Fails once the server has given up and closed the connection.
            let _ = huge.write_all(&vec![b'{'; 10 << 20]);
        });
        assert_eq!(read_to_end(&mut huge_reader), "error: request too long\n");
        writer.join().unwrap();
        assert_eq!(
            ask(&mut other, &mut other_reader, "{\"command\":\"step\"}\n"),
            "ok\n"
        );
        assert_eq!(recv(&rx), Command::Step);
    }

    #[test]
    fn a_client_that_never_reads_its_answers_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel();
        let server = serve_with(dir.path(), tx, short()).unwrap();
        let (mut deaf, _) = raw(dir.path());
        deaf.set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let flood = std::thread::spawn(move || loop {
            // Each request has an answer the client never reads; it goes on until the server
            // gives up on it and closes the connection.
            match deaf.write_all(b"{\"command\":\"step\"}\n") {
                Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                _ => {}
            }
        });
        flood.join().unwrap();
        wait_for_connections(&server, 0);
        let mut client = ControlClient::connect(dir.path()).unwrap();
        client.send(Remote::Pause).unwrap();
    }

    #[test]
    fn connections_beyond_the_cap_are_refused_until_one_closes() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel();
        let limits = short();
        let server = serve_with(dir.path(), tx, limits).unwrap();
        let mut clients: Vec<ControlClient> = (0..limits.max_connections)
            .map(|_| {
                let mut c = ControlClient::connect(dir.path()).unwrap();
                c.send(Remote::Step).unwrap();
                c
            })
            .collect();
        assert_eq!(server.connections(), limits.max_connections);

        // Refused ones that never read do not hold up the accept loop.
        let ignored: Vec<UnixStream> = (0..20)
            .map(|_| UnixStream::connect(dir.path().join(SOCKET)).unwrap())
            .collect();
        let (_s, mut r) = raw(dir.path());
        assert_eq!(read_to_end(&mut r), "error: too many connections (3)\n");
        let err = ControlClient::connect(dir.path())
            .unwrap()
            .send(Remote::Pause)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("refused pause: too many connections (3)"),
            "{err}"
        );
        drop(ignored);

        drop(clients.pop());
        wait_for_connections(&server, limits.max_connections - 1);
        let mut late = ControlClient::connect(dir.path()).unwrap();
        late.send(Remote::Pause).unwrap();
        for c in &mut clients {
            c.send(Remote::Resume).unwrap();
        }
    }

    #[test]
    fn refusal_reply_and_line_errors_are_single_lines() {
        let (tx, _rx) = mpsc::channel();
        for line in [&b"\"\\r\""[..], b"{\"command\":\"a\\nb\"}", b"\xff\xfe"] {
            let answer = answer(line, &tx);
            assert!(answer.starts_with("error: "), "{answer}");
            assert_eq!(
                answer.find(['\n', '\r']),
                Some(answer.len() - 1),
                "{answer}"
            );
        }
        let (a, b) = UnixStream::pair().unwrap();
        refuse(a, "permission denied");
        let mut reader = BufReader::new(b);
        assert_eq!(read_to_end(&mut reader), "error: permission denied\n");
    }

    mod properties {
        use super::*;
        use proptest::collection::{btree_map, vec};
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                any::<String>().prop_map(Value::from),
                prop::sample::select(ALL.to_vec()).prop_map(|r| Value::from(r.name())),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                let key = prop_oneof![Just("command".to_string()), any::<String>()];
                prop_oneof![
                    vec(inner.clone(), 0..4).prop_map(Value::Array),
                    btree_map(key, inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// One request line's bytes (newlines inside make several lines).
        fn request() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                vec(any::<u8>(), 0..300),
                json().prop_map(|v| v.to_string().into_bytes()),
                json().prop_map(|v| serde_json::json!({ "command": v }).to_string().into_bytes()),
                prop::sample::select(ALL.to_vec()).prop_map(|r| {
                    serde_json::json!({ "command": r.name() })
                        .to_string()
                        .into_bytes()
                }),
            ]
        }

        fn expected(value: &Value) -> Option<Remote> {
            let name = value.as_object()?.get("command")?.as_str()?;
            ALL.into_iter().find(|r| r.name() == name)
        }

        proptest! {
            #[test]
            fn parse_request_takes_any_bytes(bytes in vec(any::<u8>(), 0..2048)) {
                let _ = parse_request(&bytes);
            }

            #[test]
            fn parse_request_accepts_exactly_the_known_commands(value in json()) {
                let text = value.to_string();
                prop_assert_eq!(parse_request(text.as_bytes()).ok(), expected(&value));
                let wrapped = serde_json::json!({ "command": value });
                prop_assert_eq!(
                    parse_request(wrapped.to_string().as_bytes()).ok(),
                    expected(&wrapped)
                );
            }
        }

        #[test]
        fn every_complete_line_over_the_socket_is_answered() {
            let dir = tempfile::tempdir().unwrap();
            let (tx, rx) = mpsc::channel();
            let server = serve(dir.path(), tx).unwrap();
            let mut runner = TestRunner::new(Config {
                cases: 128,
                ..Config::default()
            });
            let strategy = (vec(request(), 1..6), vec(any::<u8>(), 0..40));
            runner
                .run(&strategy, |(requests, unfinished)| {
                    let mut bytes = Vec::new();
                    for request in &requests {
                        bytes.extend_from_slice(request);
                        bytes.push(b'\n');
                    }
                    prop_assume!(bytes.split(|&b| b == b'\n').all(|l| l.len() <= MAX_LINE));
                    let (mut s, mut r) = raw(dir.path());
                    let answers = bytes
                        .split(|&b| b == b'\n')
                        .rev()
                        .skip(1)
                        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                        .count();
                    s.write_all(&bytes).unwrap();
                    for _ in 0..answers {
                        let mut answer = String::new();
                        r.read_line(&mut answer).unwrap();
                        prop_assert!(
                            answer == "ok\n" || answer.starts_with("error: "),
                            "{:?}",
                            answer
                        );
                    }
                    s.write_all(b"{\"command\":\"checkpoint\"}\n").unwrap();
                    let mut answer = String::new();
                    r.read_line(&mut answer).unwrap();
                    prop_assert_eq!(answer, "ok\n");
                    // Leaving mid-line harms nothing either.
                    let unfinished: Vec<u8> =
                        unfinished.into_iter().filter(|&b| b != b'\n').collect();
                    s.write_all(&unfinished).unwrap();
                    Ok(())
                })
                .unwrap();
            let commands: Vec<Command> = rx.try_iter().collect();
            assert!(
                commands
                    .iter()
                    .filter(|c| **c == Command::Checkpoint)
                    .count()
                    >= 128
            );
            wait_for_connections(&server, 0);
        }
    }
}
