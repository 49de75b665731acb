//! The standalone tidings server: the chat, test and dashboard hubs and the
//! plain SSE metrics stream on one port, in memory, over HTTP/1.1 and
//! HTTP/2 (h2c, or TLS with ALPN when a certificate is given).

mod config;
mod demo_tokens;
mod health;
mod hubs;
mod security;
mod service;
mod typescript;
mod web;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{extract::State, routing::get};
use clap::Parser;
use tidings::{
    Cluster, HubEndpoint, HubOptions, LifetimeManager, MemoryLifetimeManager, Shutdown, TlsConfig,
    sse::{EventLog, LastEventId, ServerSentEvents},
};
use tidings_redis::{RedisBackplane, RedisLifetimeManager, RedisOptions};
use tracing_subscriber::EnvFilter;

use crate::hubs::{
    chat::ChatHub,
    dashboard::{DashboardHub, Metrics, STREAM_HISTORY},
    test::TestHub,
};

/// A SignalR-compatible real-time server.
#[derive(Debug, Parser)]
#[command(name = "tidings", version)]
struct Args {
    #[command(subcommand)]
    command: Option<service::Command>,

    /// TOML configuration file; flags and their environment variables
    /// override it (see tidings.example.toml).
    #[arg(long, env = "TIDINGS_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Addresses to listen on (comma-separated or repeated, e.g. an IPv4
    /// and an IPv6 one); the first is the one other servers are told of.
    #[arg(
        long,
        env = "TIDINGS_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:5000"
    )]
    listen: Vec<SocketAddr>,

    /// Send the real text of hub method errors to clients.
    #[arg(long, env = "TIDINGS_DETAILED_ERRORS")]
    detailed_errors: bool,

    #[command(flatten)]
    security: security::SecurityArgs,

    /// Serve `POST /demo/token`, which signs a token for any user name, for
    /// the demo app at `/` (never in production: anyone can act as anyone).
    /// Without --jwt-secret the tokens use a random secret made at start.
    #[arg(long, env = "TIDINGS_DEMO_TOKENS")]
    demo_tokens: bool,

    /// Server keep-alive (Ping) interval, in milliseconds.
    #[arg(long, env = "TIDINGS_KEEP_ALIVE_MS", default_value_t = 15_000)]
    keep_alive_ms: u64,

    /// Close clients silent for this long, in milliseconds.
    #[arg(long, env = "TIDINGS_CLIENT_TIMEOUT_MS", default_value_t = 30_000)]
    client_timeout_ms: u64,

    /// Time allowed for the handshake, in milliseconds.
    #[arg(long, env = "TIDINGS_HANDSHAKE_TIMEOUT_MS", default_value_t = 15_000)]
    handshake_timeout_ms: u64,

    /// How long a negotiated, long-polling or stateful-reconnect connection may go without a transport, in milliseconds.
    #[arg(long, env = "TIDINGS_DISCONNECT_TIMEOUT_MS", default_value_t = 15_000)]
    disconnect_timeout_ms: u64,

    /// Largest message a client may send, in bytes (0 = unlimited).
    #[arg(long, env = "TIDINGS_MAX_MESSAGE_SIZE", default_value_t = 32 * 1024)]
    max_message_size: usize,

    /// How many invocations of one client may run at once.
    #[arg(long, env = "TIDINGS_MAX_PARALLEL_INVOCATIONS", default_value_t = 1)]
    max_parallel_invocations: usize,

    /// How many items of one stream may wait, in either direction (StreamBufferCapacity).
    #[arg(long, env = "TIDINGS_STREAM_BUFFER_CAPACITY", default_value_t = 10)]
    stream_buffer_capacity: usize,

    /// How long to wait for a client result, in milliseconds.
    #[arg(
        long,
        env = "TIDINGS_CLIENT_RESULT_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    client_result_timeout_ms: u64,

    /// How many messages may wait for one client before it is closed as a slow consumer.
    #[arg(long, env = "TIDINGS_OUTBOUND_BUFFER", default_value_t = 1024)]
    outbound_buffer: usize,

    /// Let clients keep their connection across a dropped WebSocket
    /// (`withStatefulReconnect()`); `false` to refuse it.
    #[arg(
        long,
        env = "TIDINGS_ALLOW_STATEFUL_RECONNECTS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    allow_stateful_reconnects: bool,

    /// Bytes of unacknowledged messages kept per stateful-reconnect connection for replay.
    #[arg(
        long,
        env = "TIDINGS_STATEFUL_RECONNECT_BUFFER",
        default_value_t = 100_000
    )]
    stateful_reconnect_buffer: usize,

    /// Transports to offer (comma-separated): WebSockets, ServerSentEvents, LongPolling.
    #[arg(
        long,
        env = "TIDINGS_TRANSPORTS",
        value_delimiter = ',',
        default_value = "WebSockets,ServerSentEvents,LongPolling"
    )]
    transports: Vec<Transport>,

    /// Period of the dashboard's metrics push, in milliseconds.
    #[arg(long, env = "TIDINGS_METRICS_PERIOD_MS", default_value_t = 2_000)]
    metrics_period_ms: u64,

    /// PEM certificate chain: serve HTTPS (HTTP/2 or HTTP/1.1 by ALPN).
    #[arg(long, env = "TIDINGS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of the certificate.
    #[arg(long, env = "TIDINGS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Log format: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, env = "TIDINGS_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,

    /// Redis URL (`redis://host:port`): turns on the backplane, so that
    /// several servers act as one.
    #[arg(long, env = "TIDINGS_REDIS")]
    redis: Option<String>,

    /// `--redis` names nodes of a Redis Cluster (comma-separated seeds,
    /// `redis://host:port,redis://host:port`): channel messages use
    /// sharded pub/sub, each going only to the shard owning its channel.
    #[arg(long, env = "TIDINGS_REDIS_CLUSTER", requires = "redis")]
    redis_cluster: bool,

    /// Prepended to every Redis channel and key, to keep applications
    /// sharing one Redis apart.
    #[arg(long, env = "TIDINGS_REDIS_PREFIX", default_value = "")]
    redis_prefix: String,

    /// `host:port` at which the other servers reach this one (requests for
    /// connections of this server are forwarded there). Default: the listen
    /// address, with 127.0.0.1 for an unspecified IP.
    #[arg(long, env = "TIDINGS_ADVERTISE")]
    advertise: Option<String>,

    /// Cross-server messages kept while Redis is away (more are dropped and counted).
    #[arg(long, env = "TIDINGS_REDIS_BUFFER_MESSAGES", default_value_t = 10_000)]
    redis_buffer_messages: usize,

    /// How often this server renews its registration on the backplane, in
    /// milliseconds; after five missed renewals the others forget its
    /// connections.
    #[arg(long, env = "TIDINGS_REDIS_HEARTBEAT_MS", default_value_t = 2_000)]
    redis_heartbeat_ms: u64,

    /// Bytes of cross-server messages kept while Redis is away.
    #[arg(long, env = "TIDINGS_REDIS_BUFFER_BYTES", default_value_t = 32 << 20)]
    redis_buffer_bytes: usize,

    /// Access key of the REST API (`/api/...`) and of client tokens; give
    /// several (comma-separated) to rotate: the first signs, all verify.
    #[arg(
        long = "access-key",
        env = "TIDINGS_ACCESS_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    access_keys: Vec<String>,

    /// Transports of hubs the configuration file gives their own list.
    #[arg(skip)]
    hub_transports: std::collections::BTreeMap<String, Vec<Transport>>,

    /// Largest REST API request body, in bytes.
    #[arg(long, env = "TIDINGS_REST_BODY_LIMIT", default_value_t = tidings_service::rest::DEFAULT_BODY_LIMIT)]
    rest_body_limit: usize,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A transport name as the SignalR protocol spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    #[value(name = "WebSockets", alias = "websockets")]
    WebSockets,
    #[value(name = "ServerSentEvents", alias = "sse")]
    ServerSentEvents,
    #[value(name = "LongPolling", alias = "longpolling")]
    LongPolling,
}

