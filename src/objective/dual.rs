//! Forward-mode derivatives for the per-pair loss formulas: a value with its partial
//! derivatives with respect to the two policy sequence scores a pair term reads (x: the chosen
//! response's, y: the rejected one's). Every loss is written once, as math on `Dual`, and its
//! gradient comes with it; tests check each against finite differences.

use std::ops::{Add, Div, Mul, Neg, Sub};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dual {
    pub v: f64,
    /// d/dx: the chosen response's policy score.
    pub dx: f64,
    /// d/dy: the rejected response's policy score.
    pub dy: f64,
}

impl Dual {
    pub const fn c(v: f64) -> Dual {
        Dual {
            v,
            dx: 0.0,
            dy: 0.0,
        }
    }

    pub const fn x(v: f64) -> Dual {
        Dual {
            v,
            dx: 1.0,
            dy: 0.0,
        }
    }

    pub const fn y(v: f64) -> Dual {
        Dual {
            v,
            dx: 0.0,
            dy: 1.0,
        }
    }

    /// f(self) given f(v) and f'(v).
    fn chain(self, f: f64, df: f64) -> Dual {
        Dual {
            v: f,
            dx: df * self.dx,
            dy: df * self.dy,
        }
    }

    pub fn exp(self) -> Dual {
        let e = self.v.exp();
        self.chain(e, e)
    }

    pub fn sqr(self) -> Dual {
        self.chain(self.v * self.v, 2.0 * self.v)
    }

    pub fn sigmoid(self) -> Dual {
        let s = sigmoid(self.v);
        self.chain(s, s * (1.0 - s))
    }

    /// log σ(x), stable for large |x|.
    pub fn log_sigmoid(self) -> Dual {
        self.chain(log_sigmoid(self.v), sigmoid(-self.v))
    }

    /// max(0, x); the derivative at 0 is 0, as torch's relu.
    pub fn relu(self) -> Dual {
        if self.v > 0.0 {
            self
        } else {
            Dual::c(0.0)
        }
    }

    /// log(1 − e^x) for x < 0 (ORPO's log-odds), stable near 0 and for very negative x.
    pub fn log1mexp(self) -> Dual {
        let x = self.v;
        let f = if x > -std::f64::consts::LN_2 {
            (-x.exp_m1()).ln()
        } else {
            (-x.exp()).ln_1p()
        };
        // d/dx log(1 - e^x) = -e^x / (1 - e^x) = -1 / (e^-x - 1)
        self.chain(f, -1.0 / (-x).exp_m1())
    }

    /// Clamped from above at `max` (the derivative is 0 where the clamp binds), as torch.clamp.
    pub fn min_c(self, max: f64) -> Dual {
        if self.v > max {
            Dual::c(max)
        } else {
            self
        }
    }
}

pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

pub fn log_sigmoid(x: f64) -> f64 {
    // -softplus(-x)
    -((-x).max(0.0) + (-x.abs()).exp().ln_1p())
}

impl Add for Dual {
    type Output = Dual;
    fn add(self, o: Dual) -> Dual {
        Dual {
            v: self.v + o.v,
            dx: self.dx + o.dx,
            dy: self.dy + o.dy,
        }
    }
}

impl Sub for Dual {
    type Output = Dual;
    fn sub(self, o: Dual) -> Dual {
        self + (-o)
    }
}

impl Neg for Dual {
    type Output = Dual;
    fn neg(self) -> Dual {
        Dual {
            v: -self.v,
            dx: -self.dx,
            dy: -self.dy,
        }
    }
}

impl Mul for Dual {
    type Output = Dual;
    fn mul(self, o: Dual) -> Dual {
        Dual {
            v: self.v * o.v,
            dx: self.dx * o.v + self.v * o.dx,
            dy: self.dy * o.v + self.v * o.dy,
        }
    }
}

impl Div for Dual {
    type Output = Dual;
    fn div(self, o: Dual) -> Dual {
        let v = self.v / o.v;
        Dual {
            v,
            dx: (self.dx - v * o.dx) / o.v,
            dy: (self.dy - v * o.dy) / o.v,
        }
    }
}

impl Add<f64> for Dual {
    type Output = Dual;
    fn add(self, c: f64) -> Dual {
        Dual {
            v: self.v + c,
            ..self
        }
    }
}

impl Sub<f64> for Dual {
    type Output = Dual;
    fn sub(self, c: f64) -> Dual {
        Dual {
            v: self.v - c,
            ..self
        }
    }
}

impl Mul<f64> for Dual {
    type Output = Dual;
    fn mul(self, c: f64) -> Dual {
        Dual {
            v: self.v * c,
            dx: self.dx * c,
            dy: self.dy * c,
        }
    }
}

impl Div<f64> for Dual {
    type Output = Dual;
    fn div(self, c: f64) -> Dual {
        self * (1.0 / c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks d/dx of `f` at `x` against a central difference.
    fn check(f: impl Fn(Dual) -> Dual, x: f64) {
        let h = 1e-6;
        let d = f(Dual::x(x));
        let fd = (f(Dual::c(x + h)).v - f(Dual::c(x - h)).v) / (2.0 * h);
        assert!(
            (d.dx - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
            "at {x}: {} vs {fd}",
            d.dx
        );
        assert_eq!(d.dy, 0.0);
    }

    #[test]
    fn derivatives_match_finite_differences() {
        for x in [-30.0, -3.0, -0.5, -1e-3, 0.7, 4.0, 25.0] {
            check(|d| d.exp(), x / 10.0);
            check(|d| d.sigmoid(), x);
            check(|d| d.log_sigmoid(), x);
            check(|d| d.sqr() * 3.0 - d, x);
            check(|d| (d * d + 1.0) / (d.exp() + 2.0), x / 10.0);
            check(|d| d.min_c(1.0), x + 0.123);
            check(|d| (d - 2.0).relu(), x);
        }
        for x in [-40.0, -5.0, -0.9, -0.2, -1e-2] {
            check(|d| d.log1mexp(), x);
        }
    }

    #[test]
    fn stable_at_extremes() {
        assert_eq!(log_sigmoid(-800.0), -800.0);
        assert_eq!(log_sigmoid(800.0), 0.0);
        assert!(Dual::x(-1e-12).log1mexp().v.is_finite());
        assert!((Dual::c(-50.0).log1mexp().v).abs() < 1e-20);
        assert_eq!(sigmoid(-800.0), 0.0);
    }
}
