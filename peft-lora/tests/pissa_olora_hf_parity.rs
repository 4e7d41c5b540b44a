//! PiSSA and OLoRA against HF PEFT, both ways, on the tiny models (fixtures from
//! `scripts/reference/pissa_olora.py`): HF PEFT's adapters, saved unconverted (A and B, the loader recomputing
//! B0 A0 from the base) and converted to plain LoRA of rank 2r, give HF PEFT's logits here; ours, saved both
//! ways, give ours in HF PEFT.

use peft_core::adapter_io::load_adapter;
use peft_core::method::Adapter;
use peft_lora::{InitLoraWeights, Lora, LoraConfig, TargetModules};
use peft_testing::{
    assert_agrees_with_hf, fixture, hf_logits, init, init_loaded, ours_fixture, read_json, tiny,
    Agreement,
};

const AGREE: Agreement = Agreement {
    tolerance: 1e-4,
    min_effect: Some(1e-4),
};

#[test]
fn hf_pissa_and_olora_adapters_load_here_unconverted_and_converted_with_hf_logits() {
    for (base, init_name) in [
        ("tiny-llama", "pissa"),
        ("tiny-gpt2", "pissa"),
        ("tiny-llama", "olora"),
    ] {
        let loaded = tiny(base);
        let folder = format!("hf-{base}-{init_name}");
        let reference = read_json(&fixture(&format!("adapters/{folder}/logits.json")));
        let unconverted = load_adapter(
            &fixture(&format!("adapters/{folder}")),
            &mut init_loaded(&loaded, 0),
        )
        .unwrap()
        .adapter;
        assert_agrees_with_hf(&folder, &loaded, unconverted.as_ref(), &reference, AGREE);
        // The converted folder is plain LoRA of rank 2r over the original weights: the same logits. Its
        // trainable count is twice the unconverted one's, so only the logits are compared.
        let converted_dir = fixture(&format!("adapters/{folder}-converted"));
        let converted = load_adapter(&converted_dir, &mut init_loaded(&loaded, 0))
            .unwrap()
            .adapter;
        assert_eq!(
            converted.num_trainable(),
            2 * unconverted.num_trainable(),
            "{folder}-converted: rank 2r"
        );
        let name = format!("{folder}-converted");
        peft_testing::assert_cases_agree(
            &name,
            &loaded,
            converted.as_ref(),
            &reference["cases"],
            AGREE,
        );
    }
}

fn ours_config(init_name: &str, targets: &[&str]) -> LoraConfig {
    LoraConfig {
        init_lora_weights: InitLoraWeights::Named(init_name.into()),
        lora_alpha: 4.0,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..LoraConfig::new(2, Vec::<String>::new())
    }
}

/// Our adapter as training would leave it: built from the base, then A and B moved by a fixed pattern.
fn ours_trained(config: &LoraConfig, model: &dyn peft_core::model::BaseModel) -> Lora {
    let lora = config.build_lora(&mut init(model, 3)).unwrap();
    for (_, var) in lora.trainable() {
        let t = var.as_tensor();
        let shift: Vec<f32> = (0..t.elem_count())
            .map(|i| 0.03 * ((i % 5) as f32 - 2.0))
            .collect();
        let shift = candle_core::Tensor::from_vec(shift, t.dims(), t.device()).unwrap();
        var.set(&(t + shift).unwrap()).unwrap();
    }
    lora
}

#[test]
fn our_pissa_and_olora_adapters_load_in_hf_peft_with_our_logits() {
    for (base, init_name, targets) in [
        (
            "tiny-llama",
            "pissa",
            &["q_proj", "v_proj", "down_proj"][..],
        ),
        ("tiny-gpt2", "pissa", &["c_attn", "c_fc"][..]),
        (
            "tiny-llama",
            "olora",
            &["q_proj", "v_proj", "down_proj"][..],
        ),
    ] {
        let loaded = tiny(base);
        let model = loaded.model.as_ref();
        let mut config = ours_config(init_name, targets);
        // The fixture names its base as the reference script finds it, not by this machine's path.
        config.common.base_model_name_or_path = Some(base.to_string());
        let ours = ours_trained(&config, model);
        let plain = ours.to_plain_lora().unwrap();
        for (folder, fresh) in [
            (format!("ours-{base}-{init_name}"), &ours as &dyn Adapter),
            (format!("ours-{base}-{init_name}-converted"), &plain),
        ] {
            let dir = fixture(&format!("adapters/{folder}"));
            let Some(committed) = ours_fixture(&dir, fresh, init(model, 0)) else {
                continue;
            };
            let hf = hf_logits(&dir);
            assert_agrees_with_hf(&folder, &loaded, committed.as_ref(), &hf, AGREE);
        }
    }
}
