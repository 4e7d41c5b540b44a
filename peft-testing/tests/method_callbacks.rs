//! The trainer's calls into a method beyond its variables (what AdaLoRA needs, open to any method): the
//! method's loss term is part of the training loss and its gradient, `after_optimizer_step` sees every step's
//! applied gradients after the update, and the method's state between steps travels in checkpoints, so that a
//! resumed run continues it.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{Tensor, Var};
use peft_core::hooks::{Hooks, LinearFn};
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::SiteId;
use peft_core::stack::StackConfig;
use peft_testing::{init, rule_lm_task};
use peft_train::train::{TrainConfig, TrainReport, Trainer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SteeredConfig {
    /// (weight, target) of the loss term.
    pull: Option<(f64, f64)>,
    #[serde(flatten)]
    common: CommonConfig,
}

#[typetag::serde(name = "STEERED_TEST")]
impl PeftMethod for SteeredConfig {
    fn build(&self, init: &mut InitCtx) -> peft_core::Result<Box<dyn Adapter>> {
        Ok(Box::new(Steered::new(init.model, self.pull)))
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    fn common_mut(&mut self) -> &mut CommonConfig {
        &mut self.common
    }
}

/// One step as `after_optimizer_step` saw it: the step, the gradients and the variable's value then.
type Call = (usize, Vec<Vec<f32>>, Vec<f32>);

/// Scales the output of one projection by a trained vector; `pull` (weight, target) adds
/// `weight * sum((scale - target)^2)` to the training loss; counts its steps as state between steps.
#[derive(Debug)]
struct Steered {
    config: SteeredConfig,
    site: SiteId,
    scale: Var,
    pull: Option<(f64, f64)>,
    calls: Mutex<Vec<Call>>,
    steps_seen: Mutex<f32>,
}

impl Steered {
    fn new(model: &dyn BaseModel, pull: Option<(f64, f64)>) -> Self {
        let spec = model.spec();
        let site = spec.projections_with_any_role(&[peft_core::spec::Role::AttentionOutput])[0];
        let scale = Var::ones(spec.hidden_size, candle_core::DType::F32, model.device()).unwrap();
        Steered {
            config: SteeredConfig {
                pull,
                ..SteeredConfig::default()
            },
            site,
            scale,
            pull,
            calls: Mutex::new(Vec::new()),
            steps_seen: Mutex::new(0.0),
        }
    }

    fn steps_seen(&self) -> f32 {
        *self.steps_seen.lock().unwrap()
    }
}

impl Hooks for Steered {
    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> peft_core::Result<Tensor> {
        let y = next(x)?;
        if site != self.site {
            return Ok(y);
        }
        Ok(y.broadcast_mul(&peft_core::grad::param(&self.scale))?)
    }
}

impl Adapter for Steered {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }
    fn trainable(&self) -> Vec<(String, Var)> {
        vec![("scale".into(), self.scale.clone())]
    }
    fn tensors(&self) -> peft_core::Result<Vec<(String, Tensor)>> {
        Ok(vec![("scale".into(), self.scale.as_tensor().copy()?)])
    }
    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> peft_core::Result<()> {
        Ok(self.scale.set(&tensors["scale"])?)
    }
    fn training_loss_term(&self) -> peft_core::Result<Option<Tensor>> {
        let Some((weight, target)) = self.pull else {
            return Ok(None);
        };
        let off = (peft_core::grad::param(&self.scale) - target)?;
        Ok(Some((off.sqr()?.sum_all()? * weight)?))
    }
    fn after_optimizer_step(&self, step: usize, grads: &[Tensor]) -> peft_core::Result<()> {
        if grads.len() != 1 || grads[0].dims() != self.scale.dims() {
            return Err(peft_core::PeftError::Unsupported(format!(
                "step {step}: given {} gradients, the first of shape {:?}",
                grads.len(),
                grads.first().map(|g| g.dims().to_vec())
            )));
        }
        let grads = grads
            .iter()
            .map(|g| g.to_vec1::<f32>())
            .collect::<candle_core::Result<_>>()?;
        let now = self.scale.as_tensor().to_vec1::<f32>()?;
        self.calls.lock().unwrap().push((step, grads, now));
        *self.steps_seen.lock().unwrap() += 1.0;
        Ok(())
    }
    fn saved_config(&self) -> Box<dyn PeftMethod> {
        // What training decided goes into the saved config (as AdaLoRA's final rank pattern does).
        Box::new(SteeredConfig {
            pull: Some((f64::from(self.steps_seen()), 0.0)),
            ..self.config.clone()
        })
    }
    fn step_state(&self) -> peft_core::Result<Vec<(String, Tensor)>> {
        let seen = Tensor::new(&[self.steps_seen()], self.scale.device())?;
        Ok(vec![("steps_seen".into(), seen)])
    }
    fn load_step_state(&self, tensors: &HashMap<String, Tensor>) -> peft_core::Result<()> {
        *self.steps_seen.lock().unwrap() = tensors["steps_seen"].to_vec1::<f32>()?[0];
        Ok(())
    }
}

fn config(out: &std::path::Path, steps: usize) -> TrainConfig {
    TrainConfig {
        max_steps: steps,
        batch_size: 2,
        learning_rate: 1e-2,
        // Unclipped, so that the gradients compare term by term.
        max_grad_norm: 0.0,
        save_every: 1,
        output_dir: out.to_path_buf(),
        progress: false,
        ..TrainConfig::default()
    }
}

fn run(model: &dyn BaseModel, adapter: &Steered, steps: usize) -> TrainReport {
    let out = tempfile::tempdir().unwrap();
    Trainer::new(model, adapter, &rule_lm_task(), config(out.path(), steps))
        .run()
        .unwrap()
}

#[test]
fn the_loss_term_joins_the_loss_and_its_gradient() {
    let model = peft_models::tiny::llama(3);
    let hidden = model.spec().hidden_size;
    let plain = Steered::new(&model, None);
    let pulled = Steered::new(&model, Some((0.5, 3.0)));
    let (a, b) = (run(&model, &plain, 1), run(&model, &pulled, 1));
    // At the start every scale is 1: the term is 0.5 * hidden * (1 - 3)^2.
    let term = 0.5 * hidden as f64 * 4.0;
    assert!(
        ((b.losses[0] - a.losses[0]) - term).abs() < 1e-4,
        "losses {} and {}: the term {term} is not in the logged loss",
        a.losses[0],
        b.losses[0]
    );
    // Its gradient, 2 * 0.5 * (1 - 3) = -2 per element, is in the step's gradient.
    let (ga, gb) = (
        &plain.calls.lock().unwrap()[0].1[0],
        &pulled.calls.lock().unwrap()[0].1[0],
    );
    for (x, y) in ga.iter().zip(gb) {
        assert!((y - x + 2.0).abs() < 1e-4, "gradient {y} against {x}");
    }
}

#[test]
fn after_every_optimiser_step_the_method_sees_its_gradients_and_updated_variables() {
    let model = peft_models::tiny::gpt2(3);
    let adapter = Steered::new(&model, None);
    run(&model, &adapter, 3);
    let calls = adapter.calls.lock().unwrap();
    assert_eq!(
        calls.iter().map(|c| c.0).collect::<Vec<_>>(),
        [1, 2, 3],
        "one call a step, counted from 1"
    );
    let hidden = model.spec().hidden_size;
    for (step, grads, now) in calls.iter() {
        assert_eq!(grads.len(), 1, "step {step}: one gradient per variable");
        assert_eq!(grads[0].len(), hidden);
        assert!(grads[0].iter().any(|g| *g != 0.0), "step {step}");
        assert!(
            now.iter().any(|v| *v != 1.0),
            "step {step}: called before the update"
        );
    }
    // The last call saw the variable as the run left it.
    assert_eq!(
        calls[2].2,
        adapter.scale.as_tensor().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn the_state_between_steps_is_checkpointed_and_resumed() {
    let model = peft_models::tiny::llama(3);
    let out = tempfile::tempdir().unwrap();
    let task = rule_lm_task();
    let stopped = Steered::new(&model, Some((0.1, 2.0)));
    Trainer::new(&model, &stopped, &task, config(out.path(), 4))
        .run_until(2)
        .unwrap();
    assert_eq!(stopped.steps_seen(), 2.0);
    let resumed = Steered::new(&model, Some((0.1, 2.0)));
    let resume = TrainConfig {
        resume: true,
        ..config(out.path(), 4)
    };
    Trainer::new(&model, &resumed, &task, resume).run().unwrap();
    // Two steps restored from the checkpoint, two more taken.
    assert_eq!(resumed.steps_seen(), 4.0);
    let steps: Vec<usize> = resumed.calls.lock().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(steps, [3, 4]);
}

#[test]
fn a_stack_passes_each_member_its_own_share() {
    let model = peft_models::tiny::llama(3);
    let member = |pull| -> Box<dyn PeftMethod> {
        Box::new(SteeredConfig {
            pull,
            ..SteeredConfig::default()
        })
    };
    let stack = |pulls: [Option<(f64, f64)>; 3]| {
        StackConfig {
            adapters: pulls.into_iter().map(member).collect(),
            common: CommonConfig::default(),
        }
        .build(&mut init(&model, 0))
        .unwrap()
    };
    let out = tempfile::tempdir().unwrap();
    let train = |adapter: &dyn Adapter| {
        Trainer::new(&model, adapter, &rule_lm_task(), config(out.path(), 2))
            .run()
            .unwrap()
    };
    let plain = stack([None, None, None]);
    let pulled = stack([Some((0.5, 3.0)), None, Some((0.25, 0.0))]);
    let (a, b) = (train(plain.as_ref()), train(pulled.as_ref()));
    // The members' terms add up: 0.5 * hidden * 4 + 0.25 * hidden * 1 at the start.
    let hidden = model.spec().hidden_size as f64;
    let term = 0.5 * hidden * 4.0 + 0.25 * hidden;
    assert!(
        ((b.losses[0] - a.losses[0]) - term).abs() < 1e-3,
        "{} {}",
        a.losses[0],
        b.losses[0]
    );
    // Each member saw one gradient of its own shape per step (else its call fails the run), and keeps its
    // state under its member key.
    let state = pulled.step_state().unwrap();
    let keys: Vec<&str> = state.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "adapters.0.steps_seen",
            "adapters.1.steps_seen",
            "adapters.2.steps_seen"
        ]
    );
    for (key, seen) in &state {
        assert_eq!(seen.to_vec1::<f32>().unwrap(), [2.0], "{key}");
    }
}

/// An adapter that keeps the contract's defaults.
struct Plain(SteeredConfig);

impl Hooks for Plain {}

impl Adapter for Plain {
    fn config(&self) -> &dyn PeftMethod {
        &self.0
    }
    fn trainable(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
    fn tensors(&self) -> peft_core::Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
    fn load_tensors(&self, _: &HashMap<String, Tensor>) -> peft_core::Result<()> {
        Ok(())
    }
}

#[test]
fn a_method_without_state_refuses_a_checkpoint_that_has_some() {
    let plain = Plain(SteeredConfig::default());
    assert!(plain.step_state().unwrap().is_empty());
    assert!(plain.training_loss_term().unwrap().is_none());
    plain.load_step_state(&HashMap::new()).unwrap();
    let saved = HashMap::from([(
        "steps_seen".to_string(),
        Tensor::new(&[5f32], &candle_core::Device::Cpu).unwrap(),
    )]);
    let err = plain.load_step_state(&saved).unwrap_err().to_string();
    assert!(
        err.contains("steps_seen") && err.contains("STEERED_TEST"),
        "{err}"
    );

    // The classification-head wrapper hands the state to and from the method it wraps.
    let model = peft_models::tiny::gpt2(3);
    let headed = peft_core::head::WithClassifier::new(
        Box::new(Steered::new(&model, None)),
        2,
        &mut init(&model, 0),
    )
    .unwrap();
    headed.load_step_state(&saved).unwrap();
    assert_eq!(
        headed.step_state().unwrap()[0].1.to_vec1::<f32>().unwrap(),
        [5.0]
    );
}

#[test]
fn wrappers_save_what_their_methods_decided_while_training() {
    let model = peft_models::tiny::llama(3);
    let headed = peft_core::head::WithClassifier::new(
        Box::new(Steered::new(&model, None)),
        2,
        &mut init(&model, 0),
    )
    .unwrap();
    let saved = HashMap::from([(
        "steps_seen".to_string(),
        Tensor::new(&[7f32], &candle_core::Device::Cpu).unwrap(),
    )]);
    headed.load_step_state(&saved).unwrap();
    let json = serde_json::to_value(headed.saved_config()).unwrap();
    assert_eq!(json["pull"][0], 7.0, "{json}");
    assert_eq!(json["task_type"], "SEQ_CLS", "{json}");

    let member = || -> Box<dyn PeftMethod> { Box::new(SteeredConfig::default()) };
    let stack = StackConfig {
        adapters: vec![member(), member()],
        common: CommonConfig::default(),
    }
    .build(&mut init(&model, 0))
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    Trainer::new(
        &model,
        stack.as_ref(),
        &rule_lm_task(),
        config(out.path(), 3),
    )
    .run()
    .unwrap();
    let json = serde_json::to_value(stack.saved_config()).unwrap();
    for member in json["adapters"].as_array().unwrap() {
        assert_eq!(member["pull"][0], 3.0, "{json}");
    }
    // The adapter folder the run wrote holds that config.
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(written["adapters"][1]["pull"][0], 3.0, "{written}");
}
