//! Unit tests of the Gemma-3 model, kept beside it (as `llama/tests.rs`).

use super::*;
use candle_core::{DType, Var};
use peft_core::hooks::Ctx;
use peft_core::hooks::{KvPrefix, LinearFn, NoHooks};
use peft_core::spec::SiteKind;

use crate::attention::causal_bias;
use crate::decoding::DecoderPass;
use peft_core::kv_cache::KvCache;

use super::mask::SlidingMasks;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

fn model_with(edit: impl FnOnce(&mut Gemma3Config)) -> Gemma3 {
    let mut cfg = crate::tiny::gemma3_config();
    edit(&mut cfg);
    Gemma3::from_weights(&cfg, &crate::tiny::gemma3_weights(1), "t").unwrap()
}

fn hidden(m: &Gemma3, ids: &[u32], hooks: &dyn Hooks) -> Tensor {
    m.forward(&Batch::single(ids, m.device()).unwrap(), hooks)
        .unwrap()
        .hidden
}

const IDS: [u32; 8] = [5, 17, 42, 8, 99, 0, 63, 12];

#[test]
fn spec_has_every_site_with_its_role() {
    let m = crate::tiny::gemma3(0);
    let spec = m.spec();
    assert_eq!(spec.architecture, "gemma3_text");
    // 7 projections and 6 norms per layer, and the final norm.
    assert_eq!(spec.sites.len(), 13 * spec.num_layers + 1);
    let role = |n: &str| spec.site(spec.find_site(n).unwrap()).role;
    let p = "model.layers.1";
    assert_eq!(role(&format!("{p}.self_attn.q_proj")), Role::Query);
    assert_eq!(role(&format!("{p}.self_attn.q_norm")), Role::Other);
    assert_eq!(role(&format!("{p}.self_attn.k_norm")), Role::Other);
    assert_eq!(role(&format!("{p}.input_layernorm")), Role::AttentionNorm);
    assert_eq!(
        role(&format!("{p}.post_attention_layernorm")),
        Role::AttentionNorm
    );
    assert_eq!(
        role(&format!("{p}.pre_feedforward_layernorm")),
        Role::MlpNorm
    );
    assert_eq!(
        role(&format!("{p}.post_feedforward_layernorm")),
        Role::MlpNorm
    );
    assert_eq!(role("model.norm"), Role::FinalNorm);
    let q = spec.site(spec.find_site(&format!("{p}.self_attn.q_proj")).unwrap());
    assert_eq!(
        q.kind,
        SiteKind::Linear {
            in_features: 32,
            out_features: 4 * 16,
            fan_in_fan_out: false
        }
    );
    assert!(matches!(
        spec.site(spec.find_site(&format!("{p}.self_attn.k_norm")).unwrap())
            .kind,
        SiteKind::Norm { .. }
    ));
    assert_eq!((spec.head_dim, spec.num_kv_heads), (16, 2));
    let total: usize = m.parameters().iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(spec.num_parameters, total);
    assert!(!m.parameters().iter().any(|(n, _)| n == "lm_head.weight"));
    assert_eq!(m.sliding_layers(), vec![true, false]);
}

#[test]
fn embeddings_are_scaled_by_the_root_of_the_hidden_size() {
    let m = crate::tiny::gemma3(0);
    let ids = Tensor::new(&[3u32, 7], m.device()).unwrap();
    let table = crate::tiny::gemma3_weights(0)
        .get_any("model.embed_tokens.weight")
        .unwrap();
    let rows = table.index_select(&ids, 0).unwrap();
    let expected = (rows * (32f64.sqrt() as f32 as f64)).unwrap();
    assert!(max_diff(&m.embed_tokens(&ids).unwrap(), &expected) < 1e-6);
    // The head is the unscaled table.
    let x = Tensor::randn(0f32, 1., (2, 32), m.device()).unwrap();
    let head = m.lm_head().unwrap().forward(&x).unwrap();
    assert!(max_diff(&head, &x.matmul(&table.t().unwrap()).unwrap()) < 1e-5);
}

