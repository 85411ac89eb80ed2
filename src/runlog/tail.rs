//! Reading a run directory back as the [`Event`]s its engine sent, incrementally, so that a
//! viewer cannot tell a live engine from a run directory (finished, or still being written by
//! another process).
//!
//! Each file is read from a remembered byte offset: only complete lines (ending in `\n`) are
//! consumed, a partial last line is read again on the next poll. A file that became shorter, or
//! was replaced (a resumed run rewrites metrics, prefix and samples through a rename), is read
//! again from its beginning; viewers overwrite records by step, so the repeated events are
//! harmless.
//!
//! What each file gives:
//! - `status.json`: `State` whenever (state, step) changes.
//! - `metrics.jsonl`: `Step`, `Eval` (joined with the `prefix.jsonl` record of its step),
//!   `Skipped`, `Applied`, `ConfigRejected`.
//! - `samples.jsonl`: `Samples`, one per run of consecutive lines with the same step.
//! - `log.txt`: `Log`, except the lines the writer adds on behalf of other events (started,
//!   state, skipped, checkpoint, config applied or rejected), which come back as those events instead.
//! - `checkpoints/step-N` with a `trainer_state.json`: `Checkpoint`, once each, in step order.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{RunDir, Status, CONFIG, LOG, METRICS, PREFIX, SAMPLES, STATUS};
use crate::config::RunConfig;
use crate::event::{Change, EvalReport, Event, Level, RunState, Sample, StepMetrics, TokenDiffRow};
use crate::objective::prefix::PrefixCurve;

/// How long an eval waits for its prefix record before it is given without diagnostics.
const PREFIX_WAIT: Duration = Duration::from_secs(2);

/// How often [`follow`] looks at a run that has ended (at least; it may be resumed later).
const OVER_INTERVAL: Duration = Duration::from_secs(2);

/// One append-only file read from a remembered offset.
struct Source {
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
struct Chunk {
    restarted: bool,
    lines: Vec<(usize, String)>,
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
    fn new(dir: &Path, name: &'static str) -> Self {
        Self {
            path: dir.join(name),
            offset: 0,
            lines: 0,
            id: None,
        }
    }

    fn reset(&mut self) {
        self.offset = 0;
        self.lines = 0;
    }

