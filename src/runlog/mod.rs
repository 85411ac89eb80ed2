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
//! ([`tail`]).

mod legacy;
mod lines;
pub mod lock;
pub mod tail;
#[cfg(test)]
mod testutil;

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
        write_atomic(&self.file(STATUS), &serde_json::to_vec_pretty(status)?)
    }

    pub fn read_status(&self) -> Option<Status> {
        let text = std::fs::read_to_string(self.file(STATUS)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Complete checkpoints, oldest first (temporary folders of interrupted writes are not
    /// listed).
    pub fn list_checkpoints(&self) -> Vec<(usize, PathBuf)> {
        let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(self.checkpoints())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let step = name.strip_prefix("step-")?.parse().ok()?;
                let p = e.path();
                p.join(TRAINER_STATE).exists().then_some((step, p))
            })
            .collect();
        v.sort();
        v
    }

    pub fn latest_checkpoint(&self) -> Option<(usize, PathBuf)> {
        self.list_checkpoints().pop()
    }

    /// Writes a checkpoint with `fill` into a temporary folder, renames it to `step-N` when
    /// complete (a crash at any moment leaves earlier checkpoints intact), then keeps only the
    /// newest `keep`.
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
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        fill(&tmp).with_context(|| format!("cannot write checkpoint {}", tmp.display()))?;
        if done.exists() {
            std::fs::remove_dir_all(&done)?;
        }
        std::fs::rename(&tmp, &done)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), done.display()))?;
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

/// Writes a file through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    {
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Appends events to the run directory's files, flushing each record.
pub struct Writer {
    run: RunDir,
    events: File,
    metrics: File,
    samples: File,
    prefix: File,
    log: File,
    variant: String,
    total_steps: usize,
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

fn line(f: &mut File, v: &Value) -> Result<()> {
    let mut s = serde_json::to_string(v)?;
    s.push('\n');
    f.write_all(s.as_bytes())?;
    Ok(())
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
        Ok(Self {
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
        writeln!(self.log, "{} step {step} {level}: {sentence}", timestamp(t))?;
        Ok(())
    }

    pub fn write(&mut self, ev: &Event) -> Result<()> {
        let mut record = ev.to_record()?;
        record.push('\n');
        self.events.write_all(record.as_bytes())?;
        let time = crate::event::now();
        match ev {
            Event::Started { total_steps, .. } => self.total_steps = *total_steps,
            Event::State { step, state } => {
                self.run.write_status(&Status {
                    variant: self.variant.clone(),
                    step: *step,
                    total_steps: self.total_steps,
                    state: state.clone(),
                    pid: std::process::id(),
                    time,
                })?;
            }
            Event::Step(m) => {
                let mut v = json!({"step": m.step, "time": m.time, "split": "train"});
                for (k, x) in &m.metrics {
                    v[k] = json!(x);
                }
                line(&mut self.metrics, &v)?;
            }
            Event::Skipped { step, reason } => {
                line(
                    &mut self.metrics,
                    &json!({"step": step, "time": time, "event": "skipped", "reason": reason}),
                )?;
            }
            Event::Eval(r) => {
                let mut v = json!({"step": r.step, "time": r.time, "split": "eval"});
                for (k, x) in &r.metrics {
                    v[k] = json!(x);
                }
                line(&mut self.metrics, &v)?;
                line(
                    &mut self.prefix,
                    &json!({"step": r.step, "time": r.time, "prefix": r.prefix,
                        "token_diffs": r.token_diffs, "entropy": r.entropy,
                        "cross_entropy": r.cross_entropy}),
                )?;
            }
            Event::Samples { samples, .. } => {
                for s in samples {
                    line(&mut self.samples, &serde_json::to_value(s)?)?;
                }
            }
            Event::Applied {
                step,
                changes,
                ignored,
            } => {
                line(
                    &mut self.metrics,
                    &json!({"step": step, "time": time, "event": "applied",
                        "changes": changes, "ignored": ignored}),
                )?;
            }
            Event::ConfigRejected { step, error } => {
                line(
                    &mut self.metrics,
                    &json!({"step": step, "time": time, "event": "config_rejected", "error": error}),
                )?;
            }
            Event::Checkpoint { .. } | Event::Log { .. } => {}
        }
        if let Some(sentence) = ev.describe() {
            self.log(ev.step(), ev.level(), &sentence)?;
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
        assert!(err.is_err());
        assert_eq!(run.latest_checkpoint().unwrap().0, 3);
        assert!(run.checkpoints().join(".tmp-step-4").exists());
        run.truncate_after(3).unwrap();
        assert!(!run.checkpoints().join(".tmp-step-4").exists());
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
