//! [`Server`]: the hubs of one server, with the settings they share given
//! once.

use std::{any::TypeId, sync::Arc};

use axum::{Router, http::request::Parts};

use crate::{
    AuthError, Authenticator, Backplane, BoxFuture, Cluster, ConnectionEndpoint, ConnectionHandler,
    ConnectionLimits, Hub, HubContext, HubEndpoint, HubOptions, HubPaths, MemoryBackplane, Metrics,
    Principal, Shutdown,
};

/// The hubs of one server, ready to be served: an axum [`Router`] to merge
/// with the application's own routes and layers, and a [`HubContext`] per
/// hub for sending from any task.
///
/// ```no_run
/// # use tidings::{ConnectionLimits, HubOptions, Server};
/// # struct Chat;
/// # #[tidings::hub] impl Chat { async fn ping(&self) {} }
/// # struct Admin;
/// # #[tidings::hub] impl Admin { async fn ping(&self) {} }
/// # async fn run() -> std::io::Result<()> {
/// let server = Server::builder()
///     .connection_limits(ConnectionLimits::new().max_connections(10_000))
///     .allowed_origins(["https://app.example.com"])
///     .hub("/hubs/chat", Chat)
///     // Per-hub settings override the server's.
///     .hub_with("/hubs/admin", Admin, |hub| {
///         hub.options(HubOptions::default().enable_detailed_errors(true))
///     })
///     .build();
/// let chat = server.hub_context::<Chat>(); // send from background tasks
/// let app = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "hello" }))
///     .merge(server.into_router());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub struct Server {
    hubs: Vec<Mounted>,
    shutdown: Shutdown,
}

/// One hub of a built server.
struct Mounted {
    path: String,
    /// The hub's type and context; `None` for a raw connection endpoint.
    hub: Option<(TypeId, HubContext)>,
    router: Router,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field(
                "hubs",
                &self
                    .hubs
                    .iter()
                    .map(|h| h.path.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with no hubs, anonymous access, no limits, same-origin
    /// browsers only, [`HubOptions::default`] and the in-memory backplane.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The routes of every hub, each at its path: merge them with the
    /// application's routes (`app.merge(server.router())`), layers added
    /// to the merged router apply to the hubs too.
    ///
    /// Hub paths match as ASP.NET Core matches them, without regard to case
    /// and with an optional trailing slash: the router's fallback sends
    /// `/HUBS/Chat/negotiate/` to the hub at `/hubs/chat` (see
    /// [`HubPaths`]). An application with a fallback of its own (axum
    /// refuses to merge two) wraps its whole app in
    /// [`hub_paths`](Self::hub_paths) instead.
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let hubs = self.hub_routes::<()>();
        self.hub_routes()
            .fallback_service(self.hub_paths().route(hubs))
    }

    /// The hubs' paths, for routing a whole application's requests to them
    /// as ASP.NET Core does (`server.hub_paths().route(app)`).
    pub fn hub_paths(&self) -> HubPaths {
        HubPaths::new(self.hubs.iter().map(|hub| hub.path.clone()))
    }

    /// Each hub's routes at its exact path.
    fn hub_routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        // Each hub's router already holds its own state, so it is nested
        // as a service: the result fits a router of any state type.
        self.hubs.iter().fold(Router::new(), |router, hub| {
            router.nest_service(&hub.path, hub.router.clone())
        })
    }

    /// Like [`router`](Self::router), consuming the server.
    pub fn into_router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.router()
    }

    /// The context of the hub of type `H` (the first one registered, if
    /// the type serves several paths), for sending from any task.
    pub fn hub_context<H: Hub>(&self) -> Option<HubContext> {
        let hub = TypeId::of::<H>();
        self.hubs
            .iter()
            .filter_map(|mounted| mounted.hub.as_ref())
            .find(|(mounted, _)| *mounted == hub)
            .map(|(_, context)| context.clone())
    }

    /// The context of the hub served at `path`.
    pub fn context(&self, path: &str) -> Option<HubContext> {
        self.hubs
            .iter()
            .find(|mounted| mounted.path == path)
            .and_then(|mounted| mounted.hub.as_ref())
            .map(|(_, context)| context.clone())
    }

    /// The shutdown of every connection of every hub: call
    /// [`Shutdown::shutdown`] when the process is asked to stop.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}

