//! The HTTP transports: Server-Sent Events and Long Polling, with client
//! messages arriving by `POST` and Long Polling closed by `DELETE`.
//!
//! Unlike a WebSocket, these connections outlive any single request, so
//! each one is an [`HttpConnection`] in the endpoint's registry, keyed by
//! its token. Its connection task (opening + application) is spawned when
//! the first `GET` arrives and reads an inbound channel fed by `POST`s; the
//! outbound queue is drained by the SSE response body, or poll by poll.
//! Removing the registry entry drops the inbound sender, which ends the
//! application's input like a closed socket.

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes as BodyBytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tidings_protocol::TransportType;
use tokio::{
    sync::{Mutex as AsyncMutex, mpsc},
    time::{Instant, sleep, sleep_until},
};
use tokio_util::sync::CancellationToken;

use crate::{
    connections::{
        access::Slot,
        connection::{AbortReason, Connection, ConnectionInit, SlowConsumer},
        handler::{Application, InboundChunk},
        opening::{self, Opened},
        outbox::{self, Outbound},
        registry::Registry,
        served::Served,
    },
    metrics::TransportMetrics,
    serve::ConnectionCloser,
};

/// How many POST bodies may wait for the application before a POST waits.
const INBOUND_CAPACITY: usize = 16;

/// The channel that carries a connection's POST bodies to its application.
/// Made at the first POST or at the first `GET`, whichever comes first: a
/// client may post its handshake before it polls.
pub(crate) type Inbound = (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>);

/// A new [`Inbound`] channel, bounded as every connection's is.
pub(crate) fn inbound_channel() -> Inbound {
    mpsc::channel(INBOUND_CAPACITY)
}

/// One SSE or Long Polling connection, shared by its requests.
pub(crate) struct HttpConnection {
    pub transport: TransportType,
    inbound: Mutex<Option<mpsc::Sender<Bytes>>>,
    outbound: AsyncMutex<outbox::Receiver>,
    /// The current poll; a newer poll cancels it (it answers 204).
    poll: Mutex<CancellationToken>,
    /// Fired once the Close has been delivered: later polls get 204, and
    /// a draining shutdown stops waiting for it.
    finished: CancellationToken,
    /// Ends the connection (DELETE, a dropped SSE stream, no polls).
    pub stop: CancellationToken,
    last_poll: Mutex<Instant>,
    /// What the SSE stream sends when idle, once the opening chose it.
    keep_alive: std::sync::OnceLock<Option<(Duration, Bytes)>>,
    /// The counters of the connection's hub and transport.
    metrics: Option<Arc<TransportMetrics>>,
    /// The user the connection was opened for: later requests must be
    /// from the same user.
    pub user_id: Option<String>,
    /// Ends the HTTP connection of the SSE response, when the server
    /// offers that (see [`ConnectionCloser`]).
    closer: Mutex<Option<ConnectionCloser>>,
}

impl HttpConnection {
    /// Creates the connection and spawns its task. `inbound` holds what
    /// was posted before this first `GET`, if anything was.
    pub(crate) fn start<C: Application>(
        served: &Arc<Served<C>>,
        init: ConnectionInit,
        transport: TransportType,
        (registry, token): (&Registry<Arc<HttpConnection>>, String),
        (slot, inbound): (Option<Slot>, Option<Inbound>),
    ) -> Arc<HttpConnection> {
        let options = &served.options;
        let (in_tx, in_rx) = inbound.unwrap_or_else(inbound_channel);
        let (out_tx, out_rx) = outbox::channel(options.outbound_buffer_capacity);
        let stall = out_rx.stall();
        let connection = Arc::new(HttpConnection {
            transport,
            inbound: Mutex::new(Some(in_tx)),
            outbound: AsyncMutex::new(out_rx),
            poll: Mutex::new({
                // No poll is running yet.
                let idle = CancellationToken::new();
                idle.cancel();
                idle
            }),
            finished: CancellationToken::new(),
            stop: CancellationToken::new(),
            last_poll: Mutex::new(Instant::now()),
            keep_alive: std::sync::OnceLock::new(),
            metrics: init.metrics.clone(),
            user_id: init.principal.user_id().map(str::to_owned),
            closer: Mutex::new(None),
        });
        // Registered before the task starts: the first GET, which comes
        // back through the registry for its later polls, finds it.
        let registered = registry.insert(token, Arc::clone(&connection));
        let task = run(
            Arc::clone(served),
            Arc::clone(&connection),
            init,
            in_rx,
            (out_tx, stall),
        );
        let grace = options.disconnect_timeout;
        let task = async move {
            // The connection counts under the limits until its task ends.
            let _slot = slot;
            task.await;
            // Give the client a chance to collect the final messages, then
            // forget it (the guard removes the registry entry).
            tokio::spawn(async move {
                sleep(grace).await;
                drop(registered);
            });
        };
        tokio::spawn(served.shutdown.tracker().track_future(task));
        connection
    }

