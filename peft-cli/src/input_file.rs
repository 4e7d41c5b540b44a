//! Reading the text files a user names (experiments, task files, grids): a path that is a folder, a pipe or
//! a device is refused at once, since reading a pipe would wait for a writer that never comes.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let err = peft_cli::input_file::read_text(dir.path(), "experiment").unwrap_err();
//! assert!(format!("{err:#}").contains("not a regular file"));
//! ```

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The text of the regular file at `path`; `what` names it in messages (`experiment`, `grid`).
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("reading {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{what} {} is not a regular file (a folder, a pipe or a device): name the file itself",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}
