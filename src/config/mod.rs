//! The workspace configuration, `gaplab.toml`: schema, defaults, validation with file:line:column
//! errors, `[[variant]]` overrides, and which fields may change while a run trains.
//!
//! Every field is declared once, in a `section!` table that also says whether an edit can be
//! applied live (at the next step) or needs a restart; the same table generates the serde
//! struct, its defaults and the classification, so a new field cannot go unclassified.

pub mod locate;
pub mod range;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::{DataFormat, Fields, Format, LengthLimits};
use crate::event::Change;
use crate::model::lora::TargetModules;
use crate::model::{DeviceSpec, LoraConfig, Precision, ScratchSpec};
use crate::objective::tokens::PoetMode;
use crate::objective::{FDivergenceType, Loss, LossList, Objective, Params, Poet, TokenScheme};

/// Merges the `fields` of one section: live ones that changed are taken from `new` and
/// recorded, restart-only ones that changed are only named.
fn merge_live<T: Serialize + serde::de::DeserializeOwned>(
    section: &str,
    old: &T,
    new: &T,
    fields: &[(&str, Reload)],
    changes: &mut Vec<Change>,
    ignored: &mut Vec<String>,
) -> Result<T> {
    let mut o = toml::Value::try_from(old)?;
    let n = toml::Value::try_from(new)?;
    let (Some(ot), Some(nt)) = (o.as_table_mut(), n.as_table()) else {
        bail!("{section}: not a table");
    };
    for (field, reload) in fields {
        let (a, b) = (ot.get(*field).cloned(), nt.get(*field).cloned());
        if a == b {
            continue;
        }
        let show =
            |v: &Option<toml::Value>| v.as_ref().map_or("(unset)".to_string(), |v| v.to_string());
        let path = format!("{section}.{field}");
        match reload {
            Reload::Live => {
                changes.push(Change {
                    field: path,
                    old: show(&a),
                    new: show(&b),
                });
                match b {
                    Some(v) => ot.insert(field.to_string(), v),
                    None => ot.remove(*field),
                };
            }
            Reload::Restart => ignored.push(path),
        }
    }
    Ok(o.try_into()?)
}

/// Whether a changed field can be applied to a running variant or needs a new run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reload {
    Live,
    Restart,
}

