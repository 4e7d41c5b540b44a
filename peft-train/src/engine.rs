//! Continuous batching over one frozen decoder-only model and any number of named adapters: requests join
//! a running batch at the next step and leave it when they finish, so a long generation never holds a short
//! one back, and rows with different adapters (of any method types) decode together in one forward pass.
//!
//! Each [`Engine::step`] first decodes one token for every running row (one cached forward pass of
//! `[rows, 1]` tokens), then runs the prompts of the requests that wait (one left-padded pass with an empty
//! cache), picks their first tokens and joins their cache to the running one. Rows that finish (end of
//! sequence, a stop token, their token budget, a cancellation) leave the cache. Every request samples with
//! its own generator, so its tokens do not depend on what it was batched with: they are the tokens
//! [`generate`](crate::generate::generate) gives with its adapter alone.
//!
//! ```
//! use std::sync::Arc;
//! use peft_core::method::Adapter;
//! use peft_core::model::BaseModel;
//! use peft_train::engine::{Engine, Request};
//! use peft_train::generate::Sampling;
//!
//! // Two requests, one on the base model and one on the adapter `sql`, decoded together.
//! fn serve(model: Arc<dyn BaseModel>, sql: Arc<dyn Adapter>) -> Result<(), Box<dyn std::error::Error>> {
//!     let mut engine = Engine::new(model, 16)?;
//!     engine.add_adapter("sql", sql)?;
//!     let base = engine.submit(Request::new(vec![1, 2, 3], 8))?;
//!     let tuned = engine.submit(Request {
//!         adapter: Some("sql".into()),
//!         sampling: Sampling::TopP { temperature: 0.7, top_p: 0.9 },
//!         seed: 7,
//!         ..Request::new(vec![4, 5], 8)
//!     })?;
//!     while !engine.is_idle() {
//!         for event in engine.step()? {
//!             println!("request {} got {:?} ({:?})", event.id, event.token, event.finish);
//!         }
//!     }
//!     let _ = (base, tuned);
//!     Ok(())
//! }
//! # let _ = serve;
//! ```

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use candle_core::{DType, IndexOp, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use peft_core::error::PeftError;
use peft_core::grad::no_grad;
use peft_core::hooks::{positions_taken, Hooks};
use peft_core::kv_cache::KvCache;
use peft_core::method::Adapter;
use peft_core::mixed::MixedHooks;
use peft_core::model::{require_lm_head, BaseModel, Batch};

use crate::generate::{left_padded, pick_token, Sampling};

/// The id [`Engine::submit`] gives a request; unique for the engine's life.
pub type RequestId = u64;

/// One generation to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The adapter to run with, by the name it was added under; `None` runs the bare model.
    pub adapter: Option<String>,
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// How each token is picked.
    pub sampling: Sampling,
    /// Seed of this request's own generator.
    pub seed: u64,
    /// The end-of-sequence token: generating it finishes the request (it is still reported).
    pub eos: Option<u32>,
    /// More tokens that finish the request as `eos` does.
    pub stop_tokens: Vec<u32>,
}

impl Request {
    /// A greedy request on the bare model, seed 0, without end-of-sequence or stop tokens.
    pub fn new(prompt: Vec<u32>, max_new_tokens: usize) -> Self {
        Request {
            adapter: None,
            prompt,
            max_new_tokens,
            sampling: Sampling::Greedy,
            seed: 0,
            eos: None,
            stop_tokens: Vec::new(),
        }
    }
}

/// Why a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It generated its end-of-sequence token or a stop token (the last token reported).
    Stop,
    /// It generated `max_new_tokens` tokens.
    Length,
    /// [`Engine::cancel`] was called for it.
    Cancelled,
}

impl FinishReason {
    /// The name OpenAI's API gives it (`stop`, `length`), and `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// What a step produced for one request: a new token, its end, or both (the last token carries the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The request.
    pub id: RequestId,
    /// The token generated this step, if any (none for a cancellation, or a request of no new tokens).
    pub token: Option<u32>,
    /// Set when the request is finished and has left the engine.
    pub finish: Option<FinishReason>,
}

