//! Encoded examples, the tasks' inputs.

/// A classification example: prompt token ids (the answer is predicted at the last one) and a class index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassExample {
    /// Prompt token ids.
    pub input_ids: Vec<u32>,
    /// Index of the class in the verbalizer.
    pub label: usize,
    /// Segment ids aligned with `input_ids` (BERT's `token_type_ids` of a sentence pair); empty means all 0.
    pub token_type_ids: Vec<u32>,
}

/// A causal-LM example: token ids and aligned labels (-100 where no loss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmExample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Labels aligned with `input_ids`; -100 excludes a position from the loss.
    pub labels: Vec<i64>,
}
