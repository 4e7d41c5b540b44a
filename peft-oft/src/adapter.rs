//! The built OFT adapter: for every adapted module `y = W (R x) (+ b)`, where `R` is block-diagonal, each of its
//! `r` blocks (`b x b`, `r b = in`) the Cayley rotation ([`crate::cayley`]) of a trained skew-symmetric matrix
//! saved as its upper triangle in `base_model.model.<module>.oft_R.weight` `[r, b (b - 1) / 2]` (one row with
//! `block_share`). HF PEFT computes it as `x_blocks @ R_j` on the input's blocks, which is what runs here.
//! `oft_R` starts at zeros, the identity, so a fresh adapter is a no-op. Trainable biases (`bias = "all"` /
//! `"oft_only"`) replace the frozen ones through [`Hooks::bias`].
//!
//! Merging replaces each adapted weight `W` `[out, in]` by `W R^T` (HF PEFT's `(R W^T)^T`), so that
//! `W' x = W R^T x`, the rotated product; unmerging multiplies by the blocks' inverse transposed (HF PEFT inverts
//! the rotation, which the Cayley-Neumann series leaves only nearly orthogonal).
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx};
//! use peft_oft::{rotation_key, OftConfig};
//! use rand::SeedableRng;
//! let model = peft_models::tiny::gpt2(0); // hidden 32, c_attn 32 -> 96, two layers
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let oft = OftConfig::with_block_size(8, ["c_attn"]).build_oft(&mut init).unwrap();
//! // 4 blocks of 8 per module, 8 * 7 / 2 = 28 parameters each.
//! assert_eq!(oft.num_trainable(), 2 * 4 * 28);
//! let saved: Vec<String> = oft.tensors().unwrap().into_iter().map(|(k, _)| k).collect();
//! assert!(saved.contains(&rotation_key("transformer.h.0.attn.c_attn")));
//! ```

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use peft_core::hooks::{Hooks, LinearFn};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::SiteId;
use peft_core::tuner::{check_file_tensors, ExpectedTensors, TrainableBias, MODULE_KEY_PREFIX};
use peft_core::tuner::{check_merge_targets, MergeFlag, SiteIndex};
use peft_core::{PeftError, Result};

use crate::cayley::{cayley_exact, cayley_neumann, invert_blocks, project_coft, Skew};
use crate::config::OftConfig;
use crate::dropout::BlockDropout;
use crate::targets::OftTarget;

/// HF PEFT's key of `module`'s `oft_R` parameter.
pub fn rotation_key(module: &str) -> String {
    format!("{MODULE_KEY_PREFIX}{module}.oft_R.weight")
}

/// How a module's rotation is computed from its parameters (the config's settings).
#[derive(Debug, Clone, Copy)]
struct Transform {
    coft: bool,
    eps: f64,
    neumann: bool,
    terms: usize,
}

/// The trained rotation of one adapted module.
#[derive(Debug)]
pub struct OftLayer {
    target: OftTarget,
    weight: Var,
    skew: Skew,
    transform: Transform,
}

impl OftLayer {
    /// The layer of `target` with its `oft_R` `weight` `[rows, b (b - 1) / 2]`, computed as `config` says.
    pub(crate) fn new(target: OftTarget, weight: Var, config: &OftConfig) -> Result<Self> {
        let skew = Skew::new(target.block_size, weight.device())?;
        Ok(OftLayer {
            target,
            weight,
            skew,
            transform: Transform {
                coft: config.coft,
                eps: config.eps,
                neumann: config.use_cayley_neumann,
                terms: config.num_cayley_neumann_terms,
            },
        })
    }

    /// The adapted module's full name.
    pub fn name(&self) -> &str {
        &self.target.linear.name
    }

    /// The adapted site.
    pub fn site(&self) -> SiteId {
        self.target.linear.site
    }

    /// The module's blocks: how many, and their size.
    pub fn blocks(&self) -> (usize, usize) {
        (self.target.blocks, self.target.block_size)
    }

    /// `oft_R.weight` `[rows, b (b - 1) / 2]` (one row with `block_share`).
    pub fn weight(&self) -> &Tensor {
        self.weight.as_tensor()
    }

