//! The HTTP routes of `peft serve`. Handlers stay thin: they read the request, tokenize the prompt, submit it
//! to the engine thread and turn the tokens that come back into text (whole, or streamed as server-sent
//! events). Loading an adapter folder runs on a blocking thread beside the engine, which keeps decoding.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/completions` | OpenAI's completions (`stream` for server-sent events), plus `adapter` |
//! | `GET /v1/models` | the base model and every adapter |
//! | `POST /v1/adapters` | `{"name", "path"}`: load an adapter folder |
//! | `DELETE /v1/adapters/{name}` | remove an adapter |
//! | `GET /health` | `{"status": "ok", ...}` while the engine runs, with its counts of requests |
//!
//! ```
//! // What a client sends: OpenAI's body, and the adapter to use.
//! let body = serde_json::json!({"model": "base", "prompt": "Hello", "max_tokens": 8,
//!                               "temperature": 0, "adapter": "sql"});
//! let parsed: peft_cli::serve::openai::CompletionRequest = serde_json::from_value(body).unwrap();
//! assert!(!parsed.streams());
//! ```

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use peft_core::adapter_io::{load_adapter_with, AdapterIoOptions};
use peft_core::method::{Adapter, InitCtx};
use peft_core::model::BaseModel;
use peft_train::engine::{EngineError, Request};
use peft_train::generate::Sampling;
use rand::SeedableRng;
use serde::Deserialize;
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use super::error::ApiError;
use super::openai::{model_entry, CompletionMeta, CompletionRequest};
use super::text::{IncrementalDecoder, StopStrings};
use super::worker::{EngineHandle, Submitted, Update, WorkerError};

/// What every handler shares.
pub struct Server {
    /// The engine thread.
    pub engine: EngineHandle,
    /// The frozen model (read-only here: adapters are built on it).
    pub model: Arc<dyn BaseModel>,
    /// The model's tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// The token that ends a generation.
    pub eos: Option<u32>,
    /// The base model's name in `/v1/models` and in answers (the `--model` given).
    pub base_name: String,
    /// Unix seconds at start (the models' `created`).
    pub started: u64,
    /// How adapter folders are loaded.
    pub adapter_options: AdapterIoOptions,
}

/// The routes over `server`.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/adapters", post(add_adapter))
        .route("/v1/adapters/{name}", delete(remove_adapter))
        .route("/health", get(health))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(server)
}

/// Loads the adapter folder `dir` on `model` (as `peft generate --adapter` does), printing the loader's
/// warnings.
pub fn load_adapter(
    model: &dyn BaseModel,
    tokenizer: Option<&Tokenizer>,
    dir: &Path,
    options: &AdapterIoOptions,
) -> anyhow::Result<Arc<dyn Adapter>> {
    let mut init = InitCtx {
        model,
        tokenizer,
        rng: rand::rngs::StdRng::seed_from_u64(0),
    };
    let loaded = load_adapter_with(dir, &mut init, options)
        .with_context(|| format!("loading adapter {}", dir.display()))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(Arc::from(loaded.adapter))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn worker_error(e: WorkerError) -> ApiError {
    match e {
        WorkerError::Engine(e) => e.into(),
        WorkerError::Stopped => ApiError::server(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn completions(
    State(server): State<Arc<Server>>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    if let Some(why) = req.unsupported() {
        return Err(ApiError::bad_request("unsupported_parameter", why));
    }
    // `adapter` wins; otherwise `model` may name an adapter, as with servers that list adapters as models.
    let adapter = match (&req.adapter, &req.model) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(m)) if *m != server.base_name => Some(m.clone()),
        _ => None,
    };
    let temperature = req.temperature.unwrap_or(1.0);
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::TopP {
            temperature,
            top_p: req.top_p.unwrap_or(1.0),
        }
    };
    let prompt = server
        .tokenizer
        .encode(req.prompt.as_str(), true)
        .map_err(|e| {
            ApiError::bad_request("invalid_prompt", format!("tokenizing the prompt: {e}"))
        })?
        .get_ids()
        .to_vec();
    let prompt_tokens = prompt.len();
    let request = Request {
        adapter: adapter.clone(),
        prompt,
        max_new_tokens: req.max_tokens(),
        sampling,
        seed: req.seed.unwrap_or_else(rand::random),
        eos: server.eos,
        stop_tokens: Vec::new(),
    };
    let run = server.engine.submit(request).await.map_err(|e| match e {
        WorkerError::Engine(EngineError::UnknownAdapter(name)) => ApiError::not_found(
            "model_not_found",
            format!(
                "no adapter or model is named `{name}` (the base model is `{}`; GET /v1/models lists them)",
                server.base_name
            ),
        ),
        other => worker_error(other),
    })?;
    let meta = CompletionMeta {
        id: format!("cmpl-{}", run.id),
        created: unix_now(),
        model: adapter.unwrap_or_else(|| server.base_name.clone()),
    };
    let generation = Generation::new(&server, run, req.stops());
    if req.streams() {
        return Ok(stream(generation, meta).into_response());
    }
    let mut generation = generation;
    let mut text = String::new();
    loop {
        match generation.next().await {
            Piece::Text(t) => text += &t,
            Piece::End { text: t, reason } => {
                text += &t;
                let body = meta.completion(&text, reason, prompt_tokens, generation.tokens);
                return Ok(Json(body).into_response());
            }
            Piece::Failed(m) => {
                return Err(ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, m));
            }
        }
    }
}

