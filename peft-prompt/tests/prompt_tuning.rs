//! Prompt tuning on the seeded tiny models: initialisations, the embedding hook, HF PEFT's file format,
//! gradients, and training through the shared trainer.

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use peft_core::adapter_io::{load_adapter, save_adapter, CONFIG_FILE};
use peft_core::hooks::{Ctx, NoHooks};
use peft_core::method::{Adapter, InitCtx, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::PeftError;
use peft_prompt::{PromptTuningConfig, PromptTuningInit};
use peft_testing::{seeded_tiny_models, toy_classification_task};
use peft_train::generate::last_logits;
use peft_train::task::{Task, Tuned};
use peft_train::train::{TrainConfig, Trainer};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::Tokenizer;

fn init<'a>(model: &'a dyn BaseModel, tokenizer: Option<&'a Tokenizer>, seed: u64) -> InitCtx<'a> {
    InitCtx {
        tokenizer,
        ..peft_testing::init(model, seed)
    }
}

fn build(model: &dyn BaseModel, cfg: &PromptTuningConfig, seed: u64) -> Box<dyn Adapter> {
    cfg.build(&mut init(model, None, seed)).unwrap()
}

fn prompt_of(adapter: &dyn Adapter) -> Vec<Vec<f32>> {
    adapter.tensors().unwrap()[0].1.to_vec2::<f32>().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

/// A word-level tokenizer over words "w0".."w127", so that ids stay inside the tiny vocabulary.
fn tiny_tokenizer() -> Tokenizer {
    let vocab = (0..128u32).map(|i| (format!("w{i}"), i)).collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("w0".into())
        .build()
        .unwrap();
    let mut t = Tokenizer::new(model);
    t.with_pre_tokenizer(Some(Whitespace {}));
    t
}

#[test]
fn random_init_is_seeded_and_standard_normal() {
    let model = peft_models::tiny::llama(1);
    let cfg = PromptTuningConfig::new(50, PromptTuningInit::Random);
    let a = prompt_of(build(&model, &cfg, 5).as_ref());
    assert_eq!(a, prompt_of(build(&model, &cfg, 5).as_ref()));
    assert_ne!(a, prompt_of(build(&model, &cfg, 6).as_ref()));
    let values: Vec<f32> = a.concat();
    let mean = values.iter().sum::<f32>() / values.len() as f32;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32;
    assert!(
        mean.abs() < 0.1 && (var - 1.0).abs() < 0.15,
        "mean {mean}, var {var}"
    );
}

#[test]
fn text_init_repeats_the_text_embeddings_and_sample_vocab_copies_rows() {
    let model = peft_models::tiny::gpt2(1);
    let tok = tiny_tokenizer();
    let mut cfg = PromptTuningConfig::new(5, PromptTuningInit::Text);
    cfg.prompt_tuning_init_text = Some("w7 w9".into());
    let adapter = cfg.build(&mut init(&model, Some(&tok), 0)).unwrap();
    let ids = Tensor::new(&[7u32, 9, 7, 9, 7], &Device::Cpu).unwrap();
    let expected = model.embed_tokens(&ids).unwrap();
    assert_eq!(max_diff(&adapter.tensors().unwrap()[0].1, &expected), 0.0);
    // Truncation: a longer text keeps its first tokens.
    cfg.prompt_tuning_init_text = Some("w1 w2 w3 w4 w5 w6 w7".into());
    let adapter = cfg.build(&mut init(&model, Some(&tok), 0)).unwrap();
    let ids = Tensor::new(&[1u32, 2, 3, 4, 5], &Device::Cpu).unwrap();
    assert_eq!(
        max_diff(
            &adapter.tensors().unwrap()[0].1,
            &model.embed_tokens(&ids).unwrap()
        ),
        0.0
    );
    // TEXT without a tokenizer is a clear error.
    let err = cfg.build(&mut init(&model, None, 0)).err().unwrap();
    assert!(err.to_string().contains("tokenizer"), "{err}");

    let sampled = build(
        &model,
        &PromptTuningConfig::new(4, PromptTuningInit::SampleVocab),
        2,
    );
    let table = model
        .embed_tokens(&Tensor::arange(0u32, 128, &Device::Cpu).unwrap())
        .unwrap();
    for row in prompt_of(sampled.as_ref()) {
        let row = Tensor::new(row.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let best = table
            .broadcast_sub(&row)
            .unwrap()
            .abs()
            .unwrap()
            .sum(1)
            .unwrap()
            .min(0)
            .unwrap();
        assert_eq!(
            best.to_scalar::<f32>().unwrap(),
            0.0,
            "a sampled row is not a vocabulary embedding"
        );
    }
}

#[test]
fn the_hook_prepends_virtual_tokens_with_mask_one() {
    for model in seeded_tiny_models(3) {
        let adapter = build(
            model.as_ref(),
            &PromptTuningConfig::new(3, PromptTuningInit::Random),
            0,
        );
        let x = Tensor::zeros((2, 4, model.spec().hidden_size), DType::F32, &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 0.], [1., 1., 1., 1.]], &Device::Cpu).unwrap();
        let mut ctx = Ctx::new(mask);
        let y = adapter.embeddings(x, &mut ctx).unwrap();
        assert_eq!(y.dims(), &[2, 7, model.spec().hidden_size]);
        assert_eq!(ctx.virtual_tokens, 3);
        assert_eq!(
            ctx.attention_mask.to_vec2::<f32>().unwrap()[0],
            vec![1., 1., 1., 1., 1., 1., 0.]
        );
        assert_eq!(
            max_diff(
                &y.i(1).unwrap().i(..3).unwrap(),
                &adapter.tensors().unwrap()[0].1
            ),
            0.0
        );
        // The prompt changes the model's prediction.
        let ids = [5u32, 6, 7];
        let plain = last_logits(model.as_ref(), &NoHooks, &ids).unwrap();
        let prompted = last_logits(model.as_ref(), adapter.as_ref(), &ids).unwrap();
        assert!(max_diff(&plain, &prompted) > 1e-3);
    }
}

#[test]
fn save_then_load_gives_identical_logits_and_hf_fields() {
    let dir = tempfile::tempdir().unwrap();
    for model in seeded_tiny_models(3) {
        let adapter = build(
            model.as_ref(),
            &PromptTuningConfig::new(4, PromptTuningInit::Random),
            9,
        );
        let path = dir.path().join(&model.spec().architecture);
        save_adapter(&path, adapter.as_ref(), model.spec()).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(config["peft_type"], "PROMPT_TUNING");
        assert_eq!(config["task_type"], "CAUSAL_LM");
        assert_eq!(config["num_virtual_tokens"], 4);
        assert_eq!(config["token_dim"], model.spec().hidden_size);
        assert_eq!(config["num_transformer_submodules"], 1);
        assert_eq!(config["num_layers"], model.spec().num_layers);
        assert_eq!(config["prompt_tuning_init"], "RANDOM");
        assert_eq!(config["inference_mode"], true);
        assert_eq!(
            config["base_model_name_or_path"],
            model.spec().name_or_path.as_str()
        );

        let loaded = load_adapter(&path, &mut init(model.as_ref(), None, 1)).unwrap();
        assert!(loaded.warnings.is_empty());
        let ids = [1u32, 2, 3, 4];
        let a = last_logits(model.as_ref(), adapter.as_ref(), &ids).unwrap();
        let b = last_logits(model.as_ref(), loaded.adapter.as_ref(), &ids).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0);
    }
}

