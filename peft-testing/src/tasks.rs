//! Small tasks an adapter can learn in a few steps.

use peft_train::task::{CausalLm, ClassExample, LmExample, VerbalizerClassification};
use tokenizers::Tokenizer;

/// Two SmolLM2 reviews with their sentiment, the training texts of the `ours-smollm2-*` fixtures.
pub const SMOLLM2_REVIEWS: [&str; 2] = [
    "Review: a gripping, beautifully shot film.\nSentiment: positive",
    "Review: dull and far too long, I left early.\nSentiment: negative",
];

/// A causal-LM task on `seqs` (each labelled with itself, pad id 0), evaluated on the same sequences.
pub fn lm_task(seqs: impl IntoIterator<Item = Vec<u32>>) -> CausalLm {
    let examples: Vec<LmExample> = seqs
        .into_iter()
        .map(|ids| LmExample {
            labels: ids.iter().map(|&i| i as i64).collect(),
            input_ids: ids,
        })
        .collect();
    CausalLm::new(examples.clone(), examples, 0).unwrap()
}

/// The three 6-token sequences the tiny `ours-*` fixture adapters are trained on.
pub fn toy_lm_task() -> CausalLm {
    lm_task([
        vec![5, 6, 7, 8, 9, 10],
        vec![11, 12, 13, 14, 15, 16],
        vec![20, 21, 20, 21, 20, 21],
    ])
}

/// Eight 8-token sequences that follow a rule (counting by a per-sequence stride), so that an adapter can
/// lower the loss: the task of the conformance tests.
pub fn rule_lm_task() -> CausalLm {
    lm_task((0..8u32).map(|s| {
        (0..8u32)
            .map(|t| 1 + (s * 7 + t * (1 + s % 3)) % 90)
            .collect()
    }))
}

/// A causal-LM task of 10 rule sequences of 3 to 10 tokens: micro-batches mix lengths, so that a batch split
/// over ranks pads each part differently and the parts hold different numbers of target tokens.
pub fn ragged_lm_task() -> CausalLm {
    lm_task((0..10u32).map(|s| {
        (0..3 + (s * 5) % 8)
            .map(|t| 1 + (s * 11 + t * (2 + s % 3)) % 90)
            .collect()
    }))
}

/// Which example of [`partly_unlabelled_lm_task`] has no label.
pub const UNLABELLED_EXAMPLE: usize = 2;

/// Six rule sequences of which one ([`UNLABELLED_EXAMPLE`]) has every label -100, as a prompt whose answer
/// truncation cut off: a micro-batch of 2 over 2 ranks leaves one rank nothing to learn from whenever it is
/// drawn.
pub fn partly_unlabelled_lm_task() -> CausalLm {
    let examples: Vec<LmExample> = (0..6u32)
        .map(|s| {
            let input_ids: Vec<u32> = (0..4 + s % 3)
                .map(|t| 1 + (s * 13 + t * (1 + s % 2)) % 90)
                .collect();
            let labels = if s as usize == UNLABELLED_EXAMPLE {
                vec![-100; input_ids.len()]
            } else {
                input_ids.iter().map(|&i| i64::from(i)).collect()
            };
            LmExample { input_ids, labels }
        })
        .collect();
    CausalLm::new(examples.clone(), examples, 0).unwrap()
}

/// A causal-LM task on `texts`, encoded with special tokens by `tokenizer`.
pub fn text_lm_task(tokenizer: &Tokenizer, texts: &[&str]) -> CausalLm {
    lm_task(
        texts
            .iter()
            .map(|t| tokenizer.encode(*t, true).unwrap().get_ids().to_vec()),
    )
}

/// A learnable toy with `n` training rows (and 8 eval rows): class 1 when the sentence contains token 9, else
/// class 0; label words are ids 20 and 21.
pub fn toy_classification_task(n: usize) -> VerbalizerClassification {
    let make = |i: usize| {
        let has = i % 2 == 1;
        let mut ids = vec![
            3 + (i % 5) as u32,
            4,
            if has { 9 } else { 10 + (i % 3) as u32 },
            5,
        ];
        ids.truncate(3 + i % 2);
        ClassExample {
            input_ids: ids,
            label: usize::from(has),
            token_type_ids: vec![],
        }
    };
    VerbalizerClassification::new(
        (0..n).map(make).collect(),
        (0..8).map(make).collect(),
        vec![20, 21],
        0,
    )
    .unwrap()
}
