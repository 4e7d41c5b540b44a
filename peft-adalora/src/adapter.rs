//! The built AdaLoRA adapter: for every adapted module
//! `y = W x (+ b) + (dropout(x) (A * E)^T B^T) * scale`, with the trained `lora_A` `[r, in]` (right singular
//! vectors), `lora_E` `[r, 1]` (singular values, starting at zero, so a fresh adapter is a no-op) and `lora_B`
//! `[out, r]` (left singular vectors), `scale = lora_alpha / (init_r + 1e-5)` (HF PEFT's
//! `scaling / (ranknum + 1e-5)`; `ranknum`, always `init_r`, is not saved). Keys as HF PEFT saves them:
//! `base_model.model.<module>.lora_A` (no `.weight`). In training it adds the orthogonality regulariser to the
//! loss and runs the rank allocator after each step ([`crate::allocator`]); saving keeps the triplets of the
//! current rank pattern and writes the pattern into the saved config.
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx};
//! use peft_adalora::{factor_key, AdaLoraConfig};
//! use rand::SeedableRng;
//! let model = peft_models::tiny::gpt2(0); // hidden 32, c_attn 32 -> 96, two layers
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let ada = AdaLoraConfig::new(4, 2, 10, ["c_attn"]).build_adalora(&mut init).unwrap();
//! assert_eq!(ada.num_trainable(), 2 * 4 * (32 + 96 + 1)); // A [4, 32], B [96, 4], E [4, 1] per module
//! let saved: Vec<String> = ada.tensors().unwrap().into_iter().map(|(k, _)| k).collect();
//! assert!(saved.contains(&factor_key("transformer.h.0.attn.c_attn", "E")));
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Tensor, Var};
use peft_core::hooks::{Hooks, LinearFn};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::SiteId;
use peft_core::tuner::{
    check_file_tensors, Dropout, ExpectedTensors, LinearTarget, TrainableBias, MODULE_KEY_PREFIX,
};
use peft_core::tuner::{check_merge_targets, MergeFlag, SiteIndex};
use peft_core::{PeftError, Result};

use crate::allocator::{kth_smallest, surviving, triplet_scores, Averages, Schedule};
use crate::config::AdaLoraConfig;
use crate::orthogonal::orthogonal_regulariser;
use crate::rank_pattern::{keep_along, pattern_key, RankPattern};

/// HF PEFT's key of `lora_A` (`which = "A"`), `lora_B` or `lora_E` of `module`.
pub fn factor_key(module: &str, which: &str) -> String {
    format!("{MODULE_KEY_PREFIX}{module}.lora_{which}")
}

/// The trained factors of one adapted module.
#[derive(Debug)]
pub struct AdaLoraLayer {
    target: LinearTarget,
    r: usize,
    a: Var,
    e: Var,
    b: Var,
    scale: f64,
}

impl AdaLoraLayer {
    /// The factors of `target` at rank `r`, with the update's `scale`.
    pub(crate) fn new(target: LinearTarget, r: usize, a: Var, e: Var, b: Var, scale: f64) -> Self {
        AdaLoraLayer {
            target,
            r,
            a,
            e,
            b,
            scale,
        }
    }

    /// The adapted module's full name.
    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// The adapted site.
    pub fn site(&self) -> SiteId {
        self.target.site
    }

    /// The rank the module is built at.
    pub fn rank(&self) -> usize {
        self.r
    }

    /// `lora_A` `[r, in]`.
    pub fn a(&self) -> &Tensor {
        self.a.as_tensor()
    }

    /// `lora_E` `[r, 1]`.
    pub fn e(&self) -> &Tensor {
        self.e.as_tensor()
    }

    /// `lora_B` `[out, r]`.
    pub fn b(&self) -> &Tensor {
        self.b.as_tensor()
    }

    /// The variables `lora_A`, `lora_B`, `lora_E`, in HF PEFT's parameter order.
    fn vars(&self) -> [(&'static str, &Var); 3] {
        [("A", &self.a), ("B", &self.b), ("E", &self.e)]
    }

    /// `B (A * E) * scale` `[out, in]`: what merging adds to the frozen weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let ae = self.a().detach().broadcast_mul(&self.e().detach())?;
        Ok((self.b().detach().matmul(&ae)? * self.scale)?)
    }

