//! [`Connection`]: the shared, cheap-to-clone face of one live connection
//! of the connection layer, and its bounded outbound queue.
//!
//! The connection task owns the transport; everything else (the
//! application above the connection layer, its tasks) holds a `Connection`
//! and can only do three things with it: enqueue bytes, read its identity,
//! and abort it. The queue is the one place where delivery meets
//! back-pressure, so the slow-consumer policy lives here (see
//! [`Connection::try_send`]).

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
use tidings_protocol::{TransferFormat, TransportType};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Principal,
    connections::{
        outbox::{self, Control, Outbound, TrySendError},
        resume::Resume,
    },
    metrics::TransportMetrics,
};

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
    /// The application asked for it ([`Connection::abort`]).
    Requested,
    /// Closed from outside with a reason for the client
    /// ([`Connection::close`]).
    Closed(Option<String>),
    /// The client did not keep up ([`SlowConsumer`] says which rule).
    SlowConsumer,
    /// The transport's writer failed.
    Transport(String),
    /// The connection moved to another server of the cluster
    /// (`connections::handover`): it ends here without a trace for the
    /// client or the application.
    HandedOver,
}

/// Which part of the slow-consumer rule closed a connection (see
/// `ConnectionOptions::outbound_buffer_capacity` and
/// `ConnectionOptions::transport_send_timeout`).
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

/// One live connection of the connection layer: its identity, its
/// outbound queue and its abort signal. Cheap to clone; every clone is the
/// same connection.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    id: Arc<str>,
    format: TransferFormat,
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

/// What a transport knows of a connection before it starts.
pub(crate) struct ConnectionInit {
    pub id: Arc<str>,
    /// How the transport frames outbound bytes (chosen by the application
    /// when it accepts the connection).
    pub format: TransferFormat,
    pub transport: TransportType,
    pub principal: Principal,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub metrics: Option<Arc<TransportMetrics>>,
    /// The connection's abort token (see `Inner::abort`).
    pub abort: CancellationToken,
}

impl Connection {
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
        Connection {
            inner: Arc::new(Inner {
                id: init.id,
                format: init.format,
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

    /// Whether both handles are the same connection (without comparing ids).
    pub(crate) fn is(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The public connection id.
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

    /// How the transport frames what this connection sends (WebSocket
    /// Text or Binary messages).
    pub fn transfer_format(&self) -> TransferFormat {
        self.inner.format
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

    /// The query pairs of the request that started the connection (without
    /// the access token).
    pub fn query(&self) -> &[(String, String)] {
        &self.inner.query
    }

    /// The headers of the request that started the connection.
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }

    /// Enqueues bytes without waiting.
    ///
    /// This is the slow-consumer policy: if the connection's queue is full,
    /// the client is not keeping up, and it is aborted rather than allowed
    /// to grow the server's memory or to slow the sender and every other
    /// recipient. Returns whether the bytes were queued.
    pub fn try_send(&self, frame: Bytes) -> bool {
        self.try_send_entry(Outbound::Frame(frame))
    }

    /// [`try_send`](Self::try_send) with a mark saying where the frame
    /// came from, which the connection's [`Journal`](crate::connections::Journal)
    /// records with it (a backplane's publisher and number).
    pub fn try_send_marked(&self, frame: Bytes, mark: Bytes) -> bool {
        self.try_send_entry(Outbound::marked(frame, mark))
    }

    fn try_send_entry(&self, entry: Outbound) -> bool {
        match self.inner.tx.try_send(entry) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.close_slow_consumer(SlowConsumer::QueueFull);
                false
            }
            Err(TrySendError::Closed) => false,
        }
    }

    /// Enqueues bytes, waiting for room in the queue: the sender is paused
    /// instead of the client being dropped. False once the connection is
    /// gone.
    pub async fn send(&self, frame: Bytes) -> bool {
        self.send_frame(frame).await
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
    /// `Abort()`).
    pub fn abort(&self) {
        self.abort_with(AbortReason::Requested);
    }

    /// Closes the connection from outside (a REST API, an administrator),
    /// for `reason`.
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

    /// Completes once the connection has been aborted (by the
    /// application, a slow consumer, a failed transport or the server's
    /// shutdown).
    pub async fn closed(&self) {
        self.inner.abort.cancelled().await;
    }

    pub(crate) fn abort_reason(&self) -> Option<AbortReason> {
        self.inner.abort_reason.lock().clone()
    }

    /// Whether the connection has been aborted.
    pub fn is_aborted(&self) -> bool {
        self.inner.abort.is_cancelled()
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("transport", &self.inner.transport)
            .field("user_id", &self.user_id())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Connection {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Connection {}
