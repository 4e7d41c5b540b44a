//! Turning a scene into files: the same drawing routine renders an SVG and a PNG in memory, then both are
//! written atomically (`peft_core::atomic`), so a killed run never leaves a half-written plot.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::ImageEncoder;
use peft_core::atomic::write_atomic;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::style::{draw_err, ensure_font, HEIGHT, WIDTH};

/// A chart that can draw itself on any plotters backend (SVG and bitmap share one drawing routine).
pub(super) trait Scene {
    /// Draws the whole chart on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Draws the scene into memory twice (SVG, PNG), then writes both files atomically.
pub(super) fn render(stem: &Path, scene: &impl Scene) -> Result<Vec<PathBuf>> {
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

    // `write_atomic` creates the folder; nothing is written before both charts have rendered.
    let svg_path = with_suffix(stem, ".svg");
    let png_path = with_suffix(stem, ".png");
    write_atomic(&svg_path, svg.as_bytes())?;
    write_atomic(&png_path, &png)?;
    Ok(vec![svg_path, png_path])
}

/// Appends rather than replaces an extension, so a stem such as `runs/v1.2` keeps its dot.
pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