    /// COFT's projection of `oft_R` in place, as HF PEFT makes it before every use (under `no_grad`).
    fn project(&self) -> Result<()> {
        if self.transform.coft {
            let projected = project_coft(&self.weight.as_tensor().detach(), self.transform.eps)?;
            self.weight.set(&projected)?;
        }
        Ok(())
    }

    /// The rotation blocks `[rows, b, b]` of `weight`, `oft_R` as the caller reads it (tracked for training,
    /// detached for merging).
    fn rotations_from(&self, weight: &Tensor) -> Result<Tensor> {
        let q = self.skew.matrices(weight)?;
        if self.transform.neumann {
            cayley_neumann(&q, self.transform.terms)
        } else {
            cayley_exact(&q)
        }
    }

    /// The rotation blocks `[rows, b, b]` of the current `oft_R` (after COFT's projection), without gradient.
    pub fn rotations(&self) -> Result<Tensor> {
        self.project()?;
        self.rotations_from(&self.weight.as_tensor().detach())
    }

    /// `x` `[.., in]` with each block of `b` features multiplied by its rotation (`x_j R_j`), in f32, returned in
    /// `x`'s dtype; `dropout` may replace blocks by the identity while training.
    fn rotate(&self, x: &Tensor, dropout: &BlockDropout) -> Result<Tensor> {
        self.project()?;
        let r = dropout.apply(&self.rotations_from(&peft_core::grad::param(&self.weight))?)?;
        let (blocks, b) = self.blocks();
        let dims = x.dims().to_vec();
        let rows = x.elem_count() / (blocks * b);
        let x32 = x.to_dtype(DType::F32)?;
        let rotated = if r.dim(0)? == 1 {
            // Shared blocks: every block of every row by the same matrix.
            x32.reshape((rows * blocks, b))?.matmul(&r.get(0)?)?
        } else {
            let per_block = x32
                .reshape((rows, blocks, b))?
                .transpose(0, 1)?
                .contiguous()?;
            per_block.matmul(&r)?.transpose(0, 1)?.contiguous()?
        };
        Ok(rotated.reshape(dims)?.to_dtype(x.dtype())?)
    }

    /// `w R^T` for an `[out, in]` weight `w` and blocks `r` `[rows, b, b]` (each block of columns `w_j R_j^T`).
    fn times_transposed(&self, w: &Tensor, r: &Tensor) -> Result<Tensor> {
        let (blocks, b) = self.blocks();
        let (out, inp) = w.dims2()?;
        let r = r
            .broadcast_as((blocks, b, b))?
            .transpose(1, 2)?
            .contiguous()?;
        let per_block = w.reshape((out, blocks, b))?.transpose(0, 1)?.contiguous()?;
        Ok(per_block
            .matmul(&r)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((out, inp))?)
    }
}

/// A built OFT adapter.
#[derive(Debug)]
pub struct Oft {
    config: OftConfig,
    layers: Vec<OftLayer>,
    /// Site to index in `layers`.
    layer_at: SiteIndex,
    biases: Vec<TrainableBias>,
    /// Site to index in `biases`.
    bias_at: SiteIndex,
    dropout: BlockDropout,
    merged: MergeFlag,
}

impl Oft {
    /// The adapter of a resolved `config` over `layers` and `biases` (each in site order) of a model with
    /// `num_sites` sites.
    pub(crate) fn new(
        config: OftConfig,
        layers: Vec<OftLayer>,
        biases: Vec<TrainableBias>,
        dropout: BlockDropout,
        num_sites: usize,
    ) -> Self {
        let layer_at = SiteIndex::new(num_sites, layers.iter().map(|l| l.site()));
        let bias_at = SiteIndex::new(num_sites, biases.iter().map(|b| b.site));
        Oft {
            config,
            layers,
            layer_at,
            biases,
            bias_at,
            dropout,
            merged: MergeFlag::default(),
        }
    }

    /// The adapted modules, in site order.
    pub fn layers(&self) -> &[OftLayer] {
        &self.layers
    }

    /// The resolved configuration (what `adapter_config.json` will hold).
    pub fn oft_config(&self) -> &OftConfig {
        &self.config
    }

    /// Whether the rotation is currently folded into a model's weights.
    pub fn is_merged(&self) -> bool {
        self.merged.is_merged()
    }

