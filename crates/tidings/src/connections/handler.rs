//! The seam between the connection layer and what runs on it.
//!
//! The connection layer (negotiate, transports, registries, stateful
//! reconnect) serves an [`Application`]: it asks the application how a new
//! connection opens, from the first bytes the client sent (a hub reads its
//! handshake there), and then hands it the [`Connection`] and the rest of
//! its inbound bytes. The application decides how outbound bytes are
//! framed ([`TransferFormat`]), what the transport sends when idle, and
//! how a stateful connection numbers and acknowledges messages
//! ([`ResumeFraming`]); the connection layer never parses what it carries.
//!
//! [`ConnectionHandler`] is the public face of the seam: a handler of raw
//! connections, accepted at once, bytes in and bytes out.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tidings_protocol::{TransferFormat, TransportType};

use crate::{
    auth::{Denied, Principal},
    connections::{connection::Connection, frozen::Frozen, journal::Journal},
    error::ConnectionError,
};

/// A boxed, `Send` future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a transport yields: a chunk of bytes, or why it failed. The end of
/// the stream is a clean close.
pub type InboundChunk = Result<Bytes, ConnectionError>;

/// The bytes a client sends on one connection, as they arrive (a chunk is
/// a WebSocket message or a POST body, not necessarily one message of the
/// application's). It ends when the client closes the connection or the
/// connection is aborted.
pub type Inbound = Pin<Box<dyn Stream<Item = InboundChunk> + Send>>;

/// A handler of raw connections (ASP.NET Core's `ConnectionHandler`):
/// mounted at a path by a [`ConnectionEndpoint`](crate::connections::ConnectionEndpoint),
/// it gets every connection that negotiates and connects there, over any
/// transport, with authentication, connection limits and clustering done
/// by the connection layer.
///
/// ```
/// use futures_util::StreamExt;
/// use tidings::connections::{Connection, ConnectionHandler, Inbound};
///
/// struct Echo;
///
/// impl ConnectionHandler for Echo {
///     async fn on_connected(&self, connection: Connection, mut inbound: Inbound) {
///         while let Some(Ok(bytes)) = inbound.next().await {
///             if !connection.send(bytes).await {
///                 break;
///             }
///         }
///     }
/// }
/// ```
pub trait ConnectionHandler: Send + Sync + 'static {
    /// Runs one connection: `inbound` yields what the client sends, and
    /// [`Connection::send`] queues what goes back. The connection ends
    /// when this returns (or, from the client's side, when `inbound`
    /// ends).
    fn on_connected(
        &self,
        connection: Connection,
        inbound: Inbound,
    ) -> impl Future<Output = ()> + Send;

    /// How WebSockets carry what this handler sends: Text messages (the
    /// default; the bytes must then be UTF-8) or Binary ones.
    fn transfer_format(&self) -> TransferFormat {
        TransferFormat::Text
    }
}

/// How a new connection opens, decided by the application from the bytes
/// the client has sent so far.
pub(crate) enum Opening<T> {
    /// Not decided yet: wait for more bytes.
    Pending,
    /// The connection starts.
    Accept(Accepted<T>),
    /// The connection is refused: send this reply (if any), then close.
    Refuse(Option<Bytes>),
}

/// An accepted opening: what the transport needs to carry the connection,
/// and what the application keeps for running it.
pub(crate) struct Accepted<T> {
    /// How many of the received bytes the opening used; the rest are the
    /// connection's first inbound bytes.
    pub consumed: usize,
    /// Sent first, in a frame of its own, before anything the application
    /// queues; never numbered or replayed.
    pub reply: Option<Bytes>,
    /// How the transport frames outbound bytes.
    pub format: TransferFormat,
    /// What the transport sends after this long without sending anything.
    pub keep_alive: Option<(Duration, Bytes)>,
    /// Whether the connection may survive the loss of its WebSocket, if it
    /// negotiated stateful reconnect: a new socket presenting its token
    /// takes over, under the same connection id.
    pub resumable: bool,
    /// How a resumable connection numbers, acknowledges and replays
    /// messages (`None`: it does not; what is queued while no socket is
    /// attached waits for the next one).
    pub resume: Option<Arc<dyn ResumeFraming>>,
    /// Handed back to [`Application::run`].
    pub opened: T,
}

/// The application-level messages of stateful reconnect, which the
/// connection layer writes and reads but does not define.
pub(crate) trait ResumeFraming: Send + Sync + 'static {
    /// The message telling the client which sequence id the replay that
    /// follows starts at.
    fn sequence(&self, sequence_id: u64) -> Bytes;
    /// The message acknowledging every client message up to `sequence_id`.
    fn ack(&self, sequence_id: u64) -> Bytes;
    /// A reader of one socket's inbound bytes that finds the client's
    /// acknowledgements.
    fn ack_reader(&self) -> Box<dyn AckReader>;
}

/// Finds acknowledgements in a socket's inbound bytes, chunk by chunk.
pub(crate) trait AckReader: Send + Sync {
    /// Reads `bytes` (the next chunk) and calls `ack` with the sequence id
    /// of every acknowledgement completed in it.
    fn read(&mut self, bytes: &[u8], ack: &mut dyn FnMut(u64));
}

