//! Datasets named as Hugging Face users name them: a hub id, a config and a split (`nyu-mll/glue`, `sst2`,
//! `train`), read as Parquet from the local hub cache, downloaded there where the network allows, and
//! otherwise refused at once with what to download and where to put it.
//!
//! The cache is the one `huggingface_hub` fills (`datasets--org--name/snapshots/<commit>/`), in either of the
//! layouts the hub serves Parquet in:
//! - the hub's own conversion, revision `refs/convert/parquet`: `<config>/<split>/0000.parquet`, ...;
//! - a dataset stored as Parquet on its main branch (as `datasets`' `push_to_hub` writes it):
//!   `<config>/<split>-00000-of-00001.parquet`, or `data/<split>-....parquet` for the `default` config.
//!
//! ```
//! use peft_train::data::HubDataset;
//! let hub = tempfile::tempdir().unwrap();
//! let split = hub.path().join("datasets--nyu-mll--glue/snapshots/0a1b/sst2/train");
//! std::fs::create_dir_all(&split).unwrap();
//! std::fs::write(split.join("0000.parquet"), b"").unwrap();
//! let sst2 = HubDataset::new("nyu-mll/glue", "sst2", "train");
//! assert_eq!(sst2.cached_files_in(hub.path()).unwrap(), [split.join("0000.parquet")]);
//! assert!(HubDataset::new("nyu-mll/glue", "rte", "train").cached_files_in(hub.path()).is_none());
//! assert_eq!(sst2.to_string(), "nyu-mll/glue (config sst2, split train)");
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use peft_core::error::{PeftError, Result};
use peft_core::hub_cache::{self, fetch_with_probe, FetchError};

/// The config of a dataset that has no configs of its own, as HF datasets names it.
pub const DEFAULT_CONFIG: &str = "default";

/// The revision holding the hub's own Parquet conversion of every dataset.
pub const PARQUET_REVISION: &str = "refs/convert/parquet";

/// One split of one config of a dataset on the Hugging Face hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubDataset {
    /// The hub id, `org/name`.
    pub id: String,
    /// The config (HF datasets' "subset"); `default` for a dataset without configs.
    pub config: String,
    /// The split: `train`, `validation`, `test`, ...
    pub split: String,
    /// The revision to download from; default [`PARQUET_REVISION`].
    pub revision: Option<String>,
}

impl fmt::Display for HubDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (config {}, split {})",
            self.id, self.config, self.split
        )
    }
}

impl HubDataset {
    /// Split `split` of config `config` of hub dataset `id`.
    pub fn new(id: impl Into<String>, config: impl Into<String>, split: impl Into<String>) -> Self {
        HubDataset {
            id: id.into(),
            config: config.into(),
            split: split.into(),
            revision: None,
        }
    }

    /// Checks the id (`org/name`), config and split before any file is looked for.
    pub fn check(&self) -> Result<()> {
        let parts: Vec<&str> = self.id.split('/').collect();
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if parts.len() != 2 || !parts.iter().all(|p| plain(p)) {
            return Err(PeftError::Config(format!(
                "hub dataset id `{}` is not of the form `org/name` (e.g. \"nyu-mll/glue\")",
                self.id
            )));
        }
        for (what, value) in [("config", &self.config), ("split", &self.split)] {
            if !plain(value) {
                return Err(PeftError::Config(format!(
                    "hub dataset {}: {what} `{value}` is not a plain name (letters, digits, `-`, `_`, `.`)",
                    self.id
                )));
            }
        }
        Ok(())
    }

    /// The Parquet files of this split in the local hub cache (see [`hub_cache::cache_dir`]), in order.
    pub fn cached_files(&self) -> Option<Vec<PathBuf>> {
        self.cached_files_in(&hub_cache::cache_dir())
    }

