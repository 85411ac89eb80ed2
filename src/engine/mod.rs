//! The engine: runs training on a worker thread and talks to the rest of gaplab only through
//! [`Event`]s out and [`Command`]s in. Every event is written to the run directory before it is
//! sent, so a run is complete on disk whether or not anyone watches. It orchestrates the stages
//! of a workspace (the SFT stage unless cached, then every variant), each run by a [`Trainer`].

pub mod command;
pub mod control;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

pub use command::Command;

use crate::config::{RunConfig, SftSection, Workspace};
use crate::event::{Event, Level, RunState};
use crate::hash::Fnv;
use crate::runlog::lock::{self, Lock, Refused};
use crate::runlog::{self, RunDir, Writer};
use crate::train::alerts::Detector;
use crate::train::initial::ModelSource;
use crate::train::refcache::checkpoint_fingerprint;
use crate::train::trainer::{sft_checkpoint, Stage, StepResult, Trainer};
use crate::train::{memory, oom};

/// What the engine is asked to do.
pub enum Work {
    /// Train these variants of one workspace in order, from one shared initial policy.
    Variants(Vec<RunConfig>),
    /// Continue the run in `dir` from its latest checkpoint. `latest` is the workspace as it is
    /// now: its live settings that differ from the run's are applied as a hot reload would
    /// apply them (and recorded); None resumes with the run's own settings.
    Resume {
        dir: PathBuf,
        latest: Option<Box<Workspace>>,
    },
}

pub struct Plan {
    /// Where run directories (and shared SFT/initial checkpoints, caches) go.
    pub runs_root: PathBuf,
    pub work: Work,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    Stopped,
}

pub struct Engine {
    pub events: Receiver<Event>,
    pub commands: Sender<Command>,
    handle: JoinHandle<Result<Outcome>>,
}

impl Engine {
    /// Moves the event stream out (to a forwarding thread), leaving an empty one behind.
    pub fn take_events(&mut self) -> Receiver<Event> {
        std::mem::replace(&mut self.events, mpsc::channel().1)
    }

    pub fn join(self) -> Result<Outcome> {
        match self.handle.join() {
            Ok(r) => r,
            Err(_) => anyhow::bail!("the training thread panicked"),
        }
    }
}

