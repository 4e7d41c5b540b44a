//! Family 1: adapter folders. A fixture adapter for the tiny GPT-2 gets its `adapter_config.json` edited
//! (JSON-aware, or raw bytes) and/or its `adapter_model.safetensors` edited (header-aware, or raw bytes), then
//! is loaded with `peft_core::adapter_io::load_adapter` as `peft eval` / `logits` / `generate` load it. An
//! adapter that loads is also run forward once on a short prompt, as those commands would.

use std::path::{Path, PathBuf};

use candle_core::Device;
use peft_core::adapter_io::{load_adapter, CONFIG_FILE, WEIGHTS_FILE};
use peft_core::method::InitCtx;
use peft_models::LoadedModel;
use rand::SeedableRng;
use serde_json::Value as Json;

use super::mutate::{self, Rng};
use super::{safetensors, Case};

/// The adapters of the tiny GPT-2 the harness starts from: every method this build knows (IA3 lives in an
/// example crate), HF PEFT's files and ours.
const FIXTURES: &[&str] = &[
    "hf-tiny-gpt2-lora",
    "hf-tiny-gpt2-prefix",
    "hf-tiny-gpt2-random",
    "hf-tiny-gpt2-p-tuning-mlp",
    "hf-tiny-gpt2-p-tuning-lstm",
    "ours-tiny-gpt2-lora",
    "ours-tiny-gpt2-prefix",
    "ours-tiny-gpt2-prefix-proj",
    "ours-tiny-gpt2-p-tuning-mlp",
];

/// A path under the workspace's `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

/// The tiny GPT-2 every adapter is loaded on, and a folder to write the mutated adapters into.
pub struct Ctx {
    model: LoadedModel,
    dir: tempfile::TempDir,
}

/// Registers the methods (as the `peft` binary does) and opens the tiny GPT-2.
pub fn setup() -> Ctx {
    register_methods();
    Ctx {
        model: peft_models::load_folder(&fixture("tiny-gpt2"), &Device::Cpu)
            .expect("the tiny GPT-2 fixture loads"),
        dir: tempfile::tempdir().unwrap(),
    }
}

/// Links every method crate's `peft_type`, as `peft_cli::run` does.
pub fn register_methods() {
    peft_prompt::register();
    peft_prefix::register();
    peft_lora::register();
    peft_bitfit::register();
    peft_baselines::register();
}

/// The fixtures unchanged (each must load), then `n` seeded mutations.
pub fn cases(seed: u64, n: usize) -> impl Iterator<Item = Case<Ctx>> {
    let originals: Vec<(&str, Vec<u8>, Vec<u8>)> = FIXTURES
        .iter()
        .map(|f| {
            let dir = fixture(&format!("adapters/{f}"));
            (
                *f,
                std::fs::read(dir.join(CONFIG_FILE)).unwrap(),
                std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(),
            )
        })
        .collect();
    let unchanged: Vec<Case<Ctx>> = originals
        .iter()
        .map(|(f, config, weights)| {
            let (config, weights) = (config.clone(), weights.clone());
            Case {
                name: format!("adapter {f}: unchanged"),
                run: Box::new(move |ctx: &Ctx| {
                    let r = try_load(ctx, &config, &weights);
                    assert!(r.is_ok(), "an unmutated fixture adapter must load: {r:?}");
                    r
                }),
            }
        })
        .collect();
    let mut rng = Rng::new(seed);
    let mutated = (0..n).map(move |i| {
        let (f, config, weights) = rng.pick(&originals).clone();
        let (mut config, mut weights) = (config, weights);
        let mut what = Vec::new();
        if rng.chance(0.1) {
            if let Some((c, w, resize)) = resize_consistently(&mut rng, &config, &weights) {
                return Case {
                    name: format!("adapter #{i} {f}: {resize}"),
                    run: Box::new(move |ctx: &Ctx| try_load(ctx, &c, &w)),
                };
            }
        }
        let target = rng.below(10);
        if target < 6 || target == 9 {
            what.push(format!("config: {}", mutate_config(&mut rng, &mut config)));
        }
        if target >= 6 {
            let w = if rng.chance(0.8) {
                safetensors::mutate(&mut rng, &mut weights)
            } else {
                mutate::mutate_bytes(&mut rng, &mut weights)
            };
            what.push(format!("weights: {w}"));
        }
        Case {
            name: format!("adapter #{i} {f}: {}", what.join("; ")),
            run: Box::new(move |ctx: &Ctx| try_load(ctx, &config, &weights)),
        }
    });
    unchanged.into_iter().chain(mutated)
}

