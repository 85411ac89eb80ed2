//! `gaplab analyze`: the paper's prefix analyses with a reward model.
//!
//! - `prefix-gap`: ΔQ(k) of preference data, i.e. how much of the chosen-vs-rejected quality
//!   difference is already in the first k response tokens;
//! - `prefix-quality`: the reward of a policy's (and a reference's) generated k-prefixes and full
//!   generations.

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::range;
use crate::model::reward::RewardModel;
use crate::model::{device_label, io, sample, CausalLm, Tok};
use crate::reward::analysis::{self, GapRow, Mean, QualityRow};
use crate::reward::inputs::{self, PromptSource};
use crate::reward::{
    parse_k_list, score_chat_generations, score_generations, Generation, GenerationScores,
};
use crate::rng::Rng;

use super::score::{batch_size, load_pairs, load_reward_model};
use super::{check_flag, print, DeviceArgs};

/// The paper's prefix analyses with a reward model.
#[derive(clap::Args, Clone, Debug)]
pub struct AnalyzeArgs {
    #[command(subcommand)]
    pub analysis: Analysis,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Analysis {
    PrefixGap(PrefixGapArgs),
    PrefixQuality(PrefixQualityArgs),
}

/// ΔQ(k) of preference data: for each k, the mean over pairs of R(x, y_w[:k]) − R(x, y_l[:k]),
/// its standard error and the share of pairs where it is positive, next to the same for full
/// responses. A response shorter than k is scored whole (the pairs that did are counted).
#[derive(clap::Args, Clone, Debug)]
pub struct PrefixGapArgs {
    /// Reward-model folder (a Hugging Face *ForSequenceClassification, num_labels 1).
    #[arg(long)]
    pub reward_model: PathBuf,
    /// Preference file (JSONL or Parquet, standard or conversational; a glob reads shards),
    /// tokenized with the reward model's own tokenizer and chat template.
    #[arg(long)]
    pub data: PathBuf,
    /// Prefix lengths in the reward model's tokens, increasing.
    #[arg(long, default_value = "1,2,4,8,16,32,64,128,256")]
    pub k: String,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also draw ΔQ(k) (± one standard error) against k as an SVG line chart.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Prefix quality of generations: generate from the policy (and the reference) for the prompts,
/// score each generated k-token prefix and the full generation with the reward model, and report
/// the mean reward per k for each model and their difference (paired by prompt and sample).
#[derive(clap::Args, Clone, Debug)]
pub struct PrefixQualityArgs {
    /// Reward-model folder (a Hugging Face *ForSequenceClassification, num_labels 1).
    #[arg(long)]
    pub reward_model: PathBuf,
    /// Checkpoint folder of the policy.
    #[arg(long)]
    pub policy: PathBuf,
    /// PEFT LoRA adapter folder applied to --policy.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Checkpoint folder of the reference (e.g. the SFT model) to compare with.
    #[arg(long = "ref")]
    pub reference: Option<PathBuf>,
    /// JSONL or Parquet file whose records have a `prompt` field: a string (used as it is) or a
    /// list of {"role", "content"} messages (rendered by each model's chat template with the
    /// generation prompt). A preference file works too: its prompts are used (conversational
    /// pairs without a `prompt` field give the messages chosen and rejected share).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Prefix lengths in generated tokens, increasing.
    #[arg(long, default_value = "1,2,4,8,16,32")]
    pub k: String,
    /// Generations per prompt and model.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Sequences per reward-model forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: &AnalyzeArgs) -> Result<()> {
    match &args.analysis {
        Analysis::PrefixGap(a) => prefix_gap(a),
        Analysis::PrefixQuality(a) => prefix_quality(a),
    }
}

/// "1.2345" or "n/a".
fn opt(x: Option<f64>, width: usize) -> String {
    match x {
        Some(x) => format!("{x:>width$.4}"),
        None => format!("{:>width$}", "n/a"),
    }
}

fn k_label(k: Option<usize>) -> String {
    k.map_or("full".to_string(), |k| k.to_string())
}

fn gap_table(rows: &[GapRow]) -> String {
    let mut out = format!(
        "{:>6} {:>10} {:>9} {:>8} {:>8} {:>10} {:>10}\n",
        "k", "ΔQ(k)", "stderr", "share>0", "shorter", "chosen", "rejected"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:>6} {:>10.4} {} {:>7.0}% {:>8} {:>10.4} {:>10.4}",
            k_label(r.k),
            r.delta,
            opt(r.stderr, 9),
            100.0 * r.share_positive,
            if r.k.is_some() {
                r.shorter.to_string()
            } else {
                "-".into()
            },
            r.chosen_mean,
            r.rejected_mean
        );
    }
    out
}

