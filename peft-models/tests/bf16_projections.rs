//! Mixed precision (`LoadOptions::bf16_projections`, `precision = "bf16"`): every frozen projection and the LM
//! head (a tied one as a bf16 copy of the embeddings) stored in bf16, everything else f32. Against the f32 model: the tiny models of every architecture built from the same
//! weights, and the real SmolLM2-135M (the zoo's GGUF; skipped, saying so, without it). The logits must stay
//! within a tolerance set by bf16's precision and must differ from f32 (the bf16 path really ran); the model
//! must report its projections stored in bf16.

use candle_core::{DType, Device, Tensor};
use peft_core::hooks::NoHooks;
use peft_core::model::{BaseModel, Batch};
use peft_models::weights::WeightMap;

/// Token ids of two rows of different lengths (the second left-padded), within every tiny vocabulary.
fn batch() -> Batch {
    let ids = Tensor::new(
        &[[5u32, 17, 3, 44, 9, 12, 30, 2], [0, 0, 8, 21, 33, 4, 7, 19]],
        &Device::Cpu,
    )
    .unwrap();
    let mask = Tensor::new(&[[1u32; 8], [0, 0, 1, 1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
    Batch::new(ids, mask).unwrap()
}

/// The model's output rows (logits where it has a head, else the hidden states) for [`batch`], masked rows
/// dropped.
fn outputs(model: &dyn BaseModel) -> Vec<f32> {
    let b = batch();
    let out = model.forward(&b, &NoHooks).unwrap();
    let y = match model.lm_head() {
        Some(_) => model.logits(&out.hidden).unwrap(),
        None => out.hidden,
    };
    let mask: Vec<Vec<u32>> = b
        .attention_mask
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap();
    let y: Vec<Vec<Vec<f32>>> = y.to_vec3().unwrap();
    y.into_iter()
        .zip(mask)
        .flat_map(|(rows, m)| {
            rows.into_iter()
                .zip(m)
                .filter(|(_, m)| *m == 1)
                .flat_map(|(r, _)| r)
        })
        .collect()
}

/// Largest difference relative to the largest f32 magnitude.
fn relative_difference(f32_out: &[f32], bf16_out: &[f32]) -> f32 {
    let scale = f32_out.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = f32_out
        .iter()
        .zip(bf16_out)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn bf16(mut weights: WeightMap) -> WeightMap {
    weights.set_bf16_projections(true);
    weights
}

/// bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%) on the projections' inputs and weights; over
/// the tiny models' 2 layers that moves the outputs by well under 1% of their scale, while a wrong product
/// (a transposed or unrounded weight, a lost bias) moves them by tens of percent.
const TINY_TOLERANCE: f32 = 1e-2;

/// An architecture's name, its tiny model in f32 and the same weights with bf16 projections.
type Pair = (&'static str, Box<dyn BaseModel>, Box<dyn BaseModel>);

#[test]
fn every_tiny_architecture_in_bf16_stays_near_f32_and_stores_bf16() {
    use peft_models::bert::{self, Bert};
    use peft_models::opt::{self, Opt};
    use peft_models::{tiny, Gemma3, Gpt2, Llama};
    let cases: Vec<Pair> = vec![
        (
            "gpt2",
            Box::new(tiny::gpt2(11)),
            Box::new(
                Gpt2::from_weights(&tiny::gpt2_config(), &bf16(tiny::gpt2_weights(11)), "bf16")
                    .unwrap(),
            ),
        ),
        (
            "llama",
            Box::new(tiny::llama(12)),
            Box::new(
                Llama::from_weights(
                    &tiny::llama_config(),
                    &bf16(tiny::llama_weights(12)),
                    "bf16",
                )
                .unwrap(),
            ),
        ),
        (
            "gemma3",
            Box::new(tiny::gemma3(17)),
            Box::new(
                Gemma3::from_weights(
                    &tiny::gemma3_config(),
                    &bf16(tiny::gemma3_weights(17)),
                    "bf16",
                )
                .unwrap(),
            ),
        ),
        (
            "opt",
            Box::new(opt::tiny(13)),
            Box::new(
                Opt::from_weights(
                    &opt::tiny_config(),
                    &bf16(opt::tiny_weights(&opt::tiny_config(), 13)),
                    "bf16",
                )
                .unwrap(),
            ),
        ),
        (
            "bert",
            Box::new(bert::tiny(14)),
            Box::new(
                Bert::from_weights(&bert::tiny_config(), &bf16(bert::tiny_weights(14)), "bf16")
                    .unwrap(),
            ),
        ),
    ];
    for (name, full, mixed) in cases {
        let storage = &mixed.spec().weight_storage;
        assert!(storage.contains_key("bf16"), "{name}: {storage:?}");
        // Embeddings and norms stay f32.
        assert!(storage.contains_key("f32"), "{name}: {storage:?}");
        if let (Some(head), Some(f32_head)) = (mixed.lm_head(), full.lm_head()) {
            let dtype = |h: &peft_core::frozen::FrozenLinear| h.dense_weight().unwrap().dtype();
            assert_eq!(dtype(head), DType::BF16, "{name}'s head");
            assert_eq!(dtype(f32_head), DType::F32, "{name}'s head");
        }
        assert_eq!(
            full.spec().num_parameters,
            mixed.spec().num_parameters,
            "{name}"
        );
        let d = relative_difference(&outputs(full.as_ref()), &outputs(mixed.as_ref()));
        println!("{name}: bf16 projections move the outputs by {d:e} of their scale");
        assert!(d < TINY_TOLERANCE, "{name}: {d}");
        assert!(
            d > 0.0,
            "{name}: bf16 outputs equal f32 ones: the bf16 product did not run"
        );
    }
}

#[test]
fn smollm2_in_bf16_keeps_its_predictions() {
    let Some(path) = peft_models::zoo::local_path("smollm2-135m", "PEFT_SMOLLM2_GGUF") else {
        eprintln!("skipped: the zoo's smollm2-135m GGUF is not here (peft fetch smollm2-135m)");
        return;
    };
    let load = |bf16_projections| {
        let options = peft_models::LoadOptions {
            bf16_projections,
            ..Default::default()
        };
        peft_models::gguf::load_gguf_with(&path, &Device::Cpu, options).unwrap()
    };
    let (full, mixed) = (load(false), load(true));
    let storage = &mixed.model.spec().weight_storage;
    assert!(storage["bf16"].values > 90_000_000, "{storage:?}");
    let text =
        "The movie was a delight from start to finish, and the cast clearly had fun making it.";
    let ids = full
        .tokenizer
        .as_ref()
        .unwrap()
        .encode(text, true)
        .unwrap()
        .get_ids()
        .to_vec();
    let b = Batch::single(&ids, &Device::Cpu).unwrap();
    let logits = |m: &dyn BaseModel| {
        let out = m.forward(&b, &NoHooks).unwrap();
        m.logits(&out.hidden)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .squeeze(0)
            .unwrap()
    };
    let (a, c) = (logits(full.model.as_ref()), logits(mixed.model.as_ref()));
    let a_rows: Vec<Vec<f32>> = a.to_vec2().unwrap();
    let c_rows: Vec<Vec<f32>> = c.to_vec2().unwrap();
    let argmax = |r: &[f32]| {
        r.iter()
            .enumerate()
            .fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m })
            .0
    };
    let agree = a_rows
        .iter()
        .zip(&c_rows)
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    let d = relative_difference(&a_rows.concat(), &c_rows.concat());
    println!("SmolLM2-135M: bf16 projections move the logits by {d:e} of their scale; next-token argmax agrees on {agree} of {} positions", a_rows.len());
    // 30 layers of bf16 rounding: a few percent of the logits' scale at most, and the predictions kept.
    assert!(d < 5e-2 && d > 0.0, "{d}");
    assert!(
        agree * 10 >= a_rows.len() * 9,
        "{agree} of {}",
        a_rows.len()
    );
}

/// A trainable prompt prepended to the embeddings; `keep` says the hooks touch every site, so that the models
/// compose their MLP blocks instead of running the kept bf16 form.
struct Prompt {
    var: candle_core::Var,
    keep: bool,
}

impl peft_core::hooks::Hooks for Prompt {
    fn embeddings(&self, x: Tensor, ctx: &mut peft_core::hooks::Ctx) -> peft_core::Result<Tensor> {
        let (b, _, h) = x.dims3()?;
        let p = self.var.as_tensor().broadcast_as((b, 2, h))?;
        ctx.prepend_virtual_tokens(2)?;
        Ok(Tensor::cat(&[&p, &x], 1)?)
    }

    fn touches(&self, _site: peft_core::spec::SiteId) -> bool {
        self.keep
    }
}

/// In bf16, the MLP blocks no hook touches keep their wide products' outputs in bf16 for the backward
/// (`peft_kernels::residual_kept_bf16`): the loss is the composed blocks' exactly, the prompt's gradient within
/// bf16's precision of theirs, and not equal to it (the kept form really ran).
#[test]
fn kept_bf16_blocks_give_the_composed_loss_and_a_gradient_within_bf16() {
    use peft_models::{tiny, Gpt2, Llama};
    let models: Vec<(&str, Box<dyn BaseModel>)> = vec![
        (
            "gpt2",
            Box::new(
                Gpt2::from_weights(&tiny::gpt2_config(), &bf16(tiny::gpt2_weights(11)), "bf16")
                    .unwrap(),
            ),
        ),
        (
            "llama",
            Box::new(
                Llama::from_weights(
                    &tiny::llama_config(),
                    &bf16(tiny::llama_weights(12)),
                    "bf16",
                )
                .unwrap(),
            ),
        ),
    ];
    for (name, model) in models {
        let h = model.spec().hidden_size;
        let init = Tensor::randn(0f32, 0.5, (1, 2, h), &Device::Cpu).unwrap();
        let var = candle_core::Var::from_tensor(&init).unwrap();
        let run = |keep: bool| {
            let hooks = Prompt {
                var: var.clone(),
                keep,
            };
            let out = model.forward(&batch(), &hooks).unwrap();
            let logits = model.logits(&out.hidden).unwrap();
            let loss = peft_kernels::log_softmax_last_dim(&logits)
                .unwrap()
                .narrow(2, 0, 7)
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(var.as_tensor()).unwrap();
            (
                loss.to_scalar::<f32>().unwrap(),
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        };
        let (kept_loss, kept) = run(false);
        let (composed_loss, composed) = run(true);
        assert_eq!(
            kept_loss, composed_loss,
            "{name}: the forward is the composed one"
        );
        let d = relative_difference(&composed, &kept);
        println!("{name}: kept bf16 blocks move the prompt's gradient by {d:e} of its scale");
        assert!(
            d > 0.0,
            "{name}: the gradients are equal: the kept form did not run"
        );
        assert!(d <= TINY_TOLERANCE, "{name}: {d} of the gradient's scale");
    }
}
