//! Composition: several adapters on one model, trained together (prompt tuning + LoRA, say). The stack's
//! config is `peft_type = "STACK"` with the member configs in `adapters`; its hooks chain the members in order
//! (embeddings one after another, key/value prefixes concatenated, linear middleware nested with the first
//! member outermost). Saved tensors carry the member index: `adapters.<i>.<HF PEFT key>`.
//!
//! ```
//! use peft_core::method::PeftMethod;
//! let config: Box<dyn PeftMethod> =
//!     serde_json::from_str(r#"{"peft_type": "STACK", "adapters": []}"#).unwrap();
//! assert_eq!(config.typetag_name(), "STACK");
//! ```

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{PeftError, Result};
use crate::head::ClassifierHead;
use crate::hooks::{Ctx, Hooks, KvPrefix, LinearFn};
use crate::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use crate::model::BaseModel;
use crate::spec::SiteId;

/// Several methods applied together.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// The member methods, outermost first.
    pub adapters: Vec<Box<dyn PeftMethod>>,
    /// HF PEFT's common fields.
    #[serde(flatten)]
    pub common: CommonConfig,
}

#[typetag::serde(name = "STACK")]
impl PeftMethod for StackConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        if self.adapters.len() < 2 {
            return Err(PeftError::Config(format!(
                "a STACK needs at least two adapters, got {}",
                self.adapters.len()
            )));
        }
        if let Some(nested) = self.adapters.iter().find(|a| a.typetag_name() == "STACK") {
            return Err(PeftError::Config(format!(
                "a STACK cannot contain another STACK ({nested:?}): list its members directly"
            )));
        }
        let members = self
            .adapters
            .iter()
            .map(|a| a.build(init))
            .collect::<Result<Vec<_>>>()?;
        check_disjoint_biases(&members, init.model)?;
        let config = StackConfig {
            adapters: members.iter().map(|m| m.config().clone_method()).collect(),
            common: self.common.clone(),
        };
        Ok(Box::new(Stack { members, config }))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonConfig {
        &mut self.common
    }
}

/// Two members replacing the same bias would silently shadow one another: refuse that.
fn check_disjoint_biases(members: &[Box<dyn Adapter>], model: &dyn BaseModel) -> Result<()> {
    for (id, site) in model.spec().iter_sites() {
        let owners: Vec<&str> = members
            .iter()
            .filter(|m| m.bias(id).is_some())
            .map(|m| m.config().typetag_name())
            .collect();
        if owners.len() > 1 {
            return Err(PeftError::Config(format!(
                "stacked adapters {owners:?} both train the bias of `{}`: keep it in one of them",
                site.name
            )));
        }
    }
    Ok(())
}

/// The built stack.
pub struct Stack {
    members: Vec<Box<dyn Adapter>>,
    config: StackConfig,
}

impl Stack {
    /// The member adapters, outermost first.
    pub fn members(&self) -> &[Box<dyn Adapter>] {
        &self.members
    }
}

/// `members[0].linear(x, |x| members[1].linear(x, ... next))`.
fn chain(
    members: &[Box<dyn Adapter>],
    site: SiteId,
    x: &Tensor,
    next: &LinearFn,
) -> Result<Tensor> {
    match members.split_first() {
        None => next(x),
        Some((first, rest)) => first.linear(site, x, &|x: &Tensor| chain(rest, site, x, next)),
    }
}

fn member_key(i: usize, key: &str) -> String {
    format!("adapters.{i}.{key}")
}

impl Hooks for Stack {
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.members.iter().try_fold(x, |x, m| m.embeddings(x, ctx))
    }

    fn attention_prefix(&self, layer: usize, ctx: &Ctx) -> Result<Option<KvPrefix>> {
        let prefixes: Vec<KvPrefix> = self
            .members
            .iter()
            .map(|m| m.attention_prefix(layer, ctx))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        match prefixes.len() {
            0 => Ok(None),
            1 => Ok(prefixes.into_iter().next()),
            _ => {
                let keys: Vec<&Tensor> = prefixes.iter().map(|p| &p.key).collect();
                let values: Vec<&Tensor> = prefixes.iter().map(|p| &p.value).collect();
                Ok(Some(KvPrefix {
                    key: Tensor::cat(&keys, 2)?,
                    value: Tensor::cat(&values, 2)?,
                }))
            }
        }
    }

    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        chain(&self.members, site, x, next)
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        self.members.iter().find_map(|m| m.bias(site))
    }

    fn norm_weight(&self, site: SiteId) -> Option<Tensor> {
        self.members.iter().find_map(|m| m.norm_weight(site))
    }

    fn touches(&self, site: SiteId) -> bool {
        self.members.iter().any(|m| m.touches(site))
    }
}

impl Adapter for Stack {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn saved_config(&self) -> Box<dyn PeftMethod> {
        Box::new(StackConfig {
            adapters: self.members.iter().map(|m| m.saved_config()).collect(),
            common: self.config.common.clone(),
        })
    }

    fn classifier(&self) -> Option<ClassifierHead> {
        self.members.iter().find_map(|m| m.classifier())
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.members
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                m.trainable()
                    .into_iter()
                    .map(move |(k, v)| (member_key(i, &k), v))
            })
            .collect()
    }

    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut all = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            all.extend(
                m.tensors()?
                    .into_iter()
                    .map(|(k, t)| (member_key(i, &k), t)),
            );
        }
        Ok(all)
    }

    fn notes(&self) -> Vec<String> {
        self.members.iter().flat_map(|m| m.notes()).collect()
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (i, m) in self.members.iter().enumerate() {
            m.load_tensors(&member_share(i, tensors))?;
        }
        Ok(())
    }

    fn training_loss_term(&self) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for m in &self.members {
            if let Some(term) = m.training_loss_term()? {
                total = Some(match total {
                    None => term,
                    Some(t) => (t + term)?,
                });
            }
        }
        Ok(total)
    }

    fn after_optimizer_step(&self, step: usize, grads: &[Tensor]) -> Result<()> {
        // `trainable` lists the members' variables one member after another.
        let mut rest = grads;
        for m in &self.members {
            let n = m.trainable().len();
            if rest.len() < n {
                return Err(PeftError::Unsupported(format!(
                    "the stack's members train {} variables or more, but the step gave {} gradients",
                    grads.len() - rest.len() + n,
                    grads.len()
                )));
            }
            let (own, later) = rest.split_at(n);
            m.after_optimizer_step(step, own)?;
            rest = later;
        }
        Ok(())
    }

    fn step_state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut all = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            all.extend(
                m.step_state()?
                    .into_iter()
                    .map(|(k, t)| (member_key(i, &k), t)),
            );
        }
        Ok(all)
    }

    fn load_step_state(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (i, m) in self.members.iter().enumerate() {
            m.load_step_state(&member_share(i, tensors))?;
        }
        Ok(())
    }
}

/// The tensors of member `i`, under the member's own keys.
fn member_share(i: usize, tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let prefix = member_key(i, "");
    tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|k| (k.to_string(), t.clone())))
        .collect()
}