#[derive(Serialize)]
struct GapReport<'a> {
    reward_model: String,
    data: String,
    pairs: usize,
    rows: &'a [GapRow],
    full: &'a GapRow,
}

fn prefix_gap(args: &PrefixGapArgs) -> Result<()> {
    let ks = parse_k_list(&args.k, "--k")?;
    let bs = batch_size(args.batch_size)?;
    let (device, dtype) = args.device.resolve()?;
    let (rm, tok) = load_reward_model(&args.reward_model, &device, dtype)?;
    let pairs = load_pairs(&args.data, &rm, &tok)?;
    let rewards = inputs::score_pairs(&rm, &pairs, &ks, bs)?;
    let rows = analysis::prefix_gap(&rewards, &ks);
    let (by_k, full) = rows.split_at(ks.len());
    if let Some(path) = &args.plot {
        let title = format!(
            "ΔQ(k) of {} under {}",
            args.data.display(),
            args.reward_model.display()
        );
        std::fs::write(path, gap_svg(by_k, &full[0], &title))
            .with_context(|| format!("--plot: cannot write {}", path.display()))?;
    }
    if args.json {
        let report = GapReport {
            reward_model: args.reward_model.display().to_string(),
            data: args.data.display().to_string(),
            pairs: pairs.len(),
            rows: by_k,
            full: &full[0],
        };
        print(&(serde_json::to_string(&report)? + "\n"));
    } else {
        let head = format!(
            "prefix gap of {} ({} pairs) under {} ({}, {}); k in the reward model's tokens; \"shorter\": pairs with a response shorter than k, scored whole\n",
            args.data.display(),
            pairs.len(),
            args.reward_model.display(),
            rm.arch_name(),
            device_label(&device, dtype)
        );
        print(&(head + &gap_table(&rows)));
    }
    Ok(())
}

/// Text escaped for SVG.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nice" tick values covering [lo, hi]: about five at a 1/2/5 step.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    // Multiples of the step (not a running sum, which drifts).
    let first = (lo / step).ceil() as i64;
    (first..)
        .map(|i| i as f64 * step)
        .take_while(|t| *t <= hi + 1e-9 * span)
        .map(|t| if t.abs() < step * 1e-9 { 0.0 } else { t })
        .collect()
}

