//! [`ConnectionHandle`]: a connection of the connection layer as the hub
//! layer sees it — the [`Connection`] plus the hub protocol its handshake
//! chose, so that a message shared by many recipients is serialized once
//! per protocol and each queue gets the frame of its own.
//!
//! Lifetime managers, hub contexts and invocation tasks hold a
//! `ConnectionHandle`; everything but the protocol (identity, queue, abort)
//! is the underlying [`Connection`]'s, reached through `Deref`.

use std::{fmt, ops::Deref, sync::Arc};

use tidings_protocol::{Protocol, TransportType};

use crate::{
    auth::Principal,
    connections::{
        connection::{AbortReason, Connection, ConnectionInit},
        outbox,
    },
    error::ConnectionError,
    hub::message::SerializedMessage,
};

/// A live hub connection as seen by lifetime managers and hub code.
#[derive(Clone)]
pub struct ConnectionHandle {
    connection: Connection,
    protocol: Protocol,
}

impl ConnectionHandle {
    /// The hub connection carried by `connection`, speaking `protocol`.
    pub(crate) fn new(connection: Connection, protocol: Protocol) -> Self {
        ConnectionHandle {
            connection,
            protocol,
        }
    }

    /// A connection without a transport, whose queue the caller drains
    /// (tests, benchmarks): a WebSocket connection as far as its metadata
    /// goes.
    pub(crate) fn unattached(
        id: &str,
        principal: Principal,
        protocol: Protocol,
        capacity: usize,
    ) -> (ConnectionHandle, outbox::Receiver) {
        let (tx, rx) = outbox::channel(capacity);
        let init = ConnectionInit {
            id: Arc::from(id),
            format: tidings_protocol::TransferFormat::Text,
            transport: TransportType::WebSockets,
            principal,
            query: Vec::new(),
            headers: Default::default(),
            metrics: None,
            abort: Default::default(),
        };
        (
            ConnectionHandle::new(Connection::new(init, tx), protocol),
            rx,
        )
    }

    /// The hub protocol the client chose.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Enqueues a message without waiting.
    ///
    /// This is the slow-consumer policy: if the connection's queue is full,
    /// the client is not keeping up, and it is aborted (closed with
    /// `ConnectionError::SlowConsumer`) rather than allowed to grow the
    /// server's memory or to slow the sender and every other recipient.
    /// Returns whether the message was queued.
    ///
    /// A close request ([`SerializedMessage::close`]) closes the connection
    /// instead.
    pub fn send(&self, message: &Arc<SerializedMessage>) -> bool {
        if message.is_close() {
            self.connection.close(message.close_reason());
            return true;
        }
        // Serialized once per protocol for all recipients (the message
        // caches its frames); each queue holds a clone of the same bytes.
        match (message.frame(self.protocol), message.mark()) {
            (Some(frame), None) => self.connection.try_send(frame),
            (Some(frame), Some(mark)) => self.connection.try_send_marked(frame, mark.clone()),
            (None, _) => false,
        }
    }

    /// Closes the connection from the server side (ASP.NET Core's
    /// `Context.Abort()`): the client gets a Close without error and does not
    /// reconnect.
    pub fn abort(&self) {
        self.connection.abort();
    }

    /// Closes the connection from outside (a REST API, an administrator):
    /// the client gets a Close whose error is `reason`, without reconnect.
    pub fn close(&self, reason: Option<&str>) {
        self.connection.close(reason);
    }
}

impl Deref for ConnectionHandle {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}

/// The error `on_disconnected` is given for an abort, if it is one.
pub(crate) fn abort_error(reason: AbortReason) -> Option<ConnectionError> {
    match reason {
        AbortReason::Requested | AbortReason::Closed(_) | AbortReason::HandedOver => None,
        AbortReason::SlowConsumer => Some(ConnectionError::SlowConsumer),
        AbortReason::Transport(e) => Some(ConnectionError::Transport(e)),
    }
}

impl fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.id())
            .field("protocol", &self.protocol)
            .field("user_id", &self.user_id())
            .finish_non_exhaustive()
    }
}

impl PartialEq for ConnectionHandle {
    fn eq(&self, other: &Self) -> bool {
        self.connection == other.connection
    }
}

impl Eq for ConnectionHandle {}