impl Args {
    /// The options of hub `name`: the server's, with the hub's own
    /// transports if the configuration file lists them.
    fn hub_options_for(&self, name: &str) -> HubOptions {
        let transports = self.hub_transports.get(name).unwrap_or(&self.transports);
        self.hub_options()
            .websockets(transports.contains(&Transport::WebSockets))
            .server_sent_events(transports.contains(&Transport::ServerSentEvents))
            .long_polling(transports.contains(&Transport::LongPolling))
    }

    fn hub_options(&self) -> HubOptions {
        HubOptions::default()
            .enable_detailed_errors(self.detailed_errors)
            .keep_alive_interval(Duration::from_millis(self.keep_alive_ms))
            .client_timeout_interval(Duration::from_millis(self.client_timeout_ms))
            .handshake_timeout(Duration::from_millis(self.handshake_timeout_ms))
            .disconnect_timeout(Duration::from_millis(self.disconnect_timeout_ms))
            .maximum_receive_message_size(
                (self.max_message_size > 0).then_some(self.max_message_size),
            )
            .maximum_parallel_invocations_per_client(self.max_parallel_invocations)
            .outbound_buffer_capacity(self.outbound_buffer)
            .stream_buffer_capacity(self.stream_buffer_capacity)
            .client_result_timeout(Duration::from_millis(self.client_result_timeout_ms))
            .allow_stateful_reconnects(self.allow_stateful_reconnects)
            .stateful_reconnect_buffer_size(self.stateful_reconnect_buffer)
            .websockets(self.transports.contains(&Transport::WebSockets))
            .server_sent_events(self.transports.contains(&Transport::ServerSentEvents))
            .long_polling(self.transports.contains(&Transport::LongPolling))
    }
}

