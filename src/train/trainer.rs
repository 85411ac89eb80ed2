//! The trainer of one run: owns the policy and its optimizer, the reference, the data and the
//! run directory, and does steps, evaluations, samplings and checkpoints. It trains either
//! stage of a workspace ([`Stage`]): the SFT stage or a variant's preference objective. The
//! engine drives it and turns what it returns into events.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::dataset::{load_dataset, stream_indices, Dataset};
use super::health::{self, Generation};
use super::judge::{self, Judge, RewardJudge, Verdict};
use super::optim::{AdamW, AdamWConfig};
use super::refcache::{self, RefLogps};
use super::token_view;
use super::{accumulate, logit_sums, memory, oom, reference_logps, schedule};
use crate::config::{
    AlertsSection, CheckpointSection, EvalSection, JudgeSection, RunConfig, SampleSection,
    Schedule, SftSection, TrainSettings,
};
use crate::data::{self, Prompt, TokenizedPair};
use crate::event::{now, Change, EvalReport, PairTokens, Sample, StepMetrics, TokenDiffRow};
use crate::model::{io, lora, ops, sample, CausalLm, LoraConfig, ModelConfig, SeqBatch, Tok};
use crate::objective::prefix::{self, PairTokenLogps};
use crate::objective::{self, Loss, LossKind, Objective};
use crate::reward;
use crate::rng::Rng;
use crate::runlog::{RunDir, OPTIMIZER, TRAINER_STATE};

/// Steps (1-based, comma-separated) whose loss is replaced by NaN: fault injection for testing
/// that a bad step never reaches the weights.
pub const FAULT_NAN_ENV: &str = "GAPLAB_FAULT_NAN_STEPS";

/// What a trainer trains.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    /// `[sft]`: the SFT loss on the chosen responses, with the section's own optimisation
    /// settings. It runs straight through to one result, [`sft_checkpoint`] of its run
    /// directory (no reference, samples, judge or interim checkpoints; a stopped stage starts
    /// over).
    Sft(SftSection),
    /// A variant: its `[train]` objective, steered live, sampled, judged, checkpointed as it
    /// goes and resumable.
    Variant,
}

/// Where the SFT stage in `run_dir` saves its result: an HF folder, the initial policy and
/// reference of every variant.
pub fn sft_checkpoint(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint")
}

/// The optimisation of one step.
#[derive(Clone, Debug, PartialEq)]
struct StepSettings {
    /// AdamW at the peak learning rate (the schedule scales it step by step).
    adam: AdamWConfig,
    schedule: Schedule,
    warmup: usize,
    /// Pairs per micro-batch.
    batch_size: usize,
    grad_accum: usize,
    /// Global gradient-norm clipping; 0 turns it off.
    max_grad_norm: f64,
}

/// The SFT stage's settings (Adam's moments at their defaults), or `[train]`'s.
fn step_settings(stage: &Stage, t: &TrainSettings, total_steps: usize) -> StepSettings {
    match stage {
        Stage::Sft(s) => StepSettings {
            adam: AdamWConfig {
                lr: s.lr,
                weight_decay: s.weight_decay,
                ..Default::default()
            },
            schedule: s.schedule,
            warmup: schedule::warmup_steps(total_steps, s.warmup_ratio, 0),
            batch_size: s.batch_size,
            grad_accum: 1,
            max_grad_norm: s.max_grad_norm,
        },
        Stage::Variant => StepSettings {
            adam: adam_config(t),
            schedule: t.schedule,
            warmup: schedule::warmup_steps(total_steps, t.warmup_ratio, t.warmup_steps),
            batch_size: t.batch_size,
            grad_accum: t.grad_accum,
            max_grad_norm: t.max_grad_norm,
        },
    }
}

/// Saved with every checkpoint: what a resumed run needs beyond the weights and moments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub total_steps: usize,
    pub optimizer_step: u64,
    pub bad_steps: usize,
    pub tokens_seen: u64,
    /// The initial policy (also the reference and the source of the tokenizer files).
    pub initial: PathBuf,
    /// Live settings in effect (they may differ from config.toml after applied edits).
    pub train: TrainSettings,
    pub eval: EvalSection,
    pub sample: SampleSection,
    pub checkpoint: CheckpointSection,
    #[serde(default)]
    pub judge: JudgeSection,
    #[serde(default)]
    pub alerts: AlertsSection,
}

enum Reference {
    /// SimPO needs none.
    None,
    Model(Box<CausalLm>),
    Cached {
        train: RefLogps,
        eval: RefLogps,
    },
}

pub enum StepResult {
    Done(StepMetrics),
    /// Not applied (non-finite loss or gradient).
    Skipped(String),
}

pub struct Trainer {
    pub cfg: RunConfig,
    /// What this trainer trains.
    pub stage: Stage,
    pub run: RunDir,
    pub device: Device,
    pub tok: Tok,
    pub initial_dir: PathBuf,
    pub policy: CausalLm,
    /// The memory estimate checked before loading (a line for the log).
    pub memory: String,
    /// The adapters' shape when the run trains LoRA adapters over a frozen base.
    pub lora: Option<LoraConfig>,
    pub data: Dataset,
    pub step: usize,
    pub total_steps: usize,
    pub tokens_seen: u64,
    /// Samples of the reference, made when the run starts (not on resume).
    pub reference_samples: Vec<Sample>,
    opt: AdamW,
    vars: Vec<Var>,
    reference: Reference,
    bad_steps: usize,
    /// Inside an optimizer update (see [`Trainer::consistent`]).
    updating: bool,
    fault_nan: Vec<usize>,
    /// The judge of `judge.task` (variants only).
    judge: Option<Box<dyn Judge>>,
    /// The reward model of `judge.reward_model` (variants only).
    reward_judge: Option<RewardJudge>,
}

impl Trainer {
    /// A new run of `stage` of `cfg` in `run`, starting from the HF folder `initial`.
    pub fn start(
        cfg: RunConfig,
        stage: Stage,
        run: RunDir,
        initial: &Path,
        cache_dir: &Path,
    ) -> Result<Self> {
        Self::build(cfg, stage, run, initial, None, cache_dir)
    }

