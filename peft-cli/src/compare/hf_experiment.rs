//! HF PEFT's `method_comparison` experiment folders as `peft compare` rows (`experiment = "path/to/folder"`).
//! HF keeps one folder per experiment, `experiments/<method>/<name>/`, holding `adapter_config.json` (the
//! method's whole config as `save_pretrained` writes it, most keys at null or their default) and optionally
//! `training_params.json` (what the experiment changes of HF's `default_training_params.json`). A row reads it
//! as HF wrote it:
//!
//! - `adapter_config.json` becomes the row's method config. HF's metadata (`task_type`,
//!   `base_model_name_or_path`, `revision`, `inference_mode`, `peft_version`), null values and keys at this
//!   build's default are dropped; `target_modules: null` stays unset, which every method here takes as HF's
//!   default targets for the model type. The model sizes HF's prompt-learning configs carry (`token_dim`,
//!   `num_layers`, ...) belong to the model the folder was written for and are dropped with a note: the grid's
//!   model gives its own. A key of HF's config that this build does not implement is dropped quietly when empty
//!   or at HF's default, dropped with a note where ignoring it keeps the method's meaning, and refused
//!   otherwise; a key that is neither HF's nor this build's is refused.
//! - `training_params.json` becomes `[training]` settings between the grid's `[training]` (below) and the
//!   row's own `training` (above): see [`layered_training`]. Settings that do not apply here (the model, the
//!   prompt, the seed, ...) are named in notes with the reason.
//! - A folder without `adapter_config.json` is full fine-tuning, as HF's `run.py` takes it: the
//!   `baseline = "full"` row.
//!
//! ```
//! use peft_cli::compare::hf_experiment::hf_warmup_steps;
//! // HF's cosine schedule warms up over a tenth of the steps, rounded down as Python's int() does.
//! assert_eq!((hf_warmup_steps(5000), hf_warmup_steps(95), hf_warmup_steps(9)), (500, 9, 0));
//! ```

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use peft_core::method::PeftMethod;
use peft_core::method_config::{known_peft_types, method_from_value};
use peft_train::train::TrainConfig;
use serde_json::{Map, Value};

use crate::experiment::parse_method;

/// The method's config in an experiment folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The experiment's changes to HF's default training parameters.
pub const TRAINING_PARAMS: &str = "training_params.json";
/// HF's `WARMUP_STEP_RATIO`: the share of the steps its cosine schedule warms up over.
pub const HF_WARMUP_RATIO: f64 = 0.1;

/// The warm-up steps of HF's cosine schedule for `max_steps` steps: `int(0.1 * max_steps)`.
pub fn hf_warmup_steps(max_steps: usize) -> usize {
    (HF_WARMUP_RATIO * max_steps as f64) as usize
}

/// An experiment folder, read into what a grid row needs.
#[derive(Debug, Clone, PartialEq)]
pub struct HfExperiment {
    /// The method config (`peft_type = "FULL"` for a full fine-tuning folder).
    pub config: toml::Table,
    /// `[training]` settings from `training_params.json` (TrainConfig's names).
    pub training: toml::Table,
    /// `lr_scheduler = "cosine"`: warm up over [`HF_WARMUP_RATIO`] of the row's final `max_steps`.
    pub hf_warmup: bool,
    /// What was not applied, or applied differently from HF, each with the reason.
    pub notes: Vec<String>,
}

impl HfExperiment {
    /// Reads an experiment folder. An error names the file and the key at fault, its value and what to do.
    pub fn read(dir: &Path) -> Result<HfExperiment> {
        if !dir.is_dir() {
            bail!(
                "{}: no such experiment folder (HF's method_comparison keeps one per experiment, \
                 experiments/<method>/<name>/, with {ADAPTER_CONFIG} and optionally {TRAINING_PARAMS})",
                dir.display()
            );
        }
        let config_path = dir.join(ADAPTER_CONFIG);
        let params_path = dir.join(TRAINING_PARAMS);
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let mut notes = Vec::new();
        let config = if config_path.is_file() {
            let (config, config_notes) = method_config(&read(&config_path)?)
                .with_context(|| config_path.display().to_string())?;
            notes.extend(
                config_notes
                    .into_iter()
                    .map(|n| format!("{ADAPTER_CONFIG}: {n}")),
            );
            config
        } else if params_path.is_file() {
            // HF's run.py trains the whole model when the folder has no adapter config.
            let mut full = toml::Table::new();
            full.insert("peft_type".into(), "FULL".into());
            full
        } else {
            bail!(
                "{}: holds neither {ADAPTER_CONFIG} nor {TRAINING_PARAMS}: not an HF experiment folder",
                dir.display()
            );
        };
        let (training, hf_warmup) = if params_path.is_file() {
            let params = training_params(&read(&params_path)?)
                .with_context(|| params_path.display().to_string())?;
            notes.extend(
                params
                    .notes
                    .into_iter()
                    .map(|n| format!("{TRAINING_PARAMS}: {n}")),
            );
            (params.training, params.hf_warmup)
        } else {
            (toml::Table::new(), false)
        };
        Ok(HfExperiment {
            config,
            training,
            hf_warmup,
            notes,
        })
    }

    /// Whether the folder is full fine-tuning (no `adapter_config.json`).
    pub fn is_full(&self) -> bool {
        self.config.get("peft_type").and_then(toml::Value::as_str) == Some("FULL")
    }
}