    fn read_new(&mut self) -> Result<Chunk> {
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

fn nan_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    // Non-finite numbers are written as null.
    let v: Option<Vec<Option<f64>>> = Option::deserialize(d)?;
    Ok(v.unwrap_or_default()
        .into_iter()
        .map(|x| x.unwrap_or(f64::NAN))
        .collect())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CurveRecord {
    j: Vec<usize>,
    #[serde(deserialize_with = "nan_vec")]
    margin: Vec<f64>,
    #[serde(deserialize_with = "nan_vec")]
    accuracy: Vec<f64>,
    pairs: Vec<usize>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RowRecord {
    pair: usize,
    #[serde(deserialize_with = "nan_vec")]
    values: Vec<f64>,
}

/// A `prefix.jsonl` record; missing fields are empty.
#[derive(Deserialize, Default)]
#[serde(default)]
struct PrefixRecord {
    prefix: CurveRecord,
    token_diffs: Vec<RowRecord>,
    #[serde(deserialize_with = "nan_vec")]
    entropy: Vec<f64>,
    #[serde(deserialize_with = "nan_vec")]
    cross_entropy: Vec<f64>,
}

impl PrefixRecord {
    fn fill(self, r: &mut EvalReport) {
        r.prefix = PrefixCurve {
            j: self.prefix.j,
            margin: self.prefix.margin,
            accuracy: self.prefix.accuracy,
            pairs: self.prefix.pairs,
        };
        r.token_diffs = self
            .token_diffs
            .into_iter()
            .map(|t| TokenDiffRow {
                pair: t.pair,
                values: t.values,
            })
            .collect();
        r.entropy = self.entropy;
        r.cross_entropy = self.cross_entropy;
    }
}

/// Every numeric field except step and time (null, a non-finite number, reads as NaN).
fn numeric_fields(obj: &serde_json::Map<String, Value>) -> BTreeMap<String, f64> {
    obj.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "step" | "time" | "split" | "event"))
        .filter_map(|(k, v)| match v {
            Value::Number(n) => n.as_f64().map(|x| (k.clone(), x)),
            Value::Null => Some((k.clone(), f64::NAN)),
            _ => None,
        })
        .collect()
}

/// `<YYYYMMDD-HHMMSS> step <N> <level>: <message>`.
fn parse_log_line(line: &str) -> Option<(usize, Level, &str)> {
    let (ts, rest) = line.split_once(' ')?;
    let ok_ts = ts.len() == 15
        && ts.bytes().enumerate().all(|(i, b)| {
            if i == 8 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !ok_ts {
        return None;
    }
    let (n, rest) = rest.strip_prefix("step ")?.split_once(' ')?;
    let step = n.parse().ok()?;
    let (level, message) = rest.split_once(':')?;
    let level = match level {
        "info" => Level::Info,
        "warn" => Level::Warn,
        "error" => Level::Error,
        _ => return None,
    };
    Some((step, level, message.strip_prefix(' ').unwrap_or(message)))
}

/// What the writer's `started`/`resumed` line says: (total steps, device, parameters).
fn parse_started(message: &str) -> Option<(usize, String, usize)> {
    let rest = message
        .strip_prefix("started ")
        .or_else(|| message.strip_prefix("resumed "))?;
    let (head, params) = rest.strip_suffix(" parameters)")?.rsplit_once(" (")?;
    let (head, device) = head.rsplit_once(" on ")?;
    let (_, total) = head.rsplit_once(" of ")?;
    Some((
        total.parse().ok()?,
        device.to_string(),
        params.parse().ok()?,
    ))
}

/// Whether a log line is one the writer adds on behalf of another event (which the reader
/// gives back as that event, from its own file).
fn is_echo(level: Level, message: &str) -> bool {
    match level {
        Level::Info => {
            parse_started(message).is_some()
                || message
                    .strip_prefix("state ")
                    .is_some_and(|s| serde_json::from_str::<RunState>(s).is_ok())
                || message.strip_prefix("checkpoint ").is_some_and(|p| {
                    p.rsplit(['/', '\\'])
                        .next()
                        .and_then(|n| n.strip_prefix("step-"))
                        .is_some_and(|n| n.parse::<usize>().is_ok())
                })
                || message.starts_with("config applied: ")
        }
        Level::Warn => {
            message.starts_with("step skipped: ") || message.starts_with("config rejected: ")
        }
        Level::Error => false,
    }
}

/// An eval metrics line waiting for its prefix record.
struct Pending {
    report: EvalReport,
    since: Instant,
}

/// Reads a run directory as events, incrementally.
pub struct Tail {
    dir: PathBuf,
    run: RunDir,
    config: RunConfig,
    started: bool,
    metrics: Source,
    prefix: Source,
    samples: Source,
    log: Source,
    /// The last (state, step) given.
    state: Option<(RunState, usize)>,
    over: bool,
    total_steps: Option<usize>,
    /// What the log's latest started line says: (total steps, device, parameters).
    started_line: Option<(usize, String, usize)>,
    pending: Vec<Pending>,
    /// Prefix records read before their eval line, by step.
    prefixes: BTreeMap<usize, VecDeque<PrefixRecord>>,
    /// Evals given without diagnostics, given again if their prefix record turns up.
    bare: BTreeMap<usize, EvalReport>,
    checkpoints: BTreeSet<usize>,
    /// Unreadable records already reported, as (file, line).
    warned: HashSet<(&'static str, usize)>,
    /// The latest step seen in any record (the step of the reader's own messages).
    last_step: usize,
    /// Events of a poll that failed partway, given with the next one.
    carry: Vec<Event>,
}

impl Tail {
    /// Opens a run directory; fails when it has no config.toml, or one that cannot be read.
    pub fn open(run_dir: &Path) -> Result<Tail> {
        if !run_dir.join(CONFIG).is_file() {
            anyhow::bail!("{}: not a run directory (no {CONFIG})", run_dir.display());
        }
        let run = RunDir::open(run_dir)?;
        let config = run.read_config()?;
        Ok(Tail {
            dir: run_dir.to_path_buf(),
            config,
            started: false,
            metrics: Source::new(run_dir, METRICS),
            prefix: Source::new(run_dir, PREFIX),
            samples: Source::new(run_dir, SAMPLES),
            log: Source::new(run_dir, LOG),
            run,
            state: None,
            over: false,
            total_steps: None,
            started_line: None,
            pending: Vec::new(),
            prefixes: BTreeMap::new(),
            bare: BTreeMap::new(),
            checkpoints: BTreeSet::new(),
            warned: HashSet::new(),
            last_step: 0,
            carry: Vec::new(),
        })
    }

    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the run has ended (finished, stopped or failed), as of the last poll.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Events written since the last poll (all of them on the first poll).
    ///
    /// Order within one poll: `Started` (first poll only), `State` (when it changed), then
    /// metrics events in file order (evals held back from an earlier poll first), `Samples`,
    /// `Log`, `Checkpoint`. status.json is read first, so once a poll reports an ended run it
    /// has also given every record written before the end.
    pub fn poll(&mut self) -> Result<Vec<Event>> {
        let mut out = std::mem::take(&mut self.carry);
        match self.poll_into(&mut out) {
            Ok(()) => {
                if !self.started {
                    self.started = true;
                    out.insert(0, self.started_event());
                }
                Ok(out)
            }
            Err(e) => {
                self.carry = out;
                Err(e)
            }
        }
    }

    fn started_event(&self) -> Event {
        let line = self.started_line.as_ref();
        Event::Started {
            variant: self.config.variant.clone(),
            run_dir: self.dir.clone(),
            start_step: 0,
            total_steps: self
                .total_steps
                .or(line.map(|l| l.0))
                .unwrap_or(self.config.train.steps),
            device: line.map(|l| l.1.clone()).unwrap_or_default(),
            params: line.map_or(0, |l| l.2),
            config: Box::new(self.config.record()),
        }
    }

    fn poll_into(&mut self, out: &mut Vec<Event>) -> Result<()> {
        self.poll_status(out)?;
        self.poll_metrics(out)?;
        self.poll_samples(out)?;
        self.poll_log(out)?;
        self.poll_checkpoints(out);
        Ok(())
    }

    /// Reports an unreadable record once.
    fn warn_bad(&mut self, out: &mut Vec<Event>, file: &'static str, line: usize, err: &str) {
        if self.warned.insert((file, line)) {
            let path = self.dir.join(file);
            let at = if line > 0 {
                format!("{}:{line}", path.display())
            } else {
                path.display().to_string()
            };
            out.push(Event::Log {
                step: self.last_step,
                level: Level::Warn,
                message: format!("{at}: skipped an unreadable record ({err})"),
            });
        }
    }

    fn poll_status(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let path = self.dir.join(STATUS);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let status: Status = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                self.warn_bad(out, STATUS, 0, &e.to_string());
                return Ok(());
            }
        };
        self.over = status.state.is_over();
        self.total_steps = Some(status.total_steps);
        let now = (status.state, status.step);
        if self.state.as_ref() != Some(&now) {
            out.push(Event::State {
                step: now.1,
                state: now.0.clone(),
            });
            self.state = Some(now);
        }
        Ok(())
    }

    fn poll_metrics(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let mut metrics = self.metrics.read_new()?;
        if metrics.restarted {
            self.prefix.reset();
        }
        let prefix = self.prefix.read_new()?;
        if prefix.restarted && !metrics.restarted {
            // Evals and their prefix records are matched by step: both files start again.
            self.metrics.reset();
            metrics = self.metrics.read_new()?;
            metrics.restarted = true;
        }
        if metrics.restarted || prefix.restarted {
            self.pending.clear();
            self.prefixes.clear();
            self.bare.clear();
        }

        for (n, line) in prefix.lines {
            let parsed = serde_json::from_str::<Value>(&line)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    let step = v
                        .get("step")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| "no step".to_string())?;
                    let rec = PrefixRecord::deserialize(&v).map_err(|e| e.to_string())?;
                    Ok((step as usize, rec))
                });
            match parsed {
                Ok((step, rec)) => self.prefixes.entry(step).or_default().push_back(rec),
                Err(e) => self.warn_bad(out, PREFIX, n, &e),
            }
        }

