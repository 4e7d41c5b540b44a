//! The scatter chart: a marker per point with an optional error bar, dashed reference lines across, and
//! each label put greedily where it collides least with markers, bars, lines and labels already placed.

use anyhow::{ensure, Result};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axes::{build_chart, Axis};
use super::layout::Rect;
use super::numbers::format_value;
use super::render::Scene;
use super::style::{colour, draw_err, font, text_colour, MARKER_RADIUS, REFERENCE, TEXT_SIZE};
use super::{Labels, Point, Reference};

/// A scatter chart, checked and with its axes fitted, ready to draw on any backend.
pub(super) struct ScatterScene<'a> {
    labels: &'a Labels,
    points: &'a [Point],
    references: &'a [Reference],
    /// Per point, its label's colour index (labels in order of first appearance).
    colours: Vec<usize>,
    x: Axis,
    y: Axis,
}

impl<'a> ScatterScene<'a> {
    /// Checks the points and reference lines (finite, positive x on a log axis, error bars not negative)
    /// and fits the axes.
    pub(super) fn new(
        labels: &'a Labels,
        points: &'a [Point],
        references: &'a [Reference],
        log_x: bool,
    ) -> Result<Self> {
        ensure!(!points.is_empty(), "nothing to plot: no points");
        for p in points {
            ensure!(
                p.x.is_finite() && p.y.is_finite(),
                "point '{}' is not finite (x = {}, y = {})",
                p.label,
                p.x,
                p.y
            );
            if log_x {
                ensure!(
                    p.x > 0.0,
                    "point '{}' has x = {}: a log-scaled x axis needs x > 0",
                    p.label,
                    p.x
                );
            }
            if let Some((below, above)) = p.y_err {
                ensure!(
                    below.is_finite() && below >= 0.0 && above.is_finite() && above >= 0.0,
                    "point '{}' has error bar ({below}, {above}): its extents must be finite and not negative",
                    p.label
                );
            }
        }
        for r in references {
            ensure!(
                r.y.is_finite(),
                "reference line '{}' is not finite (y = {})",
                r.label,
                r.y
            );
        }
        let x = Axis::fit(points.iter().map(|p| p.x), log_x, 0.08);
        let ys = points
            .iter()
            .flat_map(|p| {
                let (below, above) = p.y_err.unwrap_or((0.0, 0.0));
                [p.y - below, p.y + above]
            })
            .chain(references.iter().map(|r| r.y));
        let y = Axis::fit(ys, false, 0.08);
        let mut seen: Vec<&str> = vec![];
        let colours = points
            .iter()
            .map(|p| match seen.iter().position(|&l| l == p.label) {
                Some(i) => i,
                None => {
                    seen.push(&p.label);
                    seen.len() - 1
                }
            })
            .collect();
        Ok(ScatterScene {
            labels,
            points,
            references,
            colours,
            x,
            y,
        })
    }
}

