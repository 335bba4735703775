//! What a router's link to a node (its own connection, or a place on a shared one) tells
//! the router: one type for both, so the router cannot tell them apart.

use bytes::Bytes;

/// What a link tells its router.
#[derive(Debug)]
pub enum NodeEvent {
    /// A whole reply (`push`: RESP3's out-of-band `>`) read by link `link`.
    Reply { link: u64, reply: Bytes, push: bool },
    /// Link `link` could not connect (`connected` false: nothing was sent), or its
    /// connection failed or closed: why.
    Lost {
        link: u64,
        reason: String,
        connected: bool,
    },
}
