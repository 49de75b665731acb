//! The WebSocket transport.
//!
//! One task per connection runs two futures side by side: the application
//! (for a hub, its session, which reads the socket) and the writer (which
//! owns the sink and drains the outbound queue). Neither is spawned separately, so both end with the
//! connection's task and nothing leaks.
//!
//! Framing: the application's transfer format chooses Text or Binary frames
//! (for a hub, JSON connections get Text frames and MessagePack connections
//! Binary frames, the handshake answer too, as ASP.NET Core does). The writer packs
//! every message waiting in the queue into one frame — clients split frames
//! on record separators / length prefixes — which turns a burst of small
//! broadcasts into few syscalls. A single waiting message is sent without a
//! copy: its `Bytes` are shared with every other recipient.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{
    FutureExt, SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use tokio::time::{Instant, sleep_until, timeout};
use tungstenite::{Message, Utf8Bytes};

use crate::{
    connections::{
        connection::{AbortReason, Connection, ConnectionInit, SlowConsumer},
        handler::{Application, InboundChunk},
        opening::{self, Opened},
        outbox::{self, Outbound},
        served::Served,
        transport::{
            frames::{close, close_now, close_status, collect, data, frame_message},
            resume,
            socket::WebSocket,
        },
    },
    error::ConnectionError,
};

/// Each connection's read buffer: how much one read from the socket takes.
/// tungstenite's default (128 KiB, allocated when the socket opens) made an
/// idle connection cost about 150 KiB of resident memory. Hub messages from
/// clients are small; a larger frame grows the buffer to its size, at the
/// cost of one read per 512 bytes while it arrives.
pub(crate) const READ_BUFFER: usize = 512;
/// The largest WebSocket frame and message an endpoint reads, for a
/// maximum application message size of `max_message`: four times that (a frame may
/// carry several messages), at least 1 MiB; 64 MiB when messages are
/// unlimited.
pub(crate) fn frame_limit(max_message: Option<usize>) -> usize {
    max_message.map_or(64 << 20, |limit| limit.saturating_mul(4).max(1 << 20))
}

/// The socket settings of an endpoint whose application messages may be up to
/// `max_message` long: frame and message limits, read buffer.
pub(crate) fn socket_config(max_message: Option<usize>) -> tungstenite::protocol::WebSocketConfig {
    let limit = frame_limit(max_message);
    tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        .read_buffer_size(READ_BUFFER)
}

/// Serves one upgraded socket until the connection ends.
///
/// Not an `async fn`: the socket is split before the future is built, so
/// the connection's task does not keep a slot for the unsplit socket (the
/// arguments of an `async fn` stay in its future for its whole life).
///
/// The opening runs in a box of its own, freed once the connection runs:
/// what the future then holds is the running connection alone (two
/// boxes). Awaited inline, the opening's state — and every local it moved
/// into the session and writer, which an async function keeps room for
/// until it returns — was reserved beside the running connection for its
/// whole life (1.9 KiB per connection).
pub(crate) fn serve<C: Application>(
    served: Arc<Served<C>>,
    socket: WebSocket,
    init: Box<ConnectionInit>,
    reattach: Option<resume::Reattach>,
) -> impl Future<Output = ()> + Send {
    let (sink, stream) = socket.split();
    let start = Box::pin(start(served, sink, stream, init, reattach));
    async move {
        // Matched, not `if let`, which would keep the scrutinee (a second
        // copy of the running connection's future) while it runs.
        let running = match start.await {
            Some(running) => running,
            None => return,
        };
        running.await;
    }
}

