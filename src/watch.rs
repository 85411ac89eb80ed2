//! Watching files that users edit while gaplab runs (the workspace's `gaplab.toml`, theme
//! files), reporting each change of content once.
//!
//! Editors rarely write a file in place: vim, helix and VS Code write a new file and rename it
//! over the old one, some delete and recreate it, and they leave swap and backup files beside
//! it. A watch on the file itself would follow the old inode, so the watcher watches the parent
//! folders and matches exact file names. Bursts of events (truncate, write, rename, attribute
//! changes) are debounced, and a file is reported only when its content hash differs from the
//! last one seen, so saving without changes, touching the file or a swap file appearing does
//! nothing. Where native events are not available (some network and container file systems),
//! or when asked, a polling watcher stands in.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{Config, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher as _};

/// Quiet time after the last event before a file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// How often the polling watcher looks at the folders.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What to watch: exact files, or every file with an extension in a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    File(PathBuf),
    /// Files `*.EXT` directly in the folder.
    Dir {
        dir: PathBuf,
        ext: String,
    },
}

impl Target {
    fn dir(&self) -> PathBuf {
        match self {
            Target::File(p) => parent_of(p),
            Target::Dir { dir, .. } => dir.clone(),
        }
    }

    fn matches(&self, path: &Path) -> bool {
        match self {
            Target::File(p) => same_file_name(p, path),
            Target::Dir { dir, ext } => {
                parent_of(path) == *dir
                    && path.extension().is_some_and(|e| e == ext.as_str())
                    // Editors' hidden temporaries (".gaplab.toml.swp", ".#x.toml").
                    && !path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            }
        }
    }
}

/// `p` and `q` name the same file (same folder, same name), without touching the disk beyond
/// making both absolute.
fn same_file_name(p: &Path, q: &Path) -> bool {
    p.file_name() == q.file_name() && parent_of(p) == parent_of(q)
}

fn parent_of(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let parent = abs.parent().unwrap_or(Path::new("/")).to_path_buf();
    // Symlinked folders (e.g. /tmp on macOS) are reported by their real path.
    std::fs::canonicalize(&parent).unwrap_or(parent)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Native events (inotify, FSEvents, ...), falling back to polling when they fail.
    Native,
    Poll,
}

/// A file whose content changed: `None` when it was removed or cannot be read (an editor may
/// be half-way through saving it; a later event brings the new content). The bytes as they are:
/// a file saved in another encoding is the reader's to report, not a read error to wait out.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub path: PathBuf,
    pub content: Option<Vec<u8>>,
}