/// What the next token (or the end) adds to a completion.
enum Piece {
    /// Text to send (maybe empty: a token inside a character, or text held back for a stop string).
    Text(String),
    /// The last text and the finish reason.
    End { text: String, reason: &'static str },
    /// The engine failed.
    Failed(String),
}

/// One request's tokens turned into text.
struct Generation {
    server: Arc<Server>,
    run: Submitted,
    decoder: IncrementalDecoder,
    stops: StopStrings,
    /// Tokens generated so far (the end-of-sequence token included).
    tokens: usize,
}

impl Generation {
    fn new(server: &Arc<Server>, run: Submitted, stops: Vec<String>) -> Self {
        Generation {
            server: server.clone(),
            run,
            decoder: IncrementalDecoder::new(server.tokenizer.clone()),
            stops: StopStrings::new(stops),
            tokens: 0,
        }
    }

    async fn next(&mut self) -> Piece {
        loop {
            match self.run.updates.recv().await {
                Some(Update::Token(token)) => {
                    self.tokens += 1;
                    // The end-of-sequence token is not text (as `peft generate` leaves it out).
                    if Some(token) == self.server.eos {
                        continue;
                    }
                    let piece = match self.decoder.push(token) {
                        Ok(p) => p,
                        Err(e) => return self.failed(e),
                    };
                    let (text, stopped) = self.stops.feed(&piece);
                    if stopped {
                        self.server.engine.cancel(self.run.id);
                        return Piece::End {
                            text,
                            reason: "stop",
                        };
                    }
                    return Piece::Text(text);
                }
                Some(Update::Finished(reason)) => {
                    let rest = match self.decoder.finish() {
                        Ok(r) => r,
                        Err(e) => return self.failed(e),
                    };
                    let (mut text, stopped) = self.stops.feed(&rest);
                    if !stopped {
                        text += &self.stops.flush();
                    }
                    let reason = if stopped { "stop" } else { reason.as_str() };
                    return Piece::End { text, reason };
                }
                Some(Update::Failed(m)) => return Piece::Failed(m),
                None => return Piece::Failed("the generation engine stopped".into()),
            }
        }
    }

