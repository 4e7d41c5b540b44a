//! Adapters interoperate with HF PEFT 0.21.2 on the zoo's newer architectures, both directions, on fixtures
//! written by `scripts/reference/zoo_adapters.py`: T5 (prompt tuning and prefix tuning as `SEQ_2_SEQ_LM`, LoRA),
//! OPT (LoRA, prefix tuning) and BERT sequence classification (LoRA and prefix tuning, each with HF's
//! `classifier` as a trained head, its LoRA keys nested under transformers' `bert.` as HF PEFT saves them).
//!
//! - `hf-*`: adapters HF PEFT saved load here with HF's outputs (T5: the logits at the last decoder position;
//!   OPT: the last-position logits; BERT: the class logits of a right-padded batch) within 1e-4, and with HF's
//!   trainable-parameter count. None of them is a no-op.
//! - `ours-*`: seeded adapters built here (every tensor perturbed, so none is trivial) load in HF PEFT with our
//!   outputs (`hf_logits.json`, written by the script's `ours` mode, which also checks that HF PEFT holds exactly
//!   the saved tensors) and with our trainable count.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-cli --test zoo_interop` rewrites the `ours-*` adapters (then run
//! `scripts/reference/zoo_adapters.py ours` to refresh their `hf_logits.json`).

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use peft_core::head::WithClassifier;
use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::{BaseModel, Batch};
use peft_testing::{
    f32s, fixture, full_logits_diff, hf_fixture, hf_logits, ids_of, init, max_diff, ours_fixture,
    tiny, u32s,
};
use peft_train::generate::last_decoder_logits;
use peft_train::task::Tuned;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// HF PEFT's adapter folders, with the fixture model each was made on.
const HF: [(&str, &str); 7] = [
    ("hf-tiny-t5-prompt", "tiny-t5"),
    ("hf-tiny-t5-prefix", "tiny-t5"),
    ("hf-tiny-t5-lora", "tiny-t5"),
    ("hf-tiny-opt-lora", "tiny-opt"),
    ("hf-tiny-opt-prefix", "tiny-opt"),
    ("hf-tiny-bert-lora-cls", "tiny-bert"),
    ("hf-tiny-bert-prefix-cls", "tiny-bert"),
];

/// How far our outputs may be from HF PEFT's.
const TOLERANCE: f32 = 1e-4;

/// Classes of the BERT fixtures' head.
const BERT_LABELS: usize = 3;

