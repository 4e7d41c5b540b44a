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
//! let point = Point { label: "lora".into(), x: 2.9e5, y: 0.87, y_err: Some(0.01) };
//! let zero_shot = Reference { label: "zero-shot".into(), y: 0.78 };
//! scatter_chart(&dir.path().join("accuracy"), &labels, &[point], &[zero_shot], true)?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Text is drawn with an embedded DejaVu Sans (`assets/DejaVuSans.ttf`, Bitstream Vera licence next to it), so
//! the PNGs render the same on a machine without system fonts; SVGs name the `sans-serif` family and leave the
//! glyphs to the viewer.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, ensure, Context, Result};
use image::ImageEncoder;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
    /// Half the error bar's height (drawn from `y - y_err` to `y + y_err`), if any.
    pub y_err: Option<f64>,
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

const WIDTH: u32 = 900;
const HEIGHT: u32 = 600;
/// The family the embedded font is registered under; plotters' mesh and legend ask for it by default.
const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
// Plotters draws text at size / 1.24 pixels per em, hence sizes that look large.
const TITLE_SIZE: f64 = 26.0;
const AXIS_TITLE_SIZE: f64 = 20.0;
const TICK_SIZE: f64 = 17.0;
const TEXT_SIZE: f64 = 17.0;
const MARKER_RADIUS: i32 = 6;

/// Matplotlib's "tab10" colours: distinguishable, and dark enough on white (text uses a darker shade).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const GRID: RGBColor = RGBColor(222, 222, 222);
const GRID_LIGHT: RGBColor = RGBColor(242, 242, 242);
const REFERENCE: RGBColor = RGBColor(90, 90, 90);

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// The colour's text shade: the light palette entries (olive, cyan) are hard to read as thin glyphs.
fn text_colour(c: RGBColor) -> RGBColor {
    let dark = |v: u8| (f64::from(v) * 0.7) as u8;
    RGBColor(dark(c.0), dark(c.1), dark(c.2))
}

/// Registers the embedded font once per process; plotters' ab_glyph text looks fonts up by family name.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    ensure!(
        ok,
        "the embedded font assets/DejaVuSans.ttf could not be parsed"
    );
    Ok(())
}

fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font())
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing the chart failed: {e}")
}

/// A chart that can draw itself on any plotters backend (SVG and bitmap share one drawing routine).
trait Scene {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Draws the scene into memory twice (SVG, PNG), then writes both files atomically.
fn render(stem: &Path, scene: &impl Scene) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        scene.draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        scene.draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, WIDTH, HEIGHT, image::ColorType::Rgb8)
        .context("encoding the PNG")?;

    if let Some(parent) = stem.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let svg_path = with_suffix(stem, ".svg");
    let png_path = with_suffix(stem, ".png");
    write_atomically(&svg_path, svg.as_bytes())?;
    write_atomically(&png_path, &png)?;
    Ok(vec![svg_path, png_path])
}

