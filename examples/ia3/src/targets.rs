//! Which frozen projections IA3 scales, resolved once against the model's spec with HF PEFT's matching rules:
//! a listed `target_modules` / `exclude_modules` name matches a module whose full name equals it or ends with
//! `.<name>`; a listed `feedforward_modules` name matches a module whose full name ends with it (no dot needed,
//! as HF PEFT's `_check_target_module_feedforward` does); the list rule and the messages' names are
//! [`peft_core::tuner`]'s, which any method crate can use. A string is a regular expression in HF PEFT, matched
//! against the whole module name; this example accepts only strings that are plain module names, plus
//! `all-linear`, and refuses an expression rather than read it another way.

use peft_core::spec::{ModelSpec, Role, SiteId, SiteKind};
use peft_core::tuner::{
    describe_model, describe_roles, linear_module_names, list_entry_matches, ALL_LINEAR,
};
use peft_core::{PeftError, Result};
use serde::{Deserialize, Serialize};

/// HF PEFT's `Optional[Union[list[str], str]]` module selections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModuleSelection {
    /// Module names matched by suffix (the usual form, and the form saved configs carry).
    Names(Vec<String>),
    /// A pattern matched against the whole module name (`all-linear`, or a plain module name here).
    Pattern(String),
}

impl ModuleSelection {
    /// A list selection.
    pub fn names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        ModuleSelection::Names(names.into_iter().map(Into::into).collect())
    }
}

/// The roles IA3 scales when `target_modules` is not set: the key and value projections (or the fused
/// projection that computes them) and the MLP's down projection. This is the rule behind HF PEFT's
/// per-architecture table (`TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING`), stated once for any model
/// whose sites declare their roles. It gives HF's lists for GPT-2 (`c_attn`, `mlp.c_proj`), LLaMA (`k_proj`,
/// `v_proj`, `down_proj`) and T5 (`k`, `v`, `wo`), and differs from HF's table on two architectures of the zoo:
/// for OPT HF lists `q_proj`, `k_proj`, `fc2` (the query, not the value); for BERT HF lists `key`, `value`,
/// `output.dense`, whose suffix also selects the attention's `attention.output.dense` (scaled as a
/// feed-forward module), where the role rule takes the MLP's `output.dense` only (saved as per-layer suffixes,
/// `0.output.dense`, ...). Give `target_modules` and `feedforward_modules` to get HF's choice there.
pub const TARGET_ROLES: &[Role] = &[Role::Key, Role::Value, Role::QueryKeyValue, Role::MlpDown];

/// The roles whose input IA3 scales when `feedforward_modules` is not set (HF PEFT's
/// `TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING`): the MLP's down projection.
pub const FEEDFORWARD_ROLES: &[Role] = &[Role::MlpDown];

/// The default (targets, feed-forward modules) of a model, as a saved config lists them, from
/// [`TARGET_ROLES`] and [`FEEDFORWARD_ROLES`]; `None` where no linear site plays a target role. The names are
/// the shortest dotted suffixes that select exactly those sites, and every feed-forward name is also listed as
/// a target, as HF PEFT requires of a config it reads.
pub fn default_modules(spec: &ModelSpec) -> Option<(Vec<String>, Vec<String>)> {
    let targets = spec.projections_with_any_role(TARGET_ROLES);
    if targets.is_empty() {
        return None;
    }
    let feedforward = spec.projections_with_any_role(FEEDFORWARD_ROLES);
    let others: Vec<SiteId> = targets
        .iter()
        .copied()
        .filter(|id| !feedforward.contains(id))
        .collect();
    let mut feedforward_names = spec.target_names(&feedforward);
    // Feed-forward names match by plain suffix (no dot needed): where a suffix would also catch another
    // target, name the feed-forward modules in full.
    let by_suffix = ModuleSelection::Names(feedforward_names.clone());
    let exact = targets.iter().all(|&id| {
        let name = &spec.site(id).name;
        is_feedforward(&by_suffix, name).ok() == Some(feedforward.contains(&id))
    });
    if !exact {
        feedforward_names = feedforward
            .iter()
            .map(|&id| spec.site(id).name.clone())
            .collect();
    }
    let mut target_names = spec.target_names(&others);
    for name in &feedforward_names {
        if !target_names.contains(name) {
            target_names.push(name.clone());
        }
    }
    Some((target_names, feedforward_names))
}

