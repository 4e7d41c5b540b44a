//! One forward pass whose rows use different adapters, of any method types: row `i` runs with adapter
//! `rows[i]` (or none). Each row computes what it computes alone with its adapter.
//!
//! - Prompt rows (prompt tuning, P-tuning) with different numbers of virtual tokens: each row's virtual tokens
//!   are left-padded to the longest, the padding masked. Positions count real keys only (the models' rule), so
//!   a padded row sits at the positions it has alone.
//! - Prefix rows (prefix tuning, P-tuning v2): each prefix is left-padded with masked zero keys to the longest;
//!   the mask over the prefix is put in front of the attention mask, which the models read as a mask over
//!   prefix and tokens.
//! - Projection methods (LoRA and its kin, IA3, BitFit's biases, OFT, ...): the frozen product runs once over
//!   every row; each adapter then runs on its rows only (a gather, its own product, a scatter back), receiving
//!   its rows of the frozen result when it asks for the frozen projection of its own input.
//! - Norm methods (LayerNorm tuning, BitFit's norm biases): the norm runs per adapter on its rows.
//!
//! A batch of one adapter (or none) runs that adapter's hooks directly.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use peft_core::hooks::{Ctx, Hooks, NoHooks};
//! use peft_core::mixed::MixedHooks;
//! let none = NoHooks;
//! let mixed = MixedHooks::new(vec![&none as &dyn Hooks], vec![Some(0), None]).unwrap();
//! let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
//! let mut ctx = Ctx::new(Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap());
//! assert_eq!(mixed.embeddings(x, &mut ctx).unwrap().dims(), &[2, 3, 4]);
//! ```

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::error::{PeftError, Result};
use crate::frozen::FrozenLinear;
use crate::hooks::{Ctx, Hooks, KvPrefix, LinearFn, NoHooks, NormFn};
use crate::spec::SiteId;

/// The rows of one adapter (or of none).
#[derive(Debug, Clone)]
struct Group {
    adapter: Option<usize>,
    rows: Vec<usize>,
}

/// What a prompt's pass learned about each group: its context after its embeddings hook and its prefix length.
#[derive(Debug, Clone)]
struct GroupPrompt {
    ctx: Ctx,
    prefix: usize,
}

#[derive(Debug, Default)]
struct PromptState {
    groups: Vec<GroupPrompt>,
    max_prefix: usize,
}

/// Hooks over a batch whose rows use different adapters (see the module documentation).
pub struct MixedHooks<'a> {
    adapters: Vec<&'a dyn Hooks>,
    rows: usize,
    groups: Vec<Group>,
    /// Row `order[k]` of the grouped batch is row `k` of the caller's batch.
    order: Vec<u32>,
    /// Each group is a run of consecutive rows, in row order: splitting is slicing and joining is concatenating.
    contiguous: bool,
    prompt: Mutex<PromptState>,
}

impl<'a> MixedHooks<'a> {
    /// Hooks where batch row `i` uses `adapters[rows[i]]`, or no adapter where `rows[i]` is `None`.
    pub fn new(adapters: Vec<&'a dyn Hooks>, rows: Vec<Option<usize>>) -> Result<Self> {
        if let Some(bad) = rows.iter().flatten().find(|&&a| a >= adapters.len()) {
            return Err(PeftError::Data(format!(
                "a batch row asks for adapter {bad}, but {} adapters were given",
                adapters.len()
            )));
        }
        let mut groups: Vec<Group> = Vec::new();
        for (row, &adapter) in rows.iter().enumerate() {
            match groups.iter_mut().find(|g| g.adapter == adapter) {
                Some(g) => g.rows.push(row),
                None => groups.push(Group {
                    adapter,
                    rows: vec![row],
                }),
            }
        }
        let grouped: Vec<usize> = groups.iter().flat_map(|g| g.rows.clone()).collect();
        let mut order = vec![0u32; rows.len()];
        for (k, &row) in grouped.iter().enumerate() {
            order[row] = k as u32;
        }
        let contiguous = grouped.iter().enumerate().all(|(k, &row)| k == row);
        Ok(MixedHooks {
            adapters,
            rows: rows.len(),
            groups,
            order,
            contiguous,
            prompt: Mutex::new(PromptState::default()),
        })
    }

    /// The hooks every row shares, when there is one group.
    fn single(&self) -> Option<&dyn Hooks> {
        match self.groups.as_slice() {
            [] => Some(&NoHooks),
            [g] => Some(self.hooks_of(g)),
            _ => None,
        }
    }

