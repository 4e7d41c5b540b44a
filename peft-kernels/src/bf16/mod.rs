//! Mixed-precision frozen products: a weight stored in bf16, multiplied on the CPU's bf16 units, with f32
//! activations (rounded to bf16, round to nearest even, as they are packed), f32 accumulation and f32
//! output, as `torch.autocast` computes a bf16 linear layer except that the output stays f32.
//!
//! Three kernels compute the same function up to the order of the f32 sums (a product of two bf16 values is
//! exact in f32): [`Bf16Kernel::Amx`] (`tdpbf16ps` on the tile units of Intel's Xeons, Sapphire Rapids on),
//! [`Bf16Kernel::Avx512Bf16`] (`vdpbf16ps`, where the CPU has AVX-512 BF16) and [`Bf16Kernel::Fallback`]
//! (the weight widened to f32 block by block, then the f32 GEMM). The frozen op
//! ([`crate::frozen::FrozenGemm`]) runs them for an f32 input and a bf16 weight, forward and backward.
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use peft_core::frozen::FrozenLinear;
//! use peft_kernels::bf16::{bf16_kernel_name, bf16_matmul_with, Bf16Kernel};
//! let dev = Device::Cpu;
//! let w = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap().to_dtype(DType::BF16).unwrap();
//! // 1 + 2^-9 is 1 in bf16: the activations are rounded before they are multiplied.
//! let x = Tensor::new(&[[1f32 + 1. / 512., 1.]], &dev).unwrap();
//! let y = bf16_matmul_with(Bf16Kernel::Fallback, &x, &w).unwrap();
//! assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![3., 7., 11.]]);
//! assert!(!bf16_kernel_name().is_empty());
//!
//! // The frozen op with a bf16 weight: f32 output, a gradient for the input only.
//! let lin = FrozenLinear::new(w.clone(), None, &peft_kernels::frozen::FrozenGemm);
//! let x = Var::new(&[[1f32, 1.]], &dev).unwrap();
//! let y = lin.forward(x.as_tensor()).unwrap();
//! assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![3., 7., 11.]]);
//! let grads = y.sum_all().unwrap().backward().unwrap();
//! assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), vec![vec![9., 12.]]);
//! ```

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod convert;
mod fallback;
mod pack;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod transpose;

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use half::bf16;
use peft_core::{PeftError, Result};

use crate::cpu::{self, Threads};

pub use convert::{round_to_bf16, widen_to_f32};

/// Inputs of at most this many rows take the dot-product path (no packing, no widening of the weight).
const MAX_DOT_ROWS: usize = crate::skinny::MAX_ROWS;

/// The environment variable that forces a kernel (`PEFT_BF16_KERNEL=fallback`, `avx512-bf16` or `amx`); read
/// once.
pub const KERNEL_ENV: &str = "PEFT_BF16_KERNEL";

/// Which kernel multiplies by a bf16 weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// `tdpbf16ps` on AMX tiles (x86-64 with AMX-TILE, AMX-BF16 and the AVX-512 BF16 of the vector kernel,
    /// on Linux 5.16 or later), with the vector kernel's dot products for a few rows.
    Amx,
    /// `vdpbf16ps` (x86-64 with AVX-512 F, BW and BF16).
    Avx512Bf16,
    /// The weight widened to f32, then the f32 GEMM: any CPU.
    Fallback,
}

impl Bf16Kernel {
    /// Every kernel, fastest first (where the CPU runs it).
    pub const ALL: [Bf16Kernel; 3] = [
        Bf16Kernel::Amx,
        Bf16Kernel::Avx512Bf16,
        Bf16Kernel::Fallback,
    ];