/// Declares a config section: the struct (serde, defaults, unknown fields rejected) and its
/// `FIELDS` table of (name, reload class). With `overrides Name`, also the `[[variant]]` table
/// struct that may override any field, and `apply`.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $default:expr, $reload:ident; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            pub const FIELDS: &'static [(&'static str, Reload)] =
                &[ $( (stringify!($field), Reload::$reload), )* ];
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident overrides $over:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $default:expr, $reload:ident; )*
        }
    ) => {
        section! {
            $(#[$meta])*
            pub struct $name {
                $( $(#[$fmeta])* $field : $ty = $default, $reload; )*
            }
        }

        /// A `[[variant]]` table: a name and overrides of any training setting.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $over {
            pub name: String,
            $( #[serde(default, skip_serializing_if = "Option::is_none")] pub $field: Option<$ty>, )*
        }

        impl $over {
            /// Names of the fields this variant overrides.
            pub fn overridden(&self) -> Vec<&'static str> {
                let mut v = Vec::new();
                $( if self.$field.is_some() { v.push(stringify!($field)); } )*
                v
            }
        }

        impl $name {
            /// These settings with `v`'s overrides applied.
            pub fn with(&self, v: &$over) -> Self {
                let mut s = self.clone();
                $( if let Some(x) = &v.$field { s.$field = x.clone(); } )*
                s
            }
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

section! {
    /// `[model]`: a Hugging Face checkpoint folder (`path`) or a from-scratch architecture
    /// (`[model.scratch]`, which needs a `tokenizer` folder).
    pub struct ModelSection {
        path: Option<PathBuf> = None, Restart;
        scratch: Option<ScratchSpec> = None, Restart;
        tokenizer: Option<PathBuf> = None, Restart;
        /// A PEFT LoRA adapter folder to start from (e.g. an SFT LoRA), trained further: the
        /// run is a LoRA run with the adapter's rank, alpha and target modules.
        adapter: Option<PathBuf> = None, Restart;
    }
}

section! {
    /// `[lora]`: train LoRA adapters (PEFT's layout and initialisation) over the frozen base
    /// instead of every weight. Defaults are PEFT's `LoraConfig` defaults for Llama-family
    /// models.
    pub struct LoraSection {
        r: usize = 8, Restart;
        alpha: f64 = 8.0, Restart;
        dropout: f64 = 0.0, Restart;
        target_modules: TargetModules = TargetModules::List(vec!["q_proj".into(), "v_proj".into()]), Restart;
        use_rslora: bool = false, Restart;
    }
}

impl LoraSection {
    /// The adapter shape this section asks for (its values checked by `problems`).
    pub fn lora_config(&self) -> Result<LoraConfig> {
        let targets = self
            .target_modules
            .resolve()
            .map_err(|e| anyhow::anyhow!("lora.target_modules: {e}"))?;
        Ok(LoraConfig {
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            targets,
            use_rslora: self.use_rslora,
        })
    }

    fn problems(&self, out: &mut Vec<(String, String)>) {
        check(out, self.r >= 1, "lora.r", "expected a rank of at least 1");
        check(
            out,
            self.alpha > 0.0 && self.alpha.is_finite(),
            "lora.alpha",
            format!("expected a number > 0, got {}", self.alpha),
        );
        check(
            out,
            (0.0..1.0).contains(&self.dropout),
            "lora.dropout",
            format!("expected a probability in [0, 1), got {}", self.dropout),
        );
        if let Err(e) = self.target_modules.resolve() {
            out.push(("lora.target_modules".into(), e));
        }
    }
}

/// `[model.scratch]`: every field shapes the initial weights, so none applies live. (The model
/// layer owns the fields themselves: [`ScratchSpec`].)
pub const SCRATCH_FIELDS: &[(&str, Reload)] = &[
    ("arch", Reload::Restart),
    ("hidden_size", Reload::Restart),
    ("intermediate_size", Reload::Restart),
    ("num_hidden_layers", Reload::Restart),
    ("num_attention_heads", Reload::Restart),
    ("num_key_value_heads", Reload::Restart),
    ("max_position_embeddings", Reload::Restart),
    ("rope_theta", Reload::Restart),
    ("tie_word_embeddings", Reload::Restart),
    ("seed", Reload::Restart),
];

section! {
    /// `[data]`: preference pairs (JSONL or Parquet: standard strings or conversational
    /// message lists), their field names, the chat template of conversational data, and
    /// length limits.
    pub struct DataSection {
        /// A .jsonl or .parquet file, or a glob over shards (`data/train_prefs-*.parquet`),
        /// relative to the workspace.
        train: PathBuf = PathBuf::new(), Restart;
        eval: Option<PathBuf> = None, Restart;
        /// Without an eval file, hold out this many pairs from the end of the train file.
        eval_holdout: usize = 0, Restart;
        max_prompt_len: usize = 256, Restart;
        max_len: usize = 512, Restart;
        /// keep_end | keep_start: which part of a prompt longer than max_prompt_len is kept.
        prompt_truncation: crate::data::PromptTruncation = Default::default(), Restart;
        /// truncate | drop: a pair still longer than max_len once its prompt is cut has its
        /// responses cut, or is left out.
        overlong: crate::data::Overlong = Default::default(), Restart;
        /// auto | standard | conversational (auto: per file, from its first row).
        format: Format = Format::Auto, Restart;
        prompt_field: String = "prompt".into(), Restart;
        chosen_field: String = "chosen".into(), Restart;
        rejected_field: String = "rejected".into(), Restart;
        /// "" (the tokenizer's chat template), a .jinja file (relative to the workspace) or an
        /// inline template (text containing `{%`).
        chat_template: String = String::new(), Restart;
    }
}

impl DataSection {
    /// How to read the preference files: the format and the field names.
    pub fn data_format(&self) -> DataFormat {
        DataFormat {
            format: self.format,
            fields: Fields {
                prompt: self.prompt_field.clone(),
                chosen: self.chosen_field.clone(),
                rejected: self.rejected_field.clone(),
            },
        }
    }

    pub fn length_limits(&self) -> LengthLimits {
        LengthLimits {
            max_prompt_len: self.max_prompt_len,
            max_len: self.max_len,
            prompt_truncation: self.prompt_truncation,
            overlong: self.overlong,
        }
    }
}

section! {
    /// `[train]`: the objective and the optimisation; every `[[variant]]` may override any of
    /// these.
    pub struct TrainSettings overrides Variant {
        /// A loss name or a list of them (TRL's loss_type), see the README's Objectives.
        objective: LossList = LossList::default(), Restart;
        /// Weights of a list of losses (TRL's loss_weights); empty: 1 each.
        loss_weights: Vec<f64> = vec![], Live;
        /// Adds `sft` with this weight (TRL's RPO alpha).
        rpo_alpha: Option<f64> = None, Live;
        beta: f64 = 0.1, Live;
        /// SimPO's and AlphaPO's target margin (absolute, not gamma/beta: TRL's simpo_gamma).
        gamma: f64 = 1.0, Live;
        /// true/false, or "min" (= true), "ratio_k", "ratio_own", "fixed".
        poet: PoetMode = PoetMode::Off, Live;
        /// r of poet = "ratio_k" / "ratio_own", in (0, 1].
        poet_ratio: f64 = 0.5, Live;
        /// N of poet = "fixed".
        poet_tokens: usize = 32, Live;
        /// A response POET cuts still counts its end (EOS and what the template writes after it).
        keep_eos: bool = false, Live;
        /// exo_pair, robust, aot, aot_unpaired, simpo, cpo, alphapo: in [0, 0.5).
        label_smoothing: f64 = 0.0, Live;
        f_divergence_type: FDivergenceType = FDivergenceType::ReverseKl, Live;
        f_alpha_divergence_coef: f64 = 0.5, Live;
        /// LD-DPO: tokens past min(|y_w|, |y_l|) weigh this much, in [0, 1].
        ld_alpha: Option<f64> = None, Live;
        /// WPO weighting of each pair.
        use_weighting: bool = false, Live;
        discopop_tau: f64 = 0.05, Live;
        /// The NLL weight of cpo and slic.
        cpo_alpha: f64 = 1.0, Live;
        /// AlphaPO's reward shaping (alphapo needs it nonzero; cpo and simpo read it too).
        alpha: f64 = 0.0, Live;
        /// R-DPO: the margin loses rdpo_alpha · (n_w − n_l).
        rdpo_alpha: f64 = 0.0, Live;
        /// SamPO: the same number of tokens, sampled, from each response.
        sampo: bool = false, Live;
        /// Token t of a response weighs position_decay^t, in (0, 1].
        position_decay: Option<f64> = None, Live;
        lr: f64 = 5e-5, Live;
        schedule: Schedule = Schedule::Cosine, Live;
        warmup_ratio: f64 = 0.1, Live;
        /// Overrides warmup_ratio when > 0.
        warmup_steps: usize = 0, Live;
        weight_decay: f64 = 0.0, Live;
        adam_beta1: f64 = 0.9, Live;
        adam_beta2: f64 = 0.999, Live;
        adam_eps: f64 = 1e-8, Live;
        /// Pairs per micro-batch.
        batch_size: usize = 8, Restart;
        grad_accum: usize = 1, Restart;
        /// Global gradient-norm clipping; 0 turns it off.
        max_grad_norm: f64 = 1.0, Live;
        /// Optimizer steps; 0 means `epochs` over the train set.
        steps: usize = 0, Live;
        epochs: f64 = 1.0, Restart;
        seed: u64 = 0, Restart;
        /// "auto" (the first CUDA device when built with `--features cuda`, else the CPU), "cpu"
        /// or "cuda:N".
        device: DeviceSpec = DeviceSpec::Cpu, Restart;
        /// Weights and activations: "f32", "bf16" or "f16". Optimizer state (with f32 master
        /// weights) and the loss math stay in f32 whatever this is.
        dtype: Precision = Precision::F32, Restart;
        /// Refuse to start when the memory estimate exceeds what the device has free.
        memory_check: bool = true, Restart;
        /// Cap for the memory estimate in GiB (0: the device's free memory), e.g. to leave
        /// room for others on a shared GPU.
        max_memory_gb: f64 = 0.0, Restart;
        /// Score the train set with the reference once (cached on disk) instead of every step.
        precompute_ref: bool = false, Restart;
        /// Keep only each decoder layer's input in the forward pass and recompute the layer
        /// in backward (Hugging Face's gradient checkpointing): the same results for about a
        /// third more compute and a fraction of the activation memory.
        gradient_checkpointing: bool = false, Restart;
        /// Stop with an error after this many consecutive non-finite steps.
        max_bad_steps: usize = 3, Live;
    }
}

impl TrainSettings {
    /// The objective these settings describe (`eos` left for the trainer, which knows the
    /// tokenizer).
    pub fn objective(&self) -> Objective {
        let mut losses = self.objective.0.clone();
        let mut weights: Vec<f64> = if self.loss_weights.is_empty() {
            vec![1.0; losses.len()]
        } else {
            self.loss_weights.clone()
        };
        if let Some(a) = self.rpo_alpha {
            losses.push(Loss::Sft);
            weights.push(a);
        }
        Objective {
            mixture: losses.into_iter().zip(weights).collect(),
            params: Params {
                beta: self.beta,
                gamma: self.gamma,
                label_smoothing: self.label_smoothing,
                f_divergence: self
                    .f_divergence_type
                    .with_coef(self.f_alpha_divergence_coef),
                discopop_tau: self.discopop_tau,
                cpo_alpha: self.cpo_alpha,
                alpha: self.alpha,
                rdpo_alpha: self.rdpo_alpha,
            },
            tokens: TokenScheme {
                poet: self.poet_rule(),
                keep_eos: self.keep_eos,
                ld_alpha: self.ld_alpha,
                sampo_seed: self.sampo.then_some(self.seed),
                position_decay: self.position_decay,
            },
            use_weighting: self.use_weighting,
            eos: None,
        }
    }

    /// The POET rule `poet`, `poet_ratio` and `poet_tokens` describe.
    pub fn poet_rule(&self) -> Poet {
        self.poet.rule(self.poet_ratio, self.poet_tokens)
    }

    /// Settings that contradict each other or the objective, as (field, message).
    pub fn objective_problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let losses = &self.objective.0;
        let names = self.objective.to_string();
        if losses.len() > 1 {
            if let Some(l) = losses.iter().find(|l| l.is_reference_free()) {
                out.push((
                    "objective",
                    format!("{l} stands alone: a list mixes TRL DPOTrainer losses (got {names})"),
                ));
            }
        }
        if !self.loss_weights.is_empty() && self.loss_weights.len() != losses.len() {
            out.push((
                "loss_weights",
                format!(
                    "expected {} weights, one per loss of objective ({names}), got {}",
                    losses.len(),
                    self.loss_weights.len()
                ),
            ));
        }
        if let Some(w) = self.loss_weights.iter().find(|w| !w.is_finite()) {
            out.push(("loss_weights", format!("expected finite weights, got {w}")));
        }
        if let Some(a) = self.rpo_alpha.filter(|a| !(*a >= 0.0 && a.is_finite())) {
            out.push(("rpo_alpha", format!("expected a number >= 0, got {a}")));
        }
        let eps = self.label_smoothing;
        if !(0.0..0.5).contains(&eps) {
            out.push((
                "label_smoothing",
                format!("expected a number in [0, 0.5), got {eps}"),
            ));
        } else if eps == 0.0 && losses.contains(&Loss::ExoPair) {
            out.push((
                "label_smoothing",
                "exo_pair needs label_smoothing > 0 (the EXO paper uses 1e-3)".into(),
            ));
        }
        if self.f_divergence_type != FDivergenceType::ReverseKl {
            if let Some(l) = losses.iter().find(|l| !l.takes_f_divergence()) {
                out.push((
                    "f_divergence_type",
                    format!("{l} reads the log-ratios directly; f-divergences other than reverse_kl apply to sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop and sft"),
                ));
            }
        }
        if !self.f_alpha_divergence_coef.is_finite() {
            out.push(("f_alpha_divergence_coef", "expected a finite number".into()));
        }
        if let Some(a) = self.ld_alpha {
            if !(0.0..=1.0).contains(&a) {
                out.push(("ld_alpha", format!("expected a number in [0, 1], got {a}")));
            } else if self.poet != PoetMode::Off {
                out.push((
                    "ld_alpha",
                    "ld_alpha and poet both weigh the tail (ld_alpha = 0 is POET); choose one"
                        .into(),
                ));
            }
        }
        if self.use_weighting {
            if let Some(l) = losses
                .iter()
                .find(|l| l.sorts_batch() || l.is_reference_free())
            {
                out.push((
                    "use_weighting",
                    format!(
                        "WPO weighting is for DPOTrainer losses that keep pairs together, not {l}"
                    ),
                ));
            }
        }
        if !(self.discopop_tau > 0.0 && self.discopop_tau.is_finite()) {
            out.push((
                "discopop_tau",
                format!("expected a number > 0, got {}", self.discopop_tau),
            ));
        }
        if !self.cpo_alpha.is_finite() || self.cpo_alpha < 0.0 {
            out.push((
                "cpo_alpha",
                format!("expected a number >= 0, got {}", self.cpo_alpha),
            ));
        }
        if !self.alpha.is_finite() {
            out.push(("alpha", "expected a finite number".into()));
        } else if self.alpha == 0.0 && losses.contains(&Loss::Alphapo) {
            out.push((
                "alpha",
                "alphapo needs alpha != 0 (the AlphaPO paper uses 0.25)".into(),
            ));
        }
        if !self.rdpo_alpha.is_finite() {
            out.push(("rdpo_alpha", "expected a finite number".into()));
        } else if self.rdpo_alpha != 0.0 && !losses.iter().any(|l| l.takes_length_regulariser()) {
            out.push((
                "rdpo_alpha",
                format!("R-DPO's length term shifts the margin of sigmoid, hinge, exo_pair, robust or discopop; {names} has none"),
            ));
        }
        if matches!(self.poet, PoetMode::RatioK | PoetMode::RatioOwn)
            && !(self.poet_ratio > 0.0 && self.poet_ratio <= 1.0)
        {
            out.push((
                "poet_ratio",
                format!("expected a number in (0, 1], got {}", self.poet_ratio),
            ));
        }
        if self.poet == PoetMode::Fixed && self.poet_tokens == 0 {
            out.push(("poet_tokens", "expected at least 1 token".into()));
        }
        if let Some(d) = self.position_decay.filter(|d| !(*d > 0.0 && *d <= 1.0)) {
            out.push((
                "position_decay",
                format!("expected a number in (0, 1], got {d}"),
            ));
        }
        if self.keep_eos && self.poet == PoetMode::Off {
            out.push((
                "keep_eos",
                "keep_eos keeps the end of a response POET cuts; set poet".into(),
            ));
        }
        out
    }

    /// Settings that are valid but probably not meant.
    pub fn objective_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.batch_size == 1 {
            if let Some(l) = self.objective.0.iter().find(|l| l.sorts_batch()) {
                out.push(format!(
                    "{l} sorts within the batch; with batch_size = 1 nothing is sorted and it is a plain logistic loss"
                ));
            }
        }
        out
    }

    /// Pairs per optimizer step (micro-batch times accumulation).
    pub fn pairs_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }

    /// Optimizer steps of a run over `train_pairs` pairs: `steps`, or `epochs` over the data.
    pub fn total_steps(&self, train_pairs: usize) -> usize {
        if self.steps > 0 {
            self.steps
        } else {
            ((self.epochs * train_pairs as f64) / self.pairs_per_step() as f64).ceil() as usize
        }
    }
}

section! {
    /// `[eval]`: held-out metrics and prefix diagnostics.
    pub struct EvalSection {
        /// Steps between evaluations; 0 evaluates only at the start and the end.
        interval: usize = 0, Live;
        /// Eval pairs used (the first N of the eval set).
        pairs: usize = 64, Live;
        batch_size: usize = 8, Live;
        /// Prefix lengths j of the prefix curves; empty means 1, 2, 4, ... up to the longest k.
        prefix_lengths: Vec<usize> = vec![], Live;
        /// Eval pairs whose per-token reward differences are logged (heatmap rows).
        heatmap_pairs: usize = 8, Live;
        /// Generation health (`eval_gen/*`): length, stop share, distinct-n, repetition and
        /// KL(policy || reference) of the policy's generations for the first `judge.prompts`
        /// eval prompts (generated as `[judge]` says), judge or not.
        health: bool = true, Live;
        /// Response positions of the per-position KL profile.
        kl_positions: usize = 32, Live;
        /// Fixed eval pairs recorded token by token for the token view (their tokens, log pi,
        /// log pi_ref and top-5 alternatives); 0 records none.
        token_view_pairs: usize = 4, Live;
        /// Response tokens recorded per response of a token-view pair (bounds the records).
        token_view_tokens: usize = 64, Live;
    }
}

section! {
    /// `[sample]`: generations for fixed prompts, from the policy and the reference.
    pub struct SampleSection {
        /// Steps between samplings; 0 samples only at the start and the end.
        interval: usize = 0, Live;
        prompts: Vec<String> = vec![], Live;
        /// Without `prompts`, use the prompts of the first N eval pairs.
        from_eval: usize = 2, Live;
        max_new_tokens: usize = 64, Live;
        temperature: f64 = 0.0, Live;
        top_p: f64 = 1.0, Live;
    }
}

section! {
    /// `[checkpoint]`: how often to save, how many to keep.
    pub struct CheckpointSection {
        /// Steps between checkpoints; 0 saves only at the end.
        interval: usize = 0, Live;
        keep: usize = 2, Live;
    }
}

section! {
    /// `[sft]`: a supervised stage on the chosen responses before preference training; its
    /// result is the initial policy and the reference of every variant.
    pub struct SftSection {
        steps: usize = 0, Restart;
        lr: f64 = 1e-3, Restart;
        batch_size: usize = 8, Restart;
        warmup_ratio: f64 = 0.1, Restart;
        schedule: Schedule = Schedule::Cosine, Restart;
        weight_decay: f64 = 0.0, Restart;
        max_grad_norm: f64 = 1.0, Restart;
    }
}

/// `judge.task`: which programmatic judge scores generations at each eval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum JudgeTask {
    /// No judge.
    #[default]
    #[serde(rename = "")]
    None,
    /// The sort task of `gaplab demo-data`.
    #[serde(rename = "sort")]
    Sort,
}

