//! The engine: runs training on a worker thread and talks to the rest of gaplab only through
//! [`Event`]s out and [`Command`]s in. Every event is written to the run directory before it is
//! sent, so a run is complete on disk whether or not anyone watches.

pub mod command;
pub mod control;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

pub use command::Command;

use crate::config::{RunConfig, SftSection, Workspace};
use crate::event::{now, EvalReport, Event, Level, RunState, StepMetrics};
use crate::model::SeqBatch;
use crate::model::{io, select_device, CausalLm, ModelConfig, ScratchSpec, Tok};
use crate::runlog::{self, RunDir, Writer};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::refcache::{checkpoint_fingerprint, Fnv};
use crate::train::trainer::{load_dataset, stream_indices, StepResult, Trainer};
use crate::train::{schedule, sft_grads};

/// What the engine is asked to do.
pub enum Work {
    /// Train these variants of one workspace in order, from one shared initial policy.
    Variants(Vec<RunConfig>),
    /// Continue the run in this directory from its latest checkpoint.
    Resume(PathBuf),
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

pub fn spawn(plan: Plan) -> Result<Engine> {
    let (etx, erx) = mpsc::channel();
    let (ctx, crx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("gaplab-engine".into())
        .spawn({
            let ctx = ctx.clone();
            move || run(plan, etx, crx, ctx)
        })
        .context("cannot start the training thread")?;
    Ok(Engine {
        events: erx,
        commands: ctx,
        handle,
    })
}

/// Writes each event to the run directory, then sends it to the watcher (if any is left).
struct Emitter {
    tx: Sender<Event>,
    writer: Writer,
}

impl Emitter {
    fn emit(&mut self, ev: Event) -> Result<()> {
        self.writer.write(&ev)?;
        let _ = self.tx.send(ev);
        Ok(())
    }

    fn log(&mut self, step: usize, level: Level, message: String) -> Result<()> {
        self.emit(Event::Log {
            step,
            level,
            message,
        })
    }

    /// Records a failure (status.json, log) and passes the error on.
    fn fail(&mut self, step: usize, e: anyhow::Error) -> anyhow::Error {
        let _ = self.emit(Event::State {
            step,
            state: RunState::Failed(format!("{e:#}")),
        });
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
    tx: Sender<Event>,
    rx: Receiver<Command>,
    remote: Sender<Command>,
) -> Result<Outcome> {
    let mut ctl = Control {
        rx,
        paused: false,
        steps_allowed: 0,
        remote,
        latest: None,
    };
    let cache = plan.runs_root.join(".cache");
    match plan.work {
        Work::Resume(dir) => {
            let run = RunDir::open(&dir)?;
            let cfg = run.read_config()?;
            let step = run.latest_checkpoint().map_or(0, |c| c.0);
            // Resuming rewrites the record files (dropping what came after the checkpoint), so
            // the writer opens them afterwards.
            let resumed = Trainer::resume(run.clone(), &cache);
            let mut em = Emitter {
                tx,
                writer: Writer::new(&run, &cfg.variant, 0)?,
            };
            let t = resumed.map_err(|e| em.fail(step, e))?;
            drive(t, &mut em, &mut ctl)
        }
        Work::Variants(cfgs) => {
            let Some(first) = cfgs.first() else {
                return Ok(Outcome::Finished);
            };
            let base = initial_base(first, &plan.runs_root)?;
            let initial = match &first.sft {
                Some(s) if s.steps > 0 => {
                    match sft_stage(first, s, &base, &plan.runs_root, &tx, &mut ctl)? {
                        Some(dir) => dir,
                        None => return Ok(Outcome::Stopped),
                    }
                }
                _ => base,
            };
            for cfg in cfgs {
                let run = RunDir::create(&plan.runs_root, &cfg.variant)?;
                run.write_config(&cfg)?;
                let mut em = Emitter {
                    tx: tx.clone(),
                    writer: Writer::new(&run, &cfg.variant, 0)?,
                };
                let variant = cfg.variant.clone();
                let t = Trainer::start(cfg, run, &initial, &cache)
                    .map_err(|e| em.fail(0, e.context(format!("variant {variant}"))))?;
                if drive(t, &mut em, &mut ctl)? == Outcome::Stopped {
                    return Ok(Outcome::Stopped);
                }
            }
            Ok(Outcome::Finished)
        }
    }
}

fn every(interval: usize, step: usize) -> bool {
    interval > 0 && step.is_multiple_of(interval)
}

/// Runs one variant to its end (or a stop), emitting everything it does.
fn drive(mut t: Trainer, em: &mut Emitter, ctl: &mut Control) -> Result<Outcome> {
    // Viewers of the same user attached to the run directory may steer it too.
    let _socket = match control::serve(&t.run.path, ctl.remote.clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            em.log(t.step, Level::Warn, format!("no control socket: {e:#}"))?;
            None
        }
    };
    let r = drive_inner(&mut t, em, ctl);
    r.map_err(|e| em.fail(t.step, e))
}

fn drive_inner(t: &mut Trainer, em: &mut Emitter, ctl: &mut Control) -> Result<Outcome> {
    em.emit(Event::Started {
        variant: t.cfg.variant.clone(),
        run_dir: t.run.path.clone(),
        start_step: t.step,
        total_steps: t.total_steps,
        device: crate::model::device_label(&t.device, t.policy.dtype()),
        params: t.num_params(),
        config: Box::new(t.cfg.record()),
    })?;
    em.emit(Event::State {
        step: t.step,
        state: RunState::Running,
    })?;
    em.log(t.step, Level::Info, t.memory.clone())?;
    // Edits made while earlier variants (or the SFT stage) ran count for this one too.
    if let Some(ws) = ctl.latest.clone() {
        reload(t, &ws, em, t.step)?;
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
    let mut evaluated_at = None;
    if t.step == 0 {
        evaluate(t, em)?;
        evaluated_at = Some(0);
        let mut samples = std::mem::take(&mut t.reference_samples);
        samples.extend(t.sample()?);
        em.emit(Event::Samples { step: 0, samples })?;
    }
    loop {
        let step = t.step;
        if let Flow::Stop = ctl.poll(Some(t), em, step)? {
            let path = t.checkpoint()?;
            em.emit(Event::Checkpoint { step: t.step, path })?;
            em.emit(Event::State {
                step: t.step,
                state: RunState::Stopped,
            })?;
            return Ok(Outcome::Stopped);
        }
        if t.step >= t.total_steps {
            break;
        }
        match t.train_step()? {
            StepResult::Done(m) => em.emit(Event::Step(m))?,
            StepResult::Skipped(reason) => em.emit(Event::Skipped {
                step: t.step,
                reason,
            })?,
        }
        ctl.stepped();
        let s = t.step;
        if s < t.total_steps {
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
    let samples = t.sample()?;
    em.emit(Event::Samples {
        step: t.step,
        samples,
    })?;
    let path = t.checkpoint()?;
    em.emit(Event::Checkpoint { step: t.step, path })?;
    em.emit(Event::State {
        step: t.step,
        state: RunState::Finished,
    })?;
    Ok(Outcome::Finished)
}

fn evaluate(t: &mut Trainer, em: &mut Emitter) -> Result<()> {
    if let Some(r) = t.evaluate()? {
        em.emit(Event::Eval(Box::new(r)))?;
    }
    Ok(())
}

/// The HF folder every variant starts from before any SFT: the configured checkpoint, or a
/// seeded from-scratch model saved once under `runs_root/init-<hash>`.
fn initial_base(cfg: &RunConfig, runs_root: &Path) -> Result<PathBuf> {
    if let Some(p) = &cfg.model.path {
        return Ok(p.clone());
    }
    let scratch = cfg
        .model
        .scratch
        .as_ref()
        .context("model: expected `path` or `[model.scratch]`")?;
    let tok_dir = cfg
        .model
        .tokenizer
        .as_ref()
        .context("model.tokenizer: a scratch model needs a tokenizer folder")?;
    let mut h = Fnv::default();
    h.bytes(toml::to_string(scratch)?.as_bytes());
    checkpoint_fingerprint(tok_dir, &mut h)?;
    let dir = runs_root.join(format!("init-{:016x}", h.0));
    if dir.join("config.json").exists() {
        return Ok(dir);
    }
    let tok = Tok::load(tok_dir, None)?;
    let mc = scratch_config(scratch, &tok)?;
    let model = CausalLm::random(mc, scratch.seed, &Device::Cpu)?;
    save_atomic(&dir, |tmp| io::save_dir(&model, Some(tok_dir), tmp))?;
    Ok(dir)
}

/// The model config of a from-scratch model over `tok`'s vocabulary.
pub fn scratch_config(scratch: &crate::config::ScratchSection, tok: &Tok) -> Result<ModelConfig> {
    let arch = crate::model::Arch::parse(&scratch.arch)
        .with_context(|| format!("model.scratch.arch: unknown \"{}\"", scratch.arch))?;
    let mut mc = ModelConfig::from_scratch(&ScratchSpec {
        arch,
        vocab_size: tok.vocab_size(),
        hidden_size: scratch.hidden_size,
        intermediate_size: scratch.intermediate_size,
        num_hidden_layers: scratch.num_hidden_layers,
        num_attention_heads: scratch.num_attention_heads,
        num_key_value_heads: scratch.num_key_value_heads,
        max_position_embeddings: scratch.max_position_embeddings,
        rope_theta: scratch.rope_theta,
        tie_word_embeddings: scratch.tie_word_embeddings,
    })?;
    mc.bos_token_id = tok.bos;
    mc.eos_token_ids = vec![tok.eos];
    mc.pad_token_id = tok.pad;
    Ok(mc)
}

/// Writes a folder through a temporary sibling and a rename.
fn save_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    fill(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))
}

/// The supervised stage shared by every variant: trains `base` on the chosen responses and
/// saves the result once under `runs_root/sft-<hash>/checkpoint` (reused while nothing it
/// depends on changes). None when stopped.
fn sft_stage(
    cfg: &RunConfig,
    sft: &SftSection,
    base: &Path,
    runs_root: &Path,
    tx: &Sender<Event>,
    ctl: &mut Control,
) -> Result<Option<PathBuf>> {
    let mut h = Fnv::default();
    checkpoint_fingerprint(base, &mut h)?;
    h.bytes(toml::to_string(sft)?.as_bytes());
    h.bytes(toml::to_string(&cfg.data)?.as_bytes());
    for f in crate::data::source_files(&cfg.data.train).unwrap_or_default() {
        h.bytes(&std::fs::read(f).unwrap_or_default());
    }
    h.bytes(&cfg.train.seed.to_le_bytes());
    // The stage trains in the run's dtype: a bf16 SFT result is not an f32 one. (f32 adds
    // nothing, so caches made before half precision existed stay valid.)
    if cfg.train.dtype != "f32" {
        h.bytes(cfg.train.dtype.as_bytes());
    }
    let dir = runs_root.join(format!("sft-{:016x}", h.0));
    let ckpt = dir.join("checkpoint");
    if ckpt.join("config.json").exists() {
        return Ok(Some(ckpt));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
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
    let mut em = Emitter {
        tx: tx.clone(),
        writer: Writer::new(&run, "sft", sft.steps)?,
    };
    let r = sft_train(cfg, sft, base, &run, &ckpt, &mut em, ctl);
    r.map_err(|e| em.fail(0, e))
}

fn sft_train(
    cfg: &RunConfig,
    sft: &SftSection,
    base: &Path,
    run: &RunDir,
    ckpt: &Path,
    em: &mut Emitter,
    ctl: &mut Control,
) -> Result<Option<PathBuf>> {
    let device = select_device(&cfg.train.device)?;
    let dtype = crate::model::train_dtype(&cfg.train.dtype)?;
    let model_cfg = ModelConfig::load(&base.join("config.json"))?;
    let data = load_dataset(
        cfg,
        &Tok::load(base, Some(&model_cfg))?,
        model_cfg.vocab_size,
    )?;
    anyhow::ensure!(!data.train.is_empty(), "sft: no training pairs");
    let memory = crate::train::memory::plan_run(
        cfg,
        Some(sft),
        &model_cfg,
        &device,
        &data.train,
        &data.eval,
    )?;
    let (model, tok) = io::load_dir(base, &device, dtype)?;
    let params = model.cfg.num_params();
    let (policy, named) = model.into_trainable()?;
    let mut opt = AdamW::new(
        named,
        AdamWConfig {
            lr: sft.lr,
            weight_decay: sft.weight_decay,
            ..Default::default()
        },
    )?;
    let total = sft.steps;
    em.emit(Event::Started {
        variant: "sft".into(),
        run_dir: run.path.clone(),
        start_step: 0,
        total_steps: total,
        device: crate::model::device_label(&device, dtype),
        params,
        config: Box::new(cfg.record()),
    })?;
    em.emit(Event::State {
        step: 0,
        state: RunState::Running,
    })?;
    em.log(0, Level::Info, memory)?;
    let warmup = schedule::warmup_steps(total, sft.warmup_ratio, 0);
    let clip = (sft.max_grad_norm > 0.0).then_some(sft.max_grad_norm);
    let pad = tok.pad_id();
    let mut tokens_seen = 0u64;
    for step in 0..total {
        if let Flow::Stop = ctl.poll(None, em, step)? {
            em.emit(Event::State {
                step,
                state: RunState::Stopped,
            })?;
            return Ok(None);
        }
        let started = Instant::now();
        let lr = schedule::lr_at(sft.schedule, sft.lr, step, warmup, total);
        opt.set_lr(lr);
        let idx = stream_indices(data.train.len(), sft.batch_size, cfg.train.seed, step);
        let pairs: Vec<_> = idx.iter().map(|&i| data.train[i].clone()).collect();
        let batch = SeqBatch::chosen_only(&pairs, pad, &device)?;
        let (loss, grads) = sft_grads(&policy, &batch, &batch.response_lens, 1.0)?;
        let report = match &grads {
            Some(g) => Some(opt.step(g, clip)?),
            None => None,
        };
        ctl.stepped();
        match report {
            Some(r) if r.applied => {
                tokens_seen += batch.num_tokens() as u64;
                let elapsed = started.elapsed().as_secs_f64().max(1e-9);
                let metrics = [
                    ("loss", loss),
                    ("grad_norm", r.grad_norm),
                    ("learning_rate", lr),
                    ("num_tokens", tokens_seen as f64),
                    ("tokens_per_s", batch.num_tokens() as f64 / elapsed),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                em.emit(Event::Step(StepMetrics {
                    step: step + 1,
                    time: now(),
                    metrics,
                }))?;
            }
            _ => em.emit(Event::Skipped {
                step: step + 1,
                reason: format!("loss {loss} or gradient not finite"),
            })?,
        }
    }
    if !data.eval.is_empty() {
        let detached = policy.detached()?;
        let (mut sum, mut n) = (0f64, 0usize);
        for chunk in data.eval.chunks(sft.batch_size.max(1)) {
            let batch = SeqBatch::chosen_only(chunk, pad, &device)?;
            let scores = detached.response_scores(&batch)?;
            sum -= scores
                .logps
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            n += batch.num_response_tokens();
        }
        let nll = sum / n.max(1) as f64;
        em.emit(Event::Eval(Box::new(EvalReport {
            step: total,
            time: now(),
            metrics: [("eval_loss".to_string(), nll)].into_iter().collect(),
            prefix: Default::default(),
            token_diffs: vec![],
            entropy: vec![],
            cross_entropy: vec![],
        })))?;
    }
    let weights = crate::train::checkpoint_weights(&policy, &opt);
    save_atomic(ckpt, |tmp| {
        io::save_weights(&policy.cfg, &weights, Some(base), tmp)
    })?;
    em.emit(Event::Checkpoint {
        step: total,
        path: ckpt.to_path_buf(),
    })?;
    em.emit(Event::State {
        step: total,
        state: RunState::Finished,
    })?;
    Ok(Some(ckpt.to_path_buf()))
}
