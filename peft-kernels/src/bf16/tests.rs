//! Every kernel this CPU runs against an f64 reference of the bf16-rounded inputs, and against each other.

use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const MS: [usize; 7] = [1, 3, 13, 16, 17, 32, 100];
const NS: [usize; 4] = [1, 31, 33, 576];
const KS: [usize; 5] = [1, 7, 64, 576, 1537];

/// The kernels this CPU can run (the fallback always; the others where the CPU has them).
fn kernels() -> Vec<Bf16Kernel> {
    Bf16Kernel::ALL
        .into_iter()
        .filter(|k| {
            let runs = k.is_available();
            if !runs {
                eprintln!(
                    "{} kernel not tested: this CPU has no {}",
                    k.name(),
                    k.requirement()
                );
            }
            runs
        })
        .collect()
}

/// The kernels other than the fallback that this CPU runs.
fn fast_kernels() -> Vec<Bf16Kernel> {
    kernels()
        .into_iter()
        .filter(|k| *k != Bf16Kernel::Fallback)
        .collect()
}

fn uniform(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1f32..1.)).collect()
}

fn small_integers(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| rng.random_range(-8i32..=8) as f32)
        .collect()
}

fn to_bf16(values: &[f32]) -> Vec<bf16> {
    values.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// `(value, bound)` of `init[i, j] + sum_r a[i, r] b(r, j)` in f64 over the rounded `a`, with `bound` the
/// sum of the terms' magnitudes: recursive f32 summation of `t` terms in any order is within
/// `(t - 1) 2^-24 bound` of the value.
fn reference(
    a: &[f32],
    b: impl Fn(usize, usize) -> f32,
    init: &[f32],
    (m, n, k): (usize, usize, usize),
) -> Vec<(f64, f64)> {
    let a: Vec<f64> = a.iter().map(|&v| pack::rounded(v) as f64).collect();
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let (mut v, mut bound) = (init[i * n + j] as f64, init[i * n + j].abs() as f64);
            for r in 0..k {
                let t = a[i * k + r] * b(r, j) as f64;
                v += t;
                bound += t.abs();
            }
            out.push((v, bound));
        }
    }
    out
}

/// Asserts `got` lies within the summation error of `want` for sums of `k + 1` terms (the bias one of them).
fn assert_within(got: &[f32], want: &[(f64, f64)], k: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let unit = (k + 1) as f64 * f64::powi(2.0, -24);
    for (idx, (&g, &(v, bound))) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - v).abs();
        assert!(
            err <= unit * bound + 1e-30,
            "{what}: element {idx} is {g}, expected {v} (error {err:e}, bound {:e})",
            unit * bound
        );
    }
}

#[test]
fn both_products_match_the_f64_reference_of_the_rounded_inputs() {
    let mut rng = StdRng::seed_from_u64(22);
    for kernel in kernels() {
        for &k in &KS {
            for &n in &NS {
                let w = to_bf16(&uniform(&mut rng, n * k));
                let wf = |r: usize, c: usize| w[c * k + r].to_f32();
                for &m in &MS {
                    let x = uniform(&mut rng, m * k);
                    let bias = uniform(&mut rng, m * n);
                    let mut y = bias.clone();
                    product(kernel, &x, &w, &mut y, (m, n, k), Threads::All);
                    let want = reference(&x, wf, &bias, (m, n, k));
                    assert_within(&y, &want, k, &format!("{kernel:?} x W^T {m}x{n}x{k}"));

                    // dx[m, k] = dy[m, n] W[n, k]: the reduction runs over n.
                    let dy = uniform(&mut rng, m * n);
                    let mut dx = vec![0f32; m * k];
                    input_product(kernel, &dy, &w, &mut dx, (m, n, k), Threads::All);
                    let want = reference(
                        &dy,
                        |r, c| w[r * k + c].to_f32(),
                        &vec![0.; m * k],
                        (m, k, n),
                    );
                    assert_within(&dx, &want, n, &format!("{kernel:?} dy W {m}x{n}x{k}"));
                }
            }
        }
    }
}

