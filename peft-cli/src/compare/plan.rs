//! Before any training: open every model, build every method on it (sized to the parameter budget where
//! asked), encode every task's data for it, and turn the grid into cells. Every bad name, field, label or
//! size fails here, not an hour into the run.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use peft_core::hooks::positions_taken;
use peft_core::method::PeftMethod;
use peft_models::LoadedModel;
use peft_train::data::digest::Digest;

use super::cell::{experiment_of, CellSpec};
use super::grid::{method_of, Grid, MethodRow, RowKind};
use crate::experiment::TaskKind;
use crate::session::{build_adapter, open_model};
use crate::task_file::TaskFile;
use crate::task_setup::build_task;

/// The cells of `grid`, in run order (model, task, method, seed), checked against the real models and data.
pub fn plan(grid: &Grid) -> Result<Vec<CellSpec>> {
    let file = grid.path.display();
    let mut cells = Vec::new();
    for (model, line) in &grid.models {
        let loaded =
            open_model(model).with_context(|| format!("{file}: model `{model}` (line {line})"))?;
        for task in &grid.tasks {
            // Read the task's data files once, not once per cell.
            let data_digest = data_digest(task)?;
            for row in &grid.methods {
                let at = || {
                    format!(
                        "{file}: method `{}` (line {}) on task {}",
                        row.name, row.line, task.name
                    )
                };
                let Resolved {
                    config,
                    sized,
                    trainable: planned,
                } = resolve_row(grid, &loaded, model, task, row).with_context(at)?;
                // The frozen model does not depend on the seed: zero-shot runs once.
                let seeds = match row.kind {
                    RowKind::ZeroShot => &grid.seeds[..1],
                    _ => &grid.seeds[..],
                };
                for &seed in seeds {
                    let mut training = row.training.clone();
                    training.seed = seed;
                    let mut spec = CellSpec {
                        id: format!("{}.{}.{}.s{seed}", slug(model), task.name, row.name),
                        model: model.clone(),
                        task: task.name.clone(),
                        task_path: task.path.clone(),
                        method: row.name.clone(),
                        kind: match row.kind {
                            RowKind::Method => "method",
                            RowKind::ZeroShot => "zero-shot",
                            RowKind::LinearProbe => "linear-probe",
                        }
                        .into(),
                        config: config.clone(),
                        sized: sized.clone(),
                        planned_trainable: planned,
                        training,
                        latency_batch: grid.latency_batch,
                        forgetting: grid.forgetting.clone(),
                        digest: String::new(),
                    };
                    spec.digest = digest(&spec, task, &data_digest)?;
                    cells.push(spec);
                }
            }
        }
    }
    Ok(cells)
}

