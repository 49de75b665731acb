//! # tidings
//!
//! A real-time hub server for axum and tokio that speaks the ASP.NET Core
//! SignalR protocol: the official `@microsoft/signalr` clients (JavaScript,
//! .NET, Java, Python) connect to it unmodified, over WebSockets with the JSON
//! or MessagePack hub protocol.
//!
//! ## A hub
//!
//! A hub is a value whose `async` methods clients invoke by name. Mark an
//! `impl` block with [`#[hub]`](macro@hub):
//!
//! ```
//! use tidings::{Context, HubError, hub};
//!
//! struct Chat;
//!
//! #[hub]
//! impl Chat {
//!     // Clients call it as "SendMessage" (matched case-insensitively).
//!     async fn send_message(&self, cx: &Context, user: String, text: String) -> Result<(), HubError> {
//!         cx.clients().all().send("ReceiveMessage", (user, text)).await?;
//!         Ok(())
//!     }
//!
//!     // Typed arguments and results; a `&Context` parameter is optional.
//!     async fn add(&self, a: i64, b: i64) -> i64 {
//!         a + b
//!     }
//!
//!     #[hub(name = "Fail")]
//!     async fn fail(&self) -> Result<(), HubError> {
//!         // A HubError::new message always reaches the client; other errors
//!         // only with detailed errors enabled.
//!         Err(HubError::new("not today"))
//!     }
//!
//!     #[on_connected]
//!     async fn joined(&self, cx: &Context) -> Result<(), HubError> {
//!         // Arguments are owned ('static): they may be serialized after this returns.
//!         let id = cx.connection_id().to_owned();
//!         cx.clients().caller().send("Connected", (id,)).await?;
//!         Ok(())
//!     }
//! }
//! ```
//!
//! ## Strongly-typed hubs
//!
//! A [`#[client]`](macro@client) trait declares the methods a hub may call
//! on its clients. Each becomes a method of every set of recipients
//! ([`ClientProxy`], [`SingleClientProxy`]), named on the wire in
//! PascalCase (or as `#[client(name = "...")]` says), so that a misspelled
//! method or a wrong argument type is a compile error rather than a
//! message no client handles:
//!
//! ```
//! use serde::Serialize;
//! use tidings::{Context, HubError, hub};
//!
//! #[derive(Serialize)]
//! struct Room { name: String, members: usize }
//!
//! #[tidings::client]
//! trait ChatClient {
//!     fn receive_message(user: &str, message: &str);
//!     fn room_changed(room: &Room);
//!     #[client(name = "ping")]
//!     fn keep_awake();
//!     /// A client result: only on one connection (`caller`, `client(id)`).
//!     fn confirm(question: &str) -> bool;
//! }
//!
//! struct Chat;
//!
//! #[hub(client = ChatClient)]
//! impl Chat {
//!     async fn send_message(&self, cx: &Context, user: String, message: String) -> Result<(), HubError> {
//!         cx.clients().all().receive_message(&user, &message).await?;
//!         cx.clients().others().keep_awake().await?;
//!         if cx.clients().caller().confirm("Tell the room?").await? {
//!             let room = Room { name: "lobby".into(), members: 2 };
//!             cx.clients().group("lobby").room_changed(&room).await?;
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//!
//! The same methods exist on the proxies of a [`HubContext`]; the untyped
//! [`ClientProxy::send`] stays available. Methods whose parameters are
//! all owned types serialize lazily, like `send`; methods with borrowed
//! parameters (`&str`, `&Room`) serialize at once in both hub protocols
//! ([`SerializedArguments`]) so that the caller keeps its values.
//!
//! `#[hub(client = ...)]` also ties the contract to the hub for code
//! generators: [`schema::HubSchema`] describes both sides, and with the
//! `typescript` feature `typescript::TypeScriptModule` writes a
//! TypeScript module with typed wrappers over `@microsoft/signalr`.
//!
//! ## Serving it
//!
//! [`Server::builder`] takes the settings every hub of a server shares
//! once (authenticator, connection limits, allowed origins, metrics,
//! shutdown, default [`HubOptions`], the backplane), then the hubs, each at
//! its path; [`ServerBuilder::hub_with`] lets one hub override any of them.
//! The result is an axum [`Router`](axum::Router) to merge with the
//! application's own routes and layers:
//!
//! ```no_run
//! # use tidings::{HubOptions, Server};
//! # struct Chat;
//! # #[tidings::hub] impl Chat { async fn ping(&self) {} }
//! # async fn run() -> std::io::Result<()> {
//! let server = Server::builder()
//!     .options(HubOptions::default().enable_detailed_errors(true))
//!     .hub("/hubs/chat", Chat)
//!     .build();
//! let push = server.hub_context::<Chat>(); // a HubContext: send from any task
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .merge(server.into_router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! A single hub can also be served by its [`HubEndpoint`]: a router
//! holding `POST /negotiate` and the transport endpoint, nested at the
//! hub's path (`Router::new().nest("/hubs/chat", HubEndpoint::new(Chat).into_router())`).
//!
//! ## HTTP/2 and TLS
//!
//! [`serve()`] runs a router like `axum::serve`, but speaks HTTP/1.1 and
//! HTTP/2 on the same port (h2c by prior knowledge) and, with the `tls`
//! feature and a `TlsConfig`, TLS with ALPN (`h2`, `http/1.1`): a
//! browser then carries all its Server-Sent Events streams on one
//! connection.
//!
//! ## Plain Server-Sent Events
//!
//! The [`sse`] module pushes any `Stream` of serializable items to an
//! `EventSource`, without a hub, with event ids and `Last-Event-ID`
//! resumption ([`sse::EventLog`]).
//!
//! ## Targets
//!
//! [`Context::clients`] and [`HubContext::clients`] choose recipients the way
//! ASP.NET Core's `Clients` does: `all`, `all_except`, `caller`, `others`,
//! `client`, `clients`, `group`, `groups`, `group_except`,
//! `others_in_group`, `user`, `users`. Group membership goes through
//! [`Context::groups`] / [`HubContext::groups`]; a connection leaves all its
//! groups when it disconnects.
//!
//! ## Streaming
//!
//! A `#[hub(stream)]` method returns a `Stream`; its items go to the client
//! as they are produced, and the client cancelling its subscription drops
//! the stream. A [`ClientStream<T>`](ClientStream) parameter receives a
//! stream the client sends (a JavaScript `Subject`):
//!
//! ```
//! use futures_util::Stream;
//! use tidings::{ClientStream, HubError, hub};
//!
//! struct Streams;
//!
//! #[hub]
//! impl Streams {
//!     #[hub(stream)]
//!     async fn countdown(&self, from: u32) -> impl Stream<Item = u32> + use<> {
//!         futures_util::stream::iter((0..=from).rev())
//!     }
//!
//!     async fn longest(&self, mut words: ClientStream<String>) -> Result<String, HubError> {
//!         let mut longest = String::new();
//!         while let Some(word) = words.recv().await? {
//!             if word.len() > longest.len() {
//!                 longest = word;
//!             }
//!         }
//!         Ok(longest)
//!     }
//! }
//! ```
//!
//! [`HubOptions::stream_buffer_capacity`] bounds both directions.
//!
//! A streaming method may take a [`CancellationToken`] parameter (anywhere;
//! it is not one of the invocation's arguments), like ASP.NET Core's
//! `CancellationToken`: it is cancelled when the client cancels the stream
//! (CancelInvocation, e.g. `subscription.dispose()`), when the connection
//! ends, and when the server shuts down. The stream is dropped right after
//! the token is cancelled, so work that must outlive it (cleanup that
//! awaits, a last message) goes into a task that awaits the token:
//!
//! ```
//! use futures_util::{Stream, StreamExt};
//! use tidings::{CancellationToken, Context, hub};
//!
//! struct Ticker;
//!
//! #[hub]
//! impl Ticker {
//!     #[hub(stream)]
//!     async fn ticks(&self, cx: &Context, cancel: CancellationToken) -> impl Stream<Item = u64> + use<> {
//!         let hub = cx.hub_context();
//!         let caller = cx.connection_id().to_owned();
//!         tokio::spawn(async move {
//!             cancel.cancelled().await;
//!             // Reaches the caller if it only cancelled the stream.
//!             let _ = hub.clients().client(caller).send("TicksStopped", ()).await;
//!         });
//!         futures_util::stream::iter(0..).then(|i| async move {
//!             tokio::time::sleep(std::time::Duration::from_secs(1)).await;
//!             i
//!         })
//!     }
//! }
//! ```
//!
//! The method always runs up to returning its stream, even when the cancel
//! arrived right behind the invocation (as ASP.NET Core runs it), and the
//! client gets the stream's Completion.
//!
//! ## Client results
//!
//! [`Clients::client`] and [`Clients::caller`] return a
//! [`SingleClientProxy`], which can also invoke a client method and wait
//! for what its handler returns (ASP.NET Core's `InvokeAsync<T>`), from a
//! hub method or from a [`HubContext`]:
//!
//! ```
//! # use tidings::{Context, HubError};
//! # async fn confirm(cx: &Context, id: String) -> Result<bool, HubError> {
//! let ok: bool = cx.clients().client(id).invoke("Confirm", ("Delete?",)).await?;
//! # Ok(ok) }
//! ```
//!
//! The wait is bounded by [`HubOptions::client_result_timeout`] (30 s) or a
//! per-call [`ClientInvoke::timeout`]; failures are [`InvokeError`]s.
//!
//! ## Behaviour shared with ASP.NET Core
//!
//! * Method lookup is case-insensitive; unknown methods, wrong argument
//!   counts and wrong argument types are answered with the same Completion
//!   errors ASP.NET Core sends; an invocation without id gets no answer.
//! * [`HubOptions`] has ASP.NET Core's defaults: keep-alive 15 s, client
//!   timeout 30 s, handshake timeout 15 s, 32 KiB message limit, one
//!   invocation at a time per client.
//!
//! ## Performance contract
//!
//! * A message to many clients is serialized once per hub protocol
//!   ([`SerializedMessage`]), not once per connection.
//! * Each connection has a bounded outbound queue; a client that does not
//!   read is closed instead of growing memory
//!   ([`HubOptions::outbound_buffer_capacity`]).
//! * Stateful reconnect ([`HubOptions::allow_stateful_reconnects`]) keeps
//!   unacknowledged messages for replay in a buffer bounded in bytes
//!   ([`HubOptions::stateful_reconnect_buffer_size`]); a full buffer pauses
//!   the connection's queue, so the same slow-consumer rule applies.
//! * No lock is held across an `.await`.
//!
//! ## Metrics and tracing
//!
//! A [`Metrics`] registry given to each endpoint
//! ([`HubEndpoint::metrics`]) counts connections (by hub and transport,
//! with the OpenTelemetry SignalR names), messages and bytes both ways and
//! invocation latencies; [`Metrics::router`] serves them to Prometheus at
//! `/metrics` and [`Metrics::snapshot`] gives dashboards the totals. Every
//! invocation runs in an `invocation` tracing span carrying `rpc.service`
//! (the hub's [name](HubEndpoint::name)), `rpc.method` and the connection id,
//! at DEBUG on the target `tidings::invocation` (enable it with
//! `RUST_LOG=info,tidings::invocation=debug`).
//!
//! ## Authentication, authorization and limits
//!
//! An [`Authenticator`] turns each request into a [`Principal`]
//! (`JwtAuthenticator`, with the feature `jwt`: HS256/384/512, RS256, ES256,
//! issuer, audience, expiry);
//! `#[hub(authorize)]` and `#[authorize(roles = "…", policy = "…")]` state
//! what a hub or a method requires ([`Authorize`], named policies from
//! [`HubEndpoint::policy`]). A connection is closed when its credentials
//! expire ([`HubOptions::close_on_authentication_expiration`]). A
//! [`HubFilter`] runs around every invocation ([`RateLimiter`] is one);
//! [`ConnectionLimits`] cap live connections globally and per IP address,
//! and [`HubEndpoint::allowed_origins`] sets CORS and the WebSocket `Origin`
//! allow-list.
//!
//! ## Scale-out
//!
//! Delivery and membership go through a [`LifetimeManager`]; the default is
//! the in-memory [`MemoryLifetimeManager`]. A [`Backplane`] (such as
//! `tidings_redis::RedisBackplane`) gives each hub its lifetime manager and
//! the forwarding between servers ([`Cluster`]: no sticky sessions); given
//! once to [`ServerBuilder::backplane`], it configures both for every hub.

// The two layers: `connections` (negotiate, transports, registries,
// stateful reconnect) knows nothing of hubs; `hub` runs on it. The modules
// below them are shared by both (authentication, errors, metrics, shutdown,
// serving) and name neither layer's items; `tests/layers.rs` checks it.
mod auth;
#[doc(hidden)]
pub mod bench;
mod clock;
#[doc(hidden)]
pub mod conformance;
pub mod connections;
mod error;
mod hub;
#[cfg(feature = "jwt")]
mod jwt;
pub mod metrics;
mod paths;
pub mod schema;
mod serve;
mod server;
mod shutdown;
pub mod sse;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(feature = "typescript")]
pub mod typescript;