#[test]
fn an_adapter_for_another_model_names_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let gpt2 = peft_models::tiny::gpt2(0);
    let adapter = build(
        &gpt2,
        &PromptTuningConfig::new(4, PromptTuningInit::Random),
        0,
    );
    save_adapter(dir.path(), adapter.as_ref(), gpt2.spec()).unwrap();
    // Rewrite the saved tensor with another hidden size, as an adapter made for a wider model would have.
    let wrong = Tensor::zeros((4, 48), DType::F32, &Device::Cpu).unwrap();
    peft_core::atomic::save_safetensors(
        &dir.path().join("adapter_model.safetensors"),
        &[("prompt_embeddings".into(), wrong)],
        None,
    )
    .unwrap();
    let cfg_path = dir.path().join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"token_dim\": 32", "\"token_dim\": null");
    std::fs::write(&cfg_path, text).unwrap();
    let err = load_adapter(dir.path(), &mut init(&gpt2, None, 0))
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, PeftError::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains("[4, 32]") && msg.contains("[4, 48]"), "{msg}");

    // A token_dim that disagrees with the model is refused before any tensor is read.
    let llama_cfg: Box<dyn PeftMethod> = serde_json::from_str(
        r#"{"peft_type":"PROMPT_TUNING","num_virtual_tokens":4,"token_dim":576}"#,
    )
    .unwrap();
    let err = llama_cfg.build(&mut init(&gpt2, None, 0)).err().unwrap();
    assert!(
        err.to_string().contains("576") && err.to_string().contains("32"),
        "{err}"
    );
}