#[test]
fn the_window_hides_keys_only_from_far_queries() {
    // Window 3 against a window wider than the sequence: positions 0..3 see the same keys in both, later
    // ones lose the keys more than 2 positions back.
    let narrow = model_with(|_| {});
    let wide = model_with(|c| c.sliding_window = Some(64));
    let (a, b) = (
        hidden(&narrow, &IDS, &NoHooks),
        hidden(&wide, &IDS, &NoHooks),
    );
    let w = crate::tiny::GEMMA3_WINDOW;
    assert!(max_diff(&a.narrow(1, 0, w).unwrap(), &b.narrow(1, 0, w).unwrap()) < 1e-6);
    for t in w..IDS.len() {
        let d = max_diff(&a.narrow(1, t, 1).unwrap(), &b.narrow(1, t, 1).unwrap());
        assert!(d > 1e-3, "position {t} unchanged by the window ({d})");
    }
}

#[test]
fn window_bias_counts_absolute_positions_after_a_prefix() {
    let dev = Device::Cpu;
    // Two prefix keys, three queries at positions 2, 3, 4, window 2: query 2 sees keys 1, 2; query 4 sees 3, 4.
    let positions = window_positions(&[vec![1.; 5]]);
    let b = window_bias(&positions, 3, 5, 2, &dev)
        .unwrap()
        .reshape((3, 5))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let seen: Vec<Vec<usize>> = b
        .iter()
        .map(|row| (0..5).filter(|&k| row[k] == 0.0).collect())
        .collect();
    // The window bias alone does not hide the future: causality comes from the causal bias it is added to.
    assert_eq!(seen[0], vec![1, 2, 3, 4]);
    assert_eq!(seen[1], vec![2, 3, 4]);
    assert_eq!(seen[2], vec![3, 4]);
    // Added to the causal bias, each query sees exactly its window.
    let causal = causal_bias(&Tensor::ones((1, 5), DType::F32, &dev).unwrap(), 3).unwrap();
    let both = causal
        .broadcast_add(&window_bias(&positions, 3, 5, 2, &dev).unwrap())
        .unwrap()
        .reshape((3, 5))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let seen: Vec<Vec<usize>> = both
        .iter()
        .map(|row| (0..5).filter(|&k| row[k] == 0.0).collect())
        .collect();
    assert_eq!(seen, vec![vec![1, 2], vec![2, 3], vec![3, 4]]);
}

#[test]
fn padding_does_not_change_real_positions() {
    let m = crate::tiny::gemma3(2);
    let dev = m.device().clone();
    let ids = Tensor::new(&[[7u32, 8, 9, 10, 11], [7, 8, 9, 0, 0]], &dev).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]], &dev).unwrap();
    let padded = m
        .forward(&Batch::new(ids, mask).unwrap(), &NoHooks)
        .unwrap()
        .hidden;
    let short = hidden(&m, &[7, 8, 9], &NoHooks);
    let row = padded.narrow(0, 1, 1).unwrap().narrow(1, 0, 3).unwrap();
    assert!(max_diff(&row, &short) < 1e-5);
}

/// A LoRA-like hook: `next(x) + x A^T B^T` at one site.
struct LowRank {
    site: SiteId,
    a: Var,
    b: Var,
}

impl Hooks for LowRank {
    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> peft_core::Result<Tensor> {
        let y = next(x)?;
        if site != self.site {
            return Ok(y);
        }
        let delta = x
            .broadcast_matmul(&self.a.as_tensor().t()?)?
            .broadcast_matmul(&self.b.as_tensor().t()?)?;
        Ok((y + delta)?)
    }
}