/// Builds a [`Server`]: the settings every hub shares, then the hubs.
///
/// The order of the calls does not matter: the shared settings are applied
/// to every hub when [`build`](Self::build) runs, before the hub's own
/// settings (given to [`hub_with`](Self::hub_with)), which therefore win.
/// The [`backplane`](Self::backplane) is the exception: it is the server's,
/// and replaces any lifetime manager or cluster given to one hub.
pub struct ServerBuilder {
    shared: Shared,
    hubs: Vec<Registration>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            shared: Shared {
                authenticator: None,
                limits: None,
                origins: None,
                cors_credentials: None,
                metrics: None,
                shutdown: Shutdown::new(),
                options: HubOptions::default(),
                backplane: Arc::new(MemoryBackplane),
                cluster: None,
            },
            hubs: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field(
                "hubs",
                &self
                    .hubs
                    .iter()
                    .map(|h| h.path.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// The settings of every hub of the server.
struct Shared {
    authenticator: Option<Arc<dyn Authenticator>>,
    limits: Option<ConnectionLimits>,
    origins: Option<Vec<String>>,
    cors_credentials: Option<bool>,
    metrics: Option<Metrics>,
    shutdown: Shutdown,
    options: HubOptions,
    backplane: Arc<dyn Backplane>,
    /// The backplane's forwarding, asked once at `build`.
    cluster: Option<Arc<dyn Cluster>>,
}

/// An endpoint waiting for `build`: the shared settings are only known then.
struct Registration {
    path: String,
    mount: Mount,
}

/// Builds one endpoint from the shared settings: its routes, and for a hub
/// its type and context.
type Mount = Box<dyn FnOnce(&Shared) -> (Option<(TypeId, HubContext)>, Router) + Send>;

/// One authenticator serving every hub of the server.
struct SharedAuthenticator(Arc<dyn Authenticator>);

impl Authenticator for SharedAuthenticator {
    fn authenticate<'a>(
        &'a self,
        request: &'a Parts,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        self.0.authenticate(request)
    }
}

impl ServerBuilder {
    /// Authenticates the negotiate and transport requests of every hub.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.shared.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Counts the connections of all hubs under the same `limits`: the
    /// ceilings (and trusted proxies) are the server's, not one hub's.
    pub fn connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.shared.limits = Some(limits);
        self
    }

    /// Browser origins allowed besides the server's own, for every hub (see
    /// [`HubEndpoint::allowed_origins`]).
    pub fn allowed_origins<S: AsRef<str>>(mut self, origins: impl IntoIterator<Item = S>) -> Self {
        let origins = origins.into_iter().map(|o| o.as_ref().to_owned()).collect();
        self.shared.origins = Some(origins);
        self
    }

    /// Whether cross-origin requests may carry credentials, for every hub
    /// (see [`HubEndpoint::cors_credentials`]).
    pub fn cors_credentials(mut self, allow: bool) -> Self {
        self.shared.cors_credentials = Some(allow);
        self
    }

    /// Records every hub into `metrics` (each under its own name).
    pub fn metrics(mut self, metrics: &Metrics) -> Self {
        self.shared.metrics = Some(metrics.clone());
        self
    }

    /// Ties every connection to `shutdown` instead of the server's own
    /// (useful when something besides the hubs shares it).
    pub fn shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.shared.shutdown = shutdown.clone();
        self
    }

    /// The options of every hub, unless a hub sets its own.
    pub fn options(mut self, options: HubOptions) -> Self {
        self.shared.options = options;
        self
    }

    /// Shares the hubs with other servers: each hub gets the backplane's
    /// lifetime manager under the hub's [name](HubEndpoint::name), and the
    /// server forwards the requests of connections negotiated elsewhere
    /// when the backplane provides forwarding. Without it, every hub is
    /// in-memory, on this server only.
    pub fn backplane(mut self, backplane: Arc<dyn Backplane>) -> Self {
        self.shared.backplane = backplane;
        self
    }

    /// Serves `hub` at `path` (e.g. `/hubs/chat`) with the shared settings.
    ///
    /// # Panics
    ///
    /// If `path` does not start with `/`, is `/`, or is already taken.
    pub fn hub<H: Hub>(self, path: &str, hub: H) -> Self {
        self.hub_with(path, hub, |endpoint| endpoint)
    }