fn endpoint<H: tidings::Hub>(
    (name, hub): (&str, H),
    args: &Args,
    shutdown: &Shutdown,
    (manager, cluster): (Arc<dyn LifetimeManager>, Option<Arc<dyn Cluster>>),
    security: &security::Security,
    registry: &tidings::Metrics,
) -> HubEndpoint<H> {
    let mut endpoint = HubEndpoint::new(hub)
        .name(name)
        .metrics(registry)
        .options(security.hub_options(args.hub_options_for(name)))
        .shutdown(shutdown)
        .lifetime_manager(manager);
    if let Some(cluster) = cluster {
        endpoint = endpoint.cluster(cluster);
    }
    security.apply(endpoint)
}

/// mimalloc rather than the system allocator: every message allocates and
/// frees small buffers on both worker threads, which mimalloc serves from
/// per-thread pages (BENCHMARKS.md has what it changes).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `tidings typescript ...` generates code instead of serving.
    if typescript::run_if_asked()? {
        return Ok(());
    }
    let (args, serverless) = service::configure()?;
    let args = match service::run_command(&args, &serverless)? {
        service::Next::Exit => return Ok(()),
        service::Next::Serve => args,
    };
    init_logging(args.log_format);
    let shutdown = Shutdown::new();
    let jwt_secret = (args.security.jwt_secret.clone())
        .or_else(|| args.demo_tokens.then(demo_tokens::random_secret));
    let auth = security::Security::new(&args.security, jwt_secret.as_deref())?;

    let mut listeners = Vec::with_capacity(args.listen.len());
    for address in &args.listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let local = listener.local_addr()?;
        listeners.push((listener, local));
    }
    let Some(&(_, local)) = listeners.first() else {
        anyhow::bail!("no address to listen on (--listen)");
    };

    let registry = tidings::Metrics::new();
    let lifetimes = Lifetimes::new(&args, local, &registry)?;
    if let Lifetimes::Redis { backplane, .. } = &lifetimes
        && !backplane.wait_connected(Duration::from_secs(5)).await
    {
        tracing::warn!(
            "Redis is not reachable yet: serving this server's clients, connecting in the background"
        );
    }
    let (args, auth) = (&args, &auth);
    let chat = endpoint(
        ("chat", ChatHub::default()),
        args,
        &shutdown,
        lifetimes.chat(),
        auth,
        &registry,
    );
    let test = endpoint(
        ("test", TestHub::default()),
        args,
        &shutdown,
        lifetimes.test(),
        auth,
        &registry,
    );
    // Metrics are per server: the dashboard's clients hear their own server only.
    let dashboard_manager = Arc::new(MemoryLifetimeManager::new());
    let dashboard = endpoint(
        ("dashboard", DashboardHub),
        args,
        &shutdown,
        (
            Arc::clone(&dashboard_manager) as Arc<dyn LifetimeManager>,
            lifetimes.cluster(),
        ),
        auth,
        &registry,
    );

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(TlsConfig::from_pem_files(cert, key).context("cannot load the TLS certificate")?)
        }
        _ => None,
    };

    let mut rest = service::rest_api(
        &args.access_keys,
        [("chat", chat.context()), ("test", test.context())],
    )?
    .body_limit(args.rest_body_limit);
    let mut serverless_routes = axum::Router::new();
    for spec in serverless {
        let hub = service::serverless_hub(&spec, &args.access_keys)?;
        let endpoint = endpoint(
            (spec.name.as_str(), hub),
            args,
            &shutdown,
            lifetimes.for_hub(&spec.name),
            auth,
            &registry,
        );
        rest = rest.hub(&spec.name, endpoint.context());
        serverless_routes =
            serverless_routes.nest(&format!("/hubs/{}", spec.name), endpoint.into_router());
    }

    let stream = EventLog::<Metrics>::new(STREAM_HISTORY);
    let metrics = tokio::spawn(hubs::dashboard::push_metrics(
        dashboard.context(),
        stream.clone(),
        lifetimes.connection_counter(dashboard_manager),
        registry.clone(),
        Duration::from_millis(args.metrics_period_ms.max(100)),
    ));

    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(health::router(
            shutdown.clone(),
            registry.clone(),
            args.redis.is_some(),
        ))
        .merge(registry.router())
        .merge(rest.into_router())
        .route(
            "/dashboard/stream",
            get(dashboard_stream).with_state(stream.clone()),
        )
        .merge(web::router())
        .merge(demo_tokens::router(
            jwt_secret
                .as_deref()
                .filter(|_| args.demo_tokens)
                .map(|secret| demo_tokens::DemoTokenSettings {
                    secret,
                    issuer: args.security.jwt_issuer.as_deref(),
                    audience: args.security.jwt_audience.as_deref(),
                }),
        ))
        .nest("/hubs/chat", chat.into_router())
        .nest("/hubs/test", test.into_router())
        .nest("/hubs/dashboard", dashboard.into_router())
        .merge(serverless_routes);

    let scheme = if tls.is_some() { "https" } else { "http" };
    for (_, local) in &listeners {
        tracing::info!(address = %local, scheme, "tidings listening (HTTP/1.1 and HTTP/2)");
        // Scripts read this line to learn the port when listening on port 0.
        println!("listening on {scheme}://{local}");
    }

    // One shutdown for every listener: they stop accepting only once the
    // hubs have drained, so that /readyz keeps answering 503 and clients
    // keep collecting their Close until then.
    let (drained, drained_rx) = tokio::sync::watch::channel(false);
    let signal_shutdown = shutdown.clone();
    // A task of its own: should a listener fail, the error ends the
    // process without waiting for a signal.
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: closing connections");
        // Event-stream responses end once the log is closed; hub
        // connections are closed by the hub shutdown.
        stream.close();
        let closed = signal_shutdown.shutdown(Duration::from_secs(10)).await;
        tracing::info!(drained = closed, "connections closed");
        let _ = drained.send(true);
    });
    let servers = listeners.into_iter().map(|(listener, _)| {
        let mut drained = drained_rx.clone();
        let mut server = tidings::serve(listener, app.clone()).with_graceful_shutdown(async move {
            let _ = drained.wait_for(|done| *done).await;
        });
        if let Some(tls) = &tls {
            server = server.tls(tls.clone());
        }
        server.into_future()
    });
    futures_util::future::try_join_all(servers).await?;
    metrics.abort();
    Ok(())
}

