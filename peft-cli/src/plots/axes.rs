//! The axes of a chart: each one's range and ticks in display space (log10 of the data on a log axis), and
//! the frame that draws them with the title, axis titles and grid.

use anyhow::Result;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::numbers::{decimals_for, format_si, nice_step, si_unit};
use super::style::{draw_err, font, AXIS_TITLE_SIZE, GRID, GRID_LIGHT, TICK_SIZE, TITLE_SIZE};
use super::Labels;

/// One axis in display space (log10 of the data for a log axis), with its ticks chosen here so that a log axis
/// labels whole decades and a linear one round steps.
#[derive(Debug, Clone)]
pub(super) struct Axis {
    log: bool,
    /// The low end of the window, in display space.
    pub(super) lo: f64,
    /// The high end of the window, in display space.
    pub(super) hi: f64,
    /// Labelled ticks with a grid line.
    bold: Vec<f64>,
    /// Unlabelled ticks with a light grid line.
    light: Vec<f64>,
    /// Linear axes: the tick step and the SI divisor their labels use.
    step: f64,
    unit: (f64, &'static str),
}

impl Axis {
    /// `values` are data values (finite, positive on a log axis); `pad` is the share of the span added each side.
    pub(super) fn fit(values: impl IntoIterator<Item = f64>, log: bool, pad: f64) -> Axis {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values {
            let d = if log { v.log10() } else { v };
            lo = lo.min(d);
            hi = hi.max(d);
        }
        let span = hi - lo;
        if span <= 1e-12 * lo.abs().max(hi.abs()).max(1e-300) {
            // One value (or all equal): centre it in a window of its own size (a decade on a log axis).
            let half = if log {
                0.5
            } else if lo == 0.0 {
                1.0
            } else {
                lo.abs() * 0.1
            };
            lo -= half;
            hi += half;
        } else {
            lo -= span * pad;
            hi += span * pad;
        }
        if log && hi.floor() < lo.ceil() {
            // A window inside one decade would have no power of ten to label.
            lo = lo.floor();
        }
        let mut axis = Axis {
            log,
            lo,
            hi,
            bold: vec![],
            light: vec![],
            step: 1.0,
            unit: (1.0, ""),
        };
        if log {
            axis.log_ticks();
        } else {
            axis.linear_ticks();
        }
        axis
    }

    fn linear_ticks(&mut self) {
        let step = nice_step((self.hi - self.lo) / 8.0);
        let first = (self.lo / step).ceil() as i64;
        let last = (self.hi / step).floor() as i64;
        self.bold = (first..=last).map(|k| k as f64 * step).collect();
        let fine = step / 5.0;
        let first = (self.lo / fine).ceil() as i64;
        let last = (self.hi / fine).floor() as i64;
        self.light = (first..=last).map(|k| k as f64 * fine).collect();
        self.step = step;
        let biggest = self.lo.abs().max(self.hi.abs());
        self.unit = si_unit(biggest, 1e4);
    }

    fn log_ticks(&mut self) {
        let first = self.lo.ceil() as i64;
        let last = self.hi.floor() as i64;
        let decades = (self.hi - self.lo).max(0.0);
        let every = ((last - first) / 10 + 1).max(1);
        let mut bold = vec![];
        let mut light = vec![];
        for e in (self.lo.floor() as i64)..=last {
            for m in 1..10 {
                let d = e as f64 + f64::from(m).log10();
                if d < self.lo || d > self.hi {
                    continue;
                }
                let labelled = if m == 1 {
                    (e - first) % every == 0
                } else {
                    // Under three decades the 2x and 5x marks get labels too.
                    decades < 3.0 && (m == 2 || m == 5)
                };
                if labelled {
                    bold.push(d);
                } else if decades <= 8.0 || m == 1 {
                    light.push(d);
                }
            }
        }
        self.bold = bold;
        self.light = light;
    }

    /// Maps a data value into display space.
    pub(super) fn to_display(&self, v: f64) -> f64 {
        if self.log {
            v.log10()
        } else {
            v
        }
    }

