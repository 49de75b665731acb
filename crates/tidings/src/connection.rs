//! [`ConnectionHandle`]: the shared, cheap-to-clone face of one live
//! connection, and its bounded outbound queue.
//!
//! The connection task owns the transport; everything else (the lifetime
//! manager, hub contexts, invocation tasks) holds a `ConnectionHandle` and can
//! only do three things with it: enqueue a message, read its identity, and
//! abort it. The queue is the one place where delivery meets back-pressure,
//! so the slow-consumer policy lives here (see [`ConnectionHandle::send`]).

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use axum::http::HeaderMap;
use bytes::Bytes;
use tidings_protocol::{Protocol, TransportType};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    ConnectionError, Principal, message::SerializedMessage, metrics::TransportMetrics,
    resume::Resume,
};

/// One entry of a connection's outbound queue.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame already serialized in the connection's protocol.
    Frame(Bytes),
    /// A message shared with other connections, serialized on demand.
    Shared(Arc<SerializedMessage>),
    /// A frame holding a place in a bounded window (a server-to-client
    /// stream's `stream_buffer_capacity`); the place frees up when the
    /// writer takes the frame.
    Windowed {
        frame: Bytes,
        _place: OwnedSemaphorePermit,
    },
    /// The last frame (a Close message, or nothing): write it, then close
    /// the transport.
    Close(Option<Bytes>),
}

impl Outbound {
    /// The bytes to write for this entry (a shared message is serialized
    /// in `protocol` now, once for all its recipients); sets `closing` at
    /// the final entry.
    pub(crate) fn into_frame(self, protocol: Protocol, closing: &mut bool) -> Option<Bytes> {
        match self {
            Outbound::Frame(bytes) | Outbound::Windowed { frame: bytes, .. } => Some(bytes),
            Outbound::Shared(message) => message.frame(protocol),
            Outbound::Close(frame) => {
                *closing = true;
                frame
            }
        }
    }
}

/// Why a connection was aborted from outside its own task.
#[derive(Debug, Clone)]
pub(crate) enum AbortReason {
    /// Hub code called `Context::abort`.
    Requested,
    /// The outbound queue overflowed.
    SlowConsumer,
    /// The transport's writer failed.
    Transport(String),
}

/// A live connection as seen by lifetime managers and hub code.
#[derive(Clone)]
pub struct ConnectionHandle {
    inner: Arc<Inner>,
}

struct Inner {
    id: Arc<str>,
    protocol: Protocol,
    transport: TransportType,
    principal: Principal,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    tx: mpsc::Sender<Outbound>,
    /// Cancelled when the connection must end; the connection task watches it.
    abort: CancellationToken,
    /// Cancelled when the writer must stop at once, dropping what is queued
    /// (a slow consumer cannot be given its Close message).
    kill: CancellationToken,
    abort_reason: Mutex<Option<AbortReason>>,
    /// Stateful-reconnect state, for connections that negotiated it.
    resume: Option<Arc<Resume>>,
    /// The counters of the connection's hub and transport.
    metrics: Option<Arc<TransportMetrics>>,
}

pub(crate) struct ConnectionInit {
    pub id: Arc<str>,
    pub protocol: Protocol,
    pub transport: TransportType,
    pub principal: Principal,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub metrics: Option<Arc<TransportMetrics>>,
}

impl ConnectionHandle {
    pub(crate) fn new(init: ConnectionInit, tx: mpsc::Sender<Outbound>) -> Self {
        Self::with_resume(init, tx, None)
    }

    /// A connection that survives the loss of its transport (stateful
    /// reconnect); `resume` is shared with its writer.
    pub(crate) fn with_resume(
        init: ConnectionInit,
        tx: mpsc::Sender<Outbound>,
        resume: Option<Arc<Resume>>,
    ) -> Self {
        ConnectionHandle {
            inner: Arc::new(Inner {
                id: init.id,
                protocol: init.protocol,
                transport: init.transport,
                principal: init.principal,
                query: init.query,
                headers: init.headers,
                tx,
                abort: CancellationToken::new(),
                kill: CancellationToken::new(),
                abort_reason: Mutex::new(None),
                resume,
                metrics: init.metrics,
            }),
        }
    }

