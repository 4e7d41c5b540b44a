//! The frozen model contract: a spec, a forward pass that calls the [`Hooks`], and the pieces the tasks
//! need (token embeddings, the LM head) so that logits are computed only where a loss or prediction needs them.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use peft_core::model::Batch;
//! let ids = Tensor::new(&[[1u32, 2, 3], [4, 5, 0]], &Device::Cpu).unwrap();
//! let mask = Tensor::new(&[[1f32, 1., 1.], [1., 1., 0.]], &Device::Cpu).unwrap();
//! let batch = Batch::new(ids, mask).unwrap();
//! assert_eq!(batch.shape(), (2, 3));
//! ```

use candle_core::{DType, Device, Tensor};

use crate::error::{PeftError, Result};
use crate::frozen::FrozenLinear;
use crate::hooks::Hooks;
use crate::spec::{ModelSpec, SiteId};

/// A right-padded batch of token ids.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, seq]` u32 token ids (the encoder's input in an encoder-decoder model).
    pub input_ids: Tensor,
    /// `[batch, seq]` f32, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// `[batch, seq]` u32 segment ids (BERT's `token_type_ids`); `None` means all zeros.
    pub token_type_ids: Option<Tensor>,
    /// `[batch, dec_seq]` u32 decoder input ids, for encoder-decoder models (T5): the labels shifted right
    /// behind the decoder start token. Decoder-only and encoder models ignore them.
    pub decoder_input_ids: Option<Tensor>,
}

impl Batch {
    /// A batch from ids and a mask of the same shape.
    pub fn new(input_ids: Tensor, attention_mask: Tensor) -> Result<Self> {
        if input_ids.dims() != attention_mask.dims() || input_ids.rank() != 2 {
            return Err(PeftError::ShapeMismatch {
                what: "attention mask".into(),
                expected_from: "input ids".into(),
                expected: input_ids.dims().to_vec(),
                got_from: "attention mask".into(),
                got: attention_mask.dims().to_vec(),
            });
        }
        Ok(Batch {
            input_ids: input_ids.to_dtype(DType::U32)?,
            attention_mask: attention_mask.to_dtype(DType::F32)?,
            token_type_ids: None,
            decoder_input_ids: None,
        })
    }

    /// One unpadded sequence.
    pub fn single(ids: &[u32], device: &Device) -> Result<Self> {
        let input_ids = Tensor::new(ids, device)?.unsqueeze(0)?;
        let attention_mask = Tensor::ones((1, ids.len()), DType::F32, device)?;
        Ok(Batch {
            input_ids,
            attention_mask,
            token_type_ids: None,
            decoder_input_ids: None,
        })
    }

    /// The batch with segment ids `[batch, seq]` (BERT sentence pairs).
    pub fn with_token_type_ids(mut self, token_type_ids: Tensor) -> Result<Self> {
        if token_type_ids.dims() != self.input_ids.dims() {
            return Err(PeftError::ShapeMismatch {
                what: "token type ids".into(),
                expected_from: "input ids".into(),
                expected: self.input_ids.dims().to_vec(),
                got_from: "token type ids".into(),
                got: token_type_ids.dims().to_vec(),
            });
        }
        self.token_type_ids = Some(token_type_ids.to_dtype(DType::U32)?);
        Ok(self)
    }

    /// The batch with decoder input ids `[batch, dec_seq]` (encoder-decoder models).
    pub fn with_decoder_input_ids(mut self, decoder_input_ids: Tensor) -> Result<Self> {
        let (b, _) = self.shape();
        if decoder_input_ids.rank() != 2 || decoder_input_ids.dim(0)? != b {
            return Err(PeftError::ShapeMismatch {
                what: "decoder input ids".into(),
                expected_from: "the batch size of the input ids".into(),
                expected: vec![b, 0],
                got_from: "decoder input ids".into(),
                got: decoder_input_ids.dims().to_vec(),
            });
        }
        self.decoder_input_ids = Some(decoder_input_ids.to_dtype(DType::U32)?);
        Ok(self)
    }

