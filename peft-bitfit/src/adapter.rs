//! The built BitFit adapter: one trainable bias per chosen site, handed to the model through [`Hooks::bias`]
//! (which replaces the frozen bias of a linear or norm site), saved under the HF parameter names.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use peft_core::hooks::Hooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::SiteId;
use peft_core::{PeftError, Result};

use crate::config::{BitFitConfig, BitFitTargets};
use crate::targets::{fused_query, resolve};

/// A trainable bias at one site.
#[derive(Debug)]
struct TrainedBias {
    /// `<module>.bias`.
    key: String,
    var: Var,
}

/// BitFit's adapter: trainable copies of the chosen biases (zero where the checkpoint has none).
#[derive(Debug)]
pub struct BitFit {
    config: BitFitConfig,
    biases: Vec<TrainedBias>,
    by_site: HashMap<SiteId, usize>,
    notes: Vec<String>,
}

impl BitFit {
    /// Resolves the config's targets on `model` and copies the frozen biases there.
    pub fn new(config: BitFitConfig, model: &dyn BaseModel) -> Result<Self> {
        let sites = resolve(&config, model)?;
        let mut notes = Vec::new();
        let added: Vec<&str> = sites
            .iter()
            .filter(|s| s.added)
            .map(|s| s.key.as_str())
            .collect();
        if !added.is_empty() {
            notes.push(format!(
                "added zero-initialised trainable biases at {} site(s) that have none in the checkpoint \
                 (add_missing_biases = true): {}",
                added.len(),
                added.join(", ")
            ));
        }
        let chosen: Vec<SiteId> = sites.iter().map(|s| s.site).collect();
        if let (BitFitTargets::Paper, Some(fused)) =
            (&config.targets, fused_query(model.spec(), &chosen))
        {
            notes.push(format!(
                "{fused} fuses the query, key and value projections: the whole fused bias trains, not only the \
                 query part the paper trains"
            ));
        }
        let mut biases = Vec::with_capacity(sites.len());
        let mut by_site = HashMap::with_capacity(sites.len());
        for site in sites {
            by_site.insert(site.site, biases.len());
            biases.push(TrainedBias {
                key: site.key,
                var: Var::from_tensor(&site.initial.copy()?)?,
            });
        }
        Ok(BitFit {
            config,
            biases,
            by_site,
            notes,
        })
    }

    /// The HF parameter names of the trained biases, in the model's site order.
    pub fn keys(&self) -> Vec<&str> {
        self.biases.iter().map(|b| b.key.as_str()).collect()
    }
}

impl Hooks for BitFit {
    fn bias(&self, site: SiteId) -> Option<Tensor> {
        self.by_site
            .get(&site)
            .map(|&i| peft_core::grad::param(&self.biases[i].var))
    }

    /// The sites whose bias trains.
    fn touches(&self, site: SiteId) -> bool {
        self.by_site.contains_key(&site)
    }
}

impl Adapter for BitFit {
    /// The sites that got a zero bias added, and how a fused projection is trained.
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.biases
            .iter()
            .map(|b| (b.key.clone(), b.var.clone()))
            .collect()
    }

    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .biases
            .iter()
            .map(|b| (b.key.clone(), b.var.as_tensor().clone()))
            .collect())
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let unknown: Vec<&String> = tensors
            .keys()
            .filter(|k| !self.biases.iter().any(|b| &b.key == *k))
            .collect();
        if !unknown.is_empty() {
            return Err(PeftError::Config(format!(
                "the BitFit file holds biases this config does not target ({unknown:?}); the config's targets \
                 choose {} biases",
                self.biases.len()
            )));
        }
        // Check everything before changing anything, so that a bad file leaves the adapter as it was.
        for b in &self.biases {
            let t = tensors.get(&b.key).ok_or_else(|| {
                PeftError::Config(format!(
                    "the BitFit file lacks `{}`, which its config targets",
                    b.key
                ))
            })?;
            if t.dims() != b.var.dims() {
                return Err(PeftError::ShapeMismatch {
                    what: b.key.clone(),
                    expected_from: "the model".into(),
                    expected: b.var.dims().to_vec(),
                    got_from: "the adapter file".into(),
                    got: t.dims().to_vec(),
                });
            }
        }
        for b in &self.biases {
            b.var.set(&tensors[&b.key].to_dtype(DType::F32)?)?;
        }
        Ok(())
    }
}
