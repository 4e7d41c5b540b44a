//! Gradient tracking on or off, like `torch.no_grad()`. candle records the graph of every op whose input
//! tracks a gradient, keeping all intermediate tensors alive until the output is dropped; during evaluation
//! and generation that only costs memory and time. Adapters read their variables through [`param`], which
//! detaches them inside [`no_grad`].
//!
//! ```
//! use candle_core::{Device, Var};
//! use peft_core::grad::{no_grad, param};
//! let v = Var::new(&[1f32, 2.], &Device::Cpu).unwrap();
//! assert!(param(&v).track_op());
//! assert!(!no_grad(|| param(&v).track_op()));
//! assert!(param(&v).track_op()); // restored afterwards
//! ```

use std::cell::Cell;

use candle_core::{Tensor, Var};

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether gradients are tracked on this thread.
pub fn enabled() -> bool {
    ENABLED.with(|e| e.get())
}

/// Runs `f` with gradient tracking off on this thread, restoring the previous state afterwards (also on panic).
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ENABLED.with(|e| e.set(self.0));
        }
    }
    let _restore = Restore(ENABLED.with(|e| e.replace(false)));
    f()
}

/// The tensor of a trainable variable as a forward pass should use it: tracked, or detached inside
/// [`no_grad`].
pub fn param(var: &Var) -> Tensor {
    if enabled() {
        var.as_tensor().clone()
    } else {
        var.as_tensor().detach()
    }
}
