//! The CPU kernels of the peft workspace: the differentiable building blocks of the frozen models
//! (normalisations, activations, attention, the cross-entropy and the LM head fused with it), LoRA's low-rank
//! update, and the frozen projections' product ([`frozen::FrozenGemm`]), each a fused CPU kernel with a
//! backward of its own.
//!
//! candle's fused `ops::softmax_last_dim`, `rms_norm`, `layer_norm` and `sdpa` have no backward, and composing
//! these from primitives (see [`composed`]) costs one graph node, one temporary and one zero-filled gradient
//! per primitive. The ops here are one node each; on a device or dtype they do not cover (anything but f32 on
//! the CPU) they run the composed form, which computes the same function.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let x = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
//! let p = peft_kernels::softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
//! assert!((p[0].iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! ```

mod activation;
mod attention;
pub mod bf16;
mod column_scale;
pub mod composed;
pub(crate) mod cpu;
mod cross_entropy;
pub mod frozen;
mod frozen_low_rank;
mod heads;
mod kept_block;
mod linear_cross_entropy;
mod low_rank;
mod norm;
#[cfg(feature = "openblas")]
mod openblas;
pub mod quantized;
mod rotary;
mod skinny;

pub use activation::{gelu_erf, gelu_tanh, silu, silu_mul};
pub use attention::scaled_dot_product_attention;
pub use column_scale::column_scale;
pub use composed::{log_softmax_last_dim, softmax_last_dim};
pub use cross_entropy::cross_entropy;
pub use frozen_low_rank::frozen_low_rank;
pub use heads::{split_heads, split_heads_rotary};
pub use kept_block::{residual_kept_bf16, Activation};
pub use linear_cross_entropy::{linear_cross_entropy, linear_cross_entropy_quantized};
pub use low_rank::low_rank;
pub use norm::{layer_norm, rms_norm};
pub use rotary::rotary;

/// The matrix product the frozen projections run on: `gemm` (the crate candle uses), or `openblas (<core>)`
/// with the cargo feature `openblas`, naming the kernel set OpenBLAS chose for this CPU.
pub fn matmul_backend() -> String {
    #[cfg(feature = "openblas")]
    {
        format!("openblas ({})", openblas::core_name())
    }
    #[cfg(not(feature = "openblas"))]
    {
        "gemm".to_string()
    }
}