    fn failed(&self, message: String) -> Piece {
        self.server.engine.cancel(self.run.id);
        Piece::Failed(message)
    }
}

/// Where a stream stands.
enum Phase {
    Running(Box<Generation>),
    Done,
    Over,
}

/// The server-sent events of a streamed completion: one chunk per token, the finish reason on the last,
/// then `[DONE]`. Dropping the stream (the client went away) drops the request's channel, which cancels it.
fn stream(generation: Generation, meta: CompletionMeta) -> Response {
    let meta = Arc::new(meta);
    let events = futures_util::stream::unfold(Phase::Running(Box::new(generation)), move |phase| {
        let meta = meta.clone();
        async move {
            match phase {
                Phase::Over => None,
                Phase::Done => Some((Event::default().data("[DONE]"), Phase::Over)),
                Phase::Running(mut g) => {
                    let (data, next) = match g.next().await {
                        Piece::Text(t) => (meta.chunk(&t, None), Phase::Running(g)),
                        Piece::End { text, reason } => {
                            (meta.chunk(&text, Some(reason)), Phase::Done)
                        }
                        Piece::Failed(m) => (
                            ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, m).body(),
                            Phase::Done,
                        ),
                    };
                    Some((Event::default().data(data.to_string()), next))
                }
            }
        }
    });
    Sse::new(events.map(Ok::<_, Infallible>)).into_response()
}

async fn models(State(server): State<Arc<Server>>) -> Result<Json<Value>, ApiError> {
    let adapters = server.engine.adapters().await.map_err(worker_error)?;
    let mut data = vec![model_entry(&server.base_name, server.started, None)];
    data.extend(
        adapters
            .iter()
            .map(|a| model_entry(a, server.started, Some(&server.base_name))),
    );
    Ok(Json(json!({"object": "list", "data": data})))
}

/// The body of `POST /v1/adapters`.
#[derive(Debug, Deserialize)]
struct AddAdapter {
    name: String,
    path: PathBuf,
}

async fn add_adapter(
    State(server): State<Arc<Server>>,
    body: Result<Json<AddAdapter>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(AddAdapter { name, path }) = body?;
    if name.is_empty() || name.contains('/') || name.trim() != name {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("`{name}` cannot name an adapter: give a non-empty name without `/` or surrounding spaces"),
        ));
    }
    let taken = || {
        ApiError::conflict(
            "adapter_exists",
            format!("the name `{name}` is taken: remove it first, or pick another"),
        )
    };
    if name == server.base_name {
        return Err(ApiError::conflict(
            "adapter_exists",
            format!("`{name}` is the base model's name: pick another"),
        ));
    }
    // Checked before the load, which is the slow part; the engine checks again when the adapter arrives.
    if server
        .engine
        .adapters()
        .await
        .map_err(worker_error)?
        .contains(&name)
    {
        return Err(taken());
    }
    let loading = server.clone();
    let dir = path.clone();
    let adapter = tokio::task::spawn_blocking(move || {
        load_adapter(
            loading.model.as_ref(),
            Some(loading.tokenizer.as_ref()),
            &dir,
            &loading.adapter_options,
        )
    })
    .await
    .map_err(|e| {
        ApiError::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("loading the adapter failed: {e}"),
        )
    })?
    .map_err(|e| ApiError::bad_request("adapter_load_failed", format!("{e:#}")))?;
    server
        .engine
        .add_adapter(name.clone(), adapter)
        .await
        .map_err(|e| match e {
            WorkerError::Engine(EngineError::AdapterExists(_)) => taken(),
            other => worker_error(other),
        })?;
    eprintln!("loaded adapter `{name}` from {}", path.display());
    let mut entry = model_entry(&name, unix_now(), Some(&server.base_name));
    entry["path"] = json!(path);
    Ok((StatusCode::CREATED, Json(entry)))
}

async fn remove_adapter(
    State(server): State<Arc<Server>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    server
        .engine
        .remove_adapter(name.clone())
        .await
        .map_err(worker_error)?;
    eprintln!("removed adapter `{name}`");
    Ok(Json(
        json!({"id": name, "object": "model", "deleted": true}),
    ))
}

async fn health(State(server): State<Arc<Server>>) -> Result<Json<Value>, ApiError> {
    let s = server.engine.stats().await.map_err(worker_error)?;
    Ok(Json(json!({
        "status": "ok",
        "running": s.running,
        "queued": s.queued,
        "finished": {"stop": s.stopped, "length": s.length, "cancelled": s.cancelled, "failed": s.failed},
    })))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found("not_found", format!("no route {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        kind: "invalid_request_error",
        code: "method_not_allowed",
        message: format!("{} does not take {method}", uri.path()),
    }
}
