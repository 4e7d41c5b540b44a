//! The continuous-batching engine on the tiny LLaMA with adapters of four method types: requests that join
//! at different steps, share a batch with other adapters' rows and wait for room each get exactly the
//! tokens that the uncached reference generation gives with their adapter alone; cancellation frees a row;
//! refusals name what is wrong.

use std::collections::HashMap;
use std::sync::Arc;

use peft_core::hooks::{Hooks, NoHooks};
use peft_core::method::{Adapter, InitCtx, PeftMethod};
use peft_core::model::BaseModel;
use peft_train::engine::{Engine, EngineError, FinishReason, Request, RequestId};
use peft_train::generate::{generate, Sampling};
use rand::SeedableRng;
use serde_json::json;

const EOS: u32 = 2;

fn model() -> Arc<dyn BaseModel> {
    Arc::new(peft_models::tiny::llama(3))
}

fn build(model: &dyn BaseModel, config: serde_json::Value, seed: u64) -> Arc<dyn Adapter> {
    peft_cli::link_methods();
    let method: Box<dyn PeftMethod> = serde_json::from_value(config).unwrap();
    let adapter = method
        .build(&mut InitCtx {
            model,
            tokenizer: None,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        })
        .unwrap();
    Arc::from(adapter)
}

/// LoRA (B not zero, so it changes the outputs), prefix tuning, prompt tuning and P-tuning.
fn adapters(model: &dyn BaseModel) -> Vec<(&'static str, Arc<dyn Adapter>)> {
    vec![
        (
            "lora",
            build(
                model,
                json!({"peft_type": "LORA", "r": 4, "lora_alpha": 16, "init_lora_weights": false,
                       "target_modules": "all-linear"}),
                1,
            ),
        ),
        (
            "prefix",
            build(
                model,
                json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 3}),
                2,
            ),
        ),
        (
            "prompt",
            build(
                model,
                json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 5}),
                3,
            ),
        ),
        (
            "ptuning",
            build(
                model,
                json!({"peft_type": "P_TUNING", "num_virtual_tokens": 4, "encoder_hidden_size": 16}),
                4,
            ),
        ),
    ]
}

fn engine_with(
    model: &Arc<dyn BaseModel>,
    max_rows: usize,
) -> (Engine, HashMap<String, Arc<dyn Adapter>>) {
    let mut engine = Engine::new(model.clone(), max_rows).unwrap();
    let mut by_name = HashMap::new();
    for (name, a) in adapters(model.as_ref()) {
        engine.add_adapter(name, a.clone()).unwrap();
        by_name.insert(name.to_string(), a);
    }
    (engine, by_name)
}