/// The seam: what the connection layer serves. A hub is one; a
/// [`ConnectionHandler`] is another.
pub(crate) trait Application: Send + Sync + 'static {
    /// What an accepted opening leaves for [`run`](Self::run).
    type Opened: Send + 'static;

    /// Checks (and may refine, e.g. choose its user id) the principal of
    /// every request of a connection: negotiate, transport, later polls.
    fn authorize(&self, principal: &mut Principal) -> Result<(), Denied>;

    /// How long a client may take to complete its opening.
    fn opening_timeout(&self) -> Duration;

    /// Decides the opening from `received`, every byte received so far
    /// (empty at first: an application that needs none accepts at once).
    fn open(&self, received: &[u8], transport: TransportType) -> Opening<Self::Opened>;

    /// The reply to an opening that did not complete in time.
    fn opening_expired(&self) -> Option<Bytes>;

    /// Runs an accepted connection to its end; `leftover` are the bytes
    /// that followed the opening. The future owns what it needs (it
    /// borrows nothing), so that a transport can build it in one place and
    /// run it in another.
    fn run<S>(
        self: &Arc<Self>,
        connection: Connection,
        inbound: S,
        leftover: Vec<u8>,
        opened: Self::Opened,
    ) -> impl Future<Output = ()> + Send + use<Self, S>
    where
        S: Stream<Item = InboundChunk> + Unpin + Send + 'static;

    // Handover (see `connections::handover`): an application that can move
    // a live stateful connection to another server of the cluster. The
    // defaults cannot; such connections end with the server.

    /// Whether this application's stateful connections can move to another
    /// server of the cluster when this one shuts down.
    fn hands_over(&self) -> bool {
        false
    }

    /// The old server: what the adopter needs to start receiving for
    /// `connection` before it is taken (`None`: it cannot move).
    fn offer<'a>(&'a self, _connection: &'a Connection) -> BoxFuture<'a, Option<Value>> {
        Box::pin(async { None })
    }

    /// The old server: stop delivering to `connection` here, once
    /// everything an adopter that holds (see [`hold`](Self::hold)) cannot
    /// have received is queued; the application's part of the state the
    /// adopter takes over (`None`: it cannot move).
    fn freeze<'a>(&'a self, _connection: &'a Connection) -> BoxFuture<'a, Option<Value>> {
        Box::pin(async { None })
    }

    /// The adopter: start receiving what is sent to connection `id`,
    /// keeping it aside until the connection runs here. `false`: cannot.
    fn hold<'a>(
        &'a self,
        _id: &'a str,
        _user_id: Option<&'a str>,
        _offer: &'a Value,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }

    /// The adopter: the handover failed; forget what [`hold`](Self::hold) kept.
    fn unhold(&self, _id: &str) {}

    /// The adopter: the opening of an adopted connection, as its first
    /// server accepted it, from the state [`freeze`](Self::freeze) gave.
    fn reopen(&self, _frozen: &Value) -> Option<Accepted<Self::Opened>> {
        None
    }

    /// The old server, after [`freeze`](Self::freeze): a frame the
    /// connection's session queued since (a running invocation's result or
    /// stream item) goes to the connection's new server.
    fn forward<'a>(&'a self, _connection: &'a Connection, _frame: Bytes) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// A journal for the stateful connection `connection`, whose secret
    /// token is `token` (`None`: its messages are not recorded, and it
    /// cannot be resumed after this server dies).
    fn journal(&self, _connection: &Connection, _token: &str) -> Option<Arc<dyn Journal>> {
        None
    }

    /// The adopter: the stateful connection of `token`, whose server died
    /// without handing it over, as its [`journal`](Self::journal) and the
    /// application recorded it; the connection is claimed for this server
    /// (`None`: nothing recorded, or another server claimed it).
    fn recover<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Option<Frozen>> {
        Box::pin(async { None })
    }

    /// The adopter: runs an adopted connection to its end (its opening
    /// hooks ran on its first server; what was held is delivered first).
    fn run_adopted<S>(
        self: &Arc<Self>,
        connection: Connection,
        inbound: S,
        opened: Self::Opened,
        _frozen: Value,
    ) -> impl Future<Output = ()> + Send
    where
        S: Stream<Item = InboundChunk> + Unpin + Send + 'static,
    {
        self.run(connection, inbound, Vec::new(), opened)
    }
}

/// A [`ConnectionHandler`] as an [`Application`]: accepted at once, no
/// keep-alive; resumable without replay (same connection across sockets,
/// when the endpoint allows stateful reconnects).
pub(crate) struct Raw<T>(pub T);

impl<T: ConnectionHandler> Application for Raw<T> {
    type Opened = ();

    fn authorize(&self, _principal: &mut Principal) -> Result<(), Denied> {
        Ok(())
    }

    fn opening_timeout(&self) -> Duration {
        // Never waited for: the opening needs no bytes.
        Duration::from_secs(15)
    }

    fn open(&self, _received: &[u8], _transport: TransportType) -> Opening<()> {
        Opening::Accept(Accepted {
            consumed: 0,
            reply: None,
            format: self.0.transfer_format(),
            keep_alive: None,
            resumable: true,
            resume: None,
            opened: (),
        })
    }

    fn opening_expired(&self) -> Option<Bytes> {
        None
    }

    fn run<S>(
        self: &Arc<Self>,
        connection: Connection,
        inbound: S,
        leftover: Vec<u8>,
        (): (),
    ) -> impl Future<Output = ()> + Send + use<T, S>
    where
        S: Stream<Item = InboundChunk> + Unpin + Send + 'static,
    {
        let this = Arc::clone(self);
        async move {
            let first = (!leftover.is_empty()).then(|| Ok(Bytes::from(leftover)));
            // The handler's input ends when the connection is aborted, so
            // that a handler waiting for input learns of it.
            let aborted = connection.aborted().clone();
            let inbound: Inbound = Box::pin(
                futures_util::stream::iter(first)
                    .chain(inbound)
                    .take_until(async move { aborted.cancelled_owned().await }),
            );
            this.0.on_connected(connection.clone(), inbound).await;
            // Ends the transport once what the handler queued is written.
            connection.send_close(None);
        }
    }
}
