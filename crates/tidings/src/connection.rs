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
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tidings_protocol::{Protocol, TransportType};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::{
    ConnectionError, Principal,
    message::SerializedMessage,
    metrics::TransportMetrics,
    outbox::{self, TrySendError},
    resume::Resume,
};

/// One entry of a connection's outbound queue.
///
/// Kept to the size of one `Bytes` (32 bytes): every message waiting for a
/// connection, and the room its queue keeps after a burst, costs that
/// much. Entries other than a plain frame are rare and boxed.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame already serialized in the connection's protocol (a message
    /// shared with other connections is a clone of the same `Bytes`).
    Frame(Bytes),
    /// A stream item holding a window place, or the final entry.
    Control(Box<Control>),
}

#[derive(Debug)]
pub(crate) enum Control {
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
    /// The final entry.
    pub(crate) fn close(frame: Option<Bytes>) -> Self {
        Outbound::Control(Box::new(Control::Close(frame)))
    }

    /// The frame of the final entry (`Some(None)`: close without a frame),
    /// or `None` if this is not the final entry.
    pub(crate) fn as_close(&mut self) -> Option<Option<Bytes>> {
        match self {
            Outbound::Control(control) => match &mut **control {
                Control::Close(frame) => Some(frame.take()),
                Control::Windowed { .. } => None,
            },
            Outbound::Frame(_) => None,
        }
    }

    /// The bytes to write for this entry; sets `closing` at the final
    /// entry.
    pub(crate) fn into_frame(self, closing: &mut bool) -> Option<Bytes> {
        match self {
            Outbound::Frame(bytes) => Some(bytes),
            Outbound::Control(control) => match *control {
                Control::Windowed { frame, .. } => Some(frame),
                Control::Close(frame) => {
                    *closing = true;
                    frame
                }
            },
        }
    }
}

/// A one-shot signal held inline: the writer must stop at once.
///
/// It has one waiter, the writer of a stateful-reconnect connection, which
/// checks it every time it waits (other writers see the kill through their
/// queue, [`outbox::Sender::kill`]). A waker slot makes that check two atomic
/// operations; a `Notify` (or a `CancellationToken`, which would also cost
/// another allocation) would take a lock to enter and another to leave its
/// list of waiters, on every message.
#[derive(Default)]
struct Kill {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Kill {
    fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.set.load(Ordering::Acquire) {
            return std::task::Poll::Ready(());
        }
        // Registered before the flag is checked again, so that a `set` in
        // between is not missed.
        self.waker.register(cx.waker());
        if self.set.load(Ordering::Acquire) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

/// Why a connection was aborted from outside its own task.
#[derive(Debug, Clone)]
pub(crate) enum AbortReason {
    /// Hub code called `Context::abort`.
    Requested,
    /// Closed from outside with a reason for the client
    /// ([`ConnectionHandle::close`]).
    Closed(Option<String>),
    /// The client did not keep up ([`SlowConsumer`] says which rule).
    SlowConsumer,
    /// The transport's writer failed.
    Transport(String),
}

/// Which part of the slow-consumer rule closed a connection (see
/// `HubOptions::outbound_buffer_capacity` and
/// `HubOptions::transport_send_timeout`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum SlowConsumer {
    /// A message found the outbound queue full.
    QueueFull,
    /// Messages waited, and nothing was written, for this long.
    NoWriteProgress(std::time::Duration),
    /// A stateful-reconnect client acknowledged nothing for this long
    /// while its replay buffer was full.
    NoAcknowledgement(std::time::Duration),
}

impl fmt::Display for SlowConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlowConsumer::QueueFull => f.write_str("outbound queue full"),
            SlowConsumer::NoWriteProgress(after) => {
                write!(f, "no write progress for {after:?}")
            }
            SlowConsumer::NoAcknowledgement(after) => {
                write!(
                    f,
                    "no acknowledgement for {after:?} with a full replay buffer"
                )
            }
        }
    }
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
    tx: outbox::Sender,
    /// Cancelled when the connection must end; the connection task watches
    /// it. A child of the server's shutdown token, so that the task has one
    /// token to watch, its own, rather than a second one shared (and
    /// contended) by every connection.
    abort: CancellationToken,
    /// Cancelled when the writer must stop at once, dropping what is queued
    /// (a slow consumer cannot be given its Close message).
    kill: Kill,
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
    /// The connection's abort token (see `Inner::abort`).
    pub abort: CancellationToken,
}

impl ConnectionHandle {
    pub(crate) fn new(init: ConnectionInit, tx: outbox::Sender) -> Self {
        Self::with_resume(init, tx, None)
    }

