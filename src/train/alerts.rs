//! Alerts: what a researcher wants to be told about a run, read from the run's own records
//! (steps, skipped steps, evals) as they are emitted. [`Detector`] is pure: records and the
//! `[alerts]` thresholds in, alerts out. Each kind fires once when its condition starts to hold
//! and re-arms only when the condition clears, so a lasting problem is said once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::AlertsSection;
use crate::event::Event;

/// The kinds, as `Event::Alert` names them.
pub const LIKELIHOOD_DISPLACEMENT: &str = "likelihood_displacement";
pub const OVER_OPTIMIZATION: &str = "over_optimization";
pub const LENGTH_EXPLOITATION: &str = "length_exploitation";
pub const DEGENERATION: &str = "degeneration";
pub const KL_BLOWUP: &str = "kl_blowup";
pub const SKIPPED_STEPS: &str = "skipped_steps";

/// The metrics the detectors read (TRL names, as the trainer records them).
const CHOSEN_LOGPS: &str = "eval_logps/chosen";
const ACCURACY: &str = "eval_rewards/accuracies";
const MARGIN: &str = "eval_rewards/margins";
const JUDGE_SCORE: &str = "eval_judge/score";
const LENGTH: &str = "eval_gen/length";
const REPETITION: &str = "eval_gen/repetition";
const STOP_SHARE: &str = "eval_gen/stop_share";
const KL: &str = "eval_gen/kl";

/// A KL below this (nats per token) is noise: growth from it is not a blow-up.
const KL_GROWTH_BASE: f64 = 0.05;

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub kind: &'static str,
    pub step: usize,
    pub detail: String,
}

impl Alert {
    pub fn event(self) -> Event {
        Event::Alert {
            kind: self.kind.to_string(),
            step: self.step,
            detail: self.detail,
        }
    }
}

/// Watches one run's records.
#[derive(Clone, Debug, Default)]
pub struct Detector {
    /// Every eval's metrics, in order.
    evals: Vec<BTreeMap<String, f64>>,
    /// Steps that were skipped, oldest first.
    skipped: VecDeque<usize>,
    /// Kinds whose condition held at their last check (fired, not yet re-armed).
    active: BTreeSet<&'static str>,
}

