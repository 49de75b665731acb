//! Stateful reconnect over WebSockets: one logical connection carried by a
//! succession of sockets.
//!
//! Ownership: the connection task started by the first WebSocket owns the
//! logical connection for its whole life — the session (reader, invocation
//! tasks, lifetime registration) and the [`Writer`] run side by side in it,
//! exactly as for an ordinary WebSocket connection. Sockets come and go:
//!
//! * The endpoint keeps a [`Resumable`] per live stateful connection, keyed
//!   by its secret token. A WebSocket request presenting the token is
//!   upgraded and the socket sent to the writer — never to anyone else.
//! * The writer owns the current socket's write half. On a new socket it
//!   drops the old one, writes `Sequence` and replays the unacknowledged
//!   messages, and hands the read half to the session's inbound stream
//!   (through a one-slot [`Handoff`]: a newer socket replaces an unclaimed
//!   older one).
//! * The inbound stream reads the current socket. When the socket fails or
//!   ends without a close frame, it tells the writer (which stops writing)
//!   and waits for the next socket; a close frame from the client ends the
//!   connection as usual. If no socket arrives within the disconnect
//!   timeout, the writer gives up, the inbound stream fails, and the session
//!   tears down normally (`on_disconnected` runs).
//!
//! While no socket is attached the writer keeps numbering queued messages
//! into the replay buffer until it is full; then it stops taking messages
//! off the queue, so the queue's slow-consumer policy applies to broadcasts
//! and replies wait. Memory per connection stays bounded by the replay
//! buffer size plus the queue capacity.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use tidings_protocol::{HubMessage, Protocol};
use tokio::{
    sync::{Notify, mpsc},
    time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout},
};
use tokio_util::sync::CancellationToken;

use crate::{
    ConnectionError, ConnectionHandle,
    connection::{AbortReason, ConnectionInit, Outbound},
    endpoint::Endpoint,
    hub::Hub,
    resume::Resume,
    session::{self, Handshake, InboundChunk, far_future},
    transport::websocket::{MAX_BATCH, SEND_TIMEOUT, close, collect, data, frame_message},
};

/// How often the server acknowledges what it received (ASP.NET Core's 1 s).
const ACK_INTERVAL: Duration = Duration::from_secs(1);

type Sink = SplitSink<WebSocket, Message>;
type Source = SplitStream<WebSocket>;

/// How the endpoint reaches a live stateful connection: its socket inbox
/// and the user it belongs to.
#[derive(Clone)]
pub(crate) struct Resumable {
    sockets: mpsc::Sender<WebSocket>,
    user_id: Option<Arc<str>>,
}

impl std::fmt::Debug for Resumable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumable").finish_non_exhaustive()
    }
}

impl Resumable {
    /// The user the connection was opened by, if authenticated.
    pub(crate) fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// Whether both are the entry of the same connection.
    pub(crate) fn same(&self, other: &Resumable) -> bool {
        self.sockets.same_channel(&other.sockets)
    }

    /// Hands an upgraded socket to the connection. If the connection ended
    /// meanwhile, the socket is closed.
    pub(crate) async fn attach(self, socket: WebSocket) {
        if let Err(mpsc::error::SendError(socket)) = self.sockets.send(socket).await {
            tracing::debug!("the connection ended before the socket could re-attach");
            let (mut sink, _) = socket.split();
            close(&mut sink, 1000).await;
        }
    }
}