/// The lifetime managers of the chat and test hubs: in memory, or on the
/// Redis backplane.
enum Lifetimes {
    Memory {
        chat: Arc<MemoryLifetimeManager>,
        test: Arc<MemoryLifetimeManager>,
    },
    Redis {
        backplane: Arc<RedisBackplane>,
        chat: Arc<RedisLifetimeManager>,
        test: Arc<RedisLifetimeManager>,
    },
}

impl Lifetimes {
    fn new(args: &Args, local: SocketAddr, registry: &tidings::Metrics) -> anyhow::Result<Self> {
        let Some(url) = &args.redis else {
            return Ok(Lifetimes::Memory {
                chat: Arc::new(MemoryLifetimeManager::new()),
                test: Arc::new(MemoryLifetimeManager::new()),
            });
        };
        let advertise = match &args.advertise {
            Some(address) => address.clone(),
            None if local.ip().is_unspecified() => format!("127.0.0.1:{}", local.port()),
            None => local.to_string(),
        };
        let options = if args.redis_cluster {
            RedisOptions::cluster(url.split(',').map(str::trim).filter(|u| !u.is_empty()))
        } else {
            RedisOptions::new(url.as_str())
        };
        let options = options
            .channel_prefix(args.redis_prefix.as_str())
            .advertise(advertise.as_str())
            .buffer(args.redis_buffer_messages, args.redis_buffer_bytes)
            .metrics(registry.backplane().clone())
            .heartbeat(
                Duration::from_millis(args.redis_heartbeat_ms.max(10)),
                Duration::from_millis(args.redis_heartbeat_ms.max(10) * 5),
            );
        let backplane =
            Arc::new(RedisBackplane::start(options).context("cannot use the Redis URL")?);
        tracing::info!(server_id = backplane.server_id(), %advertise, "Redis backplane on");
        Ok(Lifetimes::Redis {
            chat: backplane.lifetime_manager("tidings.ChatHub"),
            test: backplane.lifetime_manager("tidings.TestHub"),
            backplane,
        })
    }

