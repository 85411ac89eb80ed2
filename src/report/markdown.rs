//! report.md: the runs, the config fields that differ between them, the final metrics (mean ±
//! std over seeds) and the figures with what each shows.

use std::fmt::Write;
use std::path::Path;

use super::stats::{differing_fields, flatten, format_mean_std, mean_std};
use super::{Line, PrefixGap, Run, Written};

/// The metrics of the final-metrics table, in this order (those no run has are left out), then
/// the judge's greedy prefix scores.
const MAIN_METRICS: [&str; 7] = [
    "eval_loss",
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "eval_rewards/chosen",
    "eval_rewards/rejected",
    "eval_judge/score",
    "eval_judge/rm_score",
];

/// A table cell: `|` escaped, newlines as spaces.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(
        out,
        "| {} |",
        cells
            .iter()
            .map(|c| cell(c))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

fn header(out: &mut String, cells: &[String]) {
    row(out, cells);
    let _ = writeln!(out, "|{}", " --- |".repeat(cells.len()));
}

/// The metrics of the table: [`MAIN_METRICS`] and `eval_judge/prefix_score@k` that any run has.
pub fn table_metrics(runs: &[Run]) -> Vec<String> {
    let has = |m: &str| runs.iter().any(|r| r.final_eval(m).is_some());
    let mut out: Vec<String> = MAIN_METRICS
        .iter()
        .filter(|m| has(m))
        .map(|m| m.to_string())
        .collect();
    let mut prefix: Vec<(usize, String)> = runs
        .iter()
        .flat_map(|r| r.eval.keys())
        .filter_map(|m| {
            m.strip_prefix("eval_judge/prefix_score@")
                .and_then(|k| k.parse::<usize>().ok())
                .map(|k| (k, m.clone()))
        })
        .collect();
    prefix.sort();
    prefix.dedup();
    out.extend(prefix.into_iter().map(|(_, m)| m));
    out
}

/// A path as report.md links it: relative to the report's folder when inside it.
fn link(path: &Path, out: &Path) -> String {
    path.strip_prefix(out).unwrap_or(path).display().to_string()
}

