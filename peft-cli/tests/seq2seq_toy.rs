//! A tiny T5 learns toy seq2seq tasks through the shared trainer, greedy decoding (with the decoder cache)
//! judging exact matches:
//! - LoRA teaches the random frozen model the task (held-out exact match).
//! - Prompt tuning steers a model that can already do the task when told to, as it steers a pretrained model:
//!   the tiny T5 first learns (LoRA, merged into its weights) to copy, or to copy with every id shifted, by a
//!   task token at the start of the source; the prompt then learns to make it shift with no task token (the
//!   frozen model then copies). A prompt alone cannot teach
//!   a random frozen model to copy (its loss stalls near ln 20, the choice among the 20 ids): there is no
//!   copying behaviour to steer.

use peft_core::method::{Adapter, InitCtx, PeftMethod};
use peft_core::model::BaseModel;
use peft_train::task::{Metrics, Seq2Seq, Seq2SeqExample, Task, Tuned};
use peft_train::train::{TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use serde_json::json;

const EOS: u32 = 1;
const COPY: u32 = 50;
const SHIFT: u32 = 51;

/// `n` random examples of the toy task: three ids, one from each band 3..10, 10..17, 17..24, in a random
/// order; the target lists them band by band (ids + 20 where `shift`), then eos. T5's cross-attention sees
/// no positions, so a task that orders by content is one a tiny T5 can learn; copying by position is not.
/// The source is optionally led by a task token.
fn examples(n: usize, seed: u64, task_token: Option<u32>, shift: bool) -> Vec<Seq2SeqExample> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let bands: Vec<u32> = (0..3).map(|b| 3 + 7 * b + rng.random_range(0..7)).collect();
            let mut source = bands.clone();
            for i in (1..source.len()).rev() {
                source.swap(i, rng.random_range(0..=i));
            }
            let mut target: Vec<u32> = bands
                .iter()
                .map(|&i| if shift { i + 20 } else { i })
                .collect();
            target.push(EOS);
            Seq2SeqExample {
                input_ids: task_token.into_iter().chain(source).collect(),
                labels: target,
            }
        })
        .collect()
}

fn build(model: &dyn BaseModel, config: serde_json::Value) -> Box<dyn Adapter> {
    peft_cli::link_methods();
    let method: Box<dyn PeftMethod> = serde_json::from_value(config).unwrap();
    method
        .build(&mut InitCtx {
            model,
            tokenizer: None,
            rng: rand::rngs::StdRng::seed_from_u64(5),
        })
        .unwrap()
}

/// Trains `adapter` on `task`; returns the dev metrics before (frozen model) and after.
fn train(
    model: &dyn BaseModel,
    adapter: &dyn Adapter,
    task: &Seq2Seq,
    lr: f64,
    steps: usize,
) -> (Metrics, Metrics) {
    let before = task.evaluate(model, &Tuned::frozen(), 32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        max_steps: steps,
        batch_size: 16,
        learning_rate: lr,
        warmup_steps: 0,
        eval_every: 0,
        log_every: 0,
        progress: false,
        output_dir: dir.path().to_path_buf(),
        ..TrainConfig::default()
    };
    Trainer::new(model, adapter, task, cfg).run().unwrap();
    let after = task.evaluate(model, &Tuned::of(adapter), 32).unwrap();
    println!("before {before:?}\nafter  {after:?}");
    (before, after)
}

#[test]
fn lora_teaches_a_random_t5_the_task() {
    let model = peft_models::t5::tiny(3);
    let task = Seq2Seq::new(
        examples(512, 1, None, false),
        examples(64, 9, None, false),
        0,
        Some(EOS),
    )
    .unwrap();
    let lora = build(
        &model,
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": "all-linear"}),
    );
    let (before, after) = train(&model, lora.as_ref(), &task, 1e-2, 600);
    assert_eq!(before["exact_match"], 0.0);
    assert!(after["exact_match"] > 0.9, "{after:?}");
    assert!(
        after["loss"] < 0.25 * before["loss"],
        "{before:?} -> {after:?}"
    );
}

#[test]
fn prompt_tuning_steers_a_t5_that_can_shift_to_shift() {
    // "Pre-training": copy, or copy with every id shifted by 20, chosen by a task token; merged into the
    // frozen weights.
    let mut model = peft_models::t5::tiny(4);
    let mut mixed = examples(512, 2, Some(COPY), false);
    mixed.extend(examples(512, 3, Some(SHIFT), true));
    let mut held_out = examples(32, 4, Some(COPY), false);
    held_out.extend(examples(32, 6, Some(SHIFT), true));
    let pretrain = Seq2Seq::new(mixed, held_out, 0, Some(EOS)).unwrap();
    let lora = build(
        &model,
        json!({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": "all-linear"}),
    );
    let (_, skills) = train(&model, lora.as_ref(), &pretrain, 3e-3, 1200);
    eprintln!("pre-training: {skills:?}");
    assert!(skills["exact_match"] > 0.4, "pre-training: {skills:?}");
    lora.merge_into(&mut model).unwrap();

    // The task: shift, with no task token; only the prompt trains.
    let task = Seq2Seq::new(
        examples(512, 5, None, true),
        examples(64, 7, None, true),
        0,
        Some(EOS),
    )
    .unwrap();
    let prompt = build(
        &model,
        json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}),
    );
    let (before, after) = train(&model, prompt.as_ref(), &task, 3e-1, 300);
    assert!(
        after["exact_match"] > before["exact_match"] + 0.2,
        "{before:?} -> {after:?}"
    );
    assert!(
        after["loss"] < 0.5 * before["loss"],
        "{before:?} -> {after:?}"
    );
}