/// The uncached, unbatched reference: `generate` with the request's adapter alone.
fn reference(
    model: &dyn BaseModel,
    adapters: &HashMap<String, Arc<dyn Adapter>>,
    r: &Request,
) -> Vec<u32> {
    let hooks: &dyn Hooks = match &r.adapter {
        Some(name) => adapters[name].as_ref(),
        None => &NoHooks,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(r.seed);
    generate(
        model,
        hooks,
        &r.prompt,
        r.max_new_tokens,
        &r.sampling,
        r.eos,
        &mut rng,
    )
    .unwrap()
}

fn request(adapter: Option<&str>, prompt: &[u32], max_new_tokens: usize) -> Request {
    Request {
        adapter: adapter.map(String::from),
        eos: Some(EOS),
        ..Request::new(prompt.to_vec(), max_new_tokens)
    }
}

/// What a request got: its tokens and how it ended.
#[derive(Debug, Default)]
struct Outcome {
    tokens: Vec<u32>,
    finish: Option<FinishReason>,
}

/// Steps until idle, submitting `plan[i].1` at step `plan[i].0`; checks the row cap on every step.
fn run_plan(
    engine: &mut Engine,
    plan: &[(usize, Request)],
    max_rows: usize,
) -> (Vec<RequestId>, HashMap<RequestId, Outcome>, Stats) {
    let mut ids = vec![None; plan.len()];
    let mut out: HashMap<RequestId, Outcome> = HashMap::new();
    let mut stats = Stats::default();
    let mut step = 0;
    while step <= plan.iter().map(|p| p.0).max().unwrap() || !engine.is_idle() {
        for (i, (at, r)) in plan.iter().enumerate() {
            if *at == step {
                ids[i] = Some(engine.submit(r.clone()).unwrap());
            }
        }
        let events = engine.step().unwrap();
        assert!(engine.running() <= max_rows);
        stats.most_running = stats.most_running.max(engine.running());
        stats.ever_queued |= engine.queued() > 0;
        for e in events {
            let o = out.entry(e.id).or_default();
            assert!(
                o.finish.is_none(),
                "request {} got an event after its end",
                e.id
            );
            o.tokens.extend(e.token);
            o.finish = e.finish;
        }
        step += 1;
        assert!(step < 500, "the engine never went idle");
    }
    (ids.into_iter().map(Option::unwrap).collect(), out, stats)
}

#[derive(Debug, Default)]
struct Stats {
    most_running: usize,
    ever_queued: bool,
}

#[test]
fn every_request_gets_the_tokens_its_adapter_gives_alone() {
    let model = model();
    let (mut engine, by_name) = engine_with(&model, 3);
    let sampled = Request {
        sampling: Sampling::TopP {
            temperature: 1.3,
            top_p: 0.95,
        },
        seed: 11,
        ..request(Some("prompt"), &[14, 15, 16, 17, 18], 12)
    };
    let plan = vec![
        (0, request(None, &[5, 6, 7, 8], 10)),
        (0, request(Some("lora"), &[9, 10, 11], 12)),
        (0, request(Some("prefix"), &[12, 13], 8)),
        (2, sampled),
        (3, request(Some("ptuning"), &[20, 21, 22], 7)),
        (3, request(Some("lora"), &[23], 6)),
        (5, request(Some("prefix"), &[30, 31, 32, 33, 34, 35], 9)),
        (6, request(None, &[40], 1)),
    ];
    let (ids, out, stats) = run_plan(&mut engine, &plan, 3);
    assert_eq!(
        stats.most_running, 3,
        "rows of different adapters shared a batch"
    );
    assert!(stats.ever_queued, "some requests waited for room");
    for ((_, r), id) in plan.iter().zip(&ids) {
        let o = &out[id];
        let want = reference(model.as_ref(), &by_name, r);
        assert_eq!(o.tokens, want, "request {id} ({:?})", r.adapter);
        let reason = if want.last() == Some(&EOS) {
            FinishReason::Stop
        } else {
            assert_eq!(want.len(), r.max_new_tokens);
            FinishReason::Length
        };
        assert_eq!(o.finish, Some(reason), "request {id}");
    }

    // The adapters change what the model says, so a row run with the wrong adapter would be caught.
    for (name, _) in adapters(model.as_ref()) {
        let r = request(Some(name), &[9, 10, 11], 8);
        let base = request(None, &[9, 10, 11], 8);
        assert_ne!(
            reference(model.as_ref(), &by_name, &r),
            reference(model.as_ref(), &by_name, &base),
            "{name} changes nothing"
        );
    }
}

#[test]
fn cancelling_frees_the_row_and_the_others_go_on() {
    let model = model();
    let (mut engine, by_name) = engine_with(&model, 2);
    // No end-of-sequence token: both would run their whole budget.
    let long = |adapter: Option<&str>, prompt: &[u32]| Request {
        eos: None,
        ..request(adapter, prompt, 20)
    };
    let keep = long(Some("lora"), &[3, 4, 5]);
    let a = engine.submit(keep.clone()).unwrap();
    let b = engine.submit(long(Some("prefix"), &[6, 7])).unwrap();
    // Waits for room (two rows at most), and is cancelled before it ever runs.
    let c = engine.submit(long(None, &[8])).unwrap();
    let mut tokens: HashMap<RequestId, Vec<u32>> = HashMap::new();
    let mut finished: HashMap<RequestId, FinishReason> = HashMap::new();
    let mut record = |events: Vec<peft_train::engine::Event>,
                      finished: &mut HashMap<RequestId, FinishReason>| {
        for e in events {
            tokens.entry(e.id).or_default().extend(e.token);
            if let Some(f) = e.finish {
                finished.insert(e.id, f);
            }
        }
    };
    for _ in 0..3 {
        record(engine.step().unwrap(), &mut finished);
    }
    assert_eq!((engine.running(), engine.queued()), (2, 1));
    assert!(engine.cancel(b));
    assert!(engine.cancel(c));
    assert!(!engine.cancel(999), "an unknown id is not in flight");
    let events = engine.step().unwrap();
    assert!(events
        .iter()
        .any(|e| e.id == b && e.finish == Some(FinishReason::Cancelled) && e.token.is_none()));
    assert!(events
        .iter()
        .any(|e| e.id == c && e.finish == Some(FinishReason::Cancelled)));
    record(events, &mut finished);
    assert_eq!(
        (engine.running(), engine.queued()),
        (1, 0),
        "the cancelled rows left"
    );
    let d = engine.submit(long(Some("ptuning"), &[9, 10])).unwrap();
    while !engine.is_idle() {
        record(engine.step().unwrap(), &mut finished);
    }
    assert_eq!(finished[&a], FinishReason::Length);
    assert_eq!(finished[&d], FinishReason::Length);
    assert_eq!(tokens[&a], reference(model.as_ref(), &by_name, &keep));
    assert_eq!(
        tokens[&d],
        reference(model.as_ref(), &by_name, &long(Some("ptuning"), &[9, 10]))
    );
    assert_eq!(
        tokens[&b].len(),
        3,
        "b ran three steps before it was cancelled"
    );
    assert!(tokens[&c].is_empty());
}

#[test]
fn an_adapter_removed_in_flight_serves_its_requests_to_the_end() {
    let model = model();
    let (mut engine, by_name) = engine_with(&model, 4);
    let r = request(Some("prompt"), &[11, 12, 13], 10);
    let id = engine.submit(r.clone()).unwrap();
    let mut tokens = Vec::new();
    tokens.extend(
        engine
            .step()
            .unwrap()
            .iter()
            .filter(|e| e.id == id)
            .filter_map(|e| e.token),
    );
    engine.remove_adapter("prompt").unwrap();
    assert!(
        matches!(engine.submit(r.clone()), Err(EngineError::UnknownAdapter(n)) if n == "prompt")
    );
    assert!(!engine.adapter_names().contains(&"prompt".to_string()));
    while !engine.is_idle() {
        tokens.extend(engine.step().unwrap().iter().filter_map(|e| e.token));
    }
    assert_eq!(tokens, reference(model.as_ref(), &by_name, &r));
    // Added back under the same name, it serves again.
    engine
        .add_adapter("prompt", by_name["prompt"].clone())
        .unwrap();
    engine.submit(r).unwrap();
}

#[test]
fn requests_that_cannot_run_are_refused_with_the_reason() {
    let model = model();
    let (mut engine, by_name) = engine_with(&model, 4);
    let err = engine
        .submit(request(Some("nope"), &[1, 2], 4))
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::UnknownAdapter(n) if n == "nope"),
        "{err}"
    );
    assert!(err.to_string().contains("`nope`"));
    assert!(matches!(
        engine.submit(request(None, &[], 4)),
        Err(EngineError::EmptyPrompt)
    ));
    let vocab = peft_models::tiny::VOCAB;
    assert!(matches!(
        engine.submit(request(None, &[1, vocab as u32], 4)),
        Err(EngineError::TokenOutOfVocab { token, vocab: v }) if token as usize == vocab && v == vocab
    ));

    // The context is 64 positions: 55 prompt tokens and 9 new ones fit the base model, not with the
    // prefix adapter's 3 positions in front.
    let prompt: Vec<u32> = (0..55).map(|i| 3 + i % 90).collect();
    engine.submit(request(None, &prompt, 9)).unwrap();
    let err = engine
        .submit(request(Some("prefix"), &prompt, 9))
        .unwrap_err();
    match &err {
        EngineError::TooLong {
            prompt,
            adapter_positions,
            max_new_tokens,
            limit,
        } => assert_eq!(
            (*prompt, *adapter_positions, *max_new_tokens, *limit),
            (55, 3, 9, 64)
        ),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("context of 64 positions"), "{err}");
    engine.submit(request(Some("prefix"), &prompt, 6)).unwrap();
    assert!(matches!(
        engine.submit(request(None, &prompt, usize::MAX)),
        Err(EngineError::TooLong { .. })
    ));

    let bad = Request {
        sampling: Sampling::TopP {
            temperature: 1.0,
            top_p: 0.0,
        },
        ..request(None, &[1], 2)
    };
    assert!(matches!(
        engine.submit(bad),
        Err(EngineError::BadSampling(_))
    ));

    assert!(matches!(
        engine.add_adapter("lora", by_name["lora"].clone()),
        Err(EngineError::AdapterExists(_))
    ));
    assert!(matches!(
        engine.remove_adapter("nope"),
        Err(EngineError::UnknownAdapter(_))
    ));
    assert!(Engine::new(model.clone(), 0).is_err());

    // A request of no new tokens ends at once, without a token.
    let mut engine = Engine::new(model, 2).unwrap();
    let id = engine.submit(request(None, &[5], 0)).unwrap();
    let events = engine.step().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].id, events[0].token, events[0].finish),
        (id, None, Some(FinishReason::Length))
    );
    assert!(engine.is_idle());
}
