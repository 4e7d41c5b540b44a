//! The wire shapes of OpenAI's completions API that `peft serve` speaks: the request of
//! `POST /v1/completions` (with one more field, `adapter`), the `text_completion` object, its stream chunks
//! and the model list.
//!
//! ```
//! use peft_cli::serve::openai::CompletionRequest;
//! let r: CompletionRequest = serde_json::from_str(
//!     r#"{"model": "base", "prompt": "Hi", "stop": ["\n", "."], "adapter": "sql"}"#,
//! ).unwrap();
//! assert_eq!(r.max_tokens(), 16);
//! assert_eq!(r.stops(), vec!["\n".to_string(), ".".to_string()]);
//! assert_eq!(r.adapter.as_deref(), Some("sql"));
//! ```

use serde::Deserialize;
use serde_json::{json, Value};

/// The body of `POST /v1/completions`. Fields OpenAI has and this server does not use are ignored, except
/// those that would change the answer's shape (`n`, `echo`, `logprobs`, `best_of`), which are refused unless
/// they ask for the default.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The base model's name or a loaded adapter's name (used when `adapter` is absent).
    #[serde(default)]
    pub model: Option<String>,
    /// The prompt (one string).
    pub prompt: String,
    /// Most tokens to generate (16 when absent, as OpenAI).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy (1 when absent, as OpenAI).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus mass (1 when absent).
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Seed of the request's sampler (a random one when absent).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop strings: the text ends before the first one that appears.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Answer as server-sent events, one chunk per token.
    #[serde(default)]
    pub stream: Option<bool>,
    /// The adapter to run with (absent or null: the base model, or the adapter `model` names).
    #[serde(default)]
    pub adapter: Option<String>,
    /// Completions per prompt: only 1.
    #[serde(default)]
    pub n: Option<u64>,
    /// Candidates per prompt: only 1.
    #[serde(default)]
    pub best_of: Option<u64>,
    /// Echo the prompt: not supported.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Log probabilities: not supported.
    #[serde(default)]
    pub logprobs: Option<Value>,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl CompletionRequest {
    /// `max_tokens`, 16 by default.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens.unwrap_or(16)
    }

    /// The stop strings (none by default).
    pub fn stops(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
    }

    /// Whether the answer streams.
    pub fn streams(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The first field set to something this server does not do, with why.
    pub fn unsupported(&self) -> Option<String> {
        if self.n.is_some_and(|n| n != 1) {
            return Some(
                "`n` other than 1 is not supported: send one request per completion".into(),
            );
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Some("`best_of` other than 1 is not supported".into());
        }
        if self.echo == Some(true) {
            return Some("`echo` is not supported: the prompt is yours already".into());
        }
        if self.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
            return Some("`logprobs` are not supported".into());
        }
        if self.stops().iter().any(String::is_empty) {
            return Some("`stop` holds an empty string, which would stop before any text".into());
        }
        None
    }
}

/// What every completion object and chunk shares.
#[derive(Debug, Clone)]
pub struct CompletionMeta {
    /// `cmpl-...`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model (or adapter) that answered.
    pub model: String,
}

impl CompletionMeta {
    fn object(&self, text: &str, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish_reason}],
        })
    }

    /// The whole answer of a request that does not stream.
    pub fn completion(
        &self,
        text: &str,
        finish_reason: &str,
        prompt_tokens: usize,
        completion_tokens: usize,
    ) -> Value {
        let mut v = self.object(text, Some(finish_reason));
        v["usage"] = json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        });
        v
    }

    /// One chunk of a stream; the last carries the finish reason.
    pub fn chunk(&self, text: &str, finish_reason: Option<&str>) -> Value {
        self.object(text, finish_reason)
    }
}

/// One entry of `GET /v1/models`; adapters name the base model as their parent.
pub fn model_entry(id: &str, created: u64, parent: Option<&str>) -> Value {
    let mut v = json!({"id": id, "object": "model", "created": created, "owned_by": "peft"});
    if let Some(parent) = parent {
        v["parent"] = json!(parent);
    }
    v
}