    /// The Parquet files of this split in hub cache `hub`: from the newest snapshot that has any.
    pub fn cached_files_in(&self, hub: &Path) -> Option<Vec<PathBuf>> {
        let snapshots = std::fs::read_dir(self.repo_dir(hub).join("snapshots")).ok()?;
        let mut snapshots: Vec<PathBuf> =
            snapshots.filter_map(|d| d.ok()).map(|d| d.path()).collect();
        snapshots.sort_by_key(|d| std::cmp::Reverse(d.metadata().and_then(|m| m.modified()).ok()));
        snapshots.iter().find_map(|snapshot| {
            let mut files: Vec<PathBuf> = walk(snapshot)
                .into_iter()
                .filter(|f| {
                    f.strip_prefix(snapshot)
                        .ok()
                        .and_then(Path::to_str)
                        .is_some_and(|rel| self.holds(&rel.replace('\\', "/")))
                })
                .collect();
            files.sort();
            (!files.is_empty()).then_some(files)
        })
    }

    /// Whether the file at `rel` (a path inside a snapshot, `/`-separated) is a Parquet file of this split.
    pub fn holds(&self, rel: &str) -> bool {
        let Some(stem) = rel.strip_suffix(".parquet") else {
            return false;
        };
        let (folder, file) = stem.rsplit_once('/').unwrap_or(("", stem));
        let split_file = file == self.split || file.starts_with(&format!("{}-", self.split));
        folder == format!("{}/{}", self.config, self.split)
            || (folder == self.config && split_file)
            || (self.config == DEFAULT_CONFIG && folder == "data" && split_file)
    }

    /// `folder` of this dataset in hub cache `hub`: `datasets--org--name`.
    fn repo_dir(&self, hub: &Path) -> PathBuf {
        hub.join(format!("datasets--{}", self.id.replace('/', "--")))
    }

