//! Gradient checkpointing against the plain backward: every method of the method matrix on every architecture
//! whose layers run as one checkpointable stack (GPT-2, LLaMA, OPT, Gemma-3, LLaMA over a quantized base,
//! BERT with a classification head), on seeded tiny models. One micro-batch's gradient of every trainable
//! tensor must equal the unchecked one; the trainer with `gradient_checkpointing = true` must follow the same
//! losses; T5 is refused by name. Also the trainer with `recompute_mlp = false` (every MLP block composed)
//! against the default, which recomputes the blocks no adapter touches.

use candle_core::Tensor;
use peft_core::checkpoint::Checkpointing;
use peft_core::head::WithClassifier;
use peft_core::method::{Adapter, InitCtx, PeftMethod};
use peft_core::model::BaseModel;
use peft_train::task::{CausalLm, LmExample, Seq2Seq, Seq2SeqExample, Task, Tuned};
use peft_train::train::{TrainConfig, Trainer};
use rand::SeedableRng;
use serde_json::json;

#[path = "common/methods.rs"]
mod methods;
use methods::methods;
#[path = "common/tiny_cells.rs"]
mod tiny_cells;
use tiny_cells::{head_task, quantized_llama};

type Cell = (&'static str, Box<dyn BaseModel>, Box<dyn Task>);

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
            "llama-q4_1",
            Box::new(quantized_llama(12)),
            Box::new(lm_task()),
        ),
        (
            "bert",
            Box::new(peft_models::bert::tiny(14)),
            Box::new(head_task()),
        ),
    ]
}

