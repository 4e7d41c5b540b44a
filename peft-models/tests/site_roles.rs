//! Every architecture declares each site's role where it registers the site, so that methods can choose their
//! defaults by role: on the seeded tiny models of the zoo, every site has a role, and each module name has the
//! role its place in the transformer gives it (self- and cross-attention alike).

use peft_core::model::BaseModel;
use peft_core::spec::{Role, SiteKind};
use peft_models::opt::{Opt, OptConfig};

/// Checks every site of `model` against `table`: the first `(suffix, role)` whose suffix ends the site's name
/// (after a dot) gives the role the site must play; a site no entry names fails.
fn assert_roles(model: &dyn BaseModel, table: &[(&str, Role)]) {
    let spec = model.spec();
    assert!(!spec.sites.is_empty());
    for site in &spec.sites {
        let expected = table
            .iter()
            .find(|(suffix, _)| site.name == *suffix || site.name.ends_with(&format!(".{suffix}")))
            .map(|(_, role)| *role)
            .unwrap_or_else(|| panic!("{}: no expected role for {}", spec.architecture, site.name));
        assert_eq!(site.role, expected, "{}: {}", spec.architecture, site.name);
        // A norm's role is a norm role and a projection's is not.
        assert_eq!(
            site.role.is_norm(),
            matches!(site.kind, SiteKind::Norm { .. }),
            "{}",
            site.name
        );
    }
    // Every role the table names is played by some site.
    for (suffix, role) in table {
        assert!(
            !spec.sites_with_any_role(&[*role]).is_empty(),
            "{}: no site plays {role:?} ({suffix})",
            spec.architecture
        );
    }
}

#[test]
fn gpt2_declares_the_fused_projection_and_both_c_proj() {
    assert_roles(
        &peft_models::tiny::gpt2(0),
        &[
            ("ln_1", Role::AttentionNorm),
            ("c_attn", Role::QueryKeyValue),
            ("attn.c_proj", Role::AttentionOutput),
            ("ln_2", Role::MlpNorm),
            ("c_fc", Role::MlpUp),
            ("mlp.c_proj", Role::MlpDown),
            ("ln_f", Role::FinalNorm),
        ],
    );
}

#[test]
fn llama_declares_a_gated_mlp() {
    assert_roles(
        &peft_models::tiny::llama(0),
        &[
            ("input_layernorm", Role::AttentionNorm),
            ("q_proj", Role::Query),
            ("k_proj", Role::Key),
            ("v_proj", Role::Value),
            ("o_proj", Role::AttentionOutput),
            ("post_attention_layernorm", Role::MlpNorm),
            ("gate_proj", Role::MlpGate),
            ("up_proj", Role::MlpUp),
            ("down_proj", Role::MlpDown),
            ("model.norm", Role::FinalNorm),
        ],
    );
}

#[test]
fn opt_declares_its_width_projections() {
    let table = [
        ("q_proj", Role::Query),
        ("k_proj", Role::Key),
        ("v_proj", Role::Value),
        ("out_proj", Role::AttentionOutput),
        ("self_attn_layer_norm", Role::AttentionNorm),
        ("fc1", Role::MlpUp),
        ("fc2", Role::MlpDown),
        ("model.decoder.final_layer_norm", Role::FinalNorm),
        // Every layer's `final_layer_norm` is the norm before its MLP.
        ("final_layer_norm", Role::MlpNorm),
    ];
    assert_roles(&peft_models::opt::tiny(0), &table);
    // opt-350m's shape: word embeddings narrower than the hidden size, projected in and out.
    let cfg = OptConfig {
        word_embed_proj_dim: Some(16),
        ..peft_models::opt::tiny_config()
    };
    let projected = Opt::from_weights(
        &cfg,
        &peft_models::opt::tiny_weights(&cfg, 0),
        "tiny-opt-projected",
    )
    .unwrap();
    let mut with_projections = table.to_vec();
    with_projections.push(("project_in", Role::WidthProjection));
    with_projections.push(("project_out", Role::WidthProjection));
    assert_roles(&projected, &with_projections);
}

#[test]
fn bert_declares_post_norms_and_the_pooler() {
    assert_roles(
        &peft_models::bert::tiny(0),
        &[
            ("embeddings.LayerNorm", Role::EmbeddingNorm),
            ("attention.self.query", Role::Query),
            ("attention.self.key", Role::Key),
            ("attention.self.value", Role::Value),
            ("attention.output.dense", Role::AttentionOutput),
            ("attention.output.LayerNorm", Role::AttentionNorm),
            ("intermediate.dense", Role::MlpUp),
            ("output.dense", Role::MlpDown),
            ("output.LayerNorm", Role::MlpNorm),
            ("pooler.dense", Role::Pooler),
        ],
    );
}

#[test]
fn t5_cross_attention_plays_the_same_roles_as_self_attention() {
    let attention = [
        ("q", Role::Query),
        ("k", Role::Key),
        ("v", Role::Value),
        ("o", Role::AttentionOutput),
        ("final_layer_norm", Role::FinalNorm),
        // `layer.0` (self-attention) and `layer.1` (cross-attention) of a decoder block; the feed-forward
        // `layer_norm` is the last sub-layer's.
        ("0.layer_norm", Role::AttentionNorm),
    ];
    let gated = peft_models::t5::tiny(0);
    let mut table = attention.to_vec();
    table.extend([
        ("encoder.block.0.layer.1.layer_norm", Role::MlpNorm),
        ("encoder.block.1.layer.1.layer_norm", Role::MlpNorm),
        ("decoder.block.0.layer.1.layer_norm", Role::AttentionNorm),
        ("decoder.block.1.layer.1.layer_norm", Role::AttentionNorm),
        ("2.layer_norm", Role::MlpNorm),
        ("wi_0", Role::MlpGate),
        ("wi_1", Role::MlpUp),
        ("wo", Role::MlpDown),
    ]);
    assert_roles(&gated, &table);
    let cross = gated
        .spec()
        .sites_with_any_role(&[Role::Query])
        .into_iter()
        .filter(|&id| gated.spec().site(id).name.contains("EncDecAttention"))
        .count();
    assert_eq!(cross, gated.spec().num_layers);

    let relu = peft_models::t5::tiny_with(0, false);
    table.retain(|(suffix, _)| !suffix.starts_with("wi_"));
    table.push(("wi", Role::MlpUp));
    assert_roles(&relu, &table);
}
