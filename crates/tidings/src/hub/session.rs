//! The hub session: everything between a transport's first byte and its
//! last, independent of which transport carries the bytes.
//!
//! A transport hands the session a stream of inbound chunks and spawns a
//! writer that drains the connection's outbound queue. The session then
//! owns the connection for its whole life: handshake, registration with the
//! lifetime manager, `on_connected`, the read loop with its timers and
//! invocation tasks, and the teardown (Close message, leaving groups,
//! `on_disconnected`). Invocation tasks live in a `JoinSet` owned by the
//! session, so none outlives its connection.

use std::{collections::HashMap, sync::Arc, task::Poll};

use futures_util::{FutureExt, Stream, StreamExt};
use tidings_protocol::{
    Close, DecodeError, HubMessage, Invocation, MessageDecoder,
    resume::{InboundSequence, SequenceAhead},
};
use tokio::{
    sync::Semaphore,
    task::JoinSet,
    time::{Instant, sleep_until},
};

use crate::{
    clock::far_future,
    connections::{connection::AbortReason, handler::InboundChunk},
    error::ConnectionError,
    hub::{
        connection::{ConnectionHandle, abort_error},
        context::{Context, InvocationSlot, Scope},
        definition::{Hub, MethodKind},
        dispatch::{self, Prepared},
        filter::InvocationInfo,
        handler::{Filters, HubHandler},
        message::encode,
        upload::{UploadItem, Uploads},
    },
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

/// Why the read loop ended.
enum End {
    /// The client sent a Close message (with its error, if any).
    ClientClosed(Option<String>),
    /// The transport ended cleanly.
    TransportClosed,
    /// The transport failed (its error already says so).
    TransportFailed(ConnectionError),
    /// Nothing arrived within the client timeout.
    ClientTimeout,
    /// Unreadable input, or a message over the size limit.
    InvalidData(DecodeError),
    /// A message that breaks the protocol (e.g. an impossible Sequence).
    ProtocolViolation(&'static str),
    /// Aborted from outside the read loop.
    Aborted(Option<AbortReason>),
    /// The server is shutting down.
    Shutdown,
    /// `on_connected` failed with this error text (already formatted).
    OnConnectedFailed(String),
    /// The credentials of the connection expired.
    AuthenticationExpired,
}

impl End {
    /// The `signalr.connection.status` of the ending, as ASP.NET Core
    /// reports it (only timeouts and shutdowns are told apart), and
    /// `slow_consumer` for a client closed for not keeping up.
    fn status(&self) -> &'static str {
        match self {
            End::ClientTimeout => "timeout",
            End::Shutdown | End::Aborted(Some(AbortReason::HandedOver)) => "app_shutdown",
            End::Aborted(Some(AbortReason::SlowConsumer)) => "slow_consumer",
            _ => "normal_closure",
        }
    }

    /// The Close message to send and the error to hand to `on_disconnected`.
    fn into_parts(self, detailed: bool) -> (Option<Close>, Option<ConnectionError>) {
        fn with_error(error: &ConnectionError, detailed: bool) -> Close {
            let mut text = "Connection closed with an error.".to_owned();
            if detailed || error.always_shown() {
                text.push(' ');
                text.push_str(&error.to_string());
            }
            Close {
                error: Some(text),
                allow_reconnect: true,
            }
        }
        let reconnect = Close {
            error: None,
            allow_reconnect: true,
        };
        match self {
            End::ClientClosed(error) => (
                Some(Close::default()),
                error.map(ConnectionError::ClosedByClient),
            ),
            End::TransportClosed => (Some(reconnect), None),
            End::TransportFailed(error) => (Some(reconnect), Some(error)),
            End::ClientTimeout => {
                let error = ConnectionError::ClientTimeout;
                (Some(with_error(&error, detailed)), Some(error))
            }
            End::InvalidData(e) => {
                let error = ConnectionError::InvalidData(e.to_string());
                (Some(with_error(&error, detailed)), Some(error))
            }
            End::ProtocolViolation(text) => {
                let error = ConnectionError::InvalidData(text.to_owned());
                (Some(with_error(&error, detailed)), Some(error))
            }
            End::Aborted(Some(AbortReason::Closed(reason))) => (
                Some(Close {
                    error: reason,
                    allow_reconnect: false,
                }),
                None,
            ),
            End::Aborted(reason) => match reason.and_then(abort_error) {
                // Context::abort(): a plain Close, no reconnect.
                None => (Some(Close::default()), None),
                // A slow consumer or a dead transport cannot take a Close.
                Some(error) => (None, Some(error)),
            },
            End::Shutdown => (Some(reconnect), None),
            End::AuthenticationExpired => {
                // The client may come back with fresh credentials.
                let error = ConnectionError::AuthenticationExpired;
                (Some(with_error(&error, detailed)), Some(error))
            }
            End::OnConnectedFailed(text) => (
                Some(Close {
                    error: Some(text.clone()),
                    allow_reconnect: false,
                }),
                Some(ConnectionError::OnConnected(text)),
            ),
        }
    }
}

/// How long the invocations and streams of a connection that moved to
/// another server may go on here, their output forwarded to it.
const MOVED_TASKS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How a session starts.
pub(crate) enum Start {
    /// A new connection: the bytes that followed its handshake.
    Opened(Vec<u8>),
    /// A connection handed over by another server of the cluster: its
    /// lifetime manager registered it already, and `on_connected` ran on
    /// the first server.
    Adopted,
}

/// Runs an accepted connection to its end.
pub(crate) async fn run<H, S>(
    handler: Arc<HubHandler<H>>,
    connection: ConnectionHandle,
    mut inbound: S,
    start: Start,
) where
    H: Hub,
    S: Stream<Item = InboundChunk> + Unpin,
{
    let options = &handler.shared.options;
    let detailed = options.enable_detailed_errors;
    let cx = Context::new(connection.clone(), Arc::clone(&handler.shared));
    let lifetime = &handler.shared.lifetime;

    let (leftover, adopted) = match start {
        Start::Opened(leftover) => (leftover, false),
        Start::Adopted => (Vec::new(), true),
    };
    if !adopted {
        lifetime.on_connected(&connection).await;
    }
    tracing::debug!(connection_id = %connection.id(), protocol = %connection.protocol(), adopted, "connected");
    let started = Instant::now();
    if let Some(metrics) = connection.metrics() {
        metrics.connected();
    }

    // Client results are refused inside on_connected: this connection is
    // not read until it returns, so no answer could arrive.
    let hook_cx = cx.with_scope(Scope::OnConnected);
    let connected = if adopted {
        Ok(())
    } else {
        Arc::clone(&handler.hub).on_connected(hook_cx).await
    };
    let end = match connected {
        Err(error) => {
            let mut text = "Connection closed with an error.".to_owned();
            if let Some(detail) = error.detail(detailed) {
                text.push(' ');
                text.push_str(&detail);
            }
            End::OnConnectedFailed(text)
        }
        Ok(()) => {
            let mut reader = Reader {
                handler: &handler,
                cx: &cx,
                decoder: MessageDecoder::new(
                    connection.protocol(),
                    options.maximum_receive_message_size,
                ),
                slots: None,
                tasks: None,
                streams: HashMap::new(),
                uploads: Uploads::default(),
                timeout_armed: false,
                // An adopted connection continues the numbering of the
                // client's messages where its first server left it.
                sequence: match connection.resume() {
                    Some(resume) if adopted => InboundSequence::resume_after(resume.received()),
                    _ => InboundSequence::default(),
                },
            };
            reader.decoder.push(&leftover);
            reader.received_bytes(leftover.len());
            let end = reader.read_loop(&mut inbound).await;
            if matches!(end, End::Aborted(Some(AbortReason::HandedOver))) {
                // Moved to another server: what runs here still (results,
                // stream items) is forwarded to it, for a while.
                let running = async {
                    if let Some(tasks) = &mut reader.tasks {
                        while tasks.join_next().await.is_some() {}
                    }
                };
                if tokio::time::timeout(MOVED_TASKS_GRACE, running)
                    .await
                    .is_err()
                {
                    tracing::debug!(connection_id = %connection.id(), "invocations of a moved connection cut short");
                }
            }
            // Running streams learn that their connection ended (however
            // it ended: disconnect, abort, shutdown) through their
            // cancellation tokens, before their tasks go with the reader.
            for token in reader.streams.values() {
                token.cancel();
            }
            end
        }
    };
    if let Some(metrics) = connection.metrics() {
        metrics.disconnected(started.elapsed(), end.status());
    }

    if matches!(end, End::Aborted(Some(AbortReason::HandedOver))) {
        // The connection lives on another server now: no Close, no hooks,
        // and the lifetime manager already let it go.
        tracing::debug!(connection_id = %connection.id(), "moved to another server");
        return;
    }
    // As in ASP.NET Core, a hub whose on_connected failed never connected:
    // it is closed and forgotten, but its on_disconnected does not run.
    let connected = !matches!(end, End::OnConnectedFailed(_));
    let (close, error) = end.into_parts(detailed);
    let frame = close.map(|close| encode(connection.protocol(), &HubMessage::Close(close)));
    connection.send_close(frame);
    tracing::debug!(connection_id = %connection.id(), error = ?error, "disconnected");

    lifetime.on_disconnected(&connection).await;
    if !connected {
        return;
    }
    for filter in handler.filters.iter() {
        filter.disconnected(&cx);
    }
    Arc::clone(&handler.hub).on_disconnected(cx, error).await;
}

/// What an ended invocation task leaves to clean up.
#[derive(Default)]
struct Finished {
    /// The id of its server-to-client stream.
    stream: Option<String>,
    /// The owner key of its client-to-server streams.
    uploads: Option<u64>,
}

/// The read side of one connection.
struct Reader<'a, H: Hub> {
    handler: &'a Arc<HubHandler<H>>,
    cx: &'a Context,
    decoder: MessageDecoder,
    /// `MaximumParallelInvocationsPerClient`: a permit per running
    /// invocation. Made at the first invocation, like `tasks`: a
    /// connection that never invokes anything (an idle listener) holds
    /// neither allocation.
    slots: Option<Arc<Semaphore>>,
    /// Invocation tasks; each says what to clean up when it ends.
    tasks: Option<JoinSet<Finished>>,
    /// Running server-to-client streams, by invocation id.
    streams: HashMap<String, CancellationToken>,
    /// Open client-to-server streams, by stream id.
    uploads: Uploads,
    /// The client timeout starts with the client's first Ping, as in ASP.NET
    /// Core, so that clients that never ping are not cut off.
    timeout_armed: bool,
    /// Numbering of the client's messages (stateful reconnect only).
    sequence: InboundSequence,
}

