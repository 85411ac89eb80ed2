//! Reading a run directory written before events.jsonl existed: its events are rebuilt from
//! the files kept for users' scripts and from the prose of its log.
//!
//! What each file gives:
//! - `status.json`: `State` whenever (state, step) changes.
//! - `metrics.jsonl`: `Step`, `Eval` (joined with the `prefix.jsonl` record of its step),
//!   `Skipped`, `Applied`, `ConfigRejected`.
//! - `samples.jsonl`: `Samples`, one per run of consecutive lines with the same step.
//! - `log.txt`: `Log`, except the lines that version's writer added on behalf of other events
//!   (started, state, skipped, checkpoint, config applied or rejected), which come back as
//!   those events instead.
//! - `checkpoints/step-N` with a `trainer_state.json`: `Checkpoint`, once each, in step order.
//!
//! The log's sentences are read in that version's wording, which this one no longer writes
//! (see [`Event::describe`]): keep them as they are.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::lines::{unreadable, Source};
use super::{RunDir, Status, LOG, METRICS, PREFIX, SAMPLES, STATUS};
use crate::config::RunConfig;
use crate::event::{
    Change, EvalReport, Event, Level, PrefixCurve, RunState, Sample, StepMetrics, TokenDiffRow,
};

/// How long an eval waits for its prefix record before it is given without diagnostics.
const PREFIX_WAIT: Duration = Duration::from_secs(2);

/// Whether a run directory has files of an earlier version's writer.
pub(super) fn written(dir: &Path) -> bool {
    [METRICS, LOG, STATUS, SAMPLES, PREFIX]
        .iter()
        .any(|f| dir.join(f).exists())
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
    #[serde(deserialize_with = "nan_vec")]
    kl_profile: Vec<f64>,
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
        r.kl_profile = self.kl_profile;
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

/// Reads a run directory of an earlier version as events, incrementally.
pub(super) struct Legacy {
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

impl Legacy {
    pub(super) fn new(run_dir: &Path, config: RunConfig) -> Result<Legacy> {
        let run = RunDir::open(run_dir)?;
        Ok(Legacy {
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

    /// Whether the run has ended (finished, stopped or failed), as of the last poll.
    pub(super) fn is_over(&self) -> bool {
        self.over
    }

    pub(super) fn last_step(&self) -> usize {
        self.last_step
    }

    /// Events written since the last poll (all of them on the first poll).
    ///
    /// Order within one poll: `Started` (first poll only), `State` (when it changed), then
    /// metrics events in file order (evals held back from an earlier poll first), `Samples`,
    /// `Log`, `Checkpoint`. status.json is read first, so once a poll reports an ended run it
    /// has also given every record written before the end.
    pub(super) fn poll(&mut self) -> Result<Vec<Event>> {
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
            lora: None,
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
            out.push(unreadable(&self.dir.join(file), line, err, self.last_step));
        }
    }

    fn poll_status(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let path = self.dir.join(STATUS);
        // Bytes, not text: a status.json that is not UTF-8 is an unreadable record like any
        // other, not a run directory that cannot be read.
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let status: Status = match serde_json::from_slice(&bytes) {
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
                        kl_profile: Vec::new(),
                        token_view: Vec::new(),
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
    pub(super) fn flush(&mut self, out: &mut Vec<Event>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runlog::tail::Tail;
    use crate::runlog::testutil::{append, new_run, sample, steps};
    use crate::runlog::{write_atomic, Status};

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
    fn a_status_json_that_is_not_utf8_is_skipped_with_a_warning() {
        // Found by tests/fuzz: one byte 0x80 in status.json made the whole run unreadable.
        let tmp = tempfile::tempdir().unwrap();
        let run = new_run(tmp.path(), "v");
        append(
            &run.file(METRICS),
            "{\"step\":1,\"time\":0.0,\"split\":\"train\"}\n",
        );
        std::fs::write(run.file(STATUS), b"\x80{}").unwrap();
        let events = Tail::open(&run.path).unwrap().poll().unwrap();
        assert_eq!(steps(&events), vec![1]);
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Log { level: Level::Warn, message, .. } if message.contains("status.json: skipped")
        )));
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
}