fn lm_task() -> CausalLm {
    let seqs: Vec<LmExample> = (0..8u32)
        .map(|s| {
            // Different lengths, so the batch is padded.
            let ids: Vec<u32> = (0..6 + s % 3)
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

fn build(arch: &str, model: &dyn BaseModel, config: &serde_json::Value) -> Box<dyn Adapter> {
    let method: Box<dyn PeftMethod> = serde_json::from_value(config.clone()).unwrap();
    let mut init = InitCtx {
        model,
        tokenizer: None,
        rng: rand::rngs::StdRng::seed_from_u64(5),
    };
    let inner = method
        .build(&mut init)
        .unwrap_or_else(|e| panic!("building {config}: {e}"));
    if arch != "bert" {
        return inner;
    }
    Box::new(WithClassifier::new(inner, 2, &mut init).unwrap())
}

/// Largest difference between the two gradients of each trainable tensor, relative to the larger of 1 and the
/// plain gradient's largest magnitude; an error names a tensor missing from either side.
fn worst_difference(
    model: &dyn BaseModel,
    adapter: &dyn Adapter,
    task: &dyn Task,
) -> Result<f32, String> {
    let rows = [0usize, 1, 2, 3, 4];
    let tuned = Tuned::of(adapter);
    let plain = task
        .loss(model, &tuned, &rows)
        .unwrap()
        .loss
        .backward()
        .unwrap();
    let vars: Vec<Tensor> = adapter
        .trainable()
        .iter()
        .map(|(_, v)| v.as_tensor().clone())
        .collect();
    let ck = Checkpointing::new(adapter, 3, &vars);
    let checked = tuned.with_hooks(&ck);
    let loss = task.loss(model, &checked, &rows).unwrap().loss;
    let mut grads = ck.backward(&loss).unwrap();
    if !ck.replay_pending() {
        return Err("the layers never ran checkpointed".into());
    }
    task.loss(model, &checked, &rows).unwrap();
    grads.extend(ck.take_gradients().unwrap()).unwrap();
    let mut worst = 0f32;
    for (name, var) in adapter.trainable() {
        let get = |store: &candle_core::backprop::GradStore| -> Option<Vec<f32>> {
            let g: &Tensor = store.get(var.as_tensor())?;
            Some(g.flatten_all().unwrap().to_vec1().unwrap())
        };
        let (a, b) = match (get(&grads), get(&plain)) {
            (Some(a), Some(b)) => (a, b),
            (a, b) => {
                return Err(format!(
                    "{name}: checkpointed gradient {}, plain gradient {}",
                    a.is_some(),
                    b.is_some()
                ))
            }
        };
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(diff / scale);
    }
    Ok(worst)
}

#[test]
fn every_method_on_every_checkpointable_architecture_gets_the_plain_gradients() {
    let mut failures = Vec::new();
    let mut worst = 0f32;
    let mut cells = 0;
    for (arch, model, task) in zoo() {
        assert!(model.supports_gradient_checkpointing(), "{arch}");
        for (name, config, _) in methods() {
            let adapter = build(arch, model.as_ref(), &config);
            match worst_difference(model.as_ref(), adapter.as_ref(), task.as_ref()) {
                Ok(d) if d <= 1e-5 => worst = worst.max(d),
                Ok(d) => failures.push(format!("{arch} / {name}: gradients differ by {d:e}")),
                Err(e) => failures.push(format!("{arch} / {name}: {e}")),
            }
            cells += 1;
        }
    }
    println!("{cells} cells, worst relative gradient difference {worst:e}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn train(
    model: &dyn BaseModel,
    adapter: &dyn Adapter,
    task: &dyn Task,
    checkpointing: bool,
    recompute_mlp: bool,
) -> Vec<f64> {
    let config = TrainConfig {
        max_steps: 4,
        batch_size: 4,
        learning_rate: 1e-2,
        progress: false,
        checkpoints: false,
        gradient_checkpointing: checkpointing,
        recompute_mlp,
        output_dir: tempfile::tempdir().unwrap().keep(),
        ..TrainConfig::default()
    };
    Trainer::new(model, adapter, task, config)
        .run()
        .unwrap()
        .losses
}

#[test]
fn the_trainer_with_gradient_checkpointing_follows_the_same_losses() {
    peft_cli::link_methods();
    let model = peft_models::tiny::llama(12);
    let config =
        json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "all-linear"});
    let plain = train(
        &model,
        build("llama", &model, &config).as_ref(),
        &lm_task(),
        false,
        true,
    );
    let checked = train(
        &model,
        build("llama", &model, &config).as_ref(),
        &lm_task(),
        true,
        true,
    );
    assert_eq!(plain.len(), 4);
    assert!(plain[3] < plain[0], "the loss falls: {plain:?}");
    for (a, b) in plain.iter().zip(&checked) {
        assert!(
            (a - b).abs() < 1e-5,
            "plain {plain:?} vs checkpointed {checked:?}"
        );
    }
}

#[test]
fn keeping_the_mlp_activations_follows_the_same_losses() {
    peft_cli::link_methods();
    // Prompt tuning touches no projection, so by default every MLP block runs recomputed.
    let config = json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3});
    for arch in ["gpt2", "llama"] {
        let model: Box<dyn BaseModel> = match arch {
            "gpt2" => Box::new(peft_models::tiny::gpt2(16)),
            _ => Box::new(peft_models::tiny::llama(16)),
        };
        let run = |checkpointing, recompute_mlp| {
            let adapter = build(arch, model.as_ref(), &config);
            train(
                model.as_ref(),
                adapter.as_ref(),
                &lm_task(),
                checkpointing,
                recompute_mlp,
            )
        };
        let recomputed = run(false, true);
        assert_eq!(recomputed.len(), 4, "{arch}: four steps");
        for (what, other) in [
            ("kept", run(false, false)),
            ("checkpointed", run(true, true)),
        ] {
            for (a, b) in recomputed.iter().zip(&other) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "{arch}: recomputed {recomputed:?} vs {what} {other:?}"
                );
            }
        }
    }
}

#[test]
fn t5_is_refused_by_name() {
    peft_cli::link_methods();
    let model = peft_models::t5::tiny(15);
    let examples: Vec<Seq2SeqExample> = (0..4u32)
        .map(|s| Seq2SeqExample {
            input_ids: vec![2 + s, 3, 4],
            labels: vec![2 + s, 1],
        })
        .collect();
    let task = Seq2Seq::new(examples.clone(), examples, 0, Some(1)).unwrap();
    let adapter = build("t5", &model, &json!({"peft_type": "LORA", "r": 2}));
    let config = TrainConfig {
        max_steps: 1,
        batch_size: 2,
        progress: false,
        checkpoints: false,
        gradient_checkpointing: true,
        output_dir: tempfile::tempdir().unwrap().keep(),
        ..TrainConfig::default()
    };
    let err = Trainer::new(&model, adapter.as_ref(), &task, config)
        .run()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gradient_checkpointing") && err.contains("t5"),
        "{err}"
    );
}