/// Which of the session's rarely-firing futures fired.
enum Side {
    Stop,
    Timeout,
    Expired,
}

impl<H: Hub> Reader<'_, H> {
    async fn read_loop<S>(&mut self, inbound: &mut S) -> End
    where
        S: Stream<Item = InboundChunk> + Unpin,
    {
        let connection = self.cx.connection().clone();
        // A connection that moves to another server when this one shuts
        // down outlives the shutdown here until it is taken.
        let shutdown = match connection.resume() {
            Some(resume) if resume.moves_on_shutdown() => CancellationToken::new(),
            _ => self.handler.shutdown.token().clone(),
        };
        let client_timeout = self.handler.shared.options.client_timeout_interval;
        let timeout = sleep_until(far_future());
        tokio::pin!(timeout);
        let expires = self
            .handler
            .shared
            .options
            .close_on_authentication_expiration
            .then(|| connection.principal().expires_at())
            .flatten();
        // Boxed, and only for connections whose credentials expire: an
        // idle connection's task stays as small as it was.
        let mut expiry = expires.map(|at| {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            Box::pin(sleep_until(Instant::now() + left))
        });
        let mut last_activity = Instant::now();
        let mut timer_set = false;
        // Made once: a wait for cancellation made anew on every pass would
        // enter and leave the token's list of waiters (a lock each) per
        // message.
        let stop = connection.aborted().cancelled();
        tokio::pin!(stop);
        let mut gate = connection.session_gate();
        loop {
            // Dispatch everything already buffered before reading more.
            let mut dispatched = false;
            loop {
                match self.decoder.next_message() {
                    Ok(Some(message)) => {
                        if let Some(metrics) = connection.metrics() {
                            metrics.received(1, 0);
                        }
                        match self.admit(&message) {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(end) => return end,
                        }
                        dispatched = true;
                        // Boxed: an idle connection's task then does not
                        // reserve room for handling a message.
                        if let Some(end) = Box::pin(self.handle(message, &shutdown)).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => return End::InvalidData(error),
                }
            }
            if dispatched {
                // Time spent dispatching (possibly waiting on back-pressure,
                // with reading paused) is not the client's silence; ASP.NET
                // Core stops the client timeout while it dispatches too.
                last_activity = Instant::now();
            }
            // Set once when armed; later it is only pushed back when it
            // fires early (a reset per message would lock the timer wheel).
            if self.timeout_armed && !timer_set {
                timeout.as_mut().reset(last_activity + client_timeout);
                timer_set = true;
                gate.arm();
            }
            // The abort token, the client timeout and the credentials'
            // expiry are polled only after one of them woke the task (a
            // poll of the token alone takes two locks of its own).
            let side = std::future::poll_fn(|cx| {
                let Some(waker) = gate.open(cx) else {
                    return Poll::Pending;
                };
                let cx = &mut std::task::Context::from_waker(&waker);
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Side::Stop);
                }
                if timer_set && timeout.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Side::Timeout);
                }
                match expiry.as_mut().map(|expiry| expiry.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Side::Expired),
                    _ => Poll::Pending,
                }
            });
            tokio::select! {
                biased;
                side = side => match side {
                    // The abort token is a child of the shutdown token: one
                    // token covers both.
                    Side::Stop => return stopped(&connection, &shutdown),
                    Side::Timeout => {
                        let due = last_activity + client_timeout;
                        if Instant::now() < due {
                            timeout.as_mut().reset(due);
                            gate.arm();
                        } else {
                            return End::ClientTimeout;
                        }
                    }
                    Side::Expired => return End::AuthenticationExpired,
                },
                Some(done) = join_next(&mut self.tasks), if self.tasks.as_ref().is_some_and(|t| !t.is_empty()) => {
                    if let Ok(done) = done {
                        self.finished(done);
                    }
                }
                chunk = inbound.next() => match chunk {
                    None => return End::TransportClosed,
                    Some(Err(error)) => return End::TransportFailed(error),
                    Some(Ok(bytes)) => {
                        last_activity = Instant::now();
                        if connection.resume().is_some_and(|r| r.take_reattached()) {
                            // A new socket took over: a message cut short on
                            // the old one is gone (the client replays it).
                            self.decoder = MessageDecoder::new(
                                connection.protocol(),
                                self.handler.shared.options.maximum_receive_message_size,
                            );
                            self.sequence.reattached();
                        }
                        self.received_bytes(bytes.len());
                        self.decoder.push(&bytes);
                    }
                },
            }
        }
    }

    /// Cleans up after an ended invocation.
    fn finished(&mut self, done: Finished) {
        if let Some(id) = done.stream {
            self.streams.remove(&id);
        }
        if let Some(owner) = done.uploads {
            // Streams the client left open end with the invocation; later
            // items for them are ignored.
            self.uploads.close_owner(owner);
        }
    }

    fn received_bytes(&self, bytes: usize) {
        if let Some(metrics) = self.cx.connection().metrics() {
            metrics.received(0, bytes);
        }
    }

    /// Stateful reconnect: consumes Ack and Sequence, and filters out
    /// client messages already processed before a reconnect. `Ok(false)`
    /// skips the message. Without stateful reconnect every message passes
    /// (and Ack/Sequence are ignored by `handle`, as in ASP.NET Core).
    fn admit(&mut self, message: &HubMessage) -> Result<bool, End> {
        let Some(resume) = self.cx.connection().resume() else {
            return Ok(true);
        };
        match message {
            HubMessage::Ack { sequence_id } => {
                resume.ack(*sequence_id);
                Ok(false)
            }
            HubMessage::Sequence { sequence_id } => {
                self.sequence
                    .reset(*sequence_id)
                    .map_err(|SequenceAhead| End::ProtocolViolation(SequenceAhead::MESSAGE))?;
                Ok(false)
            }
            message if message.is_trackable() => {
                let new = self.sequence.accept().is_new();
                if new {
                    resume.set_received(self.sequence.latest());
                }
                Ok(new)
            }
            _ => Ok(true),
        }
    }

    /// Handles one message; `Some` ends the connection.
    async fn handle(&mut self, message: HubMessage, shutdown: &CancellationToken) -> Option<End> {
        match message {
            HubMessage::Invocation(invocation) => self.invoke(invocation, false, shutdown).await,
            HubMessage::StreamInvocation(invocation) => {
                self.invoke(invocation, true, shutdown).await
            }
            HubMessage::Ping => {
                self.timeout_armed = true;
                None
            }
            HubMessage::Close(close) => Some(End::ClientClosed(close.error)),
            HubMessage::CancelInvocation(cancel) => {
                // Unknown ids are ignored, as in ASP.NET Core. The entry stays
                // until the stream's task ends (`finished`), so an id is not
                // reused while its stream still runs, and the ending stream
                // cannot remove a successor's entry.
                if let Some(token) = self.streams.get(&cancel.invocation_id) {
                    token.cancel();
                }
                None
            }
            HubMessage::StreamItem(item) => {
                let id = item.invocation_id;
                self.feed_upload(&id, UploadItem::Item(item.item), shutdown)
                    .await
            }
            HubMessage::Completion(completion) => {
                let id = completion.invocation_id;
                let Some(sender) = self.uploads.remove(&id) else {
                    // Not one of the client's streams: the answer to a
                    // client result (the manager ignores ids it did not ask).
                    let completion = tidings_protocol::Completion {
                        invocation_id: id,
                        ..completion
                    };
                    let connection_id = self.cx.connection_id();
                    self.handler
                        .shared
                        .lifetime
                        .set_connection_result(connection_id, completion)
                        .await;
                    return None;
                };
                match completion.result {
                    // Dropping the sender ends the stream once the method
                    // has read what is buffered.
                    tidings_protocol::CompletionResult::Error(error) => {
                        let sent = self
                            .until_end(sender.send(UploadItem::Error(error)), shutdown)
                            .await;
                        sent.err()
                    }
                    _ => None,
                }
            }
            // Consumed by `admit` on stateful-reconnect connections; they
            // mean nothing on others (ASP.NET Core ignores them too).
            HubMessage::Ack { .. } | HubMessage::Sequence { .. } => None,
        }
    }

    /// Hands one item to an upload stream, waiting while its buffer is full
    /// (reading from this client pauses meanwhile). Unknown ids are ignored.
    async fn feed_upload(
        &mut self,
        id: &str,
        item: UploadItem,
        shutdown: &CancellationToken,
    ) -> Option<End> {
        let sender = self.uploads.sender(id)?;
        match self.until_end(sender.send(item), shutdown).await {
            Ok(Ok(())) => None,
            // The method stopped reading this stream: forget it.
            Ok(Err(_)) => {
                self.uploads.remove(id);
                None
            }
            Err(end) => Some(end),
        }
    }

    /// Awaits `future` unless the connection is aborted or the server shuts
    /// down first.
    async fn until_end<F: std::future::Future>(
        &self,
        future: F,
        shutdown: &CancellationToken,
    ) -> Result<F::Output, End> {
        let connection = self.cx.connection();
        tokio::select! {
            output = future => Ok(output),
            () = connection.aborted().cancelled() => Err(stopped(connection, shutdown)),
        }
    }

    async fn invoke(
        &mut self,
        invocation: Invocation,
        streaming: bool,
        shutdown: &CancellationToken,
    ) -> Option<End> {
        let received = Instant::now();
        let connection = self.cx.connection();
        let detailed = self.handler.shared.options.enable_detailed_errors;
        let span = invocation_span(&self.handler.shared.name, connection, &invocation);
        let after = AfterCall::new(&self.handler.filters, self.cx, &invocation);
        if let Some(after) = &after {
            let info = after.info();
            for filter in after.filters.iter() {
                match self.until_end(filter.before(&info), shutdown).await {
                    Err(end) => return Some(end),
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        let text = dispatch::error_text(&invocation.target, &error, detailed);
                        after.run(Err(&text));
                        reject(connection, invocation.invocation_id, text).await;
                        return None;
                    }
                }
            }
        }
        let authorization = (self.cx.user(), &self.handler.policies);
        let method = match dispatch::prepare(
            &self.handler.methods,
            &invocation,
            streaming,
            detailed,
            authorization,
        ) {
            Prepared::Run(method) => method,
            Prepared::Reject(text) => {
                if let Some(after) = &after {
                    after.run(Err(&text));
                }
                reject(connection, invocation.invocation_id, text).await;
                return None;
            }
        };
        if method.kind == MethodKind::Stream {
            // Streams do not take an invocation slot (as in ASP.NET Core).
            // A stream invocation without an id cannot be answered.
            let id = invocation.invocation_id.clone()?;
            if self.streams.contains_key(&id) {
                let text = format!("Invocation ID '{id}' is already in use.");
                let completion = tidings_protocol::Completion::error(id, text);
                let frame = encode(connection.protocol(), &HubMessage::Completion(completion));
                connection.send_frame(frame).await;
                return None;
            }
            let cancel = CancellationToken::new();
            self.streams.insert(id.clone(), cancel.clone());
            let (owner, uploads) = self.open_uploads(&invocation);
            let hub = Arc::clone(&self.handler.hub);
            let cx = self.cx.clone();
            if let Some(metrics) = &self.handler.shared.metrics {
                metrics.stream_started();
            }
            self.tasks.get_or_insert_with(JoinSet::new).spawn(
                async move {
                    let outcome =
                        dispatch::run_stream(hub, method, cx, invocation, uploads, cancel).await;
                    if let Some(after) = after {
                        // Failed if the stream's Completion carried an error,
                        // whether it failed at once or mid-way.
                        after.run(outcome.as_ref().map(|_| ()).map_err(String::as_str));
                    }
                    Finished {
                        stream: Some(id),
                        uploads: owner,
                    }
                }
                .instrument(span),
            );
            return None;
        }
        // Methods fed by client streams do not take a slot either: they run
        // as long as the client streams, and would otherwise hold up every
        // other call (ASP.NET Core does the same).
        let permit = if method.stream_params > 0 {
            None
        } else {
            // When every slot is taken, stop reading this client until one
            // frees up: back-pressure, never an error (as in ASP.NET Core).
            // A free slot is taken without the futures that waiting needs.
            let handler = self.handler;
            let slots = self.slots.get_or_insert_with(|| {
                let parallel = handler
                    .shared
                    .options
                    .maximum_parallel_invocations_per_client;
                Arc::new(Semaphore::new(parallel))
            });
            match Arc::clone(slots).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(tokio::sync::TryAcquireError::Closed) => return None,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    let slots = Arc::clone(slots);
                    match self.until_end(slots.acquire_owned(), shutdown).await {
                        Ok(permit) => Some(permit.ok()?),
                        Err(end) => return Some(end),
                    }
                }
            }
        };
        let (owner, uploads) = self.open_uploads(&invocation);
        let hub = Arc::clone(&self.handler.hub);
        // The method's context can give the slot up while it waits for a
        // client result; the task frees it when the answer is queued.
        let slot = permit.map(InvocationSlot::new);
        let cx = match &slot {
            Some(slot) => self.cx.with_scope(Scope::Invocation(Arc::clone(slot))),
            None => self.cx.clone(),
        };
        let task = async move {
            let connection = cx.connection().clone();
            let reply = dispatch::run_unary(hub, method, cx, invocation, uploads).await;
            let failure = match &reply {
                Some(HubMessage::Completion(tidings_protocol::Completion {
                    result: tidings_protocol::CompletionResult::Error(text),
                    ..
                })) => Some(text.clone()),
                _ => None,
            };
            let failed = failure.is_some();
            if let Some(reply) = reply {
                let frame = encode(connection.protocol(), &reply);
                connection.send_frame(frame).await;
            }
            if let Some(after) = after {
                after.run(failure.as_deref().map_or(Ok(()), Err));
            }
            // Through the connection's handle (which the task owns
            // anyway): a clone of the hub's recorders would take and
            // drop a reference on each, shared by every connection, on
            // every call.
            if let Some(metrics) = connection.metrics() {
                metrics.invocation(received.elapsed(), !failed);
            }
            if let Some(slot) = slot {
                slot.release();
            }
            Finished {
                stream: None,
                uploads: owner,
            }
        };
        // Entering a disabled span still costs a little on every poll.
        let mut task: std::pin::Pin<Box<dyn Future<Output = Finished> + Send>> =
            if span.is_disabled() {
                Box::pin(task)
            } else {
                Box::pin(task.instrument(span))
            };
        // Most methods finish without waiting for anything (or only for
        // room in this connection's own queue): polled once here, such a
        // call is answered without spawning a task, and the answer is
        // queued before the next message is read. A method that does wait
        // continues as a task of its own, so that reading goes on (it may
        // be waiting for a client result, or for a stream this client
        // feeds). The first poll uses a no-op waker; a spawned task is
        // polled at once, which registers its real waker.
        match (&mut task).now_or_never() {
            Some(done) => self.finished(done),
            None => {
                self.tasks.get_or_insert_with(JoinSet::new).spawn(task);
            }
        }
        None
    }

    /// Opens the invocation's client-to-server streams, if it has any.
    fn open_uploads(
        &mut self,
        invocation: &Invocation,
    ) -> (Option<u64>, crate::hub::call::UploadReceivers) {
        if invocation.stream_ids.is_empty() {
            return (None, Vec::new());
        }
        let capacity = self.handler.shared.options.stream_buffer_capacity;
        let (owner, receivers) = self.uploads.open(&invocation.stream_ids, capacity);
        (Some(owner), receivers)
    }
}

