//! Which sites of a frozen model BitFit trains a bias at, and where each bias starts: resolved once from the
//! config's `targets` against the model's spec.

use candle_core::{DType, Tensor};
use peft_core::model::BaseModel;
use peft_core::spec::{ModelSpec, Role, Site, SiteId, SiteKind};
use peft_core::{PeftError, Result};

use crate::config::{BitFitConfig, BitFitTargets};

/// The roles of the `"paper"` preset: the query projection and the intermediate (first, widening) MLP
/// projection, the paper's `b_q` and `b_m2` (in BERT-large these are 0.04% of the parameters, which is what
/// fixes `m2` as the 4h-wide layer). A fused query-key-value projection stands for the query, so its whole bias
/// trains; gated MLPs (LLaMA, T5 v1.1) have two intermediate projections, and both train.
pub const PAPER_ROLES: &[Role] = &[Role::Query, Role::QueryKeyValue, Role::MlpUp, Role::MlpGate];

/// The sites the `"paper"` preset trains, in site order; an error where no site declares those roles.
pub(crate) fn paper_sites(spec: &ModelSpec) -> Result<Vec<SiteId>> {
    let sites = spec.sites_with_any_role(PAPER_ROLES);
    if sites.is_empty() {
        return Err(PeftError::Config(format!(
            "BitFit's \"paper\" preset trains the query and intermediate MLP biases, but no module of {} ({}) \
             declares the query, fused query-key-value, MLP up or gate role: list those modules in targets instead",
            spec.name_or_path, spec.architecture
        )));
    }
    Ok(sites)
}

/// The short name of a fused query-key-value projection among `sites` (GPT-2's `c_attn`), whose whole bias
/// the paper preset trains.
pub(crate) fn fused_query(spec: &ModelSpec, sites: &[SiteId]) -> Option<String> {
    sites
        .iter()
        .map(|&id| spec.site(id))
        .find(|s| s.role == Role::QueryKeyValue)
        .map(|s| s.short_name().to_string())
}

/// One trained bias: its site, its HF parameter name and its starting value.
#[derive(Debug, Clone)]
pub(crate) struct BiasSite {
    /// The linear or norm site the bias replaces the frozen bias of.
    pub site: SiteId,
    /// `<module>.bias`, the HF parameter name.
    pub key: String,
    /// The frozen bias `[dim]`, or zeros where the checkpoint has none.
    pub initial: Tensor,
    /// True where the checkpoint has no bias and a zero one was added.
    pub added: bool,
}

/// Features of a site's bias.
fn bias_dim(site: &Site) -> usize {
    match site.kind {
        SiteKind::Linear { out_features, .. } => out_features,
        SiteKind::Norm { dim } => dim,
    }
}

/// Whether `target` names `site`: its full name, or a dotted suffix of it (`c_attn`, `mlp.c_proj`).
fn matches(site: &Site, target: &str) -> bool {
    site.name == target || site.name.ends_with(&format!(".{target}"))
}

/// The module directly above a site, unless that is a layer index (`attn` of `transformer.h.0.attn.c_proj`).
fn parent(site: &Site) -> Option<&str> {
    let parent = site.name.rsplit('.').nth(1)?;
    (!parent.chars().all(|c| c.is_ascii_digit())).then_some(parent)
}

