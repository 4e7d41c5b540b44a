//! Where a run starts: fresh, or from the checkpoint in `output_dir/checkpoint` when `resume` is set; in a
//! data-parallel job rank 0 alone reads the checkpoint (the others may not share its file system) and sends
//! every rank its trainable variables, optimiser moments and progress, so that all ranks start equal.
//!
//! A resume continues exactly or not at all: a checkpoint written with another seed, batch size, gradient
//! accumulation or inputs digest (data files' content, task, template: see
//! [`Trainer::with_inputs_digest`]) is refused, naming what changed; a checkpoint of an older version that
//! does not record one of them is accepted with a note. When `resume` is set, no checkpoint exists but
//! `metrics.jsonl` records steps (a run stopped before its first checkpoint, or one without checkpoints), the
//! run warns that it starts again from step 0 and rewrites the log.
//!
//! ```no_run
//! # fn demo(model: &dyn peft_core::model::BaseModel, adapter: &dyn peft_core::method::Adapter,
//! #         task: &dyn peft_train::task::Task) -> peft_core::Result<()> {
//! use peft_train::train::{TrainConfig, Trainer};
//! let config = TrainConfig { resume: true, ..TrainConfig::default() };
//! let report = Trainer::new(model, adapter, task, config).run()?;
//! println!("continued from step {}", report.start_step);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};

use super::checkpoint::{load_checkpoint, TrainerState, STATE_FILE};
use super::optim::AdamW;
use super::trainer::Trainer;
use crate::dist::pack::broadcast_tensors;
use peft_core::error::{PeftError, Result};