/// Keeps the watch alive; dropping it stops watching.
pub struct Watcher {
    _inner: Box<dyn notify::Watcher + Send>,
    /// "native" or "poll": what is actually in use.
    pub mode: Mode,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// Starts watching `targets`; `on_change` is called on a background thread for every file
/// whose content differs from what it was when watching started (or at the last call).
pub fn spawn(
    targets: Vec<Target>,
    mode: Mode,
    mut on_change: impl FnMut(Change) + Send + 'static,
) -> Result<Watcher> {
    let (tx, rx) = mpsc::channel::<PathBuf>();
    let handler = {
        let targets = targets.clone();
        move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            for p in ev.paths {
                if targets.iter().any(|t| t.matches(&p)) {
                    let _ = tx.send(p);
                }
            }
        }
    };
    let mut dirs: Vec<PathBuf> = targets.iter().map(Target::dir).collect();
    dirs.sort();
    dirs.dedup();
    // The content each file has now: only later changes are reported.
    let mut seen: HashMap<PathBuf, Option<u64>> = HashMap::new();
    for t in &targets {
        match t {
            Target::File(p) => {
                let p = parent_of(p).join(p.file_name().unwrap_or_default());
                seen.insert(p.clone(), read(&p).map(|t| hash(&t)));
            }
            Target::Dir { dir, .. } => {
                for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    let p = parent_of(&e.path()).join(e.file_name());
                    if t.matches(&p) {
                        seen.insert(p.clone(), read(&p).map(|t| hash(&t)));
                    }
                }
            }
        }
    }
    let (inner, mode) = start(&dirs, mode, handler)?;
    std::thread::Builder::new()
        .name("gaplab-watch".into())
        .spawn(move || {
            let mut pending: Vec<PathBuf> = Vec::new();
            loop {
                let got = if pending.is_empty() {
                    rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                } else {
                    rx.recv_timeout(DEBOUNCE)
                };
                match got {
                    Ok(p) => {
                        let p = parent_of(&p).join(p.file_name().unwrap_or_default());
                        if !pending.contains(&p) {
                            pending.push(p);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        for path in pending.drain(..) {
                            let content = read(&path);
                            let h = content.as_deref().map(hash);
                            if seen.get(&path) == Some(&h) {
                                continue;
                            }
                            seen.insert(path.clone(), h);
                            on_change(Change { path, content });
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        })
        .context("cannot start the file-watching thread")?;
    Ok(Watcher {
        _inner: inner,
        mode,
    })
}

type Inner = Box<dyn notify::Watcher + Send>;

fn start<H>(dirs: &[PathBuf], mode: Mode, handler: H) -> Result<(Inner, Mode)>
where
    H: FnMut(notify::Result<notify::Event>) + Send + Clone + 'static,
{
    if mode == Mode::Native {
        let native = || -> notify::Result<Inner> {
            let mut w = RecommendedWatcher::new(handler.clone(), Config::default())?;
            for d in dirs {
                w.watch(d, RecursiveMode::NonRecursive)?;
            }
            Ok(Box::new(w))
        };
        if let Ok(w) = native() {
            return Ok((w, Mode::Native));
        }
    }
    let mut w = PollWatcher::new(
        handler,
        Config::default()
            .with_poll_interval(POLL_INTERVAL)
            .with_compare_contents(true),
    )?;
    for d in dirs {
        w.watch(d, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", d.display()))?;
    }
    Ok((Box::new(w), Mode::Poll))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::Instant;

    fn next(rx: &mpsc::Receiver<Change>) -> Option<Change> {
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    fn quiet(rx: &mpsc::Receiver<Change>) -> bool {
        rx.recv_timeout(Duration::from_millis(700)).is_err()
    }

    fn each_mode(f: impl Fn(Mode)) {
        f(Mode::Native);
        f(Mode::Poll);
    }

    #[test]
    fn editor_save_styles_are_seen_once_each() {
        each_mode(|mode| {
            let tmp = tempfile::tempdir().unwrap();
            let file = tmp.path().join("gaplab.toml");
            fs::write(&file, "a = 1\n").unwrap();
            let (tx, rx) = mpsc::channel();
            let _w = spawn(vec![Target::File(file.clone())], mode, move |c| {
                let _ = tx.send(c);
            })
            .unwrap();
            // In place.
            fs::write(&file, "a = 2\n").unwrap();
            assert_eq!(
                next(&rx).unwrap().content.as_deref(),
                Some("a = 2\n".as_bytes()),
                "{mode:?}"
            );
            // Write a temporary, rename it over (vim, helix, VS Code), with a swap file beside.
            std::thread::sleep(Duration::from_millis(50));
            fs::write(tmp.path().join(".gaplab.toml.swp"), "junk").unwrap();
            fs::write(tmp.path().join("gaplab.toml.tmp"), "a = 3\n").unwrap();
            fs::rename(tmp.path().join("gaplab.toml.tmp"), &file).unwrap();
            assert_eq!(
                next(&rx).unwrap().content.as_deref(),
                Some("a = 3\n".as_bytes()),
                "{mode:?}"
            );
            // Delete and recreate: the deletion may or may not be seen on its own, the new
            // content always is.
            fs::remove_file(&file).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            fs::write(&file, "a = 4\n").unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let c = next(&rx).expect("recreated file reported");
                if c.content.as_deref() == Some("a = 4\n".as_bytes()) {
                    break;
                }
                assert_eq!(c.content, None, "{mode:?}");
                assert!(Instant::now() < deadline);
            }
            // Same content again (a save without edits, a touch): nothing.
            fs::write(&file, "a = 4\n").unwrap();
            assert!(quiet(&rx), "{mode:?}");
        });
    }

    #[test]
    fn content_that_is_not_utf8_is_reported_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("gaplab.toml");
        fs::write(&file, "a = 1\n").unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = spawn(vec![Target::File(file.clone())], Mode::Native, move |c| {
            let _ = tx.send(c);
        })
        .unwrap();
        // Latin-1 "é": an editor saving in another encoding. The reader says what is wrong;
        // a watcher that dropped it would leave the user waiting for a reload that never comes.
        fs::write(&file, b"a = \"\xe9\"\n").unwrap();
        assert_eq!(
            next(&rx).unwrap().content.as_deref(),
            Some(&b"a = \"\xe9\"\n"[..])
        );
    }

    #[test]
    fn other_files_in_the_folder_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("gaplab.toml");
        fs::write(&file, "x").unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = spawn(vec![Target::File(file)], Mode::Native, move |c| {
            let _ = tx.send(c);
        })
        .unwrap();
        fs::write(tmp.path().join("other.toml"), "y").unwrap();
        fs::write(tmp.path().join("gaplab.toml~"), "y").unwrap();
        assert!(quiet(&rx));
    }

    #[test]
    fn folder_targets_report_matching_files() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("dark.toml"), "1").unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = spawn(
            vec![Target::Dir {
                dir: tmp.path().to_path_buf(),
                ext: "toml".into(),
            }],
            Mode::Native,
            move |c| {
                let _ = tx.send(c);
            },
        )
        .unwrap();
        fs::write(tmp.path().join("notes.txt"), "x").unwrap();
        fs::write(tmp.path().join("dark.toml"), "2").unwrap();
        let c = next(&rx).unwrap();
        assert_eq!(c.path.file_name().unwrap(), "dark.toml");
        assert_eq!(c.content.as_deref(), Some("2".as_bytes()));
        assert!(quiet(&rx));
    }
}
