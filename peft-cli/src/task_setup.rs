//! Turns an experiment's `[task]` and `[data]` into a task over the model's tokenizer.

use anyhow::{bail, Context, Result};
use peft_models::LoadedModel;
use peft_train::data::tagged::{encode_tagged, parse_tagged};
use peft_train::data::{chunk_text, ClassEncoder, Field, Template};
use peft_train::task::{
    CausalLm, HeadClassification, Outcomes, Seq2Seq, Seq2SeqExample, Task, TokenClassification,
    TokenExample, VerbalizerClassification,
};

use crate::experiment::{Experiment, TaskKind};

/// Reads and encodes the experiment's data. `taken` positions of the context belong to the adapter (virtual
/// tokens), so prompts get at most `context - taken` tokens unless `max_length` is smaller.
pub fn build_task(exp: &Experiment, loaded: &LoadedModel, taken: usize) -> Result<Box<dyn Task>> {
    build_task_as(exp, exp.file.task.kind, loaded, taken)
}

/// The zero-shot baseline of the experiment's task: a head task is compared with its verbalizer (the frozen
/// model has no trained head); other tasks with themselves. `None` where the model cannot score label words
/// (an encoder without an LM head): [`majority_baseline`] is the comparison then.
pub fn build_baseline_task(
    exp: &Experiment,
    loaded: &LoadedModel,
) -> Result<Option<Box<dyn Task>>> {
    let kind = match exp.file.task.kind {
        TaskKind::ClassificationHead if loaded.model.lm_head().is_none() => return Ok(None),
        // A frozen model has no per-token head to evaluate.
        TaskKind::TokenClassification => return Ok(None),
        TaskKind::ClassificationHead => TaskKind::Classification,
        other => other,
    };
    build_task_as(exp, kind, loaded, 0).map(Some)
}

/// The accuracy on the dev set of always predicting the training set's most frequent label.
pub fn majority_baseline(exp: &Experiment) -> Result<(String, f64)> {
    let (label, outcomes) = majority_outcomes(exp)?;
    let all: Vec<usize> = (0..outcomes.len()).collect();
    let accuracy = outcomes.metric("accuracy", &all).unwrap_or(0.0);
    Ok((label, accuracy))
}