/// What the engine refuses, and why a step failed. The cause of `Model` and `StepFailed` is in the message,
/// not also `source()`, so that a report of the whole chain (`{:#}`) says it once (as `PeftError::Io` does).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No adapter is loaded under this name.
    #[error("no adapter is loaded under the name `{0}`")]
    UnknownAdapter(String),
    /// An adapter is already loaded under this name.
    #[error(
        "an adapter is already loaded under the name `{0}`: remove it first, or pick another name"
    )]
    AdapterExists(String),
    /// The prompt has no tokens.
    #[error("the prompt has no tokens")]
    EmptyPrompt,
    /// A prompt token id is outside the model's vocabulary.
    #[error("token id {token} is outside the vocabulary (size {vocab})")]
    TokenOutOfVocab {
        /// The token id.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The prompt, the positions the adapter adds and the new tokens do not fit the model's context.
    #[error(
        "the prompt has {prompt} tokens, the adapter adds {adapter_positions} positions and {max_new_tokens} new \
         tokens were asked for: {} exceeds the model's context of {limit} positions",
        prompt.saturating_add(*adapter_positions).saturating_add(*max_new_tokens)
    )]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Positions the adapter adds (virtual tokens and a key/value prefix).
        adapter_positions: usize,
        /// Tokens asked for.
        max_new_tokens: usize,
        /// The model's context (`max_positions`).
        limit: usize,
    },
    /// Sampling settings that mean nothing (a negative temperature, a top-p outside (0, 1]).
    #[error("{0}")]
    BadSampling(String),
    /// The model cannot be served by the engine (no key/value cache, no LM head), or a bad setting.
    #[error("{0}")]
    Unsupported(String),
    /// Computing something outside a step failed (an adapter's positions).
    #[error("{0}")]
    Model(PeftError),
    /// A forward pass of a step failed: every request in flight was dropped (`aborted`), and the engine is
    /// empty and usable again.
    #[error("a generation step failed, dropping {} request(s) in flight: {cause}", aborted.len())]
    StepFailed {
        /// The requests dropped, which get no more events.
        aborted: Vec<RequestId>,
        /// What failed.
        cause: PeftError,
    },
}