        // Evals given without diagnostics whose prefix record came late.
        let late: Vec<usize> = self
            .bare
            .keys()
            .copied()
            .filter(|s| self.prefixes.contains_key(s))
            .collect();
        for step in late {
            if let (Some(mut r), Some(rec)) = (self.bare.remove(&step), self.take_prefix(step)) {
                rec.fill(&mut r);
                out.push(Event::Eval(Box::new(r)));
            }
        }

        // Evals held back on an earlier poll.
        for p in std::mem::take(&mut self.pending) {
            self.place_eval(out, p);
        }

        for (n, line) in metrics.lines {
            let v: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => {
                    self.warn_bad(out, METRICS, n, &e.to_string());
                    continue;
                }
            };
            let Some(obj) = v.as_object() else {
                self.warn_bad(out, METRICS, n, "not an object");
                continue;
            };
            let Some(step) = obj.get("step").and_then(Value::as_u64) else {
                self.warn_bad(out, METRICS, n, "no step");
                continue;
            };
            let step = step as usize;
            self.last_step = self.last_step.max(step);
            let time = obj.get("time").and_then(Value::as_f64).unwrap_or(0.0);
            let field = |k: &str| obj.get(k).and_then(Value::as_str);
            match (field("split"), field("event")) {
                (Some("train"), _) => out.push(Event::Step(StepMetrics {
                    step,
                    time,
                    metrics: numeric_fields(obj),
                })),
                (Some("eval"), _) => {
                    let report = EvalReport {
                        step,
                        time,
                        metrics: numeric_fields(obj),
                        prefix: PrefixCurve::default(),
                        token_diffs: Vec::new(),
                        entropy: Vec::new(),
                        cross_entropy: Vec::new(),
                    };
                    self.place_eval(
                        out,
                        Pending {
                            report,
                            since: Instant::now(),
                        },
                    );
                }
                (_, Some("skipped")) => out.push(Event::Skipped {
                    step,
                    reason: field("reason").unwrap_or_default().to_string(),
                }),
                (_, Some("applied")) => {
                    let changes = obj
                        .get("changes")
                        .cloned()
                        .map(serde_json::from_value::<Vec<Change>>)
                        .transpose();
                    let ignored = obj
                        .get("ignored")
                        .cloned()
                        .map(serde_json::from_value::<Vec<String>>)
                        .transpose();
                    match (changes, ignored) {
                        (Ok(changes), Ok(ignored)) => out.push(Event::Applied {
                            step,
                            changes: changes.unwrap_or_default(),
                            ignored: ignored.unwrap_or_default(),
                        }),
                        (Err(e), _) | (_, Err(e)) => self.warn_bad(out, METRICS, n, &e.to_string()),
                    }
                }
                (_, Some("config_rejected")) => out.push(Event::ConfigRejected {
                    step,
                    error: field("error").unwrap_or_default().to_string(),
                }),
                // Records of a kind this version does not know.
                _ => {}
            }
        }
        Ok(())
    }

    fn take_prefix(&mut self, step: usize) -> Option<PrefixRecord> {
        let q = self.prefixes.get_mut(&step)?;
        let rec = q.pop_front();
        if q.is_empty() {
            self.prefixes.remove(&step);
        }
        rec
    }

    /// Gives an eval with its prefix record, or without one when the run is over or it waited
    /// long enough, or holds it back.
    fn place_eval(&mut self, out: &mut Vec<Event>, mut p: Pending) {
        if let Some(rec) = self.take_prefix(p.report.step) {
            rec.fill(&mut p.report);
            out.push(Event::Eval(Box::new(p.report)));
        } else if self.over || p.since.elapsed() >= PREFIX_WAIT {
            self.bare.insert(p.report.step, p.report.clone());
            out.push(Event::Eval(Box::new(p.report)));
        } else {
            self.pending.push(p);
        }
    }

    /// Gives every held-back eval, without diagnostics.
    fn flush(&mut self, out: &mut Vec<Event>) {
        for p in std::mem::take(&mut self.pending) {
            self.bare.insert(p.report.step, p.report.clone());
            out.push(Event::Eval(Box::new(p.report)));
        }
    }

    fn poll_samples(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let chunk = self.samples.read_new()?;
        let mut group: Option<(usize, Vec<Sample>)> = None;
        for (n, line) in chunk.lines {
            match serde_json::from_str::<Sample>(&line) {
                Ok(s) => {
                    self.last_step = self.last_step.max(s.step);
                    match &mut group {
                        Some((step, v)) if *step == s.step => v.push(s),
                        _ => {
                            if let Some((step, samples)) = group.take() {
                                out.push(Event::Samples { step, samples });
                            }
                            group = Some((s.step, vec![s]));
                        }
                    }
                }
                Err(e) => self.warn_bad(out, SAMPLES, n, &e.to_string()),
            }
        }
        if let Some((step, samples)) = group {
            out.push(Event::Samples { step, samples });
        }
        Ok(())
    }

    fn poll_log(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let chunk = self.log.read_new()?;
        let mut step = self.last_step;
        for (_, line) in chunk.lines {
            match parse_log_line(&line) {
                Some((s, level, message)) => {
                    step = s;
                    if let Some(started) = parse_started(message).filter(|_| level == Level::Info) {
                        self.started_line = Some(started);
                    }
                    if !is_echo(level, message) {
                        out.push(Event::Log {
                            step,
                            level,
                            message: message.to_string(),
                        });
                    }
                }
                None => out.push(Event::Log {
                    step,
                    level: Level::Info,
                    message: line,
                }),
            }
        }
        Ok(())
    }

    fn poll_checkpoints(&mut self, out: &mut Vec<Event>) {
        for (step, path) in self.run.list_checkpoints() {
            if self.checkpoints.insert(step) {
                out.push(Event::Checkpoint { step, path });
            }
        }
    }
}

