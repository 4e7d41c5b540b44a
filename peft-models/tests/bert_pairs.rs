//! Sentence pairs reach BERT with their segment ids: a head task whose examples carry `token_type_ids` gives
//! the classifier the pooled state of the forward pass with those types, and the types change it.

use candle_core::{Device, Tensor};
use peft_core::head::ClassifierHead;
use peft_core::hooks::NoHooks;
use peft_core::model::{BaseModel, Batch};
use peft_testing::tensor_diff;
use peft_train::task::{ClassExample, HeadClassification, Tuned};

#[test]
fn token_types_of_pair_examples_reach_the_model() {
    let model = peft_models::bert::tiny(5);
    let device = Device::Cpu;
    // A fixed two-class head, no adapter.
    let head = ClassifierHead {
        weight: Tensor::randn(0f32, 1.0, (2, 32), &device).unwrap(),
        bias: Some(Tensor::zeros(2, candle_core::DType::F32, &device).unwrap()),
    };
    let tuned = Tuned::with_head(&NoHooks, &head);
    let ids = vec![2u32, 7, 9, 3, 11, 12, 3];
    let types = vec![0u32, 0, 0, 0, 1, 1, 1];
    let example = |token_type_ids: Vec<u32>| ClassExample {
        input_ids: ids.clone(),
        label: 0,
        token_type_ids,
    };
    // A shorter single text in the same batch: padded, with types 0.
    let single = ClassExample {
        input_ids: vec![2, 5, 3],
        label: 1,
        token_type_ids: vec![],
    };
    let task = HeadClassification::new(vec![single.clone()], vec![single.clone()], 2, 0).unwrap();
    let paired = task
        .class_logits(&model, &tuned, &[&example(types.clone()), &single])
        .unwrap();
    let flat = task
        .class_logits(&model, &tuned, &[&example(vec![]), &single])
        .unwrap();
    assert!(
        tensor_diff(
            &paired.narrow(0, 0, 1).unwrap(),
            &flat.narrow(0, 0, 1).unwrap()
        ) > 1e-4
    );
    assert!(
        tensor_diff(
            &paired.narrow(0, 1, 1).unwrap(),
            &flat.narrow(0, 1, 1).unwrap()
        ) < 1e-5
    );

    // The same as the forward pass given the types directly.
    let batch = Batch::single(&ids, &device)
        .unwrap()
        .with_token_type_ids(
            Tensor::new(types.as_slice(), &device)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap();
    let out = model.forward(&batch, &NoHooks).unwrap();
    let direct = head
        .forward(&model.pooled(&out, &batch, &NoHooks).unwrap())
        .unwrap();
    assert!(tensor_diff(&direct, &paired.narrow(0, 0, 1).unwrap()) < 1e-5);
}
