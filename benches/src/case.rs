//! One architecture ready to measure: its model, the task it trains in the benches, the fixed batch of the
//! forward benches and the fixed micro-batch of the train-step benches (the same rows), and the two measured
//! operations.

use candle_core::{Device, Tensor, Var};
use peft_core::grad::no_grad;
use peft_core::head::WithClassifier;
use peft_core::hooks::Hooks;
use peft_core::method::{Adapter, InitCtx};
use peft_core::model::{BaseModel, Batch};
use peft_train::task::{
    pad_batch, CausalLm, ClassExample, HeadClassification, LmExample, Seq2Seq, Seq2SeqExample,
    Task, Tuned,
};
use peft_train::train::optim::{gradients, with_method_term, AdamW, AdamWConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::method::Method;
use crate::models::{random_ids, small_gpt2, small_llama, SMALL_VOCAB};

/// Labels of BERT's classification head.
const LABELS: usize = 2;

/// Learning rate of the measured AdamW steps: small, so that thousands of measured steps leave the adapter
/// (and so the work per step) where it started.
const LEARNING_RATE: f64 = 1e-5;

/// An architecture and size under measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `peft_models::tiny::gpt2`, causal LM.
    Gpt2Tiny,
    /// `peft_models::tiny::llama`, causal LM.
    LlamaTiny,
    /// `peft_models::opt::tiny`, causal LM.
    OptTiny,
    /// `peft_models::bert::tiny` with a trained classification head.
    BertTiny,
    /// `peft_models::t5::tiny` (gated-gelu), seq2seq.
    T5Tiny,
    /// [`small_gpt2`] with 4 layers, causal LM.
    Gpt2Small,
    /// [`small_llama`] with 4 layers, causal LM.
    LlamaSmall,
}

impl Arch {
    /// Every architecture, in the order the benches run them.
    pub const ALL: [Arch; 7] = [
        Arch::Gpt2Tiny,
        Arch::LlamaTiny,
        Arch::OptTiny,
        Arch::BertTiny,
        Arch::T5Tiny,
        Arch::Gpt2Small,
        Arch::LlamaSmall,
    ];

    /// The name in bench ids (`gpt2-tiny`, `llama-small`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2Tiny => "gpt2-tiny",
            Arch::LlamaTiny => "llama-tiny",
            Arch::OptTiny => "opt-tiny",
            Arch::BertTiny => "bert-tiny",
            Arch::T5Tiny => "t5-tiny",
            Arch::Gpt2Small => "gpt2-small",
            Arch::LlamaSmall => "llama-small",
        }
    }

    /// `(batch, sequence length)` of the measured batch (a T5 target is half the source).
    pub fn shape(self) -> (usize, usize) {
        match self {
            Arch::Gpt2Small | Arch::LlamaSmall => (4, 64),
            _ => (4, 32),
        }
    }
}

/// A model, its task and the fixed rows every measurement of it uses.
pub struct Case {
    arch: Arch,
    model: Box<dyn BaseModel>,
    task: Box<dyn Task>,
    batch: Batch,
    micro_batch: Vec<usize>,
}