    /// Serves `hub` at `path`, then lets `configure` change its endpoint
    /// after the shared settings were applied: its name (on the backplane
    /// too), options, policies, filters, or any shared setting.
    ///
    /// # Panics
    ///
    /// As [`hub`](Self::hub).
    pub fn hub_with<H, F>(mut self, path: &str, hub: H, configure: F) -> Self
    where
        H: Hub,
        F: FnOnce(HubEndpoint<H>) -> HubEndpoint<H> + Send + 'static,
    {
        let path = self.free_path(path);
        self.hubs.push(Registration {
            path,
            mount: Box::new(move |shared: &Shared| {
                let endpoint = configure(shared.apply(HubEndpoint::new(hub)));
                let manager = shared.backplane.lifetime_manager(endpoint.hub_name());
                let mut endpoint = endpoint.lifetime_manager(manager);
                if let Some(cluster) = &shared.cluster {
                    endpoint = endpoint.cluster(Arc::clone(cluster));
                }
                // After the lifetime manager: the context sends through it.
                let context = endpoint.context();
                (Some((TypeId::of::<H>(), context)), endpoint.into_router())
            }),
        });
        self
    }

    /// Mounts a raw [`ConnectionHandler`] at `path` with the server's shared
    /// settings (authenticator, limits, origins, metrics, shutdown, the
    /// backplane's forwarding, and the transports and connection settings
    /// of the default [`HubOptions`]).
    pub fn connection<T: ConnectionHandler>(mut self, path: &str, handler: T) -> Self {
        let path = self.free_path(path);
        let name = path.clone();
        self.hubs.push(Registration {
            path,
            mount: Box::new(move |shared: &Shared| {
                let mut endpoint = ConnectionEndpoint::new(handler)
                    .options(shared.options.connection_options())
                    .shutdown(&shared.shutdown);
                if let Some(authenticator) = &shared.authenticator {
                    endpoint =
                        endpoint.authenticator(SharedAuthenticator(Arc::clone(authenticator)));
                }
                if let Some(limits) = &shared.limits {
                    endpoint = endpoint.connection_limits(limits);
                }
                if let Some(origins) = &shared.origins {
                    endpoint = endpoint.allowed_origins(origins);
                }
                if let Some(allow) = shared.cors_credentials {
                    endpoint = endpoint.cors_credentials(allow);
                }
                if let Some(metrics) = &shared.metrics {
                    endpoint = endpoint.metrics(metrics, &name);
                }
                if let Some(cluster) = &shared.cluster {
                    endpoint = endpoint.cluster(Arc::clone(cluster));
                }
                (None, endpoint.into_router())
            }),
        });
        self
    }

    /// `path` without its trailing slash, checked to be a path no other
    /// endpoint has.
    fn free_path(&self, path: &str) -> String {
        assert!(
            path.starts_with('/') && path != "/",
            "a hub's path starts with '/' and is not the root: {path:?}"
        );
        let path = path.trim_end_matches('/').to_owned();
        assert!(
            self.hubs.iter().all(|h| h.path != path),
            "two hubs at the same path: {path:?}"
        );
        path
    }

    /// The server.
    ///
    /// # Panics
    ///
    /// If a hub names an authorization policy it was not given (see
    /// [`HubEndpoint::policy`]).
    pub fn build(self) -> Server {
        let mut shared = self.shared;
        shared.cluster = Arc::clone(&shared.backplane).cluster();
        let hubs = self
            .hubs
            .into_iter()
            .map(|registration| {
                let (hub, router) = (registration.mount)(&shared);
                Mounted {
                    path: registration.path,
                    hub,
                    router,
                }
            })
            .collect();
        Server {
            hubs,
            shutdown: shared.shutdown,
        }
    }
}

impl Shared {
    /// `endpoint` with the server's settings.
    fn apply<H: Hub>(&self, endpoint: HubEndpoint<H>) -> HubEndpoint<H> {
        let mut endpoint = endpoint
            .options(self.options.clone())
            .shutdown(&self.shutdown);
        if let Some(authenticator) = &self.authenticator {
            endpoint = endpoint.authenticator(SharedAuthenticator(Arc::clone(authenticator)));
        }
        if let Some(limits) = &self.limits {
            endpoint = endpoint.connection_limits(limits);
        }
        if let Some(origins) = &self.origins {
            endpoint = endpoint.allowed_origins(origins);
        }
        if let Some(allow) = self.cors_credentials {
            endpoint = endpoint.cors_credentials(allow);
        }
        if let Some(metrics) = &self.metrics {
            endpoint = endpoint.metrics(metrics);
        }
        endpoint
    }
}
