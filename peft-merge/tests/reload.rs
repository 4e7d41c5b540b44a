//! A merged adapter reloads as merged: loaded through `peft_core::adapter_io` (peft-lora) on the tiny fixture
//! model, its forward equals the base model with HF PEFT's merged update `B A` (scaling 1, read from HF's merge
//! in `fixtures/merge/hf/`) added to each module's weight. The `linear` case is the one HF PEFT itself cannot
//! reload (issue 3737): its `attn.c_proj` modules keep rank 1 under r = 2, which our rank / alpha pattern says.

use std::path::Path;

use candle_core::{Device, Tensor};
use peft_core::adapter_io::load_adapter;
use peft_core::hooks::NoHooks;
use peft_merge::{merge_folders, Matrix, MergeOptions};
use peft_testing::{fixture, init, logits, max_diff, read_json, tiny};

/// Token ids of the fixture cases.
const IDS: [&[u32]; 2] = [&[5, 17, 42, 8, 99, 0, 63], &[3, 1, 4, 1, 5]];

/// `{module: B A}` of HF's merged adapter `hf/<case>` (what its factors mean at scaling 1).
fn hf_deltas(case: &str) -> Vec<(String, Matrix)> {
    let path = fixture(&format!("merge/hf/{case}/adapter_model.safetensors"));
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let matrix = |t: &Tensor| Matrix::from_tensor(t).unwrap().unwrap();
    let mut deltas: Vec<(String, Matrix)> = tensors
        .iter()
        .filter_map(|(key, a)| {
            let module = key
                .strip_prefix("base_model.model.")?
                .strip_suffix(".lora_A.weight")?;
            let b = &tensors[&format!("base_model.model.{module}.lora_B.weight")];
            Some((module.to_string(), matrix(b).matmul(&matrix(a))))
        })
        .collect();
    deltas.sort_by(|x, y| x.0.cmp(&y.0));
    deltas
}

/// Merges the case `name` of `cases.json` into `out`.
fn merge_case(name: &str, out: &Path) -> serde_json::Value {
    let cases = read_json(&fixture("merge/cases.json"));
    let case = cases
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone();
    let dirs: Vec<_> = case["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| fixture(&format!("merge/inputs/{}", a.as_str().unwrap())))
        .collect();
    let weights = case["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    let mut options = MergeOptions::new(
        case["combination"].as_str().unwrap().parse().unwrap(),
        weights,
    );
    options.density = case["density"].as_f64();
    options.svd_rank = case["svd_rank"].as_u64().map(|r| r as usize);
    merge_folders(&dirs, &options, out).unwrap();
    case
}

/// The largest logit difference between the merged adapter in `dir` loaded on the base, and the base with
/// HF's merged updates of `case` added to its weights; and how far the adapter moves the base's logits.
fn reload_difference(case: &str, base: &str, dir: &Path) -> (f32, f32) {
    peft_lora::register();
    let plain = tiny(base);
    let loaded = load_adapter(dir, &mut init(plain.model.as_ref(), 0)).unwrap();
    let mut updated = tiny(base);
    for (module, delta) in hf_deltas(case) {
        let site = updated
            .model
            .spec()
            .find_site(&module)
            .unwrap_or_else(|| panic!("{module} is a site"));
        let delta = delta.to_tensor(candle_core::DType::F32).unwrap();
        updated
            .model
            .frozen_linear_mut(site)
            .unwrap()
            .add_to_weight(&delta)
            .unwrap();
    }
    let (mut diff, mut moved) = (0.0f32, 0.0f32);
    for ids in IDS {
        let adapted = logits(plain.model.as_ref(), loaded.adapter.as_ref(), ids);
        diff = diff.max(max_diff(
            &adapted,
            &logits(updated.model.as_ref(), &NoHooks, ids),
        ));
        moved = moved.max(max_diff(
            &adapted,
            &logits(plain.model.as_ref(), &NoHooks, ids),
        ));
    }
    (diff, moved)
}

#[test]
fn merged_adapters_with_a_rank_pattern_reload_with_the_merged_updates() {
    let dir = tempfile::tempdir().unwrap();
    for (case, base) in [
        ("linear", "tiny-gpt2"),
        ("ties", "tiny-gpt2"),
        ("cat", "tiny-gpt2"),
        ("llama-svd", "tiny-llama"),
    ] {
        let out = dir.path().join(case);
        let spec = merge_case(case, &out);
        let config = read_json(&out.join("adapter_config.json"));
        if !spec["hf_reloads"].as_bool().unwrap() {
            // The modules HF PEFT leaves at the wrong rank carry their own rank and alpha.
            let pattern = config["rank_pattern"].as_object().unwrap();
            assert_eq!(
                pattern.len(),
                2,
                "{case}: attn.c_proj of both layers: {config}"
            );
            assert!(
                pattern.keys().all(|k| k.ends_with("attn.c_proj")),
                "{case}: {config}"
            );
            assert_eq!(
                config["rank_pattern"], config["alpha_pattern"],
                "{case}: scaling 1"
            );
        }
        let (diff, moved) = reload_difference(case, base, &out);
        eprintln!("{case}: reloaded vs base + HF's merged updates: {diff:.2e} (the adapter moves them {moved:.2})");
        assert!(
            moved > 1e-2,
            "{case}: the merged adapter changes the model ({moved})"
        );
        assert!(
            diff < 1e-4,
            "{case}: reloaded logits differ from the merged updates' by {diff}"
        );
    }
}
