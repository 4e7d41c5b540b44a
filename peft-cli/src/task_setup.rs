//! Turns an experiment's `[task]` and `[data]` into a task over the model's tokenizer.

use anyhow::{bail, Context, Result};
use peft_core::data::{chunk_text, ClassEncoder, Template};
use peft_core::task::{CausalLm, HeadClassification, Task, VerbalizerClassification};
use peft_models::LoadedModel;

use crate::experiment::{Experiment, TaskKind};

/// Reads and encodes the experiment's data. `taken` positions of the context belong to the adapter (virtual
/// tokens), so prompts get at most `context - taken` tokens unless `max_length` is smaller.
pub fn build_task(exp: &Experiment, loaded: &LoadedModel, taken: usize) -> Result<Box<dyn Task>> {
    build_task_as(exp, exp.file.task.kind, loaded, taken)
}

/// The zero-shot baseline of the experiment's task: a head task is compared with its verbalizer (the frozen
/// model has no trained head); other tasks with themselves.
pub fn build_baseline_task(exp: &Experiment, loaded: &LoadedModel) -> Result<Box<dyn Task>> {
    let kind = match exp.file.task.kind {
        TaskKind::ClassificationHead => TaskKind::Classification,
        other => other,
    };
    build_task_as(exp, kind, loaded, 0)
}

/// [`build_task`] with the task kind given.
fn build_task_as(
    exp: &Experiment,
    kind: TaskKind,
    loaded: &LoadedModel,
    taken: usize,
) -> Result<Box<dyn Task>> {
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .context("training needs the model's tokenizer (tokenizer.json)")?;
    let task = &exp.file.task;
    let context = loaded.model.spec().max_positions;
    if taken >= context {
        bail!("the adapter takes {taken} positions, the whole context of {context}");
    }
    let room = context - taken;
    let max_len = match task.max_length {
        Some(m) if m > room => bail!(
            "max_length {m} plus the adapter's {taken} positions exceeds the model's context of {context}"
        ),
        Some(m) => m,
        None => room,
    };
    let data = &exp.file.data;
    let pad_id = 0;
    match kind {
        TaskKind::Classification | TaskKind::ClassificationHead => {
            let template = Template::new(task.template.clone().unwrap_or_default())?;
            let verbalizer = task.label_words.clone().context("label_words")?;
            let encoder = ClassEncoder::new(
                tokenizer,
                template,
                verbalizer,
                max_len,
                task.add_special_tokens,
            )?;
            let train = encoder
                .encode_all(&data.train.read()?)
                .with_context(|| format!("encoding {}", data.train.path.display()))?;
            let eval = encoder
                .encode_all(&data.eval.read()?)
                .with_context(|| format!("encoding {}", data.eval.path.display()))?;
            if kind == TaskKind::ClassificationHead {
                let classes = encoder.label_token_ids().len();
                return Ok(Box::new(HeadClassification::new(
                    train, eval, classes, pad_id,
                )?));
            }
            Ok(Box::new(VerbalizerClassification::new(
                train,
                eval,
                encoder.label_token_ids().to_vec(),
                pad_id,
            )?))
        }
        TaskKind::CausalLm => {
            if task.block_size > max_len {
                bail!(
                    "block_size {} exceeds the {max_len} positions left in the context",
                    task.block_size
                );
            }
            let corpus =
                |source: &peft_core::data::DataSource| -> Result<Vec<peft_core::task::LmExample>> {
                    let texts: Vec<String> = source.read()?.into_iter().map(|r| r.text).collect();
                    chunk_text(
                        tokenizer,
                        &texts.join("\n"),
                        task.block_size,
                        task.add_special_tokens,
                    )
                    .with_context(|| format!("encoding {}", source.path.display()))
                };
            Ok(Box::new(CausalLm::new(
                corpus(&data.train)?,
                corpus(&data.eval)?,
                pad_id,
            )?))
        }
    }
}
