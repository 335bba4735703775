//! Why an audit fails: the connection, Redis's refusal, or a reply the audit cannot read.

use crate::upstream::UpstreamError;

/// Why an audit failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// No connection could be opened.
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    /// The connection broke during the audit.
    #[error("connection to {address} lost during the audit: {reason}")]
    Connection { address: String, reason: String },
    /// Redis refused a command the audit needs (an ACL without SCAN or TYPE, say).
    #[error("Redis refused the audit's command: {0}")]
    Refused(String),
    /// A reply the audit cannot read.
    #[error("unexpected reply: {0}")]
    Reply(String),
}
