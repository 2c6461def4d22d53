//! The one error type of this crate: every failure names the file or option at fault and says
//! what to do about it, so that a bad model directory never ends in a panic.

use std::path::{Path, PathBuf};

/// What went wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    // Not `source`: the cause is in the message, and a source would print it a second time.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// A file was read but its content is not what a model needs.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where possible what to do.
        message: String,
    },
    /// A request or option cannot be honoured (bad device name, unknown preset, ...).
    #[error("{0}")]
    Usage(String),
    /// The compute backend failed (e.g. the GPU ran out of memory or could not be initialised).
    #[error("backend: {0}")]
    Backend(String),
}

impl ModelError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            error,
        }
    }

    /// A format error on `path`.
    pub fn format(path: &Path, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}