#[test]
fn gradient_reaches_a_low_rank_hook_on_every_projection_kind() {
    let m = crate::tiny::gemma3(0);
    let spec = m.spec();
    for name in [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.1.self_attn.v_proj",
        "model.layers.1.mlp.down_proj",
    ] {
        let site = spec.find_site(name).unwrap();
        let SiteKind::Linear {
            in_features,
            out_features,
            ..
        } = spec.site(site).kind
        else {
            panic!("{name} is a linear site")
        };
        let dev = m.device();
        let hooks = LowRank {
            site,
            a: Var::randn(0f32, 0.5, (2, in_features), dev).unwrap(),
            b: Var::randn(0f32, 0.5, (out_features, 2), dev).unwrap(),
        };
        let out = hidden(&m, &IDS, &hooks);
        assert!(max_diff(&out, &hidden(&m, &IDS, &NoHooks)) > 1e-4, "{name}");
        let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&hooks.a, &hooks.b] {
            let g = grads.get(v.as_tensor()).expect("a gradient");
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: gradient norm {norm}"
            );
        }
    }
}

/// Replaces one norm's raw weight `w` (LayerNorm tuning).
struct NormWeight(SiteId, Var);

impl Hooks for NormWeight {
    fn norm_weight(&self, site: SiteId) -> Option<Tensor> {
        (site == self.0).then(|| self.1.as_tensor().clone())
    }
}

#[test]
fn a_replacement_norm_weight_is_the_raw_w_and_matches_finite_differences() {
    let m = crate::tiny::gemma3(4);
    let weights = crate::tiny::gemma3_weights(4);
    for name in [
        "model.layers.0.self_attn.q_norm",
        "model.layers.1.post_feedforward_layernorm",
    ] {
        let site = m.spec().find_site(name).unwrap();
        let w = weights.get_any(&format!("{name}.weight")).unwrap();
        // The checkpoint's own `w` handed back by the hook changes nothing: it is used as `1 + w`.
        let same = NormWeight(site, Var::from_tensor(&w).unwrap());
        let frozen = hidden(&m, &IDS, &NoHooks);
        assert!(max_diff(&hidden(&m, &IDS, &same), &frozen) < 1e-6, "{name}");

        // d loss / d w' against central differences, loss = sum(hidden * r) for a fixed r.
        let r = Tensor::randn(0f32, 1., frozen.dims(), m.device()).unwrap();
        let loss = |h: &dyn Hooks| (hidden(&m, &IDS, h) * &r).unwrap().sum_all().unwrap();
        let grads = loss(&same).backward().unwrap();
        let grad = grads
            .get(same.1.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = w.to_vec1::<f32>().unwrap();
        let eps = 1e-2f32;
        for i in [0, 3] {
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::new(v.as_slice(), m.device()).unwrap();
                let h = NormWeight(site, Var::from_tensor(&t).unwrap());
                loss(&h).to_scalar::<f32>().unwrap() as f64
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let analytic = grad[i] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-2 * analytic.abs().max(1.0),
                "{name}[{i}]: numeric {numeric}, backward {analytic}"
            );
        }
    }
}

#[test]
fn final_softcap_bounds_the_logits() {
    let m = model_with(|c| c.final_logit_softcapping = Some(2.0));
    let h = hidden(&m, &IDS, &NoHooks);
    let capped = m.logits(&h).unwrap();
    let raw = m.lm_head().unwrap().forward(&h).unwrap();
    assert!(max_diff(&capped, &softcap(&raw, 2.0).unwrap()) < 1e-6);
    let max = capped
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max <= 2.0, "{max}"); // tanh rounds to 1 in f32 for large logits
    let some = m.logits_of(&h, &[4, 9]).unwrap();
    let cols = Tensor::new(&[4u32, 9], m.device()).unwrap();
    assert!(max_diff(&some, &capped.index_select(&cols, 2).unwrap()) < 1e-6);
}