    /// The update for input `x` (last dimension `in`).
    fn update(&self, x: &Tensor, dropout: &Dropout) -> Result<Option<Tensor>> {
        if self.r == 0 {
            return Ok(None);
        }
        let a = peft_core::grad::param(&self.a);
        let e = peft_core::grad::param(&self.e);
        let ae = a.broadcast_mul(&e)?;
        let b = peft_core::grad::param(&self.b);
        let x2 = dropout.apply(x)?;
        let dt = x.dtype();
        Ok(Some(peft_kernels::low_rank(
            &x2,
            &ae.to_dtype(dt)?,
            &b.to_dtype(dt)?,
            self.scale,
        )?))
    }
}

/// What the allocator keeps between steps.
#[derive(Debug, Default)]
struct AllocatorState {
    /// Per module, the averages of `lora_A`, `lora_B`, `lora_E`; `None` before the first update and after
    /// the final allocation.
    averages: Option<Vec<[Averages; 3]>>,
    /// Per module, the flags of the surviving triplets (`None` for a module the pattern does not name); `None`
    /// before the first allocation.
    pattern: Option<Vec<Option<Vec<bool>>>>,
}

/// A built AdaLoRA adapter.
#[derive(Debug)]
pub struct AdaLora {
    config: AdaLoraConfig,
    layers: Vec<AdaLoraLayer>,
    /// Site to index in `layers`.
    layer_at: SiteIndex,
    biases: Vec<TrainableBias>,
    /// Site to index in `biases`.
    bias_at: SiteIndex,
    dropout: Dropout,
    merged: MergeFlag,
    /// The budget schedule; `None` for a saved adapter (`inference_mode`), which allocates nothing.
    schedule: Option<Schedule>,
    state: Mutex<AllocatorState>,
}

impl AdaLora {
    /// The adapter of a resolved `config` over `layers` and `biases` (each in site order) of a model with
    /// `num_sites` sites, with the rank pattern it was built from.
    pub(crate) fn new(
        config: AdaLoraConfig,
        layers: Vec<AdaLoraLayer>,
        biases: Vec<TrainableBias>,
        dropout: Dropout,
        num_sites: usize,
        pattern: Option<Vec<Option<Vec<bool>>>>,
    ) -> Result<Self> {
        let layer_at = SiteIndex::new(num_sites, layers.iter().map(|l| l.site()));
        let bias_at = SiteIndex::new(num_sites, biases.iter().map(|b| b.site));
        let schedule = match (config.common.inference_mode, config.total_step) {
            (false, Some(total_step)) => Some(Schedule {
                init_budget: layers.iter().map(|l| l.r).sum(),
                target_budget: config.target_r * layers.len(),
                tinit: config.tinit,
                tfinal: config.tfinal,
                total_step,
                delta_t: config.delta_t,
            }),
            _ => None,
        };
        Ok(AdaLora {
            config,
            layers,
            layer_at,
            biases,
            bias_at,
            dropout,
            merged: MergeFlag::default(),
            schedule,
            state: Mutex::new(AllocatorState {
                averages: None,
                pattern,
            }),
        })
    }

    /// The adapted modules, in site order.
    pub fn layers(&self) -> &[AdaLoraLayer] {
        &self.layers
    }

    /// The resolved configuration (without the rank pattern training writes: see [`Adapter::saved_config`]).
    pub fn adalora_config(&self) -> &AdaLoraConfig {
        &self.config
    }

    /// The budget schedule of a training adapter.
    pub fn schedule(&self) -> Option<Schedule> {
        self.schedule
    }

    /// The current rank pattern, as the saved config will hold it (`None` before the first allocation).
    pub fn rank_pattern(&self) -> Option<RankPattern> {
        let state = self.state.lock().expect("allocator state");
        let pattern = state.pattern.as_ref()?;
        Some(
            self.layers
                .iter()
                .zip(pattern)
                .filter_map(|(l, flags)| Some((pattern_key(l.name()), flags.clone()?)))
                .collect(),
        )
    }