/// A row's `[training]` table: the grid's `[training]`, then the experiment's settings, then the row's own
/// `training`, each key of a later one replacing the earlier (`optimizer` as a whole, as HF's own merge of
/// `training_params.json` over its defaults replaces `optimizer_kwargs`). HF's cosine warm-up is a tenth of
/// the final `max_steps`, unless the row's own `training` sets `warmup_steps`. Returns the table and the row's
/// notes (the experiment's, and those that depend on the final settings).
pub fn layered_training(
    grid: &toml::Table,
    experiment: Option<&HfExperiment>,
    row: &toml::Table,
) -> (toml::Table, Vec<String>) {
    let mut merged = grid.clone();
    let mut notes = Vec::new();
    if let Some(e) = experiment {
        merged.extend(e.training.clone());
        notes.extend(e.notes.iter().cloned());
    }
    merged.extend(row.clone());
    let Some(e) = experiment else {
        return (merged, notes);
    };
    let max_steps = merged
        .get("max_steps")
        .and_then(toml::Value::as_integer)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or_else(|| TrainConfig::default().max_steps);
    if e.hf_warmup {
        if row.contains_key("warmup_steps") {
            notes.push(format!(
                "{TRAINING_PARAMS}: lr_scheduler = \"cosine\": the row's own warmup_steps replaces HF's warm-up \
                 over a tenth of the steps"
            ));
        } else {
            let warmup = hf_warmup_steps(max_steps);
            merged.insert("warmup_steps".into(), (warmup as i64).into());
            notes.push(format!(
                "{TRAINING_PARAMS}: lr_scheduler = \"cosine\": warmup_steps = {warmup}, a tenth of max_steps \
                 {max_steps} (HF's WARMUP_STEP_RATIO)"
            ));
        }
    }
    // AdaLoRA's rank budget is scheduled over `total_step`: HF ran that many steps.
    let total_step = (e.config.get("peft_type").and_then(toml::Value::as_str) == Some("ADALORA"))
        .then(|| e.config.get("total_step").and_then(toml::Value::as_integer))
        .flatten();
    if let Some(total) = total_step.filter(|t| usize::try_from(*t).ok() != Some(max_steps)) {
        notes.push(format!(
            "{ADAPTER_CONFIG}: AdaLoRA's total_step = {total} schedules its rank pruning, but the row trains \
             {max_steps} steps; set the row's training max_steps = {total} to run it as HF did"
        ));
    }
    (merged, notes)
}

/// HF's keys of every config: metadata, dropped.
const METADATA: [&str; 5] = [
    "task_type",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "peft_version",
];

/// The sizes HF's prompt-learning configs take from the model they are made for.
const MODEL_SIZES: [&str; 4] = [
    "token_dim",
    "num_layers",
    "num_attention_heads",
    "num_transformer_submodules",
];

/// A key of an HF PEFT config: its name, its default (JSON), and why ignoring it keeps the method's meaning
/// (`None`: ignoring a set value would change the method).
type HfKey = (&'static str, &'static str, Option<&'static str>);

const FAN_IN_FAN_OUT: Option<&str> = Some(
    "the weight layout of transformers' GPT-2 Conv1D modules; this build knows each model's layout",
);
const MEGATRON: Option<&str> =
    Some("Megatron-LM's parallel layers; the grid's models are not Megatron models");

/// Keys of every HF config besides `peft_type` and the metadata.
const HF_COMMON: &[HfKey] = &[(
    "auto_mapping",
    "null",
    Some("HF's mapping to custom model classes; this build loads the grid's model itself"),
)];

const HF_PROMPT_LEARNING: &[HfKey] = &[
    ("num_virtual_tokens", "null", None),
    ("token_dim", "null", None),
    ("num_transformer_submodules", "null", None),
    ("num_attention_heads", "null", None),
    ("num_layers", "null", None),
    ("modules_to_save", "null", None),
];

const HF_LORA: &[HfKey] = &[
    ("r", "8", None),
    ("target_modules", "null", None),
    ("exclude_modules", "null", None),
    ("lora_alpha", "8", None),
    ("lora_dropout", "0.0", None),
    ("fan_in_fan_out", "false", FAN_IN_FAN_OUT),
    ("bias", "\"none\"", None),
    ("use_rslora", "false", None),
    ("modules_to_save", "null", None),
    ("init_lora_weights", "true", None),
    ("layers_to_transform", "null", None),
    (
        "layers_pattern",
        "null",
        Some("it only names the layer list that layers_to_transform indexes"),
    ),
    ("rank_pattern", "{}", None),
    ("alpha_pattern", "{}", None),
    ("megatron_config", "null", MEGATRON),
    ("megatron_core", "\"megatron.core\"", MEGATRON),
    ("trainable_token_indices", "null", None),
    ("loftq_config", "{}", None),
    ("eva_config", "null", None),
    ("corda_config", "null", None),
    ("lora_ga_config", "null", None),
    ("use_dora", "false", None),
    ("velora_config", "null", None),
    ("alora_invocation_tokens", "null", None),
    ("use_qalora", "false", None),
    (
        "qalora_group_size",
        "16",
        Some("it is read only with use_qalora = true"),
    ),
    ("monteclora_config", "null", None),
    ("layer_replication", "null", None),
    (
        "runtime_config",
        "{\"ephemeral_gpu_offload\": false}",
        Some("a runtime setting (GPU offloading), not part of the method"),
    ),
    ("lora_bias", "false", None),
    ("target_parameters", "null", None),
    ("use_bdlora", "null", None),
    ("arrow_config", "null", None),
    ("kasa_config", "null", None),
    ("ensure_weight_tying", "false", None),
];

const HF_ADALORA: &[HfKey] = &[
    ("target_r", "8", None),
    ("init_r", "12", None),
    ("tinit", "0", None),
    ("tfinal", "0", None),
    ("deltaT", "1", None),
    ("beta1", "0.85", None),
    ("beta2", "0.85", None),
    ("orth_reg_weight", "0.5", None),
    ("total_step", "null", None),
    ("rank_pattern", "null", None),
];

const HF_LYCORIS: &[HfKey] = &[
    ("r", "8", None),
    ("alpha", "8", None),
    ("rank_dropout", "0.0", None),
    ("module_dropout", "0.0", None),
    (
        "use_effective_conv2d",
        "false",
        Some("it applies to convolution layers only; this build adapts linear layers"),
    ),
    ("target_modules", "null", None),
    ("exclude_modules", "null", None),
    ("init_weights", "true", None),
    ("layers_to_transform", "null", None),
    (
        "layers_pattern",
        "null",
        Some("it only names the layer list that layers_to_transform indexes"),
    ),
    ("modules_to_save", "null", None),
    ("rank_pattern", "{}", None),
    ("alpha_pattern", "{}", None),
];

const HF_LOKR: &[HfKey] = &[
    ("decompose_both", "false", None),
    ("decompose_factor", "-1", None),
    ("rank_dropout_scale", "false", None),
];

const HF_OFT: &[HfKey] = &[
    ("r", "0", None),
    ("oft_block_size", "32", None),
    ("module_dropout", "0.0", None),
    ("target_modules", "null", None),
    ("fan_in_fan_out", "false", FAN_IN_FAN_OUT),
    ("bias", "\"none\"", None),
    ("exclude_modules", "null", None),
    ("init_weights", "true", None),
    ("layers_to_transform", "null", None),
    (
        "layers_pattern",
        "null",
        Some("it only names the layer list that layers_to_transform indexes"),
    ),
    ("modules_to_save", "null", None),
    ("coft", "false", None),
    ("eps", "6e-05", None),
    ("block_share", "false", None),
    ("use_cayley_neumann", "true", None),
    ("num_cayley_neumann_terms", "5", None),
    // Older HF versions wrote these; their defaults are those versions'.
    ("rank_pattern", "{}", None),
    ("alpha_pattern", "{}", None),
];

const HF_VERA: &[HfKey] = &[
    ("r", "256", None),
    ("target_modules", "null", None),
    ("projection_prng_key", "0", None),
    ("save_projection", "true", None),
    ("vera_dropout", "0.0", None),
    ("d_initial", "0.1", None),
    ("fan_in_fan_out", "false", FAN_IN_FAN_OUT),
    ("bias", "\"none\"", None),
    ("modules_to_save", "null", None),
    ("init_weights", "true", None),
    ("layers_to_transform", "null", None),
    (
        "layers_pattern",
        "null",
        Some("it only names the layer list that layers_to_transform indexes"),
    ),
];

const HF_LN_TUNING: &[HfKey] = &[
    ("target_modules", "null", None),
    ("exclude_modules", "null", None),
    ("modules_to_save", "null", None),
];

const HF_PROMPT_TUNING: &[HfKey] = &[
    ("prompt_tuning_init", "\"RANDOM\"", None),
    ("prompt_tuning_init_text", "null", None),
    (
        "tokenizer_name_or_path",
        "null",
        Some("the grid's model's own tokenizer is used"),
    ),
    (
        "tokenizer_kwargs",
        "null",
        Some("the grid's model's own tokenizer is used"),
    ),
];

const HF_P_TUNING: &[HfKey] = &[
    ("encoder_reparameterization_type", "\"MLP\"", None),
    ("encoder_hidden_size", "null", None),
    ("encoder_num_layers", "2", None),
    ("encoder_dropout", "0.0", None),
];

const HF_PREFIX_TUNING: &[HfKey] = &[
    ("init_weights", "null", None),
    ("encoder_hidden_size", "null", None),
    ("prefix_projection", "false", None),
];

/// HF's keys for `peft_type` besides `peft_type` and the metadata (empty for a method HF does not have).
fn hf_keys(peft_type: &str) -> Vec<HfKey> {
    let parts: &[&[HfKey]] = match peft_type {
        "LORA" => &[HF_LORA],
        // HF's AdaLoraConfig extends its LoraConfig; its own keys come first, so they win the lookup.
        "ADALORA" => &[HF_ADALORA, HF_LORA],
        "LOHA" => &[HF_LYCORIS],
        "LOKR" => &[HF_LYCORIS, HF_LOKR],
        "OFT" => &[HF_OFT],
        "VERA" => &[HF_VERA],
        "LN_TUNING" => &[HF_LN_TUNING],
        "PROMPT_TUNING" => &[HF_PROMPT_LEARNING, HF_PROMPT_TUNING],
        "P_TUNING" => &[HF_PROMPT_LEARNING, HF_P_TUNING],
        "PREFIX_TUNING" => &[HF_PROMPT_LEARNING, HF_PREFIX_TUNING],
        _ => return Vec::new(),
    };
    HF_COMMON
        .iter()
        .chain(parts.iter().flat_map(|p| p.iter()))
        .copied()
        .collect()
}

/// Whether two JSON values are the same setting (`8` and `8.0` are).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Null, `{}`, `[]` or `""`: a value that sets nothing.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// `v` with the null members of its objects left out (TOML has no null; HF's null means "not set"). A null
/// inside an array has no such reading and is refused.
fn without_nulls(key: &str, v: &Value) -> Result<Value> {
    Ok(match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| Ok((k.clone(), without_nulls(key, x)?)))
                .collect::<Result<_>>()?,
        ),
        Value::Array(a) if a.iter().any(Value::is_null) => {
            bail!("`{key}` = {v}: a list holding null cannot be read")
        }
        other => other.clone(),
    })
}