#[test]
fn config_errors_name_the_setting() {
    let w = crate::tiny::gemma3_weights(0);
    let build = |edit: &dyn Fn(&mut Gemma3Config)| {
        let mut cfg = crate::tiny::gemma3_config();
        edit(&mut cfg);
        Gemma3::from_weights(&cfg, &w, "t")
            .err()
            .map(|e| e.to_string())
    };
    type Edit = dyn Fn(&mut Gemma3Config);
    let cases: [(&Edit, &str); 6] = [
        (
            &|c| c.layer_types = Some(vec!["sliding_attention".into()]),
            "layer_types",
        ),
        (
            &|c| c.layer_types = Some(vec!["chunked_attention".into(), "full_attention".into()]),
            "chunked_attention",
        ),
        (&|c| c.sliding_window = None, "sliding_window"),
        (
            &|c| c.use_bidirectional_attention = Some(true),
            "use_bidirectional_attention",
        ),
        (&|c| c.query_pre_attn_scalar = 0.0, "query_pre_attn_scalar"),
        (
            &|c| c.final_logit_softcapping = Some(-1.0),
            "final_logit_softcapping",
        ),
    ];
    for (edit, says) in cases {
        let err = build(edit).expect("refused");
        assert!(err.contains(says), "{says}: {err}");
    }
}

#[test]
fn layer_types_derive_from_the_pattern_and_rope_parameters_are_read() {
    let mut cfg: Gemma3Config = serde_json::from_str(r#"{"num_hidden_layers": 7}"#).unwrap();
    let kinds = cfg.layer_kinds().unwrap();
    let full: Vec<usize> = (0..7)
        .filter(|&i| kinds[i] == Gemma3Attention::Full)
        .collect();
    assert_eq!(full, vec![5]);
    cfg.sliding_window_pattern = Some(2);
    let kinds = cfg.layer_kinds().unwrap();
    assert_eq!(kinds[1], Gemma3Attention::Full);
    assert_eq!(kinds[2], Gemma3Attention::Sliding);

    let mut json = serde_json::json!({"rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 123.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 45.0}}});
    folder::normalise_rope(&mut json).unwrap();
    let cfg: Gemma3Config = serde_json::from_value(json).unwrap();
    assert_eq!((cfg.rope_theta, cfg.rope_local_base_freq), (123.0, 45.0));
    let mut linear = serde_json::json!({"rope_scaling": {"rope_type": "linear", "factor": 8.0}});
    let err = folder::normalise_rope(&mut linear).unwrap_err();
    assert!(err.contains("linear"), "{err}");
}

/// The same key/value prefix for every layer.
struct Prefix(KvPrefix);

impl Hooks for Prefix {
    fn attention_prefix(&self, _layer: usize, _ctx: &Ctx) -> peft_core::Result<Option<KvPrefix>> {
        Ok(Some(self.0.clone()))
    }
}

#[test]
fn sliding_layers_hide_prefix_positions_outside_the_window() {
    // Both layers slide (window 3), so no layer shows the whole prefix: of a 4-position prefix, the tokens
    // (at positions 4..) can only ever see positions 2 and 3.
    let m = model_with(|c| {
        c.layer_types = Some(vec!["sliding_attention".into(), "sliding_attention".into()])
    });
    let dev = m.device();
    let key = Tensor::randn(0f32, 1., (1, 2, 4, 16), dev).unwrap();
    let value = Tensor::randn(0f32, 1., (1, 2, 4, 16), dev).unwrap();
    let with = |edit: &dyn Fn(&mut Vec<f32>)| {
        let mut v = value.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        edit(&mut v);
        let value = Tensor::from_vec(v, (1, 2, 4, 16), dev).unwrap();
        hidden(
            &m,
            &IDS,
            &Prefix(KvPrefix {
                key: key.clone(),
                value,
            }),
        )
    };
    let base = with(&|_| {});
    // Changing the values of prefix positions 0 and 1 (both heads) changes nothing.
    let early = with(&|v| {
        for head in 0..2 {
            for x in &mut v[head * 64..head * 64 + 32] {
                *x += 3.0;
            }
        }
    });
    assert_eq!(max_diff(&early, &base), 0.0);
    // Changing position 3 changes the first token.
    let late = with(&|v| {
        for head in 0..2 {
            for x in &mut v[head * 64 + 48..head * 64 + 64] {
                *x += 3.0;
            }
        }
    });
    assert!(
        max_diff(
            &late.narrow(1, 0, 1).unwrap(),
            &base.narrow(1, 0, 1).unwrap()
        ) > 1e-3
    );
}

// Cached decoding. The window is 4 and the sequences 10 and more, so the window hides keys from most queries.

const WINDOW: usize = 4;

/// The tiny model with a window of 4: its own layer kinds (sliding, then global), or both layers sliding.
fn windowed(both_sliding: bool) -> Gemma3 {
    model_with(|c| {
        c.sliding_window = Some(WINDOW);
        if both_sliding {
            c.layer_types = Some(vec!["sliding_attention".into(), "sliding_attention".into()]);
        }
    })
}

/// A tensor of `shape` drawn from N(0, 1) by a generator seeded with `seed`.
fn seeded(seed: u64, shape: &[usize]) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let unit = rand_distr::Normal::new(0f32, 1.0).unwrap();
    let values: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.sample(unit))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// Token ids `0 < id < VOCAB`, the same for the same seed.
fn seeded_ids(seed: u64, n: usize) -> Vec<u32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.random_range(1..crate::tiny::VOCAB as u32))
        .collect()
}

