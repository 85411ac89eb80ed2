//! Reading a run directory back as the [`Event`]s its engine sent, incrementally, so that a
//! viewer cannot tell a live engine from a run directory (finished, or still being written by
//! another process).
//!
//! A run directory of this version is read from its `events.jsonl` alone, one record a line
//! ([`Event::from_record`]), in the order the engine sent them. One written before that file
//! existed is rebuilt from its other files and its log's prose (the `legacy` module); a run of
//! that kind that this version resumed has its events.jsonl, holding its earlier history too,
//! and is read from it from then on.
//!
//! Each file is read from a remembered byte offset: only complete lines (ending in `\n`) are
//! consumed, a partial last line (still being written, or torn by a killed process) is read
//! again on the next poll. A file that became shorter, or was replaced (a resumed run rewrites
//! its records through a rename), is read again from its beginning; viewers overwrite records
//! by step, so the repeated events are harmless. A line that cannot be read is reported once, as
//! a warning `Log`, and skipped.
//!
//! A folder without config.toml that holds a Hugging Face Trainer's trainer_state.json (a TRL
//! run) is read as a finished run ([`super::trl`]): all its events on the first poll.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::legacy::{self, Legacy};
use super::lines::{unreadable, Source};
use super::{RunDir, CONFIG, EVENTS};
use crate::config::RunConfig;
use crate::event::{Event, Level, RecordError};

/// How often [`follow`] looks at a run that has ended (at least; it may be resumed later).
const OVER_INTERVAL: Duration = Duration::from_secs(2);

/// The `Started` a viewer needs before anything else of a run, made from its config when the
/// run has none of its own (it failed before it started).
pub(super) fn started_from_config(dir: &Path, config: &RunConfig) -> Event {
    Event::Started {
        variant: config.variant.clone(),
        run_dir: dir.to_path_buf(),
        start_step: 0,
        total_steps: config.train.steps,
        device: String::new(),
        params: 0,
        lora: None,
        config: Box::new(config.record()),
    }
}

/// Reads events.jsonl.
struct Records {
    source: Source,
    /// Whether a `Started` was given since the file was (re)read from its beginning.
    started: bool,
    over: bool,
    last_step: usize,
    /// Unreadable lines already reported (0: records of a newer format).
    warned: HashSet<usize>,
}

impl Records {
    fn new(dir: &Path) -> Self {
        Self {
            source: Source::new(dir, EVENTS),
            started: false,
            over: false,
            last_step: 0,
            warned: HashSet::new(),
        }
    }

    fn poll(&mut self, dir: &Path, config: &RunConfig) -> Result<Vec<Event>> {
        let chunk = self.source.read_new()?;
        if chunk.restarted {
            self.started = false;
        }
        let mut out = Vec::new();
        for (n, line) in chunk.lines {
            match Event::from_record(&line) {
                Ok(ev) => {
                    if !self.started && !matches!(ev, Event::Started { .. }) {
                        out.push(started_from_config(dir, config));
                    }
                    self.started = true;
                    if let Event::State { state, .. } = &ev {
                        self.over = state.is_over();
                    }
                    self.last_step = self.last_step.max(ev.step());
                    out.push(ev);
                }
                Err(e) => {
                    // One warning for a whole file of a newer gaplab, one per other bad line.
                    let key = if matches!(e, RecordError::Newer(_)) {
                        0
                    } else {
                        n
                    };
                    if self.warned.insert(key) {
                        out.push(unreadable(
                            &dir.join(EVENTS),
                            n,
                            &e.to_string(),
                            self.last_step,
                        ));
                    }
                }
            }
        }
        Ok(out)
    }
}

enum Reader {
    /// Nothing written yet (a run directory being set up).
    Empty,
    Records(Records),
    Legacy(Box<Legacy>),
}

/// A Trainer output folder, read when opened: its events until the first poll takes them.
struct Trainer {
    events: Vec<Event>,
    last_step: usize,
}

/// What a [`Tail`] reads.
enum Kind {
    Run {
        config: Box<RunConfig>,
        reader: Reader,
    },
    Trainer(Trainer),
}

/// Reads a run directory as events, incrementally.
pub struct Tail {
    dir: PathBuf,
    kind: Kind,
}