    /// A connection that survives the loss of its transport (stateful
    /// reconnect); `resume` is shared with its writer.
    pub(crate) fn with_resume(
        init: ConnectionInit,
        tx: outbox::Sender,
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
                abort: init.abort,
                kill: Kill::default(),
                abort_reason: Mutex::new(None),
                resume,
                metrics: init.metrics,
            }),
        }
    }

    /// The public connection id (what `Clients.Client(id)` targets).
    /// Whether both handles are the same connection (without comparing ids).
    pub(crate) fn is(&self, other: &ConnectionHandle) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

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
    ///
    /// A close request ([`SerializedMessage::close`]) closes the connection
    /// instead.
    pub fn send(&self, message: &Arc<SerializedMessage>) -> bool {
        if message.is_close() {
            self.close(message.close_reason());
            return true;
        }
        // Serialized once per protocol for all recipients (the message
        // caches its frames); each queue holds a clone of the same bytes.
        let Some(frame) = message.frame(self.protocol()) else {
            return false;
        };
        match self.inner.tx.try_send(Outbound::Frame(frame)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.close_slow_consumer(SlowConsumer::QueueFull);
                false
            }
            Err(TrySendError::Closed) => false,
        }
    }

    /// Enqueues a frame of the connection's own protocol, waiting for room.
    /// Used for replies to the connection's own invocations: waiting here
    /// pauses the invocation, and with it the reading of this client only.
    pub(crate) async fn send_frame(&self, frame: Bytes) -> bool {
        self.send_waiting(Outbound::Frame(frame)).await
    }

    async fn send_waiting(&self, entry: Outbound) -> bool {
        // Usually there is room: queued without building the futures that
        // waiting takes (watching the abort token enters and leaves its
        // list of waiters, under a lock each time).
        let entry = match self.inner.tx.try_send(entry) {
            Ok(()) => return true,
            Err(TrySendError::Closed) => return false,
            Err(TrySendError::Full(entry)) => entry,
        };
        tokio::select! {
            sent = self.inner.tx.send(entry) => sent.is_ok(),
            () = self.inner.abort.cancelled() => false,
        }
    }

    /// Like [`send_frame`](Self::send_frame), for a frame that holds `place`
    /// in a window until the writer takes it.
    pub(crate) async fn send_windowed(&self, frame: Bytes, place: OwnedSemaphorePermit) -> bool {
        self.send_waiting(Outbound::Control(Box::new(Control::Windowed {
            frame,
            _place: place,
        })))
        .await
    }

    /// Enqueues the final frame. If the queue is full the client is not
    /// reading anyway; the connection is aborted and the frame dropped.
    pub(crate) fn send_close(&self, frame: Option<Bytes>) {
        if self.inner.tx.try_send(Outbound::close(frame)).is_err() {
            self.close_slow_consumer(SlowConsumer::QueueFull);
        }
    }

    /// Closes a client that does not keep up: its writer stops at once,
    /// dropping what is queued, and the session ends with
    /// `ConnectionError::SlowConsumer`. Logged at WARN once, by whichever
    /// rule caught it first (later calls change nothing).
    pub(crate) fn close_slow_consumer(&self, rule: SlowConsumer) {
        let queued = self.inner.tx.len();
        if self.abort_with(AbortReason::SlowConsumer) {
            tracing::warn!(
                connection_id = %self.id(),
                transport = ?self.transport(),
                %rule,
                queued,
                "closing slow consumer"
            );
        }
    }

    /// Closes the connection from the server side (ASP.NET Core's
    /// `Context.Abort()`): the client gets a Close without error and does not
    /// reconnect.
    pub fn abort(&self) {
        self.abort_with(AbortReason::Requested);
    }

    /// Closes the connection from outside (a REST API, an administrator):
    /// the client gets a Close whose error is `reason`, without reconnect.
    pub fn close(&self, reason: Option<&str>) {
        self.abort_with(AbortReason::Closed(reason.map(str::to_owned)));
    }

    /// Aborts with `reason`; returns whether it was the first reason.
    pub(crate) fn abort_with(&self, reason: AbortReason) -> bool {
        let first = {
            let mut slot = self.inner.abort_reason.lock();
            // The first reason wins: it is the cause, later ones are effects.
            if matches!(reason, AbortReason::SlowConsumer) {
                self.inner.kill.set();
                // A WebSocket writer learns it from its queue, which it
                // waits on anyway (one waker fewer per message).
                self.inner.tx.kill();
            }
            let first = slot.is_none();
            slot.get_or_insert(reason);
            first
        };
        self.inner.abort.cancel();
        first
    }

    /// Resolves once the writer must stop. Only the connection's writer
    /// may wait on it (the signal has room for one waiter).
    pub(crate) async fn killed(&self) {
        std::future::poll_fn(|cx| self.inner.kill.poll(cx)).await
    }

    /// A gate for the session's rarely-firing futures (see [`outbox::Gate`]).
    pub(crate) fn session_gate(&self) -> outbox::Gate {
        self.inner.tx.session_gate()
    }

    pub(crate) fn aborted(&self) -> &CancellationToken {
        &self.inner.abort
    }

    pub(crate) fn abort_reason(&self) -> Option<AbortReason> {
        self.inner.abort_reason.lock().clone()
    }

    /// Whether the connection has been aborted.
    pub fn is_aborted(&self) -> bool {
        self.inner.abort.is_cancelled()
    }
}

impl AbortReason {
    pub(crate) fn into_error(self) -> Option<ConnectionError> {
        match self {
            AbortReason::Requested | AbortReason::Closed(_) => None,
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
