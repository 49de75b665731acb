//! The hubs the standalone server serves.

pub(crate) mod chat;
pub(crate) mod dashboard;
pub(crate) mod test;
