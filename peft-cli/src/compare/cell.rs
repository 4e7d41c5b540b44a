//! One cell of a grid (model x task x method x seed), run in a process of its own so that its peak memory is
//! its own: the parent writes `cell.json`, the child (`peft compare-cell`) trains and measures, and writes
//! `result.json` last, atomically. A folder without `result.json` is an unfinished cell.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use peft_core::atomic::write_atomic;
use peft_core::hooks::{positions_taken, Hooks, NoHooks};
use peft_core::method::PeftMethod;
use peft_core::model::{BaseModel, Batch};
use peft_train::task::pad_batch;
use peft_train::task::Tuned;
use peft_train::train::{TrainConfig, Trainer};
use serde::{Deserialize, Serialize};

use super::grid::ForgettingText;
use super::report::source_commit;
use crate::experiment::{
    DataSection, Experiment, ExperimentFile, ModelSection, TaskKind, TaskSection,
};
use crate::measure::{median, peak_rss_bytes, percentile, RssSampler};
use crate::session::{build_adapter, open_model_with};
use crate::task_setup::{build_baseline_task, build_task, majority_outcomes};
use peft_train::task::{Outcomes, Task};

/// Everything a cell needs, written by the parent as `cell.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellSpec {
    /// `<model>.<task>.<method>.s<seed>`, the run folder's name.
    pub id: String,
    /// The model as the grid names it.
    pub model: String,
    /// Task name.
    pub task: String,
    /// The task definition file.
    pub task_path: PathBuf,
    /// The method row's name.
    pub method: String,
    /// `method`, `zero-shot` or `linear-probe`.
    pub kind: String,
    /// The method config as it runs (sized to the budget where asked), in adapter_config.json form.
    pub config: Option<serde_json::Value>,
    /// The size knob and the value the budget chose, e.g. `("r", 3)`.
    pub sized: Option<(String, usize)>,
    /// Trainable parameters the preflight build counted (the run reports its own count too).
    pub planned_trainable: usize,
    /// The trainer's settings (seed set; output in the run folder).
    pub training: TrainConfig,
    /// Rows of the latency batch.
    pub latency_batch: usize,
    /// General text whose loss before and after training measures forgetting (decoder runs only).
    #[serde(default)]
    pub forgetting: Option<ForgettingText>,
    /// A digest of all of the above and of the task file's text: a finished cell is reused only when equal.
    pub digest: String,
}

/// What a finished cell measured, written as `result.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    /// The cell it belongs to (its id and digest).
    pub id: String,
    /// Digest of the cell spec that produced it.
    pub digest: String,
    /// Dev metrics after training (or of the frozen model, for zero-shot).
    pub metrics: BTreeMap<String, f64>,
    /// Trainable parameters, counted as trained (a head included).
    pub trainable_params: usize,
    /// Parameters of the frozen model.
    pub total_params: usize,
    /// Bytes of AdamW state.
    pub optimizer_state_bytes: usize,
    /// Peak resident memory of the cell's process.
    pub peak_rss_bytes: u64,
    /// The 99th percentile of resident memory sampled every 50 ms during training (HF PEFT's method
    /// comparison reports it beside the peak: a short spike does not set it).
    #[serde(default)]
    pub rss_p99_bytes: Option<u64>,
    /// Median wall time of an optimiser step.
    pub step_time_median_s: Option<f64>,
    /// Training tokens per second (real tokens over the steps' summed time).
    pub tokens_per_s: Option<f64>,
    /// Wall time of training, evaluation included.
    pub train_seconds: f64,
    /// Wall time of the final dev evaluation.
    pub eval_seconds: f64,
    /// Size of `adapter_model.safetensors`.
    pub adapter_bytes: Option<u64>,
    /// Median forward time of the latency batch with the adapter's hooks.
    pub latency_ms: Option<f64>,
    /// The same for the bare model, measured in the same process.
    pub base_latency_ms: Option<f64>,
    /// Training loss per optimiser step.
    pub losses: Vec<f64>,
    /// What building the method decided (the method's notes).
    pub notes: Vec<String>,
    /// The commit checked out where the cell ran (`git rev-parse --short HEAD`), where known: a report that
    /// reuses earlier cells names the code each row came from.
    #[serde(default)]
    pub commit: Option<String>,
    /// Each dev example's outcome in the final evaluation, where the task keeps them: intervals and paired
    /// tests between rows resample these.
    #[serde(default)]
    pub dev_outcomes: Option<Outcomes>,
    /// Mean per-token loss on the grid's general text before and after training (decoder runs of a grid
    /// with `forgetting_text`).
    #[serde(default)]
    pub forgetting: Option<Forgetting>,
    /// How the cell's process ran: its threads, how many cells ran at once, when (absent in results written
    /// before it was recorded).
    #[serde(default)]
    pub execution: Option<Execution>,
}