    /// Queues a POST body for the application; false if the connection is gone.
    pub(crate) async fn post(&self, body: Bytes) -> bool {
        let sender = self.inbound.lock().clone();
        match sender {
            Some(sender) => sender.send(body).await.is_ok(),
            None => false,
        }
    }

    fn close_inbound(&self) {
        {
            let mut slot = self.inbound.lock();
            slot.take();
        }
    }

    fn touch(&self) {
        {
            let mut t = self.last_poll.lock();
            *t = Instant::now();
        }
    }
}

/// The connection task of an HTTP transport.
async fn run<C: Application>(
    served: Arc<Served<C>>,
    http: Arc<HttpConnection>,
    mut init: ConnectionInit,
    inbound: mpsc::Receiver<Bytes>,
    (outbound, stall): (outbox::Sender, outbox::Stall),
) {
    let options = &served.options;
    let stop = http.stop.clone();
    let mut inbound = tokio_stream_from(inbound, stop.clone());
    let watchdog = watchdog(
        Arc::clone(&http),
        stall,
        (options.disconnect_timeout, options.transport_send_timeout),
    );
    tokio::pin!(watchdog);
    let opened = tokio::select! {
        opened = opening::read(&*served.app, &mut inbound, http.transport) => opened,
        _ = &mut watchdog => Opened::Gone,
    };
    match opened {
        Opened::Accepted(accepted, leftover) => {
            init.format = accepted.format;
            let _ = http.keep_alive.set(accepted.keep_alive);
            let connection = Connection::new(init, outbound);
            if let Some(reply) = accepted.reply {
                connection.send_frame(reply).await;
            }
            let session = served
                .app
                .run(connection.clone(), inbound, leftover, accepted.opened);
            tokio::pin!(session);
            tokio::select! {
                () = &mut session => {}
                // The watchdog closed the inbound channel, or found a slow
                // consumer and the connection is aborted: the application
                // tears down normally. It must not be dropped half-way, or
                // its cleanup would never run.
                watched = &mut watchdog => {
                    if let Watched::Stalled(rule) = watched {
                        connection.close_slow_consumer(rule);
                    }
                    session.await;
                }
            }
            if matches!(connection.abort_reason(), Some(AbortReason::SlowConsumer))
                && let Some(closer) = http.closer.lock().take()
            {
                // The response is not read, so it cannot end: the HTTP
                // connection goes, and with it what hyper and the kernel
                // hold for it.
                closer.close();
            }
            if served.shutdown.is_shutting_down() {
                // The Close waits in the queue for the client's next
                // request. Once this task ends the process may exit (the
                // shutdown waits for connection tasks, not for clients
                // that have yet to poll), so wait a little for it to be
                // collected.
                let collected = async {
                    tokio::select! {
                        () = http.finished.cancelled() => {}
                        () = http.stop.cancelled() => {}
                    }
                };
                let _ = tokio::time::timeout(options.disconnect_timeout, collected).await;
            }
        }
        Opened::Refused(reply) => {
            tracing::debug!("opening refused");
            let _ = outbound.try_send(Outbound::close(reply));
        }
        Opened::Gone => {
            let _ = outbound.try_send(Outbound::close(None));
        }
    }
    http.close_inbound();
}

/// Why the [`watchdog`] ended a connection.
enum Watched {
    /// The transport is gone; the inbound channel is closed.
    Gone,
    /// A slow consumer: the connection must be closed as one.
    Stalled(SlowConsumer),
}

/// Completes when the connection must end from the transport's side: it
/// was stopped (DELETE, a dropped SSE response), a Long Polling client
/// stopped polling for longer than the disconnect timeout, or messages
/// waited with none delivered for the send timeout (the SSE response is
/// not read, or no poll came to collect them).
async fn watchdog(
    http: Arc<HttpConnection>,
    mut stall: outbox::Stall,
    (disconnect_timeout, send_timeout): (Duration, Duration),
) -> Watched {
    // Checked a few times per timeout, so that a stall is caught within a
    // fraction of it past the limit.
    let period = (send_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::select! {
            () = http.stop.cancelled() => break,
            () = sleep(period) => {}
        }
        if stall.check(Instant::now(), send_timeout) {
            return Watched::Stalled(SlowConsumer::NoWriteProgress(send_timeout));
        }
        if http.transport != TransportType::LongPolling {
            continue;
        }
        let polling = !http.poll.lock().is_cancelled();
        let idle = http.last_poll.lock().elapsed();
        if !polling && idle > disconnect_timeout {
            tracing::debug!("long polling client stopped polling");
            break;
        }
    }
    http.close_inbound();
    Watched::Gone
}