impl Tail {
    /// Opens a run directory, or a Trainer output folder (whose trainer_state.json is read
    /// now); fails when it is neither, or its config.toml or trainer_state.json cannot be read.
    pub fn open(run_dir: &Path) -> Result<Tail> {
        if super::trl::is_trainer_folder(run_dir) {
            let events = super::trl::events(run_dir)?;
            let last_step = events.iter().map(Event::step).max().unwrap_or(0);
            return Ok(Tail {
                dir: run_dir.to_path_buf(),
                kind: Kind::Trainer(Trainer { events, last_step }),
            });
        }
        if !run_dir.join(CONFIG).is_file() {
            anyhow::bail!(
                "{}: not a run directory (no {CONFIG}) nor a Trainer output folder (no {})",
                run_dir.display(),
                super::TRAINER_STATE
            );
        }
        let config = RunDir::open(run_dir)?.read_config()?;
        Ok(Tail {
            dir: run_dir.to_path_buf(),
            kind: Kind::Run {
                config: Box::new(config),
                reader: Reader::Empty,
            },
        })
    }

    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the run has ended (finished, stopped or failed), as of the last poll.
    pub fn is_over(&self) -> bool {
        match &self.kind {
            Kind::Trainer(t) => t.events.is_empty(),
            Kind::Run { reader, .. } => match reader {
                Reader::Empty => false,
                Reader::Records(r) => r.over,
                Reader::Legacy(r) => r.is_over(),
            },
        }
    }

    /// The latest step seen (the step of the reader's own messages).
    pub fn last_step(&self) -> usize {
        match &self.kind {
            Kind::Trainer(t) => t.last_step,
            Kind::Run { reader, .. } => match reader {
                Reader::Empty => 0,
                Reader::Records(r) => r.last_step,
                Reader::Legacy(r) => r.last_step(),
            },
        }
    }

    /// Events written since the last poll (all of them on the first poll that finds any), a
    /// `Started` first. From events.jsonl they come in the order they were sent; for the order
    /// of an earlier version's run directory see the `legacy` module.
    pub fn poll(&mut self) -> Result<Vec<Event>> {
        let (config, reader) = match &mut self.kind {
            Kind::Trainer(t) => return Ok(std::mem::take(&mut t.events)),
            Kind::Run { config, reader } => (config, reader),
        };
        // Without this a vanished events.jsonl reads as a run started over, and a viewer would
        // drop what it has.
        if !self.dir.join(CONFIG).is_file() {
            anyhow::bail!(
                "{}: the run directory was removed or moved; showing what was read before",
                self.dir.display()
            );
        }
        let records = self.dir.join(EVENTS).exists();
        match reader {
            Reader::Records(_) => {}
            // An earlier version's run resumed by this one: its events.jsonl begins with what
            // came before.
            _ if records => *reader = Reader::Records(Records::new(&self.dir)),
            Reader::Empty if legacy::written(&self.dir) => {
                let legacy = Legacy::new(&self.dir, (**config).clone())?;
                *reader = Reader::Legacy(Box::new(legacy));
            }
            _ => {}
        }
        match reader {
            Reader::Empty => Ok(Vec::new()),
            Reader::Records(r) => r.poll(&self.dir, config),
            Reader::Legacy(r) => r.poll(),
        }
    }
}

