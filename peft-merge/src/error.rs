//! The one error type of `peft-merge`: every variant names what was wrong (the adapter, the module, the
//! setting) and what to do about it.

use std::path::PathBuf;

use peft_core::PeftError;

/// Why adapters could not be combined.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// Nothing to combine.
    #[error("no adapters to merge: give at least one LoRA adapter folder")]
    NoAdapters,

    /// One weight per adapter is needed.
    #[error(
        "{weights} weight(s) for {adapters} adapter(s): give one weight per adapter, in the adapters' order"
    )]
    WeightsCount {
        /// Adapters given.
        adapters: usize,
        /// Weights given.
        weights: usize,
    },

    /// A weight that is NaN or infinite.
    #[error("weight {index} is {value}: weights must be finite numbers (negative ones subtract an adapter)")]
    BadWeight {
        /// Its position (from 0).
        index: usize,
        /// The value.
        value: f64,
    },

    /// A combination name HF PEFT does not have.
    #[error("unknown combination {given:?}: use one of {known}")]
    UnknownCombination {
        /// What was asked for.
        given: String,
        /// The known names, comma-separated.
        known: String,
    },

    /// A majority-sign method HF PEFT does not have.
    #[error("unknown majority sign method {given:?}: use \"total\" or \"frequency\"")]
    UnknownSignMethod {
        /// What was asked for.
        given: String,
    },

    /// A pruning combination without a usable density.
    #[error(
        "combination {combination} needs a density in (0, 1] (the fraction of entries kept; 1 keeps all), got {}",
        density.map_or("none".to_string(), |d| d.to_string())
    )]
    Density {
        /// The combination.
        combination: &'static str,
        /// What was given.
        density: Option<f64>,
    },

    /// A setting of the SVD combinations out of range.
    #[error("{setting} = {value}: {expected}")]
    SvdSetting {
        /// `svd_rank` or `svd_clamp`.
        setting: &'static str,
        /// The value given.
        value: f64,
        /// What it must be.
        expected: &'static str,
    },

    /// The element-wise combinations add the factors entry by entry, so the adapters' ranks must agree.
    #[error(
        "combination {combination} needs adapters of one rank (it adds lora_A and lora_B entry by entry), but the \
         ranks (the largest of r and rank_pattern) are {ranks}: use cat or an SVD combination (svd, ties_svd, ...), \
         which take any ranks"
    )]
    DifferentRanks {
        /// The combination.
        combination: &'static str,
        /// `adapter: rank` for each adapter.
        ranks: String,
    },

    /// Equal adapter ranks but different ranks for one module (HF PEFT fails deep inside `torch.stack` here).
    #[error(
        "combination {combination} needs one rank per module, but module `{module}` has {ranks}: give the adapters \
         the same rank_pattern, or use cat or an SVD combination"
    )]
    ModuleRanks {
        /// The combination.
        combination: &'static str,
        /// The module.
        module: String,
        /// `adapter: rank` for each adapter holding the module.
        ranks: String,
    },

    /// An adapter of another method.
    #[error(
        "adapter {adapter} has peft_type {peft_type:?}: merging combines LoRA adapters (peft_type \"LORA\") only"
    )]
    NotLora {
        /// The adapter (its folder, or its name).
        adapter: String,
        /// Its `peft_type`.
        peft_type: String,
    },

    /// Adapters trained on different base models.
    #[error(
        "adapters {first} and {other} were trained on different base models (`{first_base}` and `{other_base}`): \
         merged LoRA updates only make sense on the base they were trained on; merge adapters of one base model"
    )]
    DifferentBaseModels {
        /// The first adapter.
        first: String,
        /// Its base model.
        first_base: String,
        /// The adapter that differs.
        other: String,
        /// Its base model.
        other_base: String,
    },

    /// One module with different shapes in two adapters.
    #[error(
        "module `{module}`: {what} is {first_shape:?} in adapter {first} but {other_shape:?} in adapter {other}: \
         the adapters were made for models of different sizes; merge adapters of one base model"
    )]
    ShapeMismatch {
        /// The module.
        module: String,
        /// `lora_A` / `lora_B` and which dimension.
        what: String,
        /// The adapter that set the shape.
        first: String,
        /// Its shape.
        first_shape: Vec<usize>,
        /// The adapter that differs.
        other: String,
        /// Its shape.
        other_shape: Vec<usize>,
    },

    /// A module kind (linear vs embedding) that differs between adapters.
    #[error(
        "module `{module}` is adapted as {first_kind} in adapter {first} but as {other_kind} in adapter {other}: \
         merge adapters of one base model"
    )]
    KindMismatch {
        /// The module.
        module: String,
        /// The first adapter.
        first: String,
        /// How it adapts the module.
        first_kind: &'static str,
        /// The adapter that differs.
        other: String,
        /// How that one adapts it.
        other_kind: &'static str,
    },

    /// A setting of one adapter that merging cannot honour.
    #[error("adapter {adapter}: {what}")]
    Unsupported {
        /// The adapter.
        adapter: String,
        /// What is set, why it cannot be merged, and what to do.
        what: String,
    },

    /// Adapters whose configs select modules in ways HF PEFT's merged config cannot express.
    #[error(
        "adapters {first} and {other} differ in {field} ({first_value} and {other_value}): HF PEFT's merged config \
         keeps the first adapter's value, which drops or breaks the other's modules; merge adapters that agree on \
         {field}"
    )]
    SelectionMismatch {
        /// The config field.
        field: &'static str,
        /// The first adapter.
        first: String,
        /// Its value.
        first_value: String,
        /// The adapter that differs.
        other: String,
        /// Its value.
        other_value: String,
    },

    /// An adapter's tensors that disagree with its own config.
    #[error("adapter {adapter}: {message}")]
    Inconsistent {
        /// The adapter.
        adapter: String,
        /// What disagrees, and what to do.
        message: String,
    },

    /// The SVD of a module's combined update failed.
    #[error("module `{module}`: the SVD of its combined {rows} x {cols} update failed ({cause})")]
    Svd {
        /// The module.
        module: String,
        /// Rows of the update.
        rows: usize,
        /// Columns of the update.
        cols: usize,
        /// faer's reason.
        cause: String,
    },

    /// The output folder is one of the inputs.
    #[error(
        "the output folder {} is one of the input adapters: write the merged adapter to a new folder",
        out.display()
    )]
    OutputIsInput {
        /// The folder.
        out: PathBuf,
    },

    /// Reading or writing an adapter folder failed (the path and cause are in the message).
    #[error(transparent)]
    Io(#[from] PeftError),
}

/// Result alias for `peft-merge`.
pub type Result<T> = std::result::Result<T, MergeError>;

impl From<candle_core::Error> for MergeError {
    fn from(e: candle_core::Error) -> Self {
        MergeError::Io(PeftError::Candle(e))
    }
}