#[test]
fn prompt_gradient_matches_finite_differences_and_frozen_weights_get_none() {
    for model in seeded_tiny_models(3) {
        let adapter = build(
            model.as_ref(),
            &PromptTuningConfig::new(2, PromptTuningInit::Random),
            4,
        );
        let (_, var): (String, Var) = adapter.trainable().remove(0);
        let task = toy_classification_task(8);
        let loss_at = |adapter: &dyn Adapter| {
            task.loss(model.as_ref(), &Tuned::of(adapter), &[0, 1, 2, 3])
                .unwrap()
                .loss
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let loss = task
            .loss(model.as_ref(), &Tuned::of(adapter.as_ref()), &[0, 1, 2, 3])
            .unwrap()
            .loss;
        let grads = loss.backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .expect("the prompt has a gradient")
            .flatten_all()
            .unwrap();
        let g: Vec<f32> = g.to_vec1().unwrap();
        for (name, p) in model.parameters() {
            assert!(grads.get(&p).is_none(), "frozen {name} received a gradient");
        }
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let h = 1e-2f32;
        for i in [0usize, 7, 33, base.len() - 1] {
            let shifted = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss_at(adapter.as_ref())
            };
            let numeric = (shifted(h) - shifted(-h)) / (2.0 * h as f64);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let analytic = g[i] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                "{}: element {i}: numeric {numeric} vs analytic {analytic}",
                model.spec().architecture
            );
        }
    }
}

fn train(
    model: &dyn BaseModel,
    out: &std::path::Path,
    stop: usize,
    resume: bool,
) -> (Vec<f64>, Box<dyn Adapter>) {
    let adapter = build(
        model,
        &PromptTuningConfig::new(4, PromptTuningInit::Random),
        11,
    );
    let task = toy_classification_task(16);
    let config = TrainConfig {
        max_steps: 20,
        batch_size: 4,
        gradient_accumulation_steps: 2,
        learning_rate: 0.1,
        warmup_steps: 2,
        eval_every: 5,
        output_dir: out.to_path_buf(),
        resume,
        progress: false,
        ..TrainConfig::default()
    };
    let report = Trainer::new(model, adapter.as_ref(), &task, config)
        .run_until(stop)
        .unwrap();
    (report.losses, adapter)
}