pub use auth::{AuthError, Authenticator, Authorize, Principal, bearer_token};
pub use connections::{
    BoxFuture, Connection, ConnectionEndpoint, ConnectionHandler, ConnectionOptions, Journal,
    JournalEntry,
    access::{ConnectionLimits, TrustedProxy, TrustedProxyError},
    cluster::Cluster,
    redirect::NegotiateRedirect,
};
pub use error::{ConnectionError, GroupError, HubError, InvokeError, PresenceError, SendError};
pub use hub::{
    backplane::{Backplane, MemoryBackplane},
    call::{Call, MethodOutput},
    connection::ConnectionHandle,
    context::{
        ClientInvoke, ClientProxy, Clients, Context, Groups, HubContext, Presence, SendFuture,
        SingleClientProxy,
    },
    definition::{Hub, MethodDescriptor, MethodFuture, MethodKind},
    endpoint::HubEndpoint,
    filter::{HubFilter, InvocationInfo, RateLimiter},
    handover::{Handover, Recovered},
    lifetime::{LifetimeManager, Member, MemoryLifetimeManager, Target},
    message::{ClientInvocation, SerializedMessage},
    options::HubOptions,
    typed::{ClientTarget, SerializedArguments, SingleClientTarget},
    upload::ClientStream,
};
#[cfg(feature = "jwt")]
pub use jwt::{JwtAuthenticator, JwtKeyError, NAME_IDENTIFIER_CLAIMS};
pub use metrics::Metrics;
pub use paths::HubPaths;
pub use serve::{Serve, serve};
#[cfg(feature = "tls")]
pub use serve::{TlsConfig, TlsError};
pub use server::{Server, ServerBuilder};
pub use shutdown::Shutdown;
pub use tidings_macros::{client, hub};
pub use tidings_protocol::Protocol;
/// The cancellation token a streaming method can take (see
/// [Streaming](crate#streaming)).
pub use tokio_util::sync::CancellationToken;

/// Items used by code that `#[hub]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::{
        Authorize, Call, CancellationToken, ClientInvoke, ClientProxy, ClientStream, ClientTarget,
        Context, Hub, HubError, MethodDescriptor, MethodFuture, MethodKind, MethodOutput,
        SendFuture, SingleClientTarget,
        hub::typed::{invoke_borrowed, invoke_owned, send_borrowed, send_owned},
        schema::{ClientSchema, Describe, Describer, HubSchema, MethodSchema, Opaque, ParamSchema},
    };
    pub use std::{boxed::Box, result::Result, sync::Arc, vec::Vec};
}
