//! Run directories: one folder per run, append-only while it trains.
//!
//! ```text
//! <run>/config.toml      resolved RunConfig at start
//!       events.jsonl     every event of the run, one serde record a line, in order: what
//!                        viewers read back (`{"v": 1, "event": "step", ...}`, see below)
//!       status.json      current state, step, total steps, pid (rewritten atomically)
//!       metrics.jsonl    {"step", "time", "split": "train"|"eval", metric names...} and
//!                        {"step", "time", "event": "skipped"|"applied", ...}
//!       samples.jsonl    {"step", "prompt_id", "prompt", "source", "text", "token_ids"}
//!       prefix.jsonl     eval diagnostics: {"step", "prefix", "token_diffs", "entropy", ...}
//!       log.txt          human-readable log: `<YYYYMMDD-HHMMSS> step <N> <level>: <sentence>`
//!       tb/              with `[log] tensorboard = true`: TensorBoard event files of the
//!                        metrics, one per process start ([`tensorboard`])
//!       checkpoints/step-N/   HF folder + optimizer.safetensors + trainer_state.json,
//!                        written as checkpoints/.tmp-step-N and renamed when complete
//! ```
//!
//! events.jsonl is the record viewers trust: each line is [`Event::to_record`], the event's
//! serde form with its format version in `"v"` (a version on every line rather than a header, so
//! that truncating a resumed run's records, or appending to a run written by another version,
//! needs no rewriting of the head). metrics, samples and prefix are the same records in TRL's
//! shape for users' scripts; log.txt says each event in words ([`Event::describe`]). Run
//! directories written before events.jsonl existed are read from those files instead
//! ([`tail`]), and so is a Hugging Face Trainer (TRL) output folder, from its
//! trainer_state.json ([`trl`]).

mod legacy;
mod lines;
pub mod lock;
pub mod tail;
pub mod tensorboard;
#[cfg(test)]
mod testutil;
pub mod trl;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::RunConfig;
use crate::event::{Event, Level, RunState};

pub const CONFIG: &str = "config.toml";
pub const EVENTS: &str = "events.jsonl";
pub const STATUS: &str = "status.json";
pub const METRICS: &str = "metrics.jsonl";
pub const SAMPLES: &str = "samples.jsonl";
pub const PREFIX: &str = "prefix.jsonl";
pub const LOG: &str = "log.txt";
pub const CHECKPOINTS: &str = "checkpoints";
pub const TRAINER_STATE: &str = "trainer_state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";

#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
}

/// UTC `YYYYMMDD-HHMMSS` of a unix time.
pub fn timestamp(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// What `status.json` holds: enough for a viewer to know where a run stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub variant: String,
    pub step: usize,
    pub total_steps: usize,
    #[serde(flatten)]
    pub state: RunState,
    pub pid: u32,
    pub time: f64,
}