impl fmt::Display for JudgeTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "",
            Self::Sort => "sort",
        })
    }
}

/// `ui.color`: the colour depth of the dashboard (auto: from `COLORTERM`/`TERM`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColorSetting {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "truecolor", alias = "24bit")]
    TrueColor,
    #[serde(rename = "256")]
    C256,
    #[serde(rename = "16")]
    C16,
    #[serde(rename = "none", alias = "mono")]
    None,
}

/// `ui.markers`: how chart points are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Markers {
    #[default]
    Auto,
    Braille,
    /// For terminals or fonts without Braille.
    Dot,
}

section! {
    /// `[judge]`: a programmatic judge of the policy's generations for held-out eval prompts,
    /// run at every evaluation next to the implicit-reward metrics (for synthetic tasks whose
    /// answers a program can check, such as the demo's).
    pub struct JudgeSection {
        /// "" (no judge) or "sort" (the demo task of `gaplab demo-data`).
        task: JudgeTask = JudgeTask::None, Restart;
        /// Eval prompts judged (the first N of the eval set).
        prompts: usize = 64, Live;
        /// Sampled generations per prompt judged besides the greedy one (0: greedy only).
        samples: usize = 1, Live;
        /// Temperature of the sampled generations.
        temperature: f64 = 1.0, Live;
        max_new_tokens: usize = 32, Live;
        /// A reward-model folder (a Hugging Face *ForSequenceClassification, e.g. written by
        /// `gaplab train-rm`), relative to the workspace, that scores the same generations in
        /// full and at `prefix_lengths` (eval_judge/score or rm_score, prefix_score@k). Set with
        /// `task`, both judge.
        reward_model: Option<PathBuf> = None, Restart;
        /// Response prefix lengths k (policy tokens) the reward model scores besides the full
        /// response: positive and increasing.
        prefix_lengths: Vec<usize> = vec![1, 2, 4, 8, 16], Live;
        /// Sequences per reward-model forward pass.
        batch_size: usize = 16, Live;
    }
}