/// The next invocation task to end; never, while there are none.
async fn join_next(
    tasks: &mut Option<JoinSet<Finished>>,
) -> Option<Result<Finished, tokio::task::JoinError>> {
    match tasks {
        Some(tasks) => tasks.join_next().await,
        None => std::future::pending().await,
    }
}

/// Why the connection's abort token was cancelled: an abort (which gives
/// its reason before cancelling) or the server's shutdown (which cancels
/// the token as its parent).
fn stopped(connection: &ConnectionHandle, shutdown: &CancellationToken) -> End {
    match connection.abort_reason() {
        None if shutdown.is_cancelled() => End::Shutdown,
        reason => End::Aborted(reason),
    }
}

/// Answers an invocation refused before it ran (if it wants an answer).
async fn reject(connection: &ConnectionHandle, id: Option<String>, text: String) {
    if let Some(id) = id {
        let completion = tidings_protocol::Completion::error(id, text);
        let frame = encode(connection.protocol(), &HubMessage::Completion(completion));
        connection.send_frame(frame).await;
    }
}

/// What the hub filters' `after` needs of an invocation, kept past the
/// point where the invocation is handed to its method. Only built when the
/// hub has filters, so hubs without any pay nothing.
struct AfterCall {
    filters: Filters,
    cx: Context,
    target: String,
    invocation_id: Option<String>,
    arguments: usize,
}