    /// `(batch, seq)`.
    pub fn shape(&self) -> (usize, usize) {
        self.input_ids.dims2().unwrap_or((0, 0))
    }
}

/// What a forward pass returns: final hidden states (after the last norm) for every position, virtual ones
/// included, so that the task picks the rows that need logits. An encoder-decoder model returns its
/// decoder's states (one row per decoder input id; the prompt methods' virtual tokens sit in the encoder).
#[derive(Debug, Clone)]
pub struct Output {
    /// `[batch, virtual + seq, hidden]`.
    pub hidden: Tensor,
    /// Virtual tokens the hooks prepended; real token `t` sits at row `virtual_tokens + t`.
    pub virtual_tokens: usize,
}

/// The encoder's half of an encoder-decoder forward pass, computed once per input and reused by every
/// decoding step.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `[batch, virtual + seq, hidden]` final encoder states.
    pub hidden: Tensor,
    /// `[batch, virtual + seq]` f32 mask of the encoder states (virtual tokens get 1).
    pub attention_mask: Tensor,
}

/// Keys and values of one attention, `[batch, heads, positions, head_dim]` each.
#[derive(Debug, Clone)]
pub struct CachedKv {
    /// Keys.
    pub key: Tensor,
    /// Values.
    pub value: Tensor,
}

/// The decoder's key/value cache during generation: self-attention keys and values grow by one position per
/// step (after any key/value prefix the hooks gave), cross-attention keys and values are computed from the
/// encoder states once.
#[derive(Debug, Clone, Default)]
pub struct DecoderCache {
    /// Per decoder layer: self-attention keys/values so far (prefix included).
    pub self_attn: Vec<Option<CachedKv>>,
    /// Per decoder layer: cross-attention keys/values over the encoder states.
    pub cross_attn: Vec<Option<CachedKv>>,
    /// Real decoder positions already in the cache.
    pub seen: usize,
}

/// An encoder-decoder model (T5): encode once, then decode step by step with a cache. The hooks meet the
/// encoder at [`Hooks::embeddings`] (virtual tokens join the encoder input)
/// and the decoder's self-attention at [`Hooks::attention_prefix`];
/// linear and bias sites are everywhere, named as Hugging Face names them.
pub trait EncoderDecoder {
    /// The token the decoder starts from (T5: the pad token, 0).
    fn decoder_start_token_id(&self) -> u32;

    /// The encoder's states of `batch`'s input ids.
    fn encode(&self, batch: &Batch, hooks: &dyn Hooks) -> Result<Encoded>;

    /// Final decoder states `[batch, new, hidden]` of `decoder_ids` `[batch, new]`, which continue the
    /// positions held in `cache` (an empty cache starts a sequence); the cache is extended.
    fn decode(
        &self,
        encoded: &Encoded,
        decoder_ids: &Tensor,
        cache: &mut DecoderCache,
        hooks: &dyn Hooks,
    ) -> Result<Tensor>;
}

/// A frozen model of the zoo.
pub trait BaseModel: Send + Sync {
    /// Shape and injection sites.
    fn spec(&self) -> &ModelSpec;

    /// The device the weights live on.
    fn device(&self) -> &Device;

    /// Word embeddings of `ids` (no positions), `[.., hidden]`: what prompt tuning's TEXT init copies.
    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor>;

    /// The forward pass with hooks.
    fn forward(&self, batch: &Batch, hooks: &dyn Hooks) -> Result<Output>;

    /// The LM head (`[vocab, hidden]`; tied to the word embeddings where the checkpoint ties them), or `None`
    /// for an encoder checkpoint without one (a bare `BertModel`).
    fn lm_head(&self) -> Option<&FrozenLinear>;