/// How a cell's process ran, for the report's provenance: timings mean little without the threads they had
/// and whether other cells shared the cores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// Threads of the cell's kernels (`RAYON_NUM_THREADS`, or every core).
    pub threads: usize,
    /// Cells `peft compare` ran at a time (`--jobs`).
    pub cells_at_once: usize,
    /// Start and end, seconds since the Unix epoch.
    pub started_unix_s: f64,
    /// See `started_unix_s`.
    pub finished_unix_s: f64,
}

/// The environment variable through which `peft compare` tells a cell how many cells run at once.
pub const CELLS_AT_ONCE_ENV: &str = "PEFT_COMPARE_CELLS_AT_ONCE";

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The general-text loss before and after training; forgetting is their difference (HF PEFT's method
/// comparison: `wiki_loss_after - wiki_loss_before`, measured on the base model before).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Forgetting {
    /// Mean per-token loss of the frozen model.
    pub loss_before: f64,
    /// Mean per-token loss with the trained adapter (or the trained weights).
    pub loss_after: f64,
    /// Predicted tokens of the text.
    pub tokens: usize,
}

impl Forgetting {
    /// `loss_after - loss_before`: positive where training made the model worse at the general text.
    pub fn delta(&self) -> f64 {
        self.loss_after - self.loss_before
    }
}

/// The experiment a cell amounts to. `method` is the row's config; a zero-shot row has none, and gets a
/// linear probe config that is never built (the experiment type always carries one).
pub fn experiment_of(
    model: &str,
    task: &TaskSection,
    data: &DataSection,
    method: Option<Box<dyn PeftMethod>>,
    training: TrainConfig,
    head: bool,
) -> Result<Experiment> {
    let mut task = task.clone();
    if head {
        task.kind = TaskKind::ClassificationHead;
    }
    let method = match method {
        Some(m) => m,
        None => Box::new(peft_baselines::LinearProbeConfig::default()),
    };
    Ok(Experiment {
        file: ExperimentFile {
            model: ModelSection {
                name: model.into(),
                quantized: false,
            },
            method: toml::Table::new(),
            task,
            data: data.clone(),
            training,
        },
        method,
    })
}

/// Runs the cell described by `spec_path` (`<run>/cell.json`) and writes `<run>/result.json`.
pub fn run_cell_file(spec_path: &Path) -> Result<()> {
    exit_with_parent();
    let text = std::fs::read_to_string(spec_path)
        .with_context(|| format!("reading {}", spec_path.display()))?;
    let spec: CellSpec =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", spec_path.display()))?;
    let dir = spec_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let started_unix_s = unix_now();
    let mut result = run_cell(&spec, &dir)?;
    result.execution = Some(Execution {
        threads: candle_core::utils::get_num_threads(),
        cells_at_once: std::env::var(CELLS_AT_ONCE_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        started_unix_s,
        finished_unix_s: unix_now(),
    });
    write_atomic(
        &dir.join("result.json"),
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )?;
    Ok(())
}

/// A child dies with its parent (`kill -9` of `peft compare` must not leave a cell running on).
fn exit_with_parent() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a signal number on the calling process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() == 1 {
            std::process::exit(1);
        }
    }
}