/// Appends rather than replaces an extension, so a stem such as `runs/v1.2` keeps its dot.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `<path>.tmp` and renames it over `path`, so a killed run never leaves a half-written plot.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// One axis in display space (log10 of the data for a log axis), with its ticks chosen here so that a log axis
/// labels whole decades and a linear one round steps.
#[derive(Debug, Clone)]
struct Axis {
    log: bool,
    lo: f64,
    hi: f64,
    bold: Vec<f64>,
    light: Vec<f64>,
    /// Linear axes: the tick step and the SI divisor their labels use.
    step: f64,
    unit: (f64, &'static str),
}

impl Axis {
    /// `values` are data values (finite, positive on a log axis); `pad` is the share of the span added each side.
    fn fit(values: impl IntoIterator<Item = f64>, log: bool, pad: f64) -> Axis {
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
    fn to_display(&self, v: f64) -> f64 {
        if self.log {
            v.log10()
        } else {
            v
        }
    }

    /// The tick label of a display-space value.
    fn format(&self, d: f64) -> String {
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

/// The round number (1, 2, 2.5 or 5 times a power of ten) at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = [1.0, 2.0, 2.5, 5.0]
        .into_iter()
        .find(|&m| norm <= m * (1.0 + 1e-9))
        .unwrap_or(10.0);
    m * mag
}

/// How many decimals print every multiple of `step` exactly.
fn decimals_for(step: f64) -> usize {
    (0..12)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(12)
}

/// The SI divisor for numbers up to `biggest` (parameter counts read better as 10k, 1.3M); `k_from` is where
/// thousands start to read as `k` (linear ticks keep 1000 .. 9000 whole, so that steps of 200 stay readable).
fn si_unit(biggest: f64, k_from: f64) -> (f64, &'static str) {
    match biggest {
        b if b >= 1e12 => (1e12, "T"),
        b if b >= 1e9 => (1e9, "G"),
        b if b >= 1e6 => (1e6, "M"),
        b if b >= k_from => (1e3, "k"),
        _ => (1.0, ""),
    }
}

/// A number with at most three significant digits and an SI suffix from 1k up; tiny numbers in `1e-5` form.
fn format_si(v: f64) -> String {
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
fn format_value(v: f64) -> String {
    if v == 0.0 || !(1e-3..1e4).contains(&v.abs()) {
        return format_si(v);
    }
    let digits = v.abs().log10().floor() as i32 + 1;
    let decimals = (3 - digits).max(0) as usize;
    format!("{v:.decimals$}")
}

/// An axis-aligned box in backend pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rect {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Rect {
    fn new(x0: f64, y0: f64, w: f64, h: f64) -> Rect {
        Rect {
            x0,
            y0,
            x1: x0 + w,
            y1: y0 + h,
        }
    }

    fn overlap(&self, o: &Rect) -> f64 {
        let w = self.x1.min(o.x1) - self.x0.max(o.x0);
        let h = self.y1.min(o.y1) - self.y0.max(o.y0);
        if w > 0.0 && h > 0.0 {
            w * h
        } else {
            0.0
        }
    }

    fn area(&self) -> f64 {
        (self.x1 - self.x0) * (self.y1 - self.y0)
    }

    fn contains(&self, (x, y): (f64, f64)) -> bool {
        x >= self.x0 && x <= self.x1 && y >= self.y0 && y <= self.y1
    }
}

/// The chart frame shared by both kinds: title, axes with their titles, ticks and grid.
fn build_chart<'a, DB: DrawingBackend>(
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

/// A series' unbroken stretches of finite points, in display space.
type Runs = Vec<Vec<(f64, f64)>>;

struct LineScene<'a> {
    labels: &'a Labels,
    /// Per series: its label and its runs.
    lines: Vec<(&'a str, Runs)>,
    x: Axis,
    y: Axis,
}

impl<'a> LineScene<'a> {
    fn new(labels: &'a Labels, series: &'a [Series], log_y: bool) -> Result<Self> {
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

struct ScatterScene<'a> {
    labels: &'a Labels,
    points: &'a [Point],
    references: &'a [Reference],
    /// Per point, its label's colour index (labels in order of first appearance).
    colours: Vec<usize>,
    x: Axis,
    y: Axis,
}

impl<'a> ScatterScene<'a> {
    fn new(
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
            if let Some(e) = p.y_err {
                ensure!(
                    e.is_finite() && e >= 0.0,
                    "point '{}' has error bar {e}: it must be finite and not negative",
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
                let e = p.y_err.unwrap_or(0.0);
                [p.y - e, p.y + e]
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
            let e = p.y_err.unwrap_or(0.0);
            let (_, top) = px(self.x.to_display(p.x), p.y + e);
            let (_, bottom) = px(self.x.to_display(p.x), p.y - e);
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
            if let Some(e) = p.y_err.filter(|&e| e > 0.0) {
                let x = self.x.to_display(p.x);
                let (cx, _) = px(x, p.y);
                let (_, top) = px(x, p.y + e);
                let (_, bottom) = px(x, p.y - e);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(title: &str, x: &str, y: &str) -> Labels {
        Labels {
            title: title.into(),
            x: x.into(),
            y: y.into(),
        }
    }

    /// The contents of the SVG's `<text>` elements, trimmed.
    fn svg_texts(path: &Path) -> Vec<String> {
        let svg = fs::read_to_string(path).unwrap();
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_string())
            })
            .collect()
    }

    fn decode(path: &Path) -> image::RgbImage {
        image::open(path)
            .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
            .to_rgb8()
    }

    /// Pixels that are neither white nor grey: some colour was drawn.
    fn coloured_pixels(img: &image::RgbImage) -> usize {
        img.pixels()
            .filter(|p| {
                let [r, g, b] = p.0;
                r.max(g).max(b) - r.min(g).min(b) > 60
            })
            .count()
    }

    #[test]
    fn line_chart_writes_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("sub/loss_curves");
        let series = vec![
            Series {
                label: "lora r=8".into(),
                points: (0..50)
                    .map(|i| (f64::from(i), 2.0 / f64::from(i + 1)))
                    .collect(),
            },
            Series {
                label: "prompt tuning".into(),
                points: (0..50)
                    .map(|i| (f64::from(i), 3.0 - f64::from(i) * 0.01))
                    .collect(),
            },
        ];
        let files = line_chart(
            &stem,
            &labels("Loss", "training step", "loss"),
            &series,
            true,
        )
        .unwrap();
        assert_eq!(
            files,
            vec![
                dir.path().join("sub/loss_curves.svg"),
                dir.path().join("sub/loss_curves.png")
            ]
        );
        for f in &files {
            assert!(
                fs::metadata(f).unwrap().len() > 1000,
                "{} is nearly empty",
                f.display()
            );
            assert!(
                !with_suffix(f, ".tmp").exists(),
                "a temporary file was left behind"
            );
        }
        let texts = svg_texts(&files[0]);
        for text in ["lora r=8", "prompt tuning", "training step", "loss", "Loss"] {
            assert!(
                texts.iter().any(|t| t == text),
                "the SVG lacks {text:?}: {texts:?}"
            );
        }
        let png = decode(&files[1]);
        assert_eq!(png.dimensions(), (900, 600));
        assert!(coloured_pixels(&png) > 500, "the lines were not drawn");
    }

    #[test]
    fn scatter_chart_writes_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("accuracy");
        let points = vec![
            Point {
                label: "bitfit".into(),
                x: 1.0e5,
                y: 0.71,
                y_err: Some(0.02),
            },
            Point {
                label: "full-rank lora".into(),
                x: 1.0e8,
                y: 0.88,
                y_err: None,
            },
        ];
        let refs = [Reference {
            label: "zero-shot".into(),
            y: 0.78,
        }];
        let files = scatter_chart(
            &stem,
            &labels("Accuracy vs size", "trainable parameters", "dev accuracy"),
            &points,
            &refs,
            true,
        )
        .unwrap();
        let texts = svg_texts(&files[0]);
        for text in [
            "bitfit",
            "full-rank lora",
            "zero-shot (0.780)",
            "trainable parameters",
            "dev accuracy",
            "Accuracy vs size",
            "100k",
            "100M",
        ] {
            assert!(
                texts.iter().any(|t| t == text),
                "the SVG lacks {text:?}: {texts:?}"
            );
        }
        let png = decode(&files[1]);
        assert_eq!(png.dimensions(), (WIDTH, HEIGHT));
        assert!(coloured_pixels(&png) > 100, "the markers were not drawn");
    }

    #[test]
    fn log_x_refuses_zero_and_names_the_point() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("bad");
        let points = vec![
            Point {
                label: "lora".into(),
                x: 1e5,
                y: 0.8,
                y_err: None,
            },
            Point {
                label: "zero-shot".into(),
                x: 0.0,
                y: 0.7,
                y_err: None,
            },
        ];
        let err = scatter_chart(&stem, &labels("t", "x", "y"), &points, &[], true).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("'zero-shot'") && msg.contains("x = 0"),
            "{msg}"
        );
        assert!(!with_suffix(&stem, ".svg").exists() && !with_suffix(&stem, ".png").exists());
        // The same points are fine on a linear axis.
        scatter_chart(&stem, &labels("t", "x", "y"), &points, &[], false).unwrap();
    }

