//! The building blocks: the frozen projection op (`frozen_linear/<shape>/...`; SmolLM2's up projection also
//! with its weight kept quantized, `smollm2-up_proj-q4_1` / `-q8_0`), scaled dot-product attention
//! (`attention/<shape>/...`) and one transformer block of the small models (`block/<model>/...`), each
//! forward only and forward + backward; and every fused op against the composed form it replaced
//! (`ops/<op>/<shape>/{fused,composed}`, forward + backward).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use peft_benches::blocks::{AttentionCase, BlockCase, FrozenLinearCase};
use peft_benches::ops::{Form, OpCase};

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

criterion_group!(benches, frozen_linear, attention, block, ops);
criterion_main!(benches);