/// A method config read leniently (keys the method does not read are ignored), serialised: the method's
/// keys and values as this build holds them.
fn as_read(config: &Map<String, Value>) -> Result<(Box<dyn PeftMethod>, Map<String, Value>)> {
    let method = method_from_value(Value::Object(config.clone())).map_err(|e| anyhow!(e))?;
    match serde_json::to_value(&method)? {
        Value::Object(held) => Ok((method, held)),
        other => bail!("the method config serialised to {other}, not an object"),
    }
}

/// `adapter_config.json`'s text as a grid row's method config, with notes on what was dropped and why.
fn method_config(text: &str) -> Result<(toml::Table, Vec<String>)> {
    let value: Value = serde_json::from_str(text).map_err(|e| anyhow!("not valid JSON: {e}"))?;
    let Value::Object(object) = value else {
        bail!("an adapter config is a JSON object, not {value}");
    };
    let peft_type = match object.get("peft_type") {
        Some(Value::String(t)) => t.clone(),
        _ => bail!("no `peft_type` string naming the method"),
    };
    let known = known_peft_types();
    if !known.contains(&peft_type) {
        bail!(
            "peft_type {peft_type:?} is not a method this build implements ({}); this experiment cannot run here",
            known.join(", ")
        );
    }
    let mut notes = Vec::new();
    if let Some(task) = object.get("task_type").and_then(Value::as_str) {
        if task != "CAUSAL_LM" {
            notes.push(format!(
                "task_type = {task:?} not applied: the grid's task file decides the task"
            ));
        }
    }
    let mut config = Map::new();
    let mut nulls = Vec::new();
    for (key, v) in &object {
        if METADATA.contains(&key.as_str()) {
            continue;
        }
        if v.is_null() {
            nulls.push(key.clone());
            continue;
        }
        config.insert(key.clone(), without_nulls(key, v)?);
    }
    let (method, _) = as_read(&config)?;
    if method.is_prompt_learning() {
        // HF fills these from the model when they are unset; the folder's are its model's.
        let token_dim = config.get("token_dim").cloned();
        let mut sizes = Vec::new();
        for key in MODEL_SIZES {
            if let Some(v) = config.remove(key) {
                sizes.push(format!("{key} = {v}"));
            }
        }
        if let Some(hidden) = config.get("encoder_hidden_size") {
            if token_dim.as_ref().is_some_and(|d| same_value(d, hidden)) {
                sizes.push(format!("encoder_hidden_size = {hidden} (token_dim)"));
                config.remove("encoder_hidden_size");
            }
        }
        if !sizes.is_empty() {
            notes.push(format!(
                "{} not applied: sizes of the model the folder was written for; the grid's model gives its own",
                sizes.join(", ")
            ));
        }
    }
    let (_, held) = as_read(&config)?;
    let hf = hf_keys(&peft_type);
    let mut refused = Vec::new();
    for (key, v) in config.clone() {
        if key == "peft_type" || held.contains_key(&key) {
            continue;
        }
        let Some(&(_, default, ignorable)) = hf.iter().find(|(name, _, _)| *name == key) else {
            refused.push(format!(
                "unknown key `{key}` = {v}: neither HF PEFT's {peft_type} config nor this build's has it"
            ));
            continue;
        };
        config.remove(&key);
        let default: Value = serde_json::from_str(default).expect("HF defaults are JSON");
        if is_empty(&v) || same_value(&v, &default) {
            continue;
        }
        match ignorable {
            Some(why) => notes.push(format!("`{key}` = {v} not applied: {why}")),
            None => refused.push(format!(
                "`{key}` = {v} is not implemented for {peft_type} here, and leaving it out would change the \
                 method; remove it (HF's default is {default}) to run the method without it"
            )),
        }
    }
    // A null sets nothing, but a key of neither config is still a misspelling.
    for key in nulls.iter().filter(|k| !held.contains_key(*k)) {
        if !hf.iter().any(|(name, _, _)| name == key) {
            refused.push(format!(
                "unknown key `{key}` = null: neither HF PEFT's {peft_type} config nor this build's has it"
            ));
        }
    }
    if !refused.is_empty() {
        bail!("{}", refused.join("; "));
    }
    let (_, held) = as_read(&config)?;
    // Keys at this build's default say nothing: leave them out (each checked alone, so that a required key or
    // one whose absence changes another's reading stays).
    for key in config.keys().cloned().collect::<Vec<_>>() {
        if key == "peft_type" {
            continue;
        }
        let mut trial = config.clone();
        trial.remove(&key);
        if as_read(&trial).is_ok_and(|(_, t)| t == held) {
            config = trial;
        }
    }
    // HF's null is "not set"; where this build's default is a value, say which.
    for key in nulls {
        if let Some(ours) = held.get(&key).filter(|v| !is_empty(v)) {
            notes.push(format!(
                "`{key}` = null: this build's default {ours} is used"
            ));
        }
    }
    check_method(&peft_type, &config)?;
    let table = match toml::Value::try_from(Value::Object(config))? {
        toml::Value::Table(t) => t,
        other => bail!("the config converted to {other}, not a table"),
    };
    parse_method(&table, "")?;
    Ok((table, notes))
}

