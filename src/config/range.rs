//! Ranges of the settings that are also command-line flags (`train.beta` and eval's `--beta`,
//! `sample.top_p` and sample's `--top-p`, ...): one checker each, so both accept the same
//! values and reject the others in the same words. The caller names the field or the flag.

/// `Err(message)` unless `ok`.
fn expect(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(message())
    }
}

/// The inverse temperature of DPO, IPO and SimPO.
pub fn beta(x: f64) -> Result<(), String> {
    expect(x > 0.0 && x.is_finite(), || {
        format!("expected a number > 0, got {x}")
    })
}

/// SimPO's target margin: any finite number.
pub fn gamma(x: f64) -> Result<(), String> {
    expect(x.is_finite(), || {
        format!("expected a finite number, got {x}")
    })
}

/// A sampling temperature; 0 is greedy.
pub fn temperature(x: f64) -> Result<(), String> {
    expect(x >= 0.0 && x.is_finite(), || {
        format!("expected a number >= 0, got {x}")
    })
}

/// Nucleus sampling's probability mass; 1 keeps every token.
pub fn top_p(x: f64) -> Result<(), String> {
    expect(x > 0.0 && x <= 1.0, || {
        format!("expected a number in (0, 1], got {x}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_is_positive_and_finite() {
        assert!(beta(0.1).is_ok());
        assert_eq!(beta(-0.5).unwrap_err(), "expected a number > 0, got -0.5");
        assert!(beta(0.0).is_err());
        assert!(beta(f64::INFINITY).is_err());
        assert!(beta(f64::NAN).is_err());
    }

    #[test]
    fn gamma_is_finite() {
        assert!(gamma(-1.0).is_ok());
        assert_eq!(
            gamma(f64::INFINITY).unwrap_err(),
            "expected a finite number, got inf"
        );
    }

    #[test]
    fn temperature_is_zero_or_more() {
        assert!(temperature(0.0).is_ok());
        assert_eq!(
            temperature(-1.0).unwrap_err(),
            "expected a number >= 0, got -1"
        );
        assert!(temperature(f64::NAN).is_err());
    }

    #[test]
    fn top_p_is_in_zero_one() {
        assert!(top_p(1.0).is_ok());
        assert!(top_p(0.5).is_ok());
        assert!(top_p(0.0).is_err());
        assert_eq!(
            top_p(1.5).unwrap_err(),
            "expected a number in (0, 1], got 1.5"
        );
    }
}
