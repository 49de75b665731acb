//! Cancelling server-to-client streams, over raw WebSockets against a real
//! server: a CancelInvocation right behind its StreamInvocation (in the
//! same frame or the next) still lets the method run, clean up and end with
//! a Completion; a streaming method's `CancellationToken` is cancelled on
//! CancelInvocation, on disconnect and on shutdown; and a transport failure
//! reaches `on_disconnected` named once.

#[path = "support/http_client.rs"]
mod http_client;
#[path = "support/raw.rs"]
mod raw;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, bail, ensure};
use futures_util::{Stream, StreamExt};
use raw::{Incoming, RawConnection, Transport, WAIT, cancel, encode, invocation, stream_invoke};
use tidings::{CancellationToken, ConnectionError, Context, HubEndpoint, Shutdown, hub};
use tidings_protocol::{CompletionResult, HubMessage, Protocol};
use tokio::sync::mpsc;

/// How many connections each framing of the cancel race is tried on.
const CONNECTIONS: usize = 100;

/// Counts one finished cleanup when the stream holding it is dropped.
struct Cleanup(Arc<AtomicUsize>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Streams {
    /// `Tracked` methods that ran.
    started: Arc<AtomicUsize>,
    /// `Tracked` streams that were dropped (their cleanup).
    cleaned: Arc<AtomicUsize>,
    /// The key of each `Watched` stream whose token was cancelled.
    cancelled: mpsc::UnboundedSender<String>,
    /// The error text of each disconnection.
    disconnected: mpsc::UnboundedSender<Option<String>>,
}

#[hub]
impl Streams {
    /// Counts its run, yields once (as a method that awaits anything
    /// would), then streams one item and waits for ever; dropping the
    /// stream counts its cleanup.
    #[hub(stream)]
    async fn tracked(&self) -> impl Stream<Item = u32> + use<> {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        let cleanup = Cleanup(Arc::clone(&self.cleaned));
        futures_util::stream::unfold((cleanup, 0), |(cleanup, i)| async move {
            if i > 0 {
                std::future::pending::<()>().await;
            }
            Some((i, (cleanup, i + 1)))
        })
    }

    /// Streams one item and waits for ever. When its token is cancelled it
    /// sends the caller `Cancelled(key)` (a last message) and reports `key`.
    #[hub(stream)]
    async fn watched(
        &self,
        cx: &Context,
        key: String,
        cancel: CancellationToken,
    ) -> impl Stream<Item = u32> + use<> {
        let hub = cx.hub_context();
        let caller = cx.connection_id().to_owned();
        let report = self.cancelled.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            let _ = hub
                .clients()
                .client(caller)
                .send("Cancelled", (key.clone(),))
                .await;
            let _ = report.send(key);
        });
        futures_util::stream::iter([0]).chain(futures_util::stream::pending())
    }

    #[on_disconnected]
    async fn gone(&self, error: Option<ConnectionError>) {
        let _ = self.disconnected.send(error.map(|e| e.to_string()));
    }
}

struct Server {
    addr: SocketAddr,
    started: Arc<AtomicUsize>,
    cleaned: Arc<AtomicUsize>,
    cancelled: mpsc::UnboundedReceiver<String>,
    disconnected: mpsc::UnboundedReceiver<Option<String>>,
    shutdown: Shutdown,
}

