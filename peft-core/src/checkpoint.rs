//! Gradient checkpointing (transformers' `gradient_checkpointing`): the backward keeps only each layer's input
//! instead of everything each layer computed, and runs every layer a second time to get its gradients.
//!
//! A training step runs the task's forward and loss twice under [`Checkpointing`] hooks:
//! 1. **Record**: the layer stack runs with its graph cut at every layer's input; the inputs are kept and the
//!    stack's output becomes a fresh variable. [`Checkpointing::backward`] runs the loss's backward, which stops
//!    at that variable: gradients of everything after the stack (final norm, head, loss) and the gradient at
//!    the stack's output.
//! 2. **Replay**: the same forward again. This time the layer stack runs backwards: layer `i` is recomputed
//!    from its kept input, and the backward of `<output, gradient at the output>` gives the gradients of its
//!    parameters and of its input, which is the next (lower) layer's output gradient. Last, the same product
//!    with the stack's input carries the gradient into whatever precedes the layers (virtual tokens, their
//!    encoder). What runs after the stack is computed again but nothing there tracks a gradient.
//!
//! Only one layer's graph is alive at a time. Dropout masks are drawn from a stream seeded per layer
//! ([`crate::tuner::dropout::replayable`]), so a recomputed layer drops what its first run dropped. The
//! gradients equal the unchecked backward's up to the order in which a shared parameter's per-layer
//! contributions are summed.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use peft_core::checkpoint::Checkpointing;
//! use peft_core::hooks::{Hooks, NoHooks};
//! // A "model" of three layers h -> h * w_i, and a loss sum(out^2).
//! let dev = Device::Cpu;
//! let w: Vec<Var> = (1..=3).map(|i| Var::new(&[i as f32], &dev).unwrap()).collect();
//! let x = Tensor::new(&[1f32], &dev).unwrap();
//! let loss_under = |hooks: &dyn Hooks| {
//!     let out = hooks
//!         .layers(3, x.clone(), &mut |i, h| Ok(h.mul(w[i].as_tensor())?))
//!         .unwrap();
//!     out.sqr().unwrap().sum_all().unwrap()
//! };
//! let reference = loss_under(&NoHooks).backward().unwrap();
//! let vars: Vec<Tensor> = w.iter().map(|v| v.as_tensor().clone()).collect();
//! let ck = Checkpointing::new(&NoHooks, 0, &vars);
//! let mut grads = ck.backward(&loss_under(&ck)).unwrap();
//! assert!(ck.replay_pending());
//! loss_under(&ck); // the replay
//! grads.extend(ck.take_gradients().unwrap()).unwrap();
//! for v in &w {
//!     let (a, b) = (grads.get(v.as_tensor()).unwrap(), reference.get(v.as_tensor()).unwrap());
//!     assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
//! }
//! ```

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{PeftError, Result};
use crate::frozen::FrozenLinear;
use crate::hooks::{Ctx, Hooks, KvPrefix, LayerFn, LinearFn, NormFn};
use crate::spec::SiteId;
use crate::tuner::dropout::replayable;

/// Where a checkpointed step is.
enum Phase {
    /// Before the first forward.
    Record,
    /// After the first forward: each layer's input, and the stack's output as the variable the loss reached.
    Recorded { inputs: Vec<Tensor>, output: Var },
    /// After the loss's backward: the gradient at the stack's output, for the replay.
    Replay {
        inputs: Vec<Tensor>,
        output: Tensor,
        grad: Tensor,
    },
    /// After the replay: the gradients of the layers' parameters and of what precedes them.
    Replayed(GradStore),
    /// Between phases (while the layers run), or after the gradients were taken.
    Empty,
}

/// Hooks that run the model's layers checkpointed and pass every other call to the hooks they wrap (see the
/// module's documentation for the two passes).
pub struct Checkpointing<'h> {
    inner: &'h dyn Hooks,
    seed: u64,
    variables: Vec<Tensor>,
    phase: Mutex<Phase>,
}

impl<'h> Checkpointing<'h> {
    /// Checkpointing around `inner` (the adapter's hooks) for the gradients of `variables` (the trained
    /// tensors; the replay keeps only theirs); `seed` seeds the dropout masks of this step's layers (one stream
    /// per layer), so it should differ from step to step.
    pub fn new(inner: &'h dyn Hooks, seed: u64, variables: &[Tensor]) -> Self {
        Checkpointing {
            inner,
            seed,
            variables: variables.to_vec(),
            phase: Mutex::new(Phase::Record),
        }
    }

    /// Moves the variables' gradients from one layer's `grads` into `total`, dropping the rest: candle also
    /// leaves a gradient for every untracked operand of a product (a broadcast norm weight, a rotary table),
    /// each as large as the activation, and keeping those for every layer would cost what checkpointing saves.
    fn keep_variables(&self, mut grads: GradStore, total: &mut GradStore) -> Result<()> {
        for v in &self.variables {
            if let Some(g) = grads.remove(v) {
                let g = match total.remove(v) {
                    Some(sum) => (sum + g.detach())?,
                    None => g.detach(),
                };
                total.insert(v, g);
            }
        }
        Ok(())
    }