    /// Whether the update is currently folded into a model's weights.
    pub fn is_merged(&self) -> bool {
        self.merged.is_merged()
    }

    /// Every trained (key, variable): per module `lora_A`, `lora_B`, `lora_E`, then the biases.
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::with_capacity(3 * self.layers.len() + self.biases.len());
        for l in &self.layers {
            for (which, var) in l.vars() {
                vars.push((factor_key(l.name(), which), var.clone()));
            }
        }
        for b in &self.biases {
            vars.push((b.key.clone(), b.value.clone()));
        }
        vars
    }

    /// Zeroes the `lora_E` entries of the triplets `pattern` masks.
    fn apply_pattern(&self, pattern: &[Option<Vec<bool>>]) -> Result<()> {
        for (l, flags) in self.layers.iter().zip(pattern) {
            let Some(flags) = flags.as_ref().filter(|f| f.len() == l.r) else {
                continue;
            };
            let mut e = l.e().flatten_all()?.to_vec1::<f32>()?;
            for (v, &keep) in e.iter_mut().zip(flags) {
                if !keep {
                    *v = 0.0;
                }
            }
            l.e.set(&Tensor::from_vec(e, (l.r, 1), l.e().device())?)?;
        }
        Ok(())
    }

    /// HF PEFT's `mask_to_budget`: the flags of the triplets above the `k`-th smallest score (`k` = starting
    /// ranks - `budget`), their `lora_E` zeroed elsewhere.
    fn mask_to_budget(
        &self,
        averages: &[[Averages; 3]],
        budget: usize,
        init_budget: usize,
    ) -> Result<Vec<Option<Vec<bool>>>> {
        let scores = averages
            .iter()
            .map(|[a, b, e]| triplet_scores(a, b, e))
            .collect::<Result<Vec<_>>>()?;
        let all: Vec<f32> = scores.iter().flatten().copied().collect();
        let threshold = kth_smallest(&all, init_budget.saturating_sub(budget));
        let pattern: Vec<Option<Vec<bool>>> = scores
            .iter()
            .map(|s| Some(surviving(s, threshold)))
            .collect();
        self.apply_pattern(&pattern)?;
        Ok(pattern)
    }

    /// Adds `sign * B (A * E) * scale` to every adapted frozen weight, after checking them all.
    fn fold(&self, model: &mut dyn BaseModel, sign: f64) -> Result<()> {
        check_merge_targets(
            model,
            "AdaLoRA",
            self.layers.iter().map(|l| {
                (
                    l.site(),
                    l.name(),
                    [l.target.out_features, l.target.in_features],
                )
            }),
        )?;
        for l in self.layers.iter().filter(|l| l.r > 0) {
            let delta = (l.delta_weight()? * sign)?;
            model
                .frozen_linear_mut(l.site())
                .expect("checked above")
                .add_to_weight(&delta)?;
        }
        Ok(())
    }
}

impl Hooks for AdaLora {
    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        let y = next(x)?;
        let layer = match self.layer_at.get(site) {
            Some(i) if !self.is_merged() => &self.layers[i],
            _ => return Ok(y),
        };
        match layer.update(x, &self.dropout)? {
            Some(u) => Ok((y + u)?),
            None => Ok(y),
        }
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        let i = self.bias_at.get(site)?;
        Some(peft_core::grad::param(&self.biases[i].value))
    }

    /// The adapted projections, and those whose bias trains.
    fn touches(&self, site: SiteId) -> bool {
        self.layer_at.get(site).is_some() || self.bias_at.get(site).is_some()
    }
}

/// The names of the allocator's state tensors of `module`'s factor `which`.
fn state_keys(module: &str, which: &str) -> [String; 2] {
    [
        format!("{module}.lora_{which}.exp_avg_ipt"),
        format!("{module}.lora_{which}.exp_avg_unc"),
    ]
}

/// The name of `module`'s rank-pattern flags in the allocator's state.
fn pattern_state_key(module: &str) -> String {
    format!("{module}.lora_E.rank_pattern")
}