    /// The kernel the products run: the fastest this CPU has ([`Bf16Kernel::hardware`]), unless
    /// [`KERNEL_ENV`] names another it can run. Decided once per process.
    pub fn detect() -> Bf16Kernel {
        static CHOSEN: OnceLock<Bf16Kernel> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            choose(
                std::env::var(KERNEL_ENV).ok().as_deref(),
                Bf16Kernel::hardware(),
                |kernel| kernel.is_available(),
            )
        })
    }

    /// The fastest kernel this CPU has, whatever the environment says: AMX where the CPU and OS have it;
    /// else the AVX-512 BF16 kernel where its bf16 dot products outrun the CPU's f32 FMAs (AMD's cores);
    /// else the fallback (on Intel's cores without AMX the widened weight and the f32 GEMM are faster than
    /// `vdpbf16ps`).
    pub fn hardware() -> Bf16Kernel {
        #[cfg(target_arch = "x86_64")]
        if Bf16Kernel::Amx.is_available() {
            return Bf16Kernel::Amx;
        }
        #[cfg(target_arch = "x86_64")]
        if Bf16Kernel::Avx512Bf16.is_available() && avx512::outruns_f32() {
            return Bf16Kernel::Avx512Bf16;
        }
        Bf16Kernel::Fallback
    }

    /// Whether this CPU (and, for AMX, the OS) can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Amx => amx::available(),
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx512Bf16 => avx512::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Bf16Kernel::Amx | Bf16Kernel::Avx512Bf16 => false,
            Bf16Kernel::Fallback => true,
        }
    }

    /// The kernel's name in reports and in [`KERNEL_ENV`]: `amx`, `avx512-bf16` or `fallback`.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "amx",
            Bf16Kernel::Avx512Bf16 => "avx512-bf16",
            Bf16Kernel::Fallback => "fallback",
        }
    }

    /// What the kernel needs, for the error of a product asked of a CPU without it.
    fn requirement(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "a CPU with AMX-BF16 and AVX-512 BF16, on Linux 5.16 or later",
            Bf16Kernel::Avx512Bf16 => "a CPU with AVX-512 BF16",
            Bf16Kernel::Fallback => "nothing",
        }
    }
}

/// The kernel `env` (the value of [`KERNEL_ENV`], if set) asks for on a CPU whose best is `hardware`: a
/// kernel's [`Bf16Kernel::name`] forces it where `can_run` says the CPU runs it (a kernel cannot be forced
/// onto a CPU without it); anything else leaves the hardware's choice.
fn choose(
    env: Option<&str>,
    hardware: Bf16Kernel,
    can_run: impl Fn(Bf16Kernel) -> bool,
) -> Bf16Kernel {
    let Some(wanted) = env.map(str::trim) else {
        return hardware;
    };
    Bf16Kernel::ALL
        .into_iter()
        .find(|k| k.name().eq_ignore_ascii_case(wanted) && can_run(*k))
        .unwrap_or(hardware)
}

/// The name of the kernel the bf16 products run ([`Bf16Kernel::detect`]), for reports.
pub fn bf16_kernel_name() -> String {
    Bf16Kernel::detect().name().to_string()
}

/// `x W^T` for an f32 `x` `[.., k]` and a bf16 `W` `[n, k]` on the CPU, computed by `kernel`: `x` rounded to
/// bf16, f32 sums, an f32 `[.., n]` without a gradient graph (the frozen op,
/// [`crate::frozen::frozen_affine`], is the differentiable form). An error names what is wrong: another
/// dtype or device, mismatched shapes, a kernel this CPU does not have.
pub fn bf16_matmul_with(kernel: Bf16Kernel, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !kernel.is_available() {
        return Err(PeftError::Unsupported(format!(
            "the {} bf16 kernel needs {}",
            kernel.name(),
            kernel.requirement()
        )));
    }
    if !cpu::covers(x) || !is_bf16_on_cpu(w) {
        return Err(PeftError::Unsupported(format!(
            "bf16 matmul: needs an f32 input and a bf16 weight on the CPU, got {:?} on {:?} and {:?} on {:?}",
            x.dtype(),
            x.device().location(),
            w.dtype(),
            w.device().location()
        )));
    }
    let (n, k) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&k) {
        return Err(PeftError::ShapeMismatch {
            what: "bf16 matmul input".into(),
            expected_from: "the weight".into(),
            expected: vec![k],
            got_from: "the input's last dimension".into(),
            got: dims.to_vec(),
        });
    }
    let m = x.elem_count() / k.max(1);
    let mut out = vec![0f32; m * n];
    cpu::with_values(x, |x| {
        with_bf16_values(w, |w| {
            product(kernel, x, w, &mut out, (m, n, k), Threads::All);
            Ok(())
        })
    })?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = n;
    Ok(cpu::tensor(out, &out_dims)?)
}

