//! Where a run starts: fresh, or from the checkpoint in `output_dir/checkpoint` when `resume` is set; in a
//! data-parallel job rank 0 alone reads the checkpoint (the others may not share its file system) and sends
//! every rank its trainable variables, optimiser moments and progress, so that all ranks start equal.
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

use super::checkpoint::{load_checkpoint, TrainerState};
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
            step: 0,
            best_metric: None,
            best_step: None,
            seed: c.seed,
        };
        // Rank 0 alone looks for a checkpoint: the others may not share its file system.
        let mut found = [f64::from(u8::from(
            root && c.resume && checkpoint_dir.join("trainer_state.json").is_file(),
        ))];
        self.comm.all_reduce_sum_f64(&mut found)?;
        let resumed = found[0] > 0.0;
        if resumed && root {
            state = self.load_checkpoint(checkpoint_dir, optimizer)?;
        }
        if self.comm.size() > 1 {
            self.share_start(&mut state, optimizer, resumed)?;
        }
        Ok((state, resumed))
    }

    /// Loads the checkpoint in `dir` into the adapter and `optimizer`, refusing one trained with another seed
    /// (its data order would not continue).
    fn load_checkpoint(&self, dir: &Path, optimizer: &mut AdamW) -> Result<TrainerState> {
        let state = load_checkpoint(dir, self.adapter, optimizer)?;
        if state.seed != self.config.seed {
            return Err(PeftError::Config(format!(
                "the checkpoint in {} was trained with seed {}, this run has seed {}: resume with the same seed",
                dir.display(),
                state.seed,
                self.config.seed
            )));
        }
        Ok(state)
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
