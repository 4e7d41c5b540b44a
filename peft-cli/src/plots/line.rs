//! The line chart: one line per series, broken where a value is not finite, and a legend in the corner of
//! the plot that covers the fewest lines.

use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::axes::{build_chart, Axis};
use super::layout::Rect;
use super::render::Scene;
use super::style::{colour, draw_err, font, TEXT_SIZE};
use super::{Labels, Series};

/// A series' unbroken stretches of finite points, in display space.
type Runs = Vec<Vec<(f64, f64)>>;

/// A line chart, checked and laid out in display space, ready to draw on any backend.
pub(super) struct LineScene<'a> {
    labels: &'a Labels,
    /// Per series: its label and its runs.
    lines: Vec<(&'a str, Runs)>,
    x: Axis,
    y: Axis,
}

impl<'a> LineScene<'a> {
    /// Checks the series (something finite to plot, positive values on a log axis) and fits the axes.
    pub(super) fn new(labels: &'a Labels, series: &'a [Series], log_y: bool) -> Result<Self> {
        let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
        let all = || {
            series
                .iter()
                .flat_map(|s| s.points.iter().filter(|p| finite(p)))
        };
        if all().next().is_none() {
            bail!(
                "nothing to plot: {}",
                if series.iter().all(|s| s.points.is_empty()) {
                    "no series has any points"
                } else {
                    "every point is NaN or infinite"
                }
            );
        }
        if log_y {
            for s in series {
                if let Some((i, (x, y))) = s
                    .points
                    .iter()
                    .enumerate()
                    .find(|(_, p)| finite(p) && p.1 <= 0.0)
                {
                    bail!(
                        "series '{}' point {i} (x = {x}, y = {y}): a log-scaled y axis needs y > 0",
                        s.label
                    );
                }
            }
        }
        let x = Axis::fit(all().map(|p| p.0), false, 0.0);
        let y = Axis::fit(all().map(|p| p.1), log_y, 0.05);
        let lines = series
            .iter()
            .map(|s| {
                let mut runs: Runs = vec![vec![]];
                for p in &s.points {
                    if finite(p) {
                        runs.last_mut().unwrap().push((p.0, y.to_display(p.1)));
                    } else if !runs.last().unwrap().is_empty() {
                        runs.push(vec![]);
                    }
                }
                runs.retain(|r| !r.is_empty());
                (s.label.as_str(), runs)
            })
            .collect();
        Ok(LineScene {
            labels,
            lines,
            x,
            y,
        })
    }
}

impl Scene for LineScene<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let mut chart = build_chart(root, self.labels, &self.x, &self.y)?;
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let origin = (f64::from(xr.start), f64::from(yr.start));

        // Pixels the lines pass through (relative to the plotting area), to keep the legend off them.
        let mut ink: Vec<(f64, f64)> = vec![];
        for (i, (label, runs)) in self.lines.iter().enumerate() {
            let c = colour(i);
            let style = c.stroke_width(2);
            let count: usize = runs.iter().map(Vec::len).sum();
            let mut annotated = false;
            for run in runs {
                let anno = chart
                    .draw_series(LineSeries::new(run.iter().copied(), style))
                    .map_err(draw_err)?;
                if !annotated {
                    anno.label(*label).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                    });
                    annotated = true;
                }
                if count <= 30 {
                    // A short series (or a lone point, which draws no line) needs its points visible.
                    chart
                        .draw_series(run.iter().map(|&p| Circle::new(p, 3, c.filled())))
                        .map_err(draw_err)?;
                }
                let px: Vec<(f64, f64)> = run
                    .iter()
                    .map(|p| {
                        let (x, y) = chart.backend_coord(p);
                        (f64::from(x) - origin.0, f64::from(y) - origin.1)
                    })
                    .collect();
                ink.extend(px.iter().copied());
                for w in px.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    let n = ((b.0 - a.0).hypot(b.1 - a.1) / 3.0).ceil() as usize;
                    ink.extend((1..n).map(|k| {
                        let t = k as f64 / n as f64;
                        (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
                    }));
                }
            }
            if runs.is_empty() {
                // Keep a series with no finite value in the legend, so its absence is visible.
                chart
                    .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                    .map_err(draw_err)?
                    .label(*label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                    });
            }
        }

        // The legend's size as plotters lays it out: text block plus the swatch column and margins.
        let legend_font = font(TEXT_SIZE);
        let (margin, swatch) = (8.0, 30.0);
        let mut text_w = 0.0f64;
        for (label, _) in &self.lines {
            let (w, _) = root
                .estimate_text_size(label, &legend_font)
                .map_err(draw_err)?;
            text_w = text_w.max(f64::from(w));
        }
        let (w, h) = (
            text_w + swatch + 2.0 * margin,
            self.lines.len() as f64 * TEXT_SIZE * 1.05 + 2.0 * margin,
        );
        let (aw, ah) = (f64::from(xr.end - xr.start), f64::from(yr.end - yr.start));
        use SeriesLabelPosition as L;
        let candidates = [
            (L::UpperRight, aw - w - 5.0, 5.0),
            (L::UpperLeft, 5.0, 5.0),
            (L::LowerLeft, 5.0, ah - h - 5.0),
            (L::LowerRight, aw - w - 5.0, ah - h - 5.0),
            (L::MiddleRight, aw - w - 5.0, (ah - h) / 2.0),
            (L::UpperMiddle, (aw - w) / 2.0, 5.0),
        ];
        let covered = |x0: f64, y0: f64| {
            let r = Rect::new(x0, y0, w, h);
            ink.iter().filter(|&&p| r.contains(p)).count()
        };
        // The first corner that covers no line wins; otherwise the one covering the least.
        let (position, _, _) = candidates
            .into_iter()
            .min_by_key(|(_, x0, y0)| covered(*x0, *y0))
            .expect("candidates are not empty");
        chart
            .configure_series_labels()
            .position(position)
            .margin(margin as u32)
            .legend_area_size(swatch as u32)
            .label_font(legend_font)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(190, 190, 190))
            .draw()
            .map_err(draw_err)?;
        Ok(())
    }
}