    /// The tick label of a display-space value.
    pub(super) fn format(&self, d: f64) -> String {
        if self.log {
            // Ticks are 10^e or 2x / 5x that; round away the float noise of log10.
            let v = 10f64.powf(d);
            let e = v.log10().floor();
            let m = (v / 10f64.powf(e)).round();
            format_si(m * 10f64.powf(e))
        } else {
            let (div, suffix) = self.unit;
            let decimals = decimals_for(self.step / div);
            let v = d / div;
            // `-0` reads oddly.
            let v = if v.abs() < self.step / div * 1e-6 {
                0.0
            } else {
                v
            };
            format!("{v:.decimals$}{suffix}")
        }
    }
}

/// The axis is its own plotters coordinate, so the mesh draws exactly the ticks chosen here (labels come
/// from `Axis::format` through the mesh's label formatters).
impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (f64::from(limit.1 - limit.0) * t).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// The chart frame shared by both kinds: title, axes with their titles, ticks and grid.
pub(super) fn build_chart<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    labels: &Labels,
    x: &Axis,
    y: &Axis,
) -> Result<ChartContext<'a, DB, Cartesian2d<Axis, Axis>>> {
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(&labels.title, font(TITLE_SIZE))
        .margin(14)
        .margin_right(30)
        .x_label_area_size(52)
        .y_label_area_size(78)
        .build_cartesian_2d(x.clone(), y.clone())
        .map_err(draw_err)?;
    let fx = |v: &f64| x.format(*v);
    let fy = |v: &f64| y.format(*v);
    chart
        .configure_mesh()
        .x_desc(&labels.x)
        .y_desc(&labels.y)
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .label_style(font(TICK_SIZE))
        .axis_desc_style(font(AXIS_TITLE_SIZE))
        .bold_line_style(GRID)
        .light_line_style(GRID_LIGHT)
        .axis_style(RGBColor(100, 100, 100))
        .draw()
        .map_err(draw_err)?;
    Ok(chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_pad_and_tick_sensibly() {
        // Linear: 5% padding each side, round ticks inside the range.
        let a = Axis::fit([0.5, 0.9], false, 0.05);
        assert!(
            (a.lo - 0.48).abs() < 1e-9 && (a.hi - 0.92).abs() < 1e-9,
            "{a:?}"
        );
        assert_eq!(a.bold.first().map(|&v| a.format(v)).as_deref(), Some("0.5"));
        assert!(a.bold.iter().all(|&v| v >= a.lo && v <= a.hi));
        // Equal values get a window around them.
        let a = Axis::fit([2.0, 2.0], false, 0.05);
        assert!(a.lo < 2.0 && a.hi > 2.0);
        let a = Axis::fit([0.0], false, 0.05);
        assert!(a.lo < 0.0 && a.hi > 0.0);
        // Log over eight decades labels whole decades with SI suffixes.
        let a = Axis::fit([1.0, 1e8], true, 0.05);
        let labels: Vec<String> = a.bold.iter().map(|&v| a.format(v)).collect();
        assert_eq!(
            labels,
            ["1", "10", "100", "1k", "10k", "100k", "1M", "10M", "100M"]
        );
        // Inside one decade, the window still reaches a power of ten and labels 2x / 5x.
        let a = Axis::fit([2e4, 8e4], true, 0.05);
        let labels: Vec<String> = a.bold.iter().map(|&v| a.format(v)).collect();
        assert_eq!(labels, ["10k", "20k", "50k"]);
        // Two decades: 1x, 2x and 5x.
        let a = Axis::fit([1.5e4, 1e6], true, 0.05);
        let labels: Vec<String> = a.bold.iter().map(|&v| a.format(v)).collect();
        assert_eq!(labels, ["20k", "50k", "100k", "200k", "500k", "1M"]);
        // A single value on a log axis spans a decade around it.
        let a = Axis::fit([1.3e8], true, 0.05);
        assert!((a.hi - a.lo) >= 1.0);
        assert!(!a.bold.is_empty());
    }
}