/// One edit of an `adapter_config.json`: mostly a value or key, sometimes a repeated key, a number JSON
/// cannot hold, or raw bytes.
fn mutate_config(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    let Ok(mut doc) = serde_json::from_slice::<Json>(bytes) else {
        return mutate::mutate_bytes(rng, bytes);
    };
    match rng.below(10) {
        0 => mutate::mutate_bytes(rng, bytes),
        1 => {
            let other = mutate::hostile_json(rng, &[]);
            match mutate::duplicate_first_key(&doc, &other) {
                Some((text, what)) => {
                    *bytes = text.into_bytes();
                    what
                }
                None => mutate::mutate_bytes(rng, bytes),
            }
        }
        2 => match mutate::non_json_number(rng, &String::from_utf8_lossy(bytes)) {
            Some((text, what)) => {
                *bytes = text.into_bytes();
                what
            }
            None => mutate::mutate_bytes(rng, bytes),
        },
        _ => {
            let numbers_first = rng.chance(0.7);
            let mut what = vec![mutate::mutate_json(rng, &mut doc, numbers_first)];
            while rng.chance(0.3) {
                what.push(mutate::mutate_json(rng, &mut doc, true));
            }
            *bytes = serde_json::to_vec_pretty(&doc).unwrap();
            what.join(", ")
        }
    }
}

/// A size of the config (virtual tokens, rank, encoder width) changed together with the tensors it sizes, so
/// that the two agree: zero, one, or past the model's context of 64 positions.
fn resize_consistently(
    rng: &mut Rng,
    config: &[u8],
    weights: &[u8],
) -> Option<(Vec<u8>, Vec<u8>, String)> {
    let mut doc: Json = serde_json::from_slice(config).ok()?;
    let keys = ["num_virtual_tokens", "r", "encoder_hidden_size"];
    let present: Vec<&str> = keys.into_iter().filter(|k| doc[*k].is_u64()).collect();
    if present.is_empty() {
        return None;
    }
    let key = *rng.pick(&present);
    let old = doc[key].as_u64()?;
    let new = *rng.pick(&[0u64, 1, 2, 63, 64, 65, 200, 1000]);
    doc[key] = Json::from(new);
    let weights = safetensors::resized(weights, old, new)?;
    Some((
        serde_json::to_vec_pretty(&doc).ok()?,
        weights,
        format!("config and tensors agree on {key} = {new} (was {old})"),
    ))
}

/// Writes the adapter folder and loads it on the tiny GPT-2; one that loads runs one forward pass.
fn try_load(ctx: &Ctx, config: &[u8], weights: &[u8]) -> Result<(), String> {
    let dir = ctx.dir.path().join("adapter");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(CONFIG_FILE), config).unwrap();
    std::fs::write(dir.join(WEIGHTS_FILE), weights).unwrap();
    let mut init = InitCtx {
        model: ctx.model.model.as_ref(),
        tokenizer: ctx.model.tokenizer.as_ref(),
        rng: rand::rngs::StdRng::seed_from_u64(0),
    };
    let loaded = load_adapter(&dir, &mut init).map_err(|e| e.to_string())?;
    let batch = super::configs::probe_batch();
    ctx.model
        .model
        .forward(&batch, loaded.adapter.as_ref())
        .map_err(|e| format!("forward after loading: {e}"))?;
    Ok(())
}
