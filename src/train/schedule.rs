//! Learning-rate schedules: linear warmup, then cosine / linear decay to zero, or constant
//! (the shapes of Hugging Face's `get_*_schedule_with_warmup`).

use crate::config::Schedule;

/// Warmup steps: `warmup_steps` when set, else `ceil(ratio * total)`.
pub fn warmup_steps(total: usize, ratio: f64, steps: usize) -> usize {
    if steps > 0 {
        steps
    } else {
        (ratio * total as f64).ceil() as usize
    }
}

/// Learning rate for optimizer step `step` (0-based: the first update uses step 0).
pub fn lr_at(schedule: Schedule, base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / decay_steps).min(1.0);
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress).max(0.0),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let lr = |s, step| lr_at(s, 1.0, step, 10, 110);
        assert_eq!(lr(Schedule::Cosine, 0), 0.0);
        assert_eq!(lr(Schedule::Cosine, 5), 0.5);
        assert_eq!(lr(Schedule::Cosine, 10), 1.0);
        assert!((lr(Schedule::Cosine, 60) - 0.5).abs() < 1e-12);
        assert!(lr(Schedule::Cosine, 110).abs() < 1e-12);
        assert!((lr(Schedule::Linear, 60) - 0.5).abs() < 1e-12);
        assert_eq!(lr(Schedule::Constant, 100), 1.0);
    }

    #[test]
    fn warmup_from_ratio_or_steps() {
        assert_eq!(warmup_steps(100, 0.1, 0), 10);
        assert_eq!(warmup_steps(100, 0.1, 3), 3);
        assert_eq!(warmup_steps(7, 0.1, 0), 1);
        assert_eq!(warmup_steps(7, 0.0, 0), 0);
    }
}
