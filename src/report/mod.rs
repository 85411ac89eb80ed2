//! Figures for papers from run directories (`gaplab report`): each run is read back as the
//! events its engine sent, seeds of one experiment are grouped into a mean ± std band, and the
//! figures (loss, rewards, the gap chart, the prefix heatmap, token-contribution strips, ΔQ(k))
//! are drawn as SVG or PNG next to a report.md that lists the runs, their config differences
//! and their final metrics.
//!
//! Floor: above `runlog` and `config` (it reads run directories and their configs), below
//! `cmd` (whose `report` command parses the flags and prints where the report went).

mod canvas;
pub mod figures;
mod font;
mod heatmap;
pub mod markdown;
pub mod stats;
mod tokens;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::event::{Event, PairTokens, PrefixCurve};
use crate::runlog::{tail, RunDir};

/// A metric's values by step.
pub type Series = BTreeMap<usize, f64>;

/// One run directory, read back.
#[derive(Clone, Debug)]
pub struct Run {
    pub dir: PathBuf,
    /// The run's variant (or, for a run without a config, its directory's name).
    pub variant: String,
    /// What the figures call it: the variant, or the directory's name where two runs share one.
    pub name: String,
    /// The resolved config as serde writes it (`config::RunConfig`).
    pub config: Value,
    pub total_steps: usize,
    /// The last optimizer step recorded.
    pub last_step: usize,
    /// Train metrics (TRL names) and eval metrics (`eval_` names) by step.
    pub train: BTreeMap<String, Series>,
    pub eval: BTreeMap<String, Series>,
    /// Each eval's prefix curve, by step.
    pub prefix: BTreeMap<usize, PrefixCurve>,
    /// The latest eval that recorded a token view: its step and pairs.
    pub token_view: Option<(usize, Vec<PairTokens>)>,
    /// Config edits taken while it trained (`Applied` events with changes).
    pub edits: usize,
}

impl Run {
    /// Reads a run directory: its events (events.jsonl, or an older run's files) and its config.
    pub fn load(dir: &Path) -> Result<Run> {
        let rd = RunDir::open(dir)?;
        let events =
            tail::replay(dir).with_context(|| format!("cannot read the run {}", dir.display()))?;
        let mut run = Run {
            dir: dir.to_path_buf(),
            variant: String::new(),
            name: String::new(),
            config: Value::Null,
            total_steps: 0,
            last_step: 0,
            train: BTreeMap::new(),
            eval: BTreeMap::new(),
            prefix: BTreeMap::new(),
            token_view: None,
            edits: 0,
        };
        for ev in events {
            run.take(ev);
        }
        // The config a run started with is config.toml; a run that never wrote one still has
        // the one its Started event carries.
        match rd.read_config() {
            Ok(cfg) => {
                run.variant = cfg.variant.clone();
                run.config = cfg.record();
            }
            Err(e) if run.config.is_null() => {
                return Err(e).with_context(|| format!("{}: no readable config", dir.display()))
            }
            Err(_) => {}
        }
        if run.variant.is_empty() {
            run.variant = dir_name(dir);
        }
        run.name = run.variant.clone();
        Ok(run)
    }

    fn take(&mut self, ev: Event) {
        match ev {
            Event::Started {
                variant,
                total_steps,
                config,
                ..
            } => {
                self.variant = variant;
                self.total_steps = total_steps;
                self.config = *config;
            }
            Event::Step(m) => {
                self.last_step = self.last_step.max(m.step);
                for (k, v) in m.metrics {
                    self.train.entry(k).or_default().insert(m.step, v);
                }
            }
            Event::Eval(r) => {
                let r = *r;
                for (k, v) in r.metrics {
                    self.eval.entry(k).or_default().insert(r.step, v);
                }
                self.prefix.insert(r.step, r.prefix);
                if !r.token_view.is_empty() {
                    self.token_view = Some((r.step, r.token_view));
                }
            }
            Event::Applied { changes, .. } if !changes.is_empty() => self.edits += 1,
            _ => {}
        }
    }

    /// The run's seed (`train.seed`), where its config has one.
    pub fn seed(&self) -> Option<u64> {
        self.config
            .get("train")
            .and_then(|t| t.get("seed"))
            .and_then(Value::as_u64)
    }

    /// The last eval's value of a metric, if it has one.
    pub fn final_eval(&self, metric: &str) -> Option<f64> {
        self.eval
            .get(metric)
            .and_then(|s| s.values().next_back())
            .copied()
    }

    pub fn last_eval_step(&self) -> Option<usize> {
        self.eval
            .values()
            .filter_map(|s| s.keys().next_back())
            .max()
            .copied()
    }
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Names runs for legends: the variant, or the directory's name where variants repeat.
pub fn name_runs(runs: &mut [Run]) {
    let variants: Vec<String> = runs.iter().map(|r| r.variant.clone()).collect();
    for r in runs.iter_mut() {
        let repeated = variants.iter().filter(|v| **v == r.variant).count() > 1;
        r.name = if repeated {
            dir_name(&r.dir)
        } else {
            r.variant.clone()
        };
    }
}

/// One line of the figures: a run, or the seeds of one experiment drawn as mean ± std.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub label: String,
    /// Indices into the runs.
    pub members: Vec<usize>,
}

