use std::collections::BTreeSet;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use peft_core::hooks::{Ctx, Hooks, KvPrefix, LinearFn, NoHooks};
use peft_core::model::{BaseModel, Batch, DecoderCache, EncoderDecoder};
use peft_core::spec::{SiteId, SiteKind};

use super::*;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

fn randn(seed: u64, std: f32, shape: &[usize]) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let unit = rand_distr::Normal::new(0f32, 1.0).unwrap();
    let values: Vec<f32> = (0..shape.iter().product())
        .map(|_| std * rng.sample(unit))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A right-padded encoder batch of two with four decoder ids per row.
fn batch() -> Batch {
    let dev = Device::Cpu;
    let ids = Tensor::new(
        &[[5u32, 9, 14, 3, 7, 30, 2, 1], [21, 8, 2, 1, 0, 0, 0, 0]],
        &dev,
    )
    .unwrap();
    let mask = Tensor::new(
        &[
            [1f32, 1., 1., 1., 1., 1., 1., 1.],
            [1., 1., 1., 1., 0., 0., 0., 0.],
        ],
        &dev,
    )
    .unwrap();
    let dec = Tensor::new(&[[0u32, 17, 42, 8], [0, 3, 99, 1]], &dev).unwrap();
    Batch::new(ids, mask)
        .unwrap()
        .with_decoder_input_ids(dec)
        .unwrap()
}

/// The same `[1, heads, P, d_kv]` prefix per decoder layer, shifted by the layer index; `None` for `skip`.
struct Prefix {
    len: usize,
    skip: Option<usize>,
    asked: Mutex<Vec<usize>>,
}

impl Prefix {
    fn new(len: usize) -> Self {
        Prefix {
            len,
            skip: None,
            asked: Mutex::new(Vec::new()),
        }
    }
}

impl Hooks for Prefix {
    fn attention_prefix(&self, layer: usize, _ctx: &Ctx) -> peft_core::Result<Option<KvPrefix>> {
        self.asked.lock().unwrap().push(layer);
        if self.skip == Some(layer) {
            return Ok(None);
        }
        let shape = [1, 4, self.len, 8];
        Ok(Some(KvPrefix {
            key: (randn(40, 1.0, &shape) + layer as f64)?,
            value: (randn(41, 1.0, &shape) - layer as f64)?,
        }))
    }
}

/// Prompt tuning's hook: two virtual tokens prepended to the encoder input.
struct Virtual(Tensor);

impl Hooks for Virtual {
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> peft_core::Result<Tensor> {
        let (b, _, h) = x.dims3()?;
        let n = self.0.dim(0)?;
        ctx.prepend_virtual_tokens(n)?;
        Ok(Tensor::cat(
            &[&self.0.unsqueeze(0)?.broadcast_as((b, n, h))?, &x],
            1,
        )?)
    }
}

/// Decodes `batch`'s decoder ids in chunks of `step` ids through one cache.
fn decode_in_steps(model: &T5, batch: &Batch, hooks: &dyn Hooks, step: usize) -> Tensor {
    let encoded = model.encode(batch, hooks).unwrap();
    let ids = batch.decoder_input_ids.as_ref().unwrap();
    let t = ids.dim(1).unwrap();
    let mut cache = DecoderCache::default();
    let mut states = Vec::new();
    let mut at = 0;
    while at < t {
        let n = step.min(t - at);
        let chunk = ids.narrow(1, at, n).unwrap();
        states.push(model.decode(&encoded, &chunk, &mut cache, hooks).unwrap());
        at += n;
    }
    assert_eq!(cache.seen, t);
    Tensor::cat(&states, 1).unwrap()
}

