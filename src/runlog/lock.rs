//! One trainer at a time: a lock file per run directory (`RUN/.lock`) and per variant's output
//! (`<runs root>/.lock-<variant>`), so that a second `gaplab train` on the same run or the same
//! variant refuses instead of interleaving records and checkpoints, while two different variants
//! of one workspace may still train at once in two processes (one per GPU).
//!
//! The file holds the owner's pid, its start time as the kernel counts it (clock ticks since
//! boot, from `/proc/PID/stat`) and the wall time it was taken. It is created whole and
//! atomically (written to a private temporary file, then hard-linked into place, which fails
//! when the lock exists) and removed when the holder ends: on return, on error, on a signal
//! stop, and by [`release_all`] before a hard exit. A lock whose pid is gone, a zombie, or now
//! another process (a reused pid with another start time) is stale: it is taken over, with a
//! note for the log. Viewers (`attach`, `check`, `eval`) never take it.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// The lock of a run directory.
pub const RUN_LOCK: &str = ".lock";

/// The lock of a variant's output under a runs root.
pub fn variant_lock(runs_root: &Path, variant: &str) -> PathBuf {
    runs_root.join(format!(".lock-{variant}"))
}

/// Who holds a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The process's start in clock ticks since boot (0 where unknown): tells a reused pid
    /// from the holder.
    pub start_ticks: u64,
    /// Unix seconds when the lock was taken.
    pub since: u64,
}

impl Owner {
    fn me() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start_ticks: proc_stat(pid).map_or(0, |s| s.start_ticks),
            since: crate::event::now() as u64,
        }
    }

    /// `pid 1234, started 2026-12-02 11:00:00 UTC`
    pub fn describe(&self) -> String {
        format!("pid {}, started {}", self.pid, utc(self.since))
    }
}

/// `2026-12-02 11:00:00 UTC` from unix seconds.
fn utc(secs: u64) -> String {
    let t = super::timestamp(secs);
    format!(
        "{}-{}-{} {}:{}:{} UTC",
        &t[0..4],
        &t[4..6],
        &t[6..8],
        &t[9..11],
        &t[11..13],
        &t[13..15]
    )
}

/// What `/proc/PID/stat` says about a process.
struct ProcStat {
    zombie: bool,
    start_ticks: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The state (field 3) and start time (field 22) of a stat line; the command name (field 2)
/// may hold spaces and parentheses, so fields are counted from its last `)`.
fn parse_stat(line: &str) -> Option<ProcStat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        zombie: matches!(*fields.first()?, "Z" | "X"),
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `owner` still runs: its pid exists, is no zombie, and (where both are known) started
/// when the lock says.
fn alive(owner: &Owner) -> bool {
    let Ok(pid) = i32::try_from(owner.pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the pid exists and may be signalled.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match proc_stat(owner.pid) {
        Some(s) => !s.zombie && (owner.start_ticks == 0 || s.start_ticks == owner.start_ticks),
        // No /proc (another OS): the pid exists, take it for the holder.
        None => true,
    }
}

/// Paths of the locks this process holds, for [`release_all`].
static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A held lock; dropping it removes the file (if it is still this process's).
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    owner: Owner,
    /// Set when a stale lock was taken over: says whose, for the run's log.
    pub note: Option<String>,
}

/// Why a lock could not be taken.
#[derive(Debug)]
pub enum Refused {
    /// Another live process holds it.
    Held(Owner),
    /// The lock file cannot be created or read.
    Io(anyhow::Error),
}

impl Lock {
    /// Takes the lock at `path`; when a live process holds it, says that `what` is being
    /// trained by it.
    pub fn acquire(path: &Path, what: &str) -> Result<Self> {
        match Self::try_acquire(path) {
            Ok(l) => Ok(l),
            Err(Refused::Held(o)) => anyhow::bail!(
                "{what} is being trained by another gaplab process ({}); stop it first or wait",
                o.describe()
            ),
            Err(Refused::Io(e)) => Err(e),
        }
    }

    /// Takes the lock at `path`, or names the live process that holds it.
    pub fn try_acquire(path: &Path) -> Result<Self, Refused> {
        let me = Owner::me();
        let mut note = None;
        // A stale lock is removed and the creation tried again; another process may win that
        // race, and is then a live holder.
        for _ in 0..3 {
            match create(path, &me) {
                Ok(()) => {
                    HELD.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(path.to_path_buf());
                    return Ok(Self {
                        path: path.to_path_buf(),
                        owner: me,
                        note,
                    });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Refused::Io(
                        anyhow::Error::new(e)
                            .context(format!("cannot create the lock {}", path.display())),
                    ))
                }
            }
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                // Released meanwhile: try again.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Refused::Io(
                        anyhow::Error::new(e)
                            .context(format!("cannot read the lock {}", path.display())),
                    ))
                }
            };
            // Written whole before it appears: unreadable content is not a live holder's.
            let holder = serde_json::from_str::<Owner>(&text).ok();
            if let Some(o) = holder.as_ref().filter(|o| alive(o)) {
                return Err(Refused::Held(o.clone()));
            }
            // Removed only if it is still the stale one we read.
            if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
                let _ = std::fs::remove_file(path);
            }
            note = Some(match holder {
                Some(o) => format!(
                    "took over the lock {} of a gaplab process that no longer runs ({})",
                    path.display(),
                    o.describe()
                ),
                None => format!("took over the unreadable lock {}", path.display()),
            });
        }
        Err(Refused::Io(anyhow::anyhow!(
            "cannot take the lock {}: it keeps changing",
            path.display()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates the lock file with `owner` in it, failing with `AlreadyExists` when there is one.
fn create(path: &Path, owner: &Owner) -> std::io::Result<()> {
    let text = serde_json::to_string(owner).map_err(std::io::Error::other)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!("{name}.{}.tmp~", owner.pid));
    std::fs::write(&tmp, text.as_bytes())?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        // A file system without hard links: exclusive creation, written right after.
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)?;
            f.write_all(text.as_bytes())
        }
        r => r,
    }
}