/// Every event of a run directory as it is now (in an earlier version's run directory, an eval
/// whose prefix record is missing is given without diagnostics).
pub fn replay(run_dir: &Path) -> Result<Vec<Event>> {
    let mut tail = Tail::open(run_dir)?;
    let mut events = tail.poll()?;
    if let Kind::Run {
        reader: Reader::Legacy(r),
        ..
    } = &mut tail.kind
    {
        r.flush(&mut events);
    }
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
                                let step = f.tail.as_ref().map_or(0, Tail::last_step);
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
    use crate::event::{Change, EvalReport, PrefixCurve, RunState, StepMetrics, TokenDiffRow};
    use crate::runlog::testutil::{append, config, new_run, sample, steps};
    use crate::runlog::{Writer, METRICS, TRAINER_STATE};

    fn step(s: usize) -> StepMetrics {
        StepMetrics {
            step: s,
            time: 100.0 + s as f64 * 0.5,
            metrics: [
                ("loss".to_string(), 0.75 / s as f64),
                ("rewards/margins".into(), 0.125),
            ]
            .into_iter()
            .collect(),
        }
    }

    /// Everything a run sends, of every kind, in the order an engine sends it.
    fn a_run(run: &RunDir, cfg: &RunConfig) -> Vec<Event> {
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
            kl_profile: vec![],
            token_view: vec![],
        };
        let ckpt = run
            .write_checkpoint(3, 2, |p| Ok(std::fs::write(p.join(TRAINER_STATE), "{}")?))
            .unwrap();
        vec![
            Event::Started {
                variant: "dpo".into(),
                run_dir: run.path.clone(),
                start_step: 0,
                total_steps: 3,
                device: "cuda:0 bf16".into(),
                params: 1234,
                lora: None,
                config: Box::new(cfg.record()),
            },
            Event::State {
                step: 0,
                state: RunState::Running,
            },
            Event::Log {
                step: 0,
                level: Level::Info,
                message: "memory estimate on cuda:0: 1 GiB".into(),
            },
            Event::Step(step(1)),
            Event::State {
                step: 1,
                state: RunState::Paused,
            },
            Event::Step(step(2)),
            Event::Eval(Box::new(eval)),
            Event::Samples {
                step: 2,
                samples: vec![sample(2, 0, "policy"), sample(2, 0, "reference")],
            },
            Event::Log {
                step: 2,
                level: Level::Warn,
                message: "3 pairs were cut to fit data.max_len".into(),
            },
            Event::Skipped {
                step: 3,
                reason: "loss NaN or gradient not finite".into(),
            },
            Event::Applied {
                step: 3,
                changes: vec![Change {
                    field: "train.beta".into(),
                    old: "0.1".into(),
                    new: "0.2".into(),
                }],
                ignored: vec!["train.batch_size".into()],
            },
            Event::ConfigRejected {
                step: 3,
                error: "ws/gaplab.toml:3:8: train.beta: expected a number > 0, got -1".into(),
            },
            Event::Step(step(3)),
            Event::Checkpoint {
                step: 3,
                path: ckpt,
            },
            Event::State {
                step: 3,
                state: RunState::Finished,
            },
        ]
    }

    #[test]
    fn replays_what_the_writer_wrote() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let run = RunDir::create(tmp.path(), "dpo").unwrap();
        run.write_config(&cfg).unwrap();
        let mut w = Writer::new(&run, "dpo", 3).unwrap();
        let sent = a_run(&run, &cfg);
        for ev in &sent {
            w.write(ev).unwrap();
        }
        // A checkpoint folder still being written is not announced.
        std::fs::create_dir_all(run.checkpoints().join(".tmp-step-4")).unwrap();
        assert_eq!(replay(&run.path).unwrap(), sent);

        // Read as it is written, in any pieces, it is the same.
        let tmp2 = tempfile::tempdir().unwrap();
        let run2 = new_run(tmp2.path(), "dpo");
        let mut w = Writer::new(&run2, "dpo", 3).unwrap();
        let mut tail = Tail::open(&run2.path).unwrap();
        let mut got = Vec::new();
        for (i, ev) in sent.iter().enumerate() {
            w.write(ev).unwrap();
            if i % 3 == 0 {
                got.extend(tail.poll().unwrap());
            }
            assert!(!tail.is_over());
        }
        got.extend(tail.poll().unwrap());
        assert_eq!(got, sent);
        assert!(tail.is_over());
        assert_eq!(tail.last_step(), 3);

        // log.txt says each of them in the words viewers use.
        let log = std::fs::read_to_string(run.file(crate::runlog::LOG)).unwrap();
        let said: Vec<&str> = log.lines().map(|l| l.split_once(": ").unwrap().1).collect();
        let sentences: Vec<String> = sent.iter().filter_map(Event::describe).collect();
        assert_eq!(said, sentences);
        assert!(log
            .lines()
            .nth(6)
            .unwrap()
            .contains(" step 3 warn: step 3 skipped"));
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let run = new_run(tmp.path(), "dpo");
        let mut w = Writer::new(&run, "dpo", 3).unwrap();
        w.write(&Event::Step(step(1))).unwrap();
        // Killed in the middle of a record.
        let whole = Event::Step(step(2)).to_record().unwrap();
        append(&run.file(EVENTS), &whole[..whole.len() / 2]);
        let mut tail = Tail::open(&run.path).unwrap();
        let first = tail.poll().unwrap();
        assert!(matches!(first[0], Event::Started { .. }));
        assert_eq!(steps(&first), vec![1]);
        assert_eq!(first.len(), 2);
        // A later writer (a resumed run) starts on a line of its own: the fragment is
        // reported once and skipped, nothing after it is lost.
        let mut w = Writer::new(&run, "dpo", 3).unwrap();
        w.write(&Event::Step(step(2))).unwrap();
        let second = tail.poll().unwrap();
        assert_eq!(steps(&second), vec![2]);
        match &second[0] {
            Event::Log {
                step: 1,
                level: Level::Warn,
                message,
            } => assert!(message.contains("events.jsonl:2: skipped an unreadable record")),
            e => panic!("expected a warning, got {e:?}"),
        }
        w.write(&Event::Step(step(3))).unwrap();
        assert_eq!(tail.poll().unwrap(), vec![Event::Step(step(3))]);
    }

    #[test]
    fn records_of_a_newer_version_are_reported_once() {
        let tmp = tempfile::tempdir().unwrap();
        let run = new_run(tmp.path(), "dpo");
        let newer = |s: usize| {
            Event::Step(step(s))
                .to_record()
                .unwrap()
                .replace("\"v\":1", "\"v\":99")
                + "\n"
        };
        append(&run.file(EVENTS), &(newer(1) + &newer(2)));
        let events = replay(&run.path).unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        let Event::Log { message, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert!(message.contains("version 99 is newer"), "{message}");
    }

    #[test]
    fn a_run_that_failed_before_it_started_is_named_by_its_config() {
        let tmp = tempfile::tempdir().unwrap();
        let run = new_run(tmp.path(), "dpo");
        let mut tail = Tail::open(&run.path).unwrap();
        // Set up but not yet written to: nothing to say.
        assert!(tail.poll().unwrap().is_empty());
        let mut w = Writer::new(&run, "dpo", 0).unwrap();
        assert!(tail.poll().unwrap().is_empty());
        let failed = Event::State {
            step: 0,
            state: RunState::Failed("variant dpo: no such device".into()),
        };
        w.write(&failed).unwrap();
        let got = tail.poll().unwrap();
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], Event::Started { variant, run_dir, .. }
                if variant == "dpo" && run_dir == &run.path));
        assert_eq!(got[1], failed);
        assert!(tail.is_over());
    }

    #[test]
    fn an_earlier_versions_run_resumed_by_this_one_reads_from_its_events() {
        let tmp = tempfile::tempdir().unwrap();
        let run = new_run(tmp.path(), "dpo");
        let line =
            |s: usize| format!("{{\"step\":{s},\"time\":0.0,\"split\":\"train\",\"loss\":0.5}}\n");
        append(&run.file(METRICS), &(line(1) + &line(2) + &line(3)));
        append(
            &run.file(crate::runlog::LOG),
            "20260101-000000 step 0 info: started dpo from step 0 of 9 on cpu (1234 parameters)\n",
        );
        let mut tail = Tail::open(&run.path).unwrap();
        let before = tail.poll().unwrap();
        assert!(matches!(&before[0], Event::Started { params: 1234, .. }));
        assert_eq!(steps(&before), vec![1, 2, 3]);

        // Resumed from a checkpoint at step 2 by this version: events.jsonl is made from the
        // earlier files, then the writer appends to it.
        run.truncate_after(2).unwrap();
        let made = std::fs::read_to_string(run.file(EVENTS)).unwrap();
        assert_eq!(made.lines().count(), 3, "{made}");
        let mut w = Writer::new(&run, "dpo", 9).unwrap();
        w.write(&Event::Step(step(3))).unwrap();
        let after = tail.poll().unwrap();
        assert!(matches!(&after[0], Event::Started { params: 1234, .. }));
        assert_eq!(steps(&after), vec![1, 2, 3]);
        let Some(Event::Step(last)) = after.last() else {
            panic!("{after:?}")
        };
        assert_eq!(last, &step(3));
    }

    #[test]
    fn not_a_run_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Tail::open(tmp.path()).err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "{}: not a run directory (no config.toml) nor a Trainer output folder (no \
                 trainer_state.json)",
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

    #[test]
    fn a_removed_run_directory_is_said_and_what_was_read_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let run = new_run(tmp.path(), "a");
        let mut w = Writer::new(&run, "a", 4).unwrap();
        for ev in &a_run(&run, &cfg)[..3] {
            w.write(ev).unwrap();
        }
        let mut tail = Tail::open(&run.path).unwrap();
        let before = tail.poll().unwrap();
        assert!(!before.is_empty());
        let moved = tmp.path().join("elsewhere");
        std::fs::rename(&run.path, &moved).unwrap();
        let err = tail.poll().unwrap_err().to_string();
        assert!(
            err.contains("the run directory was removed or moved"),
            "{err}"
        );
        // Back where it was: reading goes on from where it stopped, nothing twice.
        std::fs::rename(&moved, &run.path).unwrap();
        assert!(tail.poll().unwrap().is_empty());
    }
}