    fn hooks_of(&self, g: &Group) -> &dyn Hooks {
        match g.adapter {
            Some(a) => self.adapters[a],
            None => &NoHooks,
        }
    }

    fn index(&self, g: &Group, device: &Device) -> Result<Tensor> {
        let rows: Vec<u32> = g.rows.iter().map(|&r| r as u32).collect();
        Ok(Tensor::new(rows, device)?)
    }

    /// Rows of `t` (dim 0) that belong to each group.
    fn split(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        if t.dim(0)? != self.rows {
            return Err(PeftError::ShapeMismatch {
                what: "batch rows".into(),
                expected_from: "the rows given to MixedHooks".into(),
                expected: vec![self.rows],
                got_from: "the model's tensor".into(),
                got: t.dims().to_vec(),
            });
        }
        self.groups
            .iter()
            .map(|g| {
                if self.contiguous {
                    Ok(t.narrow(0, g.rows[0], g.rows.len())?)
                } else {
                    Ok(t.index_select(&self.index(g, t.device())?, 0)?)
                }
            })
            .collect()
    }

    /// The groups' rows (in group order) put back in the caller's row order.
    fn join(&self, parts: &[Tensor]) -> Result<Tensor> {
        let grouped = Tensor::cat(parts, 0)?;
        if self.contiguous {
            return Ok(grouped);
        }
        let order = Tensor::new(self.order.as_slice(), grouped.device())?;
        Ok(grouped.index_select(&order, 0)?)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PromptState> {
        self.prompt.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `t` with `n` zeros in front along `dim`.
fn left_pad(t: &Tensor, dim: usize, n: usize) -> Result<Tensor> {
    if n == 0 {
        return Ok(t.clone());
    }
    let mut dims = t.dims().to_vec();
    dims[dim] = n;
    let zeros = Tensor::zeros(dims, t.dtype(), t.device())?;
    Ok(Tensor::cat(&[&zeros, t], dim)?)
}

impl Hooks for MixedHooks<'_> {
    fn touches(&self, site: SiteId) -> bool {
        self.groups.iter().any(|g| self.hooks_of(g).touches(site))
    }

    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        if let Some(h) = self.single() {
            return h.embeddings(x, ctx);
        }
        let xs = self.split(&x)?;
        let masks = self.split(&ctx.attention_mask)?;
        let mut groups = Vec::with_capacity(self.groups.len());
        let mut embedded = Vec::with_capacity(self.groups.len());
        for ((g, x), mask) in self.groups.iter().zip(xs).zip(masks) {
            let hooks = self.hooks_of(g);
            let mut gctx = Ctx::new(mask);
            let x = hooks.embeddings(x, &mut gctx)?;
            let prefix = hooks.attention_prefix(0, &gctx)?.map_or(0, |p| p.len());
            embedded.push(x);
            groups.push(GroupPrompt { ctx: gctx, prefix });
        }
        let max_virtual = groups
            .iter()
            .map(|g| g.ctx.virtual_tokens)
            .max()
            .unwrap_or(0);
        let max_prefix = groups.iter().map(|g| g.prefix).max().unwrap_or(0);
        let mut xs = Vec::with_capacity(groups.len());
        let mut masks = Vec::with_capacity(groups.len());
        for (g, x) in groups.iter().zip(embedded) {
            let n = g.ctx.attention_mask.dim(0)?;
            let pad = max_virtual - g.ctx.virtual_tokens;
            xs.push(left_pad(&x, 1, pad)?);
            // Mask over [prefix padding, prefix, virtual padding, virtual tokens + tokens].
            let mut mask = left_pad(&g.ctx.attention_mask, 1, pad)?;
            if max_prefix > 0 {
                let ones = Tensor::ones((n, g.prefix), DType::F32, mask.device())?;
                mask = left_pad(&Tensor::cat(&[&ones, &mask], 1)?, 1, max_prefix - g.prefix)?;
            }
            masks.push(mask);
        }
        ctx.attention_mask = self.join(&masks)?;
        ctx.virtual_tokens += max_virtual;
        let mut state = self.state();
        state.groups = groups;
        state.max_prefix = max_prefix;
        self.join(&xs)
    }

    fn attention_prefix(&self, layer: usize, ctx: &Ctx) -> Result<Option<KvPrefix>> {
        if let Some(h) = self.single() {
            return h.attention_prefix(layer, ctx);
        }
        let state = self.state();
        if state.max_prefix == 0 {
            return Ok(None);
        }
        if state.groups.len() != self.groups.len() {
            return Err(PeftError::Unsupported(
                "MixedHooks::attention_prefix was called before the embeddings hook of the same pass".into(),
            ));
        }
        let mut prefixes = Vec::with_capacity(self.groups.len());
        for (g, p) in self.groups.iter().zip(&state.groups) {
            let got = self.hooks_of(g).attention_prefix(layer, &p.ctx)?;
            let len = got.as_ref().map_or(0, |k| k.len());
            if len != p.prefix {
                return Err(PeftError::Unsupported(format!(
                    "an adapter gave layer {layer} a prefix of {len} positions and layer 0 one of {}: a mixed batch \
                     needs every layer's prefix to have the same length",
                    p.prefix
                )));
            }
            prefixes.push(got);
        }
        let Some(shape) = prefixes
            .iter()
            .flatten()
            .next()
            .map(|p| p.key.dims().to_vec())
        else {
            return Ok(None);
        };
        let (kv, d) = (shape[1], shape[3]);
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for ((g, p), got) in self.groups.iter().zip(&state.groups).zip(prefixes) {
            let n = g.rows.len();
            match got {
                Some(got) => {
                    let pad = state.max_prefix - p.prefix;
                    let k = got.key.broadcast_as((n, kv, p.prefix, d))?.contiguous()?;
                    let v = got.value.broadcast_as((n, kv, p.prefix, d))?.contiguous()?;
                    keys.push(left_pad(&k, 2, pad)?);
                    values.push(left_pad(&v, 2, pad)?);
                }
                None => {
                    let dims = (n, kv, state.max_prefix, d);
                    let z = Tensor::zeros(dims, DType::F32, ctx.attention_mask.device())?;
                    keys.push(z.clone());
                    values.push(z);
                }
            }
        }
        Ok(Some(KvPrefix {
            key: self.join(&keys)?,
            value: self.join(&values)?,
        }))
    }

    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        // Reached only through a caller that bypasses `project`: each group on its rows.
        if let Some(h) = self.single() {
            return h.linear(site, x, next);
        }
        let parts = self
            .groups
            .iter()
            .zip(self.split(x)?)
            .map(|(g, x)| self.hooks_of(g).linear(site, &x, next))
            .collect::<Result<Vec<_>>>()?;
        self.join(&parts)
    }

