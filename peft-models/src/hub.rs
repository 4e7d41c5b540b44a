//! The local Hugging Face hub cache and downloads into it: a hub id (`org/name`) -> the snapshot folder that
//! holds its `config.json`, safetensors weights and `tokenizer.json`.
//!
//! The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, laid out as
//! `huggingface_hub` lays it out (`models--org--name/snapshots/<rev>/`), so a cache filled by Python tools is
//! found and one filled here serves them.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! std::env::set_var("HF_HUB_CACHE", dir.path());
//! assert_eq!(peft_models::hub::cache_dir(), dir.path());
//! assert_eq!(peft_models::hub::cached_snapshot("org/absent"), None);
//! ```
//!
//! ```no_run
//! let folder = peft_models::hub::download("HuggingFaceTB/SmolLM2-135M")?;
//! # let _ = folder;
//! # Ok::<(), peft_models::ModelError>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;

use crate::error::{ModelError, Result};

/// How long to wait for the hub's first answer before calling it unreachable; `PEFT_HUB_TIMEOUT_SECS`
/// overrides it. Once the hub has answered, downloads run to the end.
const HUB_PROBE_SECS: u64 = 20;

/// The local Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
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
pub fn cached_snapshot(repo_id: &str) -> Option<PathBuf> {
    snapshot_in(&cache_dir(), repo_id)
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
pub fn download(repo_id: &str) -> Result<PathBuf> {
    let timeout = std::env::var("PEFT_HUB_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(HUB_PROBE_SECS), Duration::from_secs);
    let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
    download_with_timeout(repo_id, cache_dir(), endpoint, timeout)
}

/// [`download`] into the hub cache `hub`, from `endpoint` (default: the hub), giving up after `timeout`
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
        let _ = tx.send(fetch_files(&id, cache_dir, endpoint, &tx));
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

/// Fetches the files [`download`] names, saying [`Step::Reachable`] once the hub has answered.
fn fetch_files(
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
}