impl RunDir {
    /// A new run folder `root/<name>-<timestamp>` (suffixed when the name is taken).
    pub fn create(root: &Path, name: &str) -> Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let base = format!("{name}-{}", timestamp(secs));
        for i in 1.. {
            let candidate = if i == 1 {
                root.join(&base)
            } else {
                root.join(format!("{base}-{i}"))
            };
            match std::fs::create_dir(&candidate) {
                Ok(()) => return Self::open(&candidate),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", candidate.display()))
                }
            }
        }
        unreachable!()
    }

    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            anyhow::bail!("{}: not a run directory", path.display());
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.path.join(CHECKPOINTS)
    }

    pub fn write_config(&self, cfg: &RunConfig) -> Result<()> {
        let text = toml::to_string(cfg).context("cannot serialise the run config")?;
        write_atomic(&self.file(CONFIG), text.as_bytes())
    }

    pub fn read_config(&self) -> Result<RunConfig> {
        let path = self.file(CONFIG);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            let (line, col) =
                crate::config::locate::line_col(&text, e.span().map_or(0, |s| s.start));
            anyhow::anyhow!("{}:{line}:{col}: {}", path.display(), e.message())
        })
    }

    pub fn write_status(&self, status: &Status) -> Result<()> {
        let path = self.file(STATUS);
        crate::fault::disk("status-write")
            .with_context(|| format!("cannot write {}", path.display()))?;
        write_atomic(&path, &serde_json::to_vec_pretty(status)?)
    }

    pub fn read_status(&self) -> Option<Status> {
        let text = std::fs::read_to_string(self.file(STATUS)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Complete checkpoints, oldest first (temporary folders of interrupted writes are not
    /// listed).
    pub fn list_checkpoints(&self) -> Vec<(usize, PathBuf)> {
        checkpoint_folders(&self.checkpoints(), "step-")
    }

    pub fn latest_checkpoint(&self) -> Option<(usize, PathBuf)> {
        self.list_checkpoints().pop()
    }

    /// Writes a checkpoint with `fill` into the temporary folder `.tmp-step-N`, makes every
    /// file in it durable (fsync), and only then renames it to `step-N`, the only name
    /// [`list_checkpoints`](Self::list_checkpoints) and a resume take: a crash, a full disk or a
    /// read-only file system at any moment leaves earlier checkpoints intact and is never taken
    /// for a complete checkpoint. When any of it fails (`fill`, the fsync or the rename), the
    /// temporary folder is removed (freeing the space it took) and the error, which names the
    /// file and the OS error, is returned: the caller stops the run, which can then continue
    /// from the previous checkpoint with `--resume`. Keeps only the newest `keep` checkpoints,
    /// removing older ones after the new one is complete.
    pub fn write_checkpoint(
        &self,
        step: usize,
        keep: usize,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let dir = self.checkpoints();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let done = dir.join(format!("step-{step}"));
        if done.join(TRAINER_STATE).exists() {
            return Ok(done);
        }
        let tmp = dir.join(format!(".tmp-step-{step}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        let written = (|| -> Result<()> {
            crate::fault::disk("checkpoint-write")
                .and_then(|()| std::fs::create_dir_all(&tmp))
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            fill(&tmp)?;
            sync_tree(&tmp)?;
            if done.exists() {
                std::fs::remove_dir_all(&done)
                    .with_context(|| format!("cannot remove {}", done.display()))?;
            }
            crate::fault::disk("checkpoint-rename")
                .and_then(|()| std::fs::rename(&tmp, &done))
                .with_context(|| format!("cannot rename {} to {}", tmp.display(), done.display()))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.context(format!("checkpoint at step {step} not written")));
        }
        sync_dir(&dir);
        let all = self.list_checkpoints();
        if all.len() > keep.max(1) {
            for (_, p) in &all[..all.len() - keep.max(1)] {
                let _ = std::fs::remove_dir_all(p);
            }
        }
        Ok(done)
    }

    /// Drops every record after `step` from the JSONL files (resuming from a checkpoint at
    /// `step` recomputes them), and leftovers of interrupted checkpoint writes. A run directory
    /// of an earlier version gets its events.jsonl first, made from its other files, so that
    /// what came before the resume stays visible to viewers.
    pub fn truncate_after(&self, step: usize) -> Result<()> {
        self.add_events_file()?;
        for name in [EVENTS, METRICS, SAMPLES, PREFIX] {
            let path = self.file(name);
            let Ok(f) = File::open(&path) else { continue };
            let mut kept = Vec::new();
            for line in BufReader::new(f).lines() {
                let line = line?;
                // A torn last line (a killed process) has no step and goes too.
                let keep = record_step(&line).is_some_and(|s| s <= step);
                if keep {
                    kept.extend_from_slice(line.as_bytes());
                    kept.push(b'\n');
                }
            }
            write_atomic(&path, &kept)?;
        }
        if let Ok(entries) = std::fs::read_dir(self.checkpoints()) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    /// Writes events.jsonl from the files of a run directory written before it existed (one
    /// with train records but no events.jsonl), as [`tail`] reads them.
    fn add_events_file(&self) -> Result<()> {
        let has_records = std::fs::metadata(self.file(METRICS)).is_ok_and(|m| m.len() > 0);
        if self.file(EVENTS).exists() || !has_records || !self.file(CONFIG).exists() {
            return Ok(());
        }
        let mut text = String::new();
        for ev in tail::replay(&self.path)? {
            text += &ev.to_record()?;
            text.push('\n');
        }
        write_atomic(&self.file(EVENTS), text.as_bytes())
    }
}

/// The step of a JSONL record (where it starts, for a run's `started` event).
fn record_step(line: &str) -> Option<usize> {
    let v = serde_json::from_str::<Value>(line).ok()?;
    let step = v.get("step").or_else(|| v.get("start_step"))?;
    step.as_u64().map(|s| s as usize)
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Flushes every file under `dir` to disk, then the folders themselves (their entries), so
/// that a rename that publishes `dir` never publishes files still in the page cache only.
fn sync_tree(dir: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for e in entries {
        let p = e
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot write {}", p.display()))?;
        }
    }
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", dir.display()))
}

/// The folders `<prefix>N` of `dir` that hold a trainer_state.json, by step N: gaplab's
/// `step-N` checkpoints and a Hugging Face Trainer's `checkpoint-N` alike.
pub(crate) fn checkpoint_folders(dir: &Path, prefix: &str) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix(prefix)?.parse().ok()?;
            let p = e.path();
            p.join(TRAINER_STATE).is_file().then_some((step, p))
        })
        .collect();
    v.sort();
    v
}