/// The inbound channel as the application's chunk stream, ending when stopped.
fn tokio_stream_from(
    mut rx: mpsc::Receiver<Bytes>,
    stop: CancellationToken,
) -> impl futures_util::Stream<Item = InboundChunk> + Unpin + Send + 'static {
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        if stop.is_cancelled() {
            return std::task::Poll::Ready(None);
        }
        rx.poll_recv(cx).map(|item| item.map(Ok))
    }))
}

/// `GET` with `Accept: text/event-stream`: the SSE response. Text only.
/// Until the opening chose a keep-alive, or without one, an idle stream
/// sends nothing.
pub(crate) fn sse(http: Arc<HttpConnection>, closer: Option<ConnectionCloser>) -> Response {
    *http.closer.lock() = closer;
    // When the client goes away the body, and with it this guard, is
    // dropped, which ends the connection.
    let guard = http.stop.clone().drop_guard();
    let stream = futures_util::stream::unfold((http, true, false), move |(http, first, done)| {
        async move {
            if done {
                return None;
            }
            if first {
                // A comment, flushed at once, so the client's EventSource opens.
                let hello = BodyBytes::from_static(b":\r\n");
                return Some((Ok::<_, std::io::Error>(hello), (http, false, false)));
            }
            let mut rx = http.outbound.lock().await;
            let keep_alive = http.keep_alive.get().cloned().flatten();
            let idle = async {
                match keep_alive {
                    Some((interval, ping)) => {
                        sleep_until(Instant::now() + interval).await;
                        ping
                    }
                    None => std::future::pending().await,
                }
            };
            let first_item = tokio::select! {
                item = rx.recv() => item,
                ping = idle => Some(Outbound::Frame(ping)),
                () = http.stop.cancelled() => None,
            };
            let mut out = BytesMut::new();
            let closing = rx.drain(first_item?, |frame, _| {
                http.count_sent(&frame);
                tidings_protocol::sse::write_event(&frame, &mut out);
                out.len() < outbox::MAX_BATCH
            });
            drop(rx);
            if closing {
                http.finished.cancel();
            }
            Some((Ok(out.freeze()), (http, false, closing)))
        }
    });
    let stream = GuardedStream {
        inner: Box::pin(stream),
        _guard: guard,
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("X-Accel-Buffering", "no")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

impl HttpConnection {
    /// Counts one frame as sent.
    fn count_sent(&self, frame: &Bytes) {
        if let Some(metrics) = &self.metrics {
            metrics.sent(frame.len());
        }
    }
}

struct GuardedStream<S> {
    inner: std::pin::Pin<Box<S>>,
    _guard: tokio_util::sync::DropGuard,
}

impl<S: futures_util::Stream> futures_util::Stream for GuardedStream<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// One long poll. `first` is the poll that started the connection; it is
/// answered at once with an empty 200, as ASP.NET Core does.
pub(crate) async fn poll(
    http: Arc<HttpConnection>,
    first: bool,
    poll_timeout: Duration,
) -> Response {
    if first {
        http.touch();
        return empty(StatusCode::OK);
    }
    if http.finished.is_cancelled() || http.stop.is_cancelled() {
        return empty(StatusCode::NO_CONTENT);
    }
    // A newer poll supersedes an older one, which answers 204.
    let token = CancellationToken::new();
    {
        let mut current = http.poll.lock();
        current.cancel();
        *current = token.clone();
    }
    let result = {
        let mut rx = tokio::select! {
            rx = http.outbound.lock() => rx,
            () = token.cancelled() => return empty(StatusCode::NO_CONTENT),
        };
        let first_item = tokio::select! {
            item = rx.recv() => item,
            () = sleep(poll_timeout) => {
                token.cancel();
                http.touch();
                return empty(StatusCode::OK);
            }
            () = token.cancelled() => {
                http.touch();
                return empty(StatusCode::NO_CONTENT);
            }
            () = http.stop.cancelled() => None,
        };
        let mut out = BytesMut::new();
        let closing = match first_item {
            Some(first) => rx.drain(first, |frame, _| {
                http.count_sent(&frame);
                out.put_slice(&frame);
                out.len() < outbox::MAX_BATCH
            }),
            None => true,
        };
        (out, closing)
    };
    token.cancel();
    http.touch();
    let (out, closing) = result;
    if closing {
        http.finished.cancel();
        if out.is_empty() {
            return empty(StatusCode::NO_CONTENT);
        }
    }
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        out.freeze(),
    )
        .into_response()
}

fn empty(status: StatusCode) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Bytes::new(),
    )
        .into_response()
}

/// Ends a Long Polling connection (`DELETE`).
pub(crate) fn delete(http: &HttpConnection) {
    http.stop.cancel();
    {
        let current = http.poll.lock();
        current.cancel();
    }
    http.close_inbound();
}