    /// Continues the variant's run in `run` from its latest complete checkpoint.
    pub fn resume(run: RunDir, cache_dir: &Path) -> Result<Self> {
        let mut cfg = run.read_config()?;
        let (step, ckpt) = run.latest_checkpoint().with_context(|| {
            format!(
                "{}: no complete checkpoint to resume from",
                run.path.display()
            )
        })?;
        let path = ckpt.join(TRAINER_STATE);
        let state: TrainerState = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("{}: invalid trainer state", path.display()))?;
        anyhow::ensure!(state.step == step, "{}: step mismatch", path.display());
        cfg.train = state.train.clone();
        cfg.eval = state.eval.clone();
        cfg.sample = state.sample.clone();
        cfg.checkpoint = state.checkpoint.clone();
        cfg.judge = state.judge.clone();
        cfg.alerts = state.alerts.clone();
        run.truncate_after(step)?;
        let initial = state.initial.clone();
        Self::build(
            cfg,
            Stage::Variant,
            run,
            &initial,
            Some((ckpt, state)),
            cache_dir,
        )
    }

    fn build(
        cfg: RunConfig,
        stage: Stage,
        run: RunDir,
        initial: &Path,
        from: Option<(PathBuf, TrainerState)>,
        cache_dir: &Path,
    ) -> Result<Self> {
        let device = cfg.train.device.select()?;
        let dtype = cfg.train.dtype.dtype();
        let lora = cfg.lora_settings()?;
        // A full run resumes from its checkpoint's weights; a LoRA run from the base and its
        // checkpoint's adapters.
        let policy_dir = match (&from, &lora) {
            (Some((ckpt, _)), None) => ckpt.as_path(),
            _ => initial,
        };
        // Config, tokenizer and data first: a run that cannot fit is refused before any
        // weight is read.
        let model_cfg = ModelConfig::load(&policy_dir.join("config.json"))?;
        if cfg.data.max_len > model_cfg.max_position_embeddings {
            bail!(
                "data.max_len ({}) exceeds the model's max_position_embeddings ({})",
                cfg.data.max_len,
                model_cfg.max_position_embeddings
            );
        }
        let data = load_dataset(
            &cfg,
            &Tok::load(policy_dir, Some(&model_cfg))?,
            model_cfg.vocab_size,
        )?;
        if data.train.is_empty() {
            bail!("{}: no training pairs", cfg.data.train.display());
        }
        let (sft, total_steps) = match &stage {
            Stage::Sft(s) => (Some(s), s.steps),
            Stage::Variant => (None, cfg.train.total_steps(data.train.len())),
        };
        let total_steps = total_steps.max(1);
        let memory = memory::plan_run(&cfg, sft, &model_cfg, &device, &data.train, &data.eval)?;
        let (policy, tok) = io::load_dir(policy_dir, &device, dtype)?;
        // The reference of a LoRA run is where its policy starts: the base with the trained
        // adapters off (the same weights, no copy), or the adapter it starts from, frozen.
        let start = start_adapter(&cfg, &stage);
        let (policy, lora_reference) = match &lora {
            None => (policy, None),
            Some(l) => {
                let load = |dir: &Path| lora::load_adapter(dir, &policy.cfg, &device, dtype);
                // Read once: the reference keeps these tensors, the policy trains copies of
                // them (its variables get their own storage).
                let start_pairs = start.map(|dir| load(dir).map(|(_, p)| p)).transpose()?;
                let reference = match &start_pairs {
                    Some(p) => policy.clone().with_adapters(l.clone(), p.clone())?,
                    None => policy.without_adapters()?,
                };
                let adapters = match (&from, start_pairs) {
                    (Some((ckpt, _)), _) => load(ckpt)?.1,
                    (None, Some(p)) => p,
                    (None, None) => {
                        lora::init_adapters(&policy.cfg, l, cfg.train.seed, &device, dtype)?
                    }
                };
                (policy.with_adapters(l.clone(), adapters)?, Some(reference))
            }
        };
        let (policy, named) = policy.into_trainable()?;
        let vars: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
        let settings = step_settings(&stage, &cfg.train, total_steps);
        let mut opt = AdamW::new(named, settings.adam)?;
        if let Some((ckpt, state)) = &from {
            let st = candle_core::safetensors::load(ckpt.join(OPTIMIZER), &Device::Cpu)
                .with_context(|| format!("{}: cannot read {OPTIMIZER}", ckpt.display()))?;
            opt.load_state(|n| st.get(n).cloned(), state.optimizer_step)?;
        }
        let load_ref = || match &lora_reference {
            Some(m) => Ok(m.clone()),
            None => io::load_model(initial, &device, dtype),
        };
        // The reference's identity for the log-prob cache: the base, and the adapter it
        // carries when it starts from one.
        let mut reference_dirs = vec![initial];
        reference_dirs.extend(start.filter(|_| lora.is_some()));
        let pad = tok.pad_id();
        let mut reference_samples = Vec::new();
        let mut this_reference = None;
        let reference = if !objective_of(&stage, &cfg.train).needs_reference() {
            Reference::None
        } else if cfg.train.precompute_ref {
            let bs = cfg.eval.batch_size;
            let mut model = None;
            let (train_ref, _) = refcache::load_or_compute(
                cache_dir,
                &reference_dirs,
                || {
                    let m = load_ref()?;
                    // Never updated: a shared-storage handle keeps it for sampling.
                    model = Some(m.clone());
                    Ok(m)
                },
                &data.train,
                bs,
                pad,
                &device,
            )?;
            let (eval_ref, _) = refcache::load_or_compute(
                cache_dir,
                &reference_dirs,
                load_ref,
                &data.eval,
                bs,
                pad,
                &device,
            )?;
            this_reference = model;
            Reference::Cached {
                train: train_ref,
                eval: eval_ref,
            }
        } else {
            Reference::Model(Box::new(load_ref()?))
        };
        let fault_nan = std::env::var(FAULT_NAN_ENV)
            .ok()
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_default();
        let (step, bad_steps, tokens_seen) = from
            .as_ref()
            .map_or((0, 0, 0), |(_, s)| (s.step, s.bad_steps, s.tokens_seen));
        let judge = match stage {
            Stage::Sft(_) => None,
            Stage::Variant => judge::for_task(cfg.judge.task),
        };
        let reward_judge = match (&stage, &cfg.judge.reward_model) {
            (Stage::Variant, Some(dir)) => Some(RewardJudge::load(dir, &device, dtype)?),
            _ => None,
        };
        let mut t = Self {
            lora,
            memory,
            cfg,
            stage,
            run,
            device: device.clone(),
            tok,
            initial_dir: initial.to_path_buf(),
            policy,
            data,
            step,
            total_steps,
            tokens_seen,
            reference_samples: vec![],
            opt,
            vars,
            reference,
            bad_steps,
            updating: false,
            fault_nan,
            judge,
            reward_judge,
        };
        if from.is_none() && t.stage == Stage::Variant {
            // The reference's generations, once: they never change.
            let model = match (&t.reference, this_reference) {
                (Reference::Model(m), _) => Some(m.detached()?),
                (_, Some(m)) => Some(m),
                _ => Some(load_ref()?),
            };
            if let Some(m) = model {
                reference_samples = t.sample_with(&m, "reference")?;
            }
            t.reference_samples = reference_samples;
        }
        Ok(t)
    }

    pub fn objective(&self) -> Objective {
        Objective {
            eos: Some(self.tok.eos),
            ..objective_of(&self.stage, &self.cfg.train)
        }
    }

    pub fn num_params(&self) -> usize {
        self.policy.cfg.num_params()
    }

    /// Parameters the optimizer updates: the adapters of a LoRA run, else every weight.
    pub fn trainable_params(&self) -> usize {
        self.policy
            .adapters()
            .map_or_else(|| self.num_params(), |a| a.num_params())
    }

    /// This step's optimisation: `[train]`'s are read at every step, so that applied edits
    /// take effect at the next one.
    fn step_settings(&self) -> StepSettings {
        step_settings(&self.stage, &self.cfg.train, self.total_steps)
    }

    fn pairs_per_step(&self) -> usize {
        let s = self.step_settings();
        s.batch_size * s.grad_accum
    }

    /// The train pairs of optimizer step `step` (0-based); see [`stream_indices`].
    pub fn batch_indices(&self, step: usize) -> Vec<usize> {
        stream_indices(
            self.data.train.len(),
            self.pairs_per_step(),
            self.cfg.train.seed,
            step,
        )
    }

    /// One optimizer step (with gradient accumulation). A non-finite loss or gradient skips the
    /// update; too many in a row is an error (the last checkpoint stays as it was). Running out
    /// of device memory is an [`oom::OutOfMemory`] error: before the update the trainer is as
    /// it was before the step, and can be checkpointed.
    pub fn train_step(&mut self) -> Result<StepResult> {
        let step = self.step + 1;
        self.updating = false;
        self.train_step_inner().map_err(|e| {
            if oom::is_out_of_memory(&e) {
                anyhow::Error::new(oom::OutOfMemory {
                    step,
                    consistent: !self.updating,
                    detail: format!("{e:#}"),
                })
            } else {
                e
            }
        })
    }

    /// Whether the weights and optimizer state in memory are whole: false after a step failed
    /// inside its update.
    pub fn consistent(&self) -> bool {
        !self.updating
    }

    fn train_step_inner(&mut self) -> Result<StepResult> {
        oom::injected(oom::FAULT_STEP)?;
        let started = Instant::now();
        let step = self.step;
        let ts = self.step_settings();
        let lr = schedule::lr_at(ts.schedule, ts.adam.lr, step, ts.warmup, self.total_steps);
        self.opt.cfg = AdamWConfig { lr, ..ts.adam };
        let idx = self.batch_indices(step);
        let obj = self.objective();
        let poison = self.fault_nan.contains(&(step + 1));
        let pad = self.tok.pad_id();
        let mut grads: Option<GradStore> = None;
        let mut pairs = Vec::new();
        let mut losses = Vec::new();
        let (mut tokens, mut lc, mut lr_sum) = (0usize, (0.0, 0usize), (0.0, 0usize));
        let mut bad = None;
        for chunk in idx.chunks(ts.batch_size) {
            let batch_pairs: Vec<TokenizedPair> =
                chunk.iter().map(|&i| self.data.train[i].clone()).collect();
            let batch = super::batch_for(&obj, &batch_pairs, pad, &self.device)?;
            let refp = match &self.reference {
                Reference::Model(m) => Some(reference_logps(m, &batch)?),
                Reference::Cached { train, .. } => Some(train.packed(chunk)),
                Reference::None => None,
            };
            let scale = 1.0 / ts.grad_accum as f64;
            // LoRA dropout masks are drawn per step and micro-batch: a resumed run draws the
            // same ones.
            let micro = losses.len() as u64;
            let policy = self.policy.with_dropout(
                self.cfg.train.seed ^ (step as u64).wrapping_mul(0x9e37_79b9) ^ (micro << 48),
            );
            let recompute = self.cfg.train.gradient_checkpointing;
            let m = super::grads(
                &policy,
                refp.as_deref(),
                &batch,
                &obj,
                scale,
                poison,
                recompute,
            )?;
            losses.push(m.loss);
            tokens += m.tokens;
            lc = (lc.0 + m.logits_chosen.0, lc.1 + m.logits_chosen.1);
            lr_sum = (
                lr_sum.0 + m.logits_rejected.0,
                lr_sum.1 + m.logits_rejected.1,
            );
            pairs.extend(m.pairs);
            match (m.grads, &mut grads) {
                (None, _) => {
                    bad = Some(format!("loss is {}", m.loss));
                    break;
                }
                (Some(g), None) => grads = Some(g),
                (Some(g), Some(total)) => accumulate(total, &g, &self.vars)?,
            }
        }
        self.step += 1;
        let clip = (ts.max_grad_norm > 0.0).then_some(ts.max_grad_norm);
        let mut grad_norm = f64::NAN;
        if let (None, Some(g)) = (&bad, &grads) {
            self.updating = true;
            oom::injected(oom::FAULT_UPDATE)?;
            let r = self.opt.step(g, clip)?;
            self.updating = false;
            grad_norm = r.grad_norm;
            if !r.applied {
                bad = Some(format!("gradient norm is {}", r.grad_norm));
            }
        }
        if let Some(reason) = bad {
            self.bad_steps += 1;
            if self.bad_steps >= self.cfg.train.max_bad_steps {
                bail!(
                    "{} consecutive steps with a non-finite loss or gradient (last at step {}: {reason}); the weights were never updated with them and the last checkpoint is intact",
                    self.bad_steps,
                    self.step
                );
            }
            return Ok(StepResult::Skipped(reason));
        }
        self.bad_steps = 0;
        self.tokens_seen += tokens as u64;
        let loss = losses.iter().sum::<f64>() / losses.len() as f64;
        let mut metrics = BTreeMap::new();
        match obj.kind() {
            LossKind::Sft => {
                metrics.insert("loss".into(), loss);
            }
            LossKind::Preference => {
                metrics.extend(
                    objective::pair_metrics(&obj, &pairs, loss)
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v)),
                );
                metrics.insert("logits/chosen".into(), lc.0 / lc.1.max(1) as f64);
                metrics.insert("logits/rejected".into(), lr_sum.0 / lr_sum.1.max(1) as f64);
                metrics.insert(
                    "epoch".into(),
                    (self.step * self.pairs_per_step()) as f64 / self.data.train.len() as f64,
                );
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        metrics.insert("grad_norm".into(), grad_norm);
        metrics.insert("learning_rate".into(), lr);
        metrics.insert("num_tokens".into(), self.tokens_seen as f64);
        metrics.insert("tokens_per_s".into(), tokens as f64 / elapsed.max(1e-9));
        Ok(StepResult::Done(StepMetrics {
            step: self.step,
            time: now(),
            metrics,
        }))
    }

    /// The stage's evaluation (None without eval data).
    pub fn evaluate(&self) -> Result<Option<EvalReport>> {
        match &self.stage {
            Stage::Sft(s) => self.evaluate_sft(s.batch_size),
            Stage::Variant => self.evaluate_pairs(),
        }
    }

    /// `eval_loss`: the SFT loss of every eval pair's chosen response, per response token.
    fn evaluate_sft(&self, batch_size: usize) -> Result<Option<EvalReport>> {
        if self.data.eval.is_empty() {
            return Ok(None);
        }
        let policy = self.policy.detached()?;
        let pad = self.tok.pad_id();
        let (mut sum, mut n) = (0f64, 0usize);
        for chunk in self.data.eval.chunks(batch_size.max(1)) {
            let batch = SeqBatch::chosen_only(chunk, pad, &self.device)?;
            let scores = policy.response_scores(&batch)?;
            sum -= scores
                .logps
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            n += batch.num_response_tokens();
        }
        Ok(Some(EvalReport {
            step: self.step,
            time: now(),
            metrics: [("eval_loss".to_string(), sum / n.max(1) as f64)]
                .into_iter()
                .collect(),
            prefix: Default::default(),
            token_diffs: vec![],
            entropy: vec![],
            cross_entropy: vec![],
            kl_profile: vec![],
            token_view: vec![],
        }))
    }

    /// Metrics, the judge's and prefix diagnostics on the first `eval.pairs` eval pairs.
    fn evaluate_pairs(&self) -> Result<Option<EvalReport>> {
        let n = self.cfg.eval.pairs.min(self.data.eval.len());
        if n == 0 {
            return Ok(None);
        }
        let pairs = &self.data.eval[..n];
        let policy = self.policy.detached()?;
        let obj = self.objective();
        let pad = self.tok.pad_id();
        let mut stats = Vec::new();
        let mut tokens: Vec<[Vec<f32>; 4]> = Vec::new();
        let (mut ent_sum, mut xent_sum, mut count) = (vec![], vec![], vec![]);
        let (mut lc, mut lr) = ((0.0, 0usize), (0.0, 0usize));
        let bs = self.cfg.eval.batch_size.max(1);
        for (ci, chunk) in pairs.chunks(bs).enumerate() {
            let idx: Vec<usize> = (ci * bs..ci * bs + chunk.len()).collect();
            let batch = SeqBatch::from_pairs(chunk, pad, &self.device)?;
            let scores = policy.response_scores(&batch)?;
            let pol: Vec<f32> = scores.logps.to_dtype(DType::F32)?.to_vec1()?;
            let refp = match &self.reference {
                Reference::Model(m) => Some(reference_logps(m, &batch)?),
                Reference::Cached { eval, .. } => Some(eval.packed(&idx)),
                Reference::None => None,
            };
            let pol_t = Tensor::new(pol.as_slice(), &self.device)?;
            let log_sum_sq = match obj.use_weighting {
                true => Some(super::log_sum_sq_probs(&scores.logits)?),
                false => None,
            };
            let extras = objective::TokenExtras {
                log_sum_sq: log_sum_sq.as_deref(),
            };
            let objective::LossOutput::Pairs(out) =
                objective::loss(&obj, &batch, &pol_t, refp.as_deref(), extras)?
            else {
                bail!("the eval of a variant scores preference pairs");
            };
            stats.extend(out.pairs);
            let (c, r) = logit_sums(&batch, &scores.logits)?;
            lc = (lc.0 + c.0, lc.1 + c.1);
            lr = (lr.0 + r.0, lr.1 + r.1);
            // Uncertainty per response position, over the chosen responses.
            let b = chunk.len();
            let n_chosen = batch.offsets[b];
            let ent: Vec<f32> = ops::entropy(&scores.logits.narrow(0, 0, n_chosen)?)?.to_vec1()?;
            let rows = batch.split(&pol);
            let ref_rows = refp.as_ref().map(|r| batch.split(r));
            for i in 0..b {
                let off = batch.offsets[i];
                for t in 0..batch.response_lens[i] {
                    if ent_sum.len() <= t {
                        ent_sum.push(0.0);
                        xent_sum.push(0.0);
                        count.push(0usize);
                    }
                    ent_sum[t] += ent[off + t] as f64;
                    xent_sum[t] -= pol[off + t] as f64;
                    count[t] += 1;
                }
                let empty = Vec::new;
                tokens.push([
                    rows[i].to_vec(),
                    rows[b + i].to_vec(),
                    ref_rows.as_ref().map_or_else(empty, |r| r[i].to_vec()),
                    ref_rows.as_ref().map_or_else(empty, |r| r[b + i].to_vec()),
                ]);
            }
        }
        let has_ref = !matches!(self.reference, Reference::None);
        let views: Vec<PairTokenLogps> = tokens
            .iter()
            .map(|t| PairTokenLogps {
                chosen: &t[0],
                rejected: &t[1],
                ref_chosen: has_ref.then_some(t[2].as_slice()),
                ref_rejected: has_ref.then_some(t[3].as_slice()),
            })
            .collect();
        let js = if self.cfg.eval.prefix_lengths.is_empty() {
            prefix::prefix_lengths(views.iter().map(|v| v.k()).max().unwrap_or(0))
        } else {
            self.cfg.eval.prefix_lengths.clone()
        };
        let loss = stats.iter().map(|p| p.loss).sum::<f64>() / stats.len() as f64;
        let mut metrics: BTreeMap<String, f64> = objective::pair_metrics(&obj, &stats, loss)
            .into_iter()
            .map(|(k, v)| (format!("eval_{k}"), v))
            .collect();
        metrics.insert("eval_logits/chosen".into(), lc.0 / lc.1.max(1) as f64);
        metrics.insert("eval_logits/rejected".into(), lr.0 / lr.1.max(1) as f64);
        let gens = self.eval_generations(&policy)?;
        self.judge_metrics(&gens, &mut metrics)?;
        let kl_profile = self.health_metrics(&policy, &gens, &mut metrics)?;
        let token_view = self.token_view(&policy, &obj)?;
        Ok(Some(EvalReport {
            step: self.step,
            time: now(),
            metrics,
            prefix: prefix::prefix_curve(&obj, &views, &js),
            token_diffs: views
                .iter()
                .take(self.cfg.eval.heatmap_pairs)
                .enumerate()
                .map(|(pair, v)| TokenDiffRow {
                    pair,
                    values: prefix::token_reward_diff(&obj, v),
                })
                .collect(),
            entropy: ent_sum
                .iter()
                .zip(&count)
                .map(|(s, &c)| s / c as f64)
                .collect(),
            cross_entropy: xent_sum
                .iter()
                .zip(&count)
                .map(|(s, &c)| s / c as f64)
                .collect(),
            token_view,
            kl_profile,
        }))
    }

    /// The first `eval.token_view_pairs` eval pairs token by token (the token view's records).
    fn token_view(&self, policy: &CausalLm, obj: &Objective) -> Result<Vec<PairTokens>> {
        let n = self.cfg.eval.token_view_pairs.min(self.data.eval.len());
        if n == 0 {
            return Ok(vec![]);
        }
        let prompts: Vec<String> = self.data.eval_prompts[..n.min(self.data.eval_prompts.len())]
            .iter()
            .map(|p| p.text.clone())
            .collect();
        let (model, cached) = match &self.reference {
            Reference::Model(m) => (Some(m.as_ref()), None),
            Reference::Cached { eval, .. } => (None, Some(eval)),
            Reference::None => (None, None),
        };
        let cached_row = |i: usize| cached.map_or_else(Vec::new, |c| c.packed(&[i]));
        token_view::record(
            obj,
            &self.tok,
            &self.device,
            policy,
            model,
            cached
                .is_some()
                .then_some(&cached_row as &dyn Fn(usize) -> Vec<f32>),
            &self.data.eval[..n],
            &prompts,
            self.cfg.eval.token_view_tokens,
        )
    }

    /// log pi (and log pi_ref, with a reference model at hand) of each token of a policy's
    /// generation, for the sample's token view; `policy` is the detached policy that made it.
    fn generation_logps(
        &self,
        policy: &CausalLm,
        prompt: &[u32],
        ids: &[u32],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        if ids.is_empty() {
            return Ok((vec![], vec![]));
        }
        let batch = SeqBatch::new(&[(prompt, ids)], self.tok.pad_id(), &self.device)?;
        let f64s = |v: Vec<f32>| {
            v.into_iter()
                .map(|x| token_view::round_sig(f64::from(x), 6))
                .collect::<Vec<_>>()
        };
        let policy = f64s(reference_logps(policy, &batch)?);
        let reference = match &self.reference {
            Reference::Model(m) => f64s(reference_logps(m, &batch)?),
            _ => vec![],
        };
        Ok((policy, reference))
    }

    /// The policy's generations for the first `judge.prompts` eval prompts, when a judge or
    /// the health metrics read them (else none): per prompt a greedy one, then `judge.samples`
    /// drawn at `judge.temperature`, up to `judge.max_new_tokens` tokens each.
    fn eval_generations(&self, model: &CausalLm) -> Result<Vec<Generation>> {
        if self.judge.is_none() && self.reward_judge.is_none() && !self.cfg.eval.health {
            return Ok(vec![]);
        }
        let j = &self.cfg.judge;
        let n = j.prompts.min(self.data.eval_prompts.len());
        let greedy = sample::SampleParams {
            max_new_tokens: j.max_new_tokens,
            temperature: 0.0,
            top_p: 1.0,
        };
        let sampled = sample::SampleParams {
            temperature: j.temperature,
            ..greedy
        };
        // Seeded by the step, apart from the sampling prompts' stream.
        let mut rng = Rng::new(
            self.cfg.train.seed ^ 0x6a75_6467_6500 ^ (self.step as u64).wrapping_mul(0x9e37_79b9),
        );
        let mut out = Vec::new();
        for (prompt_index, prompt) in self.data.eval_prompts[..n].iter().enumerate() {
            let prompt_ids = self.prompt_ids(prompt)?;
            for s in 0..=j.samples {
                let params = if s == 0 { &greedy } else { &sampled };
                let ids = sample::generate(model, &prompt_ids, &self.tok.stop, params, &mut rng)?;
                out.push(Generation {
                    prompt_index,
                    prompt_text: prompt.text.clone(),
                    prompt_ids: prompt_ids.clone(),
                    stopped: ids.last().is_some_and(|t| self.tok.stop.contains(t)),
                    ids,
                    sampled: s > 0,
                });
            }
        }
        Ok(out)
    }

    /// The judge's verdicts on the eval's generations, greedy and sampled, as `eval_judge/*`
    /// metrics: what the policy generates, next to what its implicit reward prefers.
    fn judge_metrics(
        &self,
        gens: &[Generation],
        metrics: &mut BTreeMap<String, f64>,
    ) -> Result<()> {
        if let Some(judge) = &self.judge {
            self.task_judge_metrics(judge.as_ref(), gens, metrics)?;
        }
        if let Some(rj) = &self.reward_judge {
            self.reward_judge_metrics(rj, gens, metrics)?;
        }
        Ok(())
    }

    /// `judge.task`'s verdicts, greedy and `_sampled`, as `eval_judge/*`.
    fn task_judge_metrics(
        &self,
        judge: &dyn Judge,
        gens: &[Generation],
        metrics: &mut BTreeMap<String, f64>,
    ) -> Result<()> {
        let (mut g, mut s): (Vec<Verdict>, Vec<Verdict>) = (Vec::new(), Vec::new());
        for gen in gens {
            let verdict = judge
                .judge(&gen.prompt_text, &self.tok.decode(&gen.ids)?)
                .with_context(|| {
                    format!(
                        "judge.task = \"{}\": eval prompt {} is not one of the task's prompts",
                        self.cfg.judge.task,
                        gen.prompt_index + 1
                    )
                })?;
            if gen.sampled { &mut s } else { &mut g }.push(verdict);
        }
        for (suffix, verdicts) in [("", &g), ("_sampled", &s)] {
            for (name, v) in super::judge::means(verdicts) {
                metrics.insert(format!("eval_judge/{name}{suffix}"), v);
            }
        }
        Ok(())
    }

    /// The reward model's scores of the eval's generations, full and at `judge.prefix_lengths`,
    /// greedy and `_sampled`, with its scoring time (`eval_judge/rm_seconds`).
    fn reward_judge_metrics(
        &self,
        rj: &RewardJudge,
        gens: &[Generation],
        metrics: &mut BTreeMap<String, f64>,
    ) -> Result<()> {
        let j = &self.cfg.judge;
        let start = Instant::now();
        // The task judge keeps `score` (see train::judge).
        let full_name = if self.judge.is_some() {
            "rm_score"
        } else {
            "score"
        };
        for (suffix, sampled) in [("", false), ("_sampled", true)] {
            let these: Vec<reward::Generation> = gens
                .iter()
                .filter(|g| g.sampled == sampled)
                .map(|g| reward::Generation {
                    prompt: &g.prompt_text,
                    ids: &g.ids,
                    stopped: g.stopped,
                })
                .collect();
            let scores = rj
                .score(&self.tok, &these, &j.prefix_lengths, j.batch_size)
                .with_context(|| format!("judge.reward_model = \"{}\"", rj.dir.display()))?;
            metrics.extend(judge::reward_metrics(
                &scores,
                &j.prefix_lengths,
                full_name,
                suffix,
            ));
        }
        metrics.insert(
            "eval_judge/rm_seconds".into(),
            start.elapsed().as_secs_f64(),
        );
        Ok(())
    }

    /// The `eval_gen/*` health metrics of the eval's generations (greedy, and `_sampled`), and
    /// `eval_gen/kl` with its per-position profile (returned) where it can be measured (see
    /// [`Trainer::kl_unmeasured`]).
    fn health_metrics(
        &self,
        policy: &CausalLm,
        gens: &[Generation],
        metrics: &mut BTreeMap<String, f64>,
    ) -> Result<Vec<f64>> {
        if !self.cfg.eval.health {
            return Ok(vec![]);
        }
        for (suffix, sampled) in [("", false), ("_sampled", true)] {
            let views: Vec<_> = gens
                .iter()
                .filter(|g| g.sampled == sampled)
                .map(Generation::view)
                .collect();
            for (name, v) in health::summary(&views) {
                metrics.insert(format!("eval_gen/{name}{suffix}"), v);
            }
        }
        let Reference::Model(reference) = &self.reference else {
            return Ok(vec![]);
        };
        if self.kl_unmeasured().is_some() {
            return Ok(vec![]);
        }
        let samples: Vec<&Generation> = gens
            .iter()
            .filter(|g| g.sampled && !g.ids.is_empty())
            .collect();
        let (mut pol, mut refp) = (Vec::new(), Vec::new());
        let pad = self.tok.pad_id();
        for chunk in samples.chunks(self.cfg.eval.batch_size.max(1)) {
            let rows: Vec<(&[u32], &[u32])> = chunk
                .iter()
                .map(|g| (g.prompt_ids.as_slice(), g.ids.as_slice()))
                .collect();
            let batch = SeqBatch::new(&rows, pad, &self.device)?;
            let p = reference_logps(policy, &batch)?;
            let r = reference_logps(reference, &batch)?;
            for (a, b) in batch.split(&p).into_iter().zip(batch.split(&r)) {
                pol.push(a.to_vec());
                refp.push(b.to_vec());
            }
        }
        if pol.is_empty() {
            return Ok(vec![]);
        }
        let (kl, profile) = health::kl_estimate(&pol, &refp, self.cfg.eval.kl_positions);
        metrics.insert("eval_gen/kl".into(), kl);
        Ok(profile)
    }

    /// Why `eval_gen/kl` is not measured with the current settings (None when it is, or when
    /// health metrics are off).
    pub fn kl_unmeasured(&self) -> Option<String> {
        if !self.cfg.eval.health || self.stage != Stage::Variant {
            return None;
        }
        let why = match &self.reference {
            Reference::None => "the objective has no reference model".to_string(),
            Reference::Cached { .. } => "the reference's log-probs are precomputed \
                 (train.precompute_ref = true), so no reference model is kept in memory"
                .to_string(),
            Reference::Model(_) if self.cfg.judge.samples == 0 => {
                "it is estimated on sampled generations and judge.samples = 0 (greedy ones \
                 would bias it)"
                    .to_string()
            }
            Reference::Model(_) if self.cfg.judge.temperature != 1.0 => format!(
                "it is estimated on the policy's own samples and judge.temperature = {} \
                 samples another distribution (set it to 1)",
                self.cfg.judge.temperature
            ),
            Reference::Model(_) => return None,
        };
        Some(format!("eval_gen/kl is not measured: {why}"))
    }

    /// Prompt ids as generation sees them: cut to `data.max_prompt_len`, from the left
    /// (keep_end) or the right (keep_start).
    fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let mut ids = self.tok.encode_prompt_as(&prompt.text, prompt.templated)?;
        let max = self.cfg.data.max_prompt_len;
        if ids.len() > max {
            match self.cfg.data.prompt_truncation {
                data::PromptTruncation::KeepEnd => {
                    ids.drain(..ids.len() - max);
                }
                data::PromptTruncation::KeepStart => ids.truncate(max),
            }
        }
        Ok(ids)
    }

    /// The sampling prompts: `sample.prompts`, else the prompts of the first eval pairs. With
    /// conversational train data, each of `sample.prompts` is a user message rendered by the
    /// chat template with the generation prompt.
    pub fn sample_prompts(&self) -> Result<Vec<Prompt>> {
        if !self.cfg.sample.prompts.is_empty() {
            return self
                .cfg
                .sample
                .prompts
                .iter()
                .enumerate()
                .map(|(i, text)| match &self.data.chat {
                    Some(t) => {
                        let msg = serde_json::json!({"role": "user", "content": text});
                        let text = t
                            .render(&[msg], true)
                            .with_context(|| format!("sample.prompts[{i}]"))?;
                        Ok(Prompt {
                            text,
                            templated: true,
                        })
                    }
                    None => Ok(Prompt {
                        text: text.clone(),
                        templated: false,
                    }),
                })
                .collect();
        }
        let n = self.cfg.sample.from_eval.min(self.data.eval_prompts.len());
        Ok(self.data.eval_prompts[..n].to_vec())
    }

    /// The policy's generations for the sampling prompts.
    pub fn sample(&self) -> Result<Vec<Sample>> {
        self.sample_with(&self.policy.detached()?, "policy")
    }

    fn sample_with(&self, model: &CausalLm, source: &str) -> Result<Vec<Sample>> {
        let s = &self.cfg.sample;
        let params = sample::SampleParams {
            max_new_tokens: s.max_new_tokens,
            temperature: s.temperature,
            top_p: s.top_p,
        };
        // Seeded by the step: sampling never disturbs training and survives a resume.
        let mut rng = Rng::new(self.cfg.train.seed ^ (self.step as u64).wrapping_mul(0x2545_f491));
        let mut out = Vec::new();
        for (prompt_id, prompt) in self.sample_prompts()?.into_iter().enumerate() {
            let ids = self.prompt_ids(&prompt)?;
            let token_ids = sample::generate(model, &ids, &self.tok.stop, &params, &mut rng)?;
            // The reference's own samples need no departure from it.
            let (logps, ref_logps) = match source {
                "policy" => self.generation_logps(model, &ids, &token_ids)?,
                _ => (vec![], vec![]),
            };
            out.push(Sample {
                step: self.step,
                prompt_id,
                prompt: prompt.text,
                source: source.to_string(),
                logps,
                ref_logps,
                text: self.tok.decode(&token_ids)?,
                pieces: self.tok.pieces(&token_ids)?,
                token_ids,
            });
        }
        Ok(out)
    }

    /// Saves weights (HF layout), optimizer moments and trainer state as `step-N`; the SFT
    /// stage saves its result instead.
    pub fn checkpoint(&self) -> Result<PathBuf> {
        if let Stage::Sft(_) = self.stage {
            return self.save_sft_result();
        }
        let state = TrainerState {
            step: self.step,
            total_steps: self.total_steps,
            optimizer_step: self.opt.step,
            bad_steps: self.bad_steps,
            tokens_seen: self.tokens_seen,
            initial: self.initial_dir.clone(),
            train: self.cfg.train.clone(),
            eval: self.cfg.eval.clone(),
            sample: self.cfg.sample.clone(),
            checkpoint: self.cfg.checkpoint.clone(),
            judge: self.cfg.judge.clone(),
            alerts: self.cfg.alerts.clone(),
        };
        self.run
            .write_checkpoint(self.step, self.cfg.checkpoint.keep, |dir| {
                // Fault points before each file: a disk that fills up before the checkpoint,
                // after its weights, and before its last file.
                let fault = |name: &str, file: &str| {
                    crate::fault::disk(name)
                        .with_context(|| format!("cannot write {}", dir.join(file).display()))
                };
                let weights = match self.lora {
                    Some(_) => "adapter_model.safetensors",
                    None => "model.safetensors",
                };
                fault("checkpoint-model", weights)?;
                self.save_policy(dir)?;
                let path = dir.join(OPTIMIZER);
                fault("checkpoint-optimizer", OPTIMIZER)?;
                let moments: HashMap<String, Tensor> =
                    self.opt.state_tensors()?.into_iter().collect();
                candle_core::safetensors::save(&moments, &path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                let path = dir.join(TRAINER_STATE);
                fault("checkpoint-state", TRAINER_STATE)?;
                std::fs::write(&path, serde_json::to_vec_pretty(&state)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(())
            })
    }

    /// Writes the policy into `dir`: a LoRA run's adapters as PEFT writes them
    /// (adapter_config.json, adapter_model.safetensors), else the full weights (HF layout).
    fn save_policy(&self, dir: &Path) -> Result<()> {
        let weights = super::checkpoint_weights(&self.policy, &self.opt);
        match &self.lora {
            Some(l) => lora::save_adapter(dir, l, &self.base_model_name(), &weights),
            None => io::save_weights(&self.policy.cfg, &weights, Some(&self.initial_dir), dir),
        }
    }

    /// What a saved adapter names as its base (PEFT's `base_model_name_or_path`).
    fn base_model_name(&self) -> String {
        self.initial_dir.display().to_string()
    }

    /// Saves the result (HF layout) as [`sft_checkpoint`]: no optimizer or trainer state, as
    /// the stage is never resumed. A LoRA stage saves the base with its adapters merged (the
    /// variants' initial policy and reference) and the adapters themselves in `adapter/`.
    fn save_sft_result(&self) -> Result<PathBuf> {
        let dir = sft_checkpoint(&self.run.path);
        let weights = super::checkpoint_weights(&self.policy, &self.opt);
        super::save_dir_atomic(&dir, |tmp| match &self.lora {
            Some(l) => {
                let merged = lora::fold(self.policy.weights(), l.scale(), &weights)?;
                io::save_weights(&self.policy.cfg, &merged, Some(&self.initial_dir), tmp)?;
                lora::save_adapter(&tmp.join("adapter"), l, &self.base_model_name(), &weights)
            }
            None => io::save_weights(&self.policy.cfg, &weights, Some(&self.initial_dir), tmp),
        })?;
        Ok(dir)
    }

    /// Applies the live fields of `new` (an edited config of this run's variant), all or
    /// nothing. Returns the changes made and the restart-only fields that differ and were
    /// ignored.
    pub fn apply(&mut self, new: &RunConfig) -> Result<(Vec<Change>, Vec<String>)> {
        let (merged, changes, ignored) = self.cfg.with_live_changes(new)?;
        self.cfg = merged;
        if changes
            .iter()
            .any(|c| c.field == "train.steps" || c.field == "train.epochs")
        {
            self.total_steps = self
                .cfg
                .train
                .total_steps(self.data.train.len())
                .max(self.step);
        }
        Ok((changes, ignored))
    }
}

/// The adapter `[model] adapter` gives, for the stage that trains from `[model] path`: the SFT
/// stage when there is one (the variants then start from its merged result), else each variant.
fn start_adapter<'a>(cfg: &'a RunConfig, stage: &Stage) -> Option<&'a Path> {
    match stage {
        Stage::Variant if cfg.sft.is_some() => None,
        _ => cfg.model.adapter.as_deref(),
    }
}