/// The majority class (the training set's most frequent label) and the dev outcomes of always predicting it,
/// in the dev set's order; classes are numbered by the labels' sorted names (the numbering only has to be
/// consistent within these outcomes: correctness, F1 and the paired tests do not depend on it). No loss: the
/// baseline scores no probabilities.
pub fn majority_outcomes(exp: &Experiment) -> Result<(String, Outcomes)> {
    let count = |source: &peft_train::data::DataSource| -> Result<Vec<String>> {
        Ok(source.read()?.into_iter().filter_map(|r| r.label).collect())
    };
    let train = count(&exp.file.data.train)?;
    let eval = count(&exp.file.data.eval)?;
    let mut freq = std::collections::BTreeMap::<&str, usize>::new();
    for l in &train {
        *freq.entry(l).or_default() += 1;
    }
    let majority = freq
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(l, _)| l.to_string())
        .context("the training set has no labels")?;
    if eval.is_empty() {
        bail!("the evaluation set has no labels");
    }
    let names: std::collections::BTreeSet<&str> =
        train.iter().chain(&eval).map(String::as_str).collect();
    let index = |l: &str| names.iter().position(|n| *n == l).unwrap_or(0) as u32;
    let predicted = index(&majority);
    let outcomes = Outcomes::Classes {
        classes: names.len(),
        labels: eval.iter().map(|l| index(l)).collect(),
        predictions: vec![predicted; eval.len()],
        losses: Vec::new(),
    };
    Ok((majority, outcomes))
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
            let mut encoder = ClassEncoder::new(
                tokenizer,
                template,
                verbalizer,
                max_len,
                task.add_special_tokens,
            )?;
            if kind == TaskKind::ClassificationHead {
                // A head reads a pooled state, so the input is the tokenizer's whole encoding (BERT's final
                // [SEP] included), as transformers' sequence classifiers receive it.
                // A text_pair the template does not place is the tokenizer's second segment (BERT: token
                // type 1), as `tokenizer(text, text_pair)` gives it.
                encoder = encoder
                    .keeping_trailing_special_tokens()
                    .with_pair_encoding();
            }
            let train = encoder
                .encode_all(&data.train.read()?)
                .with_context(|| format!("encoding {}", data.train.name()))?;
            let eval = encoder
                .encode_all(&data.eval.read()?)
                .with_context(|| format!("encoding {}", data.eval.name()))?;
            if kind == TaskKind::ClassificationHead {
                let classes = encoder.label_token_ids().len();
                return Ok(Box::new(HeadClassification::new(
                    train, eval, classes, pad_id,
                )?));
            }
            task.label_words
                .as_ref()
                .context("label_words")?
                .check_scorable(tokenizer, encoder.template())?;
            Ok(Box::new(VerbalizerClassification::new(
                train,
                eval,
                encoder.label_token_ids().to_vec(),
                pad_id,
            )?))
        }
        TaskKind::TokenClassification => {
            let labels = task.labels.clone().context("labels")?;
            let examples = |source: &peft_train::data::DataSource| -> Result<Vec<TokenExample>> {
                let name = |f: &Option<Field>, what: &str| -> Result<String> {
                    match f {
                        Some(Field::Name(n)) => Ok(n.clone()),
                        _ => bail!(
                            "token classification reads JSONL: `{what}` must name the key of the {what} list"
                        ),
                    }
                };
                let path = source.path.as_ref().with_context(|| {
                    format!(
                        "token classification reads a local JSONL file; {} names none (set `path`)",
                        source.name()
                    )
                })?;
                let content = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let mut rows = parse_tagged(
                    &content,
                    &name(&Some(source.text.clone()), "text")?,
                    &name(&source.label, "label")?,
                    &path.display().to_string(),
                )?;
                if let Some(limit) = source.limit {
                    rows.truncate(limit);
                }
                rows.iter()
                    .enumerate()
                    .map(|(i, r)| {
                        Ok(encode_tagged(
                            tokenizer,
                            r,
                            &labels,
                            max_len,
                            task.add_special_tokens,
                            i,
                        )?)
                    })
                    .collect()
            };
            Ok(Box::new(TokenClassification::new(
                examples(&data.train)?,
                examples(&data.eval)?,
                labels.len(),
                pad_id,
            )?))
        }
        TaskKind::Seq2Seq => {
            let template = Template::new(task.template.clone().unwrap_or_else(|| "{text}".into()))?;
            let eos = loaded.eos_token_id;
            let encode = |text: &str, what: &str, row: usize| -> Result<Vec<u32>> {
                let mut ids = tokenizer
                    .encode(text, task.add_special_tokens)
                    .map_err(|e| anyhow::anyhow!("tokenizing the {what} of example {row}: {e}"))?
                    .get_ids()
                    .to_vec();
                // T5's tokenizer appends </s>; one that does not gets the model's eos here.
                if let Some(e) = eos.filter(|e| ids.last() != Some(e)) {
                    ids.push(e);
                }
                Ok(ids)
            };
            let examples = |source: &peft_train::data::DataSource| -> Result<Vec<Seq2SeqExample>> {
                let rows = source.read()?;
                rows.iter()
                    .enumerate()
                    .map(|(row, r)| {
                        let target = r.label.as_deref().with_context(|| {
                            format!(
                                "{} example {row} has no target: name it as the label field",
                                source.name()
                            )
                        })?;
                        let source_text = template
                            .render_example(r)
                            .with_context(|| format!("{} {}", source.name(), r.position(row)))?;
                        let mut input_ids = encode(&source_text, "source", row)?;
                        input_ids.truncate(max_len);
                        Ok(Seq2SeqExample {
                            input_ids,
                            labels: encode(target, "target", row)?,
                        })
                    })
                    .collect()
            };
            Ok(Box::new(Seq2Seq::new(
                examples(&data.train)?,
                examples(&data.eval)?,
                pad_id,
                eos,
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
                |source: &peft_train::data::DataSource| -> Result<Vec<peft_train::task::LmExample>> {
                    let texts: Vec<String> = source.read()?.into_iter().map(|r| r.text).collect();
                    chunk_text(
                        tokenizer,
                        &texts.join("\n"),
                        task.block_size,
                        task.add_special_tokens,
                    )
                    .with_context(|| format!("encoding {}", source.name()))
                };
            Ok(Box::new(CausalLm::new(
                corpus(&data.train)?,
                corpus(&data.eval)?,
                pad_id,
            )?))
        }
    }
}
