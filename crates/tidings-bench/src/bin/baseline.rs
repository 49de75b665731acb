//! `tidings-baseline`: a raw WebSocket server (tokio-tungstenite, no SignalR
//! framing, no hub) that measures what the transport itself can do, so the
//! load generator's figures for tidings can be given as a ratio to it.
//!
//! ```text
//! GET /echo                        every data frame is written back as is
//! GET /fanout?group=G              listen to group G
//! GET /fanout?group=G&send=1       every data frame is written to every listener of G
//! ```
//!
//! Fan-out is built as a real server would build it, and as tidings does: a frame is shared (reference-counted) between recipients, each
//! connection has a bounded queue drained by its own writer, and a full
//! queue drops the slow listener instead of slowing the sender.
//!
//! `--direct` measures the alternative design: the sender's task writes one
//! pre-framed WebSocket frame (server frames are not masked, so the bytes
//! are the same for every listener) straight to each listener's socket with
//! a non-blocking write, and only a socket that cannot take it all at once
//! falls back to its queue and writer. No listener task is woken while the
//! sockets keep up; `--direct-tasks N` splits each fan-out over N tasks.
//! `--writer-task` measures a leaner writer instead: each listener's queue
//! holds pre-framed frames, drained by a task of its own that writes them
//! straight to the socket, and the connection's task only reads.
//! BENCHMARKS.md has what each measured.
//!
//! `--codec tokio-websockets` serves `/echo` and `/fanout` (the queued
//! design) with the tokio-websockets codec instead of tungstenite: a
//! second raw baseline, on the fastest codec evaluated, that shows where
//! the transport's own limit stands.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::handshake::server::ErrorResponse;
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{Request, Response},
    protocol::WebSocketConfig,
};

/// A raw WebSocket echo and fan-out server.
#[derive(Debug, Parser)]
#[command(name = "tidings-baseline", version)]
struct Args {
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:5100")]
    listen: SocketAddr,
    /// Frames that may wait for one listener before it is dropped.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    /// Fan-out writes straight to each listener's socket from the sender's
    /// task (see the crate docs) instead of through the listener's queue.
    #[arg(long)]
    direct: bool,
    /// With `--direct`: each fan-out's writes are split over this many
    /// tasks, spawned per message, so that every core writes.
    #[arg(long, default_value_t = 1)]
    direct_tasks: usize,
    /// Each listener's writer is a task of its own, which writes the queued
    /// pre-framed frames straight to the socket (what waits is packed into
    /// one write); the connection's task only reads. See the crate docs.
    #[arg(long)]
    writer_task: bool,
    /// The WebSocket codec (`--direct` and `--writer-task` are tungstenite's only).
    #[arg(long, value_enum, default_value = "tungstenite")]
    codec: Codec,
}

/// The WebSocket implementation that serves the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Codec {
    Tungstenite,
    TokioWebsockets,
}

/// How a listener is reached.
enum Member {
    /// Through its bounded queue, drained by its own writer.
    Queued(mpsc::Sender<Message>),
    /// Written to directly while its socket keeps up.
    Direct(Arc<Direct>),
    /// Through its queue of pre-framed frames, drained by a writer task.
    Framed(mpsc::Sender<Bytes>),
    /// Through its bounded queue, drained by its own tokio-websockets writer.
    Tws(mpsc::Sender<tokio_websockets::Message>),
}

/// A listener of `--direct` fan-out.
struct Direct {
    socket: Arc<TcpStream>,
    /// Whether frames wait in `queue`: while they do, new frames queue
    /// behind them (writing directly would overtake them). Only changed
    /// under this lock, and frames are only queued under it, so the writer
    /// cannot clear it while a frame is being queued.
    backlog: Mutex<bool>,
    queue: mpsc::Sender<Bytes>,
}

impl Direct {
    fn deliver(&self, frame: &Bytes) {
        let mut backlog = self.backlog.lock();
        if *backlog {
            // Full: a slow listener loses the frame, as in the queued mode.
            let _ = self.queue.try_send(frame.clone());
            return;
        }
        let rest = match self.socket.try_write(frame) {
            Ok(written) if written == frame.len() => return,
            Ok(written) => frame.slice(written..),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => frame.clone(),
            // A broken socket: its reader sees the error and leaves the group.
            Err(_) => return,
        };
        *backlog = true;
        let _ = self.queue.try_send(rest);
    }
}

