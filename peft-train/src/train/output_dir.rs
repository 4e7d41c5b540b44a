//! The output folder at the start of a run (rank 0): locked for the run's duration, so that a second run on
//! it is refused naming the first; put back in order after a run that was killed while replacing a folder;
//! and cleared of the temporaries a killed run leaves.
//!
//! Folders (`checkpoint/`, `best/`, `adapter/`) are replaced in two renames (`dir` to `.dir.old-PID`, then
//! the complete `.dir.staging-PID` to `dir`). A kill between the two leaves no `dir`: it is recovered from
//! the staging folder when that is complete (it was finished before the first rename, and it is the newer),
//! else from the backup. Complete means holding the file written last (`trainer_state.json` for a
//! checkpoint, `adapter_model.safetensors` for an adapter). Then every leftover (`.checkpoint.staging-*`,
//! `.checkpoint.old-*`, the same for `best` and `adapter`, and `.*.tmp-PID` files) is removed; a run holds
//! the lock, so none of them belongs to a live process.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::create_dir(dir.path().join(".checkpoint.staging-4242")).unwrap();
//! std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
//! let tidy = peft_train::train::output_dir::tidy(dir.path()).unwrap();
//! assert_eq!(tidy.removed, [".checkpoint.staging-4242"]);
//! assert!(dir.path().join("notes.txt").is_file());
//! ```

use std::path::Path;

use super::checkpoint::STATE_FILE;
use super::trainer::Trainer;
use peft_core::adapter_io::{CONFIG_FILE, WEIGHTS_FILE};
use peft_core::error::{PeftError, Result};
use peft_core::lock::DirLock;

/// The folders a run replaces by renames, each with the file that, present, makes a copy of it complete.
const REPLACED: [(&str, &[&str]); 3] = [
    ("checkpoint", &[STATE_FILE]),
    ("best", &[CONFIG_FILE, WEIGHTS_FILE]),
    ("adapter", &[CONFIG_FILE, WEIGHTS_FILE]),
];

/// What [`tidy`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Tidied {
    /// Folders put back, as (folder, the leftover it came from).
    pub recovered: Vec<(String, String)>,
    /// Leftovers removed, by name.
    pub removed: Vec<String>,
}

impl Trainer<'_> {
    /// Rank 0's hold on `output_dir` for the run: its lock (none when the caller gave the trainer one for
    /// this folder, and none on other ranks), then the folder tidied, saying on stderr what was recovered.
    pub(super) fn take_output_dir(&self) -> Result<Option<DirLock>> {
        if !self.comm.is_root() {
            return Ok(None);
        }
        let dir = &self.config.output_dir;
        let held = self.lock.as_ref().is_some_and(|l| l.covers(dir));
        let lock = if held {
            None
        } else {
            Some(DirLock::acquire(dir, "output_dir")?)
        };
        let tidied = tidy(dir)?;
        for (target, from) in &tidied.recovered {
            eprintln!(
                "note: recovered {} from {from}, left by a run stopped while replacing it",
                dir.join(target).display()
            );
        }
        Ok(lock)
    }
}

/// Recovers the folders an interrupted replacement left missing and removes every leftover in `dir` (a
/// missing `dir` has none). Call it only while holding `dir`'s lock.
pub fn tidy(dir: &Path) -> Result<Tidied> {
    let mut done = Tidied::default();
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(PeftError::io("reading folder", dir, e)),
    };
    names.sort();
    for (target, marks) in REPLACED {
        if dir.join(target).exists() {
            continue;
        }
        // The staging copy first: it is complete only if finished, and then it is the newer one.
        let candidate = ["staging", "old"].iter().find_map(|kind| {
            names.iter().find(|n| {
                copy_of(n, target, kind) && marks.iter().all(|m| dir.join(n).join(m).is_file())
            })
        });
        if let Some(name) = candidate {
            std::fs::rename(dir.join(name), dir.join(target))
                .map_err(|e| PeftError::io("recovering", dir.join(target), e))?;
            done.recovered.push((target.to_string(), name.clone()));
        }
    }
    for name in names.iter().filter(|n| is_leftover(n)) {
        let path = dir.join(name);
        if !path.exists() {
            continue; // recovered above
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| PeftError::io("removing leftover", &path, e))?;
        done.removed.push(name.clone());
    }
    Ok(done)
}

