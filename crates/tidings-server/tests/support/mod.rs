//! What the binary's integration tests share.

pub(crate) mod binary;
