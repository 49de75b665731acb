//! # tidings-service
//!
//! tidings as a standalone real-time service that any backend can drive,
//! in the manner of Azure SignalR Service: the service holds every client
//! connection, and application servers, written in any language, only run
//! business logic over HTTP.
//!
//! * [`keys`]: access keys, REST API tokens and client tokens.
//! * [`signature`]: how tidings signs what it posts upstream.
//! * [`ServerlessHub`]: a hub with no Rust code, whose invocations and
//!   connection events are posted to an [`upstream`].
//! * [`upstream`]: the HTTP backend of a serverless hub.
//! * [`rest`]: the REST publish API ([`RestApi`]), through which backends
//!   send to clients and manage groups and connections.

pub mod keys;
pub mod rest;
mod serverless;
pub mod signature;
pub mod upstream;

pub use keys::{
    AccessKey, AccessKeys, ClientToken, KeyError, RestAuthError, TokenError, rest_token,
};
pub use rest::RestApi;
pub use serverless::ServerlessHub;
pub use upstream::{Caller, Upstream, UpstreamConfigError, UpstreamError, UpstreamOptions};