/// What `stage` optimizes: the SFT loss, or the variant's objective with its live settings.
fn objective_of(stage: &Stage, t: &TrainSettings) -> Objective {
    match stage {
        Stage::Sft(_) => Objective::single(Loss::Sft, t.beta, false),
        Stage::Variant => t.objective(),
    }
}

fn adam_config(t: &TrainSettings) -> AdamWConfig {
    AdamWConfig {
        lr: t.lr,
        beta1: t.adam_beta1,
        beta2: t.adam_beta2,
        eps: t.adam_eps,
        weight_decay: t.weight_decay,
    }
}

/// `old` with the live fields of `new` copied in (through their TOML form, so one function
/// serves every section); changed restart-only fields are listed in `ignored`.
#[cfg(test)]
mod tests {
    use super::*;

    fn sft() -> SftSection {
        SftSection {
            steps: 10,
            lr: 2e-3,
            batch_size: 4,
            warmup_ratio: 0.25,
            schedule: Schedule::Linear,
            weight_decay: 0.1,
            max_grad_norm: 0.5,
        }
    }

    #[test]
    fn the_sft_stage_optimizes_with_its_own_settings() {
        let train = TrainSettings {
            adam_beta1: 0.8,
            grad_accum: 3,
            warmup_steps: 7,
            ..Default::default()
        };
        let s = step_settings(&Stage::Sft(sft()), &train, 10);
        assert_eq!(
            s,
            StepSettings {
                adam: AdamWConfig {
                    lr: 2e-3,
                    weight_decay: 0.1,
                    ..Default::default()
                },
                schedule: Schedule::Linear,
                warmup: 3,
                batch_size: 4,
                grad_accum: 1,
                max_grad_norm: 0.5,
            }
        );
        assert!(objective_of(&Stage::Sft(sft()), &train).is_sft_only());
    }

    #[test]
    fn a_variant_optimizes_with_train_settings() {
        let train = TrainSettings {
            objective: crate::objective::LossList(vec![Loss::Simpo]),
            adam_beta1: 0.8,
            grad_accum: 3,
            warmup_steps: 7,
            ..Default::default()
        };
        let s = step_settings(&Stage::Variant, &train, 10);
        assert_eq!(s.adam, adam_config(&train));
        assert_eq!((s.warmup, s.batch_size, s.grad_accum), (7, 8, 3));
        assert_eq!(s.schedule, train.schedule);
        let obj = objective_of(&Stage::Variant, &train);
        assert_eq!((obj.primary(), obj.params.beta), (Loss::Simpo, train.beta));
    }

    #[test]
    fn the_sft_result_lives_in_its_run_directory() {
        assert_eq!(
            sft_checkpoint(Path::new("runs/sft-00ab")),
            Path::new("runs/sft-00ab/checkpoint")
        );
    }
}