/// Runs one cell in this process.
pub fn run_cell(spec: &CellSpec, dir: &Path) -> Result<CellResult> {
    let task_file = crate::task_file::TaskFile::load(&spec.task_path)?;
    let method: Option<Box<dyn PeftMethod>> = match &spec.config {
        Some(c) => Some(serde_json::from_value(c.clone()).context("the cell's method config")?),
        None => None,
    };
    let trains_weights = method.as_ref().is_some_and(|m| m.trains_base_weights());
    let head = spec.kind == "linear-probe";
    let exp = experiment_of(
        &spec.model,
        &task_file.task,
        &task_file.data,
        method,
        spec.training.clone(),
        head,
    )?;
    let loaded = open_model_with(
        &spec.model,
        peft_models::LoadOptions {
            trainable_weights: trains_weights,
            bf16_projections: spec.training.precision == peft_train::train::Precision::Bf16,
            ..Default::default()
        },
    )?;
    let model = loaded.model.as_ref();
    let total_params = model.spec().num_parameters;
    if spec.kind == "zero-shot" {
        let t = Instant::now();
        let (metrics, outcomes, task) = match build_baseline_task(&exp, &loaded)? {
            Some(task) => {
                let e =
                    task.evaluate_outcomes(model, &Tuned::frozen(), spec.training.eval_batch_size)?;
                (e.metrics, e.outcomes, Some(task))
            }
            None => {
                let (label, outcomes) = majority_outcomes(&exp)?;
                eprintln!("zero-shot: the model has no LM head; majority class `{label}`");
                (outcomes.metrics(), Some(outcomes), None)
            }
        };
        let eval_seconds = t.elapsed().as_secs_f64();
        let base = match &task {
            Some(task) => {
                let rows = task.eval_inputs(spec.latency_batch);
                Some(latency(model, &NoHooks, &rows)?)
            }
            None => None,
        };
        return Ok(CellResult {
            id: spec.id.clone(),
            digest: spec.digest.clone(),
            metrics,
            trainable_params: 0,
            total_params,
            optimizer_state_bytes: 0,
            peak_rss_bytes: peak_rss_bytes(),
            rss_p99_bytes: None,
            step_time_median_s: None,
            tokens_per_s: None,
            train_seconds: 0.0,
            eval_seconds,
            adapter_bytes: None,
            latency_ms: base,
            base_latency_ms: base,
            losses: Vec::new(),
            notes: Vec::new(),
            commit: source_commit(),
            dev_outcomes: outcomes,
            forgetting: None,
            execution: None,
        });
    }
    let adapter = build_adapter(&exp, &loaded)?;
    let taken = positions_taken(adapter.as_ref(), model.spec().hidden_size, model.device())?;
    let task = build_task(&exp, &loaded, taken)?;
    let mut cfg = spec.training.clone();
    cfg.output_dir = dir.to_path_buf();
    cfg.progress = false;
    cfg.checkpoints = false;
    // The general text is read and scored on the frozen model before training changes anything (full
    // fine-tuning trains the weights in place).
    let general = match &spec.forgetting {
        Some(text) if model.lm_head().is_some() && model.encoder_decoder().is_none() => {
            let task = general_text_task(spec, text, &loaded, taken)?;
            let before = general_text_loss(task.as_ref(), model, &Tuned::frozen(), &cfg)?;
            Some((task, before))
        }
        _ => None,
    };
    let sampler = RssSampler::start(std::time::Duration::from_millis(50));
    let t = Instant::now();
    let trained = Trainer::new(model, adapter.as_ref(), task.as_ref(), cfg.clone()).run();
    let train_seconds = t.elapsed().as_secs_f64();
    let rss: Vec<f64> = sampler.stop().into_iter().map(|b| b as f64).collect();
    let report = trained?;
    let forgetting = match &general {
        Some((task, (loss_before, tokens))) => {
            let (loss_after, _) =
                general_text_loss(task.as_ref(), model, &Tuned::of(adapter.as_ref()), &cfg)?;
            Some(Forgetting {
                loss_before: *loss_before,
                loss_after,
                tokens: *tokens,
            })
        }
        None => None,
    };
    let metrics = report
        .evals
        .last()
        .map(|(_, m)| m.clone())
        .context("training ended without an evaluation")?;
    let eval_seconds = report.eval_seconds.last().copied().unwrap_or(0.0);
    let rows = task.eval_inputs(spec.latency_batch);
    let (with, base) = if rows.is_empty() {
        (None, None)
    } else {
        let with = latency(model, adapter.as_ref(), &rows)?;
        (Some(with), Some(latency(model, &NoHooks, &rows)?))
    };
    let steps = &report.step_seconds;
    let adapter_file = dir
        .join("adapter")
        .join(peft_core::adapter_io::WEIGHTS_FILE);
    Ok(CellResult {
        id: spec.id.clone(),
        digest: spec.digest.clone(),
        metrics,
        trainable_params: adapter.num_trainable(),
        total_params,
        optimizer_state_bytes: report.optimizer_state_bytes,
        peak_rss_bytes: peak_rss_bytes(),
        rss_p99_bytes: percentile(&rss, 99.0).map(|b| b as u64),
        step_time_median_s: median(steps),
        tokens_per_s: (!steps.is_empty())
            .then(|| report.tokens as f64 / steps.iter().sum::<f64>().max(1e-9)),
        train_seconds,
        eval_seconds,
        adapter_bytes: std::fs::metadata(&adapter_file).ok().map(|m| m.len()),
        latency_ms: with,
        base_latency_ms: base,
        losses: report.losses,
        notes: adapter.notes(),
        commit: source_commit(),
        dev_outcomes: report.last_outcomes,
        forgetting,
        execution: None,
    })
}

