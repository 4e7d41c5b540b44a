//! `peft serve` with real clients (curl, python's standard library, a bare socket) against the tiny LLaMA
//! with the tiny word-level tokenizer and HF PEFT adapters: concurrent completions of several adapters equal
//! `peft generate` with each adapter alone, a stream adds up to the whole answer, stop strings cut the text,
//! adapters come and go at run time, errors have OpenAI's shape and status, and a client that goes away
//! frees its row. The server is killed at the end of each test, passed or failed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::fixture;
use serde_json::{json, Value};

/// The tiny LLaMA with the tiny GPT-2's word-level tokenizer (`w0` .. `w99`; the LLaMA's end-of-sequence
/// token 2 is `w2`).
fn model_dir(root: &Path) -> PathBuf {
    let dir = root.join("tiny-llama-words");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixture(&format!("tiny-llama/{f}")), dir.join(f)).unwrap();
    }
    std::fs::copy(
        fixture("tiny-gpt2/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    dir
}

fn adapter(name: &str) -> String {
    fixture(&format!("adapters/hf-tiny-llama-{name}"))
}

/// A running `peft serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Server {
    fn start(model: &Path, adapters: &[(&str, String)], extra: &[&str], log: PathBuf) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_peft"));
        cmd.args(["serve", "--model", model.to_str().unwrap(), "--port", "0"]);
        for (name, dir) in adapters {
            cmd.args(["--adapter", &format!("{name}={dir}")]);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("starting peft serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut server = Server {
            child,
            url: String::new(),
            log,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no address printed; log:\n{}", server.log_text()));
        server.url = line
            .strip_prefix("peft serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while curl(&server, "GET", "/health", None).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "never healthy; log:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn address(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    fn health(&self) -> Value {
        let (status, body) = curl(self, "GET", "/health", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request through curl: the status and the body.
fn curl(server: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    curl_with(
        server,
        method,
        path,
        body,
        &["-H", "Content-Type: application/json"],
    )
}

fn curl_with(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[&str],
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "60",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    cmd.args(headers);
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    cmd.arg(format!("{}{path}", server.url));
    let out = cmd.output().expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = curl(server, "POST", path, Some(&body.to_string()));
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")),
    )
}

/// Asserts OpenAI's error shape with `status`, `code`, and a message holding every needle.
fn assert_error(status: u16, body: &Value, want_status: u16, code: &str, needles: &[&str]) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(e["type"].is_string(), "{body}");
    let message = e["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {body}"));
    for n in needles {
        assert!(message.contains(n), "{message:?} does not mention {n:?}");
    }
}

/// What `peft generate` prints after the prompt, greedy.
fn generate(model: &Path, adapter: Option<&str>, prompt: &str, max_new: usize) -> String {
    let mut args = vec![
        "generate".to_string(),
        "--model".into(),
        model.display().to_string(),
        "--prompt".into(),
        prompt.into(),
        "--max-new-tokens".into(),
        max_new.to_string(),
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter".into(), a.into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run_peft(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n')
        .and_then(|t| t.strip_prefix(prompt))
        .unwrap_or_else(|| panic!("unexpected output {text:?}"))
        .to_string()
}

fn completion(
    server: &Server,
    adapter: Option<&str>,
    prompt: &str,
    max_tokens: usize,
    extra: Value,
) -> (u16, Value) {
    let mut body =
        json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "adapter": adapter});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    post(server, "/v1/completions", &body)
}

/// The `data:` events of a streamed answer, `[DONE]` included.
fn sse_events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(String::from)
        .collect()
}

/// Streams a completion with curl; returns the chunks' text, the last finish reason and the chunk count.
fn streamed(server: &Server, body: &Value) -> (String, String, usize) {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let (status, text) = curl_with(
        server,
        "POST",
        "/v1/completions",
        Some(&body.to_string()),
        &["-N", "-H", "Content-Type: application/json"],
    );
    assert_eq!(status, 200, "{text}");
    let events = sse_events(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let mut all = String::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["object"], "text_completion");
        let choice = &c["choices"][0];
        all += choice["text"].as_str().unwrap();
        if i + 1 < chunks.len() {
            assert!(choice["finish_reason"].is_null(), "{c}");
        }
    }
    let reason = chunks.last().unwrap()["choices"][0]["finish_reason"]
        .as_str()
        .unwrap()
        .to_string();
    (all, reason, chunks.len())
}

/// Sends a completion over a bare socket and closes it: after the first streamed chunk when `stream`, or
/// right after the request otherwise.
fn disconnecting_client(server: &Server, body: &Value, stream: bool) {
    let mut body = body.clone();
    body["stream"] = json!(stream);
    let body = body.to_string();
    let mut s = TcpStream::connect(server.address()).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.address(),
        body.len()
    )
    .unwrap();
    if stream {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("data: ") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the first chunk");
            seen.extend_from_slice(&buf[..n]);
        }
    } else {
        // Leave once the request is in the engine (a bare socket polls faster than a step takes).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let h = raw_health(server);
            if h["running"].as_u64().unwrap() + h["queued"].as_u64().unwrap() > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the request never reached the engine: {h}"
            );
        }
    }
    drop(s);
}