    /// The chat hub's lifetime manager, and the cluster it forwards in.
    fn chat(&self) -> (Arc<dyn LifetimeManager>, Option<Arc<dyn Cluster>>) {
        match self {
            Lifetimes::Memory { chat, .. } => (Arc::clone(chat) as _, None),
            Lifetimes::Redis { chat, .. } => (Arc::clone(chat) as _, self.cluster()),
        }
    }

    /// The test hub's lifetime manager, and the cluster it forwards in.
    fn test(&self) -> (Arc<dyn LifetimeManager>, Option<Arc<dyn Cluster>>) {
        match self {
            Lifetimes::Memory { test, .. } => (Arc::clone(test) as _, None),
            Lifetimes::Redis { test, .. } => (Arc::clone(test) as _, self.cluster()),
        }
    }

    /// A lifetime manager of its own for hub `name` (a serverless hub),
    /// and the cluster it forwards in.
    fn for_hub(&self, name: &str) -> (Arc<dyn LifetimeManager>, Option<Arc<dyn Cluster>>) {
        match self {
            Lifetimes::Memory { .. } => (Arc::new(MemoryLifetimeManager::new()) as _, None),
            Lifetimes::Redis { backplane, .. } => (
                backplane.lifetime_manager(&format!("tidings.serverless.{name}")) as _,
                self.cluster(),
            ),
        }
    }

    /// The cluster, with the backplane: requests of connections negotiated
    /// on another server are forwarded to it.
    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        match self {
            Lifetimes::Memory { .. } => None,
            Lifetimes::Redis { backplane, .. } => Some(Arc::clone(backplane) as _),
        }
    }

    /// Counts this server's connections of every hub.
    fn connection_counter(
        &self,
        dashboard: Arc<MemoryLifetimeManager>,
    ) -> impl Fn() -> usize + Send + 'static {
        let (chat, test): (Arc<dyn Fn() -> usize + Send + Sync>, _) = match self {
            Lifetimes::Memory { chat, test } => {
                let (chat, test) = (Arc::clone(chat), Arc::clone(test));
                (
                    Arc::new(move || chat.connection_count()),
                    Arc::new(move || test.connection_count())
                        as Arc<dyn Fn() -> usize + Send + Sync>,
                )
            }
            Lifetimes::Redis { chat, test, .. } => {
                let (chat, test) = (Arc::clone(chat), Arc::clone(test));
                (
                    Arc::new(move || chat.local().connection_count()),
                    Arc::new(move || test.local().connection_count()) as _,
                )
            }
        };
        move || chat() + test() + dashboard.connection_count()
    }
}

/// `GET /dashboard/stream`: the metrics as plain Server-Sent Events,
/// resuming after `Last-Event-ID`.
async fn dashboard_stream(
    State(stream): State<EventLog<Metrics>>,
    last: LastEventId,
) -> ServerSentEvents {
    stream.sse(last)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => logs.init(),
        // One JSON object per line, with the fields of the enclosing spans
        // (an invocation's hub, method and connection id).
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
