//! Gradients through the frozen models: a trainable prompt (prompt tuning's hook) and a trainable key/value
//! prefix (prefix tuning's hook) receive the gradient that central finite differences measure, and no frozen
//! parameter ever gets one. Also checks that the forward pass calls the hooks at every site of the spec.

use std::collections::BTreeSet;
use std::sync::Mutex;

use candle_core::{Device, Tensor, Var};
use peft_core::hooks::{Ctx, Hooks, KvPrefix, LinearFn, NoHooks};
use peft_core::model::{BaseModel, Batch};
use peft_core::spec::{SiteId, SiteKind};

const PROMPT: usize = 3;

/// A seeded `N(0, std)` tensor, so that every run checks the same numbers.
fn randn(seed: u64, std: f32, shape: &[usize], dev: &Device) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let unit = rand_distr::Normal::new(0f32, 1.0).unwrap();
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| std * rng.sample(unit)).collect();
    Tensor::from_vec(values, shape, dev).unwrap()
}

/// Prompt tuning: prepends a trainable `[1, P, hidden]` prompt to the word embeddings. With `recompute`, the
/// hooks say that they touch no projection, so the models run their MLP blocks recomputed in the backward.
struct Prompt {
    var: Var,
    recompute: bool,
}

impl Hooks for Prompt {
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> peft_core::Result<Tensor> {
        let (b, _, h) = x.dims3()?;
        let prompt = self.var.as_tensor().broadcast_as((b, PROMPT, h))?;
        ctx.prepend_virtual_tokens(PROMPT)?;
        Ok(Tensor::cat(&[&prompt, &x], 1)?)
    }

    fn touches(&self, _site: SiteId) -> bool {
        !self.recompute
    }
}

/// Prefix tuning: the same trainable key/value prefix `[1, kv_heads, P, head_dim]` in every layer; `recompute`
/// as for [`Prompt`].
struct Prefix {
    key: Var,
    value: Var,
    recompute: bool,
}

impl Hooks for Prefix {
    fn attention_prefix(&self, _layer: usize, _ctx: &Ctx) -> peft_core::Result<Option<KvPrefix>> {
        Ok(Some(KvPrefix {
            key: self.key.as_tensor().clone(),
            value: self.value.as_tensor().clone(),
        }))
    }

    fn touches(&self, _site: SiteId) -> bool {
        !self.recompute
    }
}

/// The gradient of the recomputed blocks against the composed ones': the same up to the order of sums.
fn assert_same_gradient(recomputed: &Tensor, composed: &Tensor) {
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (a, b) = (values(recomputed), values(composed));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = peft_testing::max_diff(&a, &b);
    assert!(scale > 1e-3, "the gradient is near zero ({scale})");
    assert!(
        diff <= 1e-5 * scale,
        "recomputed blocks give a gradient {diff} away from the composed ones' (scale {scale})"
    );
}

fn batch(dev: &Device) -> Batch {
    let ids = Tensor::new(&[[5u32, 9, 14, 3, 7], [21, 8, 2, 0, 0]], dev).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]], dev).unwrap();
    Batch::new(ids, mask).unwrap()
}

/// A smooth scalar of the log-probabilities: a fixed random weighting, scaled so the loss is of order one.
fn loss(model: &dyn BaseModel, hooks: &dyn Hooks, weights: &Tensor) -> Tensor {
    let out = model.forward(&batch(model.device()), hooks).unwrap();
    let logp = peft_kernels::log_softmax_last_dim(&model.logits(&out.hidden).unwrap()).unwrap();
    (logp * weights).unwrap().sum_all().unwrap()
}

fn loss_weights(model: &dyn BaseModel, seq: usize) -> Tensor {
    let n = 2 * seq * model.spec().vocab_size;
    randn(
        100,
        1.0 / (n as f32).sqrt(),
        &[2, seq, model.spec().vocab_size],
        model.device(),
    )
}

/// Compares the analytic gradient of `var` with central differences on a few elements.
fn check_finite_differences(
    model: &dyn BaseModel,
    hooks: &dyn Hooks,
    var: &Var,
    weights: &Tensor,
    analytic: &Tensor,
) {
    let h = 1e-2f32;
    let base = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let analytic = analytic.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let n = base.len();
    let mut largest = 0f32;
    for i in [0, 1, n / 3, n / 2 + 1, n - 1] {
        let at = |delta: f32| {
            let mut v = base.clone();
            v[i] += delta;
            var.set(&Tensor::from_vec(v, var.shape(), var.device()).unwrap())
                .unwrap();
            loss(model, hooks, weights).to_scalar::<f32>().unwrap()
        };
        let numeric = (at(h) - at(-h)) / (2. * h);
        let a = analytic[i];
        largest = largest.max(a.abs());
        println!("element {i}: analytic {a:.6e}, finite difference {numeric:.6e}");
        let tol = 1e-2 * a.abs().max(numeric.abs()) + 2e-4;
        assert!(
            (a - numeric).abs() <= tol,
            "element {i}: analytic {a} vs finite difference {numeric}"
        );
    }
    var.set(&Tensor::from_vec(base, var.shape(), var.device()).unwrap())
        .unwrap();
    assert!(
        largest > 1e-3,
        "the checked gradients are all near zero ({largest}): the check proves nothing"
    );
}