    fn take(&self) -> Phase {
        std::mem::replace(
            &mut self.phase.lock().unwrap_or_else(|e| e.into_inner()),
            Phase::Empty,
        )
    }

    fn put(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    /// The backward of `loss` (computed under these hooks): the gradients of everything after the layer stack.
    /// When the stack ran, its output's gradient is kept for the replay ([`Checkpointing::replay_pending`]).
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        match self.take() {
            Phase::Recorded { inputs, output } => {
                let grad = match grads.remove(output.as_tensor()) {
                    Some(g) => g.detach(),
                    // The loss does not depend on the layers' output: nothing flows into them.
                    None => output.as_tensor().zeros_like()?,
                };
                self.put(Phase::Replay {
                    inputs,
                    output: output.as_tensor().detach(),
                    grad,
                });
            }
            other => self.put(other),
        }
        Ok(grads)
    }

    /// Whether the forward must run again (the replay) before [`Checkpointing::take_gradients`].
    pub fn replay_pending(&self) -> bool {
        matches!(
            *self.phase.lock().unwrap_or_else(|e| e.into_inner()),
            Phase::Replay { .. }
        )
    }

    /// The replay's gradients: every variable the layers, and what runs before them, reached.
    pub fn take_gradients(&self) -> Result<GradStore> {
        match self.take() {
            Phase::Replayed(grads) => Ok(grads),
            other => {
                self.put(other);
                Err(PeftError::Unsupported(
                    "gradient checkpointing: the gradients were asked for before the replay ran (run the \
                     forward again after Checkpointing::backward)"
                        .into(),
                ))
            }
        }
    }

    /// The first pass: each layer on a detached copy of its input; the inputs are kept.
    fn record(&self, count: usize, x: &Tensor, layer: &mut LayerFn) -> Result<Tensor> {
        let mut inputs = Vec::with_capacity(count);
        let mut h = x.detach();
        for i in 0..count {
            inputs.push(h.clone());
            h = replayable(layer_seed(self.seed, i), || layer(i, &h))?.detach();
        }
        let output = Var::from_tensor(&h)?;
        let out = output.as_tensor().clone();
        self.put(Phase::Recorded { inputs, output });
        Ok(out)
    }

    /// The second pass: the layers backwards, each recomputed and differentiated on its own.
    fn replay(
        &self,
        x: &Tensor,
        layer: &mut LayerFn,
        inputs: Vec<Tensor>,
        output: Tensor,
        grad: Tensor,
    ) -> Result<Tensor> {
        let mut total = GradStore::default();
        let mut grad = grad;
        for (i, input) in inputs.iter().enumerate().rev() {
            let input = Var::from_tensor(input)?;
            let out = replayable(layer_seed(self.seed, i), || layer(i, input.as_tensor()))?;
            let mut grads = out.mul(&grad)?.sum_all()?.backward()?;
            drop(out);
            // Detached: candle can leave a variable's gradient tracked (built from tracked weights), and the
            // next layer's backward must not flow into this one's graph.
            grad = match grads.remove(input.as_tensor()) {
                Some(g) => g.detach(),
                None => input.as_tensor().zeros_like()?,
            };
            self.keep_variables(grads, &mut total)?;
        }
        if x.track_op() {
            self.keep_variables(x.mul(&grad)?.sum_all()?.backward()?, &mut total)?;
        }
        self.put(Phase::Replayed(total));
        Ok(output)
    }
}