/// Runs a stateful connection whose first socket completed the handshake.
pub(crate) async fn serve<H: Hub>(
    endpoint: Arc<Endpoint<H>>,
    (mut sink, stream): (Sink, Source),
    init: ConnectionInit,
    leftover: Vec<u8>,
    token: String,
) {
    let options = &endpoint.shared.options;
    let protocol = init.protocol;
    // The handshake answer is written before anything is numbered: it is
    // not a hub message and is never replayed.
    let answer = frame_message(protocol, Handshake::response(None));
    let written = match answer {
        Some(answer) => matches!(timeout(SEND_TIMEOUT, sink.send(answer)).await, Ok(Ok(()))),
        None => false,
    };
    if !written {
        return;
    }
    let resume = Arc::new(Resume::new(options.stateful_reconnect_buffer_size));
    let (tx, rx) = mpsc::channel(options.outbound_buffer_capacity);
    let (sockets_tx, sockets_rx) = mpsc::channel(1);
    let entry = Resumable {
        sockets: sockets_tx,
        user_id: init.principal.user_id().map(Arc::from),
    };
    let connection = ConnectionHandle::with_resume(init, tx, Some(Arc::clone(&resume)));
    endpoint.register_resumable(token.clone(), entry.clone());
    tracing::debug!(connection_id = %connection.id(), "stateful reconnect enabled");

    let handoff = Arc::new(Handoff::default());
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    let ended = CancellationToken::new();
    let writer = Writer {
        connection: connection.clone(),
        resume: Arc::clone(&resume),
        protocol,
        rx,
        sockets: sockets_rx,
        handoff: Arc::clone(&handoff),
        lost: lost_rx,
        sink: Some(sink),
        generation: 0,
        held: None,
        acked: 0,
        deadline: None,
        batch: Vec::new(),
        window: options.disconnect_timeout,
        stall_limit: options.client_timeout_interval,
        ended: ended.clone(),
    };
    let inbound = inbound(stream, handoff, lost_tx, resume);
    let session = async {
        session::run(Arc::clone(&endpoint), connection, inbound, leftover).await;
        // The logical connection is over: a client trying to re-attach from
        // now on gets 404, while the writer delivers the final Close.
        endpoint.forget_resumable(&token, &entry);
        ended.cancel();
    };
    tokio::join!(writer.run(options.keep_alive_interval), session);
}

/// A one-slot mailbox from the writer to the inbound stream: the read half
/// of the newest socket, tagged with its generation. Closing it tells the
/// inbound stream that no socket will come any more.
#[derive(Default)]
struct Handoff {
    slot: std::sync::Mutex<Slot>,
    notify: Notify,
}

#[derive(Default)]
enum Slot {
    #[default]
    Empty,
    Ready(u64, Source),
    Closed,
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers a socket's read half, replacing one not yet taken.
    fn put(&self, generation: u64, source: Source) {
        let mut slot = self.lock();
        if !matches!(*slot, Slot::Closed) {
            *slot = Slot::Ready(generation, source);
        }
        drop(slot);
        self.notify.notify_one();
    }

    fn close(&self) {
        *self.lock() = Slot::Closed;
        self.notify.notify_one();
    }

    /// The next socket's read half; `None` once closed.
    async fn take(&self) -> Option<(u64, Source)> {
        loop {
            // Registered before the slot is checked, so a `put` in between
            // is not missed.
            let notified = self.notify.notified();
            {
                let mut slot = self.lock();
                match std::mem::take(&mut *slot) {
                    Slot::Ready(generation, source) => return Some((generation, source)),
                    Slot::Closed => {
                        *slot = Slot::Closed;
                        return None;
                    }
                    Slot::Empty => {}
                }
            }
            notified.await;
        }
    }
}

/// What the inbound stream waits for next.
enum Next {
    Socket(Option<(u64, Source)>),
    Frame(Option<Result<Message, axum::Error>>),
}

/// The session's chunk stream across sockets.
fn inbound(
    first: Source,
    handoff: Arc<Handoff>,
    lost: mpsc::UnboundedSender<u64>,
    resume: Arc<Resume>,
) -> impl futures_util::Stream<Item = InboundChunk> + Unpin + Send {
    struct State {
        current: Option<(u64, Source)>,
        handoff: Arc<Handoff>,
        lost: mpsc::UnboundedSender<u64>,
        resume: Arc<Resume>,
    }
    let state = State {
        current: Some((0, first)),
        handoff,
        lost,
        resume,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            let next = match &mut state.current {
                Some((_, source)) => tokio::select! {
                    // A newer socket always takes over, even if the old one
                    // still looks alive.
                    biased;
                    socket = state.handoff.take() => Next::Socket(socket),
                    frame = source.next() => Next::Frame(frame),
                },
                None => Next::Socket(state.handoff.take().await),
            };
            match next {
                Next::Socket(Some(socket)) => {
                    state.current = Some(socket);
                    state.resume.mark_reattached();
                }
                Next::Socket(None) => {
                    let error = ConnectionError::Transport(
                        "the client did not reconnect within the disconnect timeout".to_owned(),
                    );
                    return Some((Err(error), state));
                }
                // A close frame is the client leaving on purpose: the
                // connection ends, no reconnect window.
                Next::Frame(Some(Ok(Message::Close(_)))) => return None,
                Next::Frame(Some(Ok(message))) => {
                    if let Some(bytes) = data(message) {
                        return Some((Ok(bytes), state));
                    }
                }
                Next::Frame(Some(Err(_)) | None) => {
                    if let Some((generation, _)) = state.current.take() {
                        tracing::debug!("socket lost; waiting for the client to reconnect");
                        let _ = state.lost.send(generation);
                    }
                }
            }
        }
    });
    Box::pin(stream.fuse())
}

