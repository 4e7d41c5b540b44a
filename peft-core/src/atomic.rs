//! Write files so that a crash never leaves a half-written one behind: write a temporary file beside the
//! target, flush it to disk, then rename it over the target (a rename within one folder is atomic).
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("metrics.json");
//! peft_core::atomic::write_atomic(&path, b"{}").unwrap();
//! assert_eq!(std::fs::read(&path).unwrap(), b"{}");
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{PeftError, Result};

/// The temporary sibling a file is written to before it is renamed into place.
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Writes `path` atomically with a closure that fills the temporary file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| PeftError::io("creating folder", parent, e))?;
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        fill(&mut file)?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(PeftError::io("writing", path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        PeftError::io("renaming into place", path, e)
    })
}

/// Saves named tensors as a safetensors file, atomically.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, candle_core::Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let views: Vec<(String, candle_core::Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes =
        safetensors::tensor::serialize(views.iter().map(|(n, t)| (n.as_str(), t)), metadata)
            .map_err(|e| PeftError::bad_file(path, format!("serialising safetensors: {e}")))?;
    write_atomic(path, &bytes)
}