/// Every event of a run directory as it is now (an eval whose prefix record is missing is
/// given without diagnostics).
pub fn replay(run_dir: &Path) -> Result<Vec<Event>> {
    let mut tail = Tail::open(run_dir)?;
    let mut events = tail.poll()?;
    tail.flush(&mut events);
    Ok(events)
}

struct Followed {
    dir: PathBuf,
    tail: Option<Tail>,
    last_error: Option<String>,
    next: Instant,
}

/// Follows several run directories on a thread, sending (index of the run, event) every
/// `interval` (runs that have ended, less often) until `stop` is set or the receiver is gone
/// (noticed at the next send). A run that cannot be read (not yet a run directory, an I/O
/// error) is reported as an error `Log` for that run, once per distinct error, and tried
/// again.
pub fn follow(
    runs: Vec<PathBuf>,
    interval: Duration,
    tx: Sender<(usize, Event)>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("gaplab-follow".into())
        .spawn(move || {
            let start = Instant::now();
            let mut runs: Vec<Followed> = runs
                .into_iter()
                .map(|dir| Followed {
                    dir,
                    tail: None,
                    last_error: None,
                    next: start,
                })
                .collect();
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                for (i, f) in runs.iter_mut().enumerate() {
                    if now < f.next {
                        continue;
                    }
                    let polled = match &mut f.tail {
                        Some(t) => t.poll(),
                        None => Tail::open(&f.dir).and_then(|t| f.tail.insert(t).poll()),
                    };
                    match polled {
                        Ok(events) => {
                            f.last_error = None;
                            for ev in events {
                                if tx.send((i, ev)).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let message = format!("{e:#}");
                            if f.last_error.as_deref() != Some(message.as_str()) {
                                f.last_error = Some(message.clone());
                                let step = f.tail.as_ref().map_or(0, |t| t.last_step);
                                let ev = Event::Log {
                                    step,
                                    level: Level::Error,
                                    message,
                                };
                                if tx.send((i, ev)).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let over = f.tail.as_ref().is_some_and(Tail::is_over);
                    f.next = now
                        + if over {
                            interval.max(OVER_INTERVAL)
                        } else {
                            interval
                        };
                }
                let wake = runs.iter().map(|f| f.next).min().unwrap_or(now + interval);
                // Sleep in short slices so that `stop` is noticed quickly.
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now >= wake {
                        break;
                    }
                    std::thread::sleep((wake - now).min(Duration::from_millis(20)));
                }
            }
        })
        .expect("cannot start the run follower thread")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runlog::{write_atomic, Writer, TRAINER_STATE};
    use std::io::Write;

    fn config(variant_dir: &Path) -> RunConfig {
        let text = "[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n";
        crate::config::Workspace::parse(variant_dir, &variant_dir.join("gaplab.toml"), text)
            .unwrap()
            .run_config("dpo")
            .unwrap()
    }

    fn new_run(root: &Path, name: &str) -> RunDir {
        let run = RunDir::create(root, name).unwrap();
        run.write_config(&config(root)).unwrap();
        run
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn steps(events: &[Event]) -> Vec<usize> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Step(m) => Some(m.step),
                _ => None,
            })
            .collect()
    }

    fn sample(step: usize, prompt_id: usize, source: &str) -> Sample {
        Sample {
            step,
            prompt_id,
            prompt: format!("prompt {prompt_id}"),
            source: source.into(),
            text: "a b".into(),
            token_ids: vec![1, 2],
            pieces: vec!["a".into(), " b".into()],
        }
    }

    #[test]
    fn replays_what_the_writer_wrote() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let run = RunDir::create(tmp.path(), "dpo").unwrap();
        run.write_config(&cfg).unwrap();
        let mut w = Writer::new(&run, "dpo", 3).unwrap();
        let step = |s: usize| StepMetrics {
            step: s,
            time: 100.0 + s as f64 * 0.5,
            metrics: [
                ("loss".to_string(), 0.75 / s as f64),
                ("rewards/margins".into(), 0.125),
            ]
            .into_iter()
            .collect(),
        };
        let eval = EvalReport {
            step: 2,
            time: 101.25,
            metrics: [
                ("eval_loss".to_string(), 0.5),
                ("eval_rewards/accuracies".into(), 0.75),
            ]
            .into_iter()
            .collect(),
            prefix: PrefixCurve {
                j: vec![1, 2, 4],
                margin: vec![0.5, 0.25, -0.125],
                accuracy: vec![1.0, 0.5, 0.0],
                pairs: vec![4, 4, 2],
            },
            token_diffs: vec![TokenDiffRow {
                pair: 0,
                values: vec![0.5, -1.5],
            }],
            entropy: vec![2.5, 2.0],
            cross_entropy: vec![3.5, 3.0],
        };
        let samples = vec![sample(2, 0, "policy"), sample(2, 0, "reference")];
        let skipped = Event::Skipped {
            step: 3,
            reason: "loss NaN or gradient not finite".into(),
        };
        let applied = Event::Applied {
            step: 3,
            changes: vec![Change {
                field: "train.beta".into(),
                old: "0.1".into(),
                new: "0.2".into(),
            }],
            ignored: vec!["train.batch_size".into()],
        };
        let rejected = Event::ConfigRejected {
            step: 3,
            error: "ws/gaplab.toml:3:8: train.beta: expected a number > 0, got -1".into(),
        };
        let log = Event::Log {
            step: 2,
            level: Level::Warn,
            message: "3 pairs were cut to fit data.max_len".into(),
        };
        let ckpt = run
            .write_checkpoint(3, 2, |p| Ok(std::fs::write(p.join(TRAINER_STATE), "{}")?))
            .unwrap();
        let sent = vec![
            Event::Started {
                variant: "dpo".into(),
                run_dir: run.path.clone(),
                start_step: 0,
                total_steps: 3,
                device: "cuda:0 bf16".into(),
                params: 1234,
                config: Box::new(cfg.record()),
            },
            Event::State {
                step: 0,
                state: RunState::Running,
            },
            Event::Step(step(1)),
            Event::Step(step(2)),
            Event::Eval(Box::new(eval.clone())),
            Event::Samples {
                step: 2,
                samples: samples.clone(),
            },
            log.clone(),
            skipped.clone(),
            applied.clone(),
            rejected.clone(),
            Event::Step(step(3)),
            Event::Checkpoint {
                step: 3,
                path: ckpt.clone(),
            },
            Event::State {
                step: 3,
                state: RunState::Finished,
            },
        ];
        for ev in &sent {
            w.write(ev).unwrap();
        }
        // A checkpoint folder still being written is not a checkpoint.
        std::fs::create_dir_all(run.checkpoints().join(".tmp-step-4")).unwrap();

        let got = replay(&run.path).unwrap();
        match &got[0] {
            Event::Started {
                variant,
                run_dir,
                start_step,
                total_steps,
                device,
                params,
                config,
            } => {
                assert_eq!(variant, "dpo");
                assert_eq!(run_dir, &run.path);
                assert_eq!((*start_step, *total_steps), (0, 3));
                assert_eq!((device.as_str(), *params), ("cuda:0 bf16", 1234));
                assert_eq!(**config, cfg.record());
            }
            e => panic!("expected Started first, got {e:?}"),
        }
        assert_eq!(
            got[1],
            Event::State {
                step: 3,
                state: RunState::Finished
            }
        );
        let of_kind = |events: &[Event], kind: fn(&Event) -> bool| -> Vec<Event> {
            events.iter().filter(|e| kind(e)).cloned().collect()
        };
        let kinds: [fn(&Event) -> bool; 8] = [
            |e| matches!(e, Event::ConfigRejected { .. }),
            |e| matches!(e, Event::Step(_)),
            |e| matches!(e, Event::Eval(_)),
            |e| matches!(e, Event::Samples { .. }),
            |e| matches!(e, Event::Skipped { .. }),
            |e| matches!(e, Event::Applied { .. }),
            |e| matches!(e, Event::Checkpoint { .. }),
            |e| matches!(e, Event::Log { .. }),
        ];
        for kind in kinds {
            assert_eq!(of_kind(&got, kind), of_kind(&sent, kind));
        }
        // Both states were written, status.json keeps the latest.
        assert_eq!(got.len(), sent.len() - 1);
        assert!(got
            .iter()
            .all(|e| !matches!(e, Event::State { step: 0, .. })));
    }

    #[test]
    fn polls_only_complete_new_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let run = new_run(tmp.path(), "v");
        let m = run.file(METRICS);
        append(
            &m,
            "{\"step\":1,\"time\":1.0,\"split\":\"train\",\"loss\":0.5}\n\
             {\"step\":2,\"time\":2.0,\"split\":\"train\",\"loss\":0.25}\n",
        );
        let mut tail = Tail::open(&run.path).unwrap();
        let first = tail.poll().unwrap();
        assert!(matches!(first[0], Event::Started { total_steps: 0, .. }));
        assert_eq!(steps(&first), vec![1, 2]);
        assert!(!tail.is_over());

        append(
            &m,
            "{\"step\":3,\"time\":3.0,\"split\":\"train\",\"loss\":0.125}\n{\"step\":4,\"ti",
        );
        let second = tail.poll().unwrap();
        assert_eq!(second.len(), 1);
        match &second[0] {
            Event::Step(s) => {
                assert_eq!(s.step, 3);
                assert_eq!(s.time, 3.0);
                assert_eq!(
                    s.metrics,
                    [("loss".to_string(), 0.125)].into_iter().collect()
                );
            }
            e => panic!("expected a step, got {e:?}"),
        }
        assert!(tail.poll().unwrap().is_empty());
        append(&m, "me\":4.0,\"split\":\"train\",\"loss\":null}\n");
        let third = tail.poll().unwrap();
        assert_eq!(steps(&third), vec![4]);
        let Event::Step(s) = &third[0] else {
            unreachable!()
        };
        assert!(s.metrics["loss"].is_nan());

        // Status changes give one State each.
        let status = |state: RunState, step: usize| Status {
            variant: "dpo".into(),
            step,
            total_steps: 10,
            state,
            pid: 1,
            time: 0.0,
        };
        run.write_status(&status(RunState::Running, 4)).unwrap();
        assert_eq!(
            tail.poll().unwrap(),
            vec![Event::State {
                step: 4,
                state: RunState::Running
            }]
        );
        assert!(tail.poll().unwrap().is_empty());
        run.write_status(&status(RunState::Stopped, 4)).unwrap();
        assert_eq!(tail.poll().unwrap().len(), 1);
        assert!(tail.is_over());
    }

    #[test]
    fn an_eval_waits_for_its_prefix_record() {
        let tmp = tempfile::tempdir().unwrap();
        let run = new_run(tmp.path(), "v");
        append(
            &run.file(METRICS),
            "{\"step\":5,\"time\":1.0,\"split\":\"eval\",\"eval_loss\":0.5}\n",
        );
        let mut tail = Tail::open(&run.path).unwrap();
        let first = tail.poll().unwrap();
        assert!(first.iter().all(|e| !matches!(e, Event::Eval(_))));
        append(
            &run.file(PREFIX),
            "{\"step\":5,\"time\":1.0,\"prefix\":{\"j\":[1,2],\"margin\":[0.5,null],\
             \"accuracy\":[1.0,0.5],\"pairs\":[2,1]},\"entropy\":[1.5]}\n",
        );
        let second = tail.poll().unwrap();
        assert_eq!(second.len(), 1);
        let Event::Eval(r) = &second[0] else {
            panic!("expected an eval, got {:?}", second[0])
        };
        assert_eq!(r.step, 5);
        assert_eq!(r.metrics["eval_loss"], 0.5);
        assert_eq!(r.prefix.j, vec![1, 2]);
        assert!(r.prefix.margin[1].is_nan());
        assert_eq!(r.entropy, vec![1.5]);
        assert!(r.token_diffs.is_empty() && r.cross_entropy.is_empty());

        // Once the run is over an eval without its prefix record is given bare, and again in
        // full if the record turns up later.
        append(
            &run.file(METRICS),
            "{\"step\":6,\"time\":2.0,\"split\":\"eval\",\"eval_loss\":0.25}\n",
        );
        run.write_status(&Status {
            variant: "dpo".into(),
            step: 6,
            total_steps: 6,
            state: RunState::Failed("killed".into()),
            pid: 1,
            time: 0.0,
        })
        .unwrap();
        let third = tail.poll().unwrap();
        let evals: Vec<&EvalReport> = third
            .iter()
            .filter_map(|e| match e {
                Event::Eval(r) => Some(&**r),
                _ => None,
            })
            .collect();
        assert_eq!(evals.len(), 1);
        assert_eq!(evals[0].step, 6);
        assert!(evals[0].prefix.j.is_empty());
        append(&run.file(PREFIX), "{\"step\":6,\"prefix\":{\"j\":[1]}}\n");
        let fourth = tail.poll().unwrap();
        assert!(
            matches!(&fourth[..], [Event::Eval(r)] if r.step == 6 && r.prefix.j == vec![1]
                && r.metrics["eval_loss"] == 0.25)
        );
    }

    #[test]
    fn a_shorter_file_is_read_again() {
        let tmp = tempfile::tempdir().unwrap();
        let run = new_run(tmp.path(), "v");
        let line = |s: usize| format!("{{\"step\":{s},\"time\":0.0,\"split\":\"train\"}}\n");
        std::fs::write(run.file(METRICS), line(1) + &line(2) + &line(3)).unwrap();
        let mut tail = Tail::open(&run.path).unwrap();
        assert_eq!(steps(&tail.poll().unwrap()), vec![1, 2, 3]);
        // Truncated in place.
        std::fs::write(run.file(METRICS), line(1)).unwrap();
        assert_eq!(steps(&tail.poll().unwrap()), vec![1]);
        append(&run.file(METRICS), &line(2));
        assert_eq!(steps(&tail.poll().unwrap()), vec![2]);
        // Replaced through a rename (as a resumed run does) and already longer again.
        write_atomic(
            &run.file(METRICS),
            (line(1) + &line(2) + &line(7) + &line(8)).as_bytes(),
        )
        .unwrap();
        let again = steps(&tail.poll().unwrap());
        if cfg!(unix) {
            assert_eq!(again, vec![1, 2, 7, 8]);
        }
        // The samples file too.
        std::fs::write(
            run.file(SAMPLES),
            serde_json::to_string(&sample(1, 0, "policy")).unwrap() + "\n",
        )
        .unwrap();
        assert_eq!(tail.poll().unwrap().len(), 1);
        std::fs::write(run.file(SAMPLES), "").unwrap();
        assert!(tail.poll().unwrap().is_empty());
    }

    #[test]
    fn unreadable_lines_are_reported_once() {
        let tmp = tempfile::tempdir().unwrap();
        let run = new_run(tmp.path(), "v");
        append(
            &run.file(METRICS),
            "{\"step\":1,\"time\":0.0,\"split\":\"train\"}\n{not json\n\
             {\"step\":2,\"time\":0.0,\"split\":\"train\"}\n",
        );
        append(
            &run.file(LOG),
            "20260101-000000 step 1 warn: low memory\nplain text\n\
             20260101-000001 step 1 info: state {\"state\":\"running\"}\n",
        );
        let mut tail = Tail::open(&run.path).unwrap();
        let events = tail.poll().unwrap();
        assert_eq!(steps(&events), vec![1, 2]);
        let logs: Vec<(usize, Level, String)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Log {
                    step,
                    level,
                    message,
                } => Some((*step, *level, message.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(logs.len(), 3, "{logs:?}");
        assert_eq!(logs[0].1, Level::Warn);
        assert!(logs[0].2.contains("metrics.jsonl:2"), "{}", logs[0].2);
        assert_eq!(logs[1], (1, Level::Warn, "low memory".into()));
        assert_eq!(logs[2], (1, Level::Info, "plain text".into()));
        append(
            &run.file(METRICS),
            "{\"step\":3,\"time\":0.0,\"split\":\"train\"}\n",
        );
        let events = tail.poll().unwrap();
        assert_eq!(steps(&events), vec![3]);
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn samples_of_a_step_are_grouped() {
        let tmp = tempfile::tempdir().unwrap();
        let run = new_run(tmp.path(), "v");
        let line = |s: Sample| serde_json::to_string(&s).unwrap() + "\n";
        append(
            &run.file(SAMPLES),
            &(line(sample(0, 0, "policy"))
                + &line(sample(0, 1, "policy"))
                + &line(sample(5, 0, "policy"))),
        );
        let mut tail = Tail::open(&run.path).unwrap();
        let groups: Vec<(usize, usize)> = tail
            .poll()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Samples { step, samples } => Some((*step, samples.len())),
                _ => None,
            })
            .collect();
        assert_eq!(groups, vec![(0, 2), (5, 1)]);
        append(&run.file(SAMPLES), &line(sample(5, 1, "policy")));
        assert!(matches!(&tail.poll().unwrap()[..],
            [Event::Samples { step: 5, samples }] if samples[0].prompt_id == 1));
    }

    #[test]
    fn not_a_run_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Tail::open(tmp.path()).err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "{}: not a run directory (no config.toml)",
                tmp.path().display()
            )
        );
    }

    #[test]
    fn follows_several_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let a = new_run(tmp.path(), "a");
        let b = new_run(tmp.path(), "b");
        let missing = tmp.path().join("missing");
        let line = |s: usize| format!("{{\"step\":{s},\"time\":0.0,\"split\":\"train\"}}\n");
        append(&a.file(METRICS), &line(1));
        append(&b.file(METRICS), &line(10));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = follow(
            vec![a.path.clone(), b.path.clone(), missing.clone()],
            Duration::from_millis(10),
            tx,
            stop.clone(),
        );
        let mut seen: Vec<(usize, usize)> = Vec::new();
        let mut errors = Vec::new();
        let mut started = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut appended = false;
        while seen.len() < 4 && Instant::now() < deadline {
            let Ok((i, ev)) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            match ev {
                Event::Step(m) => seen.push((i, m.step)),
                Event::Started { run_dir, .. } => started.push((i, run_dir)),
                Event::Log {
                    level: Level::Error,
                    message,
                    ..
                } => errors.push((i, message)),
                _ => {}
            }
            if seen.len() == 2 && !appended {
                appended = true;
                append(&a.file(METRICS), &line(2));
                append(&b.file(METRICS), &line(11));
            }
        }
        // The missing run keeps failing the same way: reported once.
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap();
        errors.extend(rx.try_iter().filter_map(|(i, e)| match e {
            Event::Log {
                level: Level::Error,
                message,
                ..
            } => Some((i, message)),
            _ => None,
        }));
        seen.sort();
        assert_eq!(seen, vec![(0, 1), (0, 2), (1, 10), (1, 11)]);
        started.sort();
        assert_eq!(started, vec![(0, a.path.clone()), (1, b.path.clone())]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, 2);
        assert!(errors[0].1.contains("not a run directory"));
    }
}