/// Refuses, before any model is opened, what a method's own model-free check refuses (the HF variants LoRA
/// reads but does not implement, an AdaLoRA schedule without a budgeting phase, ...), so that the error names
/// the experiment's file rather than surfacing when the row is built.
fn check_method(peft_type: &str, config: &Map<String, Value>) -> Result<()> {
    let config = Value::Object(config.clone());
    match peft_type {
        "LORA" => serde_json::from_value::<peft_lora::LoraConfig>(config)?.check_supported()?,
        "ADALORA" => serde_json::from_value::<peft_adalora::AdaLoraConfig>(config)?.check()?,
        "OFT" => serde_json::from_value::<peft_oft::OftConfig>(config)?.check()?,
        "VERA" => serde_json::from_value::<peft_vera::VeraConfig>(config)?.check()?,
        _ => {}
    }
    Ok(())
}

/// `training_params.json`, read.
struct TrainingParams {
    training: toml::Table,
    hf_warmup: bool,
    notes: Vec<String>,
}

/// HF's TrainConfig keys that do not apply to a grid row, each with the reason. Named whenever set.
const NOT_APPLIED: &[(&str, &str)] = &[
    ("model_id", "the grid's [compare] models decide the model"),
    (
        "dtype",
        "the grid's [training] precision decides (\"bf16\" keeps the frozen projections in bf16)",
    ),
    (
        "max_seq_length",
        "the task file's max_length decides the prompt length",
    ),
    (
        "query_template",
        "the task file's template decides the prompt",
    ),
    (
        "generation_kwargs",
        "the task file decides how the model is evaluated",
    ),
    ("seed", "the grid's [compare] seeds decide"),
];

/// HF's TrainConfig keys that do not apply here, quiet at HF's default and named otherwise.
const NOT_APPLIED_UNLESS_DEFAULT: &[(&str, &str, &str)] = &[
    (
        "compile",
        "false",
        "torch.compile; this build has no compiler step and computes the same",
    ),
    (
        "use_amp",
        "false",
        "torch autocast; precision = \"bf16\" in the grid's [training] is the nearest setting here",
    ),
    (
        "autocast_adapter_dtype",
        "true",
        "the adapter's weights are always f32 here",
    ),
    (
        "attn_implementation",
        "null",
        "this build has one attention implementation",
    ),
];