    /// The public connection id (what `Clients.Client(id)` targets).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub(crate) fn id_arc(&self) -> &Arc<str> {
        &self.inner.id
    }

    /// The user identifier of the connection's principal.
    pub fn user_id(&self) -> Option<&str> {
        self.inner.principal.user_id()
    }

    /// The connection's principal.
    pub fn principal(&self) -> &Principal {
        &self.inner.principal
    }

    /// The hub protocol the client chose.
    pub fn protocol(&self) -> Protocol {
        self.inner.protocol
    }

    /// The transport carrying the connection.
    pub fn transport(&self) -> TransportType {
        self.inner.transport
    }

    /// The stateful-reconnect state, if the connection uses it.
    pub(crate) fn resume(&self) -> Option<&Arc<Resume>> {
        self.inner.resume.as_ref()
    }

    pub(crate) fn metrics(&self) -> Option<&Arc<TransportMetrics>> {
        self.inner.metrics.as_ref()
    }

    /// Counts one message of `bytes` written to the transport.
    pub(crate) fn record_sent(&self, bytes: usize) {
        if let Some(metrics) = &self.inner.metrics {
            metrics.sent(bytes);
        }
    }

    pub(crate) fn query(&self) -> &[(String, String)] {
        &self.inner.query
    }

    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }

    /// Enqueues a message without waiting.
    ///
    /// This is the slow-consumer policy: if the connection's queue is full,
    /// the client is not keeping up, and it is aborted (closed with
    /// `ConnectionError::SlowConsumer`) rather than allowed to grow the
    /// server's memory or to slow the sender and every other recipient.
    /// Returns whether the message was queued.
    pub fn send(&self, message: &Arc<SerializedMessage>) -> bool {
        match self
            .inner
            .tx
            .try_send(Outbound::Shared(Arc::clone(message)))
        {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(connection_id = %self.id(), "outbound queue full; closing slow consumer");
                self.abort_with(AbortReason::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Enqueues a frame of the connection's own protocol, waiting for room.
    /// Used for replies to the connection's own invocations: waiting here
    /// pauses the invocation, and with it the reading of this client only.
    pub(crate) async fn send_frame(&self, frame: Bytes) -> bool {
        tokio::select! {
            sent = self.inner.tx.send(Outbound::Frame(frame)) => sent.is_ok(),
            () = self.inner.abort.cancelled() => false,
        }
    }

    /// Like [`send_frame`](Self::send_frame), for a frame that holds `place`
    /// in a window until the writer takes it.
    pub(crate) async fn send_windowed(&self, frame: Bytes, place: OwnedSemaphorePermit) -> bool {
        tokio::select! {
            sent = self.inner.tx.send(Outbound::Windowed {
                frame,
                _place: place,
            }) => sent.is_ok(),
            () = self.inner.abort.cancelled() => false,
        }
    }

    /// Enqueues the final frame. If the queue is full the client is not
    /// reading anyway; the connection is aborted and the frame dropped.
    pub(crate) fn send_close(&self, frame: Option<Bytes>) {
        if self.inner.tx.try_send(Outbound::Close(frame)).is_err() {
            self.abort_with(AbortReason::SlowConsumer);
        }
    }

    /// Closes the connection from the server side (ASP.NET Core's
    /// `Context.Abort()`): the client gets a Close without error and does not
    /// reconnect.
    pub fn abort(&self) {
        self.abort_with(AbortReason::Requested);
    }

    pub(crate) fn abort_with(&self, reason: AbortReason) {
        if let Ok(mut slot) = self.inner.abort_reason.lock() {
            // The first reason wins: it is the cause, later ones are effects.
            if matches!(reason, AbortReason::SlowConsumer) {
                self.inner.kill.cancel();
            }
            slot.get_or_insert(reason);
        }
        self.inner.abort.cancel();
    }

    pub(crate) fn killed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.inner.kill.cancelled()
    }

    pub(crate) fn aborted(&self) -> &CancellationToken {
        &self.inner.abort
    }

    pub(crate) fn abort_reason(&self) -> Option<AbortReason> {
        self.inner.abort_reason.lock().ok().and_then(|r| r.clone())
    }

    /// Whether the connection has been aborted.
    pub fn is_aborted(&self) -> bool {
        self.inner.abort.is_cancelled()
    }
}

impl AbortReason {
    pub(crate) fn into_error(self) -> Option<ConnectionError> {
        match self {
            AbortReason::Requested => None,
            AbortReason::SlowConsumer => Some(ConnectionError::SlowConsumer),
            AbortReason::Transport(e) => Some(ConnectionError::Transport(e)),
        }
    }
}

impl fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.inner.id)
            .field("protocol", &self.inner.protocol)
            .field("user_id", &self.user_id())
            .finish_non_exhaustive()
    }
}

impl PartialEq for ConnectionHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for ConnectionHandle {}