/// [`bf16_matmul_with`] on the kernel of [`Bf16Kernel::detect`].
pub fn bf16_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    bf16_matmul_with(Bf16Kernel::detect(), x, w)
}

/// Whether `t` holds bf16 values on the CPU (the weights the products take).
pub(crate) fn is_bf16_on_cpu(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::BF16
}

/// Runs `f` on the bf16 values of `t` (on the CPU), made contiguous first (no copy where it already is).
pub(crate) fn with_bf16_values<R>(
    t: &Tensor,
    f: impl FnOnce(&[bf16]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::BF16(values)) = &*storage else {
        candle_core::bail!(
            "bf16 kernel: expected bf16 values on the CPU, got {:?}",
            t.dtype()
        );
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => f(&values[start..end]),
        None => candle_core::bail!("bf16 kernel: the weight must be contiguous"),
    }
}

/// `values` widened to f32 (exact) on the calling thread, for callers already running one task per thread.
pub(crate) fn widened_here(values: &[bf16]) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    fallback::widen_into(values, &mut out);
    out
}

/// The bf16 operand `B[k, n]` of a product `a[m, k] B`.
#[derive(Clone, Copy)]
pub(crate) enum Operand<'a> {
    /// A row-major `W[n, k]` read as its transpose (the forward product `x W^T`).
    Transposed(&'a [bf16]),
    /// A row-major `W[k, n]` (the input gradient `dy W`).
    Rows(&'a [bf16]),
}

impl<'a> Operand<'a> {
    /// The values, `n * k` of them.
    pub(crate) fn values(self) -> &'a [bf16] {
        match self {
            Operand::Transposed(v) | Operand::Rows(v) => v,
        }
    }
}

/// `out[m, n] += x[m, k] w[n, k]^T`, `x` rounded to bf16: a dot product per output for a few rows, the
/// blocked GEMM otherwise.
pub(crate) fn product(
    kernel: Bf16Kernel,
    x: &[f32],
    w: &[bf16],
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    threads: Threads,
) {
    match kernel {
        // A few rows (a decoding step) are dot products: the tiles would be mostly padding.
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Amx | Bf16Kernel::Avx512Bf16 if m <= MAX_DOT_ROWS => {
            avx512::few_rows(x, w, out, (m, n, k), threads)
        }
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Amx => amx::gemm(x, Operand::Transposed(w), out, (m, n, k), threads),
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx512Bf16 => avx512::gemm(x, Operand::Transposed(w), out, (m, n, k), threads),
        Bf16Kernel::Fallback if m <= MAX_DOT_ROWS => {
            fallback::few_rows(x, w, out, (m, n, k), threads)
        }
        _ => fallback::gemm(x, Operand::Transposed(w), out, (m, n, k), threads),
    }
}

/// `out[m, k] += dy[m, n] w[n, k]`, `dy` rounded to bf16: the input gradient of [`product`].
pub(crate) fn input_product(
    kernel: Bf16Kernel,
    dy: &[f32],
    w: &[bf16],
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    threads: Threads,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Amx => amx::gemm(dy, Operand::Rows(w), out, (m, k, n), threads),
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx512Bf16 => avx512::gemm(dy, Operand::Rows(w), out, (m, k, n), threads),
        _ => fallback::gemm(dy, Operand::Rows(w), out, (m, k, n), threads),
    }
}
