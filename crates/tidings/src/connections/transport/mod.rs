//! Transports: how the bytes of a connection travel. Each transport turns
//! its requests into an inbound chunk stream for the application and drains
//! the connection's outbound queue into its own framing.

pub(crate) mod frames;
pub(crate) mod http;
pub(crate) mod resume;
pub(crate) mod socket;
pub(crate) mod websocket;