/// `GET /health` over a bare socket (faster than starting curl).
fn raw_health(server: &Server) -> Value {
    let mut s = TcpStream::connect(server.address()).unwrap();
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.address()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap()
}

/// Waits until the engine has no request in flight and `cancelled` requests were cancelled in all.
fn wait_cancelled(server: &Server, cancelled: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = server.health();
        if h["finished"]["cancelled"].as_u64().unwrap() >= cancelled
            && h["running"] == 0
            && h["queued"] == 0
        {
            return h;
        }
        assert!(Instant::now() < deadline, "not cancelled: {h}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_answers_as_generate_does_and_refuses_with_openai_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let adapters = [
        ("lora", adapter("lora")),
        ("prefix", adapter("prefix")),
        ("ptuning", adapter("p-tuning-mlp")),
    ];
    let server = Server::start(
        &model,
        &adapters,
        &["--max-batch", "4"],
        tmp.path().join("serve.log"),
    );
    let base = model.display().to_string();

    // The model list: the base, then the adapters (sorted), each naming the base as parent.
    let (status, text) = curl(&server, "GET", "/v1/models", None);
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [base.as_str(), "lora", "prefix", "ptuning"]);
    assert_eq!(list["data"][1]["parent"], base.as_str());

    // Concurrent requests over the base and three adapters (more than --max-batch at once): each answer is
    // `peft generate`'s with that adapter alone.
    let prompts = ["w5 w6 w7", "w10 w11 w12 w13"];
    let mut cases = Vec::new();
    for (name, dir) in [(None, None)]
        .into_iter()
        .chain(adapters.iter().map(|(n, d)| (Some(*n), Some(d.as_str()))))
    {
        for p in prompts {
            cases.push((name, p, generate(&model, dir, p, 12)));
        }
    }
    let distinct: std::collections::HashSet<&String> = cases.iter().map(|c| &c.2).collect();
    assert!(
        distinct.len() > prompts.len(),
        "the adapters change nothing: {cases:?}"
    );
    std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(name, p, want)| {
                let (server, base) = (&server, base.as_str());
                scope.spawn(move || {
                    let (status, got) = completion(server, *name, p, 12, json!({}));
                    assert_eq!(status, 200, "{got}");
                    assert_eq!(
                        got["choices"][0]["text"],
                        want.as_str(),
                        "{name:?} {p:?}: {got}"
                    );
                    assert_eq!(got["object"], "text_completion");
                    assert_eq!(got["model"], name.unwrap_or(base));
                    assert!(got["choices"][0]["logprobs"].is_null());
                    let usage = &got["usage"];
                    let words = p.split(' ').count() as u64;
                    assert_eq!(usage["prompt_tokens"], words);
                    let n = usage["completion_tokens"].as_u64().unwrap();
                    assert_eq!(usage["total_tokens"].as_u64().unwrap(), words + n);
                    // Fewer tokens than asked means the end-of-sequence token came.
                    let reason = if n == 12 && want.split(' ').count() == 12 {
                        "length"
                    } else {
                        "stop"
                    };
                    assert_eq!(got["choices"][0]["finish_reason"], reason, "{got}");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });

    // `model` may name an adapter instead of `adapter`.
    let (_, by_model) = post(
        &server,
        "/v1/completions",
        &json!({"model": "lora", "prompt": prompts[0], "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(by_model["choices"][0]["text"], cases[2].2.as_str());

    // A stream adds up to the whole answer, one chunk per token and a last one with the finish reason.
    let (name, prompt, want) = cases
        .iter()
        .find(|c| c.2.split(' ').count() >= 3)
        .expect("a long answer");
    let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "adapter": name});
    let (_, whole) = post(&server, "/v1/completions", &body);
    let (text, reason, chunks) = streamed(&server, &body);
    assert_eq!(text, *want);
    assert_eq!(
        reason,
        whole["choices"][0]["finish_reason"].as_str().unwrap()
    );
    assert_eq!(chunks, want.split(' ').count() + 1);

    // A stop string ends the text before it, streamed or not.
    let second = format!(" {}", want.split(' ').nth(1).unwrap());
    let cut = &want[..want.find(&second).unwrap()];
    let mut stopping = body.clone();
    stopping["stop"] = json!([second, "never"]);
    let (status, got) = post(&server, "/v1/completions", &stopping);
    assert_eq!(status, 200);
    assert_eq!(got["choices"][0]["text"], cut);
    assert_eq!(got["choices"][0]["finish_reason"], "stop");
    let (text, reason, _) = streamed(&server, &stopping);
    assert_eq!((text.as_str(), reason.as_str()), (cut, "stop"));

    // Errors: OpenAI's shape and the right status.
    let (status, e) = completion(&server, Some("nope"), "w1", 4, json!({}));
    assert_error(status, &e, 404, "model_not_found", &["nope"]);
    let (status, e) = post(
        &server,
        "/v1/completions",
        &json!({"model": "gpt-nope", "prompt": "w1"}),
    );
    assert_error(status, &e, 404, "model_not_found", &["gpt-nope"]);
    let (status, text) = curl(
        &server,
        "POST",
        "/v1/completions",
        Some("{\"prompt\": \"w1\", "),
    );
    assert_error(
        status,
        &serde_json::from_str(&text).unwrap(),
        400,
        "invalid_json",
        &[],
    );
    let (status, e) = post(&server, "/v1/completions", &json!({"max_tokens": 3}));
    assert_error(status, &e, 400, "invalid_json", &["prompt"]);
    let (status, e) = post(&server, "/v1/completions", &json!({"prompt": 5}));
    assert_error(status, &e, 400, "invalid_json", &[]);
    let (status, text) = curl_with(
        &server,
        "POST",
        "/v1/completions",
        Some("{\"prompt\": \"w1\"}"),
        &[],
    );
    assert_error(
        status,
        &serde_json::from_str(&text).unwrap(),
        415,
        "invalid_content_type",
        &[],
    );
    let long_prompt: Vec<String> = (0..60).map(|i| format!("w{}", 10 + i)).collect();
    let (status, e) = completion(&server, None, &long_prompt.join(" "), 10, json!({}));
    assert_error(status, &e, 400, "context_length_exceeded", &["64"]);
    let (status, e) = completion(&server, None, "w1", 4, json!({"temperature": -1}));
    assert_error(status, &e, 400, "invalid_sampling", &["temperature"]);
    let (status, e) = completion(&server, None, "w1", 4, json!({"n": 2}));
    assert_error(status, &e, 400, "unsupported_parameter", &["n"]);
    let (status, e) = post(
        &server,
        "/v1/adapters",
        &json!({"name": "lora", "path": adapter("loha")}),
    );
    assert_error(status, &e, 409, "adapter_exists", &["lora"]);
    let (status, e) = post(
        &server,
        "/v1/adapters",
        &json!({"name": "ghost", "path": "/no/such/adapter"}),
    );
    assert_error(
        status,
        &e,
        400,
        "adapter_load_failed",
        &["/no/such/adapter"],
    );
    let (status, e) = post(
        &server,
        "/v1/adapters",
        &json!({"name": "gpt2", "path": fixture("adapters/hf-tiny-gpt2-lora")}),
    );
    assert_error(
        status,
        &e,
        400,
        "adapter_load_failed",
        &["hf-tiny-gpt2-lora"],
    );
    let (status, text) = curl(&server, "GET", "/v2/nothing", None);
    assert_error(
        status,
        &serde_json::from_str(&text).unwrap(),
        404,
        "not_found",
        &["/v2/nothing"],
    );

    // An adapter added at run time serves at once and is gone once removed.
    let loha = adapter("loha");
    let (status, added) = post(
        &server,
        "/v1/adapters",
        &json!({"name": "loha", "path": loha}),
    );
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["id"], "loha");
    let (_, text) = curl(&server, "GET", "/v1/models", None);
    assert!(text.contains("\"loha\""), "{text}");
    let (status, got) = completion(&server, Some("loha"), prompts[1], 12, json!({}));
    assert_eq!(status, 200, "{got}");
    let want = generate(&model, Some(&loha), prompts[1], 12);
    assert_ne!(want, cases[1].2, "LoHa changes the base model's answer");
    assert_eq!(got["choices"][0]["text"], want.as_str());
    let (status, text) = curl(&server, "DELETE", "/v1/adapters/loha", None);
    assert_eq!(status, 200, "{text}");
    let (status, e) = completion(&server, Some("loha"), prompts[1], 12, json!({}));
    assert_error(status, &e, 404, "model_not_found", &["loha"]);
    let (status, text) = curl(&server, "DELETE", "/v1/adapters/loha", None);
    assert_error(
        status,
        &serde_json::from_str(&text).unwrap(),
        404,
        "model_not_found",
        &["loha"],
    );

    // Clients that go away (mid-stream, or before the answer) free their rows, and the server goes on. The
    // request must still have tokens to go when the client leaves: pick one that runs its whole budget.
    let budget = 40;
    let long = [
        "w30 w31",
        "w50",
        "w60 w61 w62",
        "w70",
        "w80 w81",
        "w90",
        "w15 w16",
    ]
    .iter()
    .flat_map(|p| {
        [(None, None), (Some("lora"), Some(adapter("lora")))].map(move |(n, d)| (n, d, *p))
    })
    .find(|(_, d, p)| generate(&model, d.as_deref(), p, budget).split(' ').count() == budget)
    .expect("a prompt that runs 40 tokens without the end-of-sequence token");
    let body = json!({"prompt": long.2, "max_tokens": budget, "temperature": 0, "adapter": long.0});
    let before = server.health()["finished"]["cancelled"].as_u64().unwrap();
    disconnecting_client(&server, &body, true);
    wait_cancelled(&server, before + 1);
    disconnecting_client(&server, &body, false);
    wait_cancelled(&server, before + 2);
    for _ in 0..6 {
        disconnecting_client(&server, &body, true);
    }
    wait_cancelled(&server, before + 8);
    let (status, got) = completion(&server, long.0, long.2, 5, json!({}));
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["choices"][0]["finish_reason"], "length");
}