/// `training_params.json`'s text as `[training]` settings.
fn training_params(text: &str) -> Result<TrainingParams> {
    let value: Value = serde_json::from_str(text).map_err(|e| anyhow!("not valid JSON: {e}"))?;
    let Value::Object(object) = value else {
        bail!("training params are a JSON object, not {value}");
    };
    let mut training = toml::Table::new();
    let mut notes = Vec::new();
    let mut refused = Vec::new();
    let mut hf_warmup = false;
    let whole = |key: &str, v: &Value| {
        v.as_u64()
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(|| format!("`{key}` = {v}: expected a whole number"))
    };
    let number = |key: &str, v: &Value| {
        v.as_f64()
            .ok_or_else(|| format!("`{key}` = {v}: expected a number"))
    };
    for (key, v) in &object {
        let ours = match key.as_str() {
            "max_steps" => Some("max_steps"),
            "batch_size" => Some("batch_size"),
            "batch_size_eval" => Some("eval_batch_size"),
            "eval_steps" => Some("eval_every"),
            _ => None,
        };
        if let Some(ours) = ours {
            match whole(key, v) {
                Ok(n) => {
                    training.insert(ours.into(), n.into());
                }
                Err(e) => refused.push(e),
            }
            continue;
        }
        match key.as_str() {
            "grad_norm_clip" => match number(key, v) {
                Ok(x) => {
                    training.insert("max_grad_norm".into(), x.into());
                }
                Err(e) => refused.push(e),
            },
            "use_gc" => match v.as_bool() {
                Some(b) => {
                    training.insert("gradient_checkpointing".into(), b.into());
                }
                None => refused.push(format!("`use_gc` = {v}: expected true or false")),
            },
            "lr_scheduler" => match v.as_str() {
                None if v.is_null() => {
                    // HF's DummyScheduler: the peak rate from the first step on.
                    training.insert("schedule".into(), "constant".into());
                    training.insert("warmup_steps".into(), 0.into());
                }
                Some("cosine") => {
                    training.insert("schedule".into(), "cosine".into());
                    hf_warmup = true;
                }
                Some(s @ ("linear" | "constant")) => {
                    training.insert("schedule".into(), s.into());
                }
                _ => refused.push(format!(
                    "`lr_scheduler` = {v}: HF takes null (constant) or \"cosine\"; this build also \"linear\" \
                     and \"constant\""
                )),
            },
            "optimizer_type" => {
                if v.as_str() != Some("AdamW") {
                    refused.push(format!(
                        "`optimizer_type` = {v}: this build trains with AdamW only; remove optimizer_type (or \
                         set it to \"AdamW\") to run the row with AdamW"
                    ));
                }
            }
            "optimizer_kwargs" => match optimizer(v) {
                Ok((lr, adamw, kwarg_notes)) => {
                    training.insert("learning_rate".into(), lr.into());
                    training.insert("optimizer".into(), adamw.into());
                    notes.extend(kwarg_notes);
                }
                Err(e) => refused.push(e),
            },
            "init_kv_cache_prefix" => {
                if !v.is_null() {
                    refused.push(format!(
                        "`init_kv_cache_prefix` = {v}: a prefix started from the key/value cache of a text is \
                         not implemented here; remove it to start the prefix as its config says"
                    ));
                }
            }
            _ => {
                if let Some((_, why)) = NOT_APPLIED.iter().find(|(k, _)| k == key) {
                    if !v.is_null() {
                        notes.push(format!("`{key}` = {v} not applied: {why}"));
                    }
                } else if let Some((_, default, why)) =
                    NOT_APPLIED_UNLESS_DEFAULT.iter().find(|(k, _, _)| k == key)
                {
                    let default: Value = serde_json::from_str(default).expect("HF defaults are JSON");
                    if !same_value(v, &default) {
                        notes.push(format!("`{key}` = {v} not applied: {why}"));
                    }
                } else {
                    refused.push(format!(
                        "unknown key `{key}` = {v}: not a setting of HF's method_comparison TrainConfig"
                    ));
                }
            }
        }
    }
    if !refused.is_empty() {
        bail!("{}", refused.join("; "));
    }
    Ok(TrainingParams {
        training,
        hf_warmup,
        notes,
    })
}

