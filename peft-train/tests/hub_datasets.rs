//! Datasets named by hub id, end to end: a split is read from a temporary Hugging Face cache laid out as the
//! hub lays it out, through the same path `peft train` takes (`DataSource::read`); a split that is not cached
//! is refused at once, naming what to fetch, where the hub is a closed port; and a split is downloaded from a
//! local server that answers as the hub does, into the cache as the hub's clients lay it out. The cache and
//! the endpoint are process-wide environment variables (which the HF client also reads), so one test runs the
//! parts in turn.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use peft_train::data::testing::{labels, refusing_endpoint, write_parquet, Column};
use peft_train::data::{DataSource, HubDataset};
/// A split in the cache is read; the local copy wins where it exists; an uncached one is refused at once.
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

/// Serves `files` (path in the repository -> bytes) of dataset `org/toy` at revision `refs/convert/parquet`
/// until the test ends; returns the endpoint.
fn fake_hub(files: Vec<(&'static str, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            // `Range: bytes=0-0` (the metadata probe) or `bytes=N-` (the download from byte N).
            let mut range = (0usize, None::<usize>);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() == 0 || header.trim().is_empty() {
                    break;
                }
                if let Some(bytes) = header.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (start, end) = bytes.trim().split_once('-').unwrap();
                    range = (start.parse().unwrap(), end.parse().ok());
                }
                if header.to_ascii_lowercase().starts_with("content-length:") {
                    let n: usize = header[15..].trim().parse().unwrap();
                    reader.read_exact(&mut vec![0; n]).unwrap();
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            let revision = "refs%2Fconvert%2Fparquet";
            let (status, headers, body) = if path
                == format!("/api/datasets/org/toy/revision/{revision}")
            {
                let siblings: Vec<String> = files
                    .iter()
                    .map(|(name, _)| format!("{{\"rfilename\": \"{name}\"}}"))
                    .collect();
                let json = format!(
                    "{{\"sha\": \"c0ffee\", \"siblings\": [{}]}}",
                    siblings.join(", ")
                );
                ("200 OK", String::new(), json.into_bytes())
            } else if let Some((name, bytes)) = files
                .iter()
                .find(|(name, _)| path == format!("/datasets/org/toy/resolve/{revision}/{name}"))
            {
                let (from, to) = (range.0, range.1.unwrap_or(bytes.len() - 1));
                let body = bytes[from..=to].to_vec();
                let headers = format!(
                        "x-repo-commit: c0ffee\r\netag: \"{name}-etag\"\r\ncontent-range: bytes {from}-{to}/{}\r\n",
                        bytes.len()
                    );
                ("206 Partial Content", headers, body)
            } else {
                ("404 Not Found", String::new(), b"not found".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    endpoint
}

/// A split is downloaded from a server that answers as the hub does, into the cache, and read from there.
fn a_split_is_downloaded_into_the_cache_and_read_from_it() {
    let scratch = tempfile::tempdir().unwrap();
    let train = scratch.path().join("train.parquet");
    write_parquet(
        &train,
        &[
            (
                "sentence",
                Column::Text(vec!["a charming journey".into(), "dull".into()]),
            ),
            ("label", Column::Int(vec![1, 0])),
        ],
    );
    let other = scratch.path().join("other.parquet");
    write_parquet(
        &other,
        &[("sentence", Column::Text(vec!["elsewhere".into()]))],
    );
    let endpoint = fake_hub(vec![
        ("default/train/0000.parquet", std::fs::read(&train).unwrap()),
        (
            "default/validation/0000.parquet",
            std::fs::read(&other).unwrap(),
        ),
    ]);
    let hub = tempfile::tempdir().unwrap();
    let split = HubDataset::new("org/toy", "default", "train");
    let files = split
        .download_into(
            hub.path().into(),
            Some(endpoint.clone()),
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(&train).unwrap()
    );
    // Laid out as the hub's clients lay it out, so the lookup (and Python's huggingface_hub) finds it.
    assert!(hub
        .path()
        .join("datasets--org--toy/snapshots/c0ffee/default/train/0000.parquet")
        .exists());
    assert_eq!(split.cached_files_in(hub.path()), Some(files.clone()));
    let rows = DataSource::new(&files[0], "sentence")
        .with_label("label")
        .read()
        .unwrap();
    assert_eq!(rows[0].text, "a charming journey");
    assert_eq!(rows[1].label.as_deref(), Some("0"));

    // A split the revision does not hold: the hub answered, so the error says what it holds instead.
    let err = HubDataset::new("org/toy", "default", "test")
        .download_into(hub.path().into(), Some(endpoint), Duration::from_secs(20))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no Parquet files for config `default`, split `test`")
            && err.contains("default"),
        "{err}"
    );
}

#[test]
fn hub_datasets_download_read_and_refuse() {
    a_split_is_downloaded_into_the_cache_and_read_from_it();
    hub_datasets_come_from_the_cache_and_the_local_copy_wins_where_it_exists();
}