section! {
    /// `[alerts]`: what the run tells a researcher about, from its own records (see
    /// `train::alerts`). Each kind fires once and re-arms when its condition clears.
    pub struct AlertsSection {
        enabled: bool = true, Live;
        /// Evals a trend is read over (the latest `window` evals; it must move the same way at
        /// each of them).
        window: usize = 3, Live;
        /// over_optimization: the judge's score must fall by at least this over the window (on
        /// the judge's scale: the sort judge's is 0..1, a reward model's its own).
        judge_drop: f64 = 0.02, Live;
        /// length_exploitation: `eval_gen/length` up by this fraction of the first eval's.
        length_growth: f64 = 0.25, Live;
        /// degeneration: repetition or stop-failure share at this multiple of the first
        /// eval's ...
        degeneration_factor: f64 = 2.0, Live;
        /// ... and at least this much above it (so 0.00 -> 0.02 is not a doubling).
        degeneration_floor: f64 = 0.05, Live;
        /// kl_blowup: `eval_gen/kl` (nats per token) above this ...
        kl_max: f64 = 5.0, Live;
        /// ... or this many times the previous eval's (when that was at least 0.05).
        kl_growth: f64 = 4.0, Live;
        /// skipped_steps: this many skipped (non-finite) steps ...
        skipped_steps: usize = 3, Live;
        /// ... within this many steps.
        skipped_window: usize = 50, Live;
    }
}

section! {
    /// `[log]`: what a run writes besides its own records (events.jsonl and the TRL-shaped
    /// files, always written).
    pub struct LogSection {
        /// TensorBoard event files under `RUN_DIR/tb/` as metrics arrive (TRL's tags). Taken
        /// when a run starts or resumes: its writer opens the file then.
        tensorboard: bool = false, Restart;
    }
}

section! {
    /// `[ui]`: the dashboard.
    pub struct UiSection {
        /// A theme name (built-in or themes/NAME.toml) or a path to a theme file.
        theme: String = "default".into(), Live;
        /// Initial chart smoothing in [0, 1).
        smoothing: f64 = 0.6, Live;
        /// Highest redraw rate.
        refresh_hz: f64 = 15.0, Live;
        /// auto | truecolor | 256 | 16 | none
        color: ColorSetting = ColorSetting::Auto, Live;
        /// auto | braille | dot (for terminals or fonts without Braille)
        markers: Markers = Markers::Auto, Live;
    }
}

/// The whole `gaplab.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainSettings,
    #[serde(default)]
    pub eval: EvalSection,
    #[serde(default)]
    pub sample: SampleSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft: Option<SftSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSection>,
    #[serde(default)]
    pub judge: JudgeSection,
    #[serde(default)]
    pub alerts: AlertsSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub ui: UiSection,
    #[serde(default, rename = "variant", skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
}

/// Everything one variant's run is trained with: the workspace config with the variant's
/// overrides applied and paths made absolute. Saved as the run directory's `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub variant: String,
    pub workspace: PathBuf,
    pub model: ModelSection,
    pub data: DataSection,
    pub train: TrainSettings,
    pub eval: EvalSection,
    pub sample: SampleSection,
    pub checkpoint: CheckpointSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft: Option<SftSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSection>,
    #[serde(default)]
    pub judge: JudgeSection,
    #[serde(default)]
    pub alerts: AlertsSection,
    /// Absent from the config.toml of runs written before `[log]` existed.
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub ui: UiSection,
}

impl RunConfig {
    /// The adapters' shape of a LoRA run: `[lora]`, else that of the adapter `[model] adapter`
    /// starts from; None for full fine-tuning. Both present must agree on the shape.
    pub fn lora_settings(&self) -> Result<Option<LoraConfig>> {
        let cfg = self;
        let section = cfg.lora.as_ref().map(|l| l.lora_config()).transpose()?;
        let adapter = match &cfg.model.adapter {
            Some(dir) => Some(crate::model::lora::adapter_config(dir)?),
            None => None,
        };
        match (section, adapter) {
            (Some(s), Some(a)) => {
                let shape = |l: &LoraConfig| (l.r, l.alpha, l.targets.clone(), l.use_rslora);
                if shape(&s) != shape(&a) {
                    bail!(
                    "[lora] (r = {}, alpha = {}, targets {:?}, use_rslora = {}) differs from the adapter it starts from, {} (r = {}, alpha = {}, targets {:?}, use_rslora = {}): remove [lora] or make them agree",
                    s.r, s.alpha, names(&s), s.use_rslora,
                    cfg.model.adapter.as_deref().unwrap_or(Path::new("")).display(),
                    a.r, a.alpha, names(&a), a.use_rslora
                );
                }
                Ok(Some(LoraConfig {
                    dropout: s.dropout,
                    ..a
                }))
            }
            (s, a) => Ok(s.or(a)),
        }
    }

    /// This config as the `Started` event records it.
    pub fn record(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The restart-only settings that differ between this config and `new` (an edited config
    /// of the same variant), with both values: what a running or resumed run cannot take.
    pub fn restart_changes(&self, new: &RunConfig) -> Result<Vec<Change>> {
        let (_, _, ignored) = self.with_live_changes(new)?;
        let (a, b) = (toml::Value::try_from(self)?, toml::Value::try_from(new)?);
        let show = |v: &toml::Value, path: &str| match path.split('.').try_fold(v, |v, k| v.get(k))
        {
            None => "(unset)".to_string(),
            Some(toml::Value::Table(_)) => "(set)".to_string(),
            Some(x) => x.to_string(),
        };
        Ok(ignored
            .into_iter()
            .map(|field| Change {
                old: show(&a, &field),
                new: show(&b, &field),
                field,
            })
            .collect())
    }

    /// This config with the live fields of `new` (an edited config of the same variant)
    /// applied: the merged config, the changes made, and the restart-only fields that differ
    /// (ignored). The one place that knows which sections a running variant takes edits from.
    pub fn with_live_changes(
        &self,
        new: &RunConfig,
    ) -> Result<(RunConfig, Vec<Change>, Vec<String>)> {
        let mut changes = Vec::new();
        let mut ignored = Vec::new();
        let (c, i) = (&mut changes, &mut ignored);
        let cur = self;
        let train = merge_live("train", &cur.train, &new.train, TrainSettings::FIELDS, c, i)?;
        let eval = merge_live("eval", &cur.eval, &new.eval, EvalSection::FIELDS, c, i)?;
        let sample = merge_live(
            "sample",
            &cur.sample,
            &new.sample,
            SampleSection::FIELDS,
            c,
            i,
        )?;
        let checkpoint = merge_live(
            "checkpoint",
            &cur.checkpoint,
            &new.checkpoint,
            CheckpointSection::FIELDS,
            c,
            i,
        )?;
        let judge = merge_live("judge", &cur.judge, &new.judge, JudgeSection::FIELDS, c, i)?;
        let alerts = merge_live(
            "alerts",
            &cur.alerts,
            &new.alerts,
            AlertsSection::FIELDS,
            c,
            i,
        )?;
        let ui = merge_live("ui", &cur.ui, &new.ui, UiSection::FIELDS, c, i)?;
        // Restart-only sections: merged only to name the fields that changed.
        merge_live("model", &cur.model, &new.model, ModelSection::FIELDS, c, i)?;
        merge_live("data", &cur.data, &new.data, DataSection::FIELDS, c, i)?;
        merge_live("log", &cur.log, &new.log, LogSection::FIELDS, c, i)?;
        match (&cur.sft, &new.sft) {
            (Some(a), Some(b)) => {
                merge_live("sft", a, b, SftSection::FIELDS, c, i)?;
            }
            (a, b) if a != b => i.push("sft".into()),
            _ => {}
        }
        match (&cur.lora, &new.lora) {
            (Some(a), Some(b)) => {
                merge_live("lora", a, b, LoraSection::FIELDS, c, i)?;
            }
            (a, b) if a != b => i.push("lora".into()),
            _ => {}
        }
        let mut cfg = self.clone();
        (cfg.train, cfg.eval, cfg.sample, cfg.checkpoint) = (train, eval, sample, checkpoint);
        (cfg.judge, cfg.ui) = (judge, ui);
        cfg.alerts = alerts;
        Ok((cfg, changes, ignored))
    }
}

/// A config error that points at the place to edit.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// Field path, e.g. `train.beta` or `variant[1].poet`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The text of a config file read as bytes. Bytes that are not UTF-8 (a file saved in another
/// encoding, a torn write) are refused at the line and column of the first one, like any other
/// error of the file.
pub fn decode(file: &Path, bytes: Vec<u8>) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let text = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        let (line, col) = locate::line_col(text, valid);
        let byte = bytes.get(valid).copied().unwrap_or_default();
        ConfigError {
            file: file.to_path_buf(),
            line,
            col,
            path: String::new(),
            message: format!("not UTF-8 text (byte 0x{byte:02x}): save the file as UTF-8"),
        }
    })
}