impl Trainer<'_> {
    /// The run's start on every rank, and whether it resumes a checkpoint: rank 0's checkpoint in
    /// `checkpoint_dir` (loaded into the adapter and `optimizer`) when `resume` is set and one exists, else
    /// step 0.
    pub(super) fn resume(
        &self,
        checkpoint_dir: &Path,
        optimizer: &mut AdamW,
    ) -> Result<(TrainerState, bool)> {
        let c = &self.config;
        let root = self.comm.is_root();
        let mut state = TrainerState {
            batch_size: Some(c.batch_size),
            gradient_accumulation_steps: Some(c.gradient_accumulation_steps),
            inputs_digest: self.inputs_digest.clone(),
            ..TrainerState::fresh(c.seed)
        };
        // Rank 0 alone looks for a checkpoint: the others may not share its file system.
        let mut found = [f64::from(u8::from(
            root && c.resume && checkpoint_dir.join(STATE_FILE).is_file(),
        ))];
        self.comm.all_reduce_sum_f64(&mut found)?;
        let resumed = found[0] > 0.0;
        if resumed && root {
            state = self.load_checkpoint(checkpoint_dir, optimizer)?;
            eprintln!(
                "resuming from {} at step {}",
                checkpoint_dir.display(),
                state.step
            );
        } else if root && c.resume {
            self.warn_if_log_without_checkpoint(checkpoint_dir);
        }
        if self.comm.size() > 1 {
            self.share_start(&mut state, optimizer, resumed)?;
        }
        Ok((state, resumed))
    }

    /// Loads the checkpoint in `dir` into the adapter and `optimizer`, refusing one this run cannot continue
    /// exactly (see the module's doc); fills in what an older checkpoint did not record.
    fn load_checkpoint(&self, dir: &Path, optimizer: &mut AdamW) -> Result<TrainerState> {
        let c = &self.config;
        let mut state = load_checkpoint(dir, self.adapter, optimizer)?;
        let mut changed = Vec::new();
        let mut unknown = Vec::new();
        if state.seed != c.seed {
            changed.push(format!("seed {} -> {}", state.seed, c.seed));
        }
        for (name, saved, now) in [
            ("batch_size", state.batch_size, c.batch_size),
            (
                "gradient_accumulation_steps",
                state.gradient_accumulation_steps,
                c.gradient_accumulation_steps,
            ),
        ] {
            match saved {
                Some(saved) if saved != now => changed.push(format!("{name} {saved} -> {now}")),
                Some(_) => {}
                None => unknown.push(name),
            }
        }
        match (&state.inputs_digest, &self.inputs_digest) {
            (Some(saved), Some(now)) if saved != now => changed.push(inputs_change(saved, now)),
            (None, Some(_)) => unknown.push("the data and task digest"),
            _ => {}
        }
        if !changed.is_empty() {
            return Err(PeftError::Config(format!(
                "cannot resume {}: this run differs from the one that wrote it ({}), so it would not continue \
                 that run; restore the settings and inputs it was trained with, or start afresh without \
                 --resume (or in another output_dir)",
                dir.display(),
                changed.join("; ")
            )));
        }
        if !unknown.is_empty() {
            eprintln!(
                "note: the checkpoint in {} was written by an older version that does not record {}: resuming \
                 on the assumption that they did not change",
                dir.display(),
                unknown.join(", ")
            );
        }
        state.batch_size = Some(c.batch_size);
        state.gradient_accumulation_steps = Some(c.gradient_accumulation_steps);
        if self.inputs_digest.is_some() {
            state.inputs_digest.clone_from(&self.inputs_digest);
        }
        Ok(state)
    }

    /// Warns (rank 0, `resume` set, no checkpoint) when `metrics.jsonl` records training steps: they are lost,
    /// the run starts again from step 0.
    fn warn_if_log_without_checkpoint(&self, checkpoint_dir: &Path) {
        let log = self.config.output_dir.join("metrics.jsonl");
        let last = std::fs::read_to_string(&log).ok().and_then(|text| {
            text.lines()
                .filter_map(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()?
                        .get("step")?
                        .as_u64()
                })
                .max()
        });
        if let Some(step) = last.filter(|&s| s > 0) {
            eprintln!(
                "warning: --resume found no checkpoint in {}, but {} records steps up to {step}: starting \
                 again from step 0 and rewriting the log (checkpoints come every save_every steps, or at \
                 each evaluation)",
                checkpoint_dir.display(),
                log.display()
            );
        }
    }

    /// Gives every rank rank 0's start: its trainable variables (so that the copies are equal whatever each
    /// rank's initialisation drew) and, on a resume, its optimiser moments and progress.
    fn share_start(
        &self,
        state: &mut TrainerState,
        optimizer: &mut AdamW,
        resumed: bool,
    ) -> Result<()> {
        let comm = self.comm;
        let vars = self.adapter.trainable();
        let device = vars[0].1.device().clone();
        let mut named: Vec<(String, Tensor)> = vars
            .iter()
            .map(|(k, v)| (format!("param.{k}"), v.as_tensor().clone()))
            .collect();
        if resumed {
            let (moments, _) = optimizer.state();
            named.extend(moments.into_iter().map(|(k, t)| (format!("optim.{k}"), t)));
        }
        let received: HashMap<String, Tensor> = broadcast_tensors(comm, &named, &device)?
            .into_iter()
            .collect();
        self.adopt_root_params(&vars, &received)?;
        let mut bytes =
            serde_json::to_vec(state).map_err(|e| PeftError::Communication(e.to_string()))?;
        comm.broadcast_bytes(&mut bytes)?;
        *state =
            serde_json::from_slice(&bytes).map_err(|e| PeftError::Communication(e.to_string()))?;
        if resumed {
            let moments = received
                .into_iter()
                .filter_map(|(k, t)| k.strip_prefix("optim.").map(|k| (k.to_string(), t)))
                .collect();
            optimizer.load_state(&moments, state.step)?;
        }
        Ok(())
    }

    /// Sets this rank's trainable variables to rank 0's (`param.<name>` in `received`), refusing a missing one
    /// or another shape: every rank must build the same adapter.
    fn adopt_root_params(
        &self,
        vars: &[(String, Var)],
        received: &HashMap<String, Tensor>,
    ) -> Result<()> {
        for (name, var) in vars {
            let value = received.get(&format!("param.{name}")).ok_or_else(|| {
                PeftError::Communication(format!(
                    "rank 0 has no trainable `{name}`: every rank must build the same adapter"
                ))
            })?;
            if value.dims() != var.dims() {
                return Err(PeftError::ShapeMismatch {
                    what: name.clone(),
                    expected_from: format!("rank {}'s adapter", self.comm.rank()),
                    expected: var.dims().to_vec(),
                    got_from: "rank 0's adapter".into(),
                    got: value.dims().to_vec(),
                });
            }
            var.set(value)?;
        }
        Ok(())
    }
}

/// What changed between the checkpoint's inputs digest `saved` and this run's `now`: the parts that differ
/// when both are space-separated `name:value` parts with the same names, else the inputs as a whole.
fn inputs_change(saved: &str, now: &str) -> String {
    let parts = |d: &str| -> Option<Vec<(String, String)>> {
        d.split_whitespace()
            .map(|p| {
                p.split_once(':')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    };
    if let (Some(a), Some(b)) = (parts(saved), parts(now)) {
        let names = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        if names(&a) == names(&b) {
            let differ: Vec<String> = a
                .iter()
                .zip(&b)
                .filter(|(x, y)| x.1 != y.1)
                .map(|(x, _)| x.0.clone())
                .collect();
            return format!("its inputs changed: {}", differ.join(", "));
        }
    }
    "its inputs changed: the content of a data file or the task (template, label words) differs from \
     the checkpoint's"
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::inputs_change;

    #[test]
    fn a_changed_digest_names_the_parts_that_changed() {
        assert_eq!(
            inputs_change("task:a data:b template:c", "task:a data:x template:y"),
            "its inputs changed: data, template"
        );
        let whole = inputs_change("3fa2", "91bc");
        assert!(
            whole.contains("data file") && whole.contains("template"),
            "{whole}"
        );
    }
}
