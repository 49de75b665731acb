//! A SignalR hub client for tokio.
//!
//! It speaks the ASP.NET Core SignalR protocol to any compatible server (tidings, ASP.NET Core,
//! others): negotiate (versions 0 and 1, redirects), WebSockets, Server-Sent Events and Long
//! Polling with fallback, the JSON and MessagePack hub protocols, invocations with typed results,
//! server-to-client streams as a Rust [`Stream`](futures_util::Stream), client-to-server streams,
//! client methods with typed arguments and client results, bearer tokens, keep-alive and server
//! timeout, automatic reconnect with a retry policy, and stateful reconnect.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tidings_client::{HubConnectionBuilder, Protocol};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let connection = HubConnectionBuilder::new("http://127.0.0.1:5000/hubs/chat")
//!     .with_protocol(Protocol::MessagePack)
//!     .with_automatic_reconnect()
//!     .build()?;
//!
//! // Client methods: the server calls them; arguments bind to a tuple.
//! connection.on("ReceiveMessage", |(user, text): (String, String)| async move {
//!     println!("{user}: {text}");
//! });
//! connection.on_reconnected(|id| println!("reconnected as {id:?}"));
//!
//! connection.start().await?;
//!
//! // Hub methods: invoke waits for the result, send does not.
//! connection.invoke::<()>("SendMessage", ("ann", "hello")).await?;
//! connection.send("StartTyping", ()).await?;
//!
//! // A server-to-client stream; dropping it cancels the stream on the server.
//! let mut items = connection.stream::<u32>("Counter", (3, 100)).await?;
//! while let Some(item) = items.next().await {
//!     println!("item {}", item?);
//! }
//!
//! connection.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! One task per started connection owns everything that belongs to it: the transport, the pending
//! invocations and streams, the uploads, the timers and the reconnect loop. Handles
//! ([`HubConnection`] is cheap to clone) serialize calls once, in the caller, and pass the bytes
//! to that task; nothing is locked across an `.await`. Client methods run on a second task, one at
//! a time in arrival order, so a handler may call back into the hub.
//!
//! # Features
//!
//! * `rustls`: `https`/`wss` through rustls (ring) with the `webpki-roots` certificates, plus
//!   `HubConnectionBuilder::with_root_certificate_pem` for private roots. Without it, only
//!   `http`/`ws` URLs work.
//!
//! Interop notes: frames of either WebSocket type are accepted (some servers send JSON in Binary
//! frames); the handshake is always sent in a frame of its own; the connection id and state follow
//! the JavaScript client (a reconnect negotiates a new connection, unless stateful reconnect could
//! reopen the WebSocket for the same one).

mod args;
mod buffer;
mod builder;
mod connection;
mod driver;
mod error;
mod handler;
mod negotiate;
mod retry;
mod stream;
mod transport;

pub use args::{ArgParts, Argument, ClientStream, InvocationArgs};
pub use builder::{BuildError, HubConnectionBuilder};
pub use connection::{HubConnection, HubConnectionState, Subscription};
pub use error::{ArgumentError, ConnectionError, InvokeError, StartError, TransportError};
pub use handler::FromArguments;
pub use retry::{DefaultRetryPolicy, RetryContext, RetryPolicy};
pub use stream::HubStream;
pub use tidings_protocol::{Payload, Protocol, TransportType};
pub use transport::http::BoxError;