/// A batch of rows of equal length with a mask.
fn batch(ids: &[Vec<u32>], mask: &[Vec<f32>]) -> Batch {
    let dev = Device::Cpu;
    Batch::new(
        Tensor::new(ids.to_vec(), &dev).unwrap(),
        Tensor::new(mask.to_vec(), &dev).unwrap(),
    )
    .unwrap()
}

/// The prompt's pass over `prompt`, then one cached step per column of `steps` (one token for each row, all
/// real): the states of every step, `[rows, steps, hidden]`.
fn decode(m: &Gemma3, prompt: &Batch, steps: &[Vec<u32>], hooks: &dyn Hooks) -> Tensor {
    let mut cache = KvCache::new();
    m.forward_cached(prompt, &mut cache, hooks).unwrap();
    let rows = steps.len();
    let mut states = Vec::new();
    for t in 0..steps[0].len() {
        let ids: Vec<Vec<u32>> = steps.iter().map(|r| vec![r[t]]).collect();
        let step = batch(&ids, &vec![vec![1.0]; rows]);
        let out = m.forward_cached(&step, &mut cache, hooks).unwrap();
        assert_eq!(out.virtual_tokens, 0);
        states.push(out.hidden);
    }
    Tensor::cat(&states, 1).unwrap()
}

#[test]
fn cached_steps_equal_the_uncached_pass_over_the_whole_sequence() {
    let ids = seeded_ids(11, 14);
    for both in [false, true] {
        let m = windowed(both);
        assert!(m.has_kv_cache());
        let full = hidden(&m, &ids, &NoHooks);
        // The window matters here: a wide one changes the last states.
        let wide = model_with(|c| {
            c.sliding_window = Some(64);
            c.layer_types = m.config().layer_types.clone();
        });
        let last = |h: &Tensor| h.narrow(1, 13, 1).unwrap();
        assert!(max_diff(&last(&full), &last(&hidden(&wide, &ids, &NoHooks))) > 1e-3);

        let mut cache = KvCache::new();
        let prompt = m
            .forward_cached(
                &Batch::single(&ids[..5], m.device()).unwrap(),
                &mut cache,
                &NoHooks,
            )
            .unwrap();
        assert!(max_diff(&prompt.hidden, &full.narrow(1, 0, 5).unwrap()) < 1e-5);
        let steps = decode(
            &m,
            &Batch::single(&ids[..5], m.device()).unwrap(),
            &[ids[5..].to_vec()],
            &NoHooks,
        );
        let d = max_diff(&steps, &full.narrow(1, 5, 9).unwrap());
        assert!(d < 1e-5, "both sliding {both}: steps differ by {d}");
    }
}

