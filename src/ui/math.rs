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

/// Index of the first token where two generations differ (None when identical).
pub fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (common < a.len().max(b.len())).then_some(common)
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn first_differing_token() {
        assert_eq!(first_difference(&[1, 2, 3], &[1, 2, 4]), Some(2));
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
        assert_eq!(first_difference(&[1, 2], &[1, 2]), None);
        assert_eq!(first_difference(&[], &[5]), Some(0));
    }

    #[test]
    fn sanitizing_shows_controls() {
        assert_eq!(sanitize("a\tb\x1b[31mc\nd"), "a⇥b␛[31mc\nd");
        assert_eq!(sanitize("x\u{202e}y\u{0}"), "x<U+202E>y␀");
        assert_eq!(sanitize("plain text é"), "plain text é");
    }
}
