//! Charts for `peft compare`: line charts (e.g. training loss per step) and labelled scatter charts (e.g. a
//! metric against trainable parameters), each written as `<stem>.svg` and `<stem>.png` at 900x600.
//!
//! ```
//! use peft_cli::plots::{line_chart, scatter_chart, Labels, Point, Reference, Series};
//!
//! let dir = tempfile::tempdir()?;
//! let labels = Labels { title: "Training loss".into(), x: "step".into(), y: "loss".into() };
//! let loss = Series { label: "lora".into(), points: vec![(1.0, 2.3), (2.0, 1.1), (3.0, 0.7)] };
//! let files = line_chart(&dir.path().join("loss_curves"), &labels, &[loss], true)?;
//! assert_eq!(files.len(), 2); // loss_curves.svg, loss_curves.png
//!
//! let labels = Labels { title: "Accuracy".into(), x: "trainable parameters".into(), y: "accuracy".into() };
//! let point = Point { label: "lora".into(), x: 2.9e5, y: 0.87, y_err: Some((0.01, 0.02)) };
//! let zero_shot = Reference { label: "zero-shot".into(), y: 0.78 };
//! scatter_chart(&dir.path().join("accuracy"), &labels, &[point], &[zero_shot], true)?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Text is drawn with an embedded DejaVu Sans (`assets/DejaVuSans.ttf`, Bitstream Vera licence next to it), so
//! the PNGs render the same on a machine without system fonts; SVGs name the `sans-serif` family and leave the
//! glyphs to the viewer.

mod axes;
mod layout;
mod line;
mod numbers;
mod render;
mod scatter;
mod style;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use anyhow::Result;

use line::LineScene;
use render::render;
use scatter::ScatterScene;

/// One line of a line chart (e.g. a method's training loss per step).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The name shown in the legend.
    pub label: String,
    /// `(x, y)` in drawing order; a non-finite value (a diverged run's NaN loss) leaves a gap in the line.
    pub points: Vec<(f64, f64)>,
}

/// One point of a scatter chart, with an optional error bar (standard deviation over seeds) on y.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The text drawn next to the marker; points with the same label share a colour.
    pub label: String,
    /// Position on the x axis (must be positive when the x axis is log-scaled).
    pub x: f64,
    /// Position on the y axis.
    pub y: f64,
    /// The error bar's extent below and above `y` (drawn from `y - below` to `y + above`), if any: an
    /// interval need not be symmetric.
    pub y_err: Option<(f64, f64)>,
}

/// A horizontal reference line (e.g. the zero-shot baseline's accuracy).
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// The text drawn on the line, followed by its value.
    pub label: String,
    /// Where the line crosses the y axis.
    pub y: f64,
}

/// Axis titles and the chart title.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    /// Drawn above the chart.
    pub title: String,
    /// Drawn under the x axis.
    pub x: String,
    /// Drawn left of the y axis, rotated.
    pub y: String,
}

/// Writes `<stem>.svg` and `<stem>.png` (e.g. stem = results/loss_curves); returns both paths.
///
/// Each series is a line with its own colour and a legend entry (the legend goes in the corner of the plot
/// that covers the fewest data); short series also get a marker per point. `log_y` log-scales the y axis, which
/// then refuses any `y <= 0`. Non-finite values are skipped. Errors when there is no finite point to plot.
pub fn line_chart(
    stem: &Path,
    labels: &Labels,
    series: &[Series],
    log_y: bool,
) -> Result<Vec<PathBuf>> {
    let scene = LineScene::new(labels, series, log_y)?;
    render(stem, &scene)
}

/// Writes `<stem>.svg` and `<stem>.png`: each point a marker with its label next to it, distinct colours per
/// label, optional log-scaled x axis (e.g. metric vs trainable parameters), reference lines drawn across.
///
/// Labels are placed beside, above or below their marker, wherever they collide least with other markers,
/// labels and reference lines. Errors when `points` is empty, when a value is not finite, when an error bar
/// is negative, or (with `log_x`) when a point's x is not positive, naming the point.
pub fn scatter_chart(
    stem: &Path,
    labels: &Labels,
    points: &[Point],
    references: &[Reference],
    log_x: bool,
) -> Result<Vec<PathBuf>> {
    let scene = ScatterScene::new(labels, points, references, log_x)?;
    render(stem, &scene)
}
