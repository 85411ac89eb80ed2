//! Small pure functions behind the charts and the samples view.

/// TensorBoard's smoothing: an exponential moving average debiased for its start, so the first
/// points are not pulled towards zero. `weight` in [0, 1): 0 leaves the series as it is.
pub fn smooth(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    let w = weight.clamp(0.0, 0.999);
    let mut last = 0.0;
    let mut n = 0i32;
    points
        .iter()
        .map(|&(x, y)| {
            if !y.is_finite() {
                return (x, y);
            }
            last = last * w + (1.0 - w) * y;
            n += 1;
            let debias = if w == 0.0 { 1.0 } else { 1.0 - w.powi(n) };
            (x, last / debias)
        })
        .collect()
}

/// At most about `max_points` points, keeping each bucket's minimum and maximum (in x order)
/// so spikes survive downsampling.
pub fn downsample(points: &[(f64, f64)], max_points: usize) -> Vec<(f64, f64)> {
    if points.len() <= max_points.max(2) {
        return points.to_vec();
    }
    let buckets = (max_points / 2).max(1);
    let size = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(2 * buckets);
    for chunk in points.chunks(size) {
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p.1 < chunk[lo].1 {
                lo = i;
            }
            if p.1 > chunk[hi].1 {
                hi = i;
            }
        }
        let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        out.push(chunk[a]);
        if b != a {
            out.push(chunk[b]);
        }
    }
    out
}

/// Nearest-rank percentile of unsorted finite values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// The y-range of a chart: all finite values, or the 5th-95th percentile range when ignoring
/// outliers; padded by 5% and never empty.
pub fn y_range(values: &[f64], ignore_outliers: bool) -> Option<(f64, f64)> {
    let (lo, hi) = if ignore_outliers {
        (percentile(values, 5.0)?, percentile(values, 95.0)?)
    } else {
        let finite = values.iter().copied().filter(|x| x.is_finite());
        let lo = finite.clone().fold(f64::INFINITY, f64::min);
        let hi = finite.fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            return None;
        }
        (lo, hi)
    };
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    Some((lo - pad, hi + pad))
}

/// Where two generations part: the token view's rule, for the samples side by side too.
pub use crate::train::token_view::first_difference;

