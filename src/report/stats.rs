//! The pure arithmetic of a report: which runs are seeds of one another, their mean ± std,
//! what a group is called, and which config fields differ between runs.

use std::collections::BTreeMap;

use serde_json::Value;

/// Config fields that do not make two runs different experiments: the run's name, where its
/// workspace sits, its seed, and how the dashboard looks.
const NOT_THE_EXPERIMENT: [&str; 3] = ["variant", "workspace", "train.seed"];
const DISPLAY_ONLY: &str = "ui.";

/// A config as `field.path -> value` (arrays kept whole, as their JSON text), e.g.
/// `train.beta -> 0.1`.
pub fn flatten(config: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, x, out);
                }
            }
            Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", config, &mut out);
    out
}

/// What two seeds of one experiment share: the flattened config without its name, workspace,
/// seed and display settings, with paths inside the workspace made relative to it (so copies of
/// one workspace group together).
pub fn experiment_key(flat: &BTreeMap<String, String>) -> String {
    let workspace = flat.get("workspace").map(String::as_str).unwrap_or("");
    let mut key = String::new();
    for (field, value) in flat {
        if NOT_THE_EXPERIMENT.contains(&field.as_str()) || field.starts_with(DISPLAY_ONLY) {
            continue;
        }
        let value = match value.strip_prefix(workspace) {
            Some(rest) if !workspace.is_empty() && rest.starts_with('/') => rest,
            _ => value.as_str(),
        };
        key.push_str(field);
        key.push('=');
        key.push_str(value);
        key.push('\n');
    }
    key
}

/// Indices grouped by equal keys, groups in the order of their first member.
pub fn group_by_key(keys: &[String]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match groups.iter_mut().find(|g| keys[g[0]] == *k) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// Mean and sample standard deviation (n − 1) of the finite values; None when there are none,
/// std None for a single value.
pub fn mean_std(xs: &[f64]) -> Option<(f64, Option<f64>)> {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.len() > 1).then(|| {
        let ss: f64 = v.iter().map(|x| (x - mean) * (x - mean)).sum();
        (ss / (n - 1.0)).sqrt()
    });
    Some((mean, std))
}

/// One point of a group's curve: the step, mean and std over the members that have it.
#[derive(Clone, Debug, PartialEq)]
pub struct BandPoint {
    pub step: usize,
    pub mean: f64,
    pub std: Option<f64>,
    pub n: usize,
}

/// The members' series (step -> value) as one curve with its ± std band, at every step any
/// member has a finite value.
pub fn band(series: &[&BTreeMap<usize, f64>]) -> Vec<BandPoint> {
    let mut by_step: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for s in series {
        for (&step, &v) in s.iter() {
            if v.is_finite() {
                by_step.entry(step).or_default().push(v);
            }
        }
    }
    by_step
        .into_iter()
        .filter_map(|(step, vs)| {
            mean_std(&vs).map(|(mean, std)| BandPoint {
                step,
                mean,
                std,
                n: vs.len(),
            })
        })
        .collect()
}

/// The label of a group of seeds: the name its members share (their common prefix, cut back to
/// a whole word: "dpo-s1", "dpo-s2" -> "dpo") and how many seeds it holds.
pub fn group_label(names: &[&str]) -> String {
    let Some(first) = names.first() else {
        return String::new();
    };
    if names.len() == 1 {
        return first.to_string();
    }
    let mut common = first.len();
    for n in &names[1..] {
        common = first
            .char_indices()
            .zip(n.chars())
            .take_while(|((_, a), b)| a == b)
            .map(|((i, a), _)| i + a.len_utf8())
            .last()
            .unwrap_or(0)
            .min(common);
    }
    let is_sep = |c: char| !c.is_alphanumeric();
    let whole = names.iter().all(|n| {
        n.len() == common || n[common..].starts_with(is_sep) || first[..common].ends_with(is_sep)
    });
    let mut base = &first[..common];
    if !whole {
        base = base.rfind(is_sep).map_or("", |i| &base[..i]);
    }
    let base = base.trim_end_matches(is_sep);
    let base = if base.is_empty() { *first } else { base };
    format!("{base} ({} seeds)", names.len())
}

