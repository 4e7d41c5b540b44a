//! The charts end to end: files written, texts in the SVG, pixels in the PNG, and refusals that name the
//! bad value and write nothing.

use std::fs;
use std::path::Path;

use super::render::with_suffix;
use super::style::{HEIGHT, WIDTH};
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
    }
    // Only the two charts: no temporary file was left behind.
    let mut written: Vec<String> = fs::read_dir(dir.path().join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["loss_curves.png", "loss_curves.svg"]);
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
            y_err: Some((0.02, 0.02)),
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
            y_err: Some((0.0, 0.0)),
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
            y_err: Some((e, e)),
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