/// Starts the engine thread once this process holds the locks of what `plan` trains (refused,
/// naming the other process, when another gaplab trains it); they are released when the thread
/// ends.
pub fn spawn(plan: Plan) -> Result<Engine> {
    let locks = lock_outputs(&plan)?;
    let (etx, erx) = mpsc::channel();
    let (ctx, crx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("gaplab-engine".into())
        .spawn({
            let ctx = ctx.clone();
            move || run(plan, locks, etx, crx, ctx)
        })
        .context("cannot start the training thread")?;
    Ok(Engine {
        events: erx,
        commands: ctx,
        handle,
    })
}

/// The locks of what `plan` trains: the run directory it resumes, or the output of each of its
/// variants under the runs root. All are taken before training starts, so that a second process
/// on the same variant refuses at once rather than when it reaches that variant; other
/// variants of the workspace stay free for another process (another GPU).
fn lock_outputs(plan: &Plan) -> Result<Vec<Lock>> {
    match &plan.work {
        Work::Resume { dir, .. } => Ok(vec![Lock::acquire(
            &dir.join(lock::RUN_LOCK),
            &dir.display().to_string(),
        )?]),
        Work::Variants(cfgs) => {
            if cfgs.is_empty() {
                return Ok(Vec::new());
            }
            let root = &plan.runs_root;
            std::fs::create_dir_all(root)
                .with_context(|| format!("cannot create {}", root.display()))?;
            cfgs.iter()
                .map(|c| {
                    let what = format!("variant {} in {}", c.variant, root.display());
                    Lock::acquire(&lock::variant_lock(root, &c.variant), &what)
                })
                .collect()
        }
    }
}

/// Writes each event to the run directory, then sends it to the watcher (if any is left).
struct Emitter {
    tx: Sender<Event>,
    writer: Writer,
    /// Watches the run's steps and evals for alerts.
    alerts: Detector,
}

impl Emitter {
    fn new(tx: Sender<Event>, writer: Writer) -> Self {
        Self {
            tx,
            writer,
            alerts: Detector::default(),
        }
    }

    fn emit(&mut self, ev: Event) -> Result<()> {
        self.writer.write(&ev)?;
        let _ = self.tx.send(ev);
        Ok(())
    }

    /// Emits a record of the run (a step, skipped step or eval), then the alerts it raises
    /// under `t`'s current `[alerts]`.
    fn emit_watched(&mut self, t: &Trainer, ev: Event) -> Result<()> {
        let alerts = self.alerts.observe(&t.cfg.alerts, &ev);
        self.emit(ev)?;
        for a in alerts {
            self.emit(a.event())?;
        }
        Ok(())
    }

    fn log(&mut self, step: usize, level: Level, message: String) -> Result<()> {
        self.emit(Event::Log {
            step,
            level,
            message,
        })
    }

    /// Records a failure (status.json, log) where it still can, shows it either way (the disk
    /// that made the run fail may refuse the record too), and passes the error on.
    fn fail(&mut self, step: usize, e: anyhow::Error) -> anyhow::Error {
        let ev = Event::State {
            step,
            state: RunState::Failed(format!("{e:#}")),
        };
        let _ = self.writer.write(&ev);
        let _ = self.tx.send(ev);
        e
    }
}

enum Flow {
    Continue,
    Stop,
}

/// Commands between steps: pause blocks here, single steps are counted.
struct Control {
    rx: Receiver<Command>,
    paused: bool,
    steps_allowed: usize,
    /// Where the run's control socket forwards commands from attached viewers.
    remote: Sender<Command>,
    /// The latest valid edit of the workspace config, applied to each variant as it starts.
    latest: Option<Box<Workspace>>,
    /// Whether waiting for another process's SFT stage has been said.
    waiting: bool,
}

/// Applies an edited workspace config to the running variant at a step boundary.
fn reload(t: &mut Trainer, ws: &Workspace, em: &mut Emitter, step: usize) -> Result<()> {
    let cfg = match ws.run_config(&t.cfg.variant) {
        Ok(cfg) => cfg,
        Err(e) => {
            return em.emit(Event::ConfigRejected {
                step,
                error: format!("{e:#}"),
            })
        }
    };
    // Also when nothing changed for this variant: the viewer learns that the file is valid
    // again after a rejected edit.
    let (changes, ignored) = t.apply(&cfg)?;
    em.emit(Event::Applied {
        step,
        changes,
        ignored,
    })
}

impl Control {
    fn poll(&mut self, mut t: Option<&mut Trainer>, em: &mut Emitter, step: usize) -> Result<Flow> {
        loop {
            // The engine keeps a sender itself (for the control socket), so the channel never
            // closes: while paused it waits for the next command.
            let cmd = if self.paused && self.steps_allowed == 0 {
                match self.rx.recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(Flow::Continue),
                }
            } else {
                match self.rx.try_recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(Flow::Continue),
                }
            };
            match cmd {
                Command::Pause => {
                    if !self.paused {
                        self.paused = true;
                        em.emit(Event::State {
                            step,
                            state: RunState::Paused,
                        })?;
                    }
                }
                Command::Resume => {
                    self.steps_allowed = 0;
                    if self.paused {
                        self.paused = false;
                        em.emit(Event::State {
                            step,
                            state: RunState::Running,
                        })?;
                    }
                }
                Command::Step => {
                    if self.paused {
                        self.steps_allowed += 1;
                    }
                }
                Command::Stop => return Ok(Flow::Stop),
                Command::SampleNow => {
                    if let Some(t) = t.as_deref_mut() {
                        let samples = t.sample()?;
                        em.emit(Event::Samples { step, samples })?;
                    }
                }
                Command::Checkpoint => {
                    if let Some(t) = t.as_deref_mut() {
                        let path = t.checkpoint()?;
                        em.emit(Event::Checkpoint { step, path })?;
                    }
                }
                Command::Reload(ws) => {
                    if let Some(t) = t.as_deref_mut() {
                        reload(t, &ws, em, step)?;
                    }
                    self.latest = Some(ws);
                }
                Command::ConfigError(error) => em.emit(Event::ConfigRejected { step, error })?,
            }
        }
    }

    /// Accounts for a step taken while paused.
    fn stepped(&mut self) {
        self.steps_allowed = self.steps_allowed.saturating_sub(1);
    }
}