    /// Every trained (key, variable): each module's `oft_R`, then the biases.
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::with_capacity(self.layers.len() + self.biases.len());
        for l in &self.layers {
            vars.push((rotation_key(l.name()), l.weight.clone()));
        }
        for b in &self.biases {
            vars.push((b.key.clone(), b.value.clone()));
        }
        vars
    }

    /// Replaces every adapted weight `W` by `W B^T`, with `B` each module's rotation blocks (merging) or their
    /// inverses (unmerging), after checking every module.
    fn fold(&self, model: &mut dyn BaseModel, invert: bool) -> Result<()> {
        check_merge_targets(
            model,
            "OFT",
            self.layers.iter().map(|l| {
                (
                    l.site(),
                    l.name(),
                    [l.target.linear.out_features, l.target.linear.in_features],
                )
            }),
        )?;
        let mut deltas = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let r = l.rotations()?;
            let r = if invert { invert_blocks(&r)? } else { r };
            let w = model
                .frozen_linear(l.site())
                .expect("checked above")
                .weight()?;
            let w32 = w.to_dtype(DType::F32)?;
            deltas.push((l.times_transposed(&w32, &r)? - &w32)?);
        }
        for (l, delta) in self.layers.iter().zip(deltas) {
            model
                .frozen_linear_mut(l.site())
                .expect("checked above")
                .add_to_weight(&delta)?;
        }
        Ok(())
    }
}

impl Hooks for Oft {
    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        match self.layer_at.get(site) {
            Some(i) if !self.is_merged() => next(&self.layers[i].rotate(x, &self.dropout)?),
            _ => next(x),
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

impl Adapter for Oft {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.named_vars()
    }

    /// A snapshot of `oft_R` and the biases (copies, so later steps leave it as it was).
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.named_vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().detach().copy()?)))
            .collect()
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        if self.is_merged() {
            return Err(PeftError::Unsupported(
                "cannot load tensors into a merged OFT adapter: unmerge it from the model first"
                    .into(),
            ));
        }
        let vars = self.named_vars();
        let expected: Vec<(&str, &[usize])> =
            vars.iter().map(|(k, v)| (k.as_str(), v.dims())).collect();
        let shapes_from = format!(
            "the model with this OFT config (r = {}, oft_block_size = {}, block_share = {}: oft_R is \
             [blocks, b (b - 1) / 2] per module, [1, ..] with block_share)",
            self.config.r, self.config.oft_block_size, self.config.block_share
        );
        check_file_tensors(
            tensors,
            &expected,
            &ExpectedTensors {
                method: "OFT",
                fields:
                    "target_modules / layers_to_transform / r / oft_block_size / block_share / bias",
                shapes_from: &shapes_from,
            },
        )?;
        for (key, var) in &vars {
            var.set(&tensors[key].to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let (r, size) = (self.config.r, self.config.oft_block_size);
        for l in &self.layers {
            let (blocks, b) = l.blocks();
            let adjusted = if r == 0 { b != size } else { blocks != r };
            if adjusted {
                let (field, asked, got) = if r == 0 {
                    ("oft_block_size", size, b)
                } else {
                    ("r", r, blocks)
                };
                notes.push(format!(
                    "{}: {field} = {asked} does not divide in_features = {}; {got} is used instead (the nearest \
                     divisor, as HF PEFT adjusts it)",
                    l.name(),
                    l.target.linear.in_features
                ));
            }
        }
        if self.config.module_dropout > 0.0 {
            notes.push(format!(
                "module_dropout = {}: blocks are replaced by the identity while training; HF PEFT 0.21 builds this \
                 dropout but never applies it, so its training differs",
                self.config.module_dropout
            ));
        }
        if self.layers.iter().any(|l| l.target.linear.fan_in_fan_out) {
            notes.push(
                "some adapted modules are GPT-2 style Conv1D layers, which HF PEFT's OFT refuses: HF PEFT loads \
                 this adapter only on a copy of the model whose Conv1D layers are nn.Linear"
                    .into(),
            );
        }
        notes
    }

    fn merge_into(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.merged.merge("OFT", || self.fold(model, false))
    }

    fn unmerge_from(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.merged.unmerge("OFT", || self.fold(model, true))
    }
}
