//! Token classification and seq2seq keep each dev example's outcome, and those outcomes give the task's
//! metrics: the same loss as the batched training loss over the same examples, the same outcome whatever
//! the evaluation batch size (so example `i`'s outcome is example `i`'s), and accuracy / exact match as
//! counted directly from the model's outputs.

use peft_core::head::WithClassifier;
use peft_core::method::{Adapter, InitCtx, PeftMethod};
use peft_core::model::BaseModel;
use peft_train::task::{
    Outcomes, Seq2Seq, Seq2SeqExample, Task, TokenClassification, TokenExample, Tuned,
};
use rand::{Rng, SeedableRng};
use serde_json::json;

fn lora(model: &dyn BaseModel) -> Box<dyn Adapter> {
    peft_cli::link_methods();
    let method: Box<dyn PeftMethod> = serde_json::from_value(
        json!({"peft_type": "LORA", "r": 4, "target_modules": "all-linear"}),
    )
    .unwrap();
    method
        .build(&mut InitCtx {
            model,
            tokenizer: None,
            rng: rand::rngs::StdRng::seed_from_u64(5),
        })
        .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs()))
}

/// Seven sentences of 3-8 random ids, labels in 0..3 with some -100; sentence 4 has no label at all.
fn token_examples() -> Vec<TokenExample> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    (0..7)
        .map(|i| {
            let len = rng.random_range(3..9);
            let input_ids: Vec<u32> = (0..len).map(|_| rng.random_range(2..100)).collect();
            let labels = (0..len)
                .map(|_| {
                    if i == 4 || rng.random_range(0..4) == 0 {
                        -100
                    } else {
                        rng.random_range(0..3)
                    }
                })
                .collect();
            TokenExample { input_ids, labels }
        })
        .collect()
}

#[test]
fn token_classification_outcomes_match_the_batched_loss_and_the_logits() {
    let model = peft_models::bert::tiny(3);
    let mut init = InitCtx {
        model: &model,
        tokenizer: None,
        rng: rand::rngs::StdRng::seed_from_u64(7),
    };
    let adapter = WithClassifier::new(lora(&model), 3, &mut init)
        .unwrap()
        .for_tokens();
    let tuned = Tuned::of(&adapter);
    let rows = token_examples();
    let task = TokenClassification::new(rows.clone(), rows.clone(), 3, 0).unwrap();

    let by_three = task.evaluate_outcomes(&model, &tuned, 3).unwrap();
    let whole = task.evaluate_outcomes(&model, &tuned, 7).unwrap();
    let Some(Outcomes::TokenClasses {
        labels,
        predictions,
        loss_sums,
        ..
    }) = &by_three.outcomes
    else {
        panic!("token classification kept no token outcomes: {by_three:?}");
    };
    let Some(Outcomes::TokenClasses {
        labels: labels_whole,
        predictions: predictions_whole,
        loss_sums: loss_sums_whole,
        ..
    }) = &whole.outcomes
    else {
        panic!("token classification kept no token outcomes: {whole:?}");
    };
    assert_eq!(labels.len(), 7);
    assert!(labels[4].is_empty(), "sentence 4 has no labelled token");
    for (i, row) in rows.iter().enumerate() {
        let expected: Vec<u32> = row
            .labels
            .iter()
            .filter(|&&l| l >= 0)
            .map(|&l| l as u32)
            .collect();
        assert_eq!(labels[i], expected, "sentence {i}'s labels");
    }
    assert_eq!(labels, labels_whole);
    assert_eq!(predictions, predictions_whole);
    for (a, b) in loss_sums.iter().zip(loss_sums_whole) {
        assert!(close(*a, *b), "batch 3 {a} vs batch 7 {b}");
    }

    // The loss the trainer optimises over every sentence is the outcomes' loss per labelled token.
    let all: Vec<usize> = (0..rows.len()).collect();
    let batched = task.loss(&model, &tuned, &all).unwrap();
    let batched = batched.loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        close(by_three.metrics["loss"], batched),
        "outcomes' loss {} vs the batched loss {batched}",
        by_three.metrics["loss"]
    );

    // Accuracy counted from the head's logits over every sentence at once.
    let refs: Vec<&TokenExample> = rows.iter().collect();
    let (logits, targets) = task.token_logits(&model, &tuned, &refs).unwrap();
    let argmax = logits
        .argmax(candle_core::D::Minus1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let right = argmax.iter().zip(&targets).filter(|(p, t)| p == t).count();
    assert_eq!(
        by_three.metrics["accuracy"],
        right as f64 / targets.len() as f64
    );
    assert_eq!(predictions.concat(), argmax);
}

/// Ten pairs: a source of 2-5 ids and a target of 1-4 ids then eos (1).
fn seq2seq_examples() -> Vec<Seq2SeqExample> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    (0..10)
        .map(|_| {
            let source = (0..rng.random_range(2..6))
                .map(|_| rng.random_range(3..60))
                .collect();
            let mut target: Vec<u32> = (0..rng.random_range(1..5))
                .map(|_| rng.random_range(3..60))
                .collect();
            target.push(1);
            Seq2SeqExample {
                input_ids: source,
                labels: target,
            }
        })
        .collect()
}

#[test]
fn seq2seq_outcomes_match_the_batched_loss_and_greedy_generation() {
    let model = peft_models::t5::tiny(3);
    let rows = seq2seq_examples();
    let task = Seq2Seq::new(rows.clone(), rows.clone(), 0, Some(1)).unwrap();
    let tuned = Tuned::frozen();

    let by_three = task.evaluate_outcomes(&model, &tuned, 3).unwrap();
    let whole = task.evaluate_outcomes(&model, &tuned, 10).unwrap();
    let Some(Outcomes::Generated {
        loss_sums,
        tokens,
        exact,
    }) = &by_three.outcomes
    else {
        panic!("seq2seq kept no generation outcomes: {by_three:?}");
    };
    let Some(Outcomes::Generated {
        loss_sums: loss_sums_whole,
        exact: exact_whole,
        ..
    }) = &whole.outcomes
    else {
        panic!("seq2seq kept no generation outcomes: {whole:?}");
    };
    let lengths: Vec<usize> = rows.iter().map(|r| r.labels.len()).collect();
    assert_eq!(tokens, &lengths);
    assert_eq!(exact, exact_whole);
    for (a, b) in loss_sums.iter().zip(loss_sums_whole) {
        assert!(close(*a, *b), "batch 3 {a} vs batch 10 {b}");
    }

    let all: Vec<usize> = (0..rows.len()).collect();
    let batched = task.loss(&model, &tuned, &all).unwrap();
    let batched = batched.loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        close(by_three.metrics["loss"], batched),
        "outcomes' loss {} vs the batched loss {batched}",
        by_three.metrics["loss"]
    );
    assert!(close(by_three.metrics["perplexity"], batched.exp()));

    let greedy = task.predict(&model, tuned.hooks(), 4).unwrap();
    let matched: Vec<bool> = greedy
        .iter()
        .zip(&rows)
        .map(|(g, r)| g == &r.labels)
        .collect();
    assert_eq!(exact, &matched);
    assert_eq!(
        by_three.metrics["exact_match"],
        matched.iter().filter(|&&m| m).count() as f64 / 10.0
    );
}