/// A loaded and validated workspace.
#[derive(Clone, Debug, PartialEq)]
pub struct Workspace {
    pub dir: PathBuf,
    pub file: PathBuf,
    pub text: String,
    pub config: WorkspaceConfig,
}

pub const FILE_NAME: &str = "gaplab.toml";

impl Workspace {
    /// Loads `dir/gaplab.toml` (or the .toml file itself).
    pub fn load(path: &Path) -> Result<Self> {
        let (dir, file) = if path.extension().is_some_and(|e| e == "toml") {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                path.to_path_buf(),
            )
        } else {
            (path.to_path_buf(), path.join(FILE_NAME))
        };
        if !file.exists() {
            anyhow::bail!(
                "{}: no {FILE_NAME} (create one with `gaplab init {}`)",
                dir.display(),
                dir.display()
            );
        }
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let text = decode(&file, bytes)?;
        let mut ws = Self::parse(&dir, &file, &text)?;
        // Resolved paths are absolute: run directories and checkpoints outlive the shell's cwd.
        ws.dir = normalize(&std::path::absolute(&dir).unwrap_or(dir));
        Ok(ws)
    }

    /// Parses and validates the text of `file` (the whole document or nothing).
    pub fn parse(dir: &Path, file: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: WorkspaceConfig = toml::from_str(text).map_err(|e| {
            let site = locate::error_site(&e, text);
            let (line, col) = site.at.unwrap_or((1, 1));
            ConfigError {
                file: file.to_path_buf(),
                line,
                col,
                path: site.path,
                message: site.message,
            }
        })?;
        let ws = Self {
            dir: dir.to_path_buf(),
            file: file.to_path_buf(),
            text: text.to_string(),
            config,
        };
        if let Some((path, message)) = ws.config.problems().into_iter().next() {
            return Err(ws.error_at(&path, message));
        }
        Ok(ws)
    }

    /// An error located at the field `path` (the table holding it when the field is absent).
    pub fn error_at(&self, path: &str, message: String) -> ConfigError {
        let mut segs = locate::parse_path(path);
        let mut span = None;
        while !segs.is_empty() {
            if let Some(s) = locate::span_of(&self.text, &segs) {
                span = Some(s);
                break;
            }
            segs.pop();
        }
        let (line, col) = span.map_or((1, 1), |s| locate::line_col(&self.text, s.start));
        ConfigError {
            file: self.file.clone(),
            line,
            col,
            path: path.to_string(),
            message,
        }
    }

    /// Variant names in the order `gaplab train` runs them.
    pub fn variant_names(&self) -> Vec<String> {
        if self.config.variants.is_empty() {
            vec![default_variant_name(&self.config.train)]
        } else {
            self.config
                .variants
                .iter()
                .map(|v| v.name.clone())
                .collect()
        }
    }

    /// The resolved config of one variant.
    pub fn run_config(&self, variant: &str) -> Result<RunConfig> {
        let train = if self.config.variants.is_empty() {
            anyhow::ensure!(
                variant == default_variant_name(&self.config.train),
                "{}: no variant named \"{variant}\" (variants: {})",
                self.file.display(),
                self.variant_names().join(", ")
            );
            self.config.train.clone()
        } else {
            let v = self
                .config
                .variants
                .iter()
                .find(|v| v.name == variant)
                .with_context(|| {
                    format!(
                        "{}: no variant named \"{variant}\" (variants: {})",
                        self.file.display(),
                        self.variant_names().join(", ")
                    )
                })?;
            self.config.train.with(v)
        };
        let abs = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                normalize(&self.dir.join(p))
            }
        };
        let mut model = self.config.model.clone();
        model.path = model.path.as_deref().map(abs);
        model.tokenizer = model.tokenizer.as_deref().map(abs);
        model.adapter = model.adapter.as_deref().map(abs);
        let mut data = self.config.data.clone();
        data.train = abs(&data.train);
        data.eval = data.eval.as_deref().map(abs);
        let mut judge = self.config.judge.clone();
        judge.reward_model = judge.reward_model.as_deref().map(abs);
        if let crate::data::chat::TemplateSetting::File(p) =
            crate::data::chat::TemplateSetting::parse(&data.chat_template, &self.dir)
        {
            data.chat_template = normalize(&p).display().to_string();
        }
        Ok(RunConfig {
            variant: variant.to_string(),
            workspace: self.dir.clone(),
            model,
            data,
            train,
            eval: self.config.eval.clone(),
            sample: self.config.sample.clone(),
            checkpoint: self.config.checkpoint.clone(),
            sft: self.config.sft.clone(),
            lora: self.config.lora.clone(),
            judge,
            alerts: self.config.alerts.clone(),
            log: self.config.log.clone(),
            ui: self.config.ui.clone(),
        })
    }
}

/// Module names of an adapter's targets, for messages.
fn names(l: &LoraConfig) -> Vec<&'static str> {
    l.targets.iter().map(|m| m.name()).collect()
}

/// `a/b/../c` -> `a/c`, without touching the file system.
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn default_variant_name(t: &TrainSettings) -> String {
    // DPO keeps the name the paper and earlier runs give it.
    let loss = match t.objective.0.as_slice() {
        [Loss::Sigmoid] => "dpo".to_string(),
        _ => t.objective.to_string(),
    };
    match t.poet_rule().label() {
        Some(p) => format!("{loss}-{p}"),
        None => loss,
    }
}

fn check(
    out: &mut Vec<(String, String)>,
    ok: bool,
    path: impl Into<String>,
    msg: impl Into<String>,
) {
    if !ok {
        out.push((path.into(), msg.into()));
    }
}

impl TrainSettings {
    /// Out-of-range values, as (field, message); `prefix` is "train" or "variant[i]".
    pub fn problems(&self, prefix: &str, only: Option<&[&str]>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let p = |f: &str| format!("{prefix}.{f}");
        let mut c = |ok: bool, f: &str, m: String| {
            if only.is_none_or(|o| o.contains(&f)) {
                check(&mut out, ok, p(f), m)
            }
        };
        if let Err(m) = range::beta(self.beta) {
            c(false, "beta", m);
        }
        if let Err(m) = range::gamma(self.gamma) {
            c(false, "gamma", m);
        }
        c(
            self.lr > 0.0 && self.lr.is_finite(),
            "lr",
            format!("expected a number > 0, got {}", self.lr),
        );
        c(
            (0.0..1.0).contains(&self.warmup_ratio),
            "warmup_ratio",
            format!("expected a number in [0, 1), got {}", self.warmup_ratio),
        );
        c(
            self.weight_decay >= 0.0,
            "weight_decay",
            format!("expected a number >= 0, got {}", self.weight_decay),
        );
        c(
            (0.0..1.0).contains(&self.adam_beta1),
            "adam_beta1",
            format!("expected a number in [0, 1), got {}", self.adam_beta1),
        );
        c(
            (0.0..1.0).contains(&self.adam_beta2),
            "adam_beta2",
            format!("expected a number in [0, 1), got {}", self.adam_beta2),
        );
        c(
            self.adam_eps > 0.0,
            "adam_eps",
            format!("expected a number > 0, got {}", self.adam_eps),
        );
        c(
            self.batch_size >= 1,
            "batch_size",
            "expected at least 1 pair".into(),
        );
        c(
            self.grad_accum >= 1,
            "grad_accum",
            "expected at least 1".into(),
        );
        c(
            self.max_grad_norm >= 0.0,
            "max_grad_norm",
            format!(
                "expected a number >= 0 (0 turns clipping off), got {}",
                self.max_grad_norm
            ),
        );
        c(
            self.epochs > 0.0 && self.epochs.is_finite(),
            "epochs",
            format!("expected a number > 0, got {}", self.epochs),
        );
        c(
            self.max_memory_gb >= 0.0 && self.max_memory_gb.is_finite(),
            "max_memory_gb",
            format!(
                "expected a number >= 0 (0: the device's free memory), got {}",
                self.max_memory_gb
            ),
        );
        c(
            self.max_bad_steps >= 1,
            "max_bad_steps",
            "expected at least 1".into(),
        );
        // A workspace trains SFT as a stage; `gaplab eval` scores `sft` alone on pairs.
        c(
            !(self.objective.0 == [Loss::Sft] && self.rpo_alpha.is_none()),
            "objective",
            "sft alone is a stage ([sft]); in [train] it mixes with a preference loss, e.g. [\"sigmoid\", \"sft\"]".into(),
        );
        for (f, m) in self.objective_problems() {
            c(false, f, m);
        }
        out
    }
}