fn run(
    plan: Plan,
    locks: Vec<Lock>,
    tx: Sender<Event>,
    rx: Receiver<Command>,
    remote: Sender<Command>,
) -> Result<Outcome> {
    // Said in the first run's log: whose stale lock this process took over.
    let mut notes: Vec<String> = locks.iter().filter_map(|l| l.note.clone()).collect();
    let mut ctl = Control {
        rx,
        paused: false,
        steps_allowed: 0,
        remote,
        latest: None,
        waiting: false,
    };
    let cache = plan.runs_root.join(".cache");
    match plan.work {
        Work::Resume { dir, latest } => {
            let run = RunDir::open(&dir)?;
            let cfg = run.read_config()?;
            let step = run.latest_checkpoint().map_or(0, |c| c.0);
            // Resuming rewrites the record files (dropping what came after the checkpoint), so
            // the writer opens them afterwards.
            let resumed = Trainer::resume(run.clone(), &cache);
            let mut em = Emitter::new(tx, Writer::new(&run, &cfg.variant, 0)?);
            for note in notes.drain(..) {
                em.log(step, Level::Warn, note)?;
            }
            let t = resumed.map_err(|e| em.fail(step, e))?;
            // The alert detector continues from the run's records up to the checkpoint: trends
            // keep their first eval, and alerts already said are not said again.
            for ev in runlog::tail::replay(&run.path).unwrap_or_default() {
                em.alerts.observe(&t.cfg.alerts, &ev);
            }
            // The workspace's edits since the run's last checkpoint are applied as the run
            // starts (and recorded), as if made while it trained; nothing is recorded when
            // nothing changed.
            ctl.latest = latest.filter(|ws| differs(&t.cfg, ws));
            drive(t, &mut em, &mut ctl)
        }
        Work::Variants(cfgs) => {
            let Some(first) = cfgs.first() else {
                return Ok(Outcome::Finished);
            };
            let base = ModelSource::of(&first.model)?.initial_dir(&plan.runs_root)?;
            // Headers only: a truncated or mismatched checkpoint fails before a run directory
            // is made for it.
            crate::model::io::check_dir(&base, first.model.adapter.as_deref())?;
            // The in-loop judge's reward model too (headers only).
            if let Some(rm) = &first.judge.reward_model {
                crate::model::reward::RewardModel::check_dir(rm)
                    .with_context(|| format!("judge.reward_model = \"{}\"", rm.display()))?;
            }
            let initial = match &first.sft {
                Some(s) if s.steps > 0 => {
                    match sft_stage(first, s, &base, &plan.runs_root, &cache, &tx, &mut ctl)? {
                        Some(dir) => dir,
                        None => return Ok(Outcome::Stopped),
                    }
                }
                _ => base,
            };
            for cfg in cfgs {
                let run = RunDir::create(&plan.runs_root, &cfg.variant)?;
                // New, so free; held so that a `--resume` of it meanwhile is refused.
                let _run_lock =
                    Lock::acquire(&run.file(lock::RUN_LOCK), &run.path.display().to_string())?;
                run.write_config(&cfg)?;
                let mut em = Emitter::new(tx.clone(), Writer::new(&run, &cfg.variant, 0)?);
                for note in notes.drain(..) {
                    em.log(0, Level::Warn, note)?;
                }
                let variant = cfg.variant.clone();
                let t = Trainer::start(cfg, Stage::Variant, run, &initial, &cache)
                    .map_err(|e| em.fail(0, e.context(format!("variant {variant}"))))?;
                if drive(t, &mut em, &mut ctl)? == Outcome::Stopped {
                    return Ok(Outcome::Stopped);
                }
            }
            Ok(Outcome::Finished)
        }
    }
}

/// Whether the workspace's config of `cfg`'s variant differs from it in any setting (an
/// unreadable one counts as different: the engine reports it as a rejected edit).
fn differs(cfg: &RunConfig, ws: &Workspace) -> bool {
    ws.run_config(&cfg.variant)
        .and_then(|new| cfg.with_live_changes(&new))
        .map_or(true, |(_, changes, ignored)| {
            !changes.is_empty() || !ignored.is_empty()
        })
}

