//! Prompt tuning on the real SmolLM2-135M with real SST-2 rows: two runs with the same seed give identical
//! losses. Skips, saying why, where the GGUF or `../shared/data` is absent.

use std::path::{Path, PathBuf};

use peft_core::method::PeftMethod;
use peft_prompt::{PromptTuningConfig, PromptTuningInit};
use peft_testing::{init_loaded, smollm2};
use peft_train::data::{ClassEncoder, DataSource, Template, Verbalizer};
use peft_train::task::VerbalizerClassification;
use peft_train::train::{TrainConfig, Trainer};

fn sst2() -> Option<PathBuf> {
    peft_testing::shared_data("glue/SST-2")
}

fn run_once(loaded: &peft_models::LoadedModel, data: &Path, out: &Path) -> Vec<f64> {
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    let encoder = ClassEncoder::new(
        tokenizer,
        Template::new("Review: {text}\nSentiment:").unwrap(),
        Verbalizer::new([("0", " negative"), ("1", " positive")]).unwrap(),
        64,
        true,
    )
    .unwrap();
    let rows = |file: &str, n: usize| {
        let raw = DataSource::new(data.join(file), "sentence")
            .with_label("label")
            .with_limit(n)
            .read()
            .unwrap();
        encoder.encode_all(&raw).unwrap()
    };
    let task = VerbalizerClassification::new(
        rows("train.tsv", 12),
        rows("dev.tsv", 4),
        encoder.label_token_ids().to_vec(),
        0,
    )
    .unwrap();
    let mut cfg = PromptTuningConfig::new(4, PromptTuningInit::Text);
    cfg.prompt_tuning_init_text = Some("Sentiment of the review:".into());
    let adapter = cfg.build(&mut init_loaded(loaded, 1)).unwrap();
    let config = TrainConfig {
        max_steps: 3,
        batch_size: 4,
        learning_rate: 0.03,
        output_dir: out.to_path_buf(),
        progress: false,
        ..TrainConfig::default()
    };
    Trainer::new(loaded.model.as_ref(), adapter.as_ref(), &task, config)
        .run()
        .unwrap()
        .losses
}

#[test]
fn two_runs_with_the_same_seed_give_identical_losses() {
    let Some(data) = sst2() else { return };
    let Some(loaded) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let a = run_once(&loaded, &data, &dir.path().join("a"));
    let b = run_once(&loaded, &data, &dir.path().join("b"));
    assert_eq!(a.len(), 3);
    assert!(a.iter().all(|l| l.is_finite() && *l > 0.0), "{a:?}");
    assert_eq!(a, b, "same seed, different losses");
}