/// Small integers multiply and add exactly in f32: any misplaced pair, row, column or padding shows as an
/// exact difference, whatever the summation order.
#[test]
fn integer_inputs_give_exact_results_for_every_shape() {
    let mut rng = StdRng::seed_from_u64(23);
    for kernel in kernels() {
        for &k in &KS {
            for &n in &NS {
                let wv = small_integers(&mut rng, n * k);
                let w = to_bf16(&wv);
                for &m in &MS {
                    let x = small_integers(&mut rng, m * k);
                    let bias = small_integers(&mut rng, m * n);
                    let mut y = bias.clone();
                    product(kernel, &x, &w, &mut y, (m, n, k), Threads::All);
                    for i in 0..m {
                        for j in 0..n {
                            let want: f32 = bias[i * n + j]
                                + (0..k).map(|r| x[i * k + r] * wv[j * k + r]).sum::<f32>();
                            assert_eq!(y[i * n + j], want, "{kernel:?} {m}x{n}x{k} at ({i}, {j})");
                        }
                    }
                    let dy = small_integers(&mut rng, m * n);
                    let mut dx = vec![0f32; m * k];
                    input_product(kernel, &dy, &w, &mut dx, (m, n, k), Threads::All);
                    for i in 0..m {
                        for c in 0..k {
                            let want: f32 = (0..n).map(|j| dy[i * n + j] * wv[j * k + c]).sum();
                            assert_eq!(
                                dx[i * k + c],
                                want,
                                "{kernel:?} dy W {m}x{n}x{k} at ({i}, {c})"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A weight of more than one block: the fallback's blocks fill their own columns (forward) and add their
/// share of the reduction (input gradient).
#[test]
fn the_fallback_walks_a_large_weight_in_blocks() {
    let mut rng = StdRng::seed_from_u64(26);
    let (m, n, k) = (20, 700, 1537);
    assert!(n * k > fallback::BLOCK_VALUES && n * k < 2 * fallback::BLOCK_VALUES);
    let w = to_bf16(&uniform(&mut rng, n * k));
    let x = uniform(&mut rng, m * k);
    let bias = uniform(&mut rng, m * n);
    let mut y = bias.clone();
    fallback::gemm(&x, Operand::Transposed(&w), &mut y, (m, n, k), Threads::All);
    let want = reference(&x, |r, c| w[c * k + r].to_f32(), &bias, (m, n, k));
    assert_within(&y, &want, k, "forward");
    let dy = uniform(&mut rng, m * n);
    let mut dx = vec![0f32; m * k];
    input_product(
        Bf16Kernel::Fallback,
        &dy,
        &w,
        &mut dx,
        (m, n, k),
        Threads::All,
    );
    let want = reference(
        &dy,
        |r, c| w[r * k + c].to_f32(),
        &vec![0.; m * k],
        (m, k, n),
    );
    assert_within(&dx, &want, n, "input gradient");
}

#[test]
fn the_fast_kernels_equal_the_fallback_up_to_summation_order() {
    let mut rng = StdRng::seed_from_u64(24);
    for kernel in fast_kernels() {
        // SmolLM2-like shapes, both sides of the few-rows threshold; reductions of several AMX blocks.
        for (m, n, k) in [
            (1, 576, 1536),
            (16, 1536, 576),
            (17, 192, 576),
            (300, 576, 1537),
            (64, 96, 2100),
        ] {
            let x = uniform(&mut rng, m * k);
            let w = to_bf16(&uniform(&mut rng, n * k));
            let bound: Vec<f64> = (0..m * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    (0..k)
                        .map(|r| (pack::rounded(x[i * k + r]) * w[j * k + r].to_f32()).abs() as f64)
                        .sum()
                })
                .collect();
            let mut fast = vec![0f32; m * n];
            product(kernel, &x, &w, &mut fast, (m, n, k), Threads::All);
            let mut slow = vec![0f32; m * n];
            product(
                Bf16Kernel::Fallback,
                &x,
                &w,
                &mut slow,
                (m, n, k),
                Threads::All,
            );
            let unit = 2.0 * k as f64 * f64::powi(2.0, -24);
            for (e, ((a, b), bound)) in fast.iter().zip(&slow).zip(&bound).enumerate() {
                let d = (*a as f64 - *b as f64).abs();
                assert!(
                    d <= unit * bound,
                    "{kernel:?} {m}x{n}x{k} element {e}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn the_fast_gemms_do_not_depend_on_the_thread_count() {
    let mut rng = StdRng::seed_from_u64(25);
    let (m, n, k) = (130, 300, 777);
    let x = uniform(&mut rng, m * k);
    let w = to_bf16(&uniform(&mut rng, n * k));
    for kernel in fast_kernels() {
        let mut one = vec![0f32; m * n];
        product(kernel, &x, &w, &mut one, (m, n, k), Threads::One);
        let mut three = vec![0f32; m * n];
        crate::cpu::test_pool(3)
            .install(|| product(kernel, &x, &w, &mut three, (m, n, k), Threads::All));
        assert_eq!(one, three, "{kernel:?}");
    }
}

/// The AMX kernel runs on every thread of a pool (each loads its tile configuration and asks nothing of the
/// others), and products nested in another's rayon tasks (each with its own packing buffers) agree.
#[test]
fn amx_products_run_on_every_thread_and_nested() {
    if !Bf16Kernel::Amx.is_available() {
        eprintln!("skipped: no AMX on this CPU or OS");
        return;
    }
    let mut rng = StdRng::seed_from_u64(27);
    let (m, n, k) = (40, 70, 100);
    let x = uniform(&mut rng, m * k);
    let w = to_bf16(&uniform(&mut rng, n * k));
    let mut want = vec![0f32; m * n];
    product(Bf16Kernel::Amx, &x, &w, &mut want, (m, n, k), Threads::One);
    let outs: Vec<Vec<f32>> = crate::cpu::test_pool(4).install(|| {
        use rayon::prelude::*;
        (0..16)
            .into_par_iter()
            .map(|_| {
                let mut y = vec![0f32; m * n];
                product(Bf16Kernel::Amx, &x, &w, &mut y, (m, n, k), Threads::All);
                y
            })
            .collect()
    });
    for y in outs {
        assert_eq!(y, want);
    }
}

#[test]
fn the_environment_forces_a_kernel_the_cpu_can_run() {
    use Bf16Kernel::*;
    let all = |_: Bf16Kernel| true;
    let no_amx = |k: Bf16Kernel| k != Amx;
    let neither = |k: Bf16Kernel| k == Fallback;
    assert_eq!(choose(None, Amx, all), Amx);
    assert_eq!(choose(None, Fallback, all), Fallback);
    assert_eq!(choose(Some("fallback"), Amx, all), Fallback);
    assert_eq!(choose(Some(" Fallback "), Avx512Bf16, all), Fallback);
    // A CPU whose best is AMX, or the fallback (Intel's without AMX), runs the vector kernel when asked.
    assert_eq!(choose(Some("avx512-bf16"), Amx, all), Avx512Bf16);
    assert_eq!(choose(Some("AVX512-BF16"), Fallback, no_amx), Avx512Bf16);
    assert_eq!(choose(Some("amx"), Fallback, all), Amx);
    // A kernel cannot be forced onto a CPU without it.
    assert_eq!(choose(Some("amx"), Avx512Bf16, no_amx), Avx512Bf16);
    assert_eq!(choose(Some("avx512-bf16"), Fallback, neither), Fallback);
    assert_eq!(choose(Some(""), Avx512Bf16, all), Avx512Bf16);
    assert_eq!(choose(Some("tpu"), Fallback, all), Fallback);
    // The hardware's choice is a kernel it can run, and no slower one where a faster runs.
    let best = Bf16Kernel::hardware();
    assert!(best.is_available());
    if Amx.is_available() {
        assert_eq!(best, Amx);
    }
    assert_eq!(Amx.name(), "amx");
    assert_eq!(Avx512Bf16.name(), "avx512-bf16");
    assert_eq!(Fallback.name(), "fallback");
    assert!(Fallback.is_available());
}

#[test]
fn the_tensor_entry_checks_its_inputs() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1f32, 2., 3.]], &dev).unwrap();
    let w = Tensor::new(&[[1f32, 0., 1.]], &dev).unwrap();
    let err = bf16_matmul_with(Bf16Kernel::Fallback, &x, &w)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bf16 weight") && err.contains("F32"), "{err}");
    let w = w.to_dtype(DType::BF16).unwrap();
    let narrow = Tensor::new(&[[1f32, 2.]], &dev).unwrap();
    let err = bf16_matmul_with(Bf16Kernel::Fallback, &narrow, &w)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[1, 2]") && err.contains("[3]"), "{err}");
    let y = bf16_matmul_with(Bf16Kernel::Fallback, &x, &w).unwrap();
    assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![4.]]);
    for kernel in [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16] {
        if kernel.is_available() {
            let y = bf16_matmul_with(kernel, &x, &w).unwrap();
            assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![4.]]);
        } else {
            let err = bf16_matmul_with(kernel, &x, &w).unwrap_err().to_string();
            assert!(
                err.contains(kernel.name()) && err.contains("AVX-512 BF16"),
                "{err}"
            );
        }
    }
}