impl Detector {
    /// The alerts `ev` raises under the thresholds of `cfg` (read at every record, so that a
    /// live edit takes effect at the next one). Records other than steps, skipped steps and
    /// evals raise none.
    pub fn observe(&mut self, cfg: &AlertsSection, ev: &Event) -> Vec<Alert> {
        let (step, checks): (usize, Vec<(&'static str, Option<String>)>) = match ev {
            Event::Eval(r) => {
                self.evals.push(r.metrics.clone());
                let e = &self.evals;
                (
                    r.step,
                    vec![
                        (LIKELIHOOD_DISPLACEMENT, likelihood_displacement(e, cfg)),
                        (OVER_OPTIMIZATION, over_optimization(e, cfg)),
                        (LENGTH_EXPLOITATION, length_exploitation(e, cfg)),
                        (DEGENERATION, degeneration(e, cfg)),
                        (KL_BLOWUP, kl_blowup(e, cfg)),
                    ],
                )
            }
            Event::Skipped { step, .. } => {
                self.skipped.push_back(*step);
                (*step, vec![(SKIPPED_STEPS, self.skipped_steps(*step, cfg))])
            }
            Event::Step(m) => (
                m.step,
                vec![(SKIPPED_STEPS, self.skipped_steps(m.step, cfg))],
            ),
            _ => return vec![],
        };
        let mut out = Vec::new();
        for (kind, detail) in checks {
            match detail {
                Some(detail) if self.active.insert(kind) && cfg.enabled => {
                    out.push(Alert { kind, step, detail })
                }
                Some(_) => {}
                None => {
                    self.active.remove(kind);
                }
            }
        }
        out
    }

    /// `skipped_steps` skipped steps within the last `skipped_window` steps up to `step`.
    fn skipped_steps(&mut self, step: usize, cfg: &AlertsSection) -> Option<String> {
        while self
            .skipped
            .front()
            .is_some_and(|&s| s + cfg.skipped_window <= step)
        {
            self.skipped.pop_front();
        }
        let n = self.skipped.len();
        (n >= cfg.skipped_steps).then(|| {
            format!(
                "{n} steps skipped (non-finite loss or gradient) within the last {} steps \
                 (alerts.skipped_steps = {})",
                cfg.skipped_window, cfg.skipped_steps
            )
        })
    }
}

/// The first and the last value of `name` over the last `window` evals when it moved the same
/// way at every eval of the window (all finite): a trend, not one noisy eval. `rising` picks the
/// direction.
fn trend(
    evals: &[BTreeMap<String, f64>],
    name: &str,
    window: usize,
    rising: bool,
) -> Option<(f64, f64)> {
    if window < 2 || evals.len() < window {
        return None;
    }
    let last = &evals[evals.len() - window..];
    let values: Vec<f64> = last
        .iter()
        .map(|m| m.get(name).copied().filter(|v| v.is_finite()))
        .collect::<Option<_>>()?;
    let steady = values
        .windows(2)
        .all(|w| if rising { w[1] > w[0] } else { w[1] < w[0] });
    steady.then(|| (values[0], values[window - 1]))
}

/// The first eval's and the latest eval's value of `name` (both finite, two evals at least).
fn since_start(evals: &[BTreeMap<String, f64>], name: &str) -> Option<(f64, f64)> {
    let first = evals.iter().find_map(|m| m.get(name).copied())?;
    let last = evals.last()?.get(name).copied()?;
    (evals.len() >= 2 && first.is_finite() && last.is_finite()).then_some((first, last))
}

/// Chosen log-probs falling over the window while reward accuracy rises: the margin grows by
/// pushing the chosen responses down too (likelihood displacement).
pub fn likelihood_displacement(
    evals: &[BTreeMap<String, f64>],
    cfg: &AlertsSection,
) -> Option<String> {
    let (c0, c1) = trend(evals, CHOSEN_LOGPS, cfg.window, false)?;
    let (a0, a1) = trend(evals, ACCURACY, cfg.window, true)?;
    Some(format!(
        "{CHOSEN_LOGPS} fell {c0:.3} -> {c1:.3} while {ACCURACY} rose {a0:.3} -> {a1:.3} \
         over the last {} evals",
        cfg.window
    ))
}

/// The implicit reward improving (accuracy or margin up) while the judge's score of the
/// policy's generations falls over the window.
pub fn over_optimization(evals: &[BTreeMap<String, f64>], cfg: &AlertsSection) -> Option<String> {
    let (j0, j1) = trend(evals, JUDGE_SCORE, cfg.window, false)?;
    if j0 - j1 < cfg.judge_drop {
        return None;
    }
    let rising = [ACCURACY, MARGIN].into_iter().find_map(|name| {
        let (a, b) = trend(evals, name, cfg.window, true)?;
        Some(format!("{name} rose {a:.3} -> {b:.3}"))
    })?;
    Some(format!(
        "{rising} while {JUDGE_SCORE} fell {j0:.3} -> {j1:.3} over the last {} evals",
        cfg.window
    ))
}

/// The greedy generations' mean length up by `length_growth` or more over the first eval's.
pub fn length_exploitation(evals: &[BTreeMap<String, f64>], cfg: &AlertsSection) -> Option<String> {
    let (l0, l1) = since_start(evals, LENGTH)?;
    // A first length under one token (empty generations) is measured from one.
    let growth = l1 / l0.max(1.0) - 1.0;
    (growth >= cfg.length_growth).then(|| {
        format!(
            "{LENGTH} {l0:.1} -> {l1:.1} tokens (+{:.0}%, alerts.length_growth = {})",
            growth * 100.0,
            cfg.length_growth
        )
    })
}

/// Whether `x1` is at least `factor` times `x0` and at least `floor` above it.
pub fn doubled(x0: f64, x1: f64, factor: f64, floor: f64) -> bool {
    x1 >= factor * x0 && x1 - x0 >= floor
}

/// The share of greedy generations caught in a loop, or of those that run into the length
/// limit (1 - stop share), grown by `degeneration_factor` (and `degeneration_floor`) over the
/// first eval's.
pub fn degeneration(evals: &[BTreeMap<String, f64>], cfg: &AlertsSection) -> Option<String> {
    let (f, floor) = (cfg.degeneration_factor, cfg.degeneration_floor);
    let mut parts = Vec::new();
    if let Some((r0, r1)) = since_start(evals, REPETITION) {
        if doubled(r0, r1, f, floor) {
            parts.push(format!("{REPETITION} {r0:.2} -> {r1:.2}"));
        }
    }
    if let Some((s0, s1)) = since_start(evals, STOP_SHARE) {
        let (u0, u1) = (1.0 - s0, 1.0 - s1);
        if doubled(u0, u1, f, floor) {
            parts.push(format!(
                "share not stopping before max_new_tokens {u0:.2} -> {u1:.2}"
            ));
        }
    }
    (!parts.is_empty()).then(|| {
        format!(
            "{} since the first eval (alerts.degeneration_factor = {f})",
            parts.join(", ")
        )
    })
}

/// The sampled per-token KL above `kl_max`, or `kl_growth` times the previous eval's.
pub fn kl_blowup(evals: &[BTreeMap<String, f64>], cfg: &AlertsSection) -> Option<String> {
    let kl = evals.last()?.get(KL).copied().filter(|v| v.is_finite())?;
    if kl > cfg.kl_max {
        return Some(format!(
            "{KL} {kl:.3} nats per token > alerts.kl_max = {}",
            cfg.kl_max
        ));
    }
    let prev = evals
        .len()
        .checked_sub(2)
        .and_then(|i| evals[i].get(KL).copied())
        .filter(|v| v.is_finite() && *v >= KL_GROWTH_BASE)?;
    (kl >= cfg.kl_growth * prev).then(|| {
        format!(
            "{KL} {prev:.3} -> {kl:.3} nats per token between evals (x{:.1}, alerts.kl_growth = {})",
            kl / prev,
            cfg.kl_growth
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EvalReport, StepMetrics};

    fn cfg() -> AlertsSection {
        AlertsSection::default()
    }

    fn eval(step: usize, metrics: &[(&str, f64)]) -> Event {
        Event::Eval(Box::new(EvalReport {
            step,
            time: 0.0,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            prefix: Default::default(),
            token_diffs: vec![],
            entropy: vec![],
            cross_entropy: vec![],
            kl_profile: vec![],
            token_view: vec![],
        }))
    }

    /// The kinds fired over a series of evals, each as (kind, step).
    fn fired(series: &[Vec<(&str, f64)>], cfg: &AlertsSection) -> Vec<(&'static str, usize)> {
        let mut d = Detector::default();
        series
            .iter()
            .enumerate()
            .flat_map(|(i, m)| d.observe(cfg, &eval(i * 10, m)))
            .map(|a| (a.kind, a.step))
            .collect()
    }

    /// A run that goes well: accuracy, margin, judge score up; chosen log-probs steady;
    /// generations as long, stopping and varied as at the start; a small KL.
    fn healthy(i: usize) -> Vec<(&'static str, f64)> {
        let x = i as f64;
        vec![
            (CHOSEN_LOGPS, -40.0 + 0.5 * x),
            (ACCURACY, 0.5 + 0.1 * x),
            (MARGIN, 0.2 * x),
            (JUDGE_SCORE, 0.3 + 0.05 * x),
            (LENGTH, 20.0 + 0.5 * x),
            (REPETITION, 0.02),
            (STOP_SHARE, 0.95),
            (KL, 0.02 + 0.03 * x),
        ]
    }

    fn with(i: usize, name: &'static str, v: f64) -> Vec<(&'static str, f64)> {
        let mut m = healthy(i);
        m.retain(|x| x.0 != name);
        m.push((name, v));
        m
    }

    #[test]
    fn a_healthy_run_raises_nothing() {
        let series: Vec<_> = (0..8).map(healthy).collect();
        assert_eq!(fired(&series, &cfg()), vec![]);
    }

    #[test]
    fn chosen_logps_falling_while_accuracy_rises_is_likelihood_displacement() {
        let series: Vec<_> = (0..4)
            .map(|i| with(i, CHOSEN_LOGPS, -40.0 - 3.0 * i as f64))
            .collect();
        // Needs `window` = 3 evals: fires at the third, once.
        assert_eq!(fired(&series, &cfg()), vec![(LIKELIHOOD_DISPLACEMENT, 20)]);
    }

    #[test]
    fn a_falling_judge_score_under_a_rising_reward_is_over_optimization() {
        let series: Vec<_> = (0..3)
            .map(|i| with(i, JUDGE_SCORE, 0.6 - 0.1 * i as f64))
            .collect();
        assert_eq!(fired(&series, &cfg()), vec![(OVER_OPTIMIZATION, 20)]);
        // Without a judge there is nothing to compare.
        let series: Vec<_> = (0..3)
            .map(|i| {
                let mut m = healthy(i);
                m.retain(|x| x.0 != JUDGE_SCORE);
                m
            })
            .collect();
        assert_eq!(fired(&series, &cfg()), vec![]);
    }

    #[test]
    fn a_noisy_or_slight_judge_dip_is_not_over_optimization() {
        // Down, up, down: no trend over the window.
        let series: Vec<_> = [0.557, 0.56, 0.548]
            .iter()
            .enumerate()
            .map(|(i, &v)| with(i, JUDGE_SCORE, v))
            .collect();
        assert_eq!(fired(&series, &cfg()), vec![]);
        // Falling at every eval, but by less than alerts.judge_drop (0.02) in all.
        let series: Vec<_> = [0.557, 0.552, 0.545]
            .iter()
            .enumerate()
            .map(|(i, &v)| with(i, JUDGE_SCORE, v))
            .collect();
        assert_eq!(fired(&series, &cfg()), vec![]);
    }

    #[test]
    fn generations_a_quarter_longer_are_length_exploitation() {
        let series = vec![
            with(0, LENGTH, 20.0),
            with(1, LENGTH, 24.0),
            with(2, LENGTH, 25.0),
        ];
        assert_eq!(fired(&series, &cfg()), vec![(LENGTH_EXPLOITATION, 20)]);
    }

    #[test]
    fn degeneration_needs_a_doubling_above_the_floor() {
        let series = vec![with(0, REPETITION, 0.1), with(1, REPETITION, 0.2)];
        assert_eq!(fired(&series, &cfg()), vec![(DEGENERATION, 10)]);
        // 0.00 -> 0.02 is below the floor.
        let series = vec![with(0, REPETITION, 0.0), with(1, REPETITION, 0.02)];
        assert_eq!(fired(&series, &cfg()), vec![]);
        // Stop failures: 1 - 0.95 = 0.05 -> 1 - 0.8 = 0.2.
        let series = vec![with(0, STOP_SHARE, 0.95), with(1, STOP_SHARE, 0.8)];
        assert_eq!(fired(&series, &cfg()), vec![(DEGENERATION, 10)]);
        assert!(doubled(0.1, 0.2, 2.0, 0.05) && !doubled(0.1, 0.19, 2.0, 0.05));
    }

    #[test]
    fn kl_above_its_maximum_or_jumping_is_a_blowup() {
        let series = vec![with(0, KL, 0.1), with(1, KL, 6.0)];
        assert_eq!(fired(&series, &cfg()), vec![(KL_BLOWUP, 10)]);
        let series = vec![with(0, KL, 0.1), with(1, KL, 0.45)];
        assert_eq!(fired(&series, &cfg()), vec![(KL_BLOWUP, 10)]);
        // Growth from noise is not a blow-up.
        let series = vec![with(0, KL, 0.01), with(1, KL, 0.2)];
        assert_eq!(fired(&series, &cfg()), vec![]);
    }

    #[test]
    fn an_alert_fires_once_and_rearms_when_its_condition_clears() {
        let series = vec![
            with(0, KL, 0.1),
            with(1, KL, 6.0),
            with(2, KL, 7.0),
            with(3, KL, 1.0),
            with(4, KL, 6.5),
        ];
        assert_eq!(
            fired(&series, &cfg()),
            vec![(KL_BLOWUP, 10), (KL_BLOWUP, 40)]
        );
    }

    #[test]
    fn thresholds_are_read_at_every_record_and_disabled_alerts_stay_silent() {
        let mut d = Detector::default();
        let off = AlertsSection {
            enabled: false,
            ..cfg()
        };
        assert!(d.observe(&off, &eval(0, &with(0, KL, 6.0))).is_empty());
        // Still held when alerts come back on: said at the next record that holds it after
        // it clears, not at once (it was current while they were off).
        assert!(d.observe(&cfg(), &eval(10, &with(1, KL, 6.0))).is_empty());
        let strict = AlertsSection {
            kl_max: 0.5,
            ..cfg()
        };
        assert!(d.observe(&strict, &eval(20, &with(2, KL, 0.4))).is_empty());
        let a = d.observe(&strict, &eval(30, &with(3, KL, 0.6)));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, KL_BLOWUP);
        assert!(
            a[0].detail.contains("alerts.kl_max = 0.5"),
            "{}",
            a[0].detail
        );
    }

    #[test]
    fn repeated_skipped_steps_within_the_window() {
        let mut d = Detector::default();
        let c = AlertsSection {
            skipped_steps: 2,
            skipped_window: 10,
            ..cfg()
        };
        let skipped = |step| Event::Skipped {
            step,
            reason: "loss is NaN".into(),
        };
        let step = |step| {
            Event::Step(StepMetrics {
                step,
                time: 0.0,
                metrics: Default::default(),
            })
        };
        assert!(d.observe(&c, &skipped(1)).is_empty());
        // 1 and 12 are 11 steps apart: outside the window.
        assert!(d.observe(&c, &skipped(12)).is_empty());
        let a = d.observe(&c, &skipped(15));
        assert_eq!((a[0].kind, a[0].step), (SKIPPED_STEPS, 15));
        assert!(d.observe(&c, &skipped(16)).is_empty());
        // Steps go on without skips: the window empties and the alert re-arms.
        assert!(d.observe(&c, &step(30)).is_empty());
        assert!(d.observe(&c, &skipped(31)).is_empty());
        assert_eq!(d.observe(&c, &skipped(32)).len(), 1);
    }
}
