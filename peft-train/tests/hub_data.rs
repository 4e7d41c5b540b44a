//! A dataset named by hub id is read from a temporary Hugging Face cache laid out as the hub lays it out,
//! through the same path `peft train` takes (`DataSource::read`); a split that is not cached is refused at
//! once, naming what to fetch, since the hub here is a closed port. One test function: the cache and the
//! endpoint are process-wide environment variables.

use std::time::{Duration, Instant};

use peft_train::data::testing::{labels, refusing_endpoint, write_parquet, Column};
use peft_train::data::DataSource;

#[test]
fn hub_datasets_come_from_the_cache_and_the_local_copy_wins_where_it_exists() {
    let hub = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HUB_CACHE", hub.path());
    std::env::set_var("HF_ENDPOINT", refusing_endpoint());
    std::env::remove_var("HF_HUB_OFFLINE");

    // The hub's Parquet conversion of GLUE RTE's train split (revision refs/convert/parquet).
    let repo = hub.path().join("datasets--nyu-mll--glue");
    let split = repo.join("snapshots/4a5b6c/rte/train");
    std::fs::create_dir_all(&split).unwrap();
    std::fs::create_dir_all(repo.join("refs/refs/convert")).unwrap();
    std::fs::write(repo.join("refs/refs/convert/parquet"), "4a5b6c").unwrap();
    write_parquet(
        &split.join("0000.parquet"),
        &[
            (
                "sentence1",
                Column::Text(vec!["It rained.".into(), "Cats purr.".into()]),
            ),
            (
                "sentence2",
                Column::Text(vec!["It was wet.".into(), "Dogs fly.".into()]),
            ),
            ("label", Column::Int(vec![0, 1])),
            ("idx", Column::Int(vec![0, 1])),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let local_path = dir.path().join("train.tsv");
    let source = DataSource::from_hub("nyu-mll/glue", "rte", "train", "sentence1")
        .with_text_pair("sentence2")
        .with_label("label")
        .with_label_map([("0", "entailment"), ("1", "not_entailment")])
        .with_local(DataSource::new(&local_path, "sentence1").with_label("label"));

    let rows = source.read().unwrap();
    assert_eq!(labels(&rows), ["entailment", "not_entailment"]);
    assert_eq!(rows[1].text_pair.as_deref(), Some("Dogs fly."));

    // Where the local copy exists it is read instead, with its own layout and no label map.
    std::fs::write(&local_path, "sentence1\tlabel\nA local row.\tentailment\n").unwrap();
    let rows = source.read().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].text, "A local row.");
    std::fs::remove_file(&local_path).unwrap();

    // A label the map does not name is an error, not a silent pass-through.
    let strict = source.clone().with_label_map([("0", "entailment")]);
    let err = strict.read().unwrap_err().to_string();
    assert!(err.contains("label `1` is not in label_map"), "{err}");

    // A split that is not cached: the hub is asked, refuses at once, and the message says what to do.
    let start = Instant::now();
    let validation = DataSource::from_hub("nyu-mll/glue", "rte", "validation", "sentence1")
        .with_local(DataSource::new(&local_path, "sentence1"));
    let err = validation.read().unwrap_err().to_string();
    assert!(
        err.contains(
            "nyu-mll/glue (config rte, split validation) is not in the local Hugging Face cache"
        ) && err.contains("peft fetch nyu-mll/glue --config rte")
            && err.contains("is absent too")
            && !err.contains("data: data:"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );

    // HF_HUB_OFFLINE: no network attempt at all.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let err = validation.read().unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE is set"), "{err}");
    std::env::remove_var("HF_HUB_OFFLINE");
}