/// The fields whose values differ between configs, each with its value per config ("—" where a
/// config lacks the field); the run's name is left out (the runs table has it).
pub fn differing_fields(configs: &[BTreeMap<String, String>]) -> Vec<(String, Vec<String>)> {
    let mut fields: Vec<&String> = configs.iter().flat_map(|c| c.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter(|f| f.as_str() != "variant")
        .filter_map(|f| {
            let values: Vec<String> = configs
                .iter()
                .map(|c| c.get(f).cloned().unwrap_or_else(|| "—".into()))
                .collect();
            values
                .iter()
                .any(|v| *v != values[0])
                .then(|| (f.clone(), values))
        })
        .collect()
}

/// "0.123 ± 0.045", "0.123" (one value) or "—" (none), in `digits` significant-looking places.
pub fn format_mean_std(m: Option<(f64, Option<f64>)>) -> String {
    match m {
        None => "—".into(),
        Some((mean, None)) => format_value(mean),
        Some((mean, Some(std))) => format!("{} ± {}", format_value(mean), format_value(std)),
    }
}

/// A metric value for a table: 4 decimals, or scientific for very small or large values.
pub fn format_value(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((m - 2.5).abs() < 1e-12);
        // Sample std: sqrt(((1.5² + 0.5²) * 2) / 3).
        assert!((s.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[2.0]), Some((2.0, None)));
        assert_eq!(mean_std(&[]), None);
        // A NaN (a metric that was not finite at that eval) does not poison the group.
        let (m, s) = mean_std(&[1.0, f64::NAN, 3.0]).unwrap();
        assert_eq!((m, s.map(|s| (s * 1e9).round())), (2.0, Some(1414213562.0)));
    }

    #[test]
    fn band_aligns_members_by_step() {
        let a: BTreeMap<usize, f64> = [(0, 1.0), (5, 2.0), (10, 3.0)].into();
        let b: BTreeMap<usize, f64> = [(0, 3.0), (5, 4.0)].into();
        let pts = band(&[&a, &b]);
        assert_eq!(pts.len(), 3);
        assert_eq!((pts[0].step, pts[0].mean, pts[0].n), (0, 2.0, 2));
        assert!((pts[1].std.unwrap() - 2f64.sqrt()).abs() < 1e-12);
        // Step 10 only one member reached: its value, no band.
        assert_eq!(
            pts[2],
            BandPoint {
                step: 10,
                mean: 3.0,
                std: None,
                n: 1
            }
        );
    }

    fn cfg(seed: u64, beta: f64, variant: &str, ws: &str) -> BTreeMap<String, String> {
        flatten(&json!({
            "variant": variant,
            "workspace": ws,
            "data": {"train": format!("{ws}/data/train.jsonl")},
            "train": {"seed": seed, "beta": beta, "objective": ["sigmoid"]},
            "ui": {"theme": "dark"},
        }))
    }

    #[test]
    fn seeds_group_and_other_settings_do_not() {
        let configs = [
            cfg(1, 0.1, "dpo-s1", "/a/ws"),
            cfg(2, 0.1, "dpo-s2", "/a/ws"),
            cfg(1, 0.2, "dpo-b2", "/a/ws"),
            // A copy of the workspace elsewhere: the same experiment.
            cfg(3, 0.1, "dpo", "/b/ws"),
        ];
        let keys: Vec<String> = configs.iter().map(experiment_key).collect();
        assert_eq!(group_by_key(&keys), vec![vec![0, 1, 3], vec![2]]);
    }

    #[test]
    fn a_different_data_file_is_a_different_experiment() {
        let a = cfg(1, 0.1, "a", "/ws");
        let mut b = cfg(2, 0.1, "b", "/ws");
        b.insert("data.train".into(), "/ws/data/other.jsonl".into());
        let keys = [experiment_key(&a), experiment_key(&b)];
        assert_eq!(group_by_key(&keys), vec![vec![0], vec![1]]);
    }

    #[test]
    fn group_labels_name_what_the_seeds_share() {
        assert_eq!(group_label(&["dpo-s1", "dpo-s2"]), "dpo (2 seeds)");
        assert_eq!(
            group_label(&["dpo-poet-seed1", "dpo-poet-seed2", "dpo-poet-seed3"]),
            "dpo-poet (3 seeds)"
        );
        assert_eq!(group_label(&["dpo-poet", "dpo-poet"]), "dpo-poet (2 seeds)");
        assert_eq!(group_label(&["dpo", "dpo-2"]), "dpo (2 seeds)");
        assert_eq!(group_label(&["alpha", "beta"]), "alpha (2 seeds)");
        assert_eq!(group_label(&["simpo"]), "simpo");
    }

    #[test]
    fn only_differing_fields_are_listed() {
        let a = cfg(1, 0.1, "dpo", "/ws");
        let mut b = cfg(2, 0.2, "dpo-poet", "/ws");
        b.insert("train.poet".into(), "min".into());
        let d = differing_fields(&[a, b]);
        let fields: Vec<&str> = d.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["train.beta", "train.poet", "train.seed"]);
        assert_eq!(d[1].1, ["—", "min"]);
        assert_eq!(d[0].1, ["0.1", "0.2"]);
    }

    #[test]
    fn values_format_for_tables() {
        assert_eq!(format_mean_std(Some((0.5, Some(0.25)))), "0.5000 ± 0.2500");
        assert_eq!(format_mean_std(Some((0.5, None))), "0.5000");
        assert_eq!(format_mean_std(None), "—");
        assert_eq!(format_value(1.5e-6), "1.500e-6");
        assert_eq!(format_value(f64::NAN), "—");
    }
}
