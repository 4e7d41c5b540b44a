//! SmolLM2-135M-Instruct loaded from its Q4_1 GGUF gives the logits Hugging Face transformers gives for the same
//! file (`fixtures/smollm2/logits.json`, written by `scripts/reference/smollm2_gguf.py`): same input ids, the
//! same top-20 next-token ids in the same order (up to ties within the tolerance), each logit within 1e-3.
//! Needs the GGUF: `PEFT_SMOLLM2_GGUF=<file>` or `peft fetch smollm2-135m`; skipped without it.

use std::path::PathBuf;

use candle_core::{Device, IndexOp};
use peft_core::hooks::NoHooks;
use peft_core::model::Batch;
use peft_models::gguf::load_gguf;
use serde::Deserialize;

const TOLERANCE: f32 = 1e-3;

#[derive(Deserialize)]
struct Fixture {
    top_k: Option<usize>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    input_ids: Vec<u32>,
    top: Vec<(u32, f32)>,
}

/// The GGUF named by `PEFT_SMOLLM2_GGUF`, else the zoo cache's copy, else `None` (the test is skipped).
fn smollm2_gguf() -> Option<PathBuf> {
    peft_models::zoo::local_path("smollm2-135m", "PEFT_SMOLLM2_GGUF")
}

#[test]
fn logits_match_transformers() {
    let Some(gguf) = smollm2_gguf() else {
        eprintln!(
            "SKIPPED: no SmolLM2 GGUF (set PEFT_SMOLLM2_GGUF or run `peft fetch smollm2-135m`)"
        );
        return;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/smollm2/logits.json");
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(fixture.cases.len() >= 8, "the fixture should hold 8 cases");

    let dev = Device::Cpu;
    let loaded = load_gguf(&gguf, &dev).unwrap();
    let (model, tok) = (&loaded.model, loaded.tokenizer.as_ref().unwrap());
    assert_eq!(model.spec().vocab_size, 49152);
    assert_eq!(loaded.eos_token_id, Some(2));

    let mut max_diff = 0f32;
    for case in &fixture.cases {
        let ids = tok
            .encode(case.text.as_str(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, case.input_ids, "input ids of {:?}", case.text);
        let out = model
            .forward(&Batch::single(&ids, &dev).unwrap(), &NoHooks)
            .unwrap();
        let last = out
            .hidden
            .i((0, out.virtual_tokens + ids.len() - 1))
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits: Vec<f32> = model
            .logits(&last)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();

        let k = fixture.top_k.unwrap_or(case.top.len());
        assert_eq!(case.top.len(), k);
        let mut ours: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        ours.sort_by(|a, b| b.1.total_cmp(&a.1));
        ours.truncate(k);
        for (rank, (&(ref_id, ref_logit), &(our_id, our_logit))) in
            case.top.iter().zip(&ours).enumerate()
        {
            let diff = (logits[ref_id as usize] - ref_logit).abs();
            max_diff = max_diff.max(diff);
            assert!(
                diff <= TOLERANCE,
                "{:?}: logit of token {ref_id} is {} here, {ref_logit} in transformers",
                case.text,
                logits[ref_id as usize]
            );
            // A different id at this rank is fine only where the two logits tie within the tolerance.
            assert!(
                our_id == ref_id || (our_logit - ref_logit).abs() <= TOLERANCE,
                "{:?}: rank {rank} is token {our_id} ({our_logit}) here, {ref_id} ({ref_logit}) in transformers",
                case.text
            );
        }
    }
    eprintln!(
        "SmolLM2 GGUF: max |logit - transformers| over {} top-20 lists: {max_diff:.3e}",
        fixture.cases.len()
    );
}

#[test]
fn zoo_name_and_path_resolve_to_the_gguf() {
    let Some(gguf) = smollm2_gguf() else {
        eprintln!(
            "SKIPPED: no SmolLM2 GGUF (set PEFT_SMOLLM2_GGUF or run `peft fetch smollm2-135m`)"
        );
        return;
    };
    let dev = Device::Cpu;
    let by_path = peft_models::resolve::load_model(gguf.to_str().unwrap(), &dev).unwrap();
    let spec = by_path.model.spec();
    assert_eq!(
        (
            spec.architecture.as_str(),
            spec.num_layers,
            spec.hidden_size
        ),
        ("llama", 30, 576)
    );
    assert_eq!(
        (spec.num_heads, spec.num_kv_heads, spec.head_dim),
        (9, 3, 64)
    );
    assert_eq!(spec.name_or_path, "SmolLM2-135M-Instruct.Q4_1.gguf");
    if peft_models::zoo::cached_path("smollm2-135m").is_some() {
        let by_name = peft_models::resolve::load_model("smollm2-135m", &dev).unwrap();
        assert_eq!(by_name.model.spec(), spec);
    }
}
