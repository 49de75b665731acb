//! Stateful reconnect over WebSockets: one logical connection carried by a
//! succession of sockets.
//!
//! Ownership: the connection task started by the first WebSocket owns the
//! logical connection for its whole life — the application's run (for a
//! hub, its session: reader, invocation tasks, lifetime registration; "the
//! session" below), the [`Writer`] and the [`Pump`] run side by side in it
//! (`tokio::join!`), as session and writer do for an ordinary WebSocket
//! connection. The Sequence and Ack messages it writes and the Acks it
//! finds are the application's ([`ResumeFraming`]). Sockets come and go:
//!
//! * The endpoint keeps a [`Resumable`] per live stateful connection, keyed
//!   by its secret token. A WebSocket request presenting the token is
//!   upgraded and the socket sent to the writer — never to anyone else.
//! * The writer owns the current socket's write half. On a new socket it
//!   drops the old one, writes `Sequence` and replays the unacknowledged
//!   messages, and hands the read half to the pump (through a one-slot
//!   [`Handoff`]: a newer socket replaces an unclaimed older one).
//! * The pump reads the current socket and passes its bytes to the session
//!   in order, reading ahead by a bounded amount and applying the client's
//!   Acks as soon as it sees them (see [`Pump`] for why). When the socket
//!   fails or ends without a close frame, it tells the writer (which stops
//!   writing) and waits for the next socket; a close frame from the client
//!   ends the connection as usual. If no socket arrives within the
//!   disconnect timeout, the writer gives up, the pump reports the failure,
//!   and the session tears down normally (`on_disconnected` runs).
//!
//! While no socket is attached the writer keeps numbering queued messages
//! into the replay buffer until it is full; then it stops taking messages
//! off the queue, so the queue's slow-consumer policy applies to broadcasts
//! and replies wait. Memory per connection stays bounded by the replay
//! buffer, the queue and the pump's read-ahead.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tungstenite::Message;

use crate::connections::transport::socket::WebSocket;
use bytes::Bytes;
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use tidings_protocol::{TransferFormat, resume::ReplayBuffer};
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout},
};
use tokio_util::sync::CancellationToken;

use crate::{clock::far_future, connections::options::ConnectionOptions};

use crate::{
    connections::{
        connection::{AbortReason, Connection, ConnectionInit, SlowConsumer},
        handler::{Accepted, AckReader, Application, BoxFuture, InboundChunk, ResumeFraming},
        journal::{Journal, JournalEntry},
        outbox::{self, Outbound},
        registry::Registry,
        resume::Resume,
        served::Served,
        transport::frames::{close, close_now, close_status, collect, data, frame_message},
    },
    error::ConnectionError,
};

/// How often the server acknowledges what it received (ASP.NET Core's 1 s).
const ACK_INTERVAL: Duration = Duration::from_secs(1);

/// How long the first numbered message of a new connection waits for the
/// client to speak after the opening (see [`Writer::greeted`]).
const GREETING_GRACE: Duration = Duration::from_millis(500);

type Sink = SplitSink<WebSocket, Message>;
type Source = SplitStream<WebSocket>;

/// How the endpoint reaches a live stateful connection: its socket inbox,
/// the user it belongs to, and (for a handover) the connection and its
/// writer.
#[derive(Clone)]
pub(crate) struct Resumable {
    sockets: mpsc::Sender<WebSocket>,
    user_id: Option<Arc<str>>,
    connection: Connection,
    freezes: mpsc::Sender<(oneshot::Sender<Frozen>, Forward)>,
    /// Set by the one server that takes the connection over.
    claimed: Arc<AtomicBool>,
}

/// Where the frames a moved connection's session still queues go (to the
/// connection's new server).
pub(crate) type Forward = Box<dyn FnMut(Bytes) -> BoxFuture<'static, ()> + Send>;

