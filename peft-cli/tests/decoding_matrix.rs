//! Cached generation and mixed-adapter batches, for every method of the workspace on every decoder-only
//! architecture of the zoo (GPT-2, LLaMA, OPT, Gemma-3), on seeded tiny models with adapters whose trainable
//! tensors were moved off their initial values (a fresh LoRA adds nothing, so it would prove nothing):
//! - greedy generation through the key/value cache gives the uncached path's tokens, alone and in a
//!   left-padded batch;
//! - a batch whose rows use different adapters of any method types (and rows with none) gives every row the
//!   logits it has alone with its adapter, on the prompt's pass and on cached decoding steps.

use candle_core::{DType, IndexOp, Tensor};
use peft_core::hooks::{Hooks, NoHooks};
use peft_core::kv_cache::KvCache;
use peft_core::method::{Adapter, InitCtx, PeftMethod};
use peft_core::mixed::MixedHooks;
use peft_core::model::{BaseModel, Batch};
use peft_train::generate::{generate, generate_batch, generate_cached, left_padded, Sampling};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "common/methods.rs"]
mod methods;
use methods::methods;

/// Largest |logit difference| between a row in a mixed batch and the row alone.
const TOLERANCE: f32 = 1e-5;

fn decoders() -> Vec<(&'static str, Box<dyn BaseModel>)> {
    peft_cli::link_methods();
    vec![
        ("gpt2", Box::new(peft_models::tiny::gpt2(11))),
        ("llama", Box::new(peft_models::tiny::llama(12))),
        ("opt", Box::new(peft_models::opt::tiny(13))),
        ("gemma3", Box::new(peft_models::tiny::gemma3(17))),
    ]
}

/// The method built on `model`, every trainable tensor moved by seeded noise.
fn moved_adapter(model: &dyn BaseModel, config: &serde_json::Value, seed: u64) -> Box<dyn Adapter> {
    let method: Box<dyn PeftMethod> = serde_json::from_value(config.clone()).unwrap();
    let adapter = method
        .build(&mut InitCtx {
            model,
            tokenizer: None,
            rng: StdRng::seed_from_u64(seed),
        })
        .unwrap_or_else(|e| panic!("building {config}: {e}"));
    let mut rng = StdRng::seed_from_u64(seed + 1000);
    for (_, var) in adapter.trainable() {
        let noise: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.random_range(-0.1f32..0.1))
            .collect();
        let noise = Tensor::from_vec(noise, var.shape(), var.device()).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
    adapter
}

fn vocab_ids(rng: &mut StdRng, len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|_| rng.random_range(1..vocab as u32))
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