/// The names a target list can use, for error messages: every short name, plus `parent.short` where a short
/// name occurs under several parents (`attn.c_proj`, `mlp.c_proj`).
pub(crate) fn candidates(model: &dyn BaseModel) -> Vec<String> {
    let sites = &model.spec().sites;
    let mut out: Vec<String> = Vec::new();
    for site in sites {
        let short = site.short_name().to_string();
        if !out.contains(&short) {
            out.push(short);
        }
    }
    for site in sites {
        let short = site.short_name();
        let mut parents: Vec<&str> = sites
            .iter()
            .filter(|s| s.short_name() == short)
            .filter_map(parent)
            .collect();
        parents.dedup();
        parents.sort_unstable();
        parents.dedup();
        if let (true, Some(p)) = (parents.len() > 1, parent(site)) {
            let name = format!("{p}.{short}");
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// The frozen bias at `site`, where the checkpoint has one.
fn frozen_bias(model: &dyn BaseModel, id: SiteId, site: &Site) -> Result<Option<Tensor>> {
    if !site.has_bias {
        return Ok(None);
    }
    let bias = match site.kind {
        SiteKind::Linear { .. } => model.frozen_linear(id).and_then(|l| l.bias().cloned()),
        SiteKind::Norm { .. } => {
            let key = format!("{}.bias", site.name);
            model
                .parameters()
                .into_iter()
                .find_map(|(name, t)| (name == key).then_some(t))
        }
    };
    match bias {
        Some(b) => Ok(Some(b.to_dtype(DType::F32)?)),
        None => Err(PeftError::Unsupported(format!(
            "the model's spec says {} has a bias, but the model does not give it (a model bug)",
            site.name
        ))),
    }
}

/// Resolves the config's targets to bias sites, in the model's site order.
pub(crate) fn resolve(config: &BitFitConfig, model: &dyn BaseModel) -> Result<Vec<BiasSite>> {
    let spec = model.spec();
    let chosen: Vec<SiteId> = match &config.targets {
        BitFitTargets::All => spec
            .iter_sites()
            .filter(|(_, s)| {
                s.has_bias
                    || (config.add_missing_biases && matches!(s.kind, SiteKind::Linear { .. }))
            })
            .map(|(id, _)| id)
            .collect(),
        BitFitTargets::Paper => paper_sites(spec)?,
        BitFitTargets::Modules(names) => by_name(model, names)?,
    };
    let chosen: Vec<SiteId> = match &config.layers_to_transform {
        None => chosen,
        Some(layers) => {
            if let Some(bad) = layers.iter().find(|&&l| l >= spec.num_layers) {
                return Err(PeftError::Config(format!(
                    "BitFit layers_to_transform names layer {bad}, but {} has layers 0..{}",
                    spec.name_or_path, spec.num_layers
                )));
            }
            chosen
                .into_iter()
                .filter(|&id| spec.site(id).layer.is_some_and(|l| layers.contains(&l)))
                .collect()
        }
    };
    if chosen.is_empty() {
        return Err(PeftError::Config(format!(
            "BitFit found no bias to train in {} ({}): it has no biases, so set add_missing_biases = true",
            spec.name_or_path, spec.architecture
        )));
    }
    let missing: Vec<&str> = chosen
        .iter()
        .map(|&id| spec.site(id))
        .filter(|s| !s.has_bias)
        .map(|s| s.name.as_str())
        .collect();
    if !config.add_missing_biases && !missing.is_empty() {
        return Err(PeftError::Config(format!(
            "BitFit targets {} site(s) without a bias in the checkpoint ({}{}): set add_missing_biases = true \
             to train zero-initialised biases there, or choose sites that have one",
            missing.len(),
            missing[..missing.len().min(4)].join(", "),
            if missing.len() > 4 { ", ..." } else { "" }
        )));
    }
    chosen
        .into_iter()
        .map(|id| {
            let site = spec.site(id);
            let frozen = frozen_bias(model, id, site)?;
            let added = frozen.is_none();
            let initial = match frozen {
                Some(b) => b,
                None => Tensor::zeros(bias_dim(site), DType::F32, model.device())?,
            };
            Ok(BiasSite {
                site: id,
                key: format!("{}.bias", site.name),
                initial,
                added,
            })
        })
        .collect()
}

/// The sites matched by module names; a name that matches nothing is an error listing the candidates.
fn by_name(model: &dyn BaseModel, names: &[String]) -> Result<Vec<SiteId>> {
    let spec = model.spec();
    if names.is_empty() {
        return Err(PeftError::Config(format!(
            "BitFit targets is an empty list: name modules ({}), or use \"all\" or \"paper\"",
            candidates(model).join(", ")
        )));
    }
    for name in names {
        if !spec.sites.iter().any(|s| matches(s, name)) {
            return Err(PeftError::Config(format!(
                "BitFit target `{name}` matches no module of {} ({}); candidates: {}",
                spec.name_or_path,
                spec.architecture,
                candidates(model).join(", ")
            )));
        }
    }
    Ok(spec
        .iter_sites()
        .filter(|(_, s)| names.iter().any(|n| matches(s, n)))
        .map(|(id, _)| id)
        .collect())
}
