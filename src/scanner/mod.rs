//! Finding message boundaries in RESP byte streams: [`request`] for what clients send,
//! [`reply`] for what Redis answers. Both are resumable, allocation-free per message, and
//! never hold a large value whole. Off the hot path, [`tree`] reads a whole reply the
//! proxy asked for itself into a tree, within bounds.

mod length;
pub mod reply;
pub mod request;
pub mod tree;