/// `e` with how to continue the run, when it is a variant's and a checkpoint is left to
/// continue from.
fn with_resume_hint(e: anyhow::Error, t: &Trainer) -> anyhow::Error {
    if t.stage != Stage::Variant {
        return e;
    }
    let Some((step, _)) = t.run.latest_checkpoint() else {
        return e;
    };
    let fix = match io_kind(&e) {
        Some(std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) => {
            "once space is freed"
        }
        Some(std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied) => {
            "once the run directory is writable again"
        }
        _ => "once the cause is fixed",
    };
    anyhow::anyhow!(
        "{e:#}; the run keeps its checkpoint at step {step}: {fix}, continue with: gaplab train {} --resume {}",
        t.cfg.workspace.display(),
        t.run.path.display()
    )
}

/// The kind of the first OS error in `e`'s chain.
fn io_kind(e: &anyhow::Error) -> Option<std::io::ErrorKind> {
    e.chain().find_map(|c| {
        c.downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| match c.downcast_ref::<candle_core::Error>() {
                Some(candle_core::Error::Io(io)) => Some(io.kind()),
                _ => None,
            })
    })
}

fn every(interval: usize, step: usize) -> bool {
    interval > 0 && step.is_multiple_of(interval)
}

/// Runs one stage to its end (or a stop), emitting everything it does. A variant is steered
/// (commands, config edits, attached viewers), evaluated and sampled at its start and at
/// intervals, checkpointed as it goes and when stopped; the SFT stage trains straight through
/// to one evaluation and its result.
fn drive(mut t: Trainer, em: &mut Emitter, ctl: &mut Control) -> Result<Outcome> {
    // Viewers of the same user attached to the run directory may steer it too.
    let _socket = match t.stage {
        Stage::Sft(_) => None,
        Stage::Variant => match control::serve(&t.run.path, ctl.remote.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                em.log(t.step, Level::Warn, format!("no control socket: {e:#}"))?;
                None
            }
        },
    };
    let r = drive_inner(&mut t, em, ctl);
    r.map_err(|e| {
        let e = if oom::is_out_of_memory(&e) {
            out_of_memory(&t, em, e)
        } else {
            with_resume_hint(e, &t)
        };
        em.fail(t.step, e)
    })
}

/// A step, an evaluation or sampling ran out of device memory: the step is reported skipped
/// with the memory estimate and what is free now, the weights as they were before it are
/// checkpointed (unless the update was half done), and the run stops with advice. What failed
/// held its tensors on the stack, so they are freed by now and the checkpoint has room.
fn out_of_memory(t: &Trainer, em: &mut Emitter, e: anyhow::Error) -> anyhow::Error {
    let failed_step = e.downcast_ref::<oom::OutOfMemory>().map(|o| o.step);
    if let Some(step) = failed_step {
        let _ = em.emit(Event::Skipped {
            step,
            reason: "out of device memory".into(),
        });
    }
    let free = memory::available(&t.device).map_or_else(|| "unknown".into(), memory::gib);
    let _ = em.log(
        t.step,
        Level::Error,
        format!("{e:#}; free device memory now: {free}"),
    );
    let saved = if !t.consistent() {
        "the weights in memory were half-updated and were not saved; the last checkpoint is intact"
            .to_string()
    } else if t.stage != Stage::Variant {
        "the SFT stage keeps no checkpoints and starts again when the run is resumed".to_string()
    } else {
        match t.checkpoint() {
            Ok(path) => {
                let _ = em.emit(Event::Checkpoint {
                    step: t.step,
                    path: path.clone(),
                });
                format!("step {} was checkpointed in {}", t.step, path.display())
            }
            Err(ce) => {
                format!("writing a checkpoint failed too ({ce:#}); the last checkpoint is intact")
            }
        }
    };
    let during = match failed_step {
        Some(s) => format!("step {s}"),
        None => format!("evaluating or sampling after step {}", t.step),
    };
    anyhow::anyhow!(
        "out of device memory in {during} ({}); {saved}. To fit: lower train.batch_size (raise train.grad_accum to keep the effective batch), set train.gradient_checkpointing = true, or train LoRA adapters ([lora]); then continue with: gaplab train {} --resume {}",
        t.memory,
        t.cfg.workspace.display(),
        t.run.path.display()
    )
}