/// The write side of a stateful connection: numbers, buffers and writes
/// outgoing messages, acknowledges the client's, and swaps sockets.
struct Writer {
    connection: ConnectionHandle,
    resume: Arc<Resume>,
    protocol: Protocol,
    rx: mpsc::Receiver<Outbound>,
    /// New sockets from the endpoint.
    sockets: mpsc::Receiver<WebSocket>,
    handoff: Arc<Handoff>,
    /// Generations of sockets whose read side failed.
    lost: mpsc::UnboundedReceiver<u64>,
    /// The current socket's write half; `None` while detached.
    sink: Option<Sink>,
    generation: u64,
    /// A message taken off the queue that waits for room in the buffer.
    held: Option<Outbound>,
    /// The last sequence id acknowledged to the client.
    acked: u64,
    /// When the reconnect window closes (while detached).
    deadline: Option<Instant>,
    batch: Vec<u8>,
    window: Duration,
    stall_limit: Duration,
    /// The session has ended: nothing more will be acknowledged.
    ended: CancellationToken,
}

impl Writer {
    async fn run(mut self, keep_alive: Duration) {
        let ping = session::encode(self.protocol, &HubMessage::Ping);
        let idle = sleep_until(Instant::now() + keep_alive);
        tokio::pin!(idle);
        let mut acks = interval_at(Instant::now() + ACK_INTERVAL, ACK_INTERVAL);
        acks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let expiry = sleep_until(far_future());
        tokio::pin!(expiry);
        let stall = sleep_until(far_future());
        tokio::pin!(stall);
        let mut stalled = false;
        loop {
            let attached = self.sink.is_some();
            let waiting = self.held.is_some() && !self.resume.buffer().has_room();
            if waiting && attached && !stalled {
                stall.as_mut().reset(Instant::now() + self.stall_limit);
            }
            stalled = waiting && attached;
            expiry
                .as_mut()
                .reset(self.deadline.unwrap_or_else(far_future));
            tokio::select! {
                biased;
                () = self.connection.killed() => return self.finish_and_close().await,
                Some(socket) = self.sockets.recv() => {
                    self.attach(socket).await;
                    idle.as_mut().reset(Instant::now() + keep_alive);
                    continue;
                }
                Some(generation) = self.lost.recv() => {
                    if generation == self.generation {
                        self.detach();
                    }
                    continue;
                }
                item = self.rx.recv(), if self.held.is_none() => match item {
                    None => return self.finish(),
                    Some(Outbound::Close(frame)) => {
                        if let Some(frame) = frame {
                            self.write(frame).await;
                        }
                        return self.finish_and_close().await;
                    }
                    Some(item) => self.held = Some(item),
                },
                () = self.resume.room(), if waiting => {}
                () = self.ended.cancelled(), if waiting => {
                    // Nobody will acknowledge any more: deliver the Close.
                    return self.close_after_session().await;
                }
                () = &mut stall, if stalled => {
                    tracing::warn!(connection_id = %self.connection.id(), "no acknowledgement with a full replay buffer; closing slow consumer");
                    self.connection.abort_with(AbortReason::SlowConsumer);
                    return self.finish_and_close().await;
                }
                () = &mut expiry, if !attached => {
                    tracing::debug!(connection_id = %self.connection.id(), "reconnect window expired");
                    return self.finish();
                }
                _ = acks.tick(), if attached => {
                    self.acknowledge().await;
                    continue;
                }
                () = &mut idle, if attached => {
                    self.write(ping.clone()).await;
                    idle.as_mut().reset(Instant::now() + keep_alive);
                    continue;
                }
            }
            if self.held.is_some() && self.resume.buffer().has_room() && self.flush().await {
                return self.finish_and_close().await;
            }
            if self.sink.is_some() {
                idle.as_mut().reset(Instant::now() + keep_alive);
            }
        }
    }

