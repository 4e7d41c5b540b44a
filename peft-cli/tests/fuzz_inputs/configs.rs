//! Family 2: Hugging Face model folders. A tiny model's `config.json` gets its sizes edited (layers, widths,
//! heads, vocabulary, positions, epsilons set to zero, negative, huge or not numbers at all; keys dropped or
//! renamed; raw bytes), and now and then its `model.safetensors` header too, then the folder is opened with
//! `peft_models::folder::load_folder`, as `peft` opens a folder; a model that opens runs forward once.

use std::path::Path;

use candle_core::{Device, Tensor};
use peft_core::hooks::NoHooks;
use peft_core::model::Batch;
use serde_json::Value as Json;

use super::adapters::fixture;
use super::mutate::{self, Rng};
use super::{safetensors, Case};

/// The tiny model folders of every architecture the folder loader knows.
const MODELS: &[&str] = &[
    "tiny-gpt2",
    "tiny-llama",
    "tiny-bert",
    "tiny-opt",
    "tiny-t5",
];

/// A folder the mutated models are written into.
pub struct Ctx {
    dir: tempfile::TempDir,
}

/// A fresh scratch folder.
pub fn setup() -> Ctx {
    Ctx {
        dir: tempfile::tempdir().unwrap(),
    }
}

/// The folders unchanged (each must open), then `n` seeded mutations.
pub fn cases(seed: u64, n: usize) -> impl Iterator<Item = Case<Ctx>> {
    let originals: Vec<(&str, Vec<u8>, Vec<u8>)> = MODELS
        .iter()
        .map(|m| {
            let dir = fixture(m);
            (
                *m,
                std::fs::read(dir.join("config.json")).unwrap(),
                std::fs::read(dir.join("model.safetensors")).unwrap(),
            )
        })
        .collect();
    let unchanged: Vec<Case<Ctx>> = originals
        .iter()
        .map(|(m, config, weights)| {
            let (m, config, weights) = (*m, config.clone(), weights.clone());
            Case {
                name: format!("model {m}: unchanged"),
                run: Box::new(move |ctx: &Ctx| {
                    let r = try_open(ctx, m, &config, Some(&weights));
                    assert!(r.is_ok(), "an unmutated fixture model must open: {r:?}");
                    r
                }),
            }
        })
        .collect();
    let mut rng = Rng::new(seed);
    let mutated = (0..n).map(move |i| {
        let (m, config, weights) = rng.pick(&originals).clone();
        let mut config = config;
        let mut what = vec![format!("config: {}", mutate_config(&mut rng, &mut config))];
        // Now and then the checkpoint disagrees with the config as well.
        let weights = if rng.chance(0.2) {
            let mut w = weights;
            what.push(format!(
                "weights: {}",
                safetensors::mutate(&mut rng, &mut w)
            ));
            Some(w)
        } else {
            None
        };
        Case {
            name: format!("model #{i} {m}: {}", what.join("; ")),
            run: Box::new(move |ctx: &Ctx| try_open(ctx, m, &config, weights.as_deref())),
        }
    });
    unchanged.into_iter().chain(mutated)
}

/// One edit of a `config.json`, mostly of a number.
fn mutate_config(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    let Ok(mut doc) = serde_json::from_slice::<Json>(bytes) else {
        return mutate::mutate_bytes(rng, bytes);
    };
    match rng.below(12) {
        0 => mutate::mutate_bytes(rng, bytes),
        1 => match mutate::non_json_number(rng, &String::from_utf8_lossy(bytes)) {
            Some((text, what)) => {
                *bytes = text.into_bytes();
                what
            }
            None => mutate::mutate_bytes(rng, bytes),
        },
        _ => {
            let numbers_first = rng.chance(0.85);
            let mut what = vec![mutate::mutate_json(rng, &mut doc, numbers_first)];
            while rng.chance(0.25) {
                what.push(mutate::mutate_json(rng, &mut doc, true));
            }
            *bytes = serde_json::to_vec_pretty(&doc).unwrap();
            what.join(", ")
        }
    }
}

/// Writes the folder (the fixture's other files linked in) and opens it; a model that opens runs forward on
/// a short prompt.
fn try_open(ctx: &Ctx, model: &str, config: &[u8], weights: Option<&[u8]>) -> Result<(), String> {
    let dir = ctx.dir.path().join(model);
    if !dir.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        link_fixture_files(&fixture(model), &dir);
    }
    std::fs::write(dir.join("config.json"), config).unwrap();
    let weights_path = dir.join("model.safetensors");
    let _ = std::fs::remove_file(&weights_path);
    match weights {
        Some(w) => std::fs::write(&weights_path, w).unwrap(),
        None => std::os::unix::fs::symlink(fixture(model).join("model.safetensors"), &weights_path)
            .unwrap(),
    }
    let loaded = peft_models::load_folder(&dir, &Device::Cpu).map_err(|e| e.to_string())?;
    let batch = probe_batch();
    loaded
        .model
        .forward(&batch, &NoHooks)
        .map_err(|e| format!("forward after opening: {e}"))?;
    Ok(())
}

/// A three-token prompt, with decoder ids for an encoder-decoder model (the others ignore them).
pub fn probe_batch() -> Batch {
    let mut batch = Batch::single(&[1, 2, 3], &Device::Cpu).unwrap();
    batch.decoder_input_ids = Some(Tensor::new(&[[0u32, 1]], &Device::Cpu).unwrap());
    batch
}

/// Links the fixture's files other than `config.json` and `model.safetensors` (the tokenizer) into `dir`.
fn link_fixture_files(from: &Path, dir: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if path.is_file() && name != "config.json" && name != "model.safetensors" {
            std::os::unix::fs::symlink(&path, dir.join(name)).unwrap();
        }
    }
}