#[test]
fn spec_names_every_site_with_its_block() {
    let m = tiny(0);
    let spec = m.spec();
    assert_eq!(
        (
            spec.architecture.as_str(),
            spec.num_layers,
            spec.hidden_size,
            spec.vocab_size
        ),
        ("t5", 2, 32, 128)
    );
    assert_eq!(
        (spec.num_heads, spec.num_kv_heads, spec.head_dim),
        (4, 4, 8)
    );
    assert!(spec.is_encoder_decoder);
    assert_eq!(spec.max_positions, DEFAULT_CONTEXT);
    // Encoder block: 4 attention + 3 gated dense + 2 norms; decoder block: 8 + 3 + 3; two final norms.
    assert_eq!(spec.sites.len(), 2 * 9 + 2 * 14 + 2);
    let site = |n: &str| spec.site(spec.find_site(n).unwrap_or_else(|| panic!("no site {n}")));
    for name in [
        "encoder.block.1.layer.0.SelfAttention.q",
        "encoder.block.1.layer.1.DenseReluDense.wi_0",
        "decoder.block.1.layer.1.EncDecAttention.o",
        "decoder.block.1.layer.2.DenseReluDense.wo",
        "decoder.block.1.layer.2.layer_norm",
    ] {
        assert_eq!(site(name).layer, Some(1), "{name}");
    }
    assert_eq!(site("encoder.final_layer_norm").layer, None);
    assert_eq!(
        site("decoder.final_layer_norm").kind,
        SiteKind::Norm { dim: 32 }
    );
    assert_eq!(
        site("decoder.block.0.layer.1.EncDecAttention.k").kind,
        SiteKind::Linear {
            in_features: 32,
            out_features: 32,
            fan_in_fan_out: false
        }
    );
    assert!(spec
        .sites
        .iter()
        .all(|s| !s.has_bias && !s.name.contains("relative")));
    let params = m.parameters();
    let total: usize = params.iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(spec.num_parameters, total);
    let has = |n: &str| params.iter().any(|(p, _)| p == n);
    assert!(has("lm_head.weight") && has("shared.weight"));
    assert!(has(
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    ));
    assert!(!has(
        "decoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
    ));
    // Every linear site has its frozen projection.
    for (id, s) in spec.iter_sites() {
        if let SiteKind::Linear { out_features, .. } = s.kind {
            assert_eq!(
                m.frozen_linear(id).unwrap().out_features(),
                out_features,
                "{}",
                s.name
            );
        }
    }
}

#[test]
fn d_kv_may_differ_from_d_model_over_heads() {
    let mut cfg = tiny_config();
    cfg.d_kv = 6;
    let m = T5::from_weights(&cfg, &tiny_weights(&cfg, 1), "x").unwrap();
    assert_eq!(m.spec().head_dim, 6);
    let spec = m.spec();
    let q = spec.site(
        spec.find_site("encoder.block.0.layer.0.SelfAttention.q")
            .unwrap(),
    );
    assert_eq!(
        q.kind,
        SiteKind::Linear {
            in_features: 32,
            out_features: 24,
            fan_in_fan_out: false
        }
    );
    let out = m.forward(&batch(), &NoHooks).unwrap();
    assert_eq!(out.hidden.dims(), &[2, 4, 32]);
}

