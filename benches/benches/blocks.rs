//! The building blocks: the frozen projection op (`frozen_linear/<shape>/...`; SmolLM2's up projection also
//! with its weight kept quantized, `smollm2-up_proj-q4_1` / `-q8_0`; every shape also with its weight in bf16,
//! `frozen_linear/<shape>/bf16/...`, beside the f32 op on the same values), the bare bf16 product on every
//! kernel this CPU runs (`bf16_product/<shape>/{amx,avx512-bf16,fallback}`, beside the f32 op's forward
//! `bf16_product/<shape>/f32`), scaled dot-product attention
//! (`attention/<shape>/...`), the LM head fused with the loss in f32 and bf16 (`lm_head_loss/smollm2/...`),
//! LLaMA's MLP block recomputed in the backward against composed (`mlp_block/smollm2/{recomputed,composed}`;
//! with bf16 weights also kept in bf16, `mlp_block/smollm2-bf16/{recomputed,kept_bf16,composed}`)
//! and one transformer block of the small models (`block/<model>/...`), each
//! forward only and forward + backward; and every fused op against the composed form it replaced
//! (`ops/<op>/<shape>/{fused,composed}`, forward + backward).

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use peft_benches::blocks::{AttentionCase, BlockCase, FrozenLinearCase, MlpBlockCase};
use peft_benches::ops::{Form, OpCase};
use peft_core::frozen::FrozenLinear;
use rand::{Rng, SeedableRng};

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
}

fn frozen_linear(c: &mut Criterion) {
    for case in [
        FrozenLinearCase::gpt2_small().expect("case"),
        FrozenLinearCase::small().expect("case"),
        FrozenLinearCase::smollm2_up_proj(None).expect("case"),
        FrozenLinearCase::smollm2_up_proj(Some(candle_core::quantized::GgmlDType::Q4_1))
            .expect("case"),
        FrozenLinearCase::smollm2_up_proj(Some(candle_core::quantized::GgmlDType::Q8_0))
            .expect("case"),
    ] {
        let mut group = c.benchmark_group(format!("frozen_linear/{}", case.name()));
        configure(&mut group);
        group.bench_function("forward", |b| {
            b.iter(|| black_box(case.forward().expect("forward")))
        });
        group.bench_function("forward_backward", |b| {
            b.iter(|| black_box(case.forward_backward().expect("backward")))
        });
        group.bench_function("candle_matmul_forward", |b| {
            b.iter(|| black_box(case.candle_forward().expect("forward")))
        });
        group.finish();
    }
}

/// A frozen projection `[d_out, d_in]` with a bias, its weight in f32 or bf16 (the same values: the f32 weight
/// is the bf16 one widened), and an input `[rows, d_in]`: the mixed-precision op against the f32 op.
struct DtypeCase {
    layer: FrozenLinear,
    x: Var,
}

impl DtypeCase {
    fn new(rows: usize, d_in: usize, d_out: usize, dtype: DType) -> peft_core::Result<Self> {
        let w = (seeded(&[d_out, d_in], 1)? * 0.02)?
            .to_dtype(DType::BF16)?
            .to_dtype(dtype)?;
        let b = (seeded(&[d_out], 2)? * 0.02)?;
        Ok(DtypeCase {
            layer: FrozenLinear::new(w, Some(b), &peft_kernels::frozen::FrozenGemm),
            x: Var::from_tensor(&seeded(&[rows, d_in], 3)?)?,
        })
    }

    fn forward(&self) -> peft_core::Result<Tensor> {
        self.layer.forward(&self.x.as_tensor().detach())
    }

    fn forward_backward(&self) -> peft_core::Result<Tensor> {
        let y = self.layer.forward(self.x.as_tensor())?;
        let grads = y.sum_all()?.backward()?;
        Ok(grads
            .get(self.x.as_tensor())
            .expect("input gradient")
            .clone())
    }
}