#[test]
fn a_left_padded_cached_batch_equals_each_row_alone() {
    let m = windowed(false);
    let (a, b) = (seeded_ids(21, 16), seeded_ids(22, 11));
    // Prompts of 10 and 5 tokens, the short one left-padded; then 6 steps each.
    let mut padded = vec![0u32; 5];
    padded.extend_from_slice(&b[..5]);
    let mask_b: Vec<f32> = (0..10).map(|i| if i < 5 { 0.0 } else { 1.0 }).collect();
    let prompt = batch(&[a[..10].to_vec(), padded], &[vec![1.0; 10], mask_b]);
    let steps = decode(&m, &prompt, &[a[10..].to_vec(), b[5..].to_vec()], &NoHooks);
    for (row, ids) in [(0, &a), (1, &b)] {
        let alone = hidden(&m, ids, &NoHooks);
        let real = ids.len() - 6;
        let d = max_diff(
            &steps.narrow(0, row, 1).unwrap(),
            &alone.narrow(1, real, 6).unwrap(),
        );
        assert!(d < 1e-5, "row {row} differs from itself alone by {d}");
    }
}

#[test]
fn a_right_padded_prompt_decodes_on_from_its_own_positions() {
    // The padding sits between the prompt and the new tokens: a window counted in columns would hide the
    // short row's first tokens from its last query, one counted in positions does not.
    let m = windowed(true);
    let (a, b) = (seeded_ids(31, 14), seeded_ids(32, 8));
    let mut padded = b[..4].to_vec();
    padded.extend_from_slice(&[0; 6]);
    let mask_b: Vec<f32> = (0..10).map(|i| if i < 4 { 1.0 } else { 0.0 }).collect();
    let prompt = batch(&[a[..10].to_vec(), padded], &[vec![1.0; 10], mask_b]);
    let steps = decode(&m, &prompt, &[a[10..].to_vec(), b[4..].to_vec()], &NoHooks);
    let alone = hidden(&m, &b, &NoHooks);
    let d = max_diff(
        &steps.narrow(0, 1, 1).unwrap(),
        &alone.narrow(1, 4, 4).unwrap(),
    );
    assert!(
        d < 1e-5,
        "the right-padded row differs from itself alone by {d}"
    );
}

/// The same seeded key/value prefix for every layer.
struct SeededPrefix(KvPrefix);

impl SeededPrefix {
    fn new(len: usize) -> Self {
        SeededPrefix(KvPrefix {
            key: seeded(41, &[1, 2, len, 16]),
            value: seeded(42, &[1, 2, len, 16]),
        })
    }
}

impl Hooks for SeededPrefix {
    fn attention_prefix(&self, _layer: usize, _ctx: &Ctx) -> peft_core::Result<Option<KvPrefix>> {
        Ok(Some(self.0.clone()))
    }
}

/// Prompt tuning: fixed virtual token embeddings in front of every row.
struct Virtual(Tensor);

impl Hooks for Virtual {
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> peft_core::Result<Tensor> {
        let (rows, n, h) = self.0.dims3()?;
        let b = x.dim(0)?;
        assert_eq!(rows, 1);
        ctx.prepend_virtual_tokens(n)?;
        let v = self.0.broadcast_as((b, n, h))?.contiguous()?;
        Ok(Tensor::cat(&[&v, &x], 1)?)
    }
}

#[test]
fn cached_decoding_after_a_prefix_or_virtual_tokens_equals_the_uncached_pass() {
    let ids = seeded_ids(51, 12);
    // A prefix longer than the window (its first positions leave every window), and three virtual tokens.
    let prefix = SeededPrefix::new(6);
    let virt = Virtual(seeded(52, &[1, 3, 32]));
    let cases: [(&dyn Hooks, usize); 2] = [(&prefix, 0), (&virt, 3)];
    for both in [false, true] {
        let m = windowed(both);
        for (i, (hooks, n)) in cases.iter().enumerate() {
            let full = m
                .forward(&Batch::single(&ids, m.device()).unwrap(), *hooks)
                .unwrap();
            assert_eq!(full.virtual_tokens, *n);
            assert!(
                // The hooks change the tokens' states.
                max_diff(
                    &full.hidden.narrow(1, *n, ids.len()).unwrap(),
                    &hidden(&m, &ids, &NoHooks)
                ) > 1e-3
            );
            let mut cache = KvCache::new();
            let prompt = m
                .forward_cached(
                    &Batch::single(&ids[..4], m.device()).unwrap(),
                    &mut cache,
                    *hooks,
                )
                .unwrap();
            assert_eq!(prompt.virtual_tokens, *n);
            assert!(max_diff(&prompt.hidden, &full.hidden.narrow(1, 0, n + 4).unwrap()) < 1e-5);
            let steps = decode(
                &m,
                &Batch::single(&ids[..4], m.device()).unwrap(),
                &[ids[4..].to_vec()],
                *hooks,
            );
            let d = max_diff(&steps, &full.hidden.narrow(1, n + 4, 8).unwrap());
            assert!(
                d < 1e-5,
                "case {i}, both sliding {both}: steps differ by {d}"
            );
        }
    }
}