impl WorkspaceConfig {
    /// Every out-of-range or inconsistent value, as (field path, message), section by section.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.judge.problems(&mut out);
        self.alerts.problems(&mut out);
        self.model.problems(&mut out);
        self.data.problems(&mut out);
        out.extend(self.train.problems("train", None));
        variant_problems(&self.train, &self.variants, &mut out);
        self.eval.problems(&mut out);
        self.sample.problems(&mut out);
        self.checkpoint.problems(&mut out);
        self.ui.problems(&mut out);
        if let Some(s) = &self.sft {
            s.problems(&mut out);
        }
        if let Some(l) = &self.lora {
            l.problems(&mut out);
        }
        out
    }
}

impl JudgeSection {
    fn problems(&self, out: &mut Vec<(String, String)>) {
        check(
            out,
            self.temperature > 0.0 && self.temperature.is_finite(),
            "judge.temperature",
            format!("expected a number > 0, got {}", self.temperature),
        );
        check(
            out,
            self.max_new_tokens >= 1,
            "judge.max_new_tokens",
            "expected at least 1",
        );
        if let Err(e) = crate::reward::check_k_list(&self.prefix_lengths, "judge.prefix_lengths") {
            // The message names the field itself; the field path says where.
            let m = e.to_string();
            let m = m
                .strip_prefix("judge.prefix_lengths: ")
                .unwrap_or(&m)
                .to_string();
            check(out, false, "judge.prefix_lengths", m);
        }
        check(
            out,
            self.batch_size >= 1,
            "judge.batch_size",
            "expected at least 1",
        );
    }
}

impl AlertsSection {
    fn problems(&self, out: &mut Vec<(String, String)>) {
        check(
            out,
            self.window >= 2,
            "alerts.window",
            "expected at least 2 evals",
        );
        let positive = |out: &mut Vec<(String, String)>, v: f64, field: &str| {
            check(
                out,
                v > 0.0 && v.is_finite(),
                field,
                format!("expected a number > 0, got {v}"),
            )
        };
        positive(out, self.length_growth, "alerts.length_growth");
        positive(out, self.kl_max, "alerts.kl_max");
        check(
            out,
            self.judge_drop >= 0.0 && self.judge_drop.is_finite(),
            "alerts.judge_drop",
            format!("expected a number >= 0, got {}", self.judge_drop),
        );
        check(
            out,
            self.degeneration_factor > 1.0 && self.degeneration_factor.is_finite(),
            "alerts.degeneration_factor",
            format!("expected a number > 1, got {}", self.degeneration_factor),
        );
        check(
            out,
            (0.0..1.0).contains(&self.degeneration_floor),
            "alerts.degeneration_floor",
            format!(
                "expected a share in [0, 1), got {}",
                self.degeneration_floor
            ),
        );
        check(
            out,
            self.kl_growth > 1.0 && self.kl_growth.is_finite(),
            "alerts.kl_growth",
            format!("expected a number > 1, got {}", self.kl_growth),
        );
        check(
            out,
            self.skipped_steps >= 1,
            "alerts.skipped_steps",
            "expected at least 1",
        );
        check(
            out,
            self.skipped_window >= 1,
            "alerts.skipped_window",
            "expected at least 1",
        );
    }
}

impl ModelSection {
    fn problems(&self, out: &mut Vec<(String, String)>) {
        check(
            out,
            self.path.is_some() != self.scratch.is_some(),
            "model",
            "expected exactly one of `path` (a checkpoint folder) or `[model.scratch]`",
        );
        if let Some(s) = &self.scratch {
            check(
                out,
                self.tokenizer.is_some(),
                "model.tokenizer",
                "a scratch model needs `tokenizer` (a folder with tokenizer.json)",
            );
            scratch_problems(s, out);
        }
        check(
            out,
            self.adapter.is_none() || self.path.is_some(),
            "model.adapter",
            "an adapter trains on the base it was made for: set `path` to that checkpoint folder",
        );
    }
}

/// `[model.scratch]`: a shape the decoder can be built with.
fn scratch_problems(s: &ScratchSpec, out: &mut Vec<(String, String)>) {
    for (f, v) in [
        ("hidden_size", s.hidden_size),
        ("intermediate_size", s.intermediate_size),
        ("num_hidden_layers", s.num_hidden_layers),
        ("num_attention_heads", s.num_attention_heads),
        ("num_key_value_heads", s.num_key_value_heads),
        ("max_position_embeddings", s.max_position_embeddings),
    ] {
        check(
            out,
            v >= 1,
            format!("model.scratch.{f}"),
            "expected at least 1",
        );
    }
    check(
        out,
        s.num_attention_heads >= 1
            && s.hidden_size.is_multiple_of(s.num_attention_heads)
            && (s.hidden_size / s.num_attention_heads).is_multiple_of(2),
        "model.scratch.num_attention_heads",
        "hidden_size must be a multiple of num_attention_heads with an even head size",
    );
    check(
        out,
        s.num_key_value_heads >= 1 && s.num_attention_heads.is_multiple_of(s.num_key_value_heads),
        "model.scratch.num_key_value_heads",
        "num_attention_heads must be a multiple of num_key_value_heads",
    );
}

impl DataSection {
    fn problems(&self, out: &mut Vec<(String, String)>) {
        check(
            out,
            !self.train.as_os_str().is_empty(),
            "data.train",
            "expected the path of a JSONL file of preference pairs",
        );
        check(
            out,
            self.max_len >= 2,
            "data.max_len",
            "expected at least 2 tokens",
        );
        check(
            out,
            self.max_prompt_len >= 1 && self.max_prompt_len < self.max_len,
            "data.max_prompt_len",
            format!("expected 1 <= max_prompt_len < max_len ({})", self.max_len),
        );
        let fields = [
            ("prompt_field", &self.prompt_field, "prompt"),
            ("chosen_field", &self.chosen_field, "chosen"),
            ("rejected_field", &self.rejected_field, "rejected"),
        ];
        for (f, v, _) in fields {
            check(
                out,
                !v.trim().is_empty(),
                format!("data.{f}"),
                "expected a field name",
            );
        }
        for i in 0..3 {
            for j in i + 1..3 {
                let (a, b) = (fields[i], fields[j]);
                // Point at the one that was changed from its default.
                let (at, other) = if b.1 != b.2 { (b, a) } else { (a, b) };
                check(
                    out,
                    a.1.trim().is_empty() || a.1 != b.1,
                    format!("data.{}", at.0),
                    format!("\"{}\" is also data.{}", at.1, other.0),
                );
            }
        }
    }
}

/// `[[variant]]` tables: valid, distinct names, and overrides that are in range.
fn variant_problems(train: &TrainSettings, variants: &[Variant], out: &mut Vec<(String, String)>) {
    let mut names = std::collections::HashSet::new();
    for (i, v) in variants.iter().enumerate() {
        let prefix = format!("variant[{i}]");
        let ok_name = !v.name.is_empty()
            && v.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c));
        check(
            out,
            ok_name,
            format!("{prefix}.name"),
            format!(
                "expected a non-empty name of letters, digits and - _ . +, got \"{}\"",
                v.name
            ),
        );
        check(
            out,
            names.insert(v.name.clone()),
            format!("{prefix}.name"),
            format!("variant name \"{}\" is used twice", v.name),
        );
        let overridden = v.overridden();
        let settings = train.with(v);
        out.extend(settings.problems(&prefix, Some(&overridden)));
        // A contradiction the variant makes with settings it inherits (exo_pair over
        // label_smoothing = 0): named at the inherited field, unless [train] has it already.
        let inherited = train.objective_problems();
        for (f, m) in settings.objective_problems() {
            if !overridden.contains(&f) && !inherited.iter().any(|p| p.1 == m) {
                out.push((format!("{prefix}.{f}"), m));
            }
        }
    }
}