/// The figures' lines: runs that differ only by seed (and name, workspace place and display
/// settings) form one line, unless `group` is off.
pub fn lines(runs: &[Run], group: bool) -> Vec<Line> {
    let keys: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if group {
                stats::experiment_key(&stats::flatten(&r.config))
            } else {
                i.to_string()
            }
        })
        .collect();
    stats::group_by_key(&keys)
        .into_iter()
        .map(|members| {
            let names: Vec<&str> = members.iter().map(|&i| runs[i].name.as_str()).collect();
            Line {
                label: stats::group_label(&names),
                members,
            }
        })
        .collect()
}

/// ΔQ(k) of preference data as `gaplab analyze prefix-gap --json` writes it.
#[derive(Clone, Debug, Deserialize)]
pub struct PrefixGap {
    /// The legend's name (the file's stem).
    #[serde(skip)]
    pub label: String,
    #[serde(default)]
    pub reward_model: String,
    #[serde(default)]
    pub data: String,
    #[serde(default)]
    pub pairs: usize,
    pub rows: Vec<GapPoint>,
    pub full: GapPoint,
}

/// One k of a ΔQ(k) file (`k` absent or null: the full responses).
#[derive(Clone, Debug, Deserialize)]
pub struct GapPoint {
    #[serde(default)]
    pub k: Option<usize>,
    /// JSON keeps a NaN as null.
    pub delta: Option<f64>,
    #[serde(default)]
    pub stderr: Option<f64>,
}

impl PrefixGap {
    pub fn load(path: &Path) -> Result<PrefixGap> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut g: PrefixGap = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected the JSON of `gaplab analyze prefix-gap --json` (rows of k, delta, stderr and full)",
                path.display()
            )
        })?;
        g.label = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(g)
    }
}

/// The file a run directory may hold its data's ΔQ(k) in (`gaplab analyze prefix-gap --json`
/// output saved there); `gaplab report` draws it with the others.
pub const PREFIX_GAP_FILE: &str = "prefix-gap.json";

/// Image format of the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    pub fn ext(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Png => "png",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "svg" => Ok(Format::Svg),
            "png" => Ok(Format::Png),
            _ => Err(format!("expected svg or png, got \"{s}\"")),
        }
    }
}

/// What `gaplab report` is asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub out: PathBuf,
    pub format: Format,
    /// Group seeds of one experiment into mean ± std lines.
    pub group: bool,
}

/// What a report holds: its figures (file, what it shows) and the notes it made.
#[derive(Clone, Debug, Default)]
pub struct Written {
    pub figures: Vec<(PathBuf, String)>,
    pub notes: Vec<String>,
    pub markdown: PathBuf,
}

/// Writes the figures and report.md of `runs` (named with [`name_runs`]) into `opts.out`.
pub fn write(runs: &[Run], gaps: &[PrefixGap], opts: &Options) -> Result<Written> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    font::register()?;
    let lines = lines(runs, opts.group);
    let mut written = Written::default();
    figures::draw_all(runs, &lines, gaps, opts, &mut written)?;
    let md = markdown::report(runs, &lines, gaps, &written, &opts.out);
    let path = opts.out.join("report.md");
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))?;
    written.markdown = path;
    Ok(written)
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A run of `variant` with 4 steps, seed 0 and no records.
    pub fn run(variant: &str) -> Run {
        Run {
            dir: PathBuf::from(format!("/ws/runs/{variant}")),
            variant: variant.into(),
            name: variant.into(),
            config: serde_json::json!({"variant": variant, "workspace": "/ws",
                "train": {"seed": 0, "beta": 0.1}}),
            total_steps: 4,
            last_step: 4,
            train: BTreeMap::new(),
            eval: BTreeMap::new(),
            prefix: BTreeMap::new(),
            token_view: None,
            edits: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(variant: &str, dir: &str, seed: u64, beta: f64) -> Run {
        let mut r = tests_support::run(variant);
        r.dir = PathBuf::from(dir);
        r.config["train"]["seed"] = seed.into();
        r.config["train"]["beta"] = beta.into();
        r
    }

    #[test]
    fn seeds_become_one_line_and_repeated_variants_use_their_dirs() {
        let mut runs = vec![
            run("dpo", "/ws/runs/dpo-1", 1, 0.1),
            run("dpo", "/ws/runs/dpo-2", 2, 0.1),
            run("simpo", "/ws/runs/simpo-1", 1, 2.0),
        ];
        name_runs(&mut runs);
        assert_eq!(runs[0].name, "dpo-1");
        assert_eq!(runs[2].name, "simpo");
        let l = lines(&runs, true);
        assert_eq!(
            l,
            vec![
                Line {
                    label: "dpo (2 seeds)".into(),
                    members: vec![0, 1]
                },
                Line {
                    label: "simpo".into(),
                    members: vec![2]
                }
            ]
        );
        assert_eq!(lines(&runs, false).len(), 3);
    }

    #[test]
    fn a_prefix_gap_file_reads_nan_as_null() {
        let tmp = std::env::temp_dir().join(format!("gaplab-gap-{}.json", std::process::id()));
        std::fs::write(
            &tmp,
            r#"{"reward_model":"rm","data":"d","pairs":3,"rows":[{"k":1,"pairs":3,"delta":0.5,"stderr":0.1},{"k":2,"pairs":3,"delta":null,"stderr":null}],"full":{"k":null,"pairs":3,"delta":1.0,"stderr":0.2}}"#,
        )
        .unwrap();
        let g = PrefixGap::load(&tmp).unwrap();
        std::fs::remove_file(&tmp).unwrap();
        assert_eq!(g.rows.len(), 2);
        assert_eq!(g.rows[1].delta, None);
        assert_eq!(g.full.k, None);
        assert!(g.label.starts_with("gaplab-gap-"));
    }
}