/// A string that a regular expression engine would read as itself (no metacharacters).
fn is_literal(pattern: &str) -> bool {
    !pattern.chars().any(|c| "\\^$.|?*+()[]{}".contains(c))
}

/// How a string selection is matched here: the whole name, and only plain names.
fn literal_pattern<'a>(field: &str, pattern: &'a str) -> Result<&'a str> {
    if is_literal(pattern) {
        Ok(pattern)
    } else {
        Err(PeftError::Unsupported(format!(
            "{field} = {pattern:?} is a regular expression, which this IA3 implementation does not evaluate: \
             list the module names instead (e.g. [\"k_proj\", \"v_proj\"])"
        )))
    }
}

/// Whether `key` is selected by a target / exclude selection (HF PEFT's `check_target_module_exists`).
fn selects(field: &str, selection: &ModuleSelection, key: &str) -> Result<bool> {
    Ok(match selection {
        ModuleSelection::Names(names) => names.iter().any(|n| list_entry_matches(n, key)),
        ModuleSelection::Pattern(p) => key == literal_pattern(field, p)?,
    })
}

/// Whether `key` is a feed-forward module (HF PEFT's `_check_target_module_feedforward`: plain suffix match).
fn is_feedforward(selection: &ModuleSelection, key: &str) -> Result<bool> {
    Ok(match selection {
        ModuleSelection::Names(names) => names.iter().any(|n| key.ends_with(n.as_str())),
        ModuleSelection::Pattern(p) => key == literal_pattern("feedforward_modules", p)?,
    })
}

/// One targeted projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The site in the model's spec.
    pub site: SiteId,
    /// Its Hugging Face module name.
    pub module: String,
    /// Whether IA3 scales its input (feed-forward) rather than its output.
    pub feedforward: bool,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the checkpoint stores the weight `[in, out]` (GPT-2's Conv1D).
    pub fan_in_fan_out: bool,
}

/// The selections as they will be saved: defaults and `all-linear` filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `target_modules` to save.
    pub target_modules: ModuleSelection,
    /// `feedforward_modules` to save.
    pub feedforward_modules: ModuleSelection,
    /// The targeted projections, in spec order.
    pub targets: Vec<Target>,
}