pub fn report(
    runs: &[Run],
    lines: &[Line],
    gaps: &[PrefixGap],
    written: &Written,
    out: &Path,
) -> String {
    let mut md = String::from("# gaplab report\n\n");
    let _ = writeln!(
        md,
        "{} run{} drawn as {} line{} (runs that differ only by their seed are one line: their mean, with a ± 1 std band).\n",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        lines.len(),
        if lines.len() == 1 { "" } else { "s" },
    );

    md.push_str("## Runs\n\n");
    header(
        &mut md,
        &[
            "run",
            "variant",
            "line",
            "seed",
            "steps",
            "evals",
            "edits",
            "directory",
        ]
        .map(String::from),
    );
    for (i, r) in runs.iter().enumerate() {
        let line = lines
            .iter()
            .find(|l| l.members.contains(&i))
            .map_or(String::new(), |l| l.label.clone());
        let evals = r.eval.values().map(|s| s.len()).max().unwrap_or(0);
        row(
            &mut md,
            &[
                r.name.clone(),
                r.variant.clone(),
                line,
                r.seed().map_or("—".into(), |s| s.to_string()),
                format!("{} / {}", r.last_step, r.total_steps),
                evals.to_string(),
                r.edits.to_string(),
                format!("`{}`", r.dir.display()),
            ],
        );
    }
    md.push('\n');

    md.push_str("## Config differences\n\n");
    let flat: Vec<_> = runs.iter().map(|r| flatten(&r.config)).collect();
    let diff = differing_fields(&flat);
    if runs.len() < 2 {
        md.push_str("One run: nothing to compare.\n\n");
    } else if diff.is_empty() {
        md.push_str("The runs' configs are the same.\n\n");
    } else {
        let mut head = vec!["field".to_string()];
        head.extend(runs.iter().map(|r| r.name.clone()));
        header(&mut md, &head);
        for (field, values) in &diff {
            let mut cells = vec![format!("`{field}`")];
            cells.extend(values.iter().cloned());
            row(&mut md, &cells);
        }
        md.push('\n');
    }

    md.push_str("## Final metrics\n\n");
    let metrics = table_metrics(runs);
    if metrics.is_empty() {
        md.push_str("No run was evaluated.\n\n");
    } else {
        md.push_str("The last evaluation of each run; mean ± std over the seeds of a line.\n\n");
        let mut head = vec!["line".to_string(), "runs".into(), "step".into()];
        head.extend(metrics.iter().cloned());
        header(&mut md, &head);
        for l in lines {
            let steps: Vec<usize> = l
                .members
                .iter()
                .filter_map(|&i| runs[i].last_eval_step())
                .collect();
            let step = match (steps.iter().min(), steps.iter().max()) {
                (Some(a), Some(b)) if a == b => a.to_string(),
                (Some(a), Some(b)) => format!("{a}–{b}"),
                _ => "—".into(),
            };
            let mut cells = vec![l.label.clone(), l.members.len().to_string(), step];
            for m in &metrics {
                let vals: Vec<f64> = l
                    .members
                    .iter()
                    .filter_map(|&i| runs[i].final_eval(m))
                    .collect();
                cells.push(format_mean_std(mean_std(&vals)));
            }
            row(&mut md, &cells);
        }
        md.push('\n');
    }

    if !gaps.is_empty() {
        md.push_str("## ΔQ(k) data\n\n");
        header(
            &mut md,
            &["file", "data", "reward model", "pairs", "full ΔQ"].map(String::from),
        );
        for g in gaps {
            row(
                &mut md,
                &[
                    g.label.clone(),
                    g.data.clone(),
                    g.reward_model.clone(),
                    g.pairs.to_string(),
                    format_mean_std(g.full.delta.map(|d| (d, g.full.stderr))),
                ],
            );
        }
        md.push('\n');
    }

    md.push_str("## Figures\n\n");
    for (path, what) in &written.figures {
        let rel = link(path, out);
        let _ = writeln!(md, "![{rel}]({rel})\n\n{what}\n");
    }
    if !written.notes.is_empty() {
        md.push_str("## Not drawn\n\n");
        for n in &written.notes {
            let _ = writeln!(md, "- {n}");
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests_support::run;

    #[test]
    fn the_tables_list_runs_differences_and_final_metrics() {
        let mut a = run("dpo-s1");
        let mut b = run("dpo-s2");
        let c = run("simpo");
        a.config["train"]["seed"] = 1.into();
        b.config["train"]["seed"] = 2.into();
        a.eval
            .insert("eval_loss".into(), [(0, 0.7), (4, 0.5)].into());
        b.eval.insert("eval_loss".into(), [(4, 0.7)].into());
        let runs = vec![a, b, c];
        let lines = vec![
            Line {
                label: "dpo (2 seeds)".into(),
                members: vec![0, 1],
            },
            Line {
                label: "simpo".into(),
                members: vec![2],
            },
        ];
        let written = Written {
            figures: vec![(Path::new("/out/loss.svg").into(), "Loss.".into())],
            notes: vec!["token strips: simpo has no token view".into()],
            ..Default::default()
        };
        let md = report(&runs, &lines, &[], &written, Path::new("/out"));
        assert!(
            md.contains("| dpo-s1 | dpo-s1 | dpo (2 seeds) | 1 | 4 / 4 | 2 | 0 |"),
            "{md}"
        );
        assert!(md.contains("| `train.seed` | 1 | 2 | 0 |"), "{md}");
        assert!(md.contains("| line | runs | step | eval_loss |"), "{md}");
        assert!(
            md.contains("| dpo (2 seeds) | 2 | 4 | 0.6000 ± 0.1414 |"),
            "{md}"
        );
        assert!(md.contains("| simpo | 1 | — | — |"), "{md}");
        assert!(md.contains("![loss.svg](loss.svg)"), "{md}");
        assert!(
            md.contains("- token strips: simpo has no token view"),
            "{md}"
        );
    }
}
