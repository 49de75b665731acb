//! [`serve`]: an axum [`Router`] on one TCP port over HTTP/1.1 and HTTP/2.
//!
//! `axum::serve` speaks HTTP/1.1 only unless axum's `http2` feature is on,
//! and has no TLS. This module owns the accept loop of a tidings server:
//!
//! * Plain TCP serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on the
//!   same port: hyper-util's automatic builder tells them apart by the
//!   HTTP/2 connection preface.
//! * With a [`TlsConfig`] (feature `tls`), every connection is TLS and ALPN
//!   offers `h2` and `http/1.1`, so browsers multiplex their Server-Sent
//!   Events streams and requests on one connection.
//! * WebSockets upgrade over HTTP/1.1 (with or without TLS). Extended
//!   CONNECT (WebSockets over HTTP/2) is not advertised, so browsers open
//!   their WebSockets on an HTTP/1.1 connection, as they do with most
//!   servers.
//! * Graceful shutdown stops accepting, lets HTTP/1.1 connections finish
//!   their request, sends HTTP/2 `GOAWAY`, and waits for every connection to
//!   end. Long-lived responses (SSE, hub connections) must end by
//!   themselves: close hubs with [`Shutdown`](crate::Shutdown) and event logs
//!   with [`EventLog::close`](crate::sse::EventLog::close) in the shutdown
//!   signal.

use std::{
    fmt,
    future::{Future, IntoFuture},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "tls")]
pub use tls::{TlsConfig, TlsError};

/// How long a TLS client may take to complete its handshake.
#[cfg(feature = "tls")]
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an HTTP/1.1 connection may wait for a request head. hyper runs
/// this timer while a keep-alive connection is idle too, so it is also the
/// idle timeout: Kestrel's `KeepAliveTimeout`, long enough that clients
/// close their idle connections first and never race a server-side close
/// with a new request. HTTP/2 connections are not closed when idle.
const HTTP1_HEAD_TIMEOUT: Duration = Duration::from_secs(130);

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves `router` on `listener` over HTTP/1.1 and HTTP/2 (and TLS, see
/// `Serve::tls`, feature `tls`). Await the returned [`Serve`] to run the server.
///
/// Handlers can extract the peer address as
/// [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo).
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
/// tidings::serve(listener, app)
///     .with_graceful_shutdown(async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await
/// # }
/// ```
pub fn serve(listener: TcpListener, router: Router) -> Serve {
    Serve {
        listener,
        router,
        #[cfg(feature = "tls")]
        tls: None,
        signal: None,
    }
}

/// A server being configured; `.await` it to run it. Made by [`serve`].
#[must_use = "a Serve does nothing until it is awaited"]
pub struct Serve {
    listener: TcpListener,
    router: Router,
    #[cfg(feature = "tls")]
    tls: Option<TlsConfig>,
    signal: Option<Signal>,
}

impl fmt::Debug for Serve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Serve");
        s.field("listener", &self.listener);
        #[cfg(feature = "tls")]
        s.field("tls", &self.tls.is_some());
        s.field("graceful_shutdown", &self.signal.is_some())
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// Serves every connection over TLS, negotiating HTTP/2 or HTTP/1.1 by
    /// ALPN.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: TlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Shuts down gracefully when `signal` completes: no new connections,
    /// in-flight requests finish, then the future returned by `.await`
    /// completes.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    async fn run(self) -> io::Result<()> {
        let Serve {
            listener,
            router,
            #[cfg(feature = "tls")]
            tls,
            signal,
        } = self;
        let mut signal = signal.unwrap_or_else(|| Box::pin(std::future::pending()));
        let builder = Arc::new(builder());
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_failed(error).await;
                        continue;
                    }
                },
                () = &mut signal => break,
            };
            // Events are small and latency matters more than packing.
            let _ = stream.set_nodelay(true);
            // The watcher is taken now, so a shutdown that starts while a
            // TLS handshake runs still waits for this connection.
            let watcher = graceful.watcher();
            let builder = Arc::clone(&builder);
            let router = router.clone();
            #[cfg(feature = "tls")]
            let tls = tls.clone();
            tokio::spawn(async move {
                #[cfg(feature = "tls")]
                if let Some(tls) = tls {
                    match tls.accept(stream, TLS_HANDSHAKE_TIMEOUT).await {
                        Ok(stream) => {
                            serve_connection(&builder, stream, peer, router, watcher).await
                        }
                        Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    }
                    return;
                }
                serve_connection(&builder, stream, peer, router, watcher).await;
            });
        }
        drop(listener);
        tracing::debug!(
            connections = graceful.count(),
            "graceful shutdown: waiting for connections"
        );
        graceful.shutdown().await;
        Ok(())
    }
}

impl IntoFuture for Serve {
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// HTTP/1.1 and HTTP/2 (detected from the preface), with timers so that
/// header-read timeouts and HTTP/2 keep-alive work.
fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP1_HEAD_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Ends the HTTP/1.1 connection a request came on, whatever it is doing:
/// found in the extensions of requests served by [`serve`] over HTTP/1.1.
///
/// For a response the client has stopped reading (a slow consumer's event
/// stream): hyper stops polling a body it cannot write, so ending the body
/// does not end the connection, and hyper would hold it, with its buffers,
/// until the client reads or goes. (Over HTTP/2 the stream's flow-control
/// window bounds what it holds, and the connection carries other streams.)
#[derive(Clone, Default)]
pub(crate) struct ConnectionCloser(CancellationToken);

impl ConnectionCloser {
    pub(crate) fn close(&self) {
        self.0.cancel();
    }
}

/// Serves one connection until it ends, or gracefully once shutdown starts.
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    peer: SocketAddr,
    router: Router,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let closer = ConnectionCloser::default();
    let closed = closer.0.clone();
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if request.version() <= http::Version::HTTP_11 {
            request.extensions_mut().insert(closer.clone());
        }
        let request = request.map(Body::new);
        // `Router`'s error type is `Infallible`.
        router.clone().oneshot(request)
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::select! {
        served = watcher.watch(connection) => if let Err(error) = served {
            // Peers that vanish or send garbage end up here; nothing to do.
            tracing::debug!(%peer, %error, "connection ended with an error");
        },
        // Dropping the connection closes its socket.
        () = closed.cancelled() => tracing::debug!(%peer, "connection closed by its handler"),
    }
}

/// Too many open files and similar errors must not end the server: wait a
/// moment for descriptors to free up, then accept again.
async fn accept_failed(error: io::Error) {
    match error.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused => {}
        _ => {
            tracing::error!(%error, "accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