fn assert_no_frozen_gradient(model: &dyn BaseModel, grads: &candle_core::backprop::GradStore) {
    for (name, t) in model.parameters() {
        assert!(
            grads.get(&t).is_none(),
            "frozen parameter {name} received a gradient"
        );
    }
    assert!(
        grads
            .get(&model.lm_head().unwrap().weight().unwrap())
            .is_none(),
        "the frozen LM head received a gradient"
    );
}

fn prompt_gradient(model: &dyn BaseModel) {
    let dev = model.device().clone();
    let h = model.spec().hidden_size;
    let prompt = Var::from_tensor(&randn(1, 0.5, &[1, PROMPT, h], &dev)).unwrap();
    let weights = loss_weights(model, PROMPT + 5);
    let mut gradients = Vec::new();
    for recompute in [false, true] {
        let hooks = Prompt {
            var: prompt.clone(),
            recompute,
        };
        let grads = loss(model, &hooks, &weights).backward().unwrap();
        let g = grads
            .get(prompt.as_tensor())
            .expect("the prompt receives a gradient")
            .clone();
        assert_no_frozen_gradient(model, &grads);
        check_finite_differences(model, &hooks, &prompt, &weights, &g);
        gradients.push(g);
    }
    assert_same_gradient(&gradients[1], &gradients[0]);
}

fn prefix_gradient(model: &dyn BaseModel) {
    let dev = model.device().clone();
    let spec = model.spec();
    let shape = [1, spec.num_kv_heads, PROMPT, spec.head_dim];
    let key = Var::from_tensor(&randn(2, 1.0, &shape, &dev)).unwrap();
    let value = Var::from_tensor(&randn(3, 1.0, &shape, &dev)).unwrap();
    let weights = loss_weights(model, 5);
    let mut gradients = Vec::new();
    for recompute in [false, true] {
        let hooks = Prefix {
            key: key.clone(),
            value: value.clone(),
            recompute,
        };
        let grads = loss(model, &hooks, &weights).backward().unwrap();
        assert_no_frozen_gradient(model, &grads);
        for var in [&key, &value] {
            let g = grads
                .get(var.as_tensor())
                .expect("the prefix receives a gradient")
                .clone();
            check_finite_differences(model, &hooks, var, &weights, &g);
            gradients.push(g);
        }
    }
    assert_same_gradient(&gradients[2], &gradients[0]);
    assert_same_gradient(&gradients[3], &gradients[1]);
}

#[test]
fn gpt2_prompt_gradient_matches_finite_differences() {
    prompt_gradient(&peft_models::tiny::gpt2(11));
}

#[test]
fn llama_prompt_gradient_matches_finite_differences() {
    prompt_gradient(&peft_models::tiny::llama(12));
}

#[test]
fn gpt2_prefix_gradient_matches_finite_differences() {
    prefix_gradient(&peft_models::tiny::gpt2(13));
}

#[test]
fn llama_prefix_gradient_matches_finite_differences() {
    prefix_gradient(&peft_models::tiny::llama(14));
}

/// Records the sites the model calls the hooks at.
#[derive(Default)]
struct Visits {
    linear: Mutex<BTreeSet<SiteId>>,
    bias: Mutex<BTreeSet<SiteId>>,
}

impl Hooks for Visits {
    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> peft_core::Result<Tensor> {
        self.linear.lock().unwrap().insert(site);
        next(x)
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        self.bias.lock().unwrap().insert(site);
        None
    }
}

fn every_site_is_hooked(model: &dyn BaseModel) {
    let visits = Visits::default();
    let hooked = model
        .forward(&batch(model.device()), &visits)
        .unwrap()
        .hidden;
    let plain = model
        .forward(&batch(model.device()), &NoHooks)
        .unwrap()
        .hidden;
    let diff = (hooked - plain)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    for (id, site) in model.spec().iter_sites() {
        let seen = match site.kind {
            SiteKind::Linear { .. } => visits.linear.lock().unwrap().contains(&id),
            SiteKind::Norm { .. } => visits.bias.lock().unwrap().contains(&id),
        };
        assert!(
            seen,
            "the forward pass never called the hooks at {}",
            site.name
        );
    }
}

#[test]
fn gpt2_calls_the_hooks_at_every_site() {
    every_site_is_hooked(&peft_models::tiny::gpt2(0));
}

#[test]
fn llama_calls_the_hooks_at_every_site() {
    every_site_is_hooked(&peft_models::tiny::llama(0));
}

#[test]
fn a_norm_bias_hook_changes_the_output_and_gets_the_gradient() {
    // BitFit's path on LLaMA: RMSNorm has no frozen bias, a hook's bias is added.
    struct NormBias(Var, SiteId);
    impl Hooks for NormBias {
        fn bias(&self, site: SiteId) -> Option<Tensor> {
            (site == self.1).then(|| self.0.as_tensor().clone())
        }
    }
    let model = peft_models::tiny::llama(1);
    let site = model
        .spec()
        .find_site("model.layers.0.post_attention_layernorm")
        .unwrap();
    let bias =
        Var::from_tensor(&Tensor::full(0.1f32, model.spec().hidden_size, model.device()).unwrap())
            .unwrap();
    let hooks = NormBias(bias.clone(), site);
    let weights = loss_weights(&model, 5);
    let with = loss(&model, &hooks, &weights);
    let without = loss(&model, &NoHooks, &weights);
    assert_ne!(
        with.to_scalar::<f32>().unwrap(),
        without.to_scalar::<f32>().unwrap()
    );
    let grads = with.backward().unwrap();
    assert!(grads.get(bias.as_tensor()).is_some());
    assert_no_frozen_gradient(&model, &grads);
}
