//! Socket plumbing: listeners, original destination, stream adaptors,
//! upstream connections.

pub mod listener;
pub mod origdst;
pub mod rewind;
pub mod stream;
