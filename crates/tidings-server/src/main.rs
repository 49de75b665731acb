//! The standalone tidings server: the chat and dashboard hubs (and, for
//! the test suites, the test hub) and the
//! plain SSE metrics stream on one port, in memory, over HTTP/1.1 and
//! HTTP/2 (h2c, or TLS with ALPN when a certificate is given).

mod config;
mod demo_tokens;
mod health;
mod hubs;
mod security;
mod service;
mod telemetry;
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

use crate::{
    config::{Settings, Transport},
    hubs::{
        chat::ChatHub,
        dashboard::{DashboardHub, Metrics, STREAM_HISTORY},
        test::TestHub,
    },
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

    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// The options of hub `name`: the server's, with the hub's own
    /// transports if the configuration file lists them.
    fn hub_options_for(&self, name: &str) -> HubOptions {
        let transports = config::transports(self, name);
        self.hub_options()
            .websockets(transports.contains(&Transport::WebSockets))
            .server_sent_events(transports.contains(&Transport::ServerSentEvents))
            .long_polling(transports.contains(&Transport::LongPolling))
    }

    fn hub_options(&self) -> HubOptions {
        let (server, limits) = (&self.server, &self.limits);
        HubOptions::default()
            .enable_detailed_errors(server.detailed_errors)
            .keep_alive_interval(limits.keep_alive.0)
            .client_timeout_interval(limits.client_timeout.0)
            .handshake_timeout(limits.handshake_timeout.0)
            .disconnect_timeout(limits.disconnect_timeout.0)
            .maximum_receive_message_size(
                (limits.max_message_size > 0).then_some(limits.max_message_size),
            )
            .maximum_parallel_invocations_per_client(limits.max_parallel_invocations)
            .outbound_buffer_capacity(limits.outbound_buffer)
            .transport_send_timeout(limits.send_timeout.0)
            .stream_buffer_capacity(limits.stream_buffer_capacity)
            .client_result_timeout(limits.client_result_timeout.0)
            .allow_stateful_reconnects(limits.allow_stateful_reconnects)
            .stateful_reconnect_buffer_size(limits.stateful_reconnect_buffer)
    }
}

fn endpoint<H: tidings::Hub>(
    (name, hub): (&str, H),
    args: &Settings,
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

/// Turns transparent huge pages off for this process. Where the kernel
/// backs every large enough anonymous mapping with 2 MiB pages (THP
/// "always", a common default), the allocator's regions fill whole huge
/// pages that connections touch only in part: measured with the suite's
/// idle scenario, an idle connection held 5.7 KiB with them against 5.5
/// without (WebSocket), 44 against 32 KiB (Server-Sent Events) and 56
/// against 43 KiB (Long Polling), and the server started in 10 MiB
/// instead of 16 (BENCHMARKS.md, "Idle memory per connection"). A server
/// of many small connections gains little from huge pages' fewer TLB
/// misses. The flag covers the whole process, its threads included.
///
/// Done first thing, so that as little as possible is mapped before; the
/// outcome is logged once logging is set up.
fn no_huge_pages() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    return nix::sys::prctl::set_thp_disable(true).map_err(|error| error.to_string());
    #[cfg(not(target_os = "linux"))]
    Ok(())
}

