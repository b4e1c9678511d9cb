//! Errors of the library: each names the input it is about and what is wrong with it.

use std::path::PathBuf;

/// Everything the library can refuse, with enough context for a one-line message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },

    #[error("model {path}: {reason}")]
    Model { path: PathBuf, reason: String },

    #[error("labels {path}: {reason}")]
    Labels { path: PathBuf, reason: String },

    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    #[error("inference failed: {0}")]
    Inference(String),

    /// A daemon stage cannot go on (another stage it feeds is gone).
    #[error("{0}")]
    Stage(String),

    /// A live source (the camera) is down and being retried; it has logged why.
    #[error("source unavailable: {0}")]
    SourceUnavailable(String),
}

impl Error {
    pub(crate) fn input(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::Input {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn model(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::Model {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Error::Invalid {
            what,
            reason: reason.to_string(),
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
