//! One process per output folder: an exclusive advisory lock on `<dir>/.peft.lock`, which holds the holder's
//! process id and command line so that a second process can say who is using the folder. The kernel drops
//! the lock when its holder exits, however it exits (a `kill -9` included), so a dead run never blocks the
//! next one; a clean release also removes the file.
//!
//! ```
//! use peft_core::lock::DirLock;
//! let dir = tempfile::tempdir().unwrap();
//! let lock = DirLock::acquire(dir.path(), "output_dir").unwrap();
//! // A second holder, even in this process, is refused with the first one's pid.
//! let err = DirLock::acquire(dir.path(), "output_dir").unwrap_err().to_string();
//! assert!(err.contains(&std::process::id().to_string()), "{err}");
//! drop(lock);
//! assert!(DirLock::acquire(dir.path(), "output_dir").is_ok());
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{PeftError, Result};

/// Name of the lock file inside a locked folder.
pub const LOCK_FILE: &str = ".peft.lock";

/// An exclusive lock on a folder, held until dropped (or until the process ends).
#[derive(Debug)]
pub struct DirLock {
    /// The open lock file: its open file description holds the lock.
    file: File,
    /// `<dir>/.peft.lock`.
    path: PathBuf,
    /// The locked folder as given.
    dir: PathBuf,
}

impl DirLock {
    /// Locks `dir` (created if missing) for this process. `what` names the folder as the user set it
    /// (`output_dir`, `the results folder`) and appears in the refusal when another process holds the lock:
    /// that process's id and command line, and what to do.
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| PeftError::io("creating folder", dir, e))?;
        let path = dir.join(LOCK_FILE);
        // A releasing holder removes the file while still holding its lock: a lock won on a file that is no
        // longer at `path` protects nothing, so try again on the new one.
        for _ in 0..100 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| PeftError::io("opening", &path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(held_elsewhere(dir, &path, what, &mut file))
                }
                Err(TryLockError::Error(e)) => return Err(PeftError::io("locking", &path, e)),
            }
            if !still_at(&file, &path) {
                continue;
            }
            write_holder(&mut file, what).map_err(|e| PeftError::io("writing", &path, e))?;
            return Ok(DirLock {
                file,
                path,
                dir: dir.to_path_buf(),
            });
        }
        Err(PeftError::Unsupported(format!(
            "{}: could not lock {}: the lock file kept being replaced",
            what,
            path.display()
        )))
    }

    /// The locked folder, as given to [`DirLock::acquire`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this lock covers `dir` (the same folder, however spelt).
    pub fn covers(&self, dir: &Path) -> bool {
        match (self.dir.canonicalize(), dir.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.dir == dir,
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Removed while still locked (closing the file releases the lock afterwards): a process that opened
        // the old file meanwhile sees it gone from `path` once it wins the lock, and tries again.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Whether the file `file` has open is still the one at `path`.
#[cfg(unix)]
fn still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether the file `file` has open is still the one at `path` (assumed where inodes are not exposed).
#[cfg(not(unix))]
fn still_at(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// Replaces the lock file's text with this process's id, command line and `what`.
fn write_holder(file: &mut File, what: &str) -> std::io::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "pid {}", std::process::id())?;
    writeln!(file, "command {command}")?;
    writeln!(file, "folder {what}")?;
    file.flush()
}

/// The refusal when another process holds the lock on `dir`, naming that process from the lock file.
fn held_elsewhere(dir: &Path, path: &Path, what: &str, file: &mut File) -> PeftError {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .map(str::to_string)
    };
    let holder = match (field("pid"), field("command")) {
        (Some(pid), Some(command)) => format!("process {pid} (`{command}`)"),
        (Some(pid), None) => format!("process {pid}"),
        _ => "another process (it has not written its id yet)".to_string(),
    };
    PeftError::Unsupported(format!(
        "{what} {} is in use by {holder}, which holds {}: wait for that process to finish, or pick another \
         {what}",
        dir.display(),
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_told_who_holds_the_folder_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "output_dir").unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(text.starts_with(&format!("pid {}\ncommand ", std::process::id())));
        let err = DirLock::acquire(dir.path(), "output_dir")
            .unwrap_err()
            .to_string();
        let holder = format!("process {}", std::process::id());
        let folder = dir.path().display().to_string();
        for needle in [
            holder.as_str(),
            "wait for that process to finish",
            "pick another output_dir",
            folder.as_str(),
        ] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
        assert!(first.covers(dir.path()));
        drop(first);
        assert!(
            !dir.path().join(LOCK_FILE).exists(),
            "a released lock leaves no file"
        );
    }

    #[test]
    fn a_stale_lock_file_without_a_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "pid 1\ncommand dead\n").unwrap();
        let lock = DirLock::acquire(dir.path(), "output_dir").unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(text.starts_with(&format!("pid {}\n", std::process::id())));
        assert!(!text.contains("dead"));
        drop(lock);
    }

    #[test]
    fn a_missing_folder_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let lock = DirLock::acquire(&nested, "output_dir").unwrap();
        assert_eq!(lock.dir(), nested);
        assert!(nested.join(LOCK_FILE).is_file());
    }
}