impl Scene for ScatterScene<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let chart = build_chart(root, self.labels, &self.x, &self.y)?;
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let area = Rect {
            x0: f64::from(xr.start),
            y0: f64::from(yr.start),
            x1: f64::from(xr.end),
            y1: f64::from(yr.end),
        };
        let px = |x: f64, y: f64| {
            let (a, b) = chart.backend_coord(&(x, y));
            (f64::from(a), f64::from(b))
        };
        let text = font(TEXT_SIZE);
        let size_of = |s: &str| -> Result<(f64, f64)> {
            let (w, h) = root.estimate_text_size(s, &text).map_err(draw_err)?;
            Ok((f64::from(w), f64::from(h)))
        };

        // Obstacles for label placement: markers, error bars, reference lines, then each label placed.
        let r = f64::from(MARKER_RADIUS) + 2.0;
        let mut obstacles: Vec<(Rect, f64)> = vec![];
        let mut marks = vec![];
        for p in self.points {
            let (cx, cy) = px(self.x.to_display(p.x), p.y);
            let (below, above) = p.y_err.unwrap_or((0.0, 0.0));
            let e = below.max(above);
            let (_, top) = px(self.x.to_display(p.x), p.y + above);
            let (_, bottom) = px(self.x.to_display(p.x), p.y - below);
            obstacles.push((Rect::new(cx - r, cy - r, 2.0 * r, 2.0 * r), 1.0));
            if e > 0.0 {
                obstacles.push((Rect::new(cx - 5.0, top, 10.0, bottom - top), 1.0));
            }
            marks.push((cx, cy, top.min(cy - r), bottom.max(cy + r)));
        }
        let mut ref_lines = vec![];
        for reference in self.references {
            let (_, ry) = px(self.x.lo, reference.y);
            obstacles.push((Rect::new(area.x0, ry - 1.5, area.x1 - area.x0, 3.0), 0.5));
            ref_lines.push(ry);
        }
        let score = |cand: &Rect, obstacles: &[(Rect, f64)]| {
            let outside = cand.area() - cand.overlap(&area);
            // Glyphs stray a few pixels past the estimated box (and strokes past their centre lines).
            let cand = &Rect {
                x0: cand.x0 - 3.0,
                y0: cand.y0 - 3.0,
                x1: cand.x1 + 3.0,
                y1: cand.y1 + 3.0,
            };
            obstacles
                .iter()
                .map(|(o, weight)| cand.overlap(o) * weight)
                .sum::<f64>()
                + outside * 20.0
        };

        // Reference lines: dashed across, label above the line at its right end, or wherever along it (above or
        // below) it covers the fewest markers and error bars.
        for (reference, &ry) in self.references.iter().zip(&ref_lines) {
            let (x0, x1) = (self.x.lo, self.x.hi);
            chart
                .plotting_area()
                .draw(&DashedPathElement::new(
                    vec![(x0, reference.y), (x1, reference.y)],
                    9,
                    6,
                    REFERENCE.stroke_width(2),
                ))
                .map_err(draw_err)?;
            let s = format!("{} ({})", reference.label, format_value(reference.y));
            let (w, h) = size_of(&s)?;
            let free = (area.x1 - area.x0 - 16.0 - w).max(0.0);
            let best = [1.0, 0.0, 0.5, 0.75, 0.25]
                .into_iter()
                .flat_map(|f| {
                    let x0 = area.x0 + 8.0 + free * f;
                    [
                        Rect::new(x0, ry - 5.0 - h, w, h),
                        Rect::new(x0, ry + 5.0, w, h),
                    ]
                })
                .enumerate()
                .map(|(i, c)| (score(&c, &obstacles) + i as f64 * 0.5, c))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, c)| c)
                .expect("ten candidates");
            draw_text(root, &s, best, REFERENCE)?;
            obstacles.push((best, 1.0));
        }

        // Error bars under the markers, markers over them.
        for (p, &ci) in self.points.iter().zip(&self.colours) {
            let c = colour(ci);
            if let Some((below, above)) = p.y_err.filter(|&(b, a)| b.max(a) > 0.0) {
                let x = self.x.to_display(p.x);
                let (cx, _) = px(x, p.y);
                let (_, top) = px(x, p.y + above);
                let (_, bottom) = px(x, p.y - below);
                let (cx, top, bottom) = (cx as i32, top as i32, bottom as i32);
                let style = c.stroke_width(2);
                for path in [
                    vec![(cx, top), (cx, bottom)],
                    vec![(cx - 5, top), (cx + 5, top)],
                    vec![(cx - 5, bottom), (cx + 5, bottom)],
                ] {
                    root.draw(&PathElement::new(path, style))
                        .map_err(draw_err)?;
                }
            }
        }
        for (&(cx, cy, _, _), &ci) in marks.iter().zip(&self.colours) {
            let c = colour(ci);
            let at = (cx as i32, cy as i32);
            root.draw(&Circle::new(at, MARKER_RADIUS, c.filled()))
                .map_err(draw_err)?;
            root.draw(&Circle::new(
                at,
                MARKER_RADIUS,
                text_colour(c).stroke_width(1),
            ))
            .map_err(draw_err)?;
        }

        // Labels, greedily: each takes the candidate spot that collides least with what is already there.
        let gap = 5.0;
        for ((p, &ci), &(cx, cy, top, bottom)) in self.points.iter().zip(&self.colours).zip(&marks)
        {
            let (w, h) = size_of(&p.label)?;
            let side = f64::from(MARKER_RADIUS) + gap;
            let candidates = [
                Rect::new(cx + side, cy - h / 2.0, w, h),
                Rect::new(cx - side - w, cy - h / 2.0, w, h),
                Rect::new(cx - w / 2.0, top - gap - h, w, h),
                Rect::new(cx - w / 2.0, bottom + gap, w, h),
                Rect::new(cx + side - 2.0, cy - side - h + 2.0, w, h),
                Rect::new(cx + side - 2.0, cy + side - 2.0, w, h),
                Rect::new(cx - side - w + 2.0, cy - side - h + 2.0, w, h),
                Rect::new(cx - side - w + 2.0, cy + side - 2.0, w, h),
            ];
            let best = candidates
                .into_iter()
                .enumerate()
                .map(|(i, c)| (score(&c, &obstacles) + i as f64 * 0.5, c))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, c)| c)
                .expect("eight candidates");
            draw_text(root, &p.label, best, text_colour(colour(ci)))?;
            obstacles.push((best, 1.0));
        }
        Ok(())
    }
}

/// Draws `s` with its top-left corner at the box's.
fn draw_text<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    s: &str,
    at: Rect,
    c: RGBColor,
) -> Result<()> {
    let style = font(TEXT_SIZE)
        .color(&c)
        .pos(Pos::new(HPos::Left, VPos::Top));
    root.draw(&Text::new(
        s.to_string(),
        (at.x0 as i32, at.y0 as i32),
        style,
    ))
    .map_err(draw_err)
}