/// A seeded N(0, 1) tensor.
fn seeded(shape: &[usize], seed: u64) -> peft_core::Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// The frozen projections with a bf16 weight (`frozen_linear/<shape>/bf16/...`), and SmolLM2's other
/// projection shapes (q/o 576 -> 576, k/v 576 -> 192, down 1536 -> 576) in f32 too. The kernel in use is
/// printed: `PEFT_BF16_KERNEL=fallback`, `avx512-bf16` or `amx` measures that one.
fn frozen_linear_bf16(c: &mut Criterion) {
    eprintln!("bf16 kernel: {}", peft_kernels::bf16::bf16_kernel_name());
    let shapes = [
        ("gpt2-small-c_attn", 4 * 128, 768, 3 * 768, false),
        ("small-c_attn", 4 * 64, 256, 3 * 256, false),
        ("smollm2-up_proj", 8 * 128, 576, 1536, false),
        ("smollm2-q_proj", 8 * 128, 576, 576, true),
        ("smollm2-k_proj", 8 * 128, 576, 192, true),
        ("smollm2-down_proj", 8 * 128, 1536, 576, true),
        ("smollm2-up_proj-decode", 4, 576, 1536, true),
    ];
    for (name, rows, d_in, d_out, with_f32) in shapes {
        let dtypes: &[DType] = if with_f32 {
            &[DType::F32, DType::BF16]
        } else {
            &[DType::BF16]
        };
        for &dtype in dtypes {
            let case = DtypeCase::new(rows, d_in, d_out, dtype).expect("case");
            let group = match dtype {
                DType::BF16 => format!("frozen_linear/{name}/bf16"),
                _ => format!("frozen_linear/{name}"),
            };
            let mut group = c.benchmark_group(group);
            configure(&mut group);
            group.bench_function("forward", |b| {
                b.iter(|| black_box(case.forward().expect("forward")))
            });
            group.bench_function("forward_backward", |b| {
                b.iter(|| black_box(case.forward_backward().expect("backward")))
            });
            group.finish();
        }
    }
}

/// The bare bf16 product `x W^T` on each kernel this CPU runs (`bf16_product/<shape>/<kernel>`), whatever
/// `PEFT_BF16_KERNEL` says, beside the f32 frozen op's forward on the same values (`.../f32`): the kernels'
/// speeds in one run.
fn bf16_product(c: &mut Criterion) {
    use peft_kernels::bf16::{bf16_matmul_with, Bf16Kernel};
    let shapes = [
        ("smollm2-up_proj", 8 * 128, 576, 1536),
        ("smollm2-down_proj", 8 * 128, 1536, 576),
        ("gpt2-small-c_attn", 4 * 128, 768, 3 * 768),
    ];
    for (name, rows, d_in, d_out) in shapes {
        let mut group = c.benchmark_group(format!("bf16_product/{name}"));
        configure(&mut group);
        let f32_case = DtypeCase::new(rows, d_in, d_out, DType::F32).expect("case");
        group.bench_function("f32", |b| {
            b.iter(|| black_box(f32_case.forward().expect("forward")))
        });
        let x = seeded(&[rows, d_in], 3).expect("input");
        let w = (seeded(&[d_out, d_in], 1).expect("weight") * 0.02)
            .and_then(|w| w.to_dtype(DType::BF16))
            .expect("bf16 weight");
        for kernel in Bf16Kernel::ALL {
            if !kernel.is_available() {
                eprintln!("bf16_product/{name}/{}: not on this CPU", kernel.name());
                continue;
            }
            group.bench_function(kernel.name(), |b| {
                b.iter(|| black_box(bf16_matmul_with(kernel, &x, &w).expect("product")))
            });
        }
        group.finish();
    }
}

/// The LM head fused with the loss (`peft_kernels::linear_cross_entropy`) on SmolLM2's causal-LM shape (8 x
/// 128 tokens, hidden 576, 49,152 words), forward + backward, its head in f32 and in bf16 (the same values):
/// `lm_head_loss/smollm2/{f32,bf16}`.
fn lm_head_loss(c: &mut Criterion) {
    let (rows, hidden, vocab) = (8 * 128, 576, 49_152);
    let h = Var::from_tensor(&seeded(&[rows, hidden], 4).expect("hidden")).expect("var");
    let w16 = (seeded(&[vocab, hidden], 5).expect("head") * 0.02)
        .and_then(|w| w.to_dtype(DType::BF16))
        .expect("bf16 head");
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let targets: Vec<u32> = (0..rows)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    let mut group = c.benchmark_group("lm_head_loss/smollm2");
    configure(&mut group);
    for (name, w) in [
        ("f32", w16.to_dtype(DType::F32).expect("f32 head")),
        ("bf16", w16.clone()),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let loss =
                    peft_kernels::linear_cross_entropy(h.as_tensor(), &w, &targets).expect("loss");
                black_box(loss.backward().expect("backward"))
            })
        });
    }
    group.finish();
}

