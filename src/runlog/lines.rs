//! Complete lines appended to a run-directory file, read from a remembered offset: what both
//! the events.jsonl reader and the reader of older run directories follow. A line without its
//! newline (a writer killed mid-line) is left for the next read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::event::{Event, Level};

/// One append-only file read from a remembered offset.
pub(super) struct Source {
    path: PathBuf,
    /// Bytes consumed (always just after a `\n`).
    offset: u64,
    /// Lines consumed, for error messages.
    lines: usize,
    /// Identity of the file read (device, inode), to notice a replacement.
    id: Option<(u64, u64)>,
}

/// New complete lines of a file, numbered from 1; `restarted` when the file was read again
/// from its beginning.
pub(super) struct Chunk {
    pub(super) restarted: bool,
    pub(super) lines: Vec<(usize, String)>,
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

impl Source {
    pub(super) fn new(dir: &Path, name: &'static str) -> Self {
        Self {
            path: dir.join(name),
            offset: 0,
            lines: 0,
            id: None,
        }
    }

    pub(super) fn reset(&mut self) {
        self.offset = 0;
        self.lines = 0;
    }

    pub(super) fn read_new(&mut self) -> Result<Chunk> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let restarted = self.offset > 0;
                self.reset();
                self.id = None;
                return Ok(Chunk {
                    restarted,
                    lines: Vec::new(),
                });
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()))
            }
        };
        let meta = f
            .metadata()
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let id = file_id(&meta);
        let mut restarted = false;
        if meta.len() < self.offset || (self.id.is_some() && id != self.id) {
            restarted = self.offset > 0;
            self.reset();
        }
        self.id = id;
        let mut lines = Vec::new();
        if meta.len() == self.offset {
            return Ok(Chunk { restarted, lines });
        }
        let mut buf = Vec::with_capacity((meta.len() - self.offset) as usize);
        f.seek(SeekFrom::Start(self.offset))
            .and_then(|_| f.read_to_end(&mut buf))
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(Chunk { restarted, lines });
        };
        for raw in buf[..end].split(|&b| b == b'\n') {
            self.lines += 1;
            let text = String::from_utf8_lossy(raw);
            let text = text.trim_end_matches('\r');
            if !text.trim().is_empty() {
                lines.push((self.lines, text.to_string()));
            }
        }
        self.offset += end as u64 + 1;
        Ok(Chunk { restarted, lines })
    }
}

/// The warning that a record of `path` (at line `line`, or the whole file when 0) was skipped.
pub(super) fn unreadable(path: &Path, line: usize, err: &str, step: usize) -> Event {
    let at = if line > 0 {
        format!("{}:{line}", path.display())
    } else {
        path.display().to_string()
    };
    Event::Log {
        step,
        level: Level::Warn,
        message: format!("{at}: skipped an unreadable record ({err})"),
    }
}