fn drive_inner(t: &mut Trainer, em: &mut Emitter, ctl: &mut Control) -> Result<Outcome> {
    let variant = t.stage == Stage::Variant;
    em.emit(Event::Started {
        variant: t.cfg.variant.clone(),
        run_dir: t.run.path.clone(),
        start_step: t.step,
        total_steps: t.total_steps,
        device: crate::model::device_label(&t.device, t.policy.dtype()),
        params: t.num_params(),
        lora: t.lora.as_ref().map(|l| crate::event::LoraInfo {
            r: l.r,
            trainable: t.trainable_params(),
        }),
        config: Box::new(t.cfg.record()),
    })?;
    em.emit(Event::State {
        step: t.step,
        state: RunState::Running,
    })?;
    em.log(t.step, Level::Info, t.memory.clone())?;
    if variant {
        // Edits made while earlier variants (or the SFT stage) ran count for this one too.
        if let Some(ws) = ctl.latest.clone() {
            reload(t, &ws, em, t.step)?;
        }
        fit_warning(t, em)?;
    }
    let mut evaluated_at = None;
    if t.step == 0 && variant {
        evaluate(t, em)?;
        evaluated_at = Some(0);
        let mut samples = std::mem::take(&mut t.reference_samples);
        samples.extend(t.sample()?);
        em.emit(Event::Samples { step: 0, samples })?;
    }
    loop {
        let step = t.step;
        let steered = if variant { Some(&mut *t) } else { None };
        if let Flow::Stop = ctl.poll(steered, em, step)? {
            if variant {
                let path = t.checkpoint()?;
                em.emit(Event::Checkpoint { step: t.step, path })?;
            }
            em.emit(Event::State {
                step: t.step,
                state: RunState::Stopped,
            })?;
            return Ok(Outcome::Stopped);
        }
        if t.step >= t.total_steps {
            break;
        }
        let record = match t.train_step()? {
            StepResult::Done(m) => Event::Step(m),
            StepResult::Skipped(reason) => Event::Skipped {
                step: t.step,
                reason,
            },
        };
        em.emit_watched(t, record)?;
        ctl.stepped();
        let s = t.step;
        if s < t.total_steps && variant {
            if every(t.cfg.eval.interval, s) {
                evaluate(t, em)?;
                evaluated_at = Some(s);
            }
            if every(t.cfg.sample.interval, s) {
                let samples = t.sample()?;
                em.emit(Event::Samples { step: s, samples })?;
            }
            if every(t.cfg.checkpoint.interval, s) {
                let path = t.checkpoint()?;
                em.emit(Event::Checkpoint { step: s, path })?;
            }
        }
    }
    if evaluated_at != Some(t.step) {
        evaluate(t, em)?;
    }
    if variant {
        let samples = t.sample()?;
        em.emit(Event::Samples {
            step: t.step,
            samples,
        })?;
    }
    let path = t.checkpoint()?;
    em.emit(Event::Checkpoint { step: t.step, path })?;
    em.emit(Event::State {
        step: t.step,
        state: RunState::Finished,
    })?;
    Ok(Outcome::Finished)
}

/// Warns when fitting to the length limits cut or dropped pairs, and about settings that
/// make an objective degenerate.
fn fit_warning(t: &Trainer, em: &mut Emitter) -> Result<()> {
    if let Stage::Variant = t.stage {
        for w in t.cfg.train.objective_warnings() {
            em.log(t.step, Level::Warn, w)?;
        }
        if let Some(note) = t.kl_unmeasured() {
            em.log(t.step, Level::Info, note)?;
        }
    }
    let (train_fit, eval_fit) = (t.data.train_fit, t.data.eval_fit);
    if train_fit.any() || eval_fit.any() {
        let mut msg = format!(
            "pairs fit to {}: train: {train_fit}",
            t.cfg.data.length_limits()
        );
        if eval_fit.pairs > 0 {
            msg.push_str(&format!("; eval: {eval_fit}"));
            if eval_fit.dropped == eval_fit.pairs {
                msg.push_str(" (no eval pairs left)");
            }
        }
        em.log(t.step, Level::Warn, msg)?;
    }
    Ok(())
}

fn evaluate(t: &mut Trainer, em: &mut Emitter) -> Result<()> {
    if let Some(r) = t.evaluate()? {
        em.emit_watched(t, Event::Eval(Box::new(r)))?;
    }
    Ok(())
}