    #[test]
    fn log_y_refuses_non_positive_values() {
        let dir = tempfile::tempdir().unwrap();
        let series = [Series {
            label: "ia3".into(),
            points: vec![(0.0, 1.0), (1.0, -0.5)],
        }];
        let msg = line_chart(&dir.path().join("l"), &labels("t", "x", "y"), &series, true)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("'ia3'") && msg.contains("y = -0.5"), "{msg}");
    }

    #[test]
    fn empty_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = labels("t", "x", "y");
        let msg = line_chart(&dir.path().join("a"), &l, &[], false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("nothing to plot"), "{msg}");
        let empty = [Series {
            label: "a".into(),
            points: vec![],
        }];
        let msg = line_chart(&dir.path().join("a"), &l, &empty, false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("nothing to plot"), "{msg}");
        let nan = [Series {
            label: "a".into(),
            points: vec![(0.0, f64::NAN)],
        }];
        let msg = line_chart(&dir.path().join("a"), &l, &nan, false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("nothing to plot"), "{msg}");
        let refs = [Reference {
            label: "r".into(),
            y: 0.5,
        }];
        let msg = scatter_chart(&dir.path().join("b"), &l, &[], &refs, false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("nothing to plot"), "{msg}");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing should be written"
        );
    }

    #[test]
    fn degenerate_data_still_plots() {
        let dir = tempfile::tempdir().unwrap();
        let l = labels("t", "x", "y");
        // A single point, and all-equal values, on linear and log axes.
        let one = [Series {
            label: "single".into(),
            points: vec![(3.0, 0.0)],
        }];
        line_chart(&dir.path().join("one"), &l, &one, false).unwrap();
        let flat = [Series {
            label: "flat".into(),
            points: vec![(1.0, 2.0), (2.0, 2.0), (3.0, f64::NAN), (4.0, 2.0)],
        }];
        line_chart(&dir.path().join("flat"), &l, &flat, true).unwrap();
        let same = [
            Point {
                label: "a".into(),
                x: 5e4,
                y: 0.5,
                y_err: Some(0.0),
            },
            Point {
                label: "b".into(),
                x: 5e4,
                y: 0.5,
                y_err: None,
            },
        ];
        let files = scatter_chart(&dir.path().join("same"), &l, &same, &[], true).unwrap();
        let texts = svg_texts(&files[0]);
        assert!(texts.iter().any(|t| t == "a") && texts.iter().any(|t| t == "b"));
    }

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

    /// Renders realistic charts into /tmp/plots-demo/ to look at: `cargo test -p peft-cli plots -- --ignored`.
    #[test]
    #[ignore = "writes demo charts into /tmp/plots-demo for a person to look at"]
    fn demo() {
        let dir = Path::new("/tmp/plots-demo");
        let methods = [
            ("bitfit", 1.0e4, 0.62, 0.015),
            ("prompt tuning", 8.2e4, 0.55, 0.03),
            ("ia3", 1.1e5, 0.74, 0.01),
            ("prefix tuning", 9.8e5, 0.79, 0.02),
            ("lora r=8", 2.9e6, 0.86, 0.008),
            ("full fine-tune", 1.3e8, 0.89, 0.005),
        ];
        let points: Vec<Point> = methods
            .iter()
            .map(|&(label, x, y, e)| Point {
                label: label.into(),
                x,
                y,
                y_err: Some(e),
            })
            .collect();
        let refs = [Reference {
            label: "zero-shot".into(),
            y: 0.78,
        }];
        let files = scatter_chart(
            &dir.join("accuracy_vs_params"),
            &labels(
                "SST-2 dev accuracy vs trainable parameters",
                "trainable parameters (log scale)",
                "dev accuracy",
            ),
            &points,
            &refs,
            true,
        )
        .unwrap();
        println!("{files:?}");
        // Exponential decay to a per-method floor, with deterministic noise (a small LCG) like minibatch loss.
        let floors = [0.52, 0.66, 0.41, 0.37, 0.27, 0.21];
        let series: Vec<Series> = methods
            .iter()
            .zip(floors)
            .enumerate()
            .map(|(m, (&(label, ..), floor))| {
                let mut state = 12345u64 + m as u64;
                let mut noise = move || {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                };
                let (start, rate) = (2.3 + 0.05 * m as f64, 0.035 + 0.008 * m as f64);
                Series {
                    label: label.into(),
                    points: (1..=100)
                        .map(|s| {
                            let s = f64::from(s);
                            let mean = floor + (start - floor) * (-rate * s).exp();
                            (s, mean * (1.0 + 0.12 * noise()))
                        })
                        .collect(),
                }
            })
            .collect();
        let files = line_chart(
            &dir.join("loss_curves"),
            &labels("Training loss", "step", "loss"),
            &series,
            false,
        )
        .unwrap();
        println!("{files:?}");
    }
}
