//! How every chart looks: canvas size, text sizes, the palette and the embedded font.

use std::sync::OnceLock;

use anyhow::{anyhow, ensure, Result};
use plotters::prelude::*;

/// The canvas, in pixels.
pub(super) const WIDTH: u32 = 900;
pub(super) const HEIGHT: u32 = 600;
/// The family the embedded font is registered under; plotters' mesh and legend ask for it by default.
const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
// Plotters draws text at size / 1.24 pixels per em, hence sizes that look large.
pub(super) const TITLE_SIZE: f64 = 26.0;
pub(super) const AXIS_TITLE_SIZE: f64 = 20.0;
pub(super) const TICK_SIZE: f64 = 17.0;
pub(super) const TEXT_SIZE: f64 = 17.0;
pub(super) const MARKER_RADIUS: i32 = 6;

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
pub(super) const GRID: RGBColor = RGBColor(222, 222, 222);
pub(super) const GRID_LIGHT: RGBColor = RGBColor(242, 242, 242);
pub(super) const REFERENCE: RGBColor = RGBColor(90, 90, 90);

/// The palette's `i`th colour (wrapping after ten).
pub(super) fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// The colour's text shade: the light palette entries (olive, cyan) are hard to read as thin glyphs.
pub(super) fn text_colour(c: RGBColor) -> RGBColor {
    let dark = |v: u8| (f64::from(v) * 0.7) as u8;
    RGBColor(dark(c.0), dark(c.1), dark(c.2))
}

/// Registers the embedded font once per process; plotters' ab_glyph text looks fonts up by family name.
pub(super) fn ensure_font() -> Result<()> {
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

/// The embedded font at `size`.
pub(super) fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font())
}

/// A plotters drawing error as an anyhow error.
pub(super) fn draw_err<E: std::error::Error + Send + Sync>(
    e: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow!("drawing the chart failed: {e}")
}
