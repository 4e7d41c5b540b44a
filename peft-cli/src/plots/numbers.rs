//! How tick labels and values read: round tick steps, the decimals a step needs, and compact numbers with SI
//! suffixes (parameter counts as 10k, 1.3M).

/// The round number (1, 2, 2.5 or 5 times a power of ten) at or above `raw`.
pub(super) fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = [1.0, 2.0, 2.5, 5.0]
        .into_iter()
        .find(|&m| norm <= m * (1.0 + 1e-9))
        .unwrap_or(10.0);
    m * mag
}

/// How many decimals print every multiple of `step` exactly.
pub(super) fn decimals_for(step: f64) -> usize {
    (0..12)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(12)
}

/// The SI divisor for numbers up to `biggest` (parameter counts read better as 10k, 1.3M); `k_from` is where
/// thousands start to read as `k` (linear ticks keep 1000 .. 9000 whole, so that steps of 200 stay readable).
pub(super) fn si_unit(biggest: f64, k_from: f64) -> (f64, &'static str) {
    match biggest {
        b if b >= 1e12 => (1e12, "T"),
        b if b >= 1e9 => (1e9, "G"),
        b if b >= 1e6 => (1e6, "M"),
        b if b >= k_from => (1e3, "k"),
        _ => (1.0, ""),
    }
}

/// A number with at most three significant digits and an SI suffix from 1k up; tiny numbers in `1e-5` form.
pub(super) fn format_si(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if a < 1e-3 {
        return format!("{v:.0e}");
    }
    let (div, suffix) = si_unit(a, 1e3);
    let s = v / div;
    let digits = (s.abs().log10().floor() as i32 + 1).max(1);
    let decimals = (3 - digits).max(0) as usize;
    let text = format!("{s:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{suffix}")
}

/// A value for a reference line's label: three significant digits.
pub(super) fn format_value(v: f64) -> String {
    if v == 0.0 || !(1e-3..1e4).contains(&v.abs()) {
        return format_si(v);
    }
    let digits = v.abs().log10().floor() as i32 + 1;
    let decimals = (3 - digits).max(0) as usize;
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_compactly() {
        assert_eq!(format_si(1.3e8), "130M");
        assert_eq!(format_si(2.5e4), "25k");
        assert_eq!(format_si(1.25e6), "1.25M");
        assert_eq!(format_si(0.5), "0.5");
        assert_eq!(format_si(1e-5), "1e-5");
        assert_eq!(format_value(0.78), "0.780");
        assert_eq!(format_value(12.345), "12.3");
        assert_eq!(decimals_for(0.05), 2);
        assert_eq!(decimals_for(2.5), 1);
        assert_eq!(decimals_for(20.0), 0);
    }
}