#[test]
fn load_test_script_runs_without_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let adapters = [
        ("lora", adapter("lora")),
        ("prefix", adapter("prefix")),
        ("ptuning", adapter("p-tuning-mlp")),
        ("vera", adapter("vera")),
    ];
    let server = Server::start(
        &model,
        &adapters,
        &["--max-batch", "6"],
        tmp.path().join("serve.log"),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/serve_load_test.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "--url",
            &server.url,
            "--requests",
            "40",
            "--concurrency",
            "8",
            "--deadline",
            "120",
        ])
        .args(["--pid", &server.child.id().to_string()])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "load test failed: {stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["failures"], 0, "{report}");
    assert_eq!(report["requests"], 40);
    assert_eq!(report["models"].as_array().unwrap().len(), 5, "{report}");
    assert!(report["rss_start_kb"].as_u64().unwrap() > 0, "{report}");
    assert!(report["p99_ms"].as_f64().unwrap() >= report["p50_ms"].as_f64().unwrap());
    let health = server.health();
    assert_eq!(
        (health["running"].as_u64(), health["queued"].as_u64()),
        (Some(0), Some(0)),
        "{health}"
    );
}

#[test]
fn serve_refuses_what_it_cannot_start() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let m = model.to_str().unwrap();
    // An address in use is named.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let out = common::run_peft(&["serve", "--model", m, "--port", &port]);
    common::fails_with(&out, &[&format!("127.0.0.1:{port}")]);
    // An encoder-decoder model cannot be served.
    let out = common::run_peft(&["serve", "--model", &fixture("tiny-t5"), "--port", "0"]);
    common::fails_with(&out, &["cannot be served", "decoder-only"]);
    // A model folder without a tokenizer cannot read prompts.
    let out = common::run_peft(&["serve", "--model", &fixture("tiny-llama"), "--port", "0"]);
    common::fails_with(&out, &["tokenizer"]);
    // A bad --adapter, and an adapter that does not load.
    let out = common::run_peft(&["serve", "--model", m, "--adapter", "no-equals-sign"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=DIR"));
    let out = common::run_peft(&[
        "serve",
        "--model",
        m,
        "--port",
        "0",
        "--adapter",
        "x=/no/such/adapter",
    ]);
    common::fails_with(&out, &["/no/such/adapter"]);
}