#[test]
fn training_lowers_the_loss_is_repeatable_and_resumes_exactly() {
    let model = peft_models::tiny::llama(5);
    let dir = tempfile::tempdir().unwrap();
    let (losses, adapter) = train(&model, &dir.path().join("a"), 20, false);
    let first = losses[..3].iter().sum::<f64>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < first * 0.7, "loss did not fall: {first} -> {last}");
    let (again, _) = train(&model, &dir.path().join("b"), 20, false);
    assert_eq!(losses, again, "two runs with the same seed differ");

    // Stop after 7 steps (between two checkpoints: the stop writes one), then resume to 20.
    let (head, _) = train(&model, &dir.path().join("c"), 7, false);
    // What a run that died at step 9, after its checkpoint at 7, would have logged.
    let mut log = std::fs::read_to_string(dir.path().join("c/metrics.jsonl")).unwrap();
    log.push_str("{\"step\":8,\"loss\":99.0}\n{\"step\":9,\"lo");
    std::fs::write(dir.path().join("c/metrics.jsonl"), log).unwrap();
    let (tail, resumed) = train(&model, &dir.path().join("c"), 20, true);
    assert_eq!(
        [head, tail].concat(),
        losses,
        "a resumed run differs from an uninterrupted one"
    );
    let (a, b) = (
        &adapter.tensors().unwrap()[0].1,
        &resumed.tensors().unwrap()[0].1,
    );
    assert_eq!(max_diff(a, b), 0.0);

    for name in [
        "metrics.jsonl",
        "adapter/adapter_config.json",
        "best/adapter_model.safetensors",
        "checkpoint/optimizer.safetensors",
    ] {
        assert!(dir.path().join("a").join(name).is_file(), "missing {name}");
    }
    // The resumed log holds each step once, as the uninterrupted one does.
    let logged_steps = |run: &str| -> Vec<(u64, bool)> {
        std::fs::read_to_string(dir.path().join(run).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["step"].as_u64().unwrap(), v.get("loss").is_some()))
            .collect()
    };
    assert_eq!(logged_steps("c"), logged_steps("a"));
    let log = std::fs::read_to_string(dir.path().join("a/metrics.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("eval_accuracy")));
    let accuracy = log.lines().rfind(|l| l.contains("eval_accuracy")).unwrap();
    let v: serde_json::Value = serde_json::from_str(accuracy).unwrap();
    assert!(v["eval_accuracy"].as_f64().unwrap() >= 0.75, "{accuracy}");
}

#[test]
fn a_micro_batch_without_a_labelled_token_is_refused_by_name() {
    let model = peft_models::tiny::gpt2(5);
    let adapter = build(
        &model,
        &PromptTuningConfig::new(4, PromptTuningInit::Random),
        1,
    );
    let unlabelled = |ids: Vec<u32>| peft_train::task::LmExample {
        labels: vec![-100; ids.len()],
        input_ids: ids,
    };
    let examples = vec![unlabelled(vec![5, 6, 7]), unlabelled(vec![8, 9])];
    let task = peft_train::task::CausalLm::new(examples.clone(), examples, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        max_steps: 1,
        batch_size: 2,
        output_dir: dir.path().to_path_buf(),
        progress: false,
        ..TrainConfig::default()
    };
    let err = Trainer::new(&model, adapter.as_ref(), &task, config)
        .run()
        .expect_err("a step with nothing to learn from must fail");
    assert!(
        matches!(err, PeftError::Data(_)) && err.to_string().contains("micro-batch 1 of step 1"),
        "{err}"
    );
    // Evaluation alone says the same of an evaluation set without labels.
    let err = task
        .evaluate(&model, &Tuned::frozen(), 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no labelled tokens"), "{err}");
}

#[test]
fn an_hf_config_with_extra_fields_loads() {
    let text = r#"{"auto_mapping": null, "base_model_name_or_path": "x", "inference_mode": true,
        "num_attention_heads": 4, "num_layers": 2, "num_transformer_submodules": 1, "num_virtual_tokens": 3,
        "peft_type": "PROMPT_TUNING", "peft_version": "0.21.2", "prompt_tuning_init": "TEXT",
        "prompt_tuning_init_text": "hi", "revision": null, "task_type": "CAUSAL_LM", "token_dim": 32,
        "tokenizer_kwargs": {"gguf_file": "m.gguf"}, "tokenizer_name_or_path": "x", "modules_to_save": null}"#;
    let cfg: Box<dyn PeftMethod> = serde_json::from_str(text).unwrap();
    let model = peft_models::tiny::gpt2(0);
    // inference_mode skips the TEXT init, so no tokenizer is needed to load it.
    let adapter = cfg.build(&mut init(&model, None, 0)).unwrap();
    assert_eq!(adapter.num_trainable(), 3 * 32);
}