impl From<PeftError> for EngineError {
    fn from(e: PeftError) -> Self {
        EngineError::Model(e)
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, EngineError>;

/// A loaded adapter and the positions it adds in front of a prompt.
struct Slot {
    adapter: Arc<dyn Adapter>,
    positions: usize,
}

/// A request in flight (queued or running). The adapter is held here, so removing it from the engine does
/// not take it from a request that started with it.
struct Live {
    id: RequestId,
    adapter: Option<Arc<dyn Adapter>>,
    prompt: Vec<u32>,
    /// The last token picked: the one the next decoding pass feeds.
    last: u32,
    generated: usize,
    max_new_tokens: usize,
    sampling: Sampling,
    rng: StdRng,
    eos: Option<u32>,
    stop_tokens: Vec<u32>,
}

impl Live {
    /// Records `token` as picked; returns why the request finishes with it, if it does.
    fn accept(&mut self, token: u32) -> Option<FinishReason> {
        self.last = token;
        self.generated += 1;
        if Some(token) == self.eos || self.stop_tokens.contains(&token) {
            Some(FinishReason::Stop)
        } else if self.generated >= self.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}

/// The continuous-batching scheduler (see the module documentation).
pub struct Engine {
    model: Arc<dyn BaseModel>,
    adapters: BTreeMap<String, Slot>,
    max_rows: usize,
    next_id: RequestId,
    queue: VecDeque<Live>,
    /// Row `i` of `cache` is `running[i]`.
    running: Vec<Live>,
    cache: KvCache,
    cancelled: HashSet<RequestId>,
}

impl Engine {
    /// An engine over `model` running at most `max_rows` requests at once (the rest wait in a queue). The
    /// model must be a decoder-only model with a key/value cache and an LM head.
    pub fn new(model: Arc<dyn BaseModel>, max_rows: usize) -> Result<Self> {
        let spec = model.spec();
        if model.encoder_decoder().is_some() || !model.has_kv_cache() {
            return Err(EngineError::Unsupported(format!(
                "the {} model {} cannot be served: batched generation needs a decoder-only model with a \
                 key/value cache",
                spec.architecture, spec.name_or_path
            )));
        }
        require_lm_head(spec, model.lm_head())
            .map_err(|e| EngineError::Unsupported(e.to_string()))?;
        if max_rows == 0 {
            return Err(EngineError::Unsupported(
                "an engine needs room for at least one request at once (max rows 0)".into(),
            ));
        }
        Ok(Engine {
            model,
            adapters: BTreeMap::new(),
            max_rows,
            next_id: 0,
            queue: VecDeque::new(),
            running: Vec::new(),
            cache: KvCache::new(),
            cancelled: HashSet::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<dyn BaseModel> {
        &self.model
    }

    /// Loads `adapter` under `name`; requests may name it from now on.
    pub fn add_adapter(&mut self, name: &str, adapter: Arc<dyn Adapter>) -> Result<()> {
        if self.adapters.contains_key(name) {
            return Err(EngineError::AdapterExists(name.to_string()));
        }
        let spec = self.model.spec();
        let positions = no_grad(|| {
            positions_taken(
                adapter.as_ref() as &dyn Hooks,
                spec.hidden_size,
                self.model.device(),
            )
        })?;
        self.adapters
            .insert(name.to_string(), Slot { adapter, positions });
        Ok(())
    }

    /// Removes the adapter `name`; requests already submitted with it run to their end.
    pub fn remove_adapter(&mut self, name: &str) -> Result<Arc<dyn Adapter>> {
        self.adapters
            .remove(name)
            .map(|s| s.adapter)
            .ok_or_else(|| EngineError::UnknownAdapter(name.to_string()))
    }

    /// The names of the loaded adapters, sorted.
    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters.keys().cloned().collect()
    }

    /// Queues `request`; it joins the running batch at the next step with room. Refuses an unknown adapter,
    /// an empty prompt, token ids outside the vocabulary, meaningless sampling settings, and a request whose
    /// prompt, adapter positions and new tokens exceed the model's context.
    pub fn submit(&mut self, request: Request) -> Result<RequestId> {
        let (adapter, positions) = match &request.adapter {
            None => (None, 0),
            Some(name) => {
                let slot = self
                    .adapters
                    .get(name)
                    .ok_or_else(|| EngineError::UnknownAdapter(name.clone()))?;
                (Some(slot.adapter.clone()), slot.positions)
            }
        };
        let spec = self.model.spec();
        let Some(&first) = request.prompt.first() else {
            return Err(EngineError::EmptyPrompt);
        };
        if let Some(&token) = request
            .prompt
            .iter()
            .find(|&&t| t as usize >= spec.vocab_size)
        {
            return Err(EngineError::TokenOutOfVocab {
                token,
                vocab: spec.vocab_size,
            });
        }
        check_sampling(&request.sampling)?;
        let limit = spec.max_positions;
        let needed = request
            .prompt
            .len()
            .saturating_add(positions)
            .saturating_add(request.max_new_tokens);
        if needed > limit {
            return Err(EngineError::TooLong {
                prompt: request.prompt.len(),
                adapter_positions: positions,
                max_new_tokens: request.max_new_tokens,
                limit,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back(Live {
            id,
            adapter,
            last: first,
            prompt: request.prompt,
            generated: 0,
            max_new_tokens: request.max_new_tokens,
            sampling: request.sampling,
            rng: StdRng::seed_from_u64(request.seed),
            eos: request.eos,
            stop_tokens: request.stop_tokens,
        });
        Ok(id)
    }

    /// Asks request `id` to stop: it leaves at the next step with [`FinishReason::Cancelled`]. Returns
    /// whether it was in flight.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let live = self.queue.iter().chain(&self.running).any(|r| r.id == id);
        if live {
            self.cancelled.insert(id);
        }
        live
    }

    /// True when no request is queued or running.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.running.is_empty()
    }

    /// Requests decoding now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Requests waiting for room.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Drops every request in flight without events; returns their ids.
    pub fn abort_all(&mut self) -> Vec<RequestId> {
        let ids = self
            .running
            .drain(..)
            .chain(self.queue.drain(..))
            .map(|r| r.id)
            .collect();
        self.cache = KvCache::new();
        self.cancelled.clear();
        ids
    }

    /// One step: cancelled requests leave, every running row gets one token, waiting requests (as many as
    /// there is room for) run their prompts and get their first token. Returns the events in that order. A
    /// failed forward pass drops every request in flight ([`EngineError::StepFailed`]).
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let done = no_grad(|| -> peft_core::Result<()> {
            self.drop_cancelled(&mut events)?;
            self.decode(&mut events)?;
            self.admit(&mut events)
        });
        match done {
            Ok(()) => Ok(events),
            Err(cause) => {
                // Tokens already reported this step belong to requests that now get no end: report none.
                let aborted = self.abort_all();
                Err(EngineError::StepFailed { aborted, cause })
            }
        }
    }

    fn drop_cancelled(&mut self, events: &mut Vec<Event>) -> peft_core::Result<()> {
        if self.cancelled.is_empty() {
            return Ok(());
        }
        let cancelled = std::mem::take(&mut self.cancelled);
        let finish = |id| Event {
            id,
            token: None,
            finish: Some(FinishReason::Cancelled),
        };
        self.queue.retain(|r| {
            let gone = cancelled.contains(&r.id);
            if gone {
                events.push(finish(r.id));
            }
            !gone
        });
        let mut keep = Vec::with_capacity(self.running.len());
        for (i, r) in self.running.iter().enumerate() {
            if cancelled.contains(&r.id) {
                events.push(finish(r.id));
            } else {
                keep.push(i);
            }
        }
        self.keep_rows(&keep)
    }

    /// Keeps the running rows `keep` (in order) and their cache.
    fn keep_rows(&mut self, keep: &[usize]) -> peft_core::Result<()> {
        if keep.len() == self.running.len() {
            return Ok(());
        }
        self.cache = if keep.is_empty() {
            KvCache::new()
        } else {
            self.cache.select_rows(keep)?.compact()?
        };
        let mut rows: Vec<Option<Live>> = std::mem::take(&mut self.running)
            .into_iter()
            .map(Some)
            .collect();
        self.running = keep.iter().filter_map(|&i| rows[i].take()).collect();
        Ok(())
    }

    /// One token for every running row.
    fn decode(&mut self, events: &mut Vec<Event>) -> peft_core::Result<()> {
        if self.running.is_empty() {
            return Ok(());
        }
        let device = self.model.device();
        let n = self.running.len();
        let last: Vec<u32> = self.running.iter().map(|r| r.last).collect();
        let batch = Batch::new(
            Tensor::new(last.as_slice(), device)?.unsqueeze(1)?,
            Tensor::ones((n, 1), DType::F32, device)?,
        )?;
        let logits = {
            let (adapters, rows) = row_hooks(&self.running);
            let hooks = MixedHooks::new(adapters, rows)?;
            let out = self.model.forward_cached(&batch, &mut self.cache, &hooks)?;
            last_logits(self.model.as_ref(), &out.hidden)?
        };
        let keep = pick_tokens(&mut self.running, &logits, events);
        self.keep_rows(&keep)
    }

    /// Runs the prompts of the waiting requests that fit and joins them to the running rows.
    fn admit(&mut self, events: &mut Vec<Event>) -> peft_core::Result<()> {
        let room = self.max_rows.saturating_sub(self.running.len());
        let take = room.min(self.queue.len());
        if take == 0 {
            return Ok(());
        }
        let mut joining: Vec<Live> = Vec::with_capacity(take);
        for r in self.queue.drain(..take) {
            if r.max_new_tokens == 0 {
                events.push(Event {
                    id: r.id,
                    token: None,
                    finish: Some(FinishReason::Length),
                });
            } else {
                joining.push(r);
            }
        }
        if joining.is_empty() {
            return Ok(());
        }
        let prompts: Vec<&[u32]> = joining.iter().map(|r| r.prompt.as_slice()).collect();
        let batch = left_padded(&prompts, self.model.device())?;
        let mut cache = KvCache::new();
        let logits = {
            let (adapters, rows) = row_hooks(&joining);
            let hooks = MixedHooks::new(adapters, rows)?;
            let out = self.model.forward_cached(&batch, &mut cache, &hooks)?;
            last_logits(self.model.as_ref(), &out.hidden)?
        };
        let keep = pick_tokens(&mut joining, &logits, events);
        if keep.is_empty() {
            return Ok(());
        }
        if keep.len() < joining.len() {
            cache = cache.select_rows(&keep)?.compact()?;
        }
        let running_cache = std::mem::take(&mut self.cache);
        self.cache = KvCache::concat_rows(&[running_cache, cache])?;
        let mut joining: Vec<Option<Live>> = joining.into_iter().map(Some).collect();
        self.running
            .extend(keep.iter().filter_map(|&i| joining[i].take()));
        Ok(())
    }
}

/// The distinct adapters of `rows` and, per row, the index of its adapter among them (`None`: bare model).
fn row_hooks(rows: &[Live]) -> (Vec<&dyn Hooks>, Vec<Option<usize>>) {
    let mut seen: Vec<*const ()> = Vec::new();
    let mut adapters: Vec<&dyn Hooks> = Vec::new();
    let which = rows
        .iter()
        .map(|r| {
            r.adapter.as_ref().map(|a| {
                let key = Arc::as_ptr(a) as *const ();
                match seen.iter().position(|&k| k == key) {
                    Some(i) => i,
                    None => {
                        seen.push(key);
                        adapters.push(a.as_ref() as &dyn Hooks);
                        seen.len() - 1
                    }
                }
            })
        })
        .collect();
    (adapters, which)
}

/// Picks each row's next token from its logits and reports it; returns the rows that go on.
fn pick_tokens(rows: &mut [Live], logits: &[Vec<f32>], events: &mut Vec<Event>) -> Vec<usize> {
    let mut keep = Vec::with_capacity(rows.len());
    for (i, (row, logits)) in rows.iter_mut().zip(logits).enumerate() {
        let token = pick_token(logits, &row.sampling, &mut row.rng);
        let finish = row.accept(token);
        events.push(Event {
            id: row.id,
            token: Some(token),
            finish,
        });
        if finish.is_none() {
            keep.push(i);
        }
    }
    keep
}

/// Logits of the last position of every row of `hidden` `[rows, positions, hidden]`, one vector per row.
fn last_logits(model: &dyn BaseModel, hidden: &Tensor) -> peft_core::Result<Vec<Vec<f32>>> {
    let last = hidden.i((.., hidden.dim(1)? - 1))?;
    Ok(model.logits(&last)?.to_dtype(DType::F32)?.to_vec2()?)
}

/// Refuses a temperature that is NaN, negative or infinite and a top-p outside (0, 1].
fn check_sampling(sampling: &Sampling) -> Result<()> {
    if let Sampling::TopP { temperature, top_p } = *sampling {
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(EngineError::BadSampling(format!(
                "temperature {temperature} is not a sampling temperature: give a finite number, at least 0 \
                 (0 is greedy)"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(EngineError::BadSampling(format!(
                "top_p {top_p} is not a nucleus mass: give a number in (0, 1] (1 keeps every token)"
            )));
        }
    }
    Ok(())
}
