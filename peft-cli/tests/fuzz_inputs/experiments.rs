//! Family 4: experiment files. A valid toy experiment (the CLI tests' shape: the tiny GPT-2, a method, a
//! classification task, TSV data, training settings) gets a value set to a hostile one (zero, negative,
//! huge, NaN, a string), a key dropped or renamed, or a line edited, then is parsed with
//! `Experiment::parse`, as `peft train` parses it first. Parsing only: nothing is trained.

use std::path::Path;

use super::experiment::Experiment;
use super::mutate::{self, Rng};
use super::Case;

/// The method sections the toy experiment is tried with.
const METHODS: &[&str] = &[
    "peft_type = \"PROMPT_TUNING\"\nnum_virtual_tokens = 8",
    "peft_type = \"PREFIX_TUNING\"\nnum_virtual_tokens = 4",
    "peft_type = \"LORA\"\nr = 4\nlora_alpha = 8\ntarget_modules = [\"c_attn\"]",
    "peft_type = \"P_TUNING\"\nnum_virtual_tokens = 4\nencoder_hidden_size = 16",
    "peft_type = \"BITFIT\"",
];

/// A toy experiment with `method` and every `[training]` setting the CLI tests use.
fn toy(method: &str) -> String {
    format!(
        r#"[model]
name = "fixtures/tiny-gpt2"

[method]
{method}

[task]
kind = "classification"
template = "{{text}} w3"
label_words = {{ "0" = " w10", "1" = " w11" }}
max_length = 32

[data.train]
path = "train.tsv"
text = "sentence"
label = "label"

[data.eval]
path = "dev.tsv"
text = "sentence"
label = "label"

[training]
seed = 3
max_steps = 100
batch_size = 8
learning_rate = 0.3
warmup_steps = 2
max_grad_norm = 1.0
eval_every = 20
progress = false
output_dir = "out"
"#
    )
}

/// Nothing to hold: parsing needs no model.
pub struct Ctx;

/// Registers the methods, as the `peft` binary does.
pub fn setup() -> Ctx {
    super::adapters::register_methods();
    Ctx
}

/// The toy experiments unchanged (each must parse), then `n` seeded mutations.
pub fn cases(seed: u64, n: usize) -> impl Iterator<Item = Case<Ctx>> {
    let unchanged: Vec<Case<Ctx>> = METHODS
        .iter()
        .enumerate()
        .map(|(m, method)| {
            let text = toy(method);
            Case {
                name: format!("experiment method {m}: unchanged"),
                run: Box::new(move |_: &Ctx| {
                    let r = parse(&text);
                    assert!(r.is_ok(), "the unmutated toy experiment must parse: {r:?}");
                    r
                }),
            }
        })
        .collect();
    let mut rng = Rng::new(seed);
    let mutated = (0..n).map(move |i| {
        let m = rng.below(METHODS.len());
        let text = toy(METHODS[m]);
        let (text, what) = if rng.chance(0.7) {
            let mut doc: toml::Value = toml::from_str(&text).expect("the toy experiment is TOML");
            let mut what = vec![mutate::mutate_toml(&mut rng, &mut doc)];
            while rng.chance(0.3) {
                what.push(mutate::mutate_toml(&mut rng, &mut doc));
            }
            (toml::to_string(&doc).unwrap_or_default(), what.join(", "))
        } else {
            mutate::mutate_toml_text(&mut rng, &text)
        };
        Case {
            name: format!("experiment #{i} method {m}: {what}"),
            run: Box::new(move |_: &Ctx| parse(&text)),
        }
    });
    unchanged.into_iter().chain(mutated)
}

/// Parses as `peft train` does; an error is returned with its whole chain.
fn parse(text: &str) -> Result<(), String> {
    Experiment::parse(text, Path::new("fuzz/exp.toml"))
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}