/// A server with the hub at `/streams`.
async fn start() -> anyhow::Result<Server> {
    let (cancelled_tx, cancelled) = mpsc::unbounded_channel();
    let (disconnected_tx, disconnected) = mpsc::unbounded_channel();
    let started = Arc::new(AtomicUsize::new(0));
    let cleaned = Arc::new(AtomicUsize::new(0));
    let shutdown = Shutdown::new();
    let hub = Streams {
        started: Arc::clone(&started),
        cleaned: Arc::clone(&cleaned),
        cancelled: cancelled_tx,
        disconnected: disconnected_tx,
    };
    let app = axum::Router::new().nest(
        "/streams",
        HubEndpoint::new(hub).shutdown(&shutdown).into_router(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(tidings::serve(listener, app).into_future());
    Ok(Server {
        addr,
        started,
        cleaned,
        cancelled,
        disconnected,
        shutdown,
    })
}

async fn connect(addr: SocketAddr) -> anyhow::Result<RawConnection> {
    RawConnection::connect(addr, "/streams", Transport::WebSockets, Protocol::Json).await
}

/// Reads until the Completion of stream `id` (StreamItems before it are
/// fine) and fails unless it completed without error.
async fn expect_completion(connection: &mut RawConnection, id: &str) -> anyhow::Result<()> {
    loop {
        match connection.next().await? {
            Incoming::Message(HubMessage::StreamItem(item)) if item.invocation_id == id => {}
            Incoming::Message(HubMessage::Completion(completion))
                if completion.invocation_id == id =>
            {
                ensure!(
                    matches!(completion.result, CompletionResult::Void),
                    "stream {id} completed with {:?}",
                    completion.result
                );
                return Ok(());
            }
            other => bail!("expected the Completion of {id}, got {other:?}"),
        }
    }
}

/// Streams `Tracked` and cancels it at once on [`CONNECTIONS`] connections
/// at the same time, the two messages in one WebSocket frame or in two.
async fn cancel_right_behind(one_frame: bool) -> anyhow::Result<()> {
    let server = start().await?;
    let runs = (0..CONNECTIONS).map(|n| async move {
        let mut connection = connect(server.addr).await?;
        let id = format!("s{n}");
        let invoke = stream_invoke(Protocol::Json, &id, "Tracked")?;
        let cancel = cancel(Protocol::Json, &id)?;
        if one_frame {
            connection.send([invoke, cancel].concat()).await?;
        } else {
            connection.send(invoke).await?;
            connection.send(cancel).await?;
        }
        expect_completion(&mut connection, &id)
            .await
            .with_context(|| format!("connection {n}"))
    });
    let outcomes = futures_util::future::join_all(runs).await;
    let failed: Vec<String> = outcomes
        .into_iter()
        .filter_map(|outcome| outcome.err().map(|e| format!("{e:#}")))
        .collect();
    ensure!(
        failed.is_empty(),
        "{} of {CONNECTIONS} connections failed, first: {}",
        failed.len(),
        failed[0]
    );
    // The stream is dropped before its Completion is sent.
    assert_eq!(
        server.started.load(Ordering::SeqCst),
        CONNECTIONS,
        "methods run"
    );
    assert_eq!(
        server.cleaned.load(Ordering::SeqCst),
        CONNECTIONS,
        "cleanups run"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_the_same_frame_as_its_stream_invocation() -> anyhow::Result<()> {
    cancel_right_behind(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_the_frame_after_its_stream_invocation() -> anyhow::Result<()> {
    cancel_right_behind(false).await
}

/// Starts `Watched(key)` as stream `id` and reads its first item.
async fn watch(connection: &mut RawConnection, id: &str, key: &str) -> anyhow::Result<()> {
    let message = HubMessage::StreamInvocation(invocation(Protocol::Json, id, "Watched", (key,))?);
    connection.send(encode(Protocol::Json, &message)?).await?;
    match connection.next().await? {
        Incoming::Message(HubMessage::StreamItem(item)) if item.invocation_id == id => Ok(()),
        other => bail!("expected the first item of {id}, got {other:?}"),
    }
}

async fn next_cancelled(server: &mut Server) -> anyhow::Result<String> {
    tokio::time::timeout(WAIT, server.cancelled.recv())
        .await
        .context("no stream token was cancelled in time")?
        .context("the hub is gone")
}

#[tokio::test]
async fn the_token_is_cancelled_by_cancel_invocation() -> anyhow::Result<()> {
    let mut server = start().await?;
    let mut connection = connect(server.addr).await?;
    watch(&mut connection, "w", "by-cancel").await?;
    connection.send(cancel(Protocol::Json, "w")?).await?;
    // The Completion and the method's last message, in either order.
    let (mut completed, mut told) = (false, false);
    while !(completed && told) {
        match connection.next().await? {
            Incoming::Message(HubMessage::Completion(c)) if c.invocation_id == "w" => {
                ensure!(matches!(c.result, CompletionResult::Void), "{:?}", c.result);
                completed = true;
            }
            Incoming::Message(HubMessage::Invocation(i)) if i.target == "Cancelled" => {
                let key: Vec<String> = i
                    .arguments
                    .iter()
                    .map(|a| a.deserialize())
                    .collect::<Result<_, _>>()?;
                assert_eq!(key, ["by-cancel"]);
                told = true;
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(next_cancelled(&mut server).await?, "by-cancel");
    Ok(())
}

#[tokio::test]
async fn the_token_is_cancelled_when_the_connection_ends() -> anyhow::Result<()> {
    let mut server = start().await?;
    let mut connection = connect(server.addr).await?;
    watch(&mut connection, "w", "by-disconnect").await?;
    // A clean close: the client's Close message, then the socket goes.
    connection
        .send(encode(
            Protocol::Json,
            &HubMessage::Close(Default::default()),
        )?)
        .await?;
    drop(connection);
    assert_eq!(next_cancelled(&mut server).await?, "by-disconnect");
    Ok(())
}

#[tokio::test]
async fn the_token_is_cancelled_on_shutdown() -> anyhow::Result<()> {
    let mut server = start().await?;
    let mut connection = connect(server.addr).await?;
    watch(&mut connection, "w", "by-shutdown").await?;
    let shutdown = server.shutdown.clone();
    let drained = tokio::spawn(async move { shutdown.shutdown(WAIT).await });
    assert_eq!(next_cancelled(&mut server).await?, "by-shutdown");
    // The connection is closed as a shutdown closes it.
    loop {
        match connection.next().await? {
            Incoming::Message(HubMessage::Close(close)) => {
                assert!(close.allow_reconnect, "{close:?}");
                break;
            }
            Incoming::Message(_) => {}
            Incoming::Ended(how) => bail!("ended without a Close: {how}"),
        }
    }
    drop(connection);
    assert!(drained.await?, "connections drained");
    Ok(())
}

#[tokio::test]
async fn a_transport_failure_is_named_once() -> anyhow::Result<()> {
    let mut server = start().await?;
    let mut connection = connect(server.addr).await?;
    // Not UTF-8 in a Text frame: the server's WebSocket read fails.
    connection
        .send_raw_text_frame(vec![0xff, 0xfe, 0x1e])
        .await?;
    let error = tokio::time::timeout(WAIT, server.disconnected.recv())
        .await
        .context("no disconnection in time")?
        .context("the hub is gone")?
        .context("the disconnection carries no error")?;
    let detail = error
        .strip_prefix("IOException: ")
        .with_context(|| format!("not an IOException: {error:?}"))?;
    assert!(
        !detail.contains("IOException"),
        "the type is named twice: {error:?}"
    );
    assert!(!detail.is_empty(), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn a_stream_invocation_without_the_token_parameter_counts_no_argument_for_it()
-> anyhow::Result<()> {
    // The token is filled in by the server: `Watched` takes one argument.
    let server = start().await?;
    let mut connection = connect(server.addr).await?;
    let message = HubMessage::StreamInvocation(invocation(Protocol::Json, "x", "Watched", ())?);
    connection.send(encode(Protocol::Json, &message)?).await?;
    match connection.next().await? {
        Incoming::Message(HubMessage::Completion(c)) => match c.result {
            CompletionResult::Error(text) => assert_eq!(
                text,
                "Failed to invoke 'Watched' due to an error on the server."
            ),
            other => bail!("expected an error, got {other:?}"),
        },
        other => bail!("expected a Completion, got {other:?}"),
    }
    Ok(())
}
