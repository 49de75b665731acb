//! The hubs the standalone server serves.

pub mod chat;
pub mod dashboard;
pub mod test;