#[test]
fn cached_greedy_generation_gives_the_uncached_tokens_for_every_method() {
    let mut failures = Vec::new();
    for (arch, model) in decoders() {
        let model = model.as_ref();
        let vocab = model.spec().vocab_size;
        let mut rng = StdRng::seed_from_u64(3);
        let prompts = [vocab_ids(&mut rng, 3, vocab), vocab_ids(&mut rng, 7, vocab)];
        let mut cases: Vec<(String, Box<dyn Hooks>)> =
            vec![("no adapter".into(), Box::new(NoHooks))];
        for (i, (name, config, _)) in methods().into_iter().enumerate() {
            let adapter = moved_adapter(model, &config, 100 + i as u64);
            cases.push((name.to_string(), adapter));
        }
        for (name, hooks) in &cases {
            let hooks = hooks.as_ref();
            let mut rng = StdRng::seed_from_u64(0);
            let uncached: Vec<Vec<u32>> = prompts
                .iter()
                .map(|p| generate(model, hooks, p, 6, &Sampling::Greedy, None, &mut rng).unwrap())
                .collect();
            let cached: Vec<Vec<u32>> = prompts
                .iter()
                .map(|p| {
                    generate_cached(model, hooks, p, 6, &Sampling::Greedy, None, &mut rng).unwrap()
                })
                .collect();
            let mut rngs = vec![StdRng::seed_from_u64(0), StdRng::seed_from_u64(0)];
            let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
            let batched =
                generate_batch(model, hooks, &refs, 6, &Sampling::Greedy, None, &mut rngs).unwrap();
            assert_eq!(uncached[0].len(), 6, "{arch}/{name}");
            if cached != uncached || batched != uncached {
                failures.push(format!(
                    "{arch} / {name}: uncached {uncached:?}, cached {cached:?}, batched {batched:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Logits `[len, vocab]` of `ids` run alone (uncached, unpadded) with `hooks`.
fn alone(model: &dyn BaseModel, hooks: &dyn Hooks, ids: &[u32]) -> Tensor {
    let out = model
        .forward(&Batch::single(ids, model.device()).unwrap(), hooks)
        .unwrap();
    let real = out
        .hidden
        .i(0)
        .unwrap()
        .narrow(0, out.virtual_tokens, ids.len())
        .unwrap();
    model.logits(&real).unwrap()
}

#[test]
fn every_row_of_a_mixed_batch_computes_what_it_computes_alone() {
    let mut failures = Vec::new();
    let mut worst = 0f32;
    for (arch, model) in decoders() {
        let model = model.as_ref();
        let dev = model.device().clone();
        let vocab = model.spec().vocab_size;
        let adapters: Vec<(String, Box<dyn Adapter>)> = methods()
            .into_iter()
            .enumerate()
            .map(|(i, (name, config, _))| {
                (
                    name.to_string(),
                    moved_adapter(model, &config, 200 + i as u64),
                )
            })
            .collect();
        let hooks: Vec<&dyn Hooks> = adapters
            .iter()
            .map(|(_, a)| a.as_ref() as &dyn Hooks)
            .collect();
        let mut rng = StdRng::seed_from_u64(7);
        for mix in 0..3 {
            // 8 rows: a random adapter each (about one in eight with none), random prompt lengths.
            let mut rows: Vec<Option<usize>> = (0..8)
                .map(|_| {
                    let a = rng.random_range(0..=adapters.len());
                    (a < adapters.len()).then_some(a)
                })
                .collect();
            if mix == 0 {
                // Rows grouped by adapter: the groups are slices of the batch (MixedHooks' contiguous path).
                rows.sort();
            }
            let prompts: Vec<Vec<u32>> = (0..8)
                .map(|_| {
                    let len = rng.random_range(2..10);
                    vocab_ids(&mut rng, len, vocab)
                })
                .collect();
            let name_of =
                |r: usize| rows[r].map_or("no adapter".to_string(), |a| adapters[a].0.clone());
            let hooks_of = |r: usize| -> &dyn Hooks { rows[r].map_or(&NoHooks, |a| hooks[a]) };
            let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
            let batch = left_padded(&refs, &dev).unwrap();
            let mixed = MixedHooks::new(hooks.clone(), rows.clone()).unwrap();
            let mut cache = KvCache::new();
            let out = model.forward_cached(&batch, &mut cache, &mixed).unwrap();
            let seq = out.hidden.dim(1).unwrap();
            let mut seqs = prompts.clone();
            for (r, p) in prompts.iter().enumerate() {
                let got = model
                    .logits(
                        &out.hidden
                            .i(r)
                            .unwrap()
                            .narrow(0, seq - p.len(), p.len())
                            .unwrap(),
                    )
                    .unwrap();
                let want = alone(model, hooks_of(r), p);
                let d = max_diff(&got, &want);
                worst = worst.max(d);
                if d >= TOLERANCE {
                    failures.push(format!(
                        "{arch} mix {mix} row {r} ({}): prompt pass differs by {d}",
                        name_of(r)
                    ));
                }
            }
            // Three cached decoding steps, one random token per row each.
            for step in 0..3 {
                let next: Vec<u32> = (0..8).map(|_| rng.random_range(1..vocab as u32)).collect();
                let batch = Batch::new(
                    Tensor::from_vec(next.clone(), (8, 1), &dev).unwrap(),
                    Tensor::ones((8, 1), DType::F32, &dev).unwrap(),
                )
                .unwrap();
                let mixed = MixedHooks::new(hooks.clone(), rows.clone()).unwrap();
                let out = model.forward_cached(&batch, &mut cache, &mixed).unwrap();
                for (r, tok) in next.iter().enumerate() {
                    seqs[r].push(*tok);
                    let got = model
                        .logits(&out.hidden.i((r, 0)).unwrap().unsqueeze(0).unwrap())
                        .unwrap();
                    let all = alone(model, hooks_of(r), &seqs[r]);
                    let want = all.narrow(0, seqs[r].len() - 1, 1).unwrap();
                    let d = max_diff(&got, &want);
                    worst = worst.max(d);
                    if d >= TOLERANCE {
                        failures.push(format!(
                            "{arch} mix {mix} row {r} ({}): decoding step {step} differs by {d}",
                            name_of(r)
                        ));
                    }
                }
            }
        }
    }
    println!("worst |logit difference| of a mixed row against the row alone: {worst:.2e}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