/// The causal-LM task over the grid's general text (its evaluation split, at most `text.rows` rows, which
/// also stands in for the training split a task is built with: nothing trains on it), encoded for `model` with `taken` positions kept free
/// for the adapter's virtual tokens.
fn general_text_task(
    spec: &CellSpec,
    text: &ForgettingText,
    loaded: &peft_models::LoadedModel,
    taken: usize,
) -> Result<Box<dyn Task>> {
    let file = crate::task_file::TaskFile::load(&text.task_path)?;
    let mut data = file.data.clone();
    data.eval = data.eval.with_limit_at_most(text.rows);
    data.train = data.eval.clone();
    let exp = experiment_of(
        &spec.model,
        &file.task,
        &data,
        None,
        spec.training.clone(),
        false,
    )?;
    build_task(&exp, loaded, taken)
        .with_context(|| format!("the forgetting text {}", text.task_path.display()))
}

/// Mean per-token loss of `task`'s evaluation set through `tuned`, and the tokens it predicts.
fn general_text_loss(
    task: &dyn Task,
    model: &dyn BaseModel,
    tuned: &Tuned,
    cfg: &TrainConfig,
) -> Result<(f64, usize)> {
    let e = task.evaluate_outcomes(model, tuned, cfg.eval_batch_size)?;
    let tokens = match &e.outcomes {
        Some(Outcomes::Tokens { tokens, .. }) => tokens.iter().sum(),
        _ => 0,
    };
    let loss = *e.metrics.get("loss").context("the general text's loss")?;
    Ok((loss, tokens))
}

/// Median forward time in milliseconds of `rows` (right-padded into one batch) through `hooks`, over five
/// runs after one warm-up, with no gradient graph.
pub fn latency(model: &dyn BaseModel, hooks: &dyn Hooks, rows: &[Vec<u32>]) -> Result<f64> {
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let mut batch: Batch = pad_batch(&refs, 0, model.device())?;
    if let Some(ed) = model.encoder_decoder() {
        let start = vec![ed.decoder_start_token_id(); rows.len()];
        let ids = candle_core::Tensor::new(start, model.device())?.unsqueeze(1)?;
        batch = batch.with_decoder_input_ids(ids)?;
    }
    let mut times = Vec::new();
    for i in 0..6 {
        let t = Instant::now();
        peft_core::grad::no_grad(|| model.forward(&batch, hooks))?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(&times).unwrap_or(0.0))
}
