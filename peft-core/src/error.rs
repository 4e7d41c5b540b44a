//! The one error type of `peft-core`; every variant says what was wrong and, where it can, what to do.

use std::path::PathBuf;

/// Errors raised by the contracts, the data pipeline and the trainer.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A file could not be read or written.
    // The cause is in the message and not also the error's `source()`, so that a report of the whole
    // chain (`{:#}`) says it once.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },

    /// A file exists but its content is not what it should be.
    #[error("{path}: {message}")]
    BadFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it and what to do.
        message: String,
    },

    /// Two shapes that must agree do not (an adapter made for another model, say).
    #[error(
        "shape mismatch for {what}: {expected_from} expects {expected:?}, {got_from} has {got:?}"
    )]
    ShapeMismatch {
        /// The tensor or dimension concerned.
        what: String,
        /// Who sets the expectation (usually the model).
        expected_from: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// Who brought the other shape (usually the adapter).
        got_from: String,
        /// The shape found.
        got: Vec<usize>,
    },

    /// Tensors hold NaN or infinite values where they are refused without an explicit override (an adapter
    /// saved or loaded: it comes from a diverged run).
    #[error(
        "refusing to {action} the adapter {}: {found}. Such an adapter comes from a diverged run: retrain it (a lower \
         learning rate, gradient clipping), or give the explicit override (`allow_non_finite`; \
         `--allow-non-finite` on the command line) to {action} it anyway",
        path.display()
    )]
    NonFinite {
        /// What was being done (`save`, `load`).
        action: &'static str,
        /// The folder or file concerned.
        path: PathBuf,
        /// Which tensors hold how many such values.
        found: String,
    },

    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The data given to a task cannot be used.
    #[error("data: {0}")]
    Data(String),

    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A collective operation between the ranks of a data-parallel job failed.
    #[error("communication between processes: {0}")]
    Communication(String),

    /// A contract was used in a way it does not support.
    #[error("{0}")]
    Unsupported(String),
}

/// Result alias for `peft-core`.
pub type Result<T> = std::result::Result<T, PeftError>;

impl PeftError {
    /// Wraps an I/O error with the action and path it happened on.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PeftError::Io {
            action,
            path: path.into(),
            cause: source,
        }
    }

    /// A file whose content is wrong, with a message that says what to do.
    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        PeftError::BadFile {
            path: path.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_says_its_cause_once_even_when_the_chain_is_printed() {
        let err = PeftError::io(
            "reading",
            "train.tsv",
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file"),
        );
        let mut chain = err.to_string();
        let mut next = std::error::Error::source(&err);
        while let Some(cause) = next {
            chain.push_str(&format!(": {cause}"));
            next = cause.source();
        }
        assert_eq!(chain, "reading train.tsv: No such file");
    }
}
