//! Errors of the library: each names the input it is about and what is wrong with it.

use std::path::{Path, PathBuf};

/// Everything the library can refuse, with enough context for a one-line message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {reason}", shown(path))]
    Input { path: PathBuf, reason: String },

    /// A file could not be read; the I/O error is the source, so that its kind survives.
    #[error("{}: cannot read {what}", shown(path))]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("model {}: {reason}", shown(path))]
    Model { path: PathBuf, reason: String },

    #[error("labels {}: {reason}", shown(path))]
    Labels { path: PathBuf, reason: String },

    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    #[error("inference failed: {0}")]
    Inference(String),

    /// A frame from the source that cannot be used (a short or corrupt camera buffer).
    #[error("bad frame: {0}")]
    Frame(String),

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

    pub(crate) fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            what,
            source,
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Error::Invalid {
            what,
            reason: reason.to_string(),
        }
    }
}

/// A path as errors print it: as is, unless it holds control characters (a newline in a
/// file name would otherwise print a second, fake `error:` line); those are escaped.
pub fn shown(path: &Path) -> String {
    let text = path.display().to_string();
    if text.chars().any(char::is_control) {
        text.escape_debug().to_string()
    } else {
        text
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error followed by its causes, as one line: `a: b: c`.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_kind_and_say_it() {
        let missing = std::fs::read("/nonexistent/iscamd").unwrap_err();
        let e = Error::io("/nonexistent/iscamd", "image", missing);
        let source = std::error::Error::source(&e).unwrap();
        let io = source.downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        let line = with_causes(&e);
        assert!(
            line.starts_with("/nonexistent/iscamd: cannot read image: "),
            "{line}"
        );
        assert!(line.contains("No such file"), "{line}");
    }

    #[test]
    fn control_characters_in_paths_are_escaped() {
        let e = Error::input("a\nerror: fake.jpg", "not an image");
        assert_eq!(e.to_string(), "a\\nerror: fake.jpg: not an image");
    }
}
