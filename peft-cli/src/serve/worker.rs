//! The engine's own thread: it owns the [`Engine`] (and so the model's forward passes), takes commands
//! through a channel and sends each request's tokens through that request's own channel. A request whose
//! channel is dropped (its client went away: a closed stream, a dropped response) is cancelled at the next
//! step, so it frees its row. The HTTP handlers hold an [`EngineHandle`] only.
//!
//! ```
//! use std::sync::Arc;
//! use peft_cli::serve::worker::{EngineHandle, Update};
//! use peft_train::engine::{Engine, Request};
//! # async fn demo(model: Arc<dyn peft_core::model::BaseModel>) -> anyhow::Result<()> {
//! let engine = Engine::new(model, 16)?;
//! let (handle, _thread) = EngineHandle::start(engine)?;
//! let mut run = handle.submit(Request::new(vec![1, 2, 3], 8)).await?;
//! while let Some(update) = run.updates.recv().await {
//!     if let Update::Finished(reason) = update {
//!         println!("finished: {}", reason.as_str());
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use peft_core::method::Adapter;
use peft_train::engine::{Engine, EngineError, FinishReason, Request, RequestId};
use tokio::sync::{mpsc as tmpsc, oneshot};

/// What a request's channel carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A new token.
    Token(u32),
    /// The request is over (after its last token).
    Finished(FinishReason),
    /// The engine failed while the request was in flight; it gets nothing more.
    Failed(String),
}

/// A submitted request: its id and its tokens as they come.
pub struct Submitted {
    /// The engine's id of the request.
    pub id: RequestId,
    /// The request's tokens, then its end.
    pub updates: tmpsc::UnboundedReceiver<Update>,
}

/// Why the engine thread could not do what it was asked.
#[derive(Debug)]
pub enum WorkerError {
    /// The engine refused.
    Engine(EngineError),
    /// The engine's thread is gone.
    Stopped,
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerError::Engine(e) => write!(f, "{e}"),
            WorkerError::Stopped => write!(f, "the generation engine has stopped"),
        }
    }
}

impl std::error::Error for WorkerError {}

enum Command {
    Submit {
        request: Request,
        updates: tmpsc::UnboundedSender<Update>,
        reply: oneshot::Sender<Result<RequestId, EngineError>>,
    },
    Cancel(RequestId),
    AddAdapter {
        name: String,
        adapter: Arc<dyn Adapter>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    RemoveAdapter {
        name: String,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    ListAdapters {
        reply: oneshot::Sender<Vec<String>>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
}

/// What the engine is doing, and what it has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests decoding now.
    pub running: usize,
    /// Requests waiting for room.
    pub queued: usize,
    /// Requests finished by an end-of-sequence token or a stop token.
    pub stopped: u64,
    /// Requests finished by their token budget.
    pub length: u64,
    /// Requests cancelled (their client went away, or a stop string ended them).
    pub cancelled: u64,
    /// Requests dropped by a failed step.
    pub failed: u64,
}

/// The handlers' side of the engine thread; cheap to clone. The thread ends when every handle is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
}

impl EngineHandle {
    /// Starts the thread that owns `engine`.
    pub fn start(engine: Engine) -> std::io::Result<(EngineHandle, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("peft-engine".into())
            .spawn(move || run(engine, rx))?;
        Ok((EngineHandle { commands: tx }, thread))
    }

