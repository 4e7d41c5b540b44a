//! The methods the benches compare, each as the config HF PEFT (or our BitFit) would write.

use peft_core::method::PeftMethod;
use peft_core::PeftError;
use serde_json::json;

/// Virtual tokens of every prompt method in the benches.
pub const VIRTUAL_TOKENS: usize = 8;

/// A method under measurement; [`Method::Frozen`] is the bare model (forward only, nothing to train).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// No adapter.
    Frozen,
    /// Prompt tuning (`PROMPT_TUNING`), random init.
    PromptTuning,
    /// P-tuning (`P_TUNING`) with HF's default MLP encoder, as wide as the model.
    PTuning,
    /// Prefix tuning (`PREFIX_TUNING`) with the projection MLP.
    PrefixTuning,
    /// P-tuning v2: prefix tuning without projection.
    PTuningV2,
    /// LoRA (`LORA`) on the architecture's default targets, r 8.
    Lora,
    /// DoRA (`LORA` with `use_dora`) on the architecture's default targets, r 8.
    Dora,
    /// LoRA started from PiSSA (`init_lora_weights = "pissa"`): LoRA's step plus the frozen `B0 A0` product
    /// each adapted module subtracts.
    Pissa,
    /// BitFit (`BITFIT`) on all biases.
    BitFit,
    /// VeRA (`VERA`) on LoRA's default targets, r 256 (HF's default).
    Vera,
    /// LoHa (`LOHA`) on LoRA's default targets, r 8.
    Loha,
    /// LoKr (`LOKR`) on LoRA's default targets, r 8.
    Lokr,
    /// AdaLoRA (`ADALORA`) on its default targets, init_r 12 -> target_r 8 over 1000 steps: the rank
    /// allocator runs after every step (`deltaT` 1), so its cost is in the step.
    AdaLora,
    /// LayerNorm tuning (`LN_TUNING`) on HF's default norms (every norm where HF has no default).
    LnTuning,
    /// OFT (`OFT`) on LoRA's default targets, HF's default blocks of 32 (Cayley-Neumann series).
    Oft,
}

impl Method {
    /// Every method, in the order the benches run them.
    pub const ALL: [Method; 15] = [
        Method::Frozen,
        Method::PromptTuning,
        Method::PTuning,
        Method::PrefixTuning,
        Method::PTuningV2,
        Method::Lora,
        Method::Dora,
        Method::Pissa,
        Method::BitFit,
        Method::Vera,
        Method::Loha,
        Method::Lokr,
        Method::AdaLora,
        Method::LnTuning,
        Method::Oft,
    ];

    /// The name in bench ids (`lora`, `p-tuning-v2`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Method::Frozen => "frozen",
            Method::PromptTuning => "prompt-tuning",
            Method::PTuning => "p-tuning",
            Method::PrefixTuning => "prefix-tuning",
            Method::PTuningV2 => "p-tuning-v2",
            Method::Lora => "lora",
            Method::Dora => "dora",
            Method::Pissa => "pissa",
            Method::BitFit => "bitfit",
            Method::Vera => "vera",
            Method::Loha => "loha",
            Method::Lokr => "lokr",
            Method::AdaLora => "adalora",
            Method::LnTuning => "ln-tuning",
            Method::Oft => "oft",
        }
    }

    /// The method's config as HF PEFT spells it; `None` for [`Method::Frozen`].
    pub fn config_json(self) -> Option<serde_json::Value> {
        let n = VIRTUAL_TOKENS;
        Some(match self {
            Method::Frozen => return None,
            Method::PromptTuning => json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": n}),
            Method::PTuning => json!({"peft_type": "P_TUNING", "num_virtual_tokens": n}),
            Method::PrefixTuning => json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": n,
                                           "prefix_projection": true}),
            Method::PTuningV2 => json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": n}),
            Method::Lora => json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16}),
            Method::Dora => {
                json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": true})
            }
            Method::Pissa => {
                json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "init_lora_weights": "pissa"})
            }
            Method::BitFit => json!({"peft_type": "BITFIT"}),
            Method::Vera => json!({"peft_type": "VERA", "r": 256}),
            Method::Loha => json!({"peft_type": "LOHA", "r": 8, "alpha": 16}),
            Method::Lokr => json!({"peft_type": "LOKR", "r": 8, "alpha": 16}),
            Method::AdaLora => {
                json!({"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "total_step": 1000})
            }
            Method::LnTuning => json!({"peft_type": "LN_TUNING"}),
            Method::Oft => json!({"peft_type": "OFT", "oft_block_size": 32}),
        })
    }

    /// The parsed config (through typetag, as an experiment file's `[method]` table is read); `None` for
    /// [`Method::Frozen`].
    pub fn config(self) -> peft_core::Result<Option<Box<dyn PeftMethod>>> {
        link_methods();
        self.config_json()
            .map(|json| {
                serde_json::from_value(json.clone())
                    .map_err(|e| PeftError::Config(format!("bench config {json}: {e}")))
            })
            .transpose()
    }
}

/// Links the method crates, so that typetag knows their `peft_type`s.
fn link_methods() {
    peft_prompt::register();
    peft_prefix::register();
    peft_lora::register();
    peft_bitfit::register();
    peft_vera::register();
    peft_lycoris::register();
    peft_ln_tuning::register();
    peft_adalora::register();
    peft_oft::register();
}