/// The supervised stage shared by every variant: trains `base` on the chosen responses and
/// saves the result once under `runs_root/sft-<hash>/checkpoint` (reused while nothing it
/// depends on changes). None when stopped.
fn sft_stage(
    cfg: &RunConfig,
    sft: &SftSection,
    base: &Path,
    runs_root: &Path,
    cache: &Path,
    tx: &Sender<Event>,
    ctl: &mut Control,
) -> Result<Option<PathBuf>> {
    let dir = runs_root.join(format!("sft-{:016x}", sft_key(cfg, sft, base)?));
    let ckpt = sft_checkpoint(&dir);
    if ckpt.join("config.json").exists() {
        return Ok(Some(ckpt));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Another process training another variant of the workspace may be running this same
    // stage: wait for its result instead of training it twice into one folder.
    let _lock = loop {
        let owner = match Lock::try_acquire(&dir.join(lock::RUN_LOCK)) {
            Ok(l) => break l,
            Err(Refused::Io(e)) => return Err(e),
            Err(Refused::Held(o)) => o,
        };
        if !std::mem::replace(&mut ctl.waiting, true) {
            let _ = tx.send(Event::Log {
                step: 0,
                level: Level::Info,
                message: format!(
                    "waiting for the shared SFT stage {}, trained by another gaplab process ({})",
                    dir.display(),
                    owner.describe()
                ),
            });
        }
        match ctl.rx.recv_timeout(std::time::Duration::from_millis(500)) {
            Ok(Command::Stop) => return Ok(None),
            Ok(Command::Reload(ws)) => ctl.latest = Some(ws),
            _ => {}
        }
    };
    if ckpt.join("config.json").exists() {
        return Ok(Some(ckpt));
    }
    let run = RunDir::open(&dir)?;
    // A restarted stage starts over: its records would otherwise repeat.
    for f in [
        runlog::EVENTS,
        runlog::METRICS,
        runlog::SAMPLES,
        runlog::PREFIX,
    ] {
        let _ = std::fs::remove_file(run.file(f));
    }
    let mut sft_cfg = cfg.clone();
    sft_cfg.variant = "sft".into();
    run.write_config(&sft_cfg)?;
    let mut em = Emitter::new(tx.clone(), Writer::new(&run, "sft", sft.steps)?);
    let t = Trainer::start(sft_cfg, Stage::Sft(sft.clone()), run, base, cache)
        .map_err(|e| em.fail(0, e))?;
    Ok(match drive(t, &mut em, ctl)? {
        Outcome::Finished => Some(ckpt),
        Outcome::Stopped => None,
    })
}

/// What the SFT stage's result depends on: the base weights, `[sft]`, `[data]` and the train
/// files, the seed and the dtype. Existing `sft-*` caches stay valid only while this hashes the
/// same bytes in the same order.
fn sft_key(cfg: &RunConfig, sft: &SftSection, base: &Path) -> Result<u64> {
    let mut h = Fnv::default();
    checkpoint_fingerprint(base, &mut h)?;
    h.bytes(toml::to_string(sft)?.as_bytes());
    h.bytes(toml::to_string(&cfg.data)?.as_bytes());
    for f in crate::data::source_files(&cfg.data.train).unwrap_or_default() {
        h.bytes(&std::fs::read(f).unwrap_or_default());
    }
    h.bytes(&cfg.train.seed.to_le_bytes());
    // Conversational responses stopped getting an EOS after the template's end of turn (TRL
    // 1.16's ids): an SFT result trained on the older ids is not reused. Standard data's ids
    // did not change, so its caches stay valid.
    if cfg.data.format != crate::data::Format::Standard {
        h.bytes(b"chat-ids-trl-1.16");
    }
    // The stage trains in the run's dtype: a bf16 SFT result is not an f32 one. (f32 adds
    // nothing, so caches made before half precision existed stay valid.)
    if cfg.train.dtype != crate::model::Precision::F32 {
        h.bytes(cfg.train.dtype.name().as_bytes());
    }
    // A LoRA stage (and the adapter it starts from) makes another result than full training.
    if let Some(l) = &cfg.lora {
        h.bytes(toml::to_string(l)?.as_bytes());
    }
    if let Some(dir) = &cfg.model.adapter {
        checkpoint_fingerprint(dir, &mut h)?;
    }
    Ok(h.0)
}