impl Adapter for AdaLora {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    /// The config with the current rank pattern, as HF PEFT writes it into `adapter_config.json`.
    fn saved_config(&self) -> Box<dyn PeftMethod> {
        let mut config = self.config.clone();
        if let Some(pattern) = self.rank_pattern() {
            config.rank_pattern = Some(pattern);
        }
        Box::new(config)
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.named_vars()
    }

    /// A snapshot of the factors (copies), each module cut to the triplets of the current rank pattern, as
    /// HF PEFT's `resize_state_dict_by_rank_pattern` does; `ranknum` is not saved.
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let pattern = self.state.lock().expect("allocator state").pattern.clone();
        let mut out = Vec::with_capacity(3 * self.layers.len() + self.biases.len());
        for (i, l) in self.layers.iter().enumerate() {
            let flags = pattern
                .as_ref()
                .and_then(|p| p[i].as_ref())
                .filter(|f| f.len() == l.r && f.iter().any(|k| !k));
            for (which, var) in l.vars() {
                let t = var.as_tensor().detach();
                let t = match flags {
                    Some(f) => keep_along(&t, if which == "B" { 1 } else { 0 }, f)?,
                    None => t.copy()?,
                };
                out.push((factor_key(l.name(), which), t));
            }
        }
        for b in &self.biases {
            out.push((b.key.clone(), b.value.as_tensor().detach().copy()?));
        }
        Ok(out)
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        if self.is_merged() {
            return Err(PeftError::Unsupported(
                "cannot load tensors into a merged AdaLoRA adapter: unmerge it from the model first".into(),
            ));
        }
        let vars = self.named_vars();
        let expected: Vec<(&str, &[usize])> =
            vars.iter().map(|(k, v)| (k.as_str(), v.dims())).collect();
        let shapes_from = format!(
            "the model with this AdaLoRA config (init_r = {}{})",
            self.config.init_r,
            if self.config.rank_pattern.is_some() {
                ", each module at its rank_pattern's count of true flags"
            } else {
                ", no rank_pattern"
            }
        );
        check_file_tensors(
            tensors,
            &expected,
            &ExpectedTensors {
                method: "AdaLoRA",
                fields: "target_modules / layers_to_transform / rank_pattern / bias",
                shapes_from: &shapes_from,
            },
        )?;
        for (key, var) in &vars {
            var.set(&tensors[key].to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// `orth_reg_weight` times the mean of `||A A^T - I||_F` and `||B^T B - I||_F` over the modules; `None`
    /// for a saved adapter or a weight of 0.
    fn training_loss_term(&self) -> Result<Option<Tensor>> {
        if self.schedule.is_none() || self.config.orth_reg_weight == 0.0 {
            return Ok(None);
        }
        let pairs: Vec<(Tensor, Tensor)> = self
            .layers
            .iter()
            .map(|l| (peft_core::grad::param(&l.a), peft_core::grad::param(&l.b)))
            .collect();
        orthogonal_regulariser(&pairs, self.config.orth_reg_weight)
    }

    /// HF PEFT's `update_and_allocate(step)`, with the gradients the step applied.
    fn after_optimizer_step(&self, step: usize, grads: &[Tensor]) -> Result<()> {
        let Some(schedule) = self.schedule else {
            return Ok(());
        };
        let vars = self.named_vars();
        if grads.len() != vars.len() {
            return Err(PeftError::Unsupported(format!(
                "the AdaLoRA allocator was given {} gradients for {} trainable tensors",
                grads.len(),
                vars.len()
            )));
        }
        let mut state = self.state.lock().expect("allocator state");
        let final_step = schedule.final_step();
        if step < final_step {
            let (b1, b2) = (self.config.beta1, self.config.beta2);
            if state.averages.is_none() {
                let fresh = self
                    .layers
                    .iter()
                    .map(|l| {
                        Ok([
                            Averages::zeros(l.a())?,
                            Averages::zeros(l.b())?,
                            Averages::zeros(l.e())?,
                        ])
                    })
                    .collect::<Result<Vec<_>>>()?;
                state.averages = Some(fresh);
            }
            let averages = state.averages.as_mut().expect("set above");
            for (i, (l, avg)) in self.layers.iter().zip(averages.iter_mut()).enumerate() {
                for (j, (_, var)) in l.vars().into_iter().enumerate() {
                    avg[j].update(var.as_tensor(), &grads[3 * i + j], b1, b2)?;
                }
            }
        }
        if step <= final_step {
            let (budget, mask) = schedule.budget(step);
            if mask || step == final_step {
                let averages = state.averages.take().unwrap_or_default();
                if averages.len() == self.layers.len() {
                    state.pattern =
                        Some(self.mask_to_budget(&averages, budget, schedule.init_budget)?);
                }
                // HF PEFT drops the averages at the final allocation.
                if step < final_step {
                    state.averages = Some(averages);
                }
            }
        } else if let Some(pattern) = state.pattern.clone() {
            self.apply_pattern(&pattern)?;
        }
        Ok(())
    }

    /// The allocator's averages (`<module>.lora_X.exp_avg_ipt` / `exp_avg_unc`) and the rank pattern's flags
    /// (`<module>.lora_E.rank_pattern`, 1 or 0), where it has them.
    fn step_state(&self) -> Result<Vec<(String, Tensor)>> {
        let state = self.state.lock().expect("allocator state");
        let mut out = Vec::new();
        if self.schedule.is_none() {
            return Ok(out);
        }
        if let Some(averages) = &state.averages {
            for (l, avg) in self.layers.iter().zip(averages) {
                for ((which, _), a) in l.vars().into_iter().zip(avg) {
                    let [s, u] = state_keys(l.name(), which);
                    out.push((s, a.sensitivity.copy()?));
                    out.push((u, a.uncertainty.copy()?));
                }
            }
        }
        if let Some(pattern) = &state.pattern {
            for (l, flags) in self.layers.iter().zip(pattern) {
                if let Some(flags) = flags {
                    let v: Vec<f32> = flags.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
                    let n = v.len();
                    out.push((
                        pattern_state_key(l.name()),
                        Tensor::from_vec(v, n, l.e().device())?,
                    ));
                }
            }
        }
        Ok(out)
    }

    fn load_step_state(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let mut known = 0;
        let has_averages = self
            .layers
            .first()
            .is_some_and(|l| tensors.contains_key(&state_keys(l.name(), "A")[0]));
        let mut averages = Vec::new();
        let mut pattern = Vec::new();
        for l in &self.layers {
            if has_averages {
                let mut three = Vec::new();
                for (which, var) in l.vars() {
                    let [s, u] = state_keys(l.name(), which);
                    let get = |k: &str| -> Result<Tensor> {
                        let t = tensors.get(k).ok_or_else(|| {
                            PeftError::Config(format!(
                                "the AdaLoRA state between steps has no `{k}`: the checkpoint was written by \
                                 another configuration"
                            ))
                        })?;
                        if t.dims() != var.dims() {
                            return Err(PeftError::Config(format!(
                                "the AdaLoRA state `{k}` has shape {:?}, the adapter's factor {:?}",
                                t.dims(),
                                var.dims()
                            )));
                        }
                        Ok(t.to_dtype(DType::F32)?)
                    };
                    three.push(Averages {
                        sensitivity: get(&s)?,
                        uncertainty: get(&u)?,
                    });
                    known += 2;
                }
                let [a, b, e]: [Averages; 3] = three.try_into().expect("three factors");
                averages.push([a, b, e]);
            }
            pattern.push(match tensors.get(&pattern_state_key(l.name())) {
                Some(t) => {
                    known += 1;
                    Some(t.to_vec1::<f32>()?.iter().map(|&v| v != 0.0).collect())
                }
                None => None,
            });
        }
        if known != tensors.len() {
            return Err(PeftError::Config(format!(
                "the AdaLoRA state between steps holds {} tensors this adapter does not keep: the checkpoint \
                 was written by another configuration",
                tensors.len() - known
            )));
        }
        let mut state = self.state.lock().expect("allocator state");
        state.averages = has_averages.then_some(averages);
        state.pattern = pattern.iter().any(Option::is_some).then_some(pattern);
        Ok(())
    }

    fn merge_into(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.merged.merge("AdaLoRA", || self.fold(model, 1.0))
    }

    fn unmerge_from(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.merged.unmerge("AdaLoRA", || self.fold(model, -1.0))
    }
}
