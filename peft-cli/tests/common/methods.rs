//! Every method of the workspace as a config with its matrix learning rate: the method matrix trains each one,
//! the decoding matrix generates and mixes them.

#![allow(dead_code)] // each test file uses its own part

use serde_json::json;

/// Methods by name, as HF PEFT / our configs spell them.
pub fn methods() -> Vec<(&'static str, serde_json::Value, f64)> {
    vec![
        (
            "prompt tuning",
            json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}),
            1e-1,
        ),
        (
            "P-tuning (MLP)",
            json!({"peft_type": "P_TUNING", "num_virtual_tokens": 4, "encoder_hidden_size": 16}),
            1e-2,
        ),
        (
            "P-tuning (LSTM)",
            json!({"peft_type": "P_TUNING", "num_virtual_tokens": 4, "encoder_hidden_size": 16,
                   "encoder_reparameterization_type": "LSTM"}),
            1e-2,
        ),
        (
            "P-tuning v2 (prefix, no projection)",
            json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}),
            5e-2,
        ),
        (
            "prefix tuning (projection)",
            json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4, "prefix_projection": true,
                   "encoder_hidden_size": 16}),
            1e-2,
        ),
        (
            "LoRA",
            json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8}),
            1e-2,
        ),
        (
            "LoRA (rslora, all-linear, bias all)",
            json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": true,
                   "target_modules": "all-linear", "bias": "all"}),
            1e-2,
        ),
        ("BitFit", json!({"peft_type": "BITFIT"}), 1e-2),
        (
            "DoRA",
            json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true}),
            1e-2,
        ),
        (
            "DoRA (rslora, all-linear, bias all)",
            json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true, "use_rslora": true,
                   "target_modules": "all-linear", "bias": "all"}),
            1e-2,
        ),
        (
            "LoRA from PiSSA",
            json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "init_lora_weights": "pissa"}),
            1e-2,
        ),
        (
            "LoRA from OLoRA (all-linear)",
            json!({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "init_lora_weights": "olora",
                   "target_modules": "all-linear"}),
            1e-2,
        ),
        ("VeRA", json!({"peft_type": "VERA", "r": 16}), 3e-2),
        (
            "VeRA (all-linear, projections not saved, bias all)",
            json!({"peft_type": "VERA", "r": 8, "target_modules": "all-linear",
                   "save_projection": false, "bias": "all"}),
            3e-2,
        ),
        (
            "LoHa",
            json!({"peft_type": "LOHA", "r": 4, "alpha": 8}),
            1e-2,
        ),
        ("LN tuning", json!({"peft_type": "LN_TUNING"}), 1e-2),
        (
            // The budget shrinks from step 2 on, a quarter of the way by step 20: some triplets are masked,
            // and no module loses all of them (a fully masked E would end where it started, at zero).
            "AdaLoRA (rank allocator running)",
            json!({"peft_type": "ADALORA", "init_r": 4, "target_r": 2, "total_step": 200,
                   "tinit": 2, "deltaT": 2}),
            1e-2,
        ),
        (
            "OFT",
            json!({"peft_type": "OFT", "oft_block_size": 8}),
            1e-2,
        ),
        (
            "OFT (exact Cayley, all-linear, shared blocks by r, bias all)",
            json!({"peft_type": "OFT", "r": 4, "oft_block_size": 0, "use_cayley_neumann": false,
                   "block_share": true, "target_modules": "all-linear", "bias": "all"}),
            1e-2,
        ),
        (
            "OFT (COFT)",
            json!({"peft_type": "OFT", "oft_block_size": 8, "coft": true, "eps": 0.5}),
            1e-2,
        ),
        (
            "LoKr (decompose_both, all-linear)",
            json!({"peft_type": "LOKR", "r": 1, "alpha": 2, "decompose_both": true,
                   "target_modules": "all-linear"}),
            3e-2,
        ),
        (
            "STACK (prompt tuning + LoRA)",
            json!({"peft_type": "STACK", "adapters": [
                {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3},
                {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
            ]}),
            1e-2,
        ),
    ]
}