    fn send(&self, command: Command) -> Result<(), WorkerError> {
        self.commands
            .send(command)
            .map_err(|_| WorkerError::Stopped)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, WorkerError> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply))?;
        answer.await.map_err(|_| WorkerError::Stopped)
    }

    /// Queues `request`; its tokens come through the returned receiver.
    pub async fn submit(&self, request: Request) -> Result<Submitted, WorkerError> {
        let (updates, receiver) = tmpsc::unbounded_channel();
        let id = self
            .ask(|reply| Command::Submit {
                request,
                updates,
                reply,
            })
            .await?
            .map_err(WorkerError::Engine)?;
        Ok(Submitted {
            id,
            updates: receiver,
        })
    }

    /// Cancels request `id` (nothing if it is over).
    pub fn cancel(&self, id: RequestId) {
        // A stopped engine has nothing left to cancel.
        let _ = self.send(Command::Cancel(id));
    }

    /// Adds an adapter under `name`.
    pub async fn add_adapter(
        &self,
        name: String,
        adapter: Arc<dyn Adapter>,
    ) -> Result<(), WorkerError> {
        self.ask(|reply| Command::AddAdapter {
            name,
            adapter,
            reply,
        })
        .await?
        .map_err(WorkerError::Engine)
    }

    /// Removes the adapter `name` (requests that use it finish with it).
    pub async fn remove_adapter(&self, name: String) -> Result<(), WorkerError> {
        self.ask(|reply| Command::RemoveAdapter { name, reply })
            .await?
            .map_err(WorkerError::Engine)
    }

    /// The names of the loaded adapters, sorted.
    pub async fn adapters(&self) -> Result<Vec<String>, WorkerError> {
        self.ask(|reply| Command::ListAdapters { reply }).await
    }

    /// The engine's counts; also tells that its thread is alive.
    pub async fn stats(&self) -> Result<Stats, WorkerError> {
        self.ask(|reply| Command::Stats { reply }).await
    }
}

/// The thread's loop: wait for work when idle; otherwise take every pending command, cancel the requests
/// nobody listens to any more, and step.
fn run(mut engine: Engine, commands: mpsc::Receiver<Command>) {
    let mut listeners: HashMap<RequestId, tmpsc::UnboundedSender<Update>> = HashMap::new();
    let mut stats = Stats::default();
    loop {
        if engine.is_idle() {
            match commands.recv() {
                Ok(c) => handle(&mut engine, &mut listeners, &stats, c),
                Err(_) => return,
            }
        }
        while let Ok(c) = commands.try_recv() {
            handle(&mut engine, &mut listeners, &stats, c);
        }
        for (&id, listener) in &listeners {
            if listener.is_closed() {
                engine.cancel(id);
            }
        }
        if engine.is_idle() {
            continue;
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| engine.step())) {
            Ok(Ok(events)) => {
                for event in events {
                    match event.finish {
                        Some(FinishReason::Stop) => stats.stopped += 1,
                        Some(FinishReason::Length) => stats.length += 1,
                        Some(FinishReason::Cancelled) => stats.cancelled += 1,
                        None => {}
                    }
                    let Some(listener) = listeners.get(&event.id) else {
                        continue;
                    };
                    // A send fails only once the client is gone: the request is cancelled next round.
                    if let Some(token) = event.token {
                        let _ = listener.send(Update::Token(token));
                    }
                    if let Some(reason) = event.finish {
                        let _ = listener.send(Update::Finished(reason));
                        listeners.remove(&event.id);
                    }
                }
            }
            Ok(Err(EngineError::StepFailed { aborted, cause })) => {
                eprintln!("error: a generation step failed: {cause}");
                stats.failed += aborted.len() as u64;
                fail(
                    &mut listeners,
                    &aborted,
                    &format!("generation failed: {cause}"),
                );
            }
            Ok(Err(other)) => {
                eprintln!("error: a generation step failed: {other}");
                let aborted = engine.abort_all();
                stats.failed += aborted.len() as u64;
                fail(
                    &mut listeners,
                    &aborted,
                    &format!("generation failed: {other}"),
                );
            }
            Err(_) => {
                // The panic message is already on stderr (the default hook); the engine starts afresh.
                let aborted = engine.abort_all();
                stats.failed += aborted.len() as u64;
                fail(
                    &mut listeners,
                    &aborted,
                    "internal error: a generation step panicked (see the server's log)",
                );
            }
        }
    }
}

