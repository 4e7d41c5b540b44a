//! Forward and train-step time of every method on every architecture: groups `forward/<arch>` and
//! `train_step/<arch>`, one bench per method (`forward/gpt2-tiny/lora`, `train_step/llama-small/bitfit`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use peft_benches::{Arch, Case, Method};
use peft_core::hooks::NoHooks;

/// Short runs: 10 samples of equal iteration counts, so that a slow train step on the small models does not
/// stretch the run (criterion's default linear sampling needs 55 iterations for 10 samples). `seconds` is
/// the measurement time: enough for 10 single-iteration samples of the slowest bench of the group.
fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    seconds: u64,
) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(seconds));
}

fn methods(c: &mut Criterion) {
    for arch in Arch::ALL {
        let case = Case::new(arch).expect("bench case");
        // A small model's train step takes a few hundred milliseconds on one core.
        let small = matches!(arch, Arch::Gpt2Small | Arch::LlamaSmall);
        let mut group = c.benchmark_group(format!("forward/{}", arch.name()));
        configure(&mut group, if small { 2 } else { 1 });
        for method in Method::ALL {
            let adapter = case.adapter(method).expect("adapter builds");
            group.bench_function(method.name(), |b| match &adapter {
                Some(a) => b.iter(|| black_box(case.forward(a.as_ref()).expect("forward"))),
                None => b.iter(|| black_box(case.forward(&NoHooks).expect("forward"))),
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("train_step/{}", arch.name()));
        configure(&mut group, if small { 5 } else { 1 });
        for method in Method::ALL {
            let Some(mut step) = case.train_step(method).expect("adapter builds") else {
                continue;
            };
            group.bench_function(method.name(), |b| {
                b.iter(|| black_box(step.run().expect("train step")))
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
    targets = methods
);
criterion_main!(benches);
