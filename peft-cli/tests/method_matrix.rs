//! Every method of the workspace x every architecture of the zoo (GPT-2, LLaMA, Gemma-3, OPT, BERT, T5 in its
//! gated and relu variants, and LLaMA over a base kept quantized), on seeded tiny models, through the shared
//! conformance check (`peft_train::conformance`): 20 trainer steps, the loss falls, every trainable tensor moves and no frozen tensor does (tensor by tensor),
//! save -> load gives the same outputs, and a stopped-and-resumed run equals an uninterrupted one. Each
//! architecture trains its own kind of task: decoders a causal LM, BERT a classification head (the method
//! plus HF's `classifier`), T5 a seq2seq copy task. Composition (a STACK) and trained heads are cells of the
//! same matrix.

use peft_core::head::WithClassifier;
use peft_core::method::{Adapter, InitCtx, PeftMethod};
use peft_core::model::BaseModel;
use peft_train::conformance::{check_adapter, check_resume, Conformance};
use peft_train::task::{CausalLm, LmExample, Seq2Seq, Seq2SeqExample, Task};
use rand::SeedableRng;
use serde_json::json;

#[path = "common/methods.rs"]
mod methods;
use methods::methods;
#[path = "common/tiny_cells.rs"]
mod tiny_cells;
use tiny_cells::{head_task, quantized_llama};

fn models() -> Vec<(&'static str, Box<dyn BaseModel>)> {
    peft_cli::link_methods();
    vec![
        ("gpt2", Box::new(peft_models::tiny::gpt2(11))),
        ("llama", Box::new(peft_models::tiny::llama(12))),
    ]
}

