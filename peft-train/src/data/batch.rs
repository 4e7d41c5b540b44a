//! Right-padded batches as plain vectors (row-major `[batch, seq]`), with helpers that make candle tensors,
//! and the seeded per-epoch example order.
//!
//! ```
//! use candle_core::Device;
//! use peft_train::data::{ClassBatch, ClassExample};
//! let rows = [ClassExample { input_ids: vec![5, 6, 7], label: 1, token_type_ids: vec![] }, ClassExample { input_ids: vec![8], label: 0, token_type_ids: vec![] }];
//! let batch = ClassBatch::collate(&rows, 0).unwrap();
//! assert_eq!(batch.ids.input_ids, [5, 6, 7, 8, 0, 0]);
//! assert_eq!(batch.ids.attention_mask, [1., 1., 1., 1., 0., 0.]);
//! assert_eq!(batch.answer_positions, [2, 0]);
//! let t = batch.to_tensors(&Device::Cpu).unwrap();
//! assert_eq!(t.batch.shape(), (2, 3));
//! ```

use candle_core::{Device, Tensor};

use super::encode::IGNORE_INDEX;
use crate::task::{ClassExample, LmExample};
use peft_core::error::{PeftError, Result};
use peft_core::model::Batch;

/// The seeded order of `n` examples in `epoch`: the same seed and epoch give the same permutation on every
/// run and platform (it is the trainer's own order, so the data pipeline and the trainer never disagree).
pub use crate::train::order::epoch_order;

/// Token ids right-padded to the longest row, with the attention mask.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedIds {
    /// Rows in the batch.
    pub batch_size: usize,
    /// Length of every padded row (the longest real row).
    pub seq_len: usize,
    /// `batch_size * seq_len` ids, row-major; padding holds the pad id.
    pub input_ids: Vec<u32>,
    /// `batch_size * seq_len` values, 1 for a real token and 0 for padding.
    pub attention_mask: Vec<f32>,
}

impl PaddedIds {
    /// Pads `rows` on the right with `pad_id`. An empty batch or an empty row is an error (a row needs a last
    /// real token).
    pub fn pad(rows: &[&[u32]], pad_id: u32) -> Result<Self> {
        if rows.is_empty() {
            return Err(PeftError::Data(
                "cannot build a batch from no examples".into(),
            ));
        }
        if let Some(i) = rows.iter().position(|r| r.is_empty()) {
            return Err(PeftError::Data(format!(
                "row {i} of the batch has no tokens"
            )));
        }
        let seq_len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(rows.len() * seq_len);
        let mut attention_mask = Vec::with_capacity(rows.len() * seq_len);
        for row in rows {
            let pad = seq_len - row.len();
            input_ids.extend_from_slice(row);
            input_ids.extend(std::iter::repeat_n(pad_id, pad));
            attention_mask.extend(std::iter::repeat_n(1f32, row.len()));
            attention_mask.extend(std::iter::repeat_n(0f32, pad));
        }
        Ok(PaddedIds {
            batch_size: rows.len(),
            seq_len,
            input_ids,
            attention_mask,
        })
    }

    /// Padded row `i`.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.input_ids[i * self.seq_len..(i + 1) * self.seq_len]
    }

    /// The model input on `device`: `[B, T]` u32 ids and `[B, T]` f32 mask.
    pub fn to_batch(&self, device: &Device) -> Result<Batch> {
        let shape = (self.batch_size, self.seq_len);
        Batch::new(
            Tensor::from_slice(&self.input_ids, shape, device)?,
            Tensor::from_slice(&self.attention_mask, shape, device)?,
        )
    }
}

/// A classification batch: padded prompts, the answer position of each row (its last real token) and the
/// class index of each row.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassBatch {
    /// Padded prompt ids and mask.
    pub ids: PaddedIds,
    /// Index of the last real token of each row, where the label word is predicted.
    pub answer_positions: Vec<usize>,
    /// Class index (into the verbalizer) of each row.
    pub labels: Vec<usize>,
}

/// A [`ClassBatch`] as tensors.
#[derive(Debug, Clone)]
pub struct ClassTensors {
    /// `[B, T]` u32 ids and `[B, T]` f32 mask.
    pub batch: Batch,
    /// `[B]` u32 class indices (what `cross_entropy` over the label-word logits takes).
    pub labels: Tensor,
    /// Index of the last real token of each row.
    pub answer_positions: Vec<usize>,
}

impl ClassBatch {
    /// Pads `rows` with `pad_id`. With right padding and the mask, the pad id never reaches a real token's
    /// attention, so any id in the vocabulary will do for a model without a pad token.
    pub fn collate<'a>(
        rows: impl IntoIterator<Item = &'a ClassExample>,
        pad_id: u32,
    ) -> Result<Self> {
        let rows: Vec<&ClassExample> = rows.into_iter().collect();
        let ids: Vec<&[u32]> = rows.iter().map(|r| r.input_ids.as_slice()).collect();
        let ids = PaddedIds::pad(&ids, pad_id)?;
        Ok(ClassBatch {
            ids,
            answer_positions: rows.iter().map(|r| r.input_ids.len() - 1).collect(),
            labels: rows.iter().map(|r| r.label).collect(),
        })
    }

    /// The batch as tensors on `device`.
    pub fn to_tensors(&self, device: &Device) -> Result<ClassTensors> {
        let labels: Vec<u32> = self.labels.iter().map(|&l| l as u32).collect();
        Ok(ClassTensors {
            batch: self.ids.to_batch(device)?,
            labels: Tensor::new(labels, device)?,
            answer_positions: self.answer_positions.clone(),
        })
    }
}

