//! Templates over any field of the data (`fields = { ... }` in a data source), labels outside the
//! verbalizer, and `skip` / `limit` splits, on tiny in-memory data and a word-level tokenizer.

use peft_train::data::{ClassEncoder, DataSource, Template, Verbalizer};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::Tokenizer;

const WORDS: &[&str] = &[
    "[UNK]", "The", "sun", "rose", "grass", "was", "cut", "It", "got", "light", "cause", "effect",
    "1", "2", "Answer", ":", "?", "one", "two", "good", "bad",
];

fn tokenizer() -> Tokenizer {
    let vocab = WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer
}

fn id(word: &str) -> u32 {
    WORDS.iter().position(|w| *w == word).unwrap() as u32
}

/// A COPA-like source written as an experiment file's `[data.*]` table.
fn copa_source(path: &str) -> DataSource {
    toml::from_str(&format!(
        "path = \"{path}\"\ntext = \"premise\"\nlabel = \"label\"\n\
         fields = {{ choice1 = \"choice1\", choice2 = \"choice2\", question = \"question\" }}\n"
    ))
    .unwrap()
}

const COPA: &str = r#"{"premise": "The sun rose", "choice1": "It got light", "choice2": "The grass was cut", "question": "effect", "label": 0}
{"premise": "The grass was cut", "choice1": "The sun rose", "choice2": "It got light", "question": "cause", "label": 1}
"#;

#[test]
fn a_template_places_any_declared_field() {
    let source = copa_source("copa.jsonl");
    assert_eq!(
        source.placeholders(),
        ["text", "choice1", "choice2", "question"]
    );
    let rows = source.parse_str(COPA).unwrap();
    assert_eq!(rows[1].extra["question"], "cause");
    assert_eq!(rows[1].line, 2);

    let template =
        Template::new("{text} {question} ? 1 : {choice1} 2 : {choice2} Answer :").unwrap();
    source.check_template(&template).unwrap();
    assert_eq!(
        template.render_example(&rows[0]).unwrap(),
        "The sun rose effect ? 1 : It got light 2 : The grass was cut Answer :"
    );

    let tok = tokenizer();
    let verbalizer = Verbalizer::new([("0", " one"), ("1", " two")]).unwrap();
    let encoder = ClassEncoder::new(&tok, template, verbalizer, 64, false).unwrap();
    assert_eq!(encoder.label_token_ids(), [id("one"), id("two")]);
    let examples = encoder.encode_all(&rows).unwrap();
    assert_eq!(examples[1].label, 1);
    let expected: Vec<u32> = "The grass was cut cause ? 1 : The sun rose 2 : It got light Answer :"
        .split(' ')
        .map(id)
        .collect();
    assert_eq!(examples[1].input_ids, expected);
}

#[test]
fn a_placeholder_the_data_lacks_fails_before_the_file_is_read() {
    let tok = tokenizer();
    let template = Template::new("{text} {choice3} Answer :").unwrap();
    let verbalizer = Verbalizer::new([("0", " one"), ("1", " two")]).unwrap();
    let encoder = ClassEncoder::new(&tok, template, verbalizer, 64, false).unwrap();
    // The file does not exist: the placeholder check comes first.
    let err = encoder
        .encode_source(&copa_source("/nonexistent/copa.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("copa.jsonl")
            && err.contains("{choice3}")
            && err.contains("known placeholders: {text}, {choice1}, {choice2}, {question}"),
        "{err}"
    );
    // Rows read without the check fail at the first example, naming it and its line.
    let rows = copa_source("copa.jsonl").parse_str(COPA).unwrap();
    let err = encoder.encode_all(&rows).unwrap_err().to_string();
    assert!(
        err.contains("example 0 (line 1)") && err.contains("{choice3}"),
        "{err}"
    );
}

#[test]
fn a_label_outside_the_verbalizer_names_the_file_the_line_and_the_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.tsv");
    std::fs::write(
        &path,
        "sentence\tlabel\nThe sun rose\t1\n\nIt got light\t2\n",
    )
    .unwrap();
    let source = DataSource::new(&path, "sentence").with_label("label");
    let tok = tokenizer();
    let encoder = ClassEncoder::new(
        &tok,
        Template::new("{text} Answer :").unwrap(),
        Verbalizer::new([("0", " bad"), ("1", " good")]).unwrap(),
        64,
        false,
    )
    .unwrap();
    let err = encoder.encode_source(&source).unwrap_err().to_string();
    assert!(
        err.contains("train.tsv")
            && err.contains("line 4")
            && err.contains("label \"2\"")
            && err.contains("known labels: \"0\", \"1\""),
        "{err}"
    );
    assert_eq!(
        encoder.encode_source(&source.with_limit(1)).unwrap().len(),
        1
    );
}

#[test]
fn skip_and_limit_split_one_file_into_train_and_held_out_parts() {
    let content = "one\ntwo\n\ngood\nbad\n";
    let read = |table: &str| -> Vec<String> {
        let source: DataSource =
            toml::from_str(&format!("path = \"corpus.txt\"\ntext = \"line\"\n{table}")).unwrap();
        source
            .parse_str(content)
            .unwrap()
            .into_iter()
            .map(|r| r.text)
            .collect()
    };
    assert_eq!(read("limit = 3"), ["one", "two", "good"]);
    assert_eq!(read("skip = 3"), ["bad"]);
}