/// LLaMA's MLP block on SmolLM2's shape, forward + backward: one op that keeps only its input and recomputes
/// the norm, gate, up and SiLU-gate in its backward, against the composed ops that keep all of them.
fn mlp_block(c: &mut Criterion) {
    use peft_benches::blocks::MlpForm;
    let cases = [
        (
            "smollm2",
            DType::F32,
            vec![
                ("recomputed", MlpForm::Recomputed),
                ("composed", MlpForm::Composed),
            ],
        ),
        (
            "smollm2-bf16",
            DType::BF16,
            vec![
                ("recomputed", MlpForm::Recomputed),
                ("kept_bf16", MlpForm::KeptBf16),
                ("composed", MlpForm::Composed),
            ],
        ),
    ];
    for (name, dtype, forms) in cases {
        let case = MlpBlockCase::smollm2(dtype).expect("case");
        let mut group = c.benchmark_group(format!("mlp_block/{name}"));
        configure(&mut group);
        for (form_name, form) in forms {
            group.bench_function(form_name, |b| {
                b.iter(|| black_box(case.forward_backward(form).expect("backward")))
            });
        }
        group.finish();
    }
}

fn attention(c: &mut Criterion) {
    for case in [
        AttentionCase::gpt2_small().expect("case"),
        AttentionCase::small().expect("case"),
    ] {
        let mut group = c.benchmark_group(format!("attention/{}", case.name()));
        configure(&mut group);
        group.bench_function("forward", |b| {
            b.iter(|| black_box(case.forward().expect("forward")))
        });
        group.bench_function("forward_backward", |b| {
            b.iter(|| black_box(case.forward_backward().expect("backward")))
        });
        group.finish();
    }
}

fn block(c: &mut Criterion) {
    for case in [
        BlockCase::gpt2_small().expect("case"),
        BlockCase::llama_small().expect("case"),
    ] {
        let mut group = c.benchmark_group(format!("block/{}", case.name()));
        configure(&mut group);
        group.bench_function("forward", |b| {
            b.iter(|| black_box(case.forward().expect("forward")))
        });
        group.bench_function("forward_backward", |b| {
            b.iter(|| black_box(case.forward_backward().expect("backward")))
        });
        group.finish();
    }
}

fn ops(c: &mut Criterion) {
    for case in [
        OpCase::gelu(512, 3072).expect("case"),
        OpCase::layer_norm(512, 768).expect("case"),
        OpCase::attention(4, 12, 128, 64).expect("case"),
        OpCase::cross_entropy(512, 50257).expect("case"),
        OpCase::rotary(8, 9, 128, 64).expect("case"),
        OpCase::split_heads_rotary(8, 128, 9, 64).expect("case"),
        OpCase::frozen_low_rank(1024, 576, 576).expect("case"),
    ] {
        let mut group = c.benchmark_group(format!("ops/{}", case.name()));
        configure(&mut group);
        for form in [Form::Fused, Form::Composed] {
            group.bench_function(form.name(), |b| {
                b.iter(|| black_box(case.forward_backward(form).expect("backward")))
            });
        }
        group.finish();
    }
}

/// Criterion as configured, after the allocator (see `peft_benches::allocator`).
fn criterion() -> Criterion {
    peft_benches::allocator::keep_freed_memory_mapped();
    Criterion::default()
}

criterion_group!(
    name = benches;
    config = criterion();
    targets = frozen_linear,
    frozen_linear_bf16,
    bf16_product,
    lm_head_loss,
    mlp_block,
    attention,
    block,
    ops
);
criterion_main!(benches);