/// A causal-LM batch: padded ids and labels padded with [`IGNORE_INDEX`].
#[derive(Debug, Clone, PartialEq)]
pub struct LmBatch {
    /// Padded ids and mask.
    pub ids: PaddedIds,
    /// `batch_size * seq_len` labels, row-major, aligned with the ids (not shifted); -100 takes no loss.
    pub labels: Vec<i64>,
}

/// An [`LmBatch`] as tensors.
#[derive(Debug, Clone)]
pub struct LmTensors {
    /// `[B, T]` u32 ids and `[B, T]` f32 mask.
    pub batch: Batch,
    /// `[B, T]` i64 labels, -100 where no loss.
    pub labels: Tensor,
}

impl LmBatch {
    /// Pads `rows` with `pad_id` (ids) and [`IGNORE_INDEX`] (labels). A row whose labels and ids differ in
    /// length is an error.
    pub fn collate<'a>(rows: impl IntoIterator<Item = &'a LmExample>, pad_id: u32) -> Result<Self> {
        let rows: Vec<&LmExample> = rows.into_iter().collect();
        if let Some(i) = rows
            .iter()
            .position(|r| r.labels.len() != r.input_ids.len())
        {
            return Err(PeftError::Data(format!(
                "row {i} of the batch has {} labels for {} tokens",
                rows[i].labels.len(),
                rows[i].input_ids.len()
            )));
        }
        let ids: Vec<&[u32]> = rows.iter().map(|r| r.input_ids.as_slice()).collect();
        let ids = PaddedIds::pad(&ids, pad_id)?;
        let mut labels = Vec::with_capacity(ids.input_ids.len());
        for row in &rows {
            labels.extend_from_slice(&row.labels);
            labels.extend(std::iter::repeat_n(
                IGNORE_INDEX,
                ids.seq_len - row.labels.len(),
            ));
        }
        Ok(LmBatch { ids, labels })
    }

    /// The batch as tensors on `device`.
    pub fn to_tensors(&self, device: &Device) -> Result<LmTensors> {
        Ok(LmTensors {
            batch: self.ids.to_batch(device)?,
            labels: Tensor::from_slice(
                &self.labels,
                (self.ids.batch_size, self.ids.seq_len),
                device,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lm_labels_are_padded_with_ignore_index() {
        let rows = [
            LmExample {
                input_ids: vec![1, 2],
                labels: vec![-100, 2],
            },
            LmExample {
                input_ids: vec![3, 4, 5, 6],
                labels: vec![3, 4, 5, 6],
            },
        ];
        let b = LmBatch::collate(&rows, 9).unwrap();
        assert_eq!(b.ids.input_ids, [1, 2, 9, 9, 3, 4, 5, 6]);
        assert_eq!(b.ids.attention_mask, [1., 1., 0., 0., 1., 1., 1., 1.]);
        assert_eq!(b.labels, [-100, 2, -100, -100, 3, 4, 5, 6]);
        assert_eq!(b.ids.row(1), [3, 4, 5, 6]);
        let t = b.to_tensors(&Device::Cpu).unwrap();
        assert_eq!(t.labels.dims(), [2, 4]);
        assert_eq!(t.labels.to_vec2::<i64>().unwrap()[0], [-100, 2, -100, -100]);
        assert_eq!(
            t.batch.attention_mask.to_vec2::<f32>().unwrap()[0],
            [1., 1., 0., 0.]
        );
        assert_eq!(t.batch.input_ids.to_vec2::<u32>().unwrap()[1], [3, 4, 5, 6]);
    }

    #[test]
    fn class_batches_carry_answer_positions_and_labels() {
        let rows = [
            ClassExample {
                input_ids: vec![4],
                label: 2,
                token_type_ids: vec![],
            },
            ClassExample {
                input_ids: vec![1, 2, 3],
                label: 0,
                token_type_ids: vec![],
            },
        ];
        let b = ClassBatch::collate(rows.iter().rev(), 0).unwrap();
        assert_eq!(b.answer_positions, [2, 0]);
        assert_eq!(b.labels, [0, 2]);
        assert_eq!(b.ids.input_ids, [1, 2, 3, 4, 0, 0]);
        let t = b.to_tensors(&Device::Cpu).unwrap();
        assert_eq!(t.labels.to_vec1::<u32>().unwrap(), [0, 2]);
    }

    #[test]
    fn bad_batches_are_errors() {
        assert!(ClassBatch::collate(&[], 0).is_err());
        assert!(ClassBatch::collate(
            &[ClassExample {
                input_ids: vec![],
                label: 0,
                token_type_ids: vec![],
            }],
            0
        )
        .is_err());
        let err = LmBatch::collate(
            &[LmExample {
                input_ids: vec![1, 2],
                labels: vec![1],
            }],
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("1 labels for 2 tokens"), "{err}");
    }

    #[test]
    fn epoch_order_is_a_deterministic_permutation() {
        let a = epoch_order(100, 42, 3);
        assert_eq!(a, epoch_order(100, 42, 3));
        assert_ne!(a, epoch_order(100, 42, 4));
        assert_ne!(a, epoch_order(100, 43, 3));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        // Pinned: a change of rand or of the seeding would silently change every run's data order.
        assert_eq!(epoch_order(10, 42, 0), [8, 6, 3, 2, 1, 5, 9, 7, 4, 0]);
    }
}