/// An architecture's name, a tiny model of it and the task it trains in the matrix.
type Cell = (&'static str, Box<dyn BaseModel>, Box<dyn Task>);

/// Every architecture, with the task it trains in the matrix.
fn zoo() -> Vec<Cell> {
    peft_cli::link_methods();
    vec![
        (
            "gpt2",
            Box::new(peft_models::tiny::gpt2(11)),
            Box::new(lm_task()),
        ),
        (
            "llama",
            Box::new(peft_models::tiny::llama(12)),
            Box::new(lm_task()),
        ),
        (
            "opt",
            Box::new(peft_models::opt::tiny(13)),
            Box::new(lm_task()),
        ),
        (
            "gemma3",
            Box::new(peft_models::tiny::gemma3(17)),
            Box::new(lm_task()),
        ),
        (
            // The base kept quantized (QLoRA-style): every method trains over 4-bit projections, embedding
            // table and head.
            "llama-q4_1",
            Box::new(quantized_llama(12)),
            Box::new(lm_task()),
        ),
        (
            "bert",
            Box::new(peft_models::bert::tiny(14)),
            Box::new(head_task()),
        ),
        (
            "t5",
            Box::new(peft_models::t5::tiny(15)),
            Box::new(copy_task()),
        ),
        (
            "t5-relu",
            Box::new(peft_models::t5::tiny_with(16, false)),
            Box::new(copy_task()),
        ),
    ]
}

/// Copy the source (then eos = 1).
fn copy_task() -> Seq2Seq {
    let examples: Vec<Seq2SeqExample> = (0..16u32)
        .map(|s| {
            let ids: Vec<u32> = (0..5u32).map(|t| 2 + (s * 7 + t * 3) % 100).collect();
            Seq2SeqExample {
                labels: ids.iter().copied().chain([1]).collect(),
                input_ids: ids,
            }
        })
        .collect();
    Seq2Seq::new(examples.clone(), examples, 0, Some(1)).unwrap()
}

/// The method, with a trained head where the architecture classifies with one.
fn build_for(arch: &str, model: &dyn BaseModel, config: &serde_json::Value) -> Box<dyn Adapter> {
    let inner = build(model, config);
    if arch != "bert" {
        return inner;
    }
    let mut init = InitCtx {
        model,
        tokenizer: None,
        rng: rand::rngs::StdRng::seed_from_u64(6),
    };
    Box::new(WithClassifier::new(inner, 2, &mut init).unwrap())
}

/// Short sequences that follow a rule (counting by a per-sequence stride), so an adapter can lower the loss.
fn lm_task() -> CausalLm {
    let seqs: Vec<LmExample> = (0..16u32)
        .map(|s| {
            let ids: Vec<u32> = (0..10u32)
                .map(|t| 1 + (s * 5 + t * (1 + s % 3)) % 100)
                .collect();
            LmExample {
                labels: ids.iter().map(|&i| i as i64).collect(),
                input_ids: ids,
            }
        })
        .collect();
    CausalLm::new(seqs.clone(), seqs, 0).unwrap()
}

fn build(model: &dyn BaseModel, config: &serde_json::Value) -> Box<dyn Adapter> {
    let method: Box<dyn PeftMethod> =
        serde_json::from_value(config.clone()).unwrap_or_else(|e| panic!("config {config}: {e}"));
    method
        .build(&mut InitCtx {
            model,
            tokenizer: None,
            rng: rand::rngs::StdRng::seed_from_u64(5),
        })
        .unwrap_or_else(|e| panic!("building {config}: {e}"))
}

fn check(model: &dyn BaseModel, adapter: &dyn Adapter, task: &dyn Task, lr: f64) -> String {
    let how = Conformance {
        learning_rate: lr,
        ..Conformance::default()
    };
    match check_adapter(model, None, adapter, task, &how) {
        Ok(r) => format!(
            "loss {:.4} -> {:.4}, {} trainable / {} frozen tensors checked, reload diff {:e}",
            r.first_loss, r.last_loss, r.trainable_tensors, r.frozen_tensors, r.reload_diff
        ),
        Err(e) => format!("FAILED: {e}"),
    }
}

/// Every method on one architecture of the zoo. One test per architecture, so that the harness runs them side
/// by side (the whole matrix in one test took 3 minutes of CI on one core).
fn every_method_keeps_the_contract_on(wanted: &str) {
    let mut failures = Vec::new();
    let mut found = false;
    for (arch, model, task) in zoo().into_iter().filter(|(arch, _, _)| *arch == wanted) {
        found = true;
        let task = task.as_ref();
        for (name, config, lr) in methods() {
            let adapter = build_for(arch, model.as_ref(), &config);
            let mut line = check(model.as_ref(), adapter.as_ref(), task, lr);
            let how = Conformance {
                learning_rate: lr,
                steps: 6,
                ..Conformance::default()
            };
            let rebuild = || -> peft_core::Result<Box<dyn Adapter>> {
                Ok(build_for(arch, model.as_ref(), &config))
            };
            match check_resume(model.as_ref(), &rebuild, task, &how) {
                Ok(diff) if diff <= 1e-6 => line.push_str(&format!(", resume diff {diff:e}")),
                Ok(diff) => line = format!("FAILED: stopped + resumed differs by {diff:e}"),
                Err(e) => line = format!("FAILED: resume: {e}"),
            }
            println!("{arch:6} {name:40} {line}");
            if line.starts_with("FAILED") {
                failures.push(format!("{arch} / {name}: {line}"));
            }
        }
    }
    assert!(found, "no architecture {wanted} in the zoo");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_zoo_is_the_matrix_below() {
    let names: Vec<&str> = zoo().iter().map(|(arch, _, _)| *arch).collect();
    assert_eq!(
        names,
        [
            "gpt2",
            "llama",
            "opt",
            "gemma3",
            "llama-q4_1",
            "bert",
            "t5",
            "t5-relu"
        ],
        "a new architecture needs its test below"
    );
}

#[test]
fn every_method_on_gpt2_keeps_the_contract() {
    every_method_keeps_the_contract_on("gpt2");
}

#[test]
fn every_method_on_llama_keeps_the_contract() {
    every_method_keeps_the_contract_on("llama");
}

#[test]
fn every_method_on_opt_keeps_the_contract() {
    every_method_keeps_the_contract_on("opt");
}

#[test]
fn every_method_on_gemma3_keeps_the_contract() {
    every_method_keeps_the_contract_on("gemma3");
}

#[test]
fn every_method_on_a_quantized_llama_keeps_the_contract() {
    every_method_keeps_the_contract_on("llama-q4_1");
}

#[test]
fn every_method_on_bert_keeps_the_contract() {
    every_method_keeps_the_contract_on("bert");
}

#[test]
fn every_method_on_t5_keeps_the_contract() {
    every_method_keeps_the_contract_on("t5");
}

#[test]
fn every_method_on_t5_with_relu_keeps_the_contract() {
    every_method_keeps_the_contract_on("t5-relu");
}

#[test]
fn p_tuning_v2_with_a_trained_head_keeps_the_contract() {
    // Two classes told apart by the first token; the head reads the last token's state.
    let task = head_task();
    let mut failures = Vec::new();
    for (arch, model) in models() {
        let inner = build(
            model.as_ref(),
            &json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}),
        );
        let mut init = InitCtx {
            model: model.as_ref(),
            tokenizer: None,
            rng: rand::rngs::StdRng::seed_from_u64(6),
        };
        let adapter = WithClassifier::new(inner, 2, &mut init).unwrap();
        let line = check(model.as_ref(), &adapter, &task, 3e-2);
        println!("{arch:6} P-tuning v2 + head {line}");
        if line.starts_with("FAILED") {
            failures.push(format!("{arch}: {line}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