/// HF's `optimizer_kwargs` for torch's AdamW: the learning rate, this build's AdamW table and notes. HF's
/// merge replaces the default file's whole `optimizer_kwargs`, so what the experiment leaves out takes torch's
/// AdamW default (lr 1e-3, weight_decay 0.01), not the default file's.
fn optimizer(v: &Value) -> std::result::Result<(f64, toml::Table, Vec<String>), String> {
    let Value::Object(kwargs) = v else {
        return Err(format!("`optimizer_kwargs` = {v}: expected an object"));
    };
    let number = |key: &str, default: f64| match kwargs.get(key) {
        None => Ok(default),
        Some(x) => x
            .as_f64()
            .ok_or_else(|| format!("`optimizer_kwargs.{key}` = {x}: expected a number")),
    };
    let mut notes = Vec::new();
    let lr = number("lr", 1e-3)?;
    let weight_decay = number("weight_decay", 0.01)?;
    let eps = number("eps", 1e-8)?;
    for (key, default) in [("lr", "1e-3"), ("weight_decay", "0.01")] {
        if !kwargs.contains_key(key) {
            notes.push(format!(
                "optimizer_kwargs has no {key}: torch's AdamW default {default} is used, as in HF (whose \
                 merge replaces default_training_params.json's whole optimizer_kwargs)"
            ));
        }
    }
    let (beta1, beta2) = match kwargs.get("betas") {
        None => (0.9, 0.999),
        Some(b) => match b
            .as_array()
            .map(|a| a.iter().map(Value::as_f64).collect::<Vec<_>>())
        {
            Some(pair) if pair.len() == 2 && pair.iter().all(Option::is_some) => {
                (pair[0].unwrap_or_default(), pair[1].unwrap_or_default())
            }
            _ => {
                return Err(format!(
                    "`optimizer_kwargs.betas` = {b}: expected two numbers"
                ))
            }
        },
    };
    for (key, x) in kwargs {
        match key.as_str() {
            "lr" | "weight_decay" | "eps" | "betas" => {}
            // How torch computes the same update.
            "foreach" | "fused" | "capturable" | "differentiable" => notes.push(format!(
                "`optimizer_kwargs.{key}` = {x} not applied: it chooses how torch computes the same update"
            )),
            "amsgrad" | "maximize" if x == &Value::Bool(false) => {}
            _ => {
                return Err(format!(
                    "`optimizer_kwargs.{key}` = {x} is not an AdamW setting this build has (lr, weight_decay, \
                     betas, eps); remove it to run plain AdamW"
                ))
            }
        }
    }
    if weight_decay > 0.0 {
        notes.push(
            "weight decay: HF's AdamW decays every trained parameter; this trainer leaves biases and norm \
             weights undecayed, as transformers' Trainer does"
                .into(),
        );
    }
    let mut adamw = toml::Table::new();
    adamw.insert("beta1".into(), beta1.into());
    adamw.insert("beta2".into(), beta2.into());
    adamw.insert("eps".into(), eps.into());
    adamw.insert("weight_decay".into(), weight_decay.into());
    Ok((lr, adamw, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::grid::{method_of, Grid, RowKind};

    /// HF PEFT's method_comparison/MetaMathQA/experiments/lora/llama-3.2-3B-rank32/adapter_config.json.
    const LORA_RANK32: &str = r#"{
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": null,
  "bias": "none",
  "corda_config": null,
  "eva_config": null,
  "exclude_modules": null,
  "fan_in_fan_out": false,
  "inference_mode": false,
  "init_lora_weights": true,
  "layer_replication": null,
  "layers_pattern": null,
  "layers_to_transform": null,
  "loftq_config": {},
  "lora_alpha": 64,
  "lora_bias": false,
  "lora_dropout": 0.0,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 32,
  "rank_pattern": {},
  "revision": null,
  "target_modules": null,
  "task_type": "CAUSAL_LM",
  "use_dora": false,
  "use_rslora": false
}
"#;

    /// HF's experiments/lokr/llama-3.2-3B-rank32-factor4-lr0.003/adapter_config.json.
    const LOKR_FACTOR4: &str = r#"{
  "alpha": 64,
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": null,
  "decompose_both": false,
  "decompose_factor": 4,
  "exclude_modules": null,
  "inference_mode": false,
  "init_weights": true,
  "layers_pattern": null,
  "layers_to_transform": null,
  "module_dropout": 0.0,
  "modules_to_save": null,
  "peft_type": "LOKR",
  "r": 32,
  "rank_dropout": 0.0,
  "rank_dropout_scale": false,
  "rank_pattern": {},
  "revision": null,
  "target_modules": [
    "q_proj",
    "v_proj"
  ],
  "task_type": null,
  "use_effective_conv2d": false
}"#;

    /// HF's experiments/lokr/llama-3.2-3B-rank32-factor4-lr0.003/training_params.json.
    const LOKR_PARAMS: &str = r#"{
  "optimizer_kwargs": {
    "lr": 0.003,
    "weight_decay": 0.1
  }
}"#;

    /// HF's experiments/prompt_tuning/llama-3.2-3B-default/adapter_config.json.
    const PROMPT_TUNING_DEFAULT: &str = r#"{
  "auto_mapping": null,
  "base_model_name_or_path": null,
  "inference_mode": false,
  "num_attention_heads": 24,
  "num_layers": 28,
  "num_transformer_submodules": 1,
  "num_virtual_tokens": 200,
  "peft_type": "PROMPT_TUNING",
  "prompt_tuning_init": "RANDOM",
  "prompt_tuning_init_text": null,
  "revision": null,
  "task_type": "CAUSAL_LM",
  "token_dim": 3072,
  "tokenizer_kwargs": null,
  "tokenizer_name_or_path": null
}"#;

    /// Writes `files` (name, text) into `root/rel` and returns that folder.
    fn folder(root: &Path, rel: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    fn read(files: &[(&str, &str)]) -> Result<HfExperiment> {
        crate::link_methods();
        let tmp = tempfile::tempdir().unwrap();
        HfExperiment::read(&folder(tmp.path(), "experiments/m/x", files))
    }

    fn error(files: &[(&str, &str)]) -> String {
        format!("{:#}", read(files).unwrap_err())
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    /// The row's TrainConfig under a grid `[training]` and the row's own `training`.
    fn train(e: &HfExperiment, grid: &str, row: &str) -> TrainConfig {
        let (merged, _) = layered_training(&table(grid), Some(e), &table(row));
        let cfg: TrainConfig = toml::Value::Table(merged).try_into().unwrap();
        cfg.check().unwrap();
        cfg
    }

    #[test]
    fn hf_lora_rank32_keeps_only_what_differs_from_the_defaults_and_targets_hf_defaults() {
        let e = read(&[(ADAPTER_CONFIG, LORA_RANK32)]).unwrap();
        assert_eq!(
            e.config,
            table("peft_type = \"LORA\"\nr = 32\nlora_alpha = 64")
        );
        assert!(e.notes.is_empty(), "{:?}", e.notes);
        assert!(e.training.is_empty() && !e.hf_warmup && !e.is_full());
        // target_modules: null is HF's default for the model type: LLaMA's q_proj and v_proj.
        let model = peft_models::tiny::llama(0);
        let mut init = peft_core::method::InitCtx {
            model: &model,
            tokenizer: None,
            rng: rand::SeedableRng::seed_from_u64(0),
        };
        let adapter = method_of(&e.config).unwrap().build(&mut init).unwrap();
        let names: Vec<String> = adapter
            .tensors()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(!names.is_empty());
        assert!(
            names
                .iter()
                .all(|n| n.contains(".q_proj.") || n.contains(".v_proj.")),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n.contains(".q_proj.lora_A")),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n.contains(".v_proj.lora_B")),
            "{names:?}"
        );
    }

    #[test]
    fn hf_lokr_with_training_params_sets_the_rate_under_the_row_and_over_the_grid() {
        let e = read(&[
            (ADAPTER_CONFIG, LOKR_FACTOR4),
            (TRAINING_PARAMS, LOKR_PARAMS),
        ])
        .unwrap();
        assert_eq!(
            e.config,
            table(
                "peft_type = \"LOKR\"\nalpha = 64\ndecompose_factor = 4\nr = 32\n\
                 target_modules = [\"q_proj\", \"v_proj\"]"
            )
        );
        let grid = "max_steps = 100\nbatch_size = 8\nlearning_rate = 1e-3\noptimizer = { weight_decay = 0.5, eps = 1e-6 }";
        let cfg = train(&e, grid, "");
        assert_eq!(
            (cfg.learning_rate, cfg.optimizer.weight_decay),
            (0.003, 0.1)
        );
        // HF's optimizer_kwargs replaces the defaults' whole dict: torch's eps, not the grid's.
        assert_eq!(
            (cfg.optimizer.eps, cfg.optimizer.beta1, cfg.optimizer.beta2),
            (1e-8, 0.9, 0.999)
        );
        assert_eq!((cfg.max_steps, cfg.batch_size), (100, 8));
        let cfg = train(&e, grid, "learning_rate = 5e-4");
        assert_eq!(cfg.learning_rate, 5e-4);
        assert!(
            e.notes.iter().any(|n| n.contains("weight decay")),
            "{:?}",
            e.notes
        );
    }

    #[test]
    fn every_training_param_maps_onto_train_config_or_is_named() {
        let params = r#"{"max_steps": 200, "batch_size": 4, "batch_size_eval": 50, "eval_steps": 50,
            "grad_norm_clip": 0.5, "use_gc": true, "lr_scheduler": "cosine", "optimizer_type": "AdamW",
            "optimizer_kwargs": {"lr": 2e-4, "betas": [0.8, 0.99], "eps": 1e-6},
            "model_id": "meta-llama/Llama-3.2-3B", "dtype": "bfloat16", "max_seq_length": 768, "seed": 0,
            "query_template": "Question: {query}\nAnswer:", "generation_kwargs": {"max_new_tokens": 300},
            "compile": false, "use_amp": true, "autocast_adapter_dtype": true, "attn_implementation": null,
            "init_kv_cache_prefix": null}"#;
        let e = read(&[(ADAPTER_CONFIG, LORA_RANK32), (TRAINING_PARAMS, params)]).unwrap();
        let cfg = train(
            &e,
            "max_steps = 10\nwarmup_steps = 3\nschedule = \"linear\"",
            "",
        );
        assert_eq!(
            (
                cfg.max_steps,
                cfg.batch_size,
                cfg.eval_batch_size,
                cfg.eval_every
            ),
            (200, 4, 50, 50)
        );
        assert_eq!((cfg.max_grad_norm, cfg.gradient_checkpointing), (0.5, true));
        assert_eq!(cfg.schedule, peft_train::train::schedule::Schedule::Cosine);
        assert_eq!(
            cfg.warmup_steps, 20,
            "HF's cosine warms up over a tenth of the steps"
        );
        assert_eq!(
            (cfg.learning_rate, cfg.optimizer.beta1, cfg.optimizer.beta2),
            (2e-4, 0.8, 0.99)
        );
        assert_eq!(
            (cfg.optimizer.eps, cfg.optimizer.weight_decay),
            (1e-6, 0.01)
        );
        // The row's own max_steps sets the warm-up; its own warmup_steps wins over HF's.
        assert_eq!(train(&e, "", "max_steps = 95").warmup_steps, 9);
        assert_eq!(train(&e, "", "warmup_steps = 7").warmup_steps, 7);
        let named = |key: &str| e.notes.iter().any(|n| n.contains(&format!("`{key}`")));
        for key in [
            "model_id",
            "dtype",
            "max_seq_length",
            "seed",
            "query_template",
            "generation_kwargs",
            "use_amp",
        ] {
            assert!(named(key), "{key} not named in {:?}", e.notes);
        }
        for key in [
            "compile",
            "autocast_adapter_dtype",
            "attn_implementation",
            "init_kv_cache_prefix",
        ] {
            assert!(!named(key), "{key} at HF's default named in {:?}", e.notes);
        }
        assert!(
            e.notes
                .iter()
                .any(|n| n.contains("no weight_decay") && n.contains("0.01")),
            "{:?}",
            e.notes
        );
        // HF's null scheduler is a constant rate without warm-up.
        let e = read(&[(TRAINING_PARAMS, r#"{"lr_scheduler": null}"#)]).unwrap();
        let cfg = train(&e, "warmup_steps = 5\nschedule = \"cosine\"", "");
        assert_eq!(
            (cfg.schedule, cfg.warmup_steps),
            (peft_train::train::schedule::Schedule::Constant, 0)
        );
    }

    #[test]
    fn an_optimizer_other_than_adamw_is_refused_by_name() {
        // HF's experiments/lora/llama-3.2-3B-rank32-lorafa/training_params.json.
        let lorafa = r#"{
  "optimizer_type": "lora-fa",
  "optimizer_kwargs": {
    "r": 32,
    "lora_alpha": 64,
    "lr": 1e-4,
    "weight_decay": 0.1
  }
}"#;
        let msg = error(&[(ADAPTER_CONFIG, LORA_RANK32), (TRAINING_PARAMS, lorafa)]);
        assert!(
            msg.contains("`optimizer_type` = \"lora-fa\"") && msg.contains("AdamW only"),
            "{msg}"
        );
        assert!(msg.contains(TRAINING_PARAMS), "{msg}");
        let msg = error(&[(TRAINING_PARAMS, r#"{"optimizer_type": "SGD"}"#)]);
        assert!(msg.contains("\"SGD\""), "{msg}");
        let msg = error(&[(
            TRAINING_PARAMS,
            r#"{"optimizer_kwargs": {"lr": 1e-3, "amsgrad": true}}"#,
        )]);
        assert!(msg.contains("`optimizer_kwargs.amsgrad` = true"), "{msg}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let msg = error(&[(
            ADAPTER_CONFIG,
            &LORA_RANK32.replace("\"lora_alpha\"", "\"lora_alphaa\""),
        )]);
        assert!(msg.contains("unknown key `lora_alphaa` = 64"), "{msg}");
        assert!(msg.contains(ADAPTER_CONFIG), "{msg}");
        let msg = error(&[(
            ADAPTER_CONFIG,
            &LORA_RANK32.replace("\"revision\"", "\"revison\""),
        )]);
        assert!(msg.contains("unknown key `revison` = null"), "{msg}");
        let msg = error(&[(TRAINING_PARAMS, r#"{"max_stepz": 10}"#)]);
        assert!(msg.contains("unknown key `max_stepz` = 10"), "{msg}");
        let msg = error(&[(
            ADAPTER_CONFIG,
            r#"{"peft_type": "BOFT", "boft_block_size": 4}"#,
        )]);
        assert!(
            msg.contains("\"BOFT\" is not a method this build implements"),
            "{msg}"
        );
    }

    #[test]
    fn an_unimplemented_key_is_named_when_harmless_and_refused_when_it_changes_the_method() {
        // HF's experiments/oft/llama-3.2-3B-rank32/adapter_config.json (an older HF's OFT wrote the patterns).
        let oft = r#"{
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": null,
  "bias": "none",
  "block_share": false,
  "coft": false,
  "eps": 6e-05,
  "exclude_modules": null,
  "fan_in_fan_out": false,
  "inference_mode": false,
  "init_weights": true,
  "layers_pattern": null,
  "layers_to_transform": null,
  "module_dropout": 0.0,
  "modules_to_save": null,
  "oft_block_size": 0,
  "peft_type": "OFT",
  "r": 32,
  "rank_pattern": {},
  "revision": null,
  "target_modules": [
    "q_proj",
    "v_proj"
  ],
  "task_type": null
}"#;
        // At HF's default, the patterns this build's OFT lacks are dropped quietly.
        let e = read(&[(ADAPTER_CONFIG, oft)]).unwrap();
        assert!(e.notes.is_empty(), "{:?}", e.notes);
        assert_eq!(
            e.config,
            table("peft_type = \"OFT\"\noft_block_size = 0\nr = 32\ntarget_modules = [\"q_proj\", \"v_proj\"]")
        );
        // Set, a per-module rank would change the method: refused with the key, its value and what to do.
        let msg = error(&[(
            ADAPTER_CONFIG,
            &oft.replace("\"rank_pattern\": {}", "\"rank_pattern\": {\"q_proj\": 4}"),
        )]);
        assert!(
            msg.contains("`rank_pattern` = {\"q_proj\":4} is not implemented for OFT")
                && msg.contains("remove it"),
            "{msg}"
        );
        // Set, a key that leaves the method as it is is dropped and named.
        let mapped = LOKR_FACTOR4.replace(
            "\"auto_mapping\": null",
            "\"auto_mapping\": {\"base_model_class\": \"X\"}",
        );
        let e = read(&[(ADAPTER_CONFIG, &mapped)]).unwrap();
        assert!(!e.config.contains_key("auto_mapping"), "{:?}", e.config);
        assert!(
            e.notes
                .iter()
                .any(|n| n.contains("`auto_mapping` = {\"base_model_class\":\"X\"} not applied")),
            "{:?}",
            e.notes
        );
        // A LoRA variant this build reads but does not implement is refused when the folder is read.
        let kasa = LORA_RANK32.replace(
            "\"use_rslora\": false",
            "\"use_rslora\": false, \"kasa_config\": {\"beta\": 0.0001, \"gamma\": 0.001}",
        );
        let msg = error(&[(ADAPTER_CONFIG, &kasa)]);
        assert!(
            msg.contains("kasa_config (KaSA) is set") && msg.contains(ADAPTER_CONFIG),
            "{msg}"
        );
        let offload = LORA_RANK32.replace(
            "\"use_rslora\": false",
            "\"use_rslora\": false, \"runtime_config\": {\"ephemeral_gpu_offload\": true}",
        );
        let e = read(&[(ADAPTER_CONFIG, &offload)]).unwrap();
        assert!(
            e.notes.iter().any(|n| n.contains("`runtime_config`")),
            "{:?}",
            e.notes
        );
    }

    #[test]
    fn prompt_learning_model_sizes_are_dropped_with_a_note() {
        let e = read(&[(ADAPTER_CONFIG, PROMPT_TUNING_DEFAULT)]).unwrap();
        assert_eq!(
            e.config,
            table("peft_type = \"PROMPT_TUNING\"\nnum_virtual_tokens = 200")
        );
        let note = e.notes.join("\n");
        for size in [
            "token_dim = 3072",
            "num_layers = 28",
            "num_attention_heads = 24",
        ] {
            assert!(note.contains(size), "{note}");
        }
    }

    #[test]
    fn a_full_finetuning_folder_is_the_full_baseline_row() {
        crate::link_methods();
        let tmp = tempfile::tempdir().unwrap();
        // HF's experiments/full-finetuning/llama-3.2-3B-lr_0.00001/training_params.json.
        let full = "{\n  \"optimizer_kwargs\": {\n    \"lr\": 1e-5\n  }\n}\n";
        folder(
            tmp.path(),
            "experiments/full-finetuning/llama-3.2-3B-lr_0.00001",
            &[(TRAINING_PARAMS, full)],
        );
        folder(
            tmp.path(),
            "experiments/lokr/r32",
            &[
                (ADAPTER_CONFIG, LOKR_FACTOR4),
                (TRAINING_PARAMS, LOKR_PARAMS),
            ],
        );
        folder(
            tmp.path(),
            "experiments/adalora/r32",
            &[(
                ADAPTER_CONFIG,
                r#"{"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "tinit": 200, "tfinal": 500, "total_step": 5000}"#,
            )],
        );
        std::fs::write(
            tmp.path().join("task.toml"),
            "[task]\nkind = \"classification\"\ntemplate = \"{text} Sentiment:\"\n\
             label_words = { \"0\" = \" negative\", \"1\" = \" positive\" }\n\
             [data.train]\npath = \"train.tsv\"\ntext = \"sentence\"\nlabel = \"label\"\n\
             [data.eval]\npath = \"dev.tsv\"\ntext = \"sentence\"\nlabel = \"label\"\n",
        )
        .unwrap();
        let grid = r#"
[compare]
models = ["smollm2-135m"]
tasks = ["task.toml"]

[training]
max_steps = 100
learning_rate = 1e-3

[[methods]]
name = "full"
baseline = "full"

[[methods]]
name = "hf-full"
experiment = "experiments/full-finetuning/llama-3.2-3B-lr_0.00001"

[[methods]]
name = "hf-lokr"
experiment = "experiments/lokr/r32"
training = { max_steps = 50 }

[[methods]]
name = "hf-adalora"
experiment = "experiments/adalora/r32"
"#;
        let path = tmp.path().join("grid.toml");
        let g = Grid::parse(grid, &path).unwrap();
        let [plain, full, lokr, adalora] = &g.methods[..] else {
            panic!("{:?}", g.methods)
        };
        assert_eq!((full.kind, &full.config), (RowKind::Method, &plain.config));
        assert_eq!(
            (
                full.training.learning_rate,
                full.training.optimizer.weight_decay
            ),
            (1e-5, 0.01)
        );
        assert!(plain.notes.is_empty() && !full.notes.is_empty());
        assert_eq!(
            lokr.config.as_ref().unwrap()["decompose_factor"].as_integer(),
            Some(4)
        );
        assert_eq!(
            (lokr.training.learning_rate, lokr.training.max_steps),
            (0.003, 50)
        );
        assert!(
            adalora
                .notes
                .iter()
                .any(|n| n.contains("total_step = 5000") && n.contains("100 steps")),
            "{:?}",
            adalora.notes
        );
        // An experiment beside a config, and a folder that is not there, are named with their line.
        let both = grid.replace(
            "baseline = \"full\"",
            "baseline = \"full\"\nexperiment = \"experiments/lokr/r32\"",
        );
        let msg = format!("{:#}", Grid::parse(&both, &path).unwrap_err());
        assert!(
            msg.contains("method `full` (line 13)") && msg.contains("keep one"),
            "{msg}"
        );
        let missing = grid.replace("experiments/lokr/r32", "experiments/lokr/nope");
        let msg = format!("{:#}", Grid::parse(&missing, &path).unwrap_err());
        assert!(
            msg.contains("line 20") && msg.contains("no such experiment folder"),
            "{msg}"
        );
    }
}