impl Case {
    /// The model of `arch` (seeded), a task over `batch` random rows of the vocabulary, and those rows as the
    /// forward batch.
    pub fn new(arch: Arch) -> peft_core::Result<Case> {
        let (batch, seq) = arch.shape();
        let mut rng = StdRng::seed_from_u64(42);
        let vocab = peft_models::tiny::VOCAB;
        let dev = Device::Cpu;
        let rows = |rng: &mut StdRng, vocab: usize, len: usize| -> Vec<Vec<u32>> {
            // Ids from 3 on: below are pad / bos / eos in the tiny configs.
            (0..batch).map(|_| random_ids(rng, len, 3, vocab)).collect()
        };
        let lm = |rows: &[Vec<u32>]| -> peft_core::Result<Box<dyn Task>> {
            let examples: Vec<LmExample> = rows
                .iter()
                .map(|ids| LmExample {
                    labels: ids.iter().map(|&i| i64::from(i)).collect(),
                    input_ids: ids.clone(),
                })
                .collect();
            Ok(Box::new(CausalLm::new(examples.clone(), examples, 0)?))
        };
        let (model, task, batch): (Box<dyn BaseModel>, Box<dyn Task>, Batch) = match arch {
            Arch::Gpt2Tiny | Arch::LlamaTiny | Arch::OptTiny => {
                let model: Box<dyn BaseModel> = match arch {
                    Arch::Gpt2Tiny => Box::new(peft_models::tiny::gpt2(11)),
                    Arch::LlamaTiny => Box::new(peft_models::tiny::llama(12)),
                    _ => Box::new(peft_models::opt::tiny(13)),
                };
                let ids = rows(&mut rng, vocab, seq);
                (model, lm(&ids)?, padded(&ids, &dev)?)
            }
            Arch::Gpt2Small | Arch::LlamaSmall => {
                let model: Box<dyn BaseModel> = match arch {
                    Arch::Gpt2Small => Box::new(small_gpt2(4, 21)?),
                    _ => Box::new(small_llama(4, 22)?),
                };
                let ids = rows(&mut rng, SMALL_VOCAB, seq);
                (model, lm(&ids)?, padded(&ids, &dev)?)
            }
            Arch::BertTiny => {
                let ids = rows(&mut rng, vocab, seq);
                let examples: Vec<ClassExample> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, ids)| ClassExample {
                        input_ids: ids.clone(),
                        label: i % LABELS,
                        token_type_ids: vec![],
                    })
                    .collect();
                let task = HeadClassification::new(examples.clone(), examples, LABELS, 0)?;
                (
                    Box::new(peft_models::bert::tiny(14)),
                    Box::new(task),
                    padded(&ids, &dev)?,
                )
            }
            Arch::T5Tiny => {
                let model = peft_models::t5::tiny(15);
                let sources = rows(&mut rng, vocab, seq);
                let targets = rows(&mut rng, vocab, seq / 2);
                let examples: Vec<Seq2SeqExample> = sources
                    .iter()
                    .zip(&targets)
                    .map(|(s, t)| Seq2SeqExample {
                        input_ids: s.clone(),
                        labels: t.clone(),
                    })
                    .collect();
                let task = Seq2Seq::new(examples.clone(), examples, 0, Some(1))?;
                // The decoder reads the target shifted right behind the start token, as the task feeds it.
                let start = model
                    .encoder_decoder()
                    .map(|ed| ed.decoder_start_token_id())
                    .unwrap_or(0);
                let shifted: Vec<Vec<u32>> = targets
                    .iter()
                    .map(|t| std::iter::once(start).chain(t[..t.len() - 1].iter().copied()))
                    .map(Iterator::collect)
                    .collect();
                let decoder = padded(&shifted, &dev)?.input_ids;
                let batch = padded(&sources, &dev)?.with_decoder_input_ids(decoder)?;
                (Box::new(model), Box::new(task), batch)
            }
        };
        Ok(Case {
            arch,
            model,
            task,
            batch,
            micro_batch: (0..arch.shape().0).collect(),
        })
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The frozen model.
    pub fn model(&self) -> &dyn BaseModel {
        self.model.as_ref()
    }

    /// The task a train step optimises.
    pub fn task(&self) -> &dyn Task {
        self.task.as_ref()
    }

    /// The batch of the forward benches.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// The training rows of the train-step benches (the same rows as [`Case::batch`]).
    pub fn micro_batch(&self) -> &[usize] {
        &self.micro_batch
    }

    /// `method` built on the model (init seed 5), wrapped in a trained classification head where the
    /// architecture classifies with one (BERT); `None` for [`Method::Frozen`].
    pub fn adapter(&self, method: Method) -> peft_core::Result<Option<Box<dyn Adapter>>> {
        let Some(config) = method.config()? else {
            return Ok(None);
        };
        let mut init = InitCtx {
            model: self.model(),
            tokenizer: None,
            rng: StdRng::seed_from_u64(5),
        };
        let adapter = config.build(&mut init)?;
        Ok(Some(if self.arch == Arch::BertTiny {
            Box::new(WithClassifier::new(adapter, LABELS, &mut init)?)
        } else {
            adapter
        }))
    }

    /// One forward pass of [`Case::batch`] through `hooks` with gradient tracking off: the final hidden
    /// states.
    pub fn forward(&self, hooks: &dyn Hooks) -> peft_core::Result<Tensor> {
        no_grad(|| Ok(self.model.forward(&self.batch, hooks)?.hidden))
    }

    /// The train step of `method` on this case, with a fresh optimiser; `None` for [`Method::Frozen`].
    pub fn train_step(&self, method: Method) -> peft_core::Result<Option<TrainStep<'_>>> {
        let Some(adapter) = self.adapter(method)? else {
            return Ok(None);
        };
        let vars = adapter.trainable();
        let optimizer = AdamW::new(vars.clone(), AdamWConfig::default());
        Ok(Some(TrainStep {
            case: self,
            adapter,
            vars,
            optimizer,
        }))
    }
}

/// One optimiser step of an adapter, as the trainer takes it (without clipping, accumulation or logging).
pub struct TrainStep<'a> {
    case: &'a Case,
    adapter: Box<dyn Adapter>,
    vars: Vec<(String, Var)>,
    optimizer: AdamW,
}

impl TrainStep<'_> {
    /// The adapter being trained.
    pub fn adapter(&self) -> &dyn Adapter {
        self.adapter.as_ref()
    }

    /// `Task::loss` on the case's micro-batch (plus the method's own loss term), `backward`, an AdamW step over
    /// the trainable variables and the method's `after_optimizer_step`, as the trainer calls them; returns the
    /// loss before the step.
    pub fn run(&mut self) -> peft_core::Result<f64> {
        let case = self.case;
        let out = case.task().loss(
            case.model(),
            &Tuned::of(self.adapter.as_ref()),
            case.micro_batch(),
        )?;
        let loss = with_method_term(out.loss, self.adapter.as_ref())?;
        let grads = gradients(&loss, &self.vars)?;
        self.optimizer.step(&grads, LEARNING_RATE)?;
        self.adapter
            .after_optimizer_step(self.optimizer.steps(), &grads)?;
        Ok(loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
    }
}

/// Equal-length rows as a batch (pad id 0 is never needed).
fn padded(rows: &[Vec<u32>], dev: &Device) -> peft_core::Result<Batch> {
    let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    pad_batch(&rows, 0, dev)
}