    fn project(&self, site: SiteId, x: &Tensor, frozen: &FrozenLinear) -> Result<Tensor> {
        if let Some(h) = self.single() {
            return h.project(site, x, frozen);
        }
        let biases: Vec<Option<Tensor>> = self
            .groups
            .iter()
            .map(|g| self.hooks_of(g).bias(site))
            .collect();
        // One frozen product for every row; a group with a replacement bias adds its own.
        let replaced = biases.iter().any(|b| b.is_some());
        let base = if replaced {
            frozen.forward_with_bias(x, None)?
        } else {
            frozen.forward(x)?
        };
        let bases = self.split(&base)?;
        let mut parts = Vec::with_capacity(self.groups.len());
        for (((g, x), base), bias) in self
            .groups
            .iter()
            .zip(self.split(x)?)
            .zip(bases)
            .zip(biases)
        {
            let base = match (replaced, bias.as_ref().or(frozen.bias())) {
                (true, Some(b)) => base.broadcast_add(b)?,
                _ => base,
            };
            let rows_input = x.id();
            let next = |input: &Tensor| -> Result<Tensor> {
                if input.id() == rows_input {
                    Ok(base.clone())
                } else {
                    match &bias {
                        Some(b) => frozen.forward_with_bias(input, Some(b)),
                        None => frozen.forward(input),
                    }
                }
            };
            parts.push(self.hooks_of(g).linear(site, &x, &next)?);
        }
        self.join(&parts)
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        // Per-row biases are applied by `project` and `norm`; only a single group has one bias.
        self.single().and_then(|h| h.bias(site))
    }

    fn norm_weight(&self, site: SiteId) -> Option<Tensor> {
        self.single().and_then(|h| h.norm_weight(site))
    }

    fn norm(&self, site: SiteId, x: &Tensor, frozen: &NormFn) -> Result<Tensor> {
        if let Some(h) = self.single() {
            return h.norm(site, x, frozen);
        }
        let replacements: Vec<(Option<Tensor>, Option<Tensor>)> = self
            .groups
            .iter()
            .map(|g| {
                let h = self.hooks_of(g);
                (h.norm_weight(site), h.bias(site))
            })
            .collect();
        if replacements.iter().all(|(w, b)| w.is_none() && b.is_none()) {
            return frozen(x, None, None);
        }
        let parts = self
            .split(x)?
            .iter()
            .zip(&replacements)
            .map(|(x, (w, b))| frozen(x, w.as_ref(), b.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        self.join(&parts)
    }
}
