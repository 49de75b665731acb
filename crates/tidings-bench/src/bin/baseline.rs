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

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::{
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
}

type Queue = mpsc::Sender<Message>;

#[derive(Default)]
struct Groups {
    next_id: AtomicU64,
    members: Mutex<HashMap<String, HashMap<u64, Queue>>>,
}

impl Groups {
    fn join(&self, group: &str, queue: Queue) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(group.to_owned())
            .or_default()
            .insert(id, queue);
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
        if let Some(group_members) = members.get(group) {
            for queue in group_members.values() {
                // A full queue is a slow listener: it loses the frame (the load
                // generator counts it as undelivered) rather than the sender waiting.
                let _ = queue.try_send(frame.clone());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, Queue>>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
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
    let groups = Arc::new(Groups::default());
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
        let queue = args.queue;
        tokio::spawn(async move {
            if let Err(error) = serve(stream, groups, queue).await {
                // Resets at the end of a run are expected; keep the output quiet.
                let _ = error;
            }
        });
    }
}

// The upgrade callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, groups: Arc<Groups>, queue: usize) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut target = String::new();
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
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
            fanout(ws, &groups, group, sender, queue).await
        }
        _ => {
            let mut ws = ws;
            let _ = ws.close(None).await;
            Ok(())
        }
    }
}

async fn echo(mut ws: tokio_tungstenite::WebSocketStream<TcpStream>) -> anyhow::Result<()> {
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
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    groups: &Groups,
    group: &str,
    sender: bool,
    queue: usize,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(queue);
    // A sender keeps its own queue open (and empty), so its writer waits
    // instead of ending the connection.
    let member = (!sender).then(|| groups.join(group, tx.clone()));
    let _own = sender.then_some(tx);
    let writer = async {
        // Write every queued frame, then flush once: few syscalls in bursts.
        while let Some(first) = rx.recv().await {
            sink.feed(first).await?;
            while let Ok(next) = rx.try_recv() {
                sink.feed(next).await?;
            }
            sink.flush().await?;
        }
        anyhow::Ok(())
    };
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
