//! Why a configuration was refused: [`ConfigError`], whose message names the key.

/// A configuration that could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl ConfigError {
    /// An invalid `[[guards.enqueue.rules]]` entry, for `reason`: the error every part of
    /// the enqueue guard's rule building returns.
    pub fn enqueue_rule(reason: impl Into<String>) -> Self {
        invalid("guards.enqueue.rules", reason)
    }
}

pub(super) fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}