fn fail(
    listeners: &mut HashMap<RequestId, tmpsc::UnboundedSender<Update>>,
    aborted: &[RequestId],
    message: &str,
) {
    for id in aborted {
        if let Some(listener) = listeners.remove(id) {
            let _ = listener.send(Update::Failed(message.to_string()));
        }
    }
}

fn handle(
    engine: &mut Engine,
    listeners: &mut HashMap<RequestId, tmpsc::UnboundedSender<Update>>,
    stats: &Stats,
    command: Command,
) {
    // A reply that cannot be delivered went to a handler that was dropped: nothing to do.
    match command {
        Command::Submit {
            request,
            updates,
            reply,
        } => {
            let answer = engine.submit(request);
            if let Ok(id) = &answer {
                listeners.insert(*id, updates);
            }
            if let Err(Ok(id)) = reply.send(answer) {
                // The handler is gone before it learnt the id: nobody will read the tokens.
                engine.cancel(id);
            }
        }
        Command::Cancel(id) => {
            engine.cancel(id);
        }
        Command::AddAdapter {
            name,
            adapter,
            reply,
        } => {
            let _ = reply.send(engine.add_adapter(&name, adapter));
        }
        Command::RemoveAdapter { name, reply } => {
            let _ = reply.send(engine.remove_adapter(&name).map(|_| ()));
        }
        Command::ListAdapters { reply } => {
            let _ = reply.send(engine.adapter_names());
        }
        Command::Stats { reply } => {
            let _ = reply.send(Stats {
                running: engine.running(),
                queued: engine.queued(),
                ..*stats
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn start(max_rows: usize) -> EngineHandle {
        let model: Arc<dyn peft_core::model::BaseModel> = Arc::new(peft_models::tiny::llama(3));
        EngineHandle::start(Engine::new(model, max_rows).unwrap())
            .unwrap()
            .0
    }

    async fn wait_for(handle: &EngineHandle, done: impl Fn(&Stats) -> bool) -> Stats {
        let start = Instant::now();
        loop {
            let s = handle.stats().await.unwrap();
            if done(&s) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "stuck at {s:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn tokens_come_in_order_then_the_end() {
        let handle = start(4);
        let mut run = handle.submit(Request::new(vec![5, 6, 7], 6)).await.unwrap();
        let mut updates = Vec::new();
        while let Some(u) = run.updates.recv().await {
            updates.push(u);
        }
        assert_eq!(updates.len(), 7, "{updates:?}");
        assert!(updates[..6].iter().all(|u| matches!(u, Update::Token(_))));
        assert_eq!(updates[6], Update::Finished(FinishReason::Length));
        let s = wait_for(&handle, |s| s.length == 1).await;
        assert_eq!((s.running, s.queued, s.cancelled), (0, 0, 0));
        // Refusals come back as the engine's errors.
        assert!(matches!(
            handle.submit(Request::new(Vec::new(), 6)).await,
            Err(WorkerError::Engine(EngineError::EmptyPrompt))
        ));
    }

    #[tokio::test]
    async fn a_request_nobody_listens_to_is_cancelled() {
        let handle = start(1);
        // 50 tokens take far longer than dropping the receiver: the row must be cancelled, not finished.
        let long = handle
            .submit(Request::new(vec![5, 6, 7], 50))
            .await
            .unwrap();
        // Queued behind it (one row at most), and also dropped.
        let queued = handle.submit(Request::new(vec![8], 50)).await.unwrap();
        drop(long);
        drop(queued);
        let s = wait_for(&handle, |s| s.cancelled == 2).await;
        assert_eq!((s.running, s.queued, s.length), (0, 0, 0));
        // The freed row serves the next request.
        let mut run = handle.submit(Request::new(vec![9], 3)).await.unwrap();
        let mut n = 0;
        while let Some(u) = run.updates.recv().await {
            n += usize::from(matches!(u, Update::Token(_)));
        }
        assert_eq!(n, 3);
    }
}