/// Opens the connection: reads the application's opening, sends its
/// answer, and returns the running connection (the session and the
/// writer), not yet polled. `None` once the connection is over already (a
/// refused opening, a lost socket, or a stateful connection, which runs to
/// its end in here).
async fn start<C: Application>(
    served: Arc<Served<C>>,
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    mut init: Box<ConnectionInit>,
    reattach: Option<resume::Reattach>,
) -> Option<impl Future<Output = ()> + Send> {
    let options = &served.options;
    let app = &served.app;
    // The close status a failed read asks for; 0 while reads succeed.
    let read_failure = Arc::new(AtomicU16::new(0));
    let opened = Box::pin(opening::read(
        &**app,
        &mut inbound(&mut stream, Arc::clone(&read_failure)),
        init.transport,
    ))
    .await;
    let (accepted, leftover) = match opened {
        Opened::Accepted(accepted, leftover) => (accepted, leftover),
        Opened::Refused(reply) => {
            tracing::debug!("opening refused");
            // No transfer format was agreed: the answer goes out as text.
            if let Some(text) = reply.and_then(|reply| Utf8Bytes::try_from(reply).ok()) {
                let _ = timeout(
                    options.transport_send_timeout,
                    sink.send(Message::Text(text)),
                )
                .await;
            }
            close(&mut sink, 1000).await;
            return None;
        }
        Opened::Gone => return None,
    };
    init.format = accepted.format;
    // Stateful reconnect: negotiated (with a secret token) and agreed to by
    // the application's opening.
    if let Some(reattach) = reattach.filter(|_| accepted.resumable) {
        let framing = accepted.resume.clone();
        // Boxed: it runs for the connection's life, and the start of a
        // connection without stateful reconnect need not be as large.
        Box::pin(resume::serve(
            served,
            (sink, stream),
            unbox(init),
            (accepted, leftover),
            (reattach, framing),
        ))
        .await;
        return None;
    }
    let (tx, rx) = outbox::channel(options.outbound_buffer_capacity);
    let connection = Connection::new(unbox(init), tx);
    // Boxed, so each lives once on the heap, in a box of its own size:
    // the future returned holds the two boxes only.
    let turn = rx.turn_key();
    let writer = Box::pin(write_loop(
        sink,
        rx,
        connection.clone(),
        (accepted.keep_alive, options.transport_send_timeout),
        (accepted.reply, Arc::clone(&read_failure)),
    ));
    let session = Box::pin(app.run(
        connection,
        inbound(stream, read_failure),
        leftover,
        accepted.opened,
    ));
    Some(session_then_writer(session, writer, turn))
}