/// Removes the lock at `path` if `owner` holds it.
fn remove_if_owned(path: &Path, owner: &Owner) {
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Owner>(&t).ok())
        .is_some_and(|o| o == *owner);
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        remove_if_owned(&self.path, &self.owner);
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = held.iter().position(|p| *p == self.path) {
            held.swap_remove(i);
        }
    }
}

/// Removes every lock this process holds: for an exit that skips destructors (a second signal).
pub fn release_all() {
    let me = std::process::id();
    let held = std::mem::take(&mut *HELD.lock().unwrap_or_else(PoisonError::into_inner));
    for path in held {
        let ours = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Owner>(&t).ok())
            .is_some_and(|o| o.pid == me);
        if ours {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The live holder of the lock at `path`, if any (for viewers that want to say who trains).
pub fn holder(path: &Path) -> Option<Owner> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<Owner>(&text).ok().filter(alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_state_and_start_time() {
        let line = "1234 (gaplab (x) y) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20";
        let s = parse_stat(line).unwrap();
        assert!(!s.zombie);
        assert_eq!(s.start_ticks, 987654);
        assert!(
            parse_stat("1 (z) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 5")
                .unwrap()
                .zombie
        );
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc(1_795_739_045), "2026-11-27 00:24:05 UTC");
    }

    #[test]
    fn a_second_holder_is_refused_and_the_lock_goes_with_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(".lock");
        let first = Lock::acquire(&path, "RUN").unwrap();
        assert!(first.note.is_none());
        let err = Lock::acquire(&path, "RUN").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "RUN is being trained by another gaplab process (pid {}, started ",
                std::process::id()
            )),
            "{err}"
        );
        assert!(err.ends_with("UTC); stop it first or wait"), "{err}");
        assert_eq!(holder(&path).unwrap().pid, std::process::id());
        drop(first);
        assert!(!path.exists());
        assert!(holder(&path).is_none());
        Lock::acquire(&path, "RUN").unwrap();
        // No temporary files are left beside it.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn stale_locks_are_taken_over_with_a_note() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(".lock");
        let me = Owner::me();
        // A pid that no longer runs, and this process's pid with another start time (reused).
        let gone = Owner {
            pid: i32::MAX as u32,
            ..me.clone()
        };
        let reused = Owner {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        for stale in [gone, reused] {
            std::fs::write(&path, serde_json::to_string(&stale).unwrap()).unwrap();
            let lock = Lock::acquire(&path, "RUN").unwrap();
            let note = lock.note.clone().unwrap();
            assert!(note.contains(&format!("pid {}", stale.pid)), "{note}");
            drop(lock);
        }
        std::fs::write(&path, "not json").unwrap();
        assert!(Lock::acquire(&path, "RUN").unwrap().note.is_some());
    }
}