/// Whether `name` is `.<target>.<kind>-<pid>`, a copy of `target` that a replacement made.
fn copy_of(name: &str, target: &str, kind: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_prefix(target))
        .and_then(|n| n.strip_prefix('.'))
        .and_then(|n| n.strip_prefix(kind))
        .and_then(|n| n.strip_prefix('-'))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `name` is a temporary a run leaves when killed: a staging or backup copy of a replaced folder
/// (also the doubled names of older versions, `.checkpoint.staging-N.staging-N`), or an atomic write's
/// `.<file>.tmp-<pid>`.
fn is_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let rest = rest.trim_start_matches('.');
    let copy = REPLACED.iter().any(|(target, _)| {
        ["staging-", "old-"]
            .iter()
            .any(|kind| rest.starts_with(&format!("{target}.{kind}")))
    });
    let temporary = rest
        .rsplit_once(".tmp-")
        .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
    copy || temporary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(path: &Path, files: &[&str]) {
        std::fs::create_dir_all(path).unwrap();
        for f in files {
            std::fs::write(path.join(f), f).unwrap();
        }
    }

    #[test]
    fn leftovers_are_named_by_pattern_only() {
        for name in [
            ".checkpoint.staging-12",
            ".checkpoint.old-12",
            "..checkpoint.staging-12.staging-12",
            ".best.staging-3",
            ".adapter.old-7",
            ".metrics.jsonl.tmp-99",
            ".trainer_state.json.tmp-1",
        ] {
            assert!(is_leftover(name), "{name}");
        }
        for name in [
            "checkpoint",
            ".peft.lock",
            ".checkpointx.staging-1",
            ".notes.tmp-",
            ".notes.tmp-abc",
            "notes.tmp-1",
            ".git",
        ] {
            assert!(!is_leftover(name), "{name}");
        }
    }

    #[test]
    fn a_kill_between_the_renames_is_recovered_from_the_complete_staging_copy() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        folder(&d.join(".checkpoint.old-5"), &[STATE_FILE, "old"]);
        folder(&d.join(".checkpoint.staging-5"), &[STATE_FILE, "new"]);
        folder(&d.join(".best.old-5"), &[CONFIG_FILE, WEIGHTS_FILE]);
        folder(&d.join(".best.staging-5"), &[CONFIG_FILE]); // torn: its weights never came
        folder(&d.join("adapter"), &[CONFIG_FILE, WEIGHTS_FILE]);
        folder(&d.join(".adapter.staging-8"), &[CONFIG_FILE, WEIGHTS_FILE]);
        let tidied = tidy(d).unwrap();
        assert_eq!(
            tidied.recovered,
            [
                (
                    "checkpoint".to_string(),
                    ".checkpoint.staging-5".to_string()
                ),
                ("best".to_string(), ".best.old-5".to_string())
            ]
        );
        assert!(d.join("checkpoint/new").is_file());
        assert!(d.join("best").join(WEIGHTS_FILE).is_file());
        let left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(
            tidied.removed,
            [".adapter.staging-8", ".best.staging-5", ".checkpoint.old-5"]
        );
    }

    #[test]
    fn an_incomplete_lone_staging_copy_is_removed_not_recovered() {
        let dir = tempfile::tempdir().unwrap();
        folder(&dir.path().join(".checkpoint.staging-5"), &[WEIGHTS_FILE]);
        let tidied = tidy(dir.path()).unwrap();
        assert!(tidied.recovered.is_empty());
        assert!(!dir.path().join("checkpoint").exists());
        assert_eq!(tidied.removed, [".checkpoint.staging-5"]);
        assert_eq!(
            tidy(&dir.path().join("missing")).unwrap(),
            Tidied::default()
        );
    }
}