/// Writes a file through a temporary sibling and a rename: readers see the old content or the
/// new, never a part. On failure the temporary file is removed and the old content stays.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    let written = (|| -> std::io::Result<()> {
        crate::fault::disk("atomic-write")?;
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Appends events to the run directory's files, flushing each record.
///
/// A failed write (a full disk, a read-only file system, or an injected fault: fault points
/// `events-write`, `metrics-write`, `samples-write`, `prefix-write`, `log-write`,
/// `status-write`) returns an error naming the file and the OS error; the engine then stops
/// the run as failed (status.json says so when it can still be written) and the run continues
/// from its last checkpoint with `--resume`, which drops any record after that checkpoint,
/// torn last lines included. A state change is written to status.json even when appending its
/// record to events.jsonl failed, so that a failure is seen there whenever possible.
///
/// With `[log] tensorboard = true` in the run's config.toml, the metrics also go to a
/// TensorBoard event file in `tb/` (fault point `tensorboard-write`), opened at the run's
/// `Started`: a new file each time the run starts or resumes.
pub struct Writer {
    run: RunDir,
    events: File,
    metrics: File,
    samples: File,
    prefix: File,
    log: File,
    variant: String,
    total_steps: usize,
    board: Board,
}

/// The run's TensorBoard event file, if it writes one.
enum Board {
    Off,
    /// Asked for; opened at the next `Started` (or the first metrics).
    Wanted,
    Open(tensorboard::EventFile),
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Appends one record to `f` (the file `path`), through fault point `fault`.
fn append_line(f: &mut File, path: &Path, fault: &str, text: &str) -> Result<()> {
    crate::fault::disk(fault)
        .and_then(|()| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn line(f: &mut File, path: &Path, fault: &str, v: &Value) -> Result<()> {
    let mut s = serde_json::to_string(v)?;
    s.push('\n');
    append_line(f, path, fault, &s)
}

/// Ends a torn last line (a process killed mid-write) so that the next record starts on a line
/// of its own: readers skip the fragment instead of losing the record after it.
fn end_torn_line(f: &mut File, path: &Path) -> Result<()> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    let mut r = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    r.seek(SeekFrom::Start(len - 1))?;
    r.read_exact(&mut last)?;
    if last[0] != b'\n' {
        f.write_all(b"\n")?;
    }
    Ok(())
}

impl Writer {
    pub fn new(run: &RunDir, variant: &str, total_steps: usize) -> Result<Self> {
        // events.jsonl first: a viewer that finds the other files without it takes the run
        // directory for one of an earlier version.
        let path = run.file(EVENTS);
        let mut events = append(&path)?;
        end_torn_line(&mut events, &path)?;
        let board = if run.file(CONFIG).is_file() && run.read_config()?.log.tensorboard {
            Board::Wanted
        } else {
            Board::Off
        };
        Ok(Self {
            board,
            events,
            metrics: append(&run.file(METRICS))?,
            samples: append(&run.file(SAMPLES))?,
            prefix: append(&run.file(PREFIX))?,
            log: append(&run.file(LOG))?,
            run: run.clone(),
            variant: variant.to_string(),
            total_steps,
        })
    }

    fn log(&mut self, step: usize, level: Level, sentence: &str) -> Result<()> {
        let t = crate::event::now() as u64;
        let level = match level {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        let text = format!("{} step {step} {level}: {sentence}\n", timestamp(t));
        append_line(&mut self.log, &self.run.file(LOG), "log-write", &text)
    }

    /// Rewrites status.json with the run's state at `step`.
    pub fn write_status(&self, step: usize, state: &RunState) -> Result<()> {
        self.run.write_status(&Status {
            variant: self.variant.clone(),
            step,
            total_steps: self.total_steps,
            state: state.clone(),
            pid: std::process::id(),
            time: crate::event::now(),
        })
    }

    pub fn write(&mut self, ev: &Event) -> Result<()> {
        let mut record = ev.to_record()?;
        record.push('\n');
        let recorded = append_line(
            &mut self.events,
            &self.run.file(EVENTS),
            "events-write",
            &record,
        );
        if let Event::State { step, state } = ev {
            let status = self.write_status(*step, state);
            recorded?;
            status?;
        } else {
            recorded?;
        }
        self.write_files(ev)?;
        if let Some(sentence) = ev.describe() {
            self.log(ev.step(), ev.level(), &sentence)?;
        }
        Ok(())
    }

    /// The open TensorBoard file, opened now if it is wanted.
    fn board(&mut self) -> Result<Option<&mut tensorboard::EventFile>> {
        if let Board::Wanted = self.board {
            let f = tensorboard::EventFile::create(&self.run.path.join(tensorboard::DIR))?;
            self.board = Board::Open(f);
        }
        Ok(match &mut self.board {
            Board::Open(f) => Some(f),
            _ => None,
        })
    }

    /// Writes the TRL-shaped records of `ev` (metrics, samples, prefix) and its TensorBoard
    /// scalars.
    fn write_files(&mut self, ev: &Event) -> Result<()> {
        let time = crate::event::now();
        match ev {
            // A resumed run's records after its checkpoint were dropped; TensorBoard drops
            // them from earlier files when told where the run starts again.
            Event::Started { start_step, .. } => {
                if let Some(f) = self.board()? {
                    f.write_session_start(start_step + 1, time)?;
                }
            }
            Event::Step(_) | Event::Eval(_) => {
                if let Some(f) = self.board()? {
                    f.write_event(ev)?;
                }
            }
            _ => {}
        }
        let metrics = self.run.file(METRICS);
        let mut metric = |v: Value| line(&mut self.metrics, &metrics, "metrics-write", &v);
        match ev {
            Event::Started { total_steps, .. } => self.total_steps = *total_steps,
            Event::Step(m) => {
                let mut v = json!({"step": m.step, "time": m.time, "split": "train"});
                for (k, x) in &m.metrics {
                    v[k] = json!(x);
                }
                metric(v)?;
            }
            Event::Skipped { step, reason } => {
                metric(json!({"step": step, "time": time, "event": "skipped", "reason": reason}))?
            }
            Event::Eval(r) => {
                let mut v = json!({"step": r.step, "time": r.time, "split": "eval"});
                for (k, x) in &r.metrics {
                    v[k] = json!(x);
                }
                metric(v)?;
                line(
                    &mut self.prefix,
                    &self.run.file(PREFIX),
                    "prefix-write",
                    &json!({"step": r.step, "time": r.time, "prefix": r.prefix,
                        "token_diffs": r.token_diffs, "entropy": r.entropy,
                        "cross_entropy": r.cross_entropy, "kl_profile": r.kl_profile}),
                )?;
            }
            Event::Samples { samples, .. } => {
                let path = self.run.file(SAMPLES);
                for s in samples {
                    line(
                        &mut self.samples,
                        &path,
                        "samples-write",
                        &serde_json::to_value(s)?,
                    )?;
                }
            }
            Event::Applied {
                step,
                changes,
                ignored,
            } => metric(json!({"step": step, "time": time, "event": "applied",
                        "changes": changes, "ignored": ignored}))?,
            Event::ConfigRejected { step, error } => metric(
                json!({"step": step, "time": time, "event": "config_rejected", "error": error}),
            )?,
            // Alerts are kept in events.jsonl (and said in log.txt).
            Event::State { .. }
            | Event::Checkpoint { .. }
            | Event::Log { .. }
            | Event::Alert { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(timestamp(0), "19700101-000000");
        assert_eq!(timestamp(1_795_739_045), "20261127-002405");
        assert_eq!(timestamp(951_782_400), "20000229-000000");
    }

    #[test]
    fn checkpoints_are_atomic_and_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path(), "v").unwrap();
        let fill = |p: &Path| -> Result<()> {
            std::fs::write(p.join(TRAINER_STATE), "{}")?;
            Ok(())
        };
        for step in [1, 2, 3] {
            run.write_checkpoint(step, 2, fill).unwrap();
        }
        let steps: Vec<usize> = run.list_checkpoints().iter().map(|c| c.0).collect();
        assert_eq!(steps, vec![2, 3]);
        // A write that fails halfway leaves a temporary folder that is never listed.
        let err = run.write_checkpoint(4, 2, |p| {
            std::fs::write(p.join("model.safetensors"), "partial")?;
            anyhow::bail!("disk full")
        });
        let err = format!("{:#}", err.unwrap_err());
        assert!(err.starts_with("checkpoint at step 4 not written"), "{err}");
        assert_eq!(run.latest_checkpoint().unwrap().0, 3);
        // ... and is removed at once, freeing its space.
        assert!(!run.checkpoints().join(".tmp-step-4").exists());
        // A leftover of a killed process goes when the run resumes.
        std::fs::create_dir_all(run.checkpoints().join(".tmp-step-5")).unwrap();
        assert_eq!(run.latest_checkpoint().unwrap().0, 3);
        run.truncate_after(3).unwrap();
        assert!(!run.checkpoints().join(".tmp-step-5").exists());
    }

    #[test]
    fn a_failed_append_names_the_file_and_status_still_says_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path(), "v").unwrap();
        let mut w = Writer::new(&run, "v", 9).unwrap();
        // A handle that cannot write stands for a full or read-only disk.
        w.events = File::open(run.file(EVENTS)).unwrap();
        let failed = Event::State {
            step: 3,
            state: RunState::Failed("disk full".into()),
        };
        let err = format!("{:#}", w.write(&failed).unwrap_err());
        assert!(
            err.starts_with(&format!("cannot write {}: ", run.file(EVENTS).display())),
            "{err}"
        );
        let status = run.read_status().unwrap();
        assert_eq!((status.step, status.state), (3, failed_state()));
        w.metrics = File::open(run.file(METRICS)).unwrap();
        w.events = append(&run.file(EVENTS)).unwrap();
        let step = Event::Skipped {
            step: 4,
            reason: "x".into(),
        };
        let err = format!("{:#}", w.write(&step).unwrap_err());
        assert!(
            err.contains(&run.file(METRICS).display().to_string()),
            "{err}"
        );
    }

    fn failed_state() -> RunState {
        RunState::Failed("disk full".into())
    }

    #[test]
    fn a_failed_atomic_write_keeps_the_old_content() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("status.json");
        write_atomic(&path, b"old").unwrap();
        // A folder where the temporary file goes makes its creation fail.
        std::fs::create_dir(path.with_extension("tmp~")).unwrap();
        let err = format!("{:#}", write_atomic(&path, b"new").unwrap_err());
        assert!(err.starts_with("cannot write "), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
    }

    #[test]
    fn truncation_drops_later_records() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path(), "v").unwrap();
        std::fs::write(
            run.file(METRICS),
            "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n",
        )
        .unwrap();
        run.truncate_after(2).unwrap();
        assert_eq!(
            std::fs::read_to_string(run.file(METRICS)).unwrap(),
            "{\"step\":1}\n{\"step\":2}\n"
        );
    }

    #[test]
    fn truncation_covers_the_events() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path(), "v").unwrap();
        let log = |step: usize| Event::Log {
            step,
            level: Level::Info,
            message: format!("at {step}"),
        };
        let resumed = Event::Started {
            variant: "v".into(),
            run_dir: run.path.clone(),
            start_step: 2,
            total_steps: 9,
            device: "cpu".into(),
            params: 1,
            lora: None,
            config: Box::new(serde_json::json!({})),
        };
        let mut w = Writer::new(&run, "v", 9).unwrap();
        for ev in [log(1), log(2), resumed.clone(), log(3)] {
            w.write(&ev).unwrap();
        }
        // A record torn by a kill goes too.
        std::fs::OpenOptions::new()
            .append(true)
            .open(run.file(EVENTS))
            .unwrap()
            .write_all(b"{\"v\":1,\"event\":\"lo")
            .unwrap();
        run.truncate_after(2).unwrap();
        let kept: Vec<Event> = std::fs::read_to_string(run.file(EVENTS))
            .unwrap()
            .lines()
            .map(|l| Event::from_record(l).unwrap())
            .collect();
        assert_eq!(kept, vec![log(1), log(2), resumed]);
    }

    #[test]
    fn tensorboard_files_follow_the_config_one_per_writer() {
        use crate::event::StepMetrics;
        let tmp = tempfile::tempdir().unwrap();
        let run = testutil::new_run(tmp.path(), "dpo");
        let started = |start_step| Event::Started {
            variant: "dpo".into(),
            run_dir: run.path.clone(),
            start_step,
            total_steps: 9,
            device: "cpu".into(),
            params: 1,
            lora: None,
            config: Box::new(serde_json::json!({})),
        };
        let step = |step| {
            Event::Step(StepMetrics {
                step,
                time: 50.0 + step as f64,
                metrics: [("loss".to_string(), 0.5)].into_iter().collect(),
            })
        };
        // Off by default: no tb folder.
        let mut w = Writer::new(&run, "dpo", 9).unwrap();
        w.write(&started(0)).unwrap();
        w.write(&step(1)).unwrap();
        assert!(!run.file(tensorboard::DIR).exists());

        let mut cfg = testutil::config(tmp.path());
        cfg.log.tensorboard = true;
        run.write_config(&cfg).unwrap();
        for start in [0, 4] {
            let mut w = Writer::new(&run, "dpo", 9).unwrap();
            w.write(&started(start)).unwrap();
            w.write(&step(start + 1)).unwrap();
        }
        let files = tensorboard::event_files(&run.file(tensorboard::DIR));
        assert_eq!(files.len(), 2);
        let second = tensorboard::read(&files[1]).unwrap();
        assert_eq!(second.len(), 3);
        assert!(second[1].session_start && second[1].step == 5);
        assert_eq!((second[2].step, second[2].wall_time), (5, 55.0));
        assert_eq!(second[2].values, vec![("train/loss".to_string(), 0.5)]);
    }

    #[test]
    fn a_torn_record_is_ended_before_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path(), "v").unwrap();
        std::fs::write(run.file(EVENTS), "{\"v\":1,\"ev").unwrap();
        let mut w = Writer::new(&run, "v", 9).unwrap();
        let ev = Event::Checkpoint {
            step: 2,
            path: "c".into(),
        };
        w.write(&ev).unwrap();
        let text = std::fs::read_to_string(run.file(EVENTS)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "{\"v\":1,\"ev");
        assert_eq!(Event::from_record(lines[1]).unwrap(), ev);
        // A whole file is left as it is.
        drop(w);
        Writer::new(&run, "v", 9).unwrap();
        assert_eq!(std::fs::read_to_string(run.file(EVENTS)).unwrap(), text);
    }
}