/// ΔQ(k) against k (log scale) as an SVG line chart: the curve with a ±stderr band, a dashed
/// line at the full-response ΔQ and one at zero.
pub fn gap_svg(rows: &[GapRow], full: &GapRow, title: &str) -> String {
    let (w, h) = (720.0, 420.0);
    let (left, right, top, bottom) = (80.0, 150.0, 50.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let xs: Vec<f64> = rows
        .iter()
        .map(|r| (r.k.unwrap_or(1).max(1) as f64).log2())
        .collect();
    let (x0, x1) = match (xs.first(), xs.last()) {
        (Some(&a), Some(&b)) if b > a => (a, b),
        (Some(&a), _) => (a - 1.0, a + 1.0),
        _ => (0.0, 1.0),
    };
    let mut lo = [0.0, full.delta]
        .into_iter()
        .chain(rows.iter().map(|r| r.delta - r.stderr.unwrap_or(0.0)))
        .filter(|v| v.is_finite())
        .fold(f64::INFINITY, f64::min);
    let mut hi = [0.0, full.delta]
        .into_iter()
        .chain(rows.iter().map(|r| r.delta + r.stderr.unwrap_or(0.0)))
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if hi - lo < 1e-9 {
        lo -= 1.0;
        hi += 1.0;
    }
    let pad = 0.05 * (hi - lo);
    let (lo, hi) = (lo - pad, hi + pad);
    let px = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| top + (hi - y) / (hi - lo) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        w / 2.0,
        xml(title)
    );
    // Axes and ticks.
    let _ = writeln!(
        s,
        r#"<path d="M{left},{top} V{} H{}" fill="none" stroke="black"/>"#,
        top + ph,
        left + pw
    );
    for t in ticks(lo, hi) {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y:.1}" x2="{left}" y2="{y:.1}" stroke="black"/><line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            left - 5.0,
            left + pw,
            left - 8.0,
            y + 4.0,
            format_tick(t)
        );
    }
    for (r, &x) in rows.iter().zip(&xs) {
        let x = px(x);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            top + ph,
            top + ph + 5.0,
            top + ph + 20.0,
            k_label(r.k)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">k (response tokens, log scale)</text>"#,
        left + pw / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{}" text-anchor="middle" transform="rotate(-90 20 {})">ΔQ(k) = mean R(y_w[:k]) − R(y_l[:k])</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // Zero and the full-response level.
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{z:.1}" x2="{}" y2="{z:.1}" stroke="#888"/>"##,
        left + pw,
        z = py(0.0)
    );
    if full.delta.is_finite() {
        let y = py(full.delta);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#c0392b" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" fill="#c0392b">full: {:.3}</text>"##,
            left + pw,
            left + pw + 6.0,
            y + 4.0,
            full.delta
        );
    }
    // The ±stderr band, then the curve.
    let with_se: Vec<(f64, &GapRow)> = xs
        .iter()
        .zip(rows)
        .filter(|(_, r)| r.stderr.is_some() && r.delta.is_finite())
        .map(|(&x, r)| (x, r))
        .collect();
    if with_se.len() >= 2 {
        let upper = with_se
            .iter()
            .map(|(x, r)| format!("{:.1},{:.1}", px(*x), py(r.delta + r.stderr.unwrap_or(0.0))));
        let lower = with_se
            .iter()
            .rev()
            .map(|(x, r)| format!("{:.1},{:.1}", px(*x), py(r.delta - r.stderr.unwrap_or(0.0))));
        let pts: Vec<String> = upper.chain(lower).collect();
        let _ = writeln!(
            s,
            r##"<polygon points="{}" fill="#2e86c1" fill-opacity="0.2" stroke="none"/>"##,
            pts.join(" ")
        );
    }
    let pts: Vec<String> = xs
        .iter()
        .zip(rows)
        .filter(|(_, r)| r.delta.is_finite())
        .map(|(&x, r)| format!("{:.1},{:.1}", px(x), py(r.delta)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#2e86c1" stroke-width="2"/>"##,
        pts.join(" ")
    );
    for p in &pts {
        let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
        let _ = writeln!(s, r##"<circle cx="{x}" cy="{y}" r="3" fill="#2e86c1"/>"##);
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#2e86c1">ΔQ(k) ± stderr</text>"##,
        left + pw + 6.0,
        top + 12.0
    );
    s.push_str("</svg>\n");
    s
}

fn format_tick(t: f64) -> String {
    let s = format!("{t:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// A model's generations: (prompt text, ids, stopped) per prompt and sample.
struct Generated {
    prompts: Vec<String>,
    /// The prompt's messages, for chat prompts.
    messages: Vec<Option<Vec<serde_json::Value>>>,
    ids: Vec<Vec<u32>>,
    stopped: Vec<bool>,
}

impl Generated {
    fn of(
        model: &CausalLm,
        tok: &Tok,
        prompts: &[PromptSource],
        what: &str,
        samples: usize,
        params: &sample::SampleParams,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let mut g = Generated {
            prompts: vec![],
            messages: vec![],
            ids: vec![],
            stopped: vec![],
        };
        for (i, source) in prompts.iter().enumerate() {
            let p = inputs::render_prompt(tok, source, what)?;
            let messages = match source {
                PromptSource::Messages(m) => Some(m.clone()),
                PromptSource::Text(_) => None,
            };
            let ids = tok.encode_prompt_as(&p.text, p.templated)?;
            anyhow::ensure!(
                !ids.is_empty(),
                "--prompts: prompt {} has no tokens for {what}",
                i + 1
            );
            for _ in 0..samples {
                let out = sample::generate(model, &ids, &tok.stop, params, &mut rng)?;
                g.stopped
                    .push(out.last().is_some_and(|t| tok.stop.contains(t)));
                g.ids.push(out);
                g.prompts.push(p.text.clone());
                g.messages.push(messages.clone());
            }
        }
        Ok(g)
    }

    fn gens(&self) -> Vec<Generation<'_>> {
        (0..self.ids.len())
            .map(|i| Generation {
                prompt: &self.prompts[i],
                ids: &self.ids[i],
                stopped: self.stopped[i],
            })
            .collect()
    }

    /// The reward model's scores of these generations: chat prompts through the reward
    /// model's own chat template when it has one, other prompts as text.
    fn score(
        &self,
        rm: &RewardModel,
        rm_tok: &Tok,
        tok: &Tok,
        ks: &[usize],
        bs: usize,
    ) -> Result<Vec<GenerationScores>> {
        let gens = self.gens();
        let is_chat: Vec<bool> = (0..gens.len())
            .map(|i| self.messages[i].is_some() && rm_tok.chat_template.is_some())
            .collect();
        if !is_chat.contains(&true) {
            return score_generations(rm, rm_tok, tok, &gens, ks, bs);
        }
        let (mut c, mut t): (Vec<Generation>, Vec<Generation>) = (vec![], vec![]);
        let mut messages: Vec<&[serde_json::Value]> = vec![];
        for (i, g) in gens.into_iter().enumerate() {
            match (is_chat[i], self.messages[i].as_deref()) {
                (true, Some(m)) => {
                    messages.push(m);
                    c.push(g);
                }
                _ => t.push(g),
            }
        }
        let mut cs = score_chat_generations(rm, rm_tok, tok, &messages, &c, ks, bs)?.into_iter();
        let mut ts = if t.is_empty() {
            vec![]
        } else {
            score_generations(rm, rm_tok, tok, &t, ks, bs)?
        }
        .into_iter();
        is_chat
            .iter()
            .map(|&ch| {
                if ch { cs.next() } else { ts.next() }.context("a generation without a score")
            })
            .collect()
    }

    fn health(&self) -> GenHealth {
        let lens: Vec<f64> = self.ids.iter().map(|g| g.len() as f64).collect();
        GenHealth {
            generations: self.ids.len(),
            mean_tokens: analysis::mean_stderr(&lens).mean,
            stopped: self.stopped.iter().filter(|s| **s).count() as f64
                / self.stopped.len().max(1) as f64,
        }
    }
}

#[derive(Serialize)]
struct GenHealth {
    generations: usize,
    mean_tokens: f64,
    /// Share that ended with a stop token before max_new_tokens.
    stopped: f64,
}

#[derive(Serialize)]
struct QualityReport {
    reward_model: String,
    policy: String,
    reference: Option<String>,
    prompts: usize,
    samples: usize,
    policy_generations: GenHealth,
    reference_generations: Option<GenHealth>,
    rows: Vec<QualityRow>,
}

fn mean_cell(m: Option<&Mean>) -> String {
    match m {
        Some(m) => format!("{:>10.4} {}", m.mean, opt(m.stderr, 8)),
        None => format!("{:>10} {:>8}", "", ""),
    }
}

fn quality_table(rows: &[QualityRow], with_ref: bool) -> String {
    let mut out = format!("{:>6} {:>10} {:>8}", "k", "policy", "stderr");
    if with_ref {
        let _ = write!(
            out,
            " {:>10} {:>8} {:>10} {:>8}",
            "reference", "stderr", "difference", "stderr"
        );
    }
    out.push('\n');
    for r in rows {
        let _ = write!(out, "{:>6} {}", k_label(r.k), mean_cell(Some(&r.policy)));
        if with_ref {
            let _ = write!(
                out,
                " {} {}",
                mean_cell(r.reference.as_ref()),
                mean_cell(r.difference.as_ref())
            );
        }
        out.push('\n');
    }
    out
}

fn prefix_quality(args: &PrefixQualityArgs) -> Result<()> {
    let ks = parse_k_list(&args.k, "--k")?;
    let bs = batch_size(args.batch_size)?;
    check_flag("temperature", range::temperature(args.temperature))?;
    check_flag("top-p", range::top_p(args.top_p))?;
    anyhow::ensure!(args.samples > 0, "--samples: expected at least 1, got 0");
    anyhow::ensure!(
        args.max_new_tokens > 0,
        "--max-new-tokens: expected at least 1, got 0"
    );
    let params = sample::SampleParams {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
    };
    let (device, dtype) = args.device.resolve()?;
    // The reward model is checked before any generation: a causal LM given as --reward-model
    // fails in a moment.
    let (rm, rm_tok) = load_reward_model(&args.reward_model, &device, dtype)?;
    let prompts = inputs::read_prompts(&args.prompts)?;
    let (policy, policy_tok) =
        io::load_with_adapter(&args.policy, args.adapter.as_deref(), &device, dtype)
            .map_err(|e| anyhow::anyhow!("--policy: {e:#}"))?;
    let pol = Generated::of(
        &policy,
        &policy_tok,
        &prompts,
        "--policy",
        args.samples,
        &params,
        args.seed,
    )?;
    drop(policy);
    let pol_scores = pol
        .score(&rm, &rm_tok, &policy_tok, &ks, bs)
        .context("scoring the policy's generations")?;
    let mut reference: Option<(Generated, Vec<GenerationScores>)> = None;
    if let Some(dir) = &args.reference {
        let (model, tok) =
            io::load_dir(dir, &device, dtype).map_err(|e| anyhow::anyhow!("--ref: {e:#}"))?;
        let g = Generated::of(
            &model,
            &tok,
            &prompts,
            "--ref",
            args.samples,
            &params,
            args.seed,
        )?;
        let scores = g
            .score(&rm, &rm_tok, &tok, &ks, bs)
            .context("scoring the reference's generations")?;
        reference = Some((g, scores));
    }
    let rows = analysis::prefix_quality(
        &pol_scores,
        reference.as_ref().map(|(_, s)| s.as_slice()),
        &ks,
    )?;
    let report = QualityReport {
        reward_model: args.reward_model.display().to_string(),
        policy: args.policy.display().to_string(),
        reference: args.reference.as_ref().map(|r| r.display().to_string()),
        prompts: prompts.len(),
        samples: args.samples,
        policy_generations: pol.health(),
        reference_generations: reference.as_ref().map(|(g, _)| g.health()),
        rows,
    };
    if args.json {
        print(&(serde_json::to_string(&report)? + "\n"));
        return Ok(());
    }
    let mut out = format!(
        "prefix quality under {} ({}, {}): {} prompts x {} samples, k in generated tokens (a generation shorter than k is scored whole)\n",
        report.reward_model,
        rm.arch_name(),
        device_label(&device, dtype),
        report.prompts,
        report.samples
    );
    let mut health = |name: &str, h: &GenHealth| {
        let _ = writeln!(
            out,
            "{name}: {} generations, {:.1} tokens on average, {:.0}% stopped before --max-new-tokens",
            h.generations,
            h.mean_tokens,
            100.0 * h.stopped
        );
    };
    health(
        &format!("policy {}", report.policy),
        &report.policy_generations,
    );
    if let (Some(name), Some(h)) = (&report.reference, &report.reference_generations) {
        health(&format!("reference {name}"), h);
    }
    out.push_str(&quality_table(&report.rows, report.reference.is_some()));
    print(&out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(k: Option<usize>, delta: f64, se: Option<f64>) -> GapRow {
        GapRow {
            k,
            pairs: 3,
            delta,
            stderr: se,
            share_positive: 0.5,
            shorter: 0,
            chosen_mean: 0.0,
            rejected_mean: 0.0,
        }
    }

    #[test]
    fn the_svg_draws_the_curve_band_and_full_level() {
        let rows = [
            row(Some(1), 0.1, Some(0.05)),
            row(Some(4), 0.4, Some(0.1)),
            row(Some(16), -0.2, Some(0.1)),
        ];
        let svg = gap_svg(&rows, &row(None, 0.8, Some(0.2)), "ΔQ of <data>");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("ΔQ of &lt;data&gt;"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("<polygon") && svg.contains("full: 0.800"));
        // k labels on the x axis, log-spaced: 4 sits halfway between 1 and 16.
        for k in ["1", "4", "16"] {
            assert!(svg.contains(&format!(">{k}</text>")), "{k}");
        }
        let xs: Vec<f64> = svg
            .lines()
            .filter(|l| l.starts_with("<circle"))
            .map(|l| l.split('"').nth(1).unwrap().parse().unwrap())
            .collect();
        assert!(((xs[1] - xs[0]) - (xs[2] - xs[1])).abs() < 0.2, "{xs:?}");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = ticks(-0.1, 0.9);
        let want = [0.0, 0.2, 0.4, 0.6, 0.8];
        assert_eq!(t.len(), want.len());
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{t:?}"
        );
        assert_eq!(format_tick(0.2), "0.2");
        assert_eq!(format_tick(-0.0), "0");
        assert_eq!(ticks(0.0, 10.0).len(), 6);
    }
}