    /// Moves the held message and whatever else is queued into the replay
    /// buffer (numbering them) until it is full, and writes them as one
    /// frame if a socket is attached. Returns whether the queue's final
    /// entry (the Close) was reached and written.
    async fn flush(&mut self) -> bool {
        let Some(first) = self.held.take() else {
            return false;
        };
        let mut closing = false;
        let resume = &self.resume;
        let frame = collect(
            first,
            &mut self.rx,
            &mut self.batch,
            self.protocol,
            &mut closing,
            |frame| {
                let mut buffer = resume.buffer();
                buffer.push(frame.clone());
                buffer.has_room()
            },
        );
        if let Some(frame) = frame {
            self.write(frame).await;
        }
        closing
    }

    /// Writes a frame to the current socket; a failure detaches it (the
    /// messages stay in the replay buffer).
    async fn write(&mut self, frame: Bytes) {
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        let Some(message) = frame_message(self.protocol, frame) else {
            return;
        };
        match timeout(SEND_TIMEOUT, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, "socket write failed; waiting for the client to reconnect");
                self.detach();
            }
            Err(_) => {
                tracing::debug!("socket write timed out; waiting for the client to reconnect");
                self.detach();
            }
        }
    }

    /// Sends an Ack if the session processed client messages since the last one.
    async fn acknowledge(&mut self) {
        let received = self.resume.received();
        if received > self.acked {
            let ack = session::encode(
                self.protocol,
                &HubMessage::Ack {
                    sequence_id: received,
                },
            );
            self.write(ack).await;
            if self.sink.is_some() {
                self.acked = received;
            }
        }
    }

    fn detach(&mut self) {
        if self.sink.take().is_some() {
            self.deadline = Some(Instant::now() + self.window);
        }
    }

    /// A new socket takes over: Sequence first (even with nothing to
    /// replay — the client ignores everything until it sees one), then every
    /// unacknowledged message, in order.
    async fn attach(&mut self, socket: WebSocket) {
        let (sink, source) = socket.split();
        self.generation += 1;
        // The old socket, if any, is dropped without ceremony: its client
        // has moved on.
        self.sink = Some(sink);
        self.deadline = None;
        self.handoff.put(self.generation, source);
        let (sequence_id, replay) = {
            let buffer = self.resume.buffer();
            let replay: Vec<Bytes> = buffer.frames().cloned().collect();
            (buffer.sequence_id(), replay)
        };
        tracing::debug!(
            connection_id = %self.connection.id(),
            sequence_id,
            replayed = replay.len(),
            "socket re-attached"
        );
        let mut out =
            session::encode(self.protocol, &HubMessage::Sequence { sequence_id }).to_vec();
        for frame in replay {
            if out.len() + frame.len() > MAX_BATCH {
                self.write(Bytes::from(std::mem::take(&mut out))).await;
            }
            out.extend_from_slice(&frame);
        }
        self.write(Bytes::from(out)).await;
        // Let the client free its own buffer soon after a reconnect.
        self.acked = 0;
    }

    /// The session ended while the buffer was full: drop what cannot be
    /// delivered and write the Close, if the session queued one.
    async fn close_after_session(mut self) {
        self.held = None;
        let mut close = None;
        while let Ok(item) = self.rx.try_recv() {
            if let Outbound::Close(frame) = item {
                close = frame;
                break;
            }
        }
        if let Some(frame) = close {
            self.write(frame).await;
        }
        self.finish_and_close().await;
    }

    async fn finish_and_close(mut self) {
        if let Some(mut sink) = self.sink.take() {
            close(&mut sink, 1000).await;
        }
        self.finish();
    }

    /// The connection is over: no socket will be accepted any more.
    fn finish(self) {
        self.handoff.close();
    }
}