/// mimalloc rather than the system allocator: every message allocates and
/// frees small buffers on both worker threads, which mimalloc serves from
/// per-thread pages (BENCHMARKS.md has what it changes).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let huge_pages = no_huge_pages();
    // `tidings typescript ...` generates code instead of serving.
    if typescript::run_if_asked()? {
        return Ok(());
    }
    let (args, serverless) = service::configure()?;
    let args = match service::run_command(&args, &serverless)? {
        service::Next::Exit => return Ok(()),
        service::Next::Serve => args.settings,
    };
    let mut telemetry = telemetry::Telemetry::init(args.server.log_format);
    if let Err(error) = huge_pages {
        tracing::debug!(%error, "transparent huge pages could not be turned off");
    }
    let shutdown = Shutdown::new();
    let jwt_secret = (args.auth.jwt_secret.clone())
        .or_else(|| args.auth.demo_tokens.then(demo_tokens::random_secret));
    let auth = security::Security::new(&args, jwt_secret.as_deref())?;

    let mut listeners = Vec::with_capacity(args.server.listen.len());
    for address in &args.server.listen {
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
    telemetry.export_metrics(&registry);
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
    // A fixture of the test suites (anyone may broadcast to everyone and
    // send to any user): served only when asked for.
    let test = args.server.test_hub.then(|| {
        endpoint(
            ("test", TestHub::default()),
            args,
            &shutdown,
            lifetimes.test(),
            auth,
            &registry,
        )
    });
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

    let tls = match (&args.tls.cert, &args.tls.key) {
        (Some(cert), Some(key)) => {
            Some(TlsConfig::from_pem_files(cert, key).context("cannot load the TLS certificate")?)
        }
        _ => None,
    };

    let mut rest = service::rest_api(
        &args.auth.access_keys,
        std::iter::once(("chat", chat.context()))
            .chain(test.as_ref().map(|test| ("test", test.context()))),
    )?
    .body_limit(args.limits.rest_body);
    let mut serverless_routes = axum::Router::new();
    let mut hub_paths = vec!["/hubs/chat".to_owned(), "/hubs/dashboard".to_owned()];
    if test.is_some() {
        hub_paths.push("/hubs/test".to_owned());
    }
    for spec in serverless {
        let hub = service::serverless_hub(&spec, &args.auth.access_keys)?;
        let endpoint = endpoint(
            (spec.name.as_str(), hub),
            args,
            &shutdown,
            lifetimes.for_hub(&spec.name),
            auth,
            &registry,
        );
        rest = rest.hub(&spec.name, endpoint.context());
        let path = format!("/hubs/{}", spec.name);
        serverless_routes = serverless_routes.nest(&path, endpoint.into_router());
        hub_paths.push(path);
    }

    let stream = EventLog::<Metrics>::new(STREAM_HISTORY);
    let metrics = tokio::spawn(hubs::dashboard::push_metrics(
        dashboard.context(),
        stream.clone(),
        lifetimes.connection_counter(dashboard_manager),
        registry.clone(),
        args.server.metrics_period.0.max(Duration::from_millis(100)),
    ));

    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(health::router(
            shutdown.clone(),
            lifetimes.backplane_status(),
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
                .filter(|_| args.auth.demo_tokens)
                .map(|secret| demo_tokens::DemoTokenSettings {
                    secret,
                    issuer: args.auth.jwt_issuer.as_deref(),
                    audience: args.auth.jwt_audience.as_deref(),
                }),
        ))
        .nest("/hubs/chat", chat.into_router())
        .nest("/hubs/dashboard", dashboard.into_router())
        .merge(serverless_routes);
    let app = match test {
        Some(test) => app.nest("/hubs/test", test.into_router()),
        None => app,
    };
    // Hub paths are matched as ASP.NET Core matches them.
    let app = tidings::HubPaths::new(hub_paths).route(app);

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
    let flushed = match &lifetimes {
        Lifetimes::Redis { backplane, .. } => Some(Arc::clone(backplane)),
        Lifetimes::Memory { .. } => None,
    };
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
        // What moved connections' sessions sent last is still on its way to
        // their new servers.
        if let Some(backplane) = flushed {
            if !backplane.flush(Duration::from_secs(2)).await {
                tracing::warn!("messages for Redis were still queued at exit");
            }
            backplane.leave().await;
        }
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
    telemetry.shutdown().await;
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
    fn new(
        args: &Settings,
        local: SocketAddr,
        registry: &tidings::Metrics,
    ) -> anyhow::Result<Self> {
        let Some(url) = &args.redis.url else {
            return Ok(Lifetimes::Memory {
                chat: Arc::new(MemoryLifetimeManager::new()),
                test: Arc::new(MemoryLifetimeManager::new()),
            });
        };
        let advertise = match &args.server.advertise {
            Some(address) => address.clone(),
            None if local.ip().is_unspecified() => format!("127.0.0.1:{}", local.port()),
            None => local.to_string(),
        };
        let heartbeat = args.redis.heartbeat.0.max(Duration::from_millis(10));
        let options = if args.redis.cluster {
            RedisOptions::cluster(url.split(',').map(str::trim).filter(|u| !u.is_empty()))
        } else {
            RedisOptions::new(url.as_str())
        };
        let options = options
            .channel_prefix(args.redis.prefix.as_str())
            .advertise(advertise.as_str())
            .buffer(args.redis.buffer_messages, args.redis.buffer_bytes)
            .drop_policy(args.redis.drop_policy.into())
            .metrics(registry.backplane().clone())
            .heartbeat(heartbeat, heartbeat * 5);
        let options = match args.redis.durable.0 {
            Duration::ZERO => options,
            retention => options.durable(retention),
        };
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

    /// What `/readyz` reports of the backplane, if there is one.
    fn backplane_status(&self) -> Option<health::BackplaneStatus> {
        match self {
            Lifetimes::Memory { .. } => None,
            Lifetimes::Redis { backplane, .. } => {
                let backplane = Arc::clone(backplane);
                Some(Arc::new(move || backplane.stats()))
            }
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