impl AfterCall {
    fn new(filters: &Filters, cx: &Context, invocation: &Invocation) -> Option<Self> {
        (!filters.is_empty()).then(|| AfterCall {
            filters: Arc::clone(filters),
            cx: cx.clone(),
            target: invocation.target.clone(),
            invocation_id: invocation.invocation_id.clone(),
            arguments: invocation.arguments.len(),
        })
    }

    fn info(&self) -> InvocationInfo<'_> {
        InvocationInfo {
            cx: &self.cx,
            target: &self.target,
            invocation_id: self.invocation_id.as_deref(),
            arguments: self.arguments,
        }
    }

    fn run(&self, outcome: Result<(), &str>) {
        let info = self.info();
        for filter in self.filters.iter() {
            filter.after(&info, outcome);
        }
    }
}

/// The span of one invocation, named and attributed as the OpenTelemetry
/// conventions for RPC name a SignalR call (`{hub}/{method}`), at DEBUG on
/// the target `tidings::invocation`
/// (as tower-http's request spans are at DEBUG): a subscriber that records
/// span fields formats them when the span is created, which on the echo
/// benchmark cost about a tenth of the server's time at the default INFO
/// level. `RUST_LOG=info,tidings::invocation=debug` turns it on.
fn invocation_span(hub: &str, connection: &ConnectionHandle, invocation: &Invocation) -> Span {
    tracing::debug_span!(
        target: "tidings::invocation",
        "invocation",
        otel.name = %format_args!("{hub}/{}", invocation.target),
        // The server side of a remote call, as OpenTelemetry's RPC conventions
        // name it (an exporter would otherwise call it internal).
        otel.kind = "server",
        rpc.system = "signalr",
        rpc.service = hub,
        rpc.method = %invocation.target,
        signalr.connection_id = connection.id(),
        signalr.invocation_id = invocation.invocation_id.as_deref(),
    )
}