/// Resolves the selections against `spec`. Errors name what did not fit and what to write instead.
pub fn resolve(
    spec: &ModelSpec,
    target_modules: Option<&ModuleSelection>,
    feedforward_modules: Option<&ModuleSelection>,
    exclude_modules: Option<&ModuleSelection>,
) -> Result<Resolved> {
    let (target_modules_given, feedforward_modules_given) = (target_modules, feedforward_modules);
    let defaults = default_modules(spec);
    let no_default = |field: &str| {
        PeftError::Config(format!(
            "IA3 has no default {field} for {}: no linear module declares the {} role; set target_modules \
             and feedforward_modules",
            describe_model(spec),
            describe_roles(TARGET_ROLES)
        ))
    };
    let linear_sites = || {
        spec.iter_sites()
            .filter(|(_, s)| matches!(s.kind, SiteKind::Linear { .. }))
    };
    let target_modules = match target_modules {
        Some(ModuleSelection::Pattern(p)) if p.eq_ignore_ascii_case(ALL_LINEAR) => {
            // As HF PEFT: every linear module by full name (the LM head is not a site, so it is never included).
            ModuleSelection::names(linear_sites().map(|(_, s)| s.name.clone()))
        }
        Some(t) => t.clone(),
        None => ModuleSelection::Names(
            defaults
                .clone()
                .ok_or_else(|| no_default("target_modules"))?
                .0,
        ),
    };
    let feedforward_modules = match feedforward_modules {
        Some(f) => f.clone(),
        None => {
            ModuleSelection::Names(defaults.ok_or_else(|| no_default("feedforward_modules"))?.1)
        }
    };
    let mut targets = Vec::new();
    for (site, s) in spec.iter_sites() {
        if !selects("target_modules", &target_modules, &s.name)? {
            continue;
        }
        if let Some(ex) = exclude_modules {
            if selects("exclude_modules", ex, &s.name)? {
                continue;
            }
        }
        let SiteKind::Linear {
            in_features,
            out_features,
            fan_in_fan_out,
        } = s.kind
        else {
            return Err(PeftError::Config(format!(
                "target module `{}` is a norm; IA3 scales linear projections only",
                s.name
            )));
        };
        targets.push(Target {
            site,
            module: s.name.clone(),
            feedforward: is_feedforward(&feedforward_modules, &s.name)?,
            in_features,
            out_features,
            fan_in_fan_out,
        });
    }
    // HF PEFT's IA3Config checks that feedforward_modules is a subset of target_modules when both are lists.
    // A name that is not literally listed but names targeted modules passes here: HF PEFT saves an
    // `all-linear` adapter with full module names as targets and suffixes as feed-forward modules, and then
    // refuses to reload its own file; this reads it.
    if let (Some(ModuleSelection::Names(t)), Some(ModuleSelection::Names(f))) =
        (target_modules_given, feedforward_modules_given)
    {
        let outside: Vec<&String> = f
            .iter()
            .filter(|n| !t.contains(n) && !targets.iter().any(|tg| tg.module.ends_with(n.as_str())))
            .collect();
        if !outside.is_empty() {
            return Err(PeftError::Config(format!(
                "feedforward_modules must be a subset of target_modules: {outside:?} are not in {t:?}"
            )));
        }
    }
    if targets.is_empty() {
        let names = linear_module_names(spec);
        return Err(PeftError::Config(format!(
            "target_modules {target_modules:?} match no linear module of {} (`{}`); its linear modules are named {names:?}",
            spec.name_or_path, spec.architecture
        )));
    }
    Ok(Resolved {
        target_modules,
        feedforward_modules,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use peft_core::spec::Site;

    fn spec() -> ModelSpec {
        let mut spec = ModelSpec::new("gpt2", 1, 8, 2, 2, 10, 16);
        let p = "transformer.h.0";
        let conv = |name: &str, i, o, role| {
            Site::conv1d(format!("{p}.{name}"), Some(0), i, o).with_role(role)
        };
        spec.add_site(
            Site::norm(format!("{p}.ln_1"), Some(0), 8, true).with_role(Role::AttentionNorm),
        );
        spec.add_site(conv("attn.c_attn", 8, 24, Role::QueryKeyValue));
        spec.add_site(conv("attn.c_proj", 8, 8, Role::AttentionOutput));
        spec.add_site(conv("mlp.c_fc", 8, 32, Role::MlpUp));
        spec.add_site(conv("mlp.c_proj", 32, 8, Role::MlpDown));
        spec
    }

    fn modules(r: &Resolved) -> Vec<(&str, bool)> {
        r.targets
            .iter()
            .map(|t| (t.module.as_str(), t.feedforward))
            .collect()
    }

    #[test]
    fn defaults_match_by_dotted_suffix_so_attn_c_proj_is_not_mlp_c_proj() {
        let r = resolve(&spec(), None, None, None).unwrap();
        assert_eq!(
            modules(&r),
            [
                ("transformer.h.0.attn.c_attn", false),
                ("transformer.h.0.mlp.c_proj", true)
            ]
        );
        assert_eq!(
            r.target_modules,
            ModuleSelection::names(["c_attn", "mlp.c_proj"])
        );
    }

    #[test]
    fn all_linear_expands_to_full_names_and_excludes_apply() {
        let all = ModuleSelection::Pattern("all-linear".into());
        let ff = ModuleSelection::names(["c_fc"]);
        let ex = ModuleSelection::names(["attn.c_proj"]);
        let r = resolve(&spec(), Some(&all), Some(&ff), Some(&ex)).unwrap();
        assert_eq!(r.targets.len(), 3);
        assert!(r
            .targets
            .iter()
            .all(|t| t.module != "transformer.h.0.attn.c_proj"));
        assert_eq!(r.targets.iter().filter(|t| t.feedforward).count(), 1);
        match &r.target_modules {
            ModuleSelection::Names(n) => assert_eq!(n.len(), 4),
            other => panic!("not expanded: {other:?}"),
        }
        // The saved form (full names as targets, suffixes as feed-forward modules) resolves the same way.
        let again = resolve(&spec(), Some(&r.target_modules), Some(&ff), Some(&ex)).unwrap();
        assert_eq!(again.targets, r.targets);
    }

    #[test]
    fn bad_selections_are_refused_naming_the_problem() {
        let s = spec();
        let t = ModuleSelection::names(["c_attn"]);
        let ff = ModuleSelection::names(["c_fc"]);
        let err = resolve(&s, Some(&t), Some(&ff), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("subset") && err.contains("c_fc"), "{err}");
        let err = resolve(
            &s,
            Some(&ModuleSelection::names(["q_proj"])),
            Some(&ModuleSelection::names(Vec::<String>::new())),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("q_proj") && err.contains("c_attn"), "{err}");
        let err = resolve(
            &s,
            Some(&ModuleSelection::Pattern(".*c_attn".into())),
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("regular expression"), "{err}");
        let err = resolve(
            &s,
            Some(&ModuleSelection::names(["ln_1"])),
            Some(&ModuleSelection::names(Vec::<String>::new())),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("norm"), "{err}");
        // Defaults come from roles: a model that declares none has none, whatever its architecture.
        let mut other = spec();
        other.architecture = "bert".into();
        for site in &mut other.sites {
            site.role = Role::Other;
        }
        let err = resolve(&other, None, None, None).unwrap_err().to_string();
        assert!(
            err.contains("bert") && err.contains("target_modules") && err.contains("role"),
            "{err}"
        );
    }

    #[test]
    fn defaults_by_role_give_hf_lists_and_differ_where_documented() {
        use peft_core::model::BaseModel;
        let lists = |model: &dyn BaseModel| default_modules(model.spec()).unwrap();
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // As HF PEFT's table.
        let gpt2 = peft_models::tiny::gpt2(0);
        assert_eq!(
            lists(&gpt2),
            (strings(&["c_attn", "mlp.c_proj"]), strings(&["mlp.c_proj"]))
        );
        let llama = peft_models::tiny::llama(0);
        assert_eq!(
            lists(&llama),
            (
                strings(&["k_proj", "v_proj", "down_proj"]),
                strings(&["down_proj"])
            )
        );
        let t5 = peft_models::t5::tiny(0);
        assert_eq!(lists(&t5), (strings(&["k", "v", "wo"]), strings(&["wo"])));
        // HF PEFT lists q_proj, k_proj, fc2 for OPT; the role rule takes the value, not the query.
        let opt = peft_models::opt::tiny(0);
        assert_eq!(
            lists(&opt),
            (strings(&["k_proj", "v_proj", "fc2"]), strings(&["fc2"]))
        );
        // HF PEFT's BERT `output.dense` also selects `attention.output.dense`; the role rule does not.
        let bert = peft_models::bert::tiny(0);
        let (targets, feedforward) = lists(&bert);
        let r = resolve(bert.spec(), None, None, None).unwrap();
        assert!(
            r.targets
                .iter()
                .all(|t| !t.module.contains("attention.output")),
            "{targets:?}"
        );
        let ff: Vec<&str> = r
            .targets
            .iter()
            .filter(|t| t.feedforward)
            .map(|t| t.module.as_str())
            .collect();
        assert_eq!(
            ff,
            [
                "encoder.layer.0.output.dense",
                "encoder.layer.1.output.dense"
            ]
        );
        assert_eq!(feedforward, ["0.output.dense", "1.output.dense"]);
        assert_eq!(targets[..2], strings(&["key", "value"]));
        // The saved lists select the same modules again, by name alone.
        let again = resolve(
            bert.spec(),
            Some(&ModuleSelection::Names(targets)),
            Some(&ModuleSelection::Names(feedforward)),
            None,
        )
        .unwrap();
        assert_eq!(again.targets, r.targets);
    }
}