    /// The Parquet files of this split: from the local cache, else downloaded into it; where the hub cannot be
    /// reached (or `HF_HUB_OFFLINE` is set), an error that says what to download and where to put it.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        self.check()?;
        if let Some(files) = self.cached_files() {
            return Ok(files);
        }
        if hub_cache::offline() {
            return Err(self.not_cached("HF_HUB_OFFLINE is set"));
        }
        self.download()
    }

    /// Downloads this split's Parquet files into the local hub cache and returns them, giving up within the
    /// probe timeout (`PEFT_HUB_TIMEOUT_SECS`, default 20 s) where the hub does not answer.
    pub fn download(&self) -> Result<Vec<PathBuf>> {
        self.download_into(
            hub_cache::cache_dir(),
            hub_cache::endpoint(),
            hub_cache::probe_timeout(),
        )
    }

    /// [`HubDataset::download`] into hub cache `hub` from `endpoint` (default: the public hub).
    pub fn download_into(
        &self,
        hub: PathBuf,
        endpoint: Option<String>,
        timeout: std::time::Duration,
    ) -> Result<Vec<PathBuf>> {
        self.check()?;
        let wanted = self.clone();
        let cache = hub.clone();
        let fetched = fetch_with_probe(timeout, move |answered| {
            wanted.fetch_files(cache, endpoint, answered)
        });
        fetched.map_err(|e| match e {
            FetchError::Unreachable(why) => {
                self.not_cached_in(&hub, &format!("the hub cannot be reached: {why}"))
            }
            FetchError::Failed(why) => {
                PeftError::Data(format!("downloading hub dataset {self}: {why}"))
            }
        })
    }

    /// Lists the revision's files, says the hub answered, then fetches this split's.
    fn fetch_files(
        &self,
        hub: PathBuf,
        endpoint: Option<String>,
        answered: &dyn Fn(),
    ) -> std::result::Result<Vec<PathBuf>, String> {
        let mut builder = ApiBuilder::from_cache(Cache::new(hub)).with_progress(false);
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let api = builder.build().map_err(|e| e.to_string())?;
        let revision = self.revision.as_deref().unwrap_or(PARQUET_REVISION);
        let repo = api.repo(Repo::with_revision(
            self.id.clone(),
            RepoType::Dataset,
            revision.to_string(),
        ));
        let info = repo.info().map_err(|e| e.to_string())?;
        answered();
        let mut names: Vec<&str> = info
            .siblings
            .iter()
            .map(|s| s.rfilename.as_str())
            .filter(|name| self.holds(name))
            .collect();
        names.sort_unstable();
        if names.is_empty() {
            let configs: std::collections::BTreeSet<&str> = info
                .siblings
                .iter()
                .filter(|s| s.rfilename.ends_with(".parquet"))
                .filter_map(|s| s.rfilename.split('/').next())
                .collect();
            return Err(format!(
                "revision {revision} has no Parquet files for config `{}`, split `{}`; its folders: {}",
                self.config,
                self.split,
                configs.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        names
            .into_iter()
            .map(|name| repo.get(name).map_err(|e| format!("{name}: {e}")))
            .collect()
    }

    fn not_cached(&self, why: &str) -> PeftError {
        self.not_cached_in(&hub_cache::cache_dir(), why)
    }

    /// The refusal: what is missing, why it was not downloaded, and the commands that fetch it.
    fn not_cached_in(&self, hub: &Path, why: &str) -> PeftError {
        PeftError::Data(format!(
            "hub dataset {self} is not in the local Hugging Face cache ({}), and {why}. On a machine with \
             network, run `peft fetch {id} --config {config}` (or `huggingface-cli download {id} --repo-type dataset \
             --revision {PARQUET_REVISION} --include '{config}/*'`), then copy {} to the same place here (or set \
             HF_HOME / HF_HUB_CACHE to where it is); or give a local file with `path`",
            hub.display(),
            self.repo_dir(hub).display(),
            id = self.id,
            config = self.config,
        ))
    }
}

/// Every file under `dir` (following the cache's symlinks to blobs).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn both_hub_layouts_are_found_and_others_are_not() {
        let glue = HubDataset::new("nyu-mll/glue", "sst2", "train");
        assert!(glue.holds("sst2/train/0000.parquet"));
        assert!(glue.holds("sst2/train-00000-of-00001.parquet"));
        assert!(!glue.holds("sst2/validation-00000-of-00001.parquet"));
        assert!(!glue.holds("sst2/train_extra-00000.parquet"));
        assert!(!glue.holds("rte/train/0000.parquet"));
        assert!(!glue.holds("sst2/train/0000.arrow"));
        assert!(!glue.holds("data/train-00000-of-00001.parquet"));
        let plain = HubDataset::new("org/corpus", "default", "validation");
        assert!(plain.holds("data/validation-00000-of-00002.parquet"));
        assert!(plain.holds("default/validation/0001.parquet"));
    }

    #[test]
    fn the_newest_snapshot_with_the_split_wins_and_files_keep_their_order() {
        let hub = tempfile::tempdir().unwrap();
        let repo = hub.path().join("datasets--org--data");
        let put = |rel: &str| {
            let path = repo.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"").unwrap();
            path
        };
        put("snapshots/old/cfg/train/0000.parquet");
        std::thread::sleep(Duration::from_millis(20));
        let b = put("snapshots/new/cfg/train-00001-of-00002.parquet");
        let a = put("snapshots/new/cfg/train-00000-of-00002.parquet");
        let train = HubDataset::new("org/data", "cfg", "train");
        assert_eq!(train.cached_files_in(hub.path()).unwrap(), [a, b]);
        assert!(HubDataset::new("org/data", "cfg", "test")
            .cached_files_in(hub.path())
            .is_none());
    }

    #[test]
    fn ids_configs_and_splits_are_checked() {
        for (id, config, split) in [
            ("glue", "sst2", "train"),
            ("a/b/c", "sst2", "train"),
            ("org/name", "", "train"),
            ("org/name", "sst2", "../x"),
        ] {
            let err = HubDataset::new(id, config, split).check().unwrap_err();
            assert!(
                matches!(err, PeftError::Config(_)),
                "{id} {config} {split}: {err}"
            );
        }
        assert!(HubDataset::new("nyu-mll/glue", "sst2", "train")
            .check()
            .is_ok());
    }

    #[test]
    fn an_unreachable_hub_is_refused_at_once_with_what_to_fetch() {
        let hub = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let err = HubDataset::new("nyu-mll/glue", "sst2", "train")
            .download_into(
                hub.path().into(),
                Some(crate::data::testing::refusing_endpoint()),
                Duration::from_secs(20),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "nyu-mll/glue (config sst2, split train) is not in the local Hugging Face cache"
            ) && err.contains("the hub cannot be reached")
                && err.contains("peft fetch nyu-mll/glue --config sst2")
                && err.contains("datasets--nyu-mll--glue"),
            "{err}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
    }
}