impl EvalSection {
    fn problems(&self, out: &mut Vec<(String, String)>) {
        check(out, self.pairs >= 1, "eval.pairs", "expected at least 1");
        check(
            out,
            self.batch_size >= 1,
            "eval.batch_size",
            "expected at least 1",
        );
        check(
            out,
            self.prefix_lengths.iter().all(|&j| j >= 1),
            "eval.prefix_lengths",
            "prefix lengths start at 1",
        );
    }
}

impl SampleSection {
    fn problems(&self, out: &mut Vec<(String, String)>) {
        if let Err(m) = range::temperature(self.temperature) {
            check(out, false, "sample.temperature", m);
        }
        if let Err(m) = range::top_p(self.top_p) {
            check(out, false, "sample.top_p", m);
        }
    }
}

impl CheckpointSection {
    fn problems(&self, out: &mut Vec<(String, String)>) {
        check(
            out,
            self.keep >= 1,
            "checkpoint.keep",
            "expected at least 1",
        );
    }
}

impl UiSection {
    fn problems(&self, out: &mut Vec<(String, String)>) {
        check(
            out,
            (0.0..1.0).contains(&self.smoothing),
            "ui.smoothing",
            format!("expected a number in [0, 1), got {}", self.smoothing),
        );
        check(
            out,
            self.refresh_hz > 0.0 && self.refresh_hz <= 60.0,
            "ui.refresh_hz",
            format!("expected a number in (0, 60], got {}", self.refresh_hz),
        );
    }
}

impl SftSection {
    fn problems(&self, out: &mut Vec<(String, String)>) {
        check(
            out,
            self.lr > 0.0 && self.lr.is_finite(),
            "sft.lr",
            format!("expected a number > 0, got {}", self.lr),
        );
        check(
            out,
            self.batch_size >= 1,
            "sft.batch_size",
            "expected at least 1",
        );
        check(
            out,
            (0.0..1.0).contains(&self.warmup_ratio),
            "sft.warmup_ratio",
            format!("expected a number in [0, 1), got {}", self.warmup_ratio),
        );
    }
}