#[derive(Default)]
struct Groups {
    /// Tasks each direct fan-out is split over (`--direct-tasks`).
    direct_tasks: usize,
    next_id: AtomicU64,
    members: Mutex<HashMap<String, HashMap<u64, Member>>>,
}

impl Groups {
    fn join(&self, group: &str, member: Member) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(group.to_owned())
            .or_default()
            .insert(id, member);
        id
    }

    fn leave(&self, group: &str, id: u64) {
        let mut members = self.lock();
        if let Some(group_members) = members.get_mut(group) {
            group_members.remove(&id);
            if group_members.is_empty() {
                members.remove(group);
            }
        }
    }

    /// Queues `frame` for every member of `group` without waiting.
    fn send(&self, group: &str, frame: &Message) {
        let members = self.lock();
        let Some(group_members) = members.get(group) else {
            return;
        };
        // Framed once for every direct listener.
        let mut framed = None;
        // Direct listeners left to the split fan-out (`--direct-tasks`).
        let mut split = Vec::new();
        for member in group_members.values() {
            match member {
                // A full queue is a slow listener: it loses the frame (the load
                // generator counts it as undelivered) rather than the sender waiting.
                Member::Queued(queue) => {
                    let _ = queue.try_send(frame.clone());
                }
                Member::Direct(direct) if self.direct_tasks > 1 => split.push(Arc::clone(direct)),
                Member::Direct(direct) => {
                    direct.deliver(framed.get_or_insert_with(|| server_frame(frame)))
                }
                Member::Framed(queue) => {
                    let frame = framed.get_or_insert_with(|| server_frame(frame));
                    let _ = queue.try_send(frame.clone());
                }
                // A tokio-websockets server has only such members (`send_tws`).
                Member::Tws(_) => {}
            }
        }
        drop(members);
        if !split.is_empty() {
            let frame = framed.unwrap_or_else(|| server_frame(frame));
            split_fan_out(split, frame, self.direct_tasks);
        }
    }

    /// Queues `message` for every member of `group` without waiting (the
    /// tokio-websockets server's fan-out: its messages share their payload).
    fn send_tws(&self, group: &str, message: &tokio_websockets::Message) {
        let members = self.lock();
        let Some(group_members) = members.get(group) else {
            return;
        };
        for member in group_members.values() {
            if let Member::Tws(queue) = member {
                // A full queue drops the slow listener's frame, as above.
                let _ = queue.try_send(message.clone());
            }
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, HashMap<u64, Member>>> {
        self.members.lock()
    }
}

/// Writes `frame` to every one of `directs` from `tasks` tasks, each taking
/// an equal share.
fn split_fan_out(directs: Vec<Arc<Direct>>, frame: Bytes, tasks: usize) {
    let share = directs.len().div_ceil(tasks).max(1);
    let directs = Arc::new(directs);
    for start in (0..directs.len()).step_by(share) {
        let (directs, frame) = (Arc::clone(&directs), frame.clone());
        tokio::spawn(async move {
            let end = (start + share).min(directs.len());
            for direct in &directs[start..end] {
                direct.deliver(&frame);
            }
        });
    }
}

/// `message` as the bytes of an unmasked (server) WebSocket frame.
fn server_frame(message: &Message) -> Bytes {
    let (opcode, payload): (u8, &[u8]) = match message {
        Message::Text(text) => (0x1, text.as_bytes()),
        Message::Binary(bytes) => (0x2, bytes),
        _ => (0x2, &[]),
    };
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | opcode);
    match u16::try_from(payload.len()) {
        Ok(len @ 0..=125) => frame.push(len as u8),
        Ok(len) => {
            frame.push(126);
            frame.extend_from_slice(&len.to_be_bytes());
        }
        Err(_) => {
            frame.push(127);
            frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// A socket shared between the connection's task (tungstenite reads it,
/// the fallback writer writes it) and `--direct` fan-out, which writes it
/// with non-blocking writes that register no waker.
struct Shared(Arc<TcpStream>);

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn config() -> WebSocketConfig {
    // A small read buffer, as the tidings WebSocket transport has: the
    // default (128 KiB, allocated up front) would dominate the memory of an
    // idle connection. Writes are buffered until the flush after a burst.
    WebSocketConfig::default().read_buffer_size(512)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("listening on http://{}", listener.local_addr()?);
    let groups = Arc::new(Groups {
        direct_tasks: args.direct_tasks,
        ..Groups::default()
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: wait for some to free up.
                eprintln!("accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let groups = Arc::clone(&groups);
        let mode = Mode {
            queue: args.queue,
            direct: args.direct,
            writer_task: args.writer_task,
        };
        let codec = args.codec;
        tokio::spawn(async move {
            let served = match codec {
                Codec::Tungstenite => serve(stream, groups, mode).await,
                Codec::TokioWebsockets => tws::serve(stream, groups, mode.queue).await,
            };
            if let Err(error) = served {
                // Resets at the end of a run are expected; keep the output quiet.
                let _ = error;
            }
        });
    }
}

/// How listeners are served (see [`Args`]).
#[derive(Clone, Copy)]
struct Mode {
    queue: usize,
    direct: bool,
    writer_task: bool,
}

// The upgrade callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, groups: Arc<Groups>, mode: Mode) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let socket = Arc::new(stream);
    let mut target = String::new();
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        Shared(Arc::clone(&socket)),
        |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
            target = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            Ok(response)
        },
        Some(config()),
    )
    .await?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    match path {
        "/echo" => echo(ws).await,
        "/fanout" => {
            let mut group = "all";
            let mut sender = false;
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some(("group", g)) => group = g,
                    Some(("send", v)) => sender = v == "1",
                    _ => {}
                }
            }
            if mode.writer_task && !sender {
                return framed_listener(ws, &groups, group, mode.queue, socket).await;
            }
            let direct = mode.direct.then_some(socket);
            fanout(ws, &groups, group, sender, mode.queue, direct).await
        }
        _ => {
            let mut ws = ws;
            let _ = ws.close(None).await;
            Ok(())
        }
    }
}