/// A model name as a folder-name part: a path's file stem, a hub id's name.
pub fn slug(model: &str) -> String {
    let tail = model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(model);
    let stem = tail.strip_suffix(".gguf").unwrap_or(tail);
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// What a row runs on one model and task.
struct Resolved {
    /// The method config (sized where asked); none for zero-shot.
    config: Option<serde_json::Value>,
    /// The size knob and the value the budget chose.
    sized: Option<(String, usize)>,
    /// Trainable parameters.
    trainable: usize,
}

/// The config a row runs (sized where asked), the knob the budget set, and the trainable count.
fn resolve_row(
    grid: &Grid,
    loaded: &LoadedModel,
    model: &str,
    task: &TaskFile,
    row: &MethodRow,
) -> Result<Resolved> {
    let head = row.kind == RowKind::LinearProbe;
    if head && !task.task.kind.is_classification() {
        bail!(
            "a linear probe needs a classification task; {} is {:?}",
            task.name,
            task.task.kind
        );
    }
    let Some(table) = &row.config else {
        if task.task.kind == TaskKind::TokenClassification {
            bail!("zero-shot has nothing to evaluate on token classification (a frozen model has no tag head): remove the row");
        }
        // Zero-shot: encode the data the way the evaluation will, to refuse bad rows now.
        let exp = experiment_of(
            model,
            &task.task,
            &task.data,
            None,
            row.training.clone(),
            false,
        )?;
        crate::task_setup::build_baseline_task(&exp, loaded)?;
        return Ok(Resolved {
            config: None,
            sized: None,
            trainable: 0,
        });
    };
    let method = method_of(table)?;
    let count = |m: &dyn PeftMethod| -> Result<usize> {
        if m.trains_base_weights() {
            return Ok(distinct_parameters(loaded));
        }
        let exp = experiment_of(
            model,
            &task.task,
            &task.data,
            Some(clone(m)?),
            row.training.clone(),
            head,
        )?;
        Ok(build_adapter(&exp, loaded)?.num_trainable())
    };
    let (method, sized) = match (grid.param_budget, row.fixed_size, method.size_knob()) {
        (Some(budget), false, Some(knob)) => {
            let size = fit_budget(budget, |k| {
                let m = method
                    .with_size(k, loaded.model.spec())
                    .context("a method with a size knob must resize")?;
                count(m.as_ref())
            })?;
            let m = method
                .with_size(size, loaded.model.spec())
                .context("a method with a size knob must resize")?;
            (m, Some((knob.to_string(), size)))
        }
        _ => (method, None),
    };
    let planned = count(method.as_ref())?;
    // Build the task with this method's positions, so that data, labels and prompt lengths are checked now
    // (full fine-tuning adds no positions and is not built on the frozen model).
    let exp = experiment_of(
        model,
        &task.task,
        &task.data,
        Some(clone(method.as_ref())?),
        row.training.clone(),
        head,
    )?;
    let taken = if method.trains_base_weights() {
        0
    } else {
        let adapter = build_adapter(&exp, loaded)?;
        let spec = loaded.model.spec();
        positions_taken(adapter.as_ref(), spec.hidden_size, loaded.model.device())?
    };
    build_task(&exp, loaded, taken)?;
    Ok(Resolved {
        config: Some(serde_json::to_value(&method)?),
        sized,
        trainable: planned,
    })
}

/// A copy of a method config (through its serialised form).
fn clone(m: &dyn PeftMethod) -> Result<Box<dyn PeftMethod>> {
    Ok(serde_json::from_value(serde_json::to_value(m)?)?)
}

/// Parameters of the model, a tied weight counted once (what full fine-tuning trains).
fn distinct_parameters(loaded: &LoadedModel) -> usize {
    let mut seen = HashSet::new();
    loaded
        .model
        .parameters()
        .into_iter()
        .filter(|(_, t)| seen.insert(t.id()))
        .map(|(_, t)| t.elem_count())
        .sum()
}

/// The size whose trainable count is nearest `budget`, for a count that grows with the size: doubling until
/// the count passes the budget (or stops growing), then bisecting.
pub fn fit_budget(budget: usize, mut count: impl FnMut(usize) -> Result<usize>) -> Result<usize> {
    const LIMIT: usize = 1 << 16;
    let (mut lo, mut lo_count) = (1usize, count(1)?);
    if lo_count >= budget {
        return Ok(1);
    }
    let mut hi = None;
    while lo < LIMIT {
        let next = lo * 2;
        let c = count(next)?;
        if c > budget {
            hi = Some((next, c));
            break;
        }
        if c == lo_count {
            // The count stopped growing (BitFit on every layer): the smallest size that reaches it.
            let (mut a, mut b) = (lo / 2, lo);
            while b - a > 1 {
                let mid = (a + b) / 2;
                if count(mid)? == lo_count {
                    b = mid;
                } else {
                    a = mid;
                }
            }
            return Ok(b);
        }
        (lo, lo_count) = (next, c);
    }
    let Some((mut hi, mut hi_count)) = hi else {
        return Ok(lo);
    };
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let c = count(mid)?;
        if c > budget {
            (hi, hi_count) = (mid, c);
        } else {
            (lo, lo_count) = (mid, c);
        }
    }
    Ok(if budget - lo_count <= hi_count - budget {
        lo
    } else {
        hi
    })
}

/// A digest of the content of the task's train and eval data files.
fn data_digest(task: &TaskFile) -> Result<String> {
    let mut digest = Digest::new();
    for source in [&task.data.train, &task.data.eval] {
        digest.field(source.content_digest()?.as_bytes());
    }
    Ok(digest.hex())
}

/// A digest of the cell spec (its digest left empty), the task file's text and its data's digest
/// ([`data_digest`]): a data file edited in place reruns the cells that read it.
fn digest(spec: &CellSpec, task: &TaskFile, data_digest: &str) -> Result<String> {
    let mut digest = Digest::new();
    digest.field(serde_json::to_string(spec)?.as_bytes());
    digest.field(task.text.as_bytes());
    digest.field(data_digest.as_bytes());
    Ok(digest.hex())
}

#[cfg(test)]
mod tests {
    use super::{fit_budget, slug};

    #[test]
    fn budget_search_finds_the_nearest_size() {
        // Count 1000 per unit plus 500: a budget of 7,400 is nearest 7 (7,500).
        let size = fit_budget(7_400, |k| Ok(500 + 1000 * k)).unwrap();
        assert_eq!(size, 7);
        // Below the smallest size: 1. A count that stops growing (at 12): the largest size.
        assert_eq!(fit_budget(10, |k| Ok(100 * k)).unwrap(), 1);
        assert_eq!(fit_budget(1_000_000, |k| Ok(100 * k.min(12))).unwrap(), 12);
    }

    #[test]
    fn model_names_become_folder_names() {
        assert_eq!(slug("smollm2-135m"), "smollm2-135m");
        assert_eq!(slug("/models/SmolLM2.Q4_1.gguf"), "SmolLM2-Q4_1");
        assert_eq!(slug("HuggingFaceTB/SmolLM2-135M"), "SmolLM2-135M");
    }
}