/// The class logits `[rows x labels]`, flattened, of a BERT case's right-padded batch: the adapter's head over
/// BERT's pooled output, as `BertForSequenceClassification` classifies.
fn class_logits(model: &dyn BaseModel, tuned: Tuned, case: &Value) -> Vec<f32> {
    let hooks = tuned.hooks();
    let rows: Vec<Vec<u32>> = case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    let mask: Vec<Vec<f32>> = case["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(f32s)
        .collect();
    let device = model.device();
    let batch = Batch::new(
        Tensor::new(rows, device).unwrap(),
        Tensor::new(mask, device).unwrap(),
    )
    .unwrap();
    let head = tuned
        .classifier()
        .expect("a classification adapter carries its head");
    peft_core::grad::no_grad(|| {
        let out = model.forward(&batch, hooks)?;
        head.forward(&model.pooled(&out, &batch, hooks)?)
    })
    .unwrap()
    .flatten_all()
    .unwrap()
    .to_vec1()
    .unwrap()
}

/// Max |ours - reference| over a case of a fixture on `base`.
fn case_diff(base: &str, model: &dyn BaseModel, tuned: Tuned, case: &Value) -> f32 {
    let hooks = tuned.hooks();
    match base {
        "tiny-t5" => {
            let ours = last_decoder_logits(
                model,
                hooks,
                &ids_of(case),
                &u32s(&case["decoder_input_ids"]),
            )
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            max_diff(&ours, &f32s(&case["logits"]))
        }
        "tiny-bert" => {
            let reference: Vec<f32> = case["logits"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(f32s)
                .collect();
            max_diff(&class_logits(model, tuned, case), &reference)
        }
        _ => full_logits_diff(model, hooks, case),
    }
}

/// How far the frozen model without the adapter is from a reference case (BERT: keeping the adapter's head, so
/// that this measures what the rest of the adapter does).
fn without_adapter_diff(
    base: &str,
    model: &dyn BaseModel,
    adapter: &dyn Adapter,
    case: &Value,
) -> f32 {
    match adapter.classifier() {
        // Only the classification head: the frozen model as it is, classified by `head`.
        Some(head) => case_diff(base, model, Tuned::with_head(&NoHooks, &head), case),
        None => case_diff(base, model, Tuned::frozen(), case),
    }
}

/// Our adapter's outputs against a reference's cases; panics past [`TOLERANCE`], or where the reference equals
/// the frozen model's outputs (a no-op adapter proves nothing). Returns the largest difference.
fn check_cases(
    folder: &str,
    base: &str,
    model: &dyn BaseModel,
    adapter: &dyn Adapter,
    reference: &Value,
) -> f32 {
    let count = reference["num_trainable"].as_u64().unwrap();
    assert_eq!(
        adapter.num_trainable() as u64,
        count,
        "{folder}: trainable parameters differ from HF PEFT's count"
    );
    let mut worst = 0f32;
    for case in reference["cases"].as_array().unwrap() {
        let diff = case_diff(base, model, Tuned::of(adapter), case);
        assert!(diff < TOLERANCE, "{folder}: max |diff| vs HF PEFT {diff}");
        let moved = without_adapter_diff(base, model, adapter, case);
        assert!(
            moved > 1e-2,
            "{folder}: the adapter moves the outputs by only {moved}"
        );
        worst = worst.max(diff);
    }
    eprintln!("{folder}: max |diff| vs HF PEFT {worst:.2e} ({count} trainable parameters)");
    worst
}

#[test]
fn hf_peft_adapters_on_t5_opt_and_bert_load_with_equal_outputs_and_counts() {
    peft_cli::link_methods();
    for (folder, base) in HF {
        let loaded = tiny(base);
        let model = loaded.model.as_ref();
        let (adapter, reference) =
            hf_fixture(&fixture(&format!("adapters/{folder}")), &mut init(model, 0));
        check_cases(folder, base, model, adapter.as_ref(), &reference);
    }
}

#[test]
fn bert_lora_keys_carry_the_task_models_prefix_and_the_head_does_not() {
    peft_cli::link_methods();
    let dir = fixture("adapters/hf-tiny-bert-lora-cls");
    let loaded = tiny("tiny-bert");
    let adapter = peft_core::adapter_io::load_adapter(&dir, &mut init(loaded.model.as_ref(), 0))
        .unwrap()
        .adapter;
    let saved = tempfile::tempdir().unwrap();
    let out = saved.path().join("again");
    peft_core::adapter_io::save_adapter(&out, adapter.as_ref(), loaded.model.spec()).unwrap();
    // Saved again, the file holds HF PEFT's keys and values.
    let ours = candle_core::safetensors::load(
        out.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let hf = candle_core::safetensors::load(
        dir.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut keys: Vec<&String> = ours.keys().collect();
    keys.sort();
    let mut hf_keys: Vec<&String> = hf.keys().collect();
    hf_keys.sort();
    assert_eq!(keys, hf_keys);
    assert!(ours
        .contains_key("base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"));
    assert!(ours.contains_key("base_model.model.classifier.bias"));
    for (k, t) in &ours {
        assert_eq!(
            peft_core::compare::max_abs_diff(t, &hf[k]).unwrap(),
            0.0,
            "{k}"
        );
    }
}

/// The `ours-*` adapters: folder, fixture model, config (HF PEFT's field names), whether it carries a head.
fn ours_adapters() -> Vec<(&'static str, &'static str, Value, bool)> {
    let lora = |base: &str, task: &str| {
        json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "task_type": task,
                                                "base_model_name_or_path": base})
    };
    let prefix = |base: &str, task: &str, n: usize| {
        json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": n,
                                                           "task_type": task, "base_model_name_or_path": base})
    };
    vec![
        (
            "ours-tiny-t5-prompt",
            "tiny-t5",
            json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "task_type": "SEQ_2_SEQ_LM",
                   "base_model_name_or_path": "tiny-t5"}),
            false,
        ),
        (
            "ours-tiny-t5-prefix",
            "tiny-t5",
            prefix("tiny-t5", "SEQ_2_SEQ_LM", 3),
            false,
        ),
        (
            "ours-tiny-t5-lora",
            "tiny-t5",
            lora("tiny-t5", "SEQ_2_SEQ_LM"),
            false,
        ),
        (
            "ours-tiny-opt-lora",
            "tiny-opt",
            lora("tiny-opt", "CAUSAL_LM"),
            false,
        ),
        (
            "ours-tiny-opt-prefix",
            "tiny-opt",
            prefix("tiny-opt", "CAUSAL_LM", 4),
            false,
        ),
        (
            "ours-tiny-bert-lora-cls",
            "tiny-bert",
            json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"],
                   "base_model_name_or_path": "tiny-bert"}),
            true,
        ),
        (
            "ours-tiny-bert-prefix-cls",
            "tiny-bert",
            prefix("tiny-bert", "SEQ_CLS", 3),
            true,
        ),
    ]
}

/// Our seeded adapter for `config` on `model` (with a 3-class head where `head`), every tensor perturbed by
/// seeded noise, uniform in [-0.5, 0.5), so that LoRA's zero B, say, leaves nothing trivial.
fn our_adapter(model: &dyn BaseModel, config: &Value, head: bool, seed: u64) -> Box<dyn Adapter> {
    let method: Box<dyn PeftMethod> = serde_json::from_value(config.clone()).unwrap();
    let mut ctx = init(model, seed);
    let inner = method.build(&mut ctx).unwrap();
    let adapter: Box<dyn Adapter> = if head {
        Box::new(WithClassifier::new(inner, BERT_LABELS, &mut ctx).unwrap())
    } else {
        inner
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 100);
    let perturbed: HashMap<String, Tensor> = adapter
        .tensors()
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let noise: Vec<f32> = (0..t.elem_count())
                .map(|_| rng.random_range(-0.5..0.5))
                .collect();
            let noise = Tensor::from_vec(noise, t.dims(), t.device()).unwrap();
            (k, (t.to_dtype(DType::F32).unwrap() + noise).unwrap())
        })
        .collect();
    adapter.load_tensors(&perturbed).unwrap();
    adapter
}

#[test]
fn our_adapters_on_t5_opt_and_bert_load_in_hf_peft_with_equal_outputs() {
    peft_cli::link_methods();
    for (seed, (folder, base, config, head)) in ours_adapters().into_iter().enumerate() {
        let loaded = tiny(base);
        let model = loaded.model.as_ref();
        let dir = fixture(&format!("adapters/{folder}"));
        let fresh = our_adapter(model, &config, head, seed as u64);
        // The committed adapter is what this code builds today (so HF PEFT's outputs are about our files).
        let Some(committed) = ours_fixture(&dir, fresh.as_ref(), init(model, 0)) else {
            continue;
        };
        check_cases(folder, base, model, committed.as_ref(), &hf_logits(&dir));
    }
}