/// Every field of every section with its reload class, as `section.field`.
pub fn all_fields() -> Vec<(String, Reload)> {
    let mut v = Vec::new();
    let mut add = |section: &str, fields: &[(&str, Reload)]| {
        for (f, r) in fields {
            v.push((format!("{section}.{f}"), *r));
        }
    };
    add("model", ModelSection::FIELDS);
    add("model.scratch", SCRATCH_FIELDS);
    add("data", DataSection::FIELDS);
    add("train", TrainSettings::FIELDS);
    add("eval", EvalSection::FIELDS);
    add("sample", SampleSection::FIELDS);
    add("checkpoint", CheckpointSection::FIELDS);
    add("sft", SftSection::FIELDS);
    add("lora", LoraSection::FIELDS);
    add("judge", JudgeSection::FIELDS);
    add("alerts", AlertsSection::FIELDS);
    add("log", LogSection::FIELDS);
    add("ui", UiSection::FIELDS);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Workspace, ConfigError> {
        Workspace::parse(Path::new("ws"), Path::new("ws/gaplab.toml"), text)
    }

    const OK: &str = "[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n";

    #[test]
    fn text_that_is_not_utf8_is_refused_at_its_first_bad_byte() {
        let file = Path::new("ws/gaplab.toml");
        let e = decode(file, b"[train]\nbeta = \"\xc3\xa9\xff\"\n".to_vec()).unwrap_err();
        assert_eq!((e.line, e.col), (2, 10));
        assert_eq!(
            e.to_string(),
            "ws/gaplab.toml:2:10: not UTF-8 text (byte 0xff): save the file as UTF-8"
        );
        assert_eq!(decode(file, OK.as_bytes().to_vec()).unwrap(), OK);
    }

    #[test]
    fn defaults_and_variants() {
        let ws = parse(&format!(
            "{OK}[train]\nbeta = 0.2\n[[variant]]\nname = \"dpo\"\n[[variant]]\nname = \"dpo-poet\"\npoet = true\n"
        ))
        .unwrap();
        assert_eq!(ws.variant_names(), vec!["dpo", "dpo-poet"]);
        let a = ws.run_config("dpo").unwrap();
        let b = ws.run_config("dpo-poet").unwrap();
        assert_eq!((a.train.poet, b.train.poet), (PoetMode::Off, PoetMode::Min));
        assert_eq!(b.train.beta, 0.2, "variants inherit [train]");
        assert_eq!(a.model.path.unwrap(), Path::new("ws").join("m"));
        assert!(ws.run_config("nope").is_err());
    }

    #[test]
    fn restart_changes_name_each_field_with_both_values() {
        let cfg = |extra: &str| {
            parse(&format!("{OK}{extra}"))
                .unwrap()
                .run_config("dpo")
                .unwrap()
        };
        let old = cfg("max_len = 512\n[train]\nlr = 1e-3\n");
        let new = cfg("max_len = 1024\n[train]\nlr = 2e-3\n[lora]\nr = 16\n");
        let shown: Vec<String> = old
            .restart_changes(&new)
            .unwrap()
            .iter()
            .map(|c| format!("{} ({} -> {})", c.field, c.old, c.new))
            .collect();
        // The learning rate is live: not named.
        assert_eq!(
            shown,
            ["data.max_len (512 -> 1024)", "lora ((unset) -> (set))"]
        );
        assert!(old.restart_changes(&old).unwrap().is_empty());
    }

    #[test]
    fn objectives_mix_and_poet_has_its_rules() {
        let ws = parse(&format!(
            "{OK}[train]\nobjective = [\"dpo\", \"sft\"]\nloss_weights = [1.0, 0.5]\npoet = \"ratio_own\"\npoet_ratio = 0.25\nkeep_eos = true\n"
        ))
        .unwrap();
        assert_eq!(ws.variant_names(), vec!["sigmoid+sft-poet-ratio_own0.25"]);
        let cfg = ws.run_config(&ws.variant_names()[0]).unwrap();
        let obj = cfg.train.objective();
        assert_eq!(obj.mixture, vec![(Loss::Sigmoid, 1.0), (Loss::Sft, 0.5)]);
        assert_eq!(
            obj.tokens.poet,
            crate::objective::Poet::RatioOwn { ratio: 0.25 }
        );
        assert!(obj.tokens.keep_eos);
        // rpo_alpha is a shorthand for an sft term.
        let ws = parse(&format!("{OK}[train]\nrpo_alpha = 0.3\n")).unwrap();
        let obj = ws.run_config("dpo").unwrap().train.objective();
        assert_eq!(obj.mixture, vec![(Loss::Sigmoid, 1.0), (Loss::Sft, 0.3)]);
        // The record keeps the old spelling of poet = true.
        let t = TrainSettings {
            poet: PoetMode::Min,
            ..Default::default()
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(
            (v["poet"].clone(), v["objective"].clone()),
            (true.into(), "sigmoid".into())
        );
    }

    #[test]
    fn single_variant_is_named_after_the_objective() {
        let ws = parse(&format!(
            "{OK}[train]\nobjective = \"simpo\"\npoet = true\n"
        ))
        .unwrap();
        assert_eq!(ws.variant_names(), vec!["simpo-poet"]);
    }

    /// Bad configs and the message each must produce (file:line:col: path: message).
    #[test]
    fn bad_configs_point_at_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                "[train]\nbeta = -1\n",
                "ws/gaplab.toml:6:8: train.beta: expected a number > 0, got -1",
            ),
            (
                "[train]\nbeta = \"high\"\n",
                "ws/gaplab.toml:6:8: train.beta: invalid type: string \"high\", expected f64",
            ),
            (
                "[train]\nbetta = 0.1\n",
                "ws/gaplab.toml:6:1: train.betta: unknown field `betta`",
            ),
            (
                "[train]\nobjective = \"kto\"\n",
                "ws/gaplab.toml:6:13: train.objective: unknown variant `kto`",
            ),
            ("[train\n", "ws/gaplab.toml:5:7:"),
            (
                "[[variant]]\nname = \"a\"\nlr = 0\n",
                "ws/gaplab.toml:7:6: variant[0].lr: expected a number > 0, got 0",
            ),
            (
                "[[variant]]\nname = \"a\"\n[[variant]]\nname = \"a\"\n",
                "ws/gaplab.toml:8:8: variant[1].name: variant name \"a\" is used twice",
            ),
            (
                "[sample]\ntop_p = 1.5\n",
                "ws/gaplab.toml:6:9: sample.top_p: expected a number in (0, 1], got 1.5",
            ),
            (
                "[eval]\npairs = 0\n",
                "ws/gaplab.toml:6:9: eval.pairs: expected at least 1",
            ),
            (
                "[train]\nobjective = [\"sigmoid\", \"kto\"]\n",
                "ws/gaplab.toml:6:25: train.objective[1]: unknown variant `kto`, expected one of `sigmoid`, `hinge`",
            ),
            (
                "[train]\nobjective = [\"sigmoid\", \"sft\"]\nloss_weights = [1.0]\n",
                "ws/gaplab.toml:7:16: train.loss_weights: expected 2 weights, one per loss of objective (sigmoid+sft), got 1",
            ),
            (
                "[train]\nlabel_smoothing = 0.5\n",
                "ws/gaplab.toml:6:19: train.label_smoothing: expected a number in [0, 0.5), got 0.5",
            ),
            (
                "[train]\nobjective = \"exo_pair\"\n",
                "ws/gaplab.toml:5:2: train.label_smoothing: exo_pair needs label_smoothing > 0",
            ),
            (
                "[train]\npoet = \"ratio_k\"\npoet_ratio = 1.5\n",
                "ws/gaplab.toml:7:14: train.poet_ratio: expected a number in (0, 1], got 1.5",
            ),
            (
                "[train]\npoet = \"half\"\n",
                "ws/gaplab.toml:6:8: train.poet: unknown variant `half`, expected one of `off`, `min`, `ratio_k`, `ratio_own`, `fixed`",
            ),
            (
                "[train]\nobjective = [\"simpo\", \"sft\"]\n",
                "ws/gaplab.toml:6:13: train.objective: simpo stands alone: a list mixes TRL DPOTrainer losses (got simpo+sft)",
            ),
            (
                "[train]\nobjective = \"nca_pair\"\nf_divergence_type = \"js_divergence\"\n",
                "ws/gaplab.toml:7:21: train.f_divergence_type: nca_pair reads the log-ratios directly",
            ),
            (
                "[train]\npoet = true\nld_alpha = 0.5\n",
                "ws/gaplab.toml:7:12: train.ld_alpha: ld_alpha and poet both weigh the tail",
            ),
            (
                "[train]\nobjective = \"alphapo\"\n",
                "ws/gaplab.toml:5:2: train.alpha: alphapo needs alpha != 0",
            ),
            (
                "[[variant]]\nname = \"a\"\nobjective = \"exo_pair\"\n",
                "ws/gaplab.toml:5:3: variant[0].label_smoothing: exo_pair needs label_smoothing > 0",
            ),
            (
                "[train]\nobjective = \"sft\"\n",
                "ws/gaplab.toml:6:13: train.objective: sft alone is a stage ([sft])",
            ),
            (
                "format = \"sharegpt\"\n",
                "ws/gaplab.toml:5:10: data.format: unknown variant `sharegpt`, expected one of `auto`, `standard`, `conversational`",
            ),
            (
                "[train]\ndevice = \"tpu\"\n",
                "ws/gaplab.toml:6:10: train.device: expected \"auto\", \"cpu\" or \"cuda:N\", got \"tpu\"",
            ),
            (
                "[train]\ndtype = \"f64\"\n",
                "ws/gaplab.toml:6:9: train.dtype: unknown variant `f64`, expected one of `f32`, `bf16`, `f16`",
            ),
            (
                "[judge]\ntask = \"math\"\n",
                "ws/gaplab.toml:6:8: judge.task: unknown variant `math`, expected `` or `sort`",
            ),
            (
                "[ui]\ncolor = \"8\"\n",
                "ws/gaplab.toml:6:9: ui.color: unknown variant `8`",
            ),
            (
                "[ui]\nmarkers = \"ascii\"\n",
                "ws/gaplab.toml:6:11: ui.markers: unknown variant `ascii`, expected one of `auto`, `braille`, `dot`",
            ),
            (
                "prompt_truncation = \"keep_middle\"\n",
                "ws/gaplab.toml:5:21: data.prompt_truncation: unknown variant `keep_middle`, expected `keep_end` or `keep_start`",
            ),
            (
                "overlong = \"skip\"\n",
                "ws/gaplab.toml:5:12: data.overlong: unknown variant `skip`, expected `truncate` or `drop`",
            ),
            (
                "rejected_field = \"chosen\"\n",
                "ws/gaplab.toml:5:18: data.rejected_field: \"chosen\" is also data.chosen_field",
            ),
            (
                "prompt_field = \"chosen\"\n",
                "ws/gaplab.toml:5:16: data.prompt_field: \"chosen\" is also data.chosen_field",
            ),
            (
                "prompt_field = \"\"\n",
                "ws/gaplab.toml:5:16: data.prompt_field: expected a field name",
            ),
            (
                "[surprise]\nx = 1\n",
                "ws/gaplab.toml:5:2: surprise: unknown field `surprise`",
            ),
        ];
        for (extra, want) in cases {
            let e = parse(&format!("{OK}{extra}")).unwrap_err().to_string();
            assert!(
                e.starts_with(want),
                "for {extra:?}\n got: {e}\nwant: {want}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let e = parse("[data]\ntrain = \"t\"\n").unwrap_err().to_string();
        assert!(e.contains("model: expected exactly one of"), "{e}");
    }

    #[test]
    fn every_field_is_classified() {
        let fields = all_fields();
        for f in [
            "train.lr",
            "train.beta",
            "train.poet",
            "eval.interval",
            "sample.prompts",
            "train.steps",
        ] {
            assert_eq!(
                fields.iter().find(|x| x.0 == f).unwrap().1,
                Reload::Live,
                "{f}"
            );
        }
        for f in [
            "model.path",
            "data.train",
            "train.batch_size",
            "train.dtype",
            "train.device",
            "train.seed",
            "data.prompt_truncation",
            "data.overlong",
            "log.tensorboard",
        ] {
            assert_eq!(
                fields.iter().find(|x| x.0 == f).unwrap().1,
                Reload::Restart,
                "{f}"
            );
        }
        // The serialized defaults hold exactly the classified fields, no more, no fewer.
        let value = toml::Value::try_from(WorkspaceConfig {
            sft: Some(SftSection::default()),
            lora: Some(LoraSection::default()),
            model: ModelSection {
                scratch: Some(ScratchSpec::default()),
                path: Some("p".into()),
                tokenizer: Some("t".into()),
                adapter: Some("a".into()),
            },
            data: DataSection {
                eval: Some("e".into()),
                ..Default::default()
            },
            train: TrainSettings {
                ld_alpha: Some(0.5),
                rpo_alpha: Some(0.1),
                position_decay: Some(0.9),
                ..Default::default()
            },
            judge: JudgeSection {
                reward_model: Some("rm".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        let mut serialized = Vec::new();
        fn walk(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if !prefix.is_empty() {
                    out.push(p.clone());
                }
                if let Some(sub) = v.as_table() {
                    walk(&p, sub, out);
                }
            }
        }
        walk("", value.as_table().unwrap(), &mut serialized);
        let mut classified: Vec<String> = fields.iter().map(|f| f.0.clone()).collect();
        serialized.sort();
        classified.sort();
        assert_eq!(serialized, classified);
    }

    #[test]
    fn run_config_round_trips_through_toml() {
        let ws = parse(&format!(
            "{OK}[[variant]]\nname = \"x\"\nobjective = \"ipo\"\n"
        ))
        .unwrap();
        let rc = ws.run_config("x").unwrap();
        let text = toml::to_string(&rc).unwrap();
        let back: RunConfig = toml::from_str(&text).unwrap();
        assert_eq!(rc, back);
    }
}
