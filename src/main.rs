//! The gaplab command line: argument parsing and dispatch, nothing else.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use gaplab::cmd;
use gaplab::model::{sample::SampleParams, select_device};
use gaplab::objective::{Loss, Objective};

// The allocator matters for training speed: the default one returns freed activations to the
// kernel and maps fresh pages every step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gaplab",
    version,
    about = "A terminal workbench for preference optimization (DPO, SimPO, POET)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Default)]
struct UiArgs {
    /// Dashboard theme: a name (default, dark, light, mono, or themes/NAME.toml) or a path.
    #[arg(long)]
    theme: Option<String>,
    /// Colour depth: truecolor, 256, 16 or none (default: detected; NO_COLOR is honoured).
    #[arg(long)]
    color: Option<String>,
    /// Chart markers without Braille characters.
    #[arg(long)]
    ascii: bool,
    /// Do not reload gaplab.toml and the theme when they are edited.
    #[arg(long)]
    no_watch: bool,
    /// Watch edited files by polling (for file systems without change events, e.g. some
    /// network mounts; used automatically when native events are unavailable).
    #[arg(long, conflicts_with = "no_watch")]
    watch_poll: bool,
}

impl UiArgs {
    fn options(&self) -> Result<gaplab::ui::app::Options> {
        let color = match &self.color {
            Some(c) => Some(gaplab::ui::theme::ColorDepth::parse(c).ok_or_else(|| {
                anyhow::anyhow!("--color: expected truecolor, 256, 16 or none, got \"{c}\"")
            })?),
            None => None,
        };
        Ok(gaplab::ui::app::Options {
            theme: self.theme.clone(),
            color,
            ascii: self.ascii,
            watch: match (self.no_watch, self.watch_poll) {
                (true, _) => None,
                (false, true) => Some(gaplab::watch::Mode::Poll),
                (false, false) => Some(gaplab::watch::Mode::Native),
            },
            ..Default::default()
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum PrefObjective {
    Dpo,
    Simpo,
    Ipo,
}

#[derive(Subcommand)]
enum Command {
    /// Train the variants of a workspace (or one of them, or resume a run).
    Train {
        /// Workspace folder (holding gaplab.toml).
        workspace: PathBuf,
        /// Run only this variant.
        #[arg(long)]
        variant: Option<String>,
        /// Continue a run directory from its latest checkpoint.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Where run directories go (default: WORKSPACE/runs).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Progress on stderr instead of the dashboard (the default when stdout is not a
        /// terminal).
        #[arg(long)]
        headless: bool,
        #[command(flatten)]
        ui: UiArgs,
    },
    /// Open the dashboard on run directories (or all runs of a workspace), following them live.
    Attach {
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        #[command(flatten)]
        ui: UiArgs,
    },
    /// Validate a workspace (config, model, tokenizer, data) and print data statistics.
    Check { workspace: PathBuf },
    /// Write the demo task's data into DIR: train and held-out eval pairs, a word-level
    /// tokenizer built from the task's text, and task.json (deterministic for a seed).
    DemoData {
        dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        train_pairs: Option<usize>,
        #[arg(long)]
        eval_pairs: Option<usize>,
        /// Rejected responses never drop a number: their lists are as long as the chosen ones.
        #[arg(long)]
        same_length: bool,
    },
    /// Write a commented starter workspace.
    Init {
        dir: PathBuf,
        /// Checkpoint folder to put in [model] path.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Score preference pairs: log-probs, rewards, margins, loss and prefix diagnostics.
    Eval {
        /// Hugging Face checkpoint folder of the policy.
        #[arg(long)]
        model: PathBuf,
        /// Checkpoint folder of the reference model (DPO/IPO); default: the policy itself.
        #[arg(long = "ref")]
        reference: Option<PathBuf>,
        /// JSONL or Parquet file of pairs (or a quoted glob over shards): string fields
        /// prompt, chosen, rejected, or conversational (message lists, rendered with the
        /// model's chat template).
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_enum)]
        objective: PrefObjective,
        /// Default: 0.1 for dpo and ipo, 2.0 for simpo.
        #[arg(long)]
        beta: Option<f64>,
        /// SimPO's target margin (absolute, not gamma/beta).
        #[arg(long, default_value_t = 1.0)]
        gamma: f64,
        /// Count only the first k = min(|chosen|, |rejected|) response tokens of each pair.
        #[arg(long)]
        poet: bool,
        /// Print one JSON document instead of the table.
        #[arg(long)]
        json: bool,
        /// Pairs per forward pass.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// auto, cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, bf16 or f16 (weights and activations; log-probs are computed in f32).
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Generate a continuation of a prompt (KV-cached; temperature 0 is greedy).
    Sample {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Render the prompt as a user message with the model's chat template.
        #[arg(long)]
        chat: bool,
        /// A system message before the prompt (with --chat).
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Measure training-step and sampling throughput (see docs/PERFORMANCE.md).
    Bench {
        #[arg(long, default_value_t = 10)]
        iters: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 8)]
        pairs: usize,
        #[arg(long, default_value_t = 32)]
        prompt_len: usize,
        #[arg(long, default_value_t = 96)]
        response_len: usize,
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// Run only these benchmarks (dpo, dpo_poet, simpo, sft, sample).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, bf16 or f16 (weights and activations; optimizer state stays f32).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Model shape: small (5.3M-parameter Llama) or qwen2.5-0.5b (random weights).
        #[arg(long, default_value = "small")]
        shape: String,
    },
}

fn cli_dtype(name: &str) -> Result<candle_core::DType> {
    gaplab::model::parse_dtype(name)
        .with_context(|| format!("--dtype {name}: expected f32, bf16 or f16"))
}

fn print(text: &str) {
    // A closed pipe (`gaplab ... | head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train {
            workspace,
            variant,
            resume,
            out,
            headless,
            ui,
        } => {
            let args = cmd::train::TrainArgs {
                workspace,
                variant,
                resume,
                out,
                headless,
                ui: ui.options()?,
            };
            return Ok(match cmd::train::run(&args)? {
                gaplab::engine::Outcome::Finished => ExitCode::SUCCESS,
                // Stopped by a signal, with a checkpoint: the shell convention for SIGINT.
                gaplab::engine::Outcome::Stopped => ExitCode::from(130),
            });
        }
        Command::Attach { runs, ui } => cmd::attach::run(&runs, ui.options()?)?,
        Command::Check { workspace } => print(&cmd::check::run(&workspace)?),
        Command::DemoData {
            dir,
            seed,
            train_pairs,
            eval_pairs,
            same_length,
        } => {
            let defaults = gaplab::demo::TaskConfig::default();
            let cfg = gaplab::demo::TaskConfig {
                seed,
                drop_first: !same_length,
                train_pairs: train_pairs.unwrap_or(defaults.train_pairs),
                eval_pairs: eval_pairs.unwrap_or(defaults.eval_pairs),
                ..defaults
            };
            gaplab::demo::write_data(&dir, &cfg)?;
            print(&format!(
                "wrote {} train and {} eval pairs, tokenizer/ and task.json to {}\n",
                cfg.train_pairs,
                cfg.eval_pairs,
                dir.display()
            ));
        }
        Command::Init { dir, model } => print(&cmd::init::run(&dir, model.as_deref())?),
        Command::Eval {
            model,
            reference,
            data,
            objective,
            beta,
            gamma,
            poet,
            json,
            batch_size,
            device,
            dtype,
        } => {
            let loss = match objective {
                PrefObjective::Dpo => Loss::Dpo,
                PrefObjective::Simpo => Loss::Simpo,
                PrefObjective::Ipo => Loss::Ipo,
            };
            let beta = beta.unwrap_or(if loss == Loss::Simpo { 2.0 } else { 0.1 });
            if !(beta > 0.0 && beta.is_finite()) {
                bail!("--beta: expected a positive number, got {beta}");
            }
            if !gamma.is_finite() {
                bail!("--gamma: expected a finite number, got {gamma}");
            }
            let args = cmd::eval::EvalArgs {
                model,
                reference,
                data,
                objective: Objective {
                    loss,
                    beta,
                    gamma,
                    poet,
                },
                batch_pairs: batch_size,
                device: select_device(&device)?,
                dtype: cli_dtype(&dtype)?,
            };
            let report = cmd::eval::run(&args)?;
            if json {
                print(&(serde_json::to_string(&report)? + "\n"));
            } else {
                print(&cmd::eval::render(&report));
            }
        }
        Command::Sample {
            model,
            prompt,
            chat,
            system,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            json,
            device,
            dtype,
        } => {
            if !(temperature >= 0.0 && temperature.is_finite()) {
                bail!("--temperature: expected a number >= 0, got {temperature}");
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                bail!("--top-p: expected a number in (0, 1], got {top_p}");
            }
            let args = cmd::sample::SampleArgs {
                model,
                prompt,
                chat,
                system,
                params: SampleParams {
                    max_new_tokens,
                    temperature,
                    top_p,
                },
                seed,
                device: select_device(&device)?,
                dtype: cli_dtype(&dtype)?,
            };
            let out = cmd::sample::run(&args)?;
            if json {
                print(&(serde_json::to_string(&out)? + "\n"));
            } else {
                print(&(out.text + "\n"));
            }
        }
        Command::Bench {
            iters,
            warmup,
            pairs,
            prompt_len,
            response_len,
            new_tokens,
            only,
            json,
            device,
            dtype,
            shape,
        } => {
            if prompt_len == 0 || response_len == 0 || pairs == 0 {
                bail!("--pairs, --prompt-len and --response-len must be at least 1");
            }
            let args = cmd::bench::BenchArgs {
                iters,
                warmup,
                pairs,
                prompt_len,
                response_len,
                new_tokens,
                only,
                device: select_device(&device)?,
                dtype: cli_dtype(&dtype)?,
                shape,
            };
            let report = cmd::bench::run(&args)?;
            if json {
                print(&(serde_json::to_string_pretty(&report)? + "\n"));
            } else {
                print(&cmd::bench::render(&report));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// mimalloc's `purge_delay` option (the same index in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Keep freed memory mapped: a training step frees and reallocates the same activation sizes
    // every step, and returning them to the kernel costs a page fault and a zeroed huge page
    // each time (about 35k faults per 10 DPO steps of the benchmark model, 700 without).
    // SAFETY: setting an option is a plain store inside mimalloc.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain of contexts joined by ": ".
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(2)
        }
    }
}