/// What the writer of a connection that moves to another server leaves:
/// the numbering and every message not acknowledged or not yet sent.
pub(crate) struct Frozen {
    /// The sequence id of `frames[0]`.
    pub first_id: u64,
    pub frames: Vec<Bytes>,
    /// The last client message processed.
    pub received: u64,
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

    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Whether this caller is the first to take the connection over.
    pub(crate) fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    /// Stops the writer and takes what it holds; `None` if the connection
    /// ended meanwhile. What the session queues from then on goes to
    /// `forward`, in order.
    pub(crate) async fn freeze(&self, forward: Forward) -> Option<Frozen> {
        let (tx, rx) = oneshot::channel();
        self.freezes.send((tx, forward)).await.ok()?;
        rx.await.ok()
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

/// Where a stateful connection makes itself reachable for re-attaching
/// sockets: the endpoint's registry, under the connection's secret token.
pub(crate) struct Reattach {
    pub registry: Registry<Resumable>,
    pub token: String,
}

/// Runs a stateful connection whose first socket completed the opening.
pub(crate) async fn serve<C: Application>(
    served: Arc<Served<C>>,
    (sink, stream): (Sink, Source),
    mut init: ConnectionInit,
    (accepted, leftover): (Accepted<C::Opened>, Vec<u8>),
    (reattach, framing): (Reattach, Option<Arc<dyn ResumeFraming>>),
) {
    let options = &served.options;
    let moves = served.hands_over;
    if moves {
        // The connection outlives the server's shutdown until another
        // server takes it (or its reconnect window ends): its abort signal
        // is its own, not the shutdown's.
        init.abort = CancellationToken::new();
    }
    let buffer = ReplayBuffer::new(options.stateful_reconnect_buffer_size);
    let resume = Resume::new(buffer, 0, moves);
    let keep_alive = accepted.keep_alive;
    let session = Start::Opened(leftover, accepted.opened);
    let (_, run) = start(
        served,
        Some((sink, stream, accepted.reply)),
        init,
        (resume, framing, keep_alive),
        reattach,
        session,
    );
    run.await;
}

/// Starts a connection handed over by another server of the cluster,
/// without a socket yet (the client's comes next, as a re-attach): the
/// connection's registry entry, and its task to spawn. `None` if the
/// application cannot take it.
pub(crate) fn adopt<C: Application>(
    served: Arc<Served<C>>,
    mut init: ConnectionInit,
    (frozen, app): (Frozen, serde_json::Value),
    reattach: Reattach,
) -> Option<(Resumable, impl Future<Output = ()> + Send + 'static)> {
    let accepted = served.app.reopen(&app)?;
    init.format = accepted.format;
    init.abort = CancellationToken::new();
    let buffer = ReplayBuffer::resume_at(
        served.options.stateful_reconnect_buffer_size,
        frozen.first_id,
        frozen.frames,
    );
    let resume = Resume::new(buffer, frozen.received, served.hands_over);
    let framing = accepted.resume.clone();
    let session = Start::Adopted(accepted.opened, app);
    Some(start(
        served,
        None,
        init,
        (resume, framing, accepted.keep_alive),
        reattach,
        session,
    ))
}

/// How the application's side of a stateful connection starts.
enum Start<O> {
    /// Opened here: the bytes after the opening, and what the opening left.
    Opened(Vec<u8>, O),
    /// Handed over by another server: what its opening left, and the
    /// application's part of the handover.
    Adopted(O, serde_json::Value),
}

type Parts = (
    Resume,
    Option<Arc<dyn ResumeFraming>>,
    Option<(Duration, Bytes)>,
);

/// Registers a stateful connection under its token and returns the entry
/// and the connection's task: session, writer and pump side by side.
fn start<C: Application>(
    served: Arc<Served<C>>,
    socket: Option<(Sink, Source, Option<Bytes>)>,
    init: ConnectionInit,
    (resume, framing, keep_alive): Parts,
    reattach: Reattach,
    session: Start<C::Opened>,
) -> (Resumable, impl Future<Output = ()> + Send + 'static) {
    let options = &served.options;
    let format = init.format;
    let resume = Arc::new(resume);
    let (tx, rx) = outbox::channel(options.outbound_buffer_capacity);
    let (sockets_tx, sockets_rx) = mpsc::channel(1);
    let (freezes_tx, freezes_rx) = mpsc::channel(1);
    let connection = Connection::with_resume(init, tx, Some(Arc::clone(&resume)));
    let entry = Resumable {
        sockets: sockets_tx,
        user_id: connection.principal().user_id().map(Arc::from),
        connection: connection.clone(),
        freezes: freezes_tx,
        claimed: Arc::default(),
    };
    let journal = framing
        .is_some()
        .then(|| served.app.journal(&connection, &reattach.token))
        .flatten();
    let registered = reattach.registry.insert(reattach.token, entry.clone());
    tracing::debug!(connection_id = %connection.id(), "stateful reconnect enabled");

    let (sink, source, answer) = match socket {
        Some((sink, source, answer)) => (Some(sink), Some((0, source)), answer),
        None => (None, None, None),
    };
    let adopted = sink.is_none();
    let leaving = resume
        .moves_on_shutdown()
        .then(|| served.shutdown.token().clone());
    let handoff = Arc::new(Handoff::default());
    let spoke = Arc::new(Notify::new());
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    let ended = CancellationToken::new();
    let writer = Writer {
        connection: connection.clone(),
        resume: Arc::clone(&resume),
        format,
        framing: framing.clone(),
        rx,
        sockets: sockets_rx,
        freezes: freezes_rx,
        leaving: leaving.clone(),
        handoff: Arc::clone(&handoff),
        lost: lost_rx,
        sink,
        generation: 0,
        greeted: adopted
            || framing.is_none()
            || matches!(&session, Start::Opened(leftover, _) if !leftover.is_empty()),
        spoke: Arc::clone(&spoke),
        held: None,
        acked: 0,
        // Adopted without a socket: the client's comes within the window.
        deadline: adopted.then(|| Instant::now() + options.disconnect_timeout),
        batch: Vec::new(),
        window: options.disconnect_timeout,
        stall_limit: options.client_timeout_interval,
        send_timeout: options.transport_send_timeout,
        ended: ended.clone(),
        journal,
        entries: Vec::new(),
        answer,
    };
    let (pieces_tx, pieces_rx) = mpsc::unbounded_channel();
    let limit = read_ahead_limit(options);
    let pump = Pump {
        current: source,
        handoff,
        lost: lost_tx,
        resume: Arc::clone(&resume),
        pieces: pieces_tx,
        read_ahead: Arc::new(Semaphore::new(limit)),
        read_ahead_limit: limit,
        sniffer: framing.as_ref().map(|f| f.ack_reader()),
        framing,
        spoke: Some(spoke),
        leaving,
        ended: ended.clone(),
    };
    let inbound = inbound(pieces_rx, resume);
    let keep_alive_for_writer = keep_alive;
    let run = async move {
        let session = async {
            match session {
                Start::Opened(leftover, opened) => {
                    served.app.run(connection, inbound, leftover, opened).await;
                }
                Start::Adopted(opened, frozen) => {
                    served
                        .app
                        .run_adopted(connection, inbound, opened, frozen)
                        .await;
                }
            }
            // The logical connection is over: a client trying to re-attach
            // from now on gets 404, while the writer delivers the final Close.
            drop(registered);
            ended.cancel();
        };
        // The session first, on every poll: its first registers the
        // connection (a hub: with its lifetime manager) before the writer
        // sends the opening's answer, so a message sent to everyone once
        // the client's `start()` returned reaches it.
        tokio::join!(
            biased;
            session,
            pump.run(),
            writer.run(keep_alive_for_writer)
        );
    };
    (entry, run)
}

/// A one-slot mailbox from the writer to the pump: the read half
/// of the newest socket, tagged with its generation. Closing it tells the
/// pump that no socket will come any more.
#[derive(Default)]
struct Handoff {
    slot: parking_lot::Mutex<Slot>,
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
    fn lock(&self) -> parking_lot::MutexGuard<'_, Slot> {
        self.slot.lock()
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

/// The bytes a pump may read ahead of the session: what a client may send
/// beyond our last Ack before its own replay buffer stops it (the official
/// clients' default is 100 000 bytes), plus one message. Within that, the
/// client's next Ack is always reached.
fn read_ahead_limit(options: &ConnectionOptions) -> usize {
    const CLIENT_BUFFER: usize = 100_000;
    CLIENT_BUFFER + options.maximum_receive_message_size.unwrap_or(64 * 1024)
}

/// What the pump hands the session, in order. Each piece holds permits of
/// the read-ahead semaphore until the session takes it.
enum Piece {
    Chunk(Bytes, OwnedSemaphorePermit),
    /// A new socket took over.
    Reattached(OwnedSemaphorePermit),
    /// No socket will come any more.
    Failed(ConnectionError),
}

/// What the pump waits for next.
enum Next {
    /// The server shuts down and the connection moves elsewhere.
    Leave,
    Socket(Option<(u64, Source)>),
    Frame(Option<Result<Message, tungstenite::Error>>),
}

/// Reads the current socket for the session, across sockets.
///
/// It runs beside the session rather than inside it so that it keeps
/// reading (up to [`read_ahead_limit`]) while the session waits on this
/// connection's own back-pressure, and applies the client's Acks it finds
/// at once. Otherwise a full replay buffer would wait for an Ack that sits
/// behind messages the session cannot take until the buffer drains.
struct Pump {
    current: Option<(u64, Source)>,
    handoff: Arc<Handoff>,
    /// Tells the writer which socket failed.
    /// A socket's generation when its reads end, with the close status a
    /// failed read calls for (0: none, the stream just ended).
    lost: mpsc::UnboundedSender<(u64, u16)>,
    resume: Arc<Resume>,
    pieces: mpsc::UnboundedSender<Piece>,
    read_ahead: Arc<Semaphore>,
    read_ahead_limit: usize,
    /// Finds the client's Acks in the current socket's bytes (`None`: the
    /// application exchanges none).
    sniffer: Option<Box<dyn AckReader>>,
    framing: Option<Arc<dyn ResumeFraming>>,
    /// Tells the writer that the client sent something after the opening;
    /// taken once told.
    spoke: Option<Arc<Notify>>,
    /// The server's shutdown, for a connection that then moves to another
    /// server: its socket is dropped, so that the client re-attaches
    /// elsewhere. Taken once it fired.
    leaving: Option<CancellationToken>,
    ended: CancellationToken,
}

impl Pump {
    async fn run(mut self) {
        loop {
            let leaving = self.leaving.clone();
            let leaving = async move {
                match leaving {
                    Some(token) => token.cancelled_owned().await,
                    None => std::future::pending().await,
                }
            };
            let next = match &mut self.current {
                Some((_, source)) => tokio::select! {
                    // A newer socket always takes over, even if the old one
                    // still looks alive.
                    biased;
                    () = self.ended.cancelled() => return,
                    () = leaving => Next::Leave,
                    socket = self.handoff.take() => Next::Socket(socket),
                    frame = source.next() => Next::Frame(frame),
                },
                None => tokio::select! {
                    () = self.ended.cancelled() => return,
                    () = leaving => Next::Leave,
                    socket = self.handoff.take() => Next::Socket(socket),
                },
            };
            match next {
                Next::Leave => {
                    // The writer drops its half too; the socket closes
                    // without a close frame, as a lost one does.
                    self.leaving = None;
                    self.current = None;
                }
                Next::Socket(Some(socket)) => {
                    self.current = Some(socket);
                    self.sniffer = self.framing.as_ref().map(|f| f.ack_reader());
                    let Some(permit) = self.permits(1).await else {
                        return;
                    };
                    let _ = self.pieces.send(Piece::Reattached(permit));
                }
                Next::Socket(None) => {
                    let error = ConnectionError::Transport(
                        "the client did not reconnect within the disconnect timeout".to_owned(),
                    );
                    let _ = self.pieces.send(Piece::Failed(error));
                    return;
                }
                // A close frame is the client leaving on purpose: the
                // connection ends (the session sees its input end), no
                // reconnect window.
                Next::Frame(Some(Ok(Message::Close(_)))) => return,
                Next::Frame(Some(Ok(message))) => {
                    let Some(bytes) = data(message).filter(|b| !b.is_empty()) else {
                        continue;
                    };
                    if let Some(spoke) = self.spoke.take() {
                        spoke.notify_one();
                    }
                    self.sniff(&bytes);
                    let Some(permit) = self.permits(bytes.len()).await else {
                        return;
                    };
                    let _ = self.pieces.send(Piece::Chunk(bytes, permit));
                }
                Next::Frame(failure @ (Some(Err(_)) | None)) => {
                    let status = match failure {
                        Some(Err(error)) => close_status(&error),
                        _ => 0,
                    };
                    if let Some((generation, _)) = self.current.take() {
                        tracing::debug!("socket lost; waiting for the client to reconnect");
                        let _ = self.lost.send((generation, status));
                    }
                }
            }
        }
    }

    /// Applies the Acks in `bytes` now, ahead of the session.
    fn sniff(&mut self, bytes: &[u8]) {
        let resume = &self.resume;
        if let Some(sniffer) = &mut self.sniffer {
            sniffer.read(bytes, &mut |sequence_id| resume.ack(sequence_id));
        }
    }

    /// Waits until the session has taken enough earlier pieces; `None` when
    /// the session is gone.
    async fn permits(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let count = u32::try_from(bytes.clamp(1, self.read_ahead_limit)).unwrap_or(u32::MAX);
        tokio::select! {
            () = self.ended.cancelled() => None,
            permit = Arc::clone(&self.read_ahead).acquire_many_owned(count) => permit.ok(),
        }
    }
}

/// The session's side of the pump: its pieces as the session's chunk stream.
fn inbound(
    pieces: mpsc::UnboundedReceiver<Piece>,
    resume: Arc<Resume>,
) -> impl futures_util::Stream<Item = InboundChunk> + Unpin + Send {
    let stream =
        futures_util::stream::unfold((pieces, resume), |(mut pieces, resume)| async move {
            loop {
                // Taking a piece releases its read-ahead permits.
                match pieces.recv().await? {
                    Piece::Chunk(bytes, _permit) => return Some((Ok(bytes), (pieces, resume))),
                    Piece::Reattached(_permit) => resume.mark_reattached(),
                    Piece::Failed(error) => return Some((Err(error), (pieces, resume))),
                }
            }
        });
    Box::pin(stream.fuse())
}

/// The write side of a stateful connection: numbers, buffers and writes
/// outgoing messages, acknowledges the client's, and swaps sockets.
struct Writer {
    connection: Connection,
    resume: Arc<Resume>,
    format: TransferFormat,
    /// The application's Sequence and Ack messages; `None`: it has none,
    /// and the connection only keeps its id across sockets (nothing is
    /// numbered or replayed; while no socket is attached, messages wait in
    /// the queue).
    framing: Option<Arc<dyn ResumeFraming>>,
    rx: outbox::Receiver,
    /// New sockets from the endpoint.
    sockets: mpsc::Receiver<WebSocket>,
    /// Requests of the server taking the connection over.
    freezes: mpsc::Receiver<(oneshot::Sender<Frozen>, Forward)>,
    /// The server's shutdown, for a connection that then moves (see
    /// [`Pump::leaving`]); taken once it fired.
    leaving: Option<CancellationToken>,
    handoff: Arc<Handoff>,
    /// Generations of sockets whose read side failed.
    lost: mpsc::UnboundedReceiver<(u64, u16)>,
    /// The current socket's write half; `None` while detached.
    sink: Option<Sink>,
    generation: u64,
    /// Whether the client is ready to count the numbered messages.
    ///
    /// The official JavaScript client starts counting only once its
    /// handshake has completed, a task after the one that read the
    /// handshake answer; a message that arrived in the same read (the
    /// `ws` package hands every message of a read over at once) is handled
    /// but not counted. The client is then one behind the server's
    /// numbering, and the next replay hands it again the last message it
    /// had. So on a new connection numbered messages wait until the client
    /// has sent something after its handshake request (every client sends
    /// a Ping first, the JavaScript one right after it starts counting),
    /// for [`GREETING_GRACE`] at most.
    greeted: bool,
    /// Signalled by the pump when the client first sends something.
    spoke: Arc<Notify>,
    /// A message taken off the queue that waits for room in the buffer.
    held: Option<Outbound>,
    /// The last sequence id acknowledged to the client.
    acked: u64,
    /// When the reconnect window closes (while detached).
    deadline: Option<Instant>,
    batch: Vec<u8>,
    window: Duration,
    stall_limit: Duration,
    /// How long one write may wait for the socket before it counts as lost
    /// (the client may come back on a new one).
    send_timeout: Duration,
    /// The session has ended: nothing more will be acknowledged.
    ended: CancellationToken,
    /// Records numbered messages before they are written (`None`: the
    /// connection does not outlive this server's death).
    journal: Option<Arc<dyn Journal>>,
    /// The messages of the current flush, for the journal.
    entries: Vec<JournalEntry>,
    /// The opening's answer, written first (before anything is numbered:
    /// it is not an application message and is never replayed).
    answer: Option<Bytes>,
}

impl Writer {
    async fn run(mut self, keep_alive: Option<(Duration, Bytes)>) {
        // Without a keep-alive the timer never sends anything.
        let (keep_alive, ping) = match keep_alive {
            Some((interval, ping)) => (interval, Some(ping)),
            None => (Duration::from_secs(3600), None),
        };
        let idle = sleep_until(Instant::now() + keep_alive);
        tokio::pin!(idle);
        let mut acks = interval_at(Instant::now() + ACK_INTERVAL, ACK_INTERVAL);
        acks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let expiry = sleep_until(far_future());
        tokio::pin!(expiry);
        let stall = sleep_until(far_future());
        tokio::pin!(stall);
        let mut stalled = false;
        let greeting = sleep_until(Instant::now() + GREETING_GRACE);
        tokio::pin!(greeting);
        let spoke = Arc::clone(&self.spoke);
        if let Some(answer) = self.answer.take() {
            self.write(answer).await;
            if self.sink.is_none() {
                // The session ends with the abort and cleans up as usual.
                self.connection.abort_with(AbortReason::Transport(
                    "the opening's answer could not be sent".to_owned(),
                ));
                return self.finish();
            }
        }
        // A connection taken over starts with its first server's unacknowledged
        // messages: recorded here too, so that it survives this server.
        if let Some(journal) = &self.journal {
            let entries: Vec<JournalEntry> = {
                let buffer = self.resume.buffer();
                (buffer.sequence_id()..)
                    .zip(buffer.frames())
                    .map(|(sequence_id, frame)| JournalEntry {
                        sequence_id,
                        frame: frame.clone(),
                        mark: None,
                    })
                    .collect()
            };
            if !entries.is_empty() {
                journal.append(&entries).await;
            }
        }
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
            let leaving = self.leaving.clone();
            let leaving = async move {
                match leaving {
                    Some(token) => token.cancelled_owned().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.connection.killed() => return self.finish_and_close().await,
                Some((reply, forward)) = self.freezes.recv() => return self.freeze(reply, forward).await,
                () = leaving => {
                    // Dropped without a close frame: the client re-attaches,
                    // and the server it reaches takes the connection over.
                    self.leaving = None;
                    if let Some(sink) = self.sink.take() {
                        drop(sink);
                        tracing::debug!(connection_id = %self.connection.id(), "socket dropped for a handover");
                    }
                    self.deadline = Some(Instant::now() + self.window);
                    continue;
                }
                Some(socket) = self.sockets.recv() => {
                    self.attach(socket).await;
                    idle.as_mut().reset(Instant::now() + keep_alive);
                    continue;
                }
                Some((generation, status)) = self.lost.recv() => {
                    if generation == self.generation {
                        self.detach_with(status).await;
                    }
                    continue;
                }
                () = spoke.notified(), if !self.greeted => {
                    self.greeted = true;
                    continue;
                }
                () = &mut greeting, if !self.greeted => {
                    self.greeted = true;
                    continue;
                }
                item = self.rx.recv(), if self.held.is_none() && self.greeted => match item {
                    None => return self.finish(),
                    Some(mut item) => match item.as_close() {
                        Some(frame) => {
                            if let Some(frame) = frame {
                                self.write(frame).await;
                            }
                            return self.finish_and_close().await;
                        }
                        None => self.held = Some(item),
                    },
                },
                () = self.resume.room(), if waiting => {}
                () = self.ended.cancelled(), if waiting => {
                    // Nobody will acknowledge any more: deliver the Close.
                    return self.close_after_session().await;
                }
                () = &mut stall, if stalled => {
                    self.connection.close_slow_consumer(SlowConsumer::NoAcknowledgement(self.stall_limit));
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
                    if let Some(ping) = &ping {
                        self.write(ping.clone()).await;
                    }
                    idle.as_mut().reset(Instant::now() + keep_alive);
                    continue;
                }
            }
            if self.held.is_some() && self.can_take() && self.flush().await {
                return self.finish_and_close().await;
            }
            if self.sink.is_some() {
                idle.as_mut().reset(Instant::now() + keep_alive);
            }
        }
    }

    /// Another server takes the connection over: everything not
    /// acknowledged or not yet sent goes to it; what the session queues
    /// later (its running invocations' results and stream items) is
    /// forwarded until the session ends. No close: the pump ends with the
    /// session.
    async fn freeze(mut self, reply: oneshot::Sender<Frozen>, mut forward: Forward) {
        let (first_id, mut frames) = {
            let buffer = self.resume.buffer();
            (
                buffer.sequence_id(),
                buffer.frames().cloned().collect::<Vec<_>>(),
            )
        };
        let mut closing = false;
        let held = self.held.take().into_iter();
        let queued = std::iter::from_fn(|| self.rx.try_recv().ok());
        for entry in held.chain(queued) {
            if let Some(frame) = entry.into_frame(&mut closing) {
                if closing {
                    break;
                }
                frames.push(frame);
            }
            if closing {
                break;
            }
        }
        let _ = reply.send(Frozen {
            first_id,
            frames,
            received: self.resume.received(),
        });
        loop {
            // The forwarder holds the connection (so the queue never ends
            // by itself): stop once the session is over and what it queued
            // is forwarded.
            let entry = tokio::select! {
                biased;
                entry = self.rx.recv() => entry,
                () = self.ended.cancelled() => self.rx.try_recv().ok(),
            };
            let Some(entry) = entry else {
                return;
            };
            let mut closing = false;
            match entry.into_frame(&mut closing) {
                _ if closing => return,
                Some(frame) => forward(frame).await,
                None => {}
            }
        }
    }

    /// Whether queued messages may be taken now: while the replay buffer
    /// has room, or, without numbering, while a socket is attached.
    fn can_take(&self) -> bool {
        match &self.framing {
            Some(_) => self.resume.buffer().has_room(),
            None => self.sink.is_some(),
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
        let connection = &self.connection;
        let numbered = self.framing.is_some();
        let journaled = self.journal.is_some();
        let entries = &mut self.entries;
        let frame = collect(
            first,
            &mut self.rx,
            &mut self.batch,
            &mut closing,
            |frame, mark| {
                // Counted once, when first sent: replays are not new messages.
                connection.record_sent(frame.len());
                if !numbered {
                    return true;
                }
                let mut buffer = resume.buffer();
                let sequence_id = buffer.push(frame.clone());
                if journaled {
                    entries.push(JournalEntry {
                        sequence_id,
                        frame: frame.clone(),
                        mark,
                    });
                }
                buffer.has_room()
            },
        );
        // Recorded before written: the client never holds a message the
        // journal lacks (see `connections::journal`).
        if let Some(journal) = &self.journal
            && !self.entries.is_empty()
        {
            journal.append(&self.entries).await;
            self.entries.clear();
        }
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
        let Some(message) = frame_message(self.format, frame) else {
            return;
        };
        match timeout(self.send_timeout, sink.send(message)).await {
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
        let Some(framing) = &self.framing else {
            return;
        };
        let received = self.resume.received();
        if let Some(journal) = &self.journal {
            journal.progress(self.resume.buffer().sequence_id(), received);
        }
        if received > self.acked {
            let ack = framing.ack(received);
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

    /// Detaches a socket whose reads ended. A read that failed on a
    /// breach of the WebSocket protocol (1002), a Text frame that is not
    /// UTF-8 (1007) or a message over the limit (1009) closes the socket
    /// with that status, as RFC 6455 asks, before the connection waits
    /// for the client to come back; after an I/O error the peer is gone
    /// and nothing is written. The close is given a second at most: until
    /// it is done, a new socket of the client waits to be attached.
    async fn detach_with(&mut self, status: u16) {
        if let (Some(sink), 1002 | 1007 | 1009) = (self.sink.as_mut(), status) {
            let _ = timeout(Duration::from_secs(1), close(sink, status)).await;
        }
        self.detach();
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
        // A client that comes back counts already.
        self.greeted = true;
        self.handoff.put(self.generation, source);
        let Some(framing) = self.framing.clone() else {
            tracing::debug!(connection_id = %self.connection.id(), "socket re-attached");
            return;
        };
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
        let mut out = framing.sequence(sequence_id).to_vec();
        for frame in replay {
            if out.len() + frame.len() > outbox::MAX_BATCH {
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
        while let Ok(mut item) = self.rx.try_recv() {
            if let Some(frame) = item.as_close() {
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
            if matches!(
                self.connection.abort_reason(),
                Some(AbortReason::SlowConsumer)
            ) {
                // A client that does not read would not take the Close
                // frame either.
                close_now(&mut sink, 1008);
            } else {
                close(&mut sink, 1000).await;
            }
        }
        self.finish();
    }

    /// The connection is over: no socket will be accepted any more.
    fn finish(self) {
        self.handoff.close();
        if let Some(journal) = &self.journal {
            journal.end();
        }
    }
}
