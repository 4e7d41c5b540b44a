//! The data pipeline on the real datasets in `../shared/data` (see its SOURCES.md). Each test skips, saying
//! why, where that folder is absent, as it is on a user's machine.

use std::collections::BTreeSet;
use std::path::PathBuf;

use peft_train::data::testing::byte_bpe_of;
use peft_train::data::{
    chunk_text, epoch_order, read_text, ClassBatch, ClassEncoder, DataSource, Format, RawExample,
    Template, Verbalizer,
};

fn data_dir() -> Option<PathBuf> {
    peft_testing::shared_data("")
}

fn label_set(rows: &[RawExample]) -> BTreeSet<&str> {
    rows.iter()
        .map(|r| r.label.as_deref().expect("labelled"))
        .collect()
}

#[test]
fn sst2_dev_reads_encodes_and_batches() {
    let Some(dir) = data_dir() else { return };
    let rows = DataSource::new(dir.join("glue/SST-2/dev.tsv"), "sentence")
        .with_label("label")
        .read()
        .unwrap();
    assert_eq!(rows.len(), 872);
    assert_eq!(label_set(&rows), BTreeSet::from(["0", "1"]));
    assert!(rows
        .iter()
        .all(|r| r.text == r.text.trim() && !r.text.is_empty()));

    let tokenizer = byte_bpe_of(&[" negative", " positive"]);
    let template = Template::new("{text} Sentiment:").unwrap();
    let verbalizer = Verbalizer::new([("0", " negative"), ("1", " positive")]).unwrap();
    let max_len = 48;
    let encoder = ClassEncoder::new(&tokenizer, template, verbalizer, max_len, false).unwrap();
    let examples = encoder.encode_all(&rows).unwrap();
    let tail = tokenizer
        .encode(" Sentiment:", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let mut truncated = 0;
    for (raw, ex) in rows.iter().zip(&examples) {
        assert!(ex.input_ids.len() <= max_len);
        assert!(
            ex.input_ids.ends_with(&tail),
            "the answer position lost its template tail"
        );
        truncated += usize::from(raw.text.len() + tail.len() > max_len);
    }
    assert!(
        truncated > 100,
        "max_len {max_len} should cut many of the byte-level prompts"
    );

    let order = epoch_order(examples.len(), 0, 0);
    let batch = ClassBatch::collate(order[..8].iter().map(|&i| &examples[i]), 0).unwrap();
    for (row, &i) in order[..8].iter().enumerate() {
        assert_eq!(batch.answer_positions[row], examples[i].input_ids.len() - 1);
    }
}

#[test]
fn rte_dev_has_pairs_with_string_labels() {
    let Some(dir) = data_dir() else { return };
    let rows = DataSource::new(dir.join("glue/RTE/dev.tsv"), "sentence1")
        .with_text_pair("sentence2")
        .with_label("label")
        .read()
        .unwrap();
    assert_eq!(rows.len(), 277);
    assert_eq!(
        label_set(&rows),
        BTreeSet::from(["entailment", "not_entailment"])
    );
    assert!(rows
        .iter()
        .all(|r| r.text_pair.as_deref().is_some_and(|p| !p.is_empty())));
}

#[test]
fn cb_val_jsonl_has_three_classes() {
    let Some(dir) = data_dir() else { return };
    let rows = DataSource::new(dir.join("superglue/CB/val.jsonl"), "premise")
        .with_text_pair("hypothesis")
        .with_label("label")
        .read()
        .unwrap();
    assert_eq!(rows.len(), 56);
    assert_eq!(
        label_set(&rows),
        BTreeSet::from(["contradiction", "entailment", "neutral"])
    );
}

#[test]
fn boolq_val_booleans_become_strings() {
    let Some(dir) = data_dir() else { return };
    let rows = DataSource::new(dir.join("superglue/BoolQ/val.jsonl"), "passage")
        .with_text_pair("question")
        .with_label("label")
        .read()
        .unwrap();
    assert_eq!(rows.len(), 3270);
    assert_eq!(label_set(&rows), BTreeSet::from(["false", "true"]));
}

#[test]
fn ag_news_test_csv_has_four_classes() {
    let Some(dir) = data_dir() else { return };
    // The file has a header: `Class Index,Title,Description`.
    let rows = DataSource::new(dir.join("agnews/test.csv"), "Title")
        .with_text_pair("Description")
        .with_label("Class Index")
        .read()
        .unwrap();
    assert_eq!(rows.len(), 7600);
    assert_eq!(label_set(&rows), BTreeSet::from(["1", "2", "3", "4"]));
}

#[test]
fn headerless_and_line_files_use_column_indices() {
    let Some(dir) = data_dir() else { return };
    let cola = DataSource::new(dir.join("glue/CoLA/dev.tsv"), 3)
        .with_label(1)
        .without_header()
        .read()
        .unwrap();
    assert_eq!(cola.len(), 1043);
    assert_eq!(label_set(&cola), BTreeSet::from(["0", "1"]));

    let sst = DataSource::new(dir.join("sentences/stsa.binary.dev"), 1)
        .with_label(0)
        .with_format(Format::Lines)
        .read()
        .unwrap();
    assert_eq!(sst.len(), 872);
    assert_eq!(label_set(&sst), BTreeSet::from(["0", "1"]));

    // MRPC starts with a byte order mark and has unbalanced quotes inside its TSV fields.
    let mrpc = DataSource::new(dir.join("glue/MRPC/dev.tsv"), "#1 String")
        .with_text_pair("#2 String")
        .with_label("Quality")
        .read()
        .unwrap();
    assert_eq!(mrpc.len(), 408);
    assert_eq!(label_set(&mrpc), BTreeSet::from(["0", "1"]));
}

#[test]
fn tinyshakespeare_chunks_into_blocks() {
    let Some(dir) = data_dir() else { return };
    let text = read_text(dir.join("tinyshakespeare/input.txt")).unwrap();
    let tokenizer = byte_bpe_of(&[]);
    let blocks = chunk_text(&tokenizer, &text, 512, false).unwrap();
    // Without merges every byte is a token.
    assert_eq!(blocks.len(), text.len() / 512);
    assert!(blocks
        .iter()
        .all(|b| b.input_ids.len() == 512 && b.labels.len() == 512));
}
