//! Dropout on the input of the LoRA branch (`lora_dropout`): [`peft_core::tuner::Dropout`], shared with the
//! other methods that wrap modules, active only while gradients are tracked (training).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use rand::SeedableRng;
//! let d = peft_lora::Dropout::new(0.25, rand::rngs::StdRng::seed_from_u64(0));
//! let x = Tensor::ones(8, DType::F32, &Device::Cpu).unwrap();
//! assert_eq!(peft_core::grad::no_grad(|| d.apply(&x).unwrap()).to_vec1::<f32>().unwrap(), vec![1.0; 8]);
//! assert_eq!(d.p(), 0.25);
//! ```

pub use peft_core::tuner::Dropout;