/// Model text made safe to draw: tabs, control characters and escape sequences are shown as
/// visible symbols instead of being interpreted by the terminal; line breaks are kept.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push('\n'),
            '\t' => out.push('⇥'),
            '\r' => out.push('␍'),
            // C0 controls as Unicode control pictures (ESC becomes ␛).
            c if (c as u32) < 0x20 => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('�')),
            '\u{7f}' => out.push('␡'),
            // C1 controls, bidirectional overrides and zero-width characters would move or hide
            // text: show their code points.
            c if (0x80..0xa0).contains(&(c as u32))
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}') =>
            {
                out.push_str(&format!("<U+{:04X}>", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Human-friendly seconds.
pub fn duration(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "-".into();
    }
    let s = s as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Compact number for axis labels and legends.
pub fn compact(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        "-".into()
    } else if a == 0.0 {
        "0".into()
    } else if x.fract() == 0.0 && a < 1e6 {
        format!("{x:.0}")
    } else if !(1e-3..1e4).contains(&a) {
        format!("{x:.1e}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// An axis label with 3 significant digits: `1.10`, `0.0123`, `123`, `1235` (integers keep
/// their units), and outside [0.001, 10000) an exponent without trailing zeros: `1.2e4`,
/// `4.56e-5`. Non-finite values are `-`.
pub fn sig3(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    // Rounded first: 9.996 is 10.0 and 0.9996 is 1.00, with the digits of their magnitude.
    let magnitude = |v: f64| v.abs().log10().floor() as i32;
    let scale = 10f64.powi(2 - magnitude(x));
    let r = (x * scale).round() / scale;
    let a = r.abs();
    if !(1e-3..1e4).contains(&a) {
        let e = magnitude(r);
        let mantissa = format!("{:.2}", r / 10f64.powi(e));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{e}");
    }
    if a >= 100.0 {
        return format!("{:.0}", x.round());
    }
    let decimals = (2 - magnitude(r)).max(0) as usize;
    format!("{r:.decimals$}")
}

/// Labels for axis values `xs` with 3 significant digits ([`sig3`]), or more where that
/// would print two different values the same (a narrow range far from zero).
pub fn axis_labels(xs: &[f64]) -> Vec<String> {
    let same = |labels: &[String]| {
        labels.windows(2).any(|w| w[0] == w[1]) && xs.windows(2).any(|w| w[0] != w[1])
    };
    let labels: Vec<String> = xs.iter().map(|&x| sig3(x)).collect();
    if !same(&labels) {
        return labels;
    }
    for digits in 4..=8usize {
        let more: Vec<String> = xs
            .iter()
            .map(|&x| {
                if x == 0.0 || !x.is_finite() {
                    return sig3(x);
                }
                let d = digits.saturating_sub(1) as i32 - x.abs().log10().floor() as i32;
                format!("{x:.prec$}", prec = d.max(0) as usize)
            })
            .collect();
        if !same(&more) {
            return more;
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_have_three_significant_digits() {
        let cases = [
            (1.1010, "1.10"),
            (0.012345, "0.0123"),
            (-0.5, "-0.500"),
            (2.1941, "2.19"),
            (123.456, "123"),
            (1234.5, "1235"),
            (12345.0, "1.23e4"),
            (12000.0, "1.2e4"),
            (1e4, "1e4"),
            (9999.7, "1e4"),
            (0.00045678, "4.57e-4"),
            (9.996, "10.0"),
            (0.9996, "1.00"),
            (0.001, "0.00100"),
            (-3e-7, "-3e-7"),
            (0.0, "0"),
            (f64::NAN, "-"),
            (f64::INFINITY, "-"),
        ];
        for (x, want) in cases {
            assert_eq!(sig3(x), want, "{x}");
        }
    }

    #[test]
    fn axis_labels_add_digits_only_where_needed() {
        assert_eq!(axis_labels(&[0.0, 0.5, 1.0]), ["0", "0.500", "1.00"]);
        assert_eq!(
            axis_labels(&[0.50012, 0.50015, 0.50018]),
            ["0.50012", "0.50015", "0.50018"]
        );
        assert_eq!(axis_labels(&[2.0, 2.0]), ["2.00", "2.00"], "equal values");
    }

    #[test]
    fn smoothing_is_debiased() {
        let pts: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, 2.0)).collect();
        // A constant series stays constant (no pull towards zero at the start).
        for (_, y) in smooth(&pts, 0.9) {
            assert!((y - 2.0).abs() < 1e-12);
        }
        assert_eq!(smooth(&pts, 0.0), pts);
        let s = smooth(&[(0.0, 0.0), (1.0, 1.0)], 0.5);
        // (0.5*0 + 0.5*1) / (1 - 0.25) = 2/3
        assert!((s[1].1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn downsampling_keeps_spikes() {
        let mut pts: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, 1.0)).collect();
        pts[537].1 = 50.0;
        pts[800].1 = -7.0;
        let d = downsample(&pts, 40);
        assert!(d.len() <= 42, "{}", d.len());
        assert!(d.iter().any(|p| p.1 == 50.0 && p.0 == 537.0));
        assert!(d.iter().any(|p| p.1 == -7.0));
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0), "x order kept");
        assert_eq!(downsample(&pts[..10], 40).len(), 10);
    }

    #[test]
    fn outlier_range_uses_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        v.push(1e9);
        let (lo, hi) = y_range(&v, true).unwrap();
        assert!(lo < 6.0 && lo > 0.0 && hi < 101.0, "{lo} {hi}");
        let (_, hi_all) = y_range(&v, false).unwrap();
        assert!(hi_all > 1e9);
        assert!(y_range(&[f64::NAN], false).is_none());
        let (a, b) = y_range(&[3.0], false).unwrap();
        assert!(a < 3.0 && b > 3.0);
    }

    #[test]
    fn sanitizing_shows_controls() {
        assert_eq!(sanitize("a\tb\x1b[31mc\nd"), "a⇥b␛[31mc\nd");
        assert_eq!(sanitize("x\u{202e}y\u{0}"), "x<U+202E>y␀");
        assert_eq!(sanitize("plain text é"), "plain text é");
    }
}