/// Runs both to completion, the session before the writer on every poll
/// (`tokio::join!` rotates which goes first). Replies the session queues
/// while handling what it just read are then written in the same pass; and
/// since the writer is sure to see them, queuing them does not wake the
/// task again (an outbox [`Turn`](outbox::Turn)).
///
/// Both halves are polled whenever either was woken, as a `select!` over
/// a socket's two directions would. Polling only the woken half saves a
/// little CPU per broadcast recipient, but it was measured to cost tail
/// latency under load: a writer woken alone runs at once and writes each
/// message on its own, where the slightly later writer of this loop finds
/// more of a burst queued and sends it in one write, so both ends make
/// fewer syscalls and wake-ups when they are busiest (BENCHMARKS.md).
async fn session_then_writer(
    mut session: std::pin::Pin<Box<impl Future<Output = ()>>>,
    mut writer: std::pin::Pin<Box<impl Future<Output = ()>>>,
    turn: outbox::TurnKey,
) {
    let (mut session_done, mut writer_done) = (false, false);
    std::future::poll_fn(|cx| {
        let _turn = outbox::Turn::enter(turn);
        if !session_done {
            session_done = session.as_mut().poll(cx).is_ready();
        }
        if !writer_done {
            writer_done = writer.as_mut().poll(cx).is_ready();
        }
        if session_done && writer_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// Moves a value out of its box and frees the box now. (`*boxed` would
/// move the value out but keep the allocation until the binding's scope
/// ends, which for a connection's task is the end of the connection.)
#[allow(clippy::boxed_local)] // taking the box by value is the point
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Turns the socket's read half into the application's chunk stream: data
/// frames become chunks (the opcode is ignored, as ASP.NET Core ignores
/// it), a Close frame ends the stream, and an error fails it (noting in
/// `read_failure` the close status the error calls for).
///
/// A peer that goes away without the closing handshake (the TCP connection
/// ends or is reset mid-read) ends the stream cleanly, as ASP.NET Core
/// treats `ConnectionClosedPrematurely`: the hub's disconnect handler sees
/// a departure, not an error. Clients that drop the socket on `stop()` do
/// this on every normal exit.
fn inbound<S>(
    stream: S,
    read_failure: Arc<AtomicU16>,
) -> impl futures_util::Stream<Item = InboundChunk> + Unpin + Send
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send,
{
    stream
        .scan((), move |_, item| {
            std::future::ready(match item {
                Ok(Message::Close(_)) => None,
                Ok(message) => Some(data(message).map(Ok)),
                Err(error) if closed_prematurely(&error) => {
                    tracing::debug!(%error, "WebSocket closed without a closing handshake");
                    None
                }
                Err(error) => {
                    read_failure.store(close_status(&error), Ordering::Relaxed);
                    Some(Some(Err(ConnectionError::Transport(error.to_string()))))
                }
            })
        })
        .filter_map(std::future::ready)
}

/// Whether a read failed because the peer left without the closing
/// handshake: end of stream or a reset connection, as opposed to a breach
/// of the protocol.
fn closed_prematurely(error: &tungstenite::Error) -> bool {
    use tungstenite::{Error as WsError, error::ProtocolError};
    match error {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | WsError::ConnectionClosed
        | WsError::AlreadyClosed => true,
        WsError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Writes the opening's `answer`, then what the connection's queue holds,
/// with keep-alives, until the queue ends.
///
/// The answer goes out first and in a frame of its own (as ASP.NET Core
/// sends the handshake answer), before anything the application queues.
/// It is written here rather than before the connection starts because
/// the session is polled first (see [`session_then_writer`]): the
/// application registers the connection (a hub: with its lifetime
/// manager) before its client learns that it is connected, so a message
/// sent to everyone once the client's `start()` returned reaches it.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: outbox::Receiver,
    connection: Connection,
    (keep_alive, send_timeout): (Option<(Duration, Bytes)>, Duration),
    (answer, read_failure): (Option<Bytes>, Arc<AtomicU16>),
) {
    let format = connection.transfer_format();
    if let Some(answer) = answer {
        connection.record_sent(answer.len());
        let sent = match frame_message(format, answer) {
            Some(message) => timeout(send_timeout, sink.send(message)).await,
            None => Ok(Ok(())),
        };
        if !matches!(sent, Ok(Ok(()))) {
            // The session ends with the abort and cleans up as usual.
            connection.abort_with(AbortReason::Transport(
                "the opening's answer could not be sent".to_owned(),
            ));
            return;
        }
    }
    // Without a keep-alive the timer still bounds blocked writes; it just
    // never sends anything when it fires.
    let (keep_alive, ping) = match keep_alive {
        Some((interval, ping)) => (interval, Some(ping)),
        None => (send_timeout.max(Duration::from_secs(3600)), None),
    };
    let idle = sleep_until(Instant::now() + keep_alive);
    tokio::pin!(idle);
    // The keep-alive timer is not moved on every write (each reset takes a
    // lock of the timer wheel): when it fires, it is pushed back to where
    // the last write puts it, and a Ping goes out only if that has passed.
    let mut last_write = Instant::now();
    // The timer is polled only when it fired (or was reset), not after
    // every write of a busy connection.
    let mut gate = rx.gate();
    let mut batch: Vec<u8> = Vec::new();
    let mut code = 1000;
    loop {
        let first = tokio::select! {
            biased;
            // A slow consumer's kill ends the queue at once.
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
            () = std::future::poll_fn(|cx| gate.poll(idle.as_mut(), cx)) => {
                gate.arm();
                let due = last_write + keep_alive;
                if Instant::now() < due {
                    idle.as_mut().reset(due);
                    continue;
                }
                idle.as_mut().reset(Instant::now() + keep_alive);
                match &ping {
                    Some(ping) => Outbound::Frame(ping.clone()),
                    None => continue,
                }
            }
        };
        let mut closing = false;
        let count = |frame: &Bytes, _| {
            connection.record_sent(frame.len());
            true
        };
        let frame = match collect(first, &mut rx, &mut batch, &mut closing, count) {
            Some(frame) => frame,
            None if closing => break,
            None => continue,
        };
        let Some(message) = frame_message(format, frame) else {
            continue;
        };
        // Most writes complete at once. One that has to wait for the socket
        // uses the keep-alive timer as its send timeout, so a write costs no
        // timer of its own. The timeout runs from the moment the write
        // blocks: the kernel's socket buffers took what they could, the
        // client's TCP window is full, and nothing more goes out until the
        // client reads.
        let mut send = sink.send(message);
        let sent = match (&mut send).now_or_never() {
            Some(sent) => Some(sent),
            None => {
                idle.as_mut().reset(Instant::now() + send_timeout);
                let sent = tokio::select! {
                    biased;
                    sent = &mut send => Some(sent),
                    () = &mut idle => None,
                };
                idle.as_mut().reset(Instant::now() + keep_alive);
                // Polled above with the task's own waker: the gate must
                // look at it again.
                gate.arm();
                sent
            }
        };
        match sent {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                connection.abort_with(AbortReason::Transport(error.to_string()));
                code = 1011;
                break;
            }
            None => {
                connection.close_slow_consumer(SlowConsumer::NoWriteProgress(send_timeout));
                break;
            }
        }
        last_write = Instant::now();
        if closing {
            break;
        }
    }
    if code == 1000 {
        // A broken read ends the session, whose Close message ended this
        // loop: the socket is closed with the status that read called for.
        code = match read_failure.load(Ordering::Relaxed) {
            0 => code,
            failure => failure,
        };
    }
    if matches!(connection.abort_reason(), Some(AbortReason::SlowConsumer)) {
        // The socket takes nothing: waiting for it to take a Close frame
        // would only hold the connection longer.
        close_now(&mut sink, 1008);
        return;
    }
    // Boxed: an idle connection's task need not reserve room for closing.
    Box::pin(close(&mut sink, code)).await;
}
