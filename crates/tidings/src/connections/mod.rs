//! The connection layer: negotiate, the three transports (WebSockets,
//! Server-Sent Events, Long Polling), the registries of live connections,
//! stateful reconnect and the request-level policies (authentication,
//! connection limits, allowed origins, forwarding in a cluster) — ASP.NET
//! Core's `Http.Connections`.
//!
//! It knows nothing of hubs. What runs on a connection is an application
//! behind a small seam (the `Application` trait of `handler.rs`): the hub layer is one; a
//! [`ConnectionHandler`] mounted with a [`ConnectionEndpoint`] is another,
//! which gets bytes in and bytes out:
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tidings::connections::{Connection, ConnectionEndpoint, ConnectionHandler, Inbound};
//!
//! struct Echo;
//!
//! impl ConnectionHandler for Echo {
//!     async fn on_connected(&self, connection: Connection, mut inbound: Inbound) {
//!         while let Some(Ok(bytes)) = inbound.next().await {
//!             if !connection.send(bytes).await {
//!                 break;
//!             }
//!         }
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = axum::Router::new().nest("/echo", ConnectionEndpoint::new(Echo).into_router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

pub(crate) mod access;
pub(crate) mod cluster;
pub(crate) mod connection;
mod endpoint;
pub(crate) mod frozen;
pub(crate) mod handler;
pub(crate) mod handover;
pub(crate) mod journal;
mod opening;
pub(crate) mod options;
pub(crate) mod outbox;
pub(crate) mod redirect;
pub(crate) mod registry;
pub(crate) mod resume;
pub(crate) mod routes;
mod served;
mod tokens;
pub(crate) mod transport;

pub use connection::Connection;
pub use endpoint::ConnectionEndpoint;
pub use handler::{BoxFuture, ConnectionHandler, Inbound, InboundChunk};
pub use journal::{Journal, JournalEntry};
pub use options::ConnectionOptions;
pub use tidings_protocol::{TransferFormat, TransportType};