type WebSocket = tokio_tungstenite::WebSocketStream<Shared>;

async fn echo(mut ws: WebSocket) -> anyhow::Result<()> {
    while let Some(message) = ws.next().await {
        match message? {
            message @ (Message::Text(_) | Message::Binary(_)) => ws.send(message).await?,
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

async fn fanout(
    ws: WebSocket,
    groups: &Groups,
    group: &str,
    sender: bool,
    queue: usize,
    direct: Option<Arc<TcpStream>>,
) -> anyhow::Result<()> {
    if let Some(socket) = direct.filter(|_| !sender) {
        return direct_listener(ws, groups, group, queue, socket).await;
    }
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(queue);
    // A sender keeps its own queue open (and empty), so its writer waits
    // instead of ending the connection.
    let member = (!sender).then(|| groups.join(group, Member::Queued(tx.clone())));
    let _own = sender.then_some(tx);
    let writer = write_queued(&mut sink, &mut rx);
    let reader = async {
        while let Some(message) = stream.next().await {
            match message? {
                message @ (Message::Text(_) | Message::Binary(_)) if sender => {
                    groups.send(group, &message)
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    if let Some(id) = member {
        groups.leave(group, id);
    }
    result
}

/// A listener of `--direct` fan-out: the writer only drains what the
/// fan-out could not write at once; the reader waits for the end.
async fn direct_listener(
    ws: WebSocket,
    groups: &Groups,
    group: &str,
    queue: usize,
    socket: Arc<TcpStream>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(queue);
    let direct = Arc::new(Direct {
        socket: Arc::clone(&socket),
        backlog: Mutex::new(false),
        queue: tx,
    });
    let id = groups.join(group, Member::Direct(Arc::clone(&direct)));
    let mut out = Shared(socket);
    let writer = async {
        while let Some(frame) = rx.recv().await {
            out.write_all(&frame).await?;
            let mut backlog = direct.backlog.lock();
            if rx.is_empty() {
                *backlog = false;
            }
        }
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = writer => r,
        r = read_until_close(ws) => r,
    };
    groups.leave(group, id);
    result
}

/// Reads a listener's socket until the client closes it (a listener sends
/// nothing else).
async fn read_until_close(mut ws: WebSocket) -> anyhow::Result<()> {
    while let Some(message) = ws.next().await {
        if let Message::Close(_) = message? {
            break;
        }
    }
    Ok(())
}

/// A listener of `--writer-task` fan-out: its writer task drains the queue
/// of pre-framed frames, packing whatever waits into one write; this task
/// reads until the end.
async fn framed_listener(
    ws: WebSocket,
    groups: &Groups,
    group: &str,
    queue: usize,
    socket: Arc<TcpStream>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(queue);
    let id = groups.join(group, Member::Framed(tx));
    let writer = tokio::spawn(async move {
        let mut out = Shared(socket);
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            let Ok(second) = rx.try_recv() else {
                out.write_all(&first).await?;
                continue;
            };
            batch.clear();
            batch.extend_from_slice(&first);
            batch.extend_from_slice(&second);
            while let Ok(next) = rx.try_recv() {
                batch.extend_from_slice(&next);
            }
            out.write_all(&batch).await?;
        }
        anyhow::Ok(())
    });
    let result = read_until_close(ws).await;
    groups.leave(group, id);
    writer.abort();
    result
}

/// The same `/echo` and queued `/fanout` over the tokio-websockets codec.
mod tws {
    use super::*;
    use tokio_websockets::{Config, Limits, Message, ServerBuilder, WebSocketStream};

    type WebSocket = WebSocketStream<TcpStream>;

    pub(super) async fn serve(
        stream: TcpStream,
        groups: Arc<Groups>,
        queue: usize,
    ) -> anyhow::Result<()> {
        stream.set_nodelay(true)?;
        // Frames as large as tungstenite's default limit; writes are
        // buffered until the flush after a burst, as above.
        let (request, ws) = ServerBuilder::new()
            .config(Config::default())
            .limits(Limits::default().max_payload_len(Some(64 << 20)))
            .accept(stream)
            .await?;
        let target = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        match path {
            "/echo" => echo(ws).await,
            "/fanout" => {
                let mut group = "all";
                let mut sender = false;
                for pair in query.split('&') {
                    match pair.split_once('=') {
                        Some(("group", g)) => group = g,
                        Some(("send", v)) => sender = v == "1",
                        _ => {}
                    }
                }
                fanout(ws, &groups, group, sender, queue).await
            }
            _ => {
                let mut ws = ws;
                let _ = ws.close().await;
                Ok(())
            }
        }
    }

    async fn echo(mut ws: WebSocket) -> anyhow::Result<()> {
        while let Some(message) = ws.next().await {
            let message = message?;
            if message.is_text() || message.is_binary() {
                ws.send(message).await?;
            } else if message.is_close() {
                break;
            }
        }
        Ok(())
    }

    async fn fanout(
        ws: WebSocket,
        groups: &Groups,
        group: &str,
        sender: bool,
        queue: usize,
    ) -> anyhow::Result<()> {
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::channel::<Message>(queue);
        let member = (!sender).then(|| groups.join(group, Member::Tws(tx.clone())));
        let _own = sender.then_some(tx);
        let writer = write_queued(&mut sink, &mut rx);
        let reader = async {
            while let Some(message) = stream.next().await {
                let message = message?;
                if sender && (message.is_text() || message.is_binary()) {
                    groups.send_tws(group, &message);
                } else if message.is_close() {
                    break;
                }
            }
            anyhow::Ok(())
        };
        let result = tokio::select! {
            r = writer => r,
            r = reader => r,
        };
        if let Some(id) = member {
            groups.leave(group, id);
        }
        result
    }
}

/// A connection's writer, for either codec: writes every queued frame,
/// then flushes once, so a burst costs few syscalls.
async fn write_queued<M, S>(sink: &mut S, rx: &mut mpsc::Receiver<M>) -> anyhow::Result<()>
where
    S: futures_util::Sink<M> + Unpin,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    while let Some(first) = rx.recv().await {
        sink.feed(first).await?;
        while let Ok(next) = rx.try_recv() {
            sink.feed(next).await?;
        }
        sink.flush().await?;
    }
    Ok(())
}