#[test]
fn tied_head_is_scaled_shared_and_untied_head_is_lm_head() {
    let v1 = tiny_with(2, false);
    let shared = v1
        .embed_tokens(&Tensor::arange(0u32, 128, &Device::Cpu).unwrap())
        .unwrap();
    let scaled = (shared * 32f64.powf(-0.5)).unwrap();
    assert_eq!(
        max_diff(&v1.lm_head().unwrap().weight().unwrap(), &scaled),
        0.0
    );
    assert!(!v1.parameters().iter().any(|(n, _)| n == "lm_head.weight"));
    assert!(v1
        .spec()
        .find_site("encoder.block.0.layer.1.DenseReluDense.wi")
        .is_some());

    let flan = tiny(2);
    let head = flan
        .parameters()
        .into_iter()
        .find(|(n, _)| n == "lm_head.weight")
        .unwrap()
        .1;
    assert_eq!(
        max_diff(&flan.lm_head().unwrap().weight().unwrap(), &head),
        0.0
    );

    // An untied config whose checkpoint lacks the head names the tensor.
    let cfg = tiny_config();
    let w = tiny_weights(&cfg, 2);
    let kept = w
        .names()
        .filter(|n| *n != "lm_head.weight")
        .map(|n| (n.clone(), w.get_any(n).unwrap()))
        .collect();
    let err = T5::from_weights(&cfg, &WeightMap::new(kept, "t"), "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("lm_head.weight"), "{err}");
}

#[test]
fn checkpoints_storing_only_the_tied_copies_load() {
    let cfg = tiny_config();
    let w = tiny_weights(&cfg, 4);
    let renamed = w.rename(|n| {
        if n == "shared.weight" {
            "encoder.embed_tokens.weight".into()
        } else {
            n.to_string()
        }
    });
    let a = T5::from_weights(&cfg, &renamed, "x").unwrap();
    let b = T5::from_weights(&cfg, &tiny_weights(&cfg, 4), "x").unwrap();
    let (ha, hb) = (
        a.forward(&batch(), &NoHooks).unwrap().hidden,
        b.forward(&batch(), &NoHooks).unwrap().hidden,
    );
    assert_eq!(max_diff(&ha, &hb), 0.0);
}

#[test]
fn forward_needs_decoder_ids_and_has_no_pooled_state() {
    let m = tiny(0);
    let b = Batch::single(&[1, 2, 3], &Device::Cpu).unwrap();
    let err = m.forward(&b, &NoHooks).unwrap_err().to_string();
    assert!(
        err.contains(
            "T5 needs decoder input ids: the labels shifted right behind the decoder start token 0"
        ),
        "{err}"
    );
    let out = m.forward(&batch(), &NoHooks).unwrap();
    let err = m.pooled(&out, &batch(), &NoHooks).unwrap_err().to_string();
    assert!(err.contains("generating the label"), "{err}");
    assert_eq!(m.encoder_decoder().unwrap().decoder_start_token_id(), 0);
}

#[test]
fn forward_is_encode_then_decode_and_steps_through_the_cache_give_the_same_states() {
    let virtual_tokens = Virtual(randn(7, 0.5, &[2, 32]));
    for gated in [true, false] {
        let m = tiny_with(3, gated);
        let hooks: [(&str, &dyn Hooks); 3] = [
            ("no hooks", &NoHooks),
            ("decoder prefix", &Prefix::new(3)),
            ("encoder virtual tokens", &virtual_tokens),
        ];
        for (what, hooks) in hooks {
            let b = batch();
            let out = m.forward(&b, hooks).unwrap();
            assert_eq!(out.virtual_tokens, 0);
            assert_eq!(out.hidden.dims(), &[2, 4, 32]);
            let full = decode_in_steps(&m, &b, hooks, 4);
            assert_eq!(max_diff(&out.hidden, &full), 0.0, "{what}, gated {gated}");
            for step in [1, 3] {
                let stepped = decode_in_steps(&m, &b, hooks, step);
                let diff = max_diff(&out.hidden, &stepped);
                assert!(diff < 1e-5, "{what}, gated {gated}, step {step}: {diff}");
            }
        }
    }
}

#[test]
fn encoder_padding_changes_nothing_for_real_tokens() {
    let m = tiny(5);
    let dev = Device::Cpu;
    let padded = m.forward(&batch(), &NoHooks).unwrap().hidden;
    let single = Batch::single(&[21, 8, 2, 1], &dev)
        .unwrap()
        .with_decoder_input_ids(Tensor::new(&[[0u32, 3, 99, 1]], &dev).unwrap())
        .unwrap();
    let alone = m.forward(&single, &NoHooks).unwrap().hidden;
    assert!(max_diff(&padded.narrow(0, 1, 1).unwrap(), &alone) < 1e-5);
}

#[test]
fn decoder_is_causal() {
    let m = tiny(6);
    let dev = Device::Cpu;
    let b = batch();
    let mut other = b.clone();
    other.decoder_input_ids =
        Some(Tensor::new(&[[0u32, 17, 42, 50], [0, 3, 99, 60]], &dev).unwrap());
    let (h, g) = (
        m.forward(&b, &NoHooks).unwrap().hidden,
        m.forward(&other, &NoHooks).unwrap().hidden,
    );
    assert_eq!(
        max_diff(&h.narrow(1, 0, 3).unwrap(), &g.narrow(1, 0, 3).unwrap()),
        0.0
    );
    assert!(max_diff(&h.narrow(1, 3, 1).unwrap(), &g.narrow(1, 3, 1).unwrap()) > 1e-3);
}

#[test]
fn prefix_reaches_the_decoder_only_and_virtual_tokens_the_encoder_only() {
    let m = tiny(7);
    let b = batch();
    let plain = m.encode(&b, &NoHooks).unwrap();
    let prefix = Prefix::new(3);
    let with_prefix = m.encode(&b, &prefix).unwrap();
    assert!(
        prefix.asked.lock().unwrap().is_empty(),
        "the encoder asked for a prefix"
    );
    assert_eq!(max_diff(&plain.hidden, &with_prefix.hidden), 0.0);
    let h0 = m.forward(&b, &NoHooks).unwrap().hidden;
    let h1 = m.forward(&b, &prefix).unwrap().hidden;
    assert!(max_diff(&h0, &h1) > 1e-3);
    assert_eq!(*prefix.asked.lock().unwrap(), vec![0, 1]);

    let virt = Virtual(randn(8, 0.5, &[2, 32]));
    let encoded = m.encode(&b, &virt).unwrap();
    assert_eq!(encoded.hidden.dims(), &[2, 10, 32]);
    let mask = encoded.attention_mask.to_vec2::<f32>().unwrap();
    assert_eq!(mask[1][..6], [1., 1., 1., 1., 1., 1.]);
    assert_eq!(mask[1][6..], [0., 0., 0., 0.]);
    let h2 = m.forward(&b, &virt).unwrap().hidden;
    assert_eq!(h2.dims(), h0.dims());
    assert!(max_diff(&h0, &h2) > 1e-3);
}

#[test]
fn a_layer_without_prefix_attends_to_the_tokens_only() {
    let m = tiny(9);
    let b = batch();
    let mut prefix = Prefix::new(2);
    prefix.skip = Some(1);
    let out = m.forward(&b, &prefix).unwrap().hidden;
    let stepped = decode_in_steps(&m, &b, &prefix, 1);
    assert!(max_diff(&out, &stepped) < 1e-5);
}

#[test]
fn bad_prefixes_and_caches_are_refused_by_name() {
    let m = tiny(10);
    let b = batch();
    struct Uneven;
    impl Hooks for Uneven {
        fn attention_prefix(&self, l: usize, _c: &Ctx) -> peft_core::Result<Option<KvPrefix>> {
            let t = Tensor::zeros((1, 4, 2 + l, 8), DType::F32, &Device::Cpu)?;
            Ok(Some(KvPrefix {
                key: t.clone(),
                value: t,
            }))
        }
    }
    let err = m.forward(&b, &Uneven).unwrap_err().to_string();
    assert!(
        err.contains("decoder layer 1") && err.contains("same prefix length"),
        "{err}"
    );
    struct WrongHeads;
    impl Hooks for WrongHeads {
        fn attention_prefix(&self, _l: usize, _c: &Ctx) -> peft_core::Result<Option<KvPrefix>> {
            let t = Tensor::zeros((1, 2, 3, 8), DType::F32, &Device::Cpu)?;
            Ok(Some(KvPrefix {
                key: t.clone(),
                value: t,
            }))
        }
    }
    let err = m.forward(&b, &WrongHeads).unwrap_err().to_string();
    assert!(err.contains("decoder layer 0"), "{err}");

    // A cache built for a batch of two cannot continue a batch of one.
    let encoded = m.encode(&b, &NoHooks).unwrap();
    let mut cache = DecoderCache::default();
    let ids = b.decoder_input_ids.clone().unwrap();
    m.decode(
        &encoded,
        &ids.narrow(1, 0, 1).unwrap(),
        &mut cache,
        &NoHooks,
    )
    .unwrap();
    let one = Batch::single(&[3, 4], &Device::Cpu).unwrap();
    let enc1 = m.encode(&one, &NoHooks).unwrap();
    let step = Tensor::new(&[[5u32]], &Device::Cpu).unwrap();
    let err = m
        .decode(&enc1, &step, &mut cache, &NoHooks)
        .unwrap_err()
        .to_string();
    assert!(err.contains("DecoderCache::default()"), "{err}");
    // Encoded states of another batch size are refused too.
    let err = m
        .decode(&enc1, &ids, &mut DecoderCache::default(), &NoHooks)
        .unwrap_err()
        .to_string();
    assert!(err.contains("encoder states"), "{err}");
}

#[test]
fn decoder_depth_may_differ_from_the_encoder_depth() {
    let mut cfg = tiny_config();
    cfg.num_decoder_layers = Some(3);
    let m = T5::from_weights(&cfg, &tiny_weights(&cfg, 11), "x").unwrap();
    assert_eq!(m.spec().num_layers, 2);
    let s = m
        .spec()
        .find_site("decoder.block.2.layer.1.EncDecAttention.v")
        .unwrap();
    assert_eq!(m.spec().site(s).layer, Some(2));
    let prefix = Prefix::new(2);
    let out = m.forward(&batch(), &prefix).unwrap().hidden;
    assert_eq!(*prefix.asked.lock().unwrap(), vec![0, 1, 2]);
    assert!(max_diff(&out, &decode_in_steps(&m, &batch(), &prefix, 1)) < 1e-5);
}

/// Records every site the forward pass calls through the hooks.
#[derive(Default)]
struct Recorder(Mutex<BTreeSet<SiteId>>);

impl Hooks for Recorder {
    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> peft_core::Result<Tensor> {
        self.0.lock().unwrap().insert(site);
        next(x)
    }
    fn bias(&self, site: SiteId) -> Option<Tensor> {
        self.0.lock().unwrap().insert(site);
        None
    }
}

#[test]
fn every_site_is_called_through_the_hooks() {
    for gated in [true, false] {
        let m = tiny_with(12, gated);
        let rec = Recorder::default();
        m.forward(&batch(), &rec).unwrap();
        let called = rec.0.lock().unwrap().clone();
        let all: BTreeSet<SiteId> = m.spec().iter_sites().map(|(id, _)| id).collect();
        assert_eq!(called, all, "gated {gated}");
    }
}

#[test]
fn merged_weights_change_the_output_and_gradients_reach_a_prefix() {
    let mut m = tiny(13);
    let b = batch();
    let before = m.forward(&b, &NoHooks).unwrap().hidden;
    let site = m
        .spec()
        .find_site("decoder.block.1.layer.1.EncDecAttention.v")
        .unwrap();
    let delta = randn(14, 0.1, &[32, 32]);
    m.frozen_linear_mut(site)
        .unwrap()
        .add_to_weight(&delta)
        .unwrap();
    let after = m.forward(&b, &NoHooks).unwrap().hidden;
    assert!(max_diff(&before, &after) > 1e-4);

    struct Trainable(Var, Var);
    impl Hooks for Trainable {
        fn attention_prefix(&self, _l: usize, _c: &Ctx) -> peft_core::Result<Option<KvPrefix>> {
            Ok(Some(KvPrefix {
                key: self.0.as_tensor().clone(),
                value: self.1.as_tensor().clone(),
            }))
        }
    }
    let key = Var::from_tensor(&randn(15, 1.0, &[1, 4, 2, 8])).unwrap();
    let value = Var::from_tensor(&randn(16, 1.0, &[1, 4, 2, 8])).unwrap();
    let hooks = Trainable(key.clone(), value.clone());
    let h = m.forward(&b, &hooks).unwrap().hidden;
    let loss = m.logits(&h).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    for v in [&key, &value] {
        let g = grads.get(v.as_tensor()).expect("a gradient for the prefix");
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }
    assert!(m.parameters().iter().all(|(_, p)| grads.get(p).is_none()));
}

#[test]
fn configs_are_checked() {
    let mut cfg = tiny_config();
    cfg.feed_forward_proj = "double-gated-gelu".into();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("double-gated-gelu"), "{err}");
    let mut cfg = tiny_config();
    cfg.relative_attention_num_buckets = 2;
    assert!(cfg.validate().is_err());
    // transformers writes dense_act_fn and is_gated_act; they win over feed_forward_proj.
    let cfg: T5Config = serde_json::from_str(
        r#"{"feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu", "is_gated_act": true}"#,
    )
    .unwrap();
    assert_eq!(cfg.activation().unwrap(), Activation::GeluErf);
    let cfg: T5Config =
        serde_json::from_str(r#"{"tie_word_embeddings": true, "scale_decoder_outputs": false}"#)
            .unwrap();
    assert!(!cfg.scales_decoder_output());
}