#[test]
fn window_positions_of_real_keys_are_the_pass_positions() {
    let m = crate::tiny::gemma3(3);
    let check = |pass: &DecoderPass| {
        let mask: Vec<Vec<f32>> = pass.key_mask().to_vec2().unwrap();
        let positions = window_positions(&mask);
        let seq = pass.position_rows()[0].len();
        for (b, rows) in pass.position_rows().iter().enumerate() {
            let width = mask[b].len();
            for (t, &p) in rows.iter().enumerate() {
                if mask[b][width - seq + t] > 0.5 {
                    assert_eq!(
                        positions[b][width - seq + t],
                        p as i64,
                        "row {b}, token {t}"
                    );
                }
            }
        }
    };
    let prompt = batch(
        &[vec![0, 0, 7, 8, 9], vec![4, 5, 6, 0, 0]],
        &[vec![0., 0., 1., 1., 1.], vec![1., 1., 1., 0., 0.]],
    );
    let prefix = SeededPrefix::new(3);
    let layers = m.spec().num_layers;
    let mut cache = KvCache::new();
    let pass = DecoderPass::begin(
        &m.scaled_table(),
        &prompt,
        &prefix,
        Some(&cache),
        layers,
        64,
        "t",
    )
    .unwrap();
    check(&pass);
    m.forward_cached(&prompt, &mut cache, &prefix).unwrap();
    let step = batch(&[vec![3], vec![2]], &[vec![1.], vec![1.]]);
    let pass = DecoderPass::begin(
        &m.scaled_table(),
        &step,
        &prefix,
        Some(&cache),
        layers,
        64,
        "t",
    )
    .unwrap();
    assert_eq!(pass.position_rows(), &[vec![6], vec![6]]);
    check(&pass);
}

#[test]
fn keys_before_the_last_window_weigh_nothing_even_for_a_fully_masked_query() {
    // One query after seven cached columns, window 4: HF's sliding layer holds the last three cached keys and
    // the new one. Earlier columns get 2 * MASKED, so a fully masked query spreads over those four only; a
    // column within a real query's window keeps 0 even where it is one of the earlier ones.
    let dev = Device::Cpu;
    let sliding = |mask: Vec<f32>| {
        let key_mask = Tensor::new(vec![mask], &dev).unwrap();
        let base = causal_bias(&key_mask, 1).unwrap();
        let mut masks = SlidingMasks::new(&key_mask, 1, WINDOW).unwrap();
        let bias = masks.bias(&base).unwrap();
        bias.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let m = crate::attention::MASKED;
    assert_eq!(
        sliding(vec![1.; 8]),
        vec![2. * m, 2. * m, 2. * m, 2. * m, 0., 0., 0., 0.]
    );
    // Fully masked: uniform over the four held keys.
    assert_eq!(
        sliding(vec![0.; 8]),
        vec![2. * m, 2. * m, 2. * m, 2. * m, m, m, m, m]
    );
    // Two real tokens, five pads, then the query at position 2: it still sees positions 0 and 1.
    assert_eq!(
        sliding(vec![1., 1., 0., 0., 0., 0., 0., 1.]),
        vec![0., 0., 2. * m, 2. * m, m, m, m, 0.]
    );
}
