//! The steps of `build` LoHa and LoKr share: check the common fields, resolve the targets, fill in what the
//! saved config records (the target list, the task type), and seed the dropouts.
//!
//! ```
//! use peft_lycoris::{prepare, LycorisFields};
//! use rand::SeedableRng;
//! let model = peft_models::tiny::gpt2(0);
//! let init = peft_core::method::InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let p = prepare(&LycorisFields::default(), &Default::default(), &init, "LoHa").unwrap();
//! assert_eq!(p.targets.len(), 2); // c_attn of both layers, by role
//! assert_eq!(p.common.task_type.as_deref(), Some("CAUSAL_LM"));
//! ```

use peft_core::method::{CommonConfig, InitCtx};
use peft_core::Result;
use rand::SeedableRng;

use crate::shared::dropout::LycorisDropout;
use crate::shared::fields::LycorisFields;
use crate::shared::targets::{resolve_targets, Target};

/// A config's shared fields checked and resolved against a model.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The modules to adapt, in site order.
    pub targets: Vec<Target>,
    /// The fields to save (`target_modules` filled in).
    pub fields: LycorisFields,
    /// The common fields to save (`task_type` filled in).
    pub common: CommonConfig,
}

/// Checks `fields` and resolves them on `init.model`; `method` names the method in errors.
pub fn prepare(
    fields: &LycorisFields,
    common: &CommonConfig,
    init: &InitCtx,
    method: &str,
) -> Result<Prepared> {
    fields.check(method, common.task_type.as_deref())?;
    let (targets, saved) = resolve_targets(fields, init.model.spec(), method)?;
    let mut fields = fields.clone();
    fields.target_modules = Some(saved);
    let mut common = common.clone();
    if common.task_type.is_none() {
        common.task_type = Some(peft_core::prompt_learning::default_task_type(init.model).into());
    }
    Ok(Prepared {
        targets,
        fields,
        common,
    })
}

/// The dropouts of `fields`, seeded from `init.rng` after the factors are drawn (so that the same seed gives
/// the same factors whatever the dropout); a saved adapter (`fresh = false`) draws nothing.
pub(crate) fn dropout(
    fields: &LycorisFields,
    rank_dropout_scale: bool,
    fresh: bool,
    init: &mut InitCtx,
) -> LycorisDropout {
    let seed = if fresh {
        rand::Rng::random(&mut init.rng)
    } else {
        0
    };
    LycorisDropout::new(
        fields.module_dropout,
        fields.rank_dropout,
        rank_dropout_scale,
        rand::rngs::StdRng::seed_from_u64(seed),
    )
}
