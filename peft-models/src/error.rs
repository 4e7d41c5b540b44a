//! The error type of `peft-models`: every variant names the file or tensor concerned and what to do.

use std::path::PathBuf;

/// Errors raised while loading or running a frozen model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A contract-level error from `peft-core`.
    #[error(transparent)]
    Core(#[from] peft_core::PeftError),

    /// A file could not be read.
    // The cause is in the message and not also the error's `source()`, so that a report of the whole
    // chain (`{:#}`) says it once.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },

    /// A model file is missing, truncated or not what its name says.
    #[error("{path}: {message}")]
    BadFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },

    /// A checkpoint lacks a tensor the architecture needs.
    #[error("missing tensor `{name}` in {source_desc} (the checkpoint does not fit this architecture or is incomplete)")]
    MissingTensor {
        /// The Hugging Face parameter name.
        name: String,
        /// Where the weights came from.
        source_desc: String,
    },

    /// A checkpoint tensor has the wrong shape for the config.
    #[error("tensor `{name}` in {source_desc} has shape {got:?}, the config implies {expected:?}")]
    TensorShape {
        /// The Hugging Face parameter name.
        name: String,
        /// Where the weights came from.
        source_desc: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape found.
        got: Vec<usize>,
    },

    /// A tensor read as a weight is stored as integers (a buffer such as `position_ids`, or a corrupt file).
    #[error("tensor `{name}` in {source_desc} is stored as {dtype}, not as floating-point weights (f32, f16, bf16 or f64): the checkpoint does not fit this architecture or is corrupt")]
    TensorDtype {
        /// The Hugging Face parameter name.
        name: String,
        /// Where the weights came from.
        source_desc: String,
        /// The dtype found.
        dtype: String,
    },

    /// A checkpoint holds tensors the architecture does not use (a config saying fewer layers than the file
    /// holds, another architecture's names): loading it would silently ignore weights.
    #[error("{source_desc} holds {count} tensor(s) this model does not use ({names}): the config does not describe the checkpoint (check its layer count and model_type) or the file holds another model")]
    UnusedTensors {
        /// Where the weights came from.
        source_desc: String,
        /// How many tensors are unused.
        count: usize,
        /// The first few, quoted.
        names: String,
    },

    /// The configuration cannot be used.
    #[error("model config: {0}")]
    Config(String),

    /// A zoo name, download or cache problem.
    #[error("{0}")]
    Zoo(String),

    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

impl From<ModelError> for peft_core::PeftError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Candle(c) => peft_core::PeftError::Candle(c),
            ModelError::Core(c) => c,
            other => peft_core::PeftError::Unsupported(other.to_string()),
        }
    }
}

/// Result alias for `peft-models`.
pub type Result<T> = std::result::Result<T, ModelError>;