/// Layer `i`'s dropout seed within a step seeded `seed` (splitmix64's mix).
fn layer_seed(seed: u64, i: usize) -> u64 {
    let mut z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Hooks for Checkpointing<'_> {
    fn touches(&self, site: SiteId) -> bool {
        self.inner.touches(site)
    }

    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.inner.embeddings(x, ctx)
    }

    fn attention_prefix(&self, layer: usize, ctx: &Ctx) -> Result<Option<KvPrefix>> {
        self.inner.attention_prefix(layer, ctx)
    }

    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        self.inner.linear(site, x, next)
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        self.inner.bias(site)
    }

    fn norm_weight(&self, site: SiteId) -> Option<Tensor> {
        self.inner.norm_weight(site)
    }

    fn project(&self, site: SiteId, x: &Tensor, frozen: &FrozenLinear) -> Result<Tensor> {
        self.inner.project(site, x, frozen)
    }

    fn norm(&self, site: SiteId, x: &Tensor, frozen: &NormFn) -> Result<Tensor> {
        self.inner.norm(site, x, frozen)
    }

    fn layers(&self, count: usize, x: Tensor, layer: &mut LayerFn) -> Result<Tensor> {
        match self.take() {
            Phase::Record => self.record(count, &x, layer),
            Phase::Replay {
                inputs,
                output,
                grad,
            } if inputs.len() == count => self.replay(&x, layer, inputs, output, grad),
            other => {
                self.put(other);
                Err(PeftError::Unsupported(format!(
                    "gradient checkpointing: a stack of {count} layers ran out of turn (a model with two \
                     stacks, or a forward run a third time); checkpointing supports one stack per forward"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::NoHooks;
    use crate::tuner::Dropout;
    use candle_core::{DType, Device};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// A stack of tanh layers `h -> tanh(h W_i) + h` over a trainable input, with a dropout inside each.
    struct Toy {
        input: Var,
        weights: Vec<Var>,
        dropout: Dropout,
    }

    impl Toy {
        fn new(p: f64) -> Self {
            let dev = Device::Cpu;
            let mut rng = StdRng::seed_from_u64(4);
            let mut randn = |shape: (usize, usize)| {
                use rand::Rng;
                let v: Vec<f32> = (0..shape.0 * shape.1)
                    .map(|_| rng.random::<f32>() - 0.5)
                    .collect();
                Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap()
            };
            Toy {
                input: randn((3, 5)),
                weights: (0..4).map(|_| randn((5, 5))).collect(),
                dropout: Dropout::new(p, StdRng::seed_from_u64(9)),
            }
        }

        fn loss(&self, hooks: &dyn Hooks) -> Result<Tensor> {
            let x = (self.input.as_tensor() * 2.0)?;
            let out = hooks.layers(4, x, &mut |i, h| {
                let dropped = self.dropout.apply(h)?;
                Ok((dropped.matmul(self.weights[i].as_tensor())?.tanh()? + h)?)
            })?;
            Ok(out.sqr()?.sum_all()?)
        }

        fn vars(&self) -> Vec<&Var> {
            std::iter::once(&self.input).chain(&self.weights).collect()
        }
    }

    fn checkpointed(toy: &Toy, seed: u64) -> (f32, GradStore) {
        let vars: Vec<Tensor> = toy.vars().iter().map(|v| v.as_tensor().clone()).collect();
        let ck = Checkpointing::new(&NoHooks, seed, &vars);
        let loss = toy.loss(&ck).unwrap();
        let mut grads = ck.backward(&loss).unwrap();
        assert!(ck.replay_pending());
        let again = toy.loss(&ck).unwrap();
        // The replay's own loss is computed from the recorded output, untracked.
        assert!(!again.track_op());
        grads.extend(ck.take_gradients().unwrap()).unwrap();
        (loss.to_scalar().unwrap(), grads)
    }

    fn values(grads: &GradStore, v: &Var) -> Vec<f32> {
        grads
            .get(v.as_tensor())
            .expect("a gradient for every variable")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn gradients_equal_the_unchecked_backward_without_dropout() {
        let toy = Toy::new(0.0);
        let reference = toy.loss(&NoHooks).unwrap();
        let expected = reference.backward().unwrap();
        let (loss, grads) = checkpointed(&toy, 1);
        assert_eq!(loss, reference.to_scalar::<f32>().unwrap());
        for v in toy.vars() {
            for (a, b) in values(&grads, v).iter().zip(values(&expected, v)) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn a_replayed_layer_drops_what_its_first_run_dropped() {
        // With the same seed, the replay's masks equal the record's, so the gradients are those of the
        // recorded forward: the same as an unchecked forward run under the same per-layer streams.
        let toy = Toy::new(0.5);
        let (loss, grads) = checkpointed(&toy, 11);
        let reference = {
            let x = (toy.input.as_tensor() * 2.0).unwrap();
            let mut h = x;
            for i in 0..4 {
                h = replayable(layer_seed(11, i), || {
                    let dropped = toy.dropout.apply(&h).unwrap();
                    (dropped
                        .matmul(toy.weights[i].as_tensor())
                        .unwrap()
                        .tanh()
                        .unwrap()
                        + &h)
                        .unwrap()
                });
            }
            h.sqr().unwrap().sum_all().unwrap()
        };
        assert_eq!(loss, reference.to_scalar::<f32>().unwrap());
        let expected = reference.backward().unwrap();
        for v in toy.vars() {
            for (a, b) in values(&grads, v).iter().zip(values(&expected, v)) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
        // Another step's seed drops other values.
        assert_ne!(checkpointed(&toy, 12).0, loss);
    }

    #[test]
    fn out_of_turn_calls_are_refused() {
        let toy = Toy::new(0.0);
        let ck = Checkpointing::new(&NoHooks, 0, &[]);
        assert!(ck.take_gradients().is_err());
        toy.loss(&ck).unwrap();
        // A second stack before the backward.
        let err = toy.loss(&ck).unwrap_err().to_string();
        assert!(err.contains("out of turn"), "{err}");
        let zero = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        assert!(ck.backward(&zero).is_ok());
    }
}
