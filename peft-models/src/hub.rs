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
use std::time::Duration;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;
use peft_core::hub_cache::{self, fetch_with_probe, FetchError};

use crate::error::{ModelError, Result};

/// The local Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`
/// (see [`peft_core::hub_cache::cache_dir`]).
pub fn cache_dir() -> PathBuf {
    hub_cache::cache_dir()
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
    download_with_timeout(
        repo_id,
        cache_dir(),
        hub_cache::endpoint(),
        hub_cache::probe_timeout(),
    )
}

/// [`download`] into the hub cache `hub`, from `endpoint` (default: the hub), giving up after `timeout`
/// without a first answer.
fn download_with_timeout(
    repo_id: &str,
    hub: PathBuf,
    endpoint: Option<String>,
    timeout: Duration,
) -> Result<PathBuf> {
    let id = repo_id.to_string();
    let cache = hub.clone();
    let fetched = fetch_with_probe(timeout, move |answered| {
        fetch_files(&id, cache, endpoint, answered)
    });
    fetched.map_err(|e| match e {
        FetchError::Unreachable(why) => ModelError::Zoo(format!(
            "cannot reach the Hugging Face hub to download `{repo_id}` ({why}), and it is not in the local hub \
             cache ({}). Download it on a machine with access (e.g. `huggingface-cli download {repo_id}`) and copy \
             the cache over (or set HF_HOME), or give a local model folder, a .gguf file or a zoo name \
             (`peft fetch <name>`)",
            hub.display()
        )),
        FetchError::Failed(why) => {
            ModelError::Zoo(format!("downloading `{repo_id}` from the hub: {why}"))
        }
    })
}

/// Fetches the files [`download`] names, calling `answered` once the hub has answered.
fn fetch_files(
    repo_id: &str,
    hub: PathBuf,
    endpoint: Option<String>,
    answered: &dyn Fn(),
) -> std::result::Result<PathBuf, String> {
    let mut builder = ApiBuilder::from_cache(Cache::new(hub)).with_progress(false);
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    let repo = api.model(repo_id.to_string());
    let config = repo.get("config.json").map_err(|e| e.to_string())?;
    answered();
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