    /// The forward pass of a decoder-only model with a key/value cache. With an empty `cache`, `batch` is the
    /// prompts (left-padded where their lengths differ): the embeddings and prefix hooks run, and every layer's
    /// keys and values (a prefix included) are stored. With a filled cache, `batch` holds only the new tokens
    /// (`[rows, new]`, their mask `[rows, new]`): they continue each row at its next position, and the
    /// embeddings and prefix hooks do not run again (the projection and norm hooks do). Positions count each
    /// row's real keys (prefix, virtual tokens, tokens), so a left-padded row computes what it computes alone.
    /// Returns the new positions' states (`virtual_tokens` rows first on the prompt's pass).
    ///
    /// The default refuses: a model without a cache generates through [`BaseModel::forward`].
    fn forward_cached(
        &self,
        batch: &Batch,
        cache: &mut crate::kv_cache::KvCache,
        hooks: &dyn Hooks,
    ) -> Result<Output> {
        let _ = (batch, cache, hooks);
        Err(PeftError::Unsupported(format!(
            "the {} model {} has no key/value cache",
            self.spec().architecture,
            self.spec().name_or_path
        )))
    }

    /// Whether [`BaseModel::forward_cached`] is implemented.
    fn has_kv_cache(&self) -> bool {
        false
    }

    /// Whether the forward runs its layers through [`Hooks::layers`] (one stack), which gradient checkpointing
    /// ([`crate::checkpoint`]) needs.
    fn supports_gradient_checkpointing(&self) -> bool {
        false
    }

    /// The encoder-decoder interface, for models that have one.
    fn encoder_decoder(&self) -> Option<&dyn EncoderDecoder> {
        None
    }

    /// What a sequence-classification head reads, `[batch, hidden]`, from a forward pass `out` over `batch`:
    /// by default the final state of each row's last real token (transformers' `*ForSequenceClassification`
    /// decoders); BERT overrides it with its pooler over the first position (a frozen projection, so it runs
    /// through `hooks` as every other site does).
    fn pooled(&self, out: &Output, batch: &Batch, hooks: &dyn Hooks) -> Result<Tensor> {
        let _ = hooks;
        let lengths: Vec<f32> = batch.attention_mask.sum(1)?.to_vec1::<f32>()?;
        let (_, s, h) = out.hidden.dims3()?;
        let mut rows = Vec::with_capacity(lengths.len());
        for (b, len) in lengths.iter().enumerate() {
            let len = *len as usize;
            if len == 0 {
                return Err(PeftError::Data(format!("batch row {b} has no real tokens")));
            }
            rows.push((b * s + out.virtual_tokens + len - 1) as u32);
        }
        let idx = Tensor::new(rows, out.hidden.device())?;
        Ok(out.hidden.reshape(((), h))?.index_select(&idx, 0)?)
    }

    /// The frozen projection at a linear `site`.
    fn frozen_linear(&self, site: SiteId) -> Option<&FrozenLinear>;

    /// The frozen projection at a linear `site`, for merging an adapter's weight delta into it.
    fn frozen_linear_mut(&mut self, site: SiteId) -> Option<&mut FrozenLinear>;

    /// Every frozen parameter by its Hugging Face name, as loaded (for inspection and for methods that start from a
    /// frozen value, as BitFit does).
    fn parameters(&self) -> Vec<(String, Tensor)>;

    /// Logits over the whole vocabulary for `hidden` rows `[.., hidden]`.
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        require_lm_head(self.spec(), self.lm_head())?.forward(hidden)
    }

    /// Logits of the given vocabulary rows only (verbalizer label words), `[.., rows]`.
    fn logits_of(&self, hidden: &Tensor, token_ids: &[u32]) -> Result<Tensor> {
        let head = require_lm_head(self.spec(), self.lm_head())?;
        head.rows(token_ids)?.forward(hidden)
    }
}

/// The LM head, or an error saying that this checkpoint has none and what to use instead.
pub fn require_lm_head<'a>(
    spec: &ModelSpec,
    head: Option<&'a FrozenLinear>,
) -> Result<&'a FrozenLinear> {
    head.ok_or_else(|| {
        PeftError::Unsupported(format!(
            "the {} model {} has no LM head, so it cannot score words or generate: use a task with a trained \
             head (`classification-head`, `token-classification`) or `peft embed`",
            spec.architecture, spec.name_or_path
        ))
    })
}
