//! [`HubEndpoint`]: one hub and its settings, mounted in an axum router as
//! a [`HubHandler`] on the connection layer's routes.

use std::sync::Arc;

use axum::Router;

use crate::{
    auth::{Authenticator, Policies, Principal, UserIdProvider},
    connections::{access::ConnectionLimits, cluster::Cluster, routes::Setup},
    error::short_type_name,
    hub::{
        context::{HubContext, HubShared},
        definition::Hub,
        dispatch::Methods,
        filter::HubFilter,
        handler::HubHandler,
        lifetime::{LifetimeManager, MemoryLifetimeManager},
        options::HubOptions,
    },
    metrics::Metrics,
    shutdown::Shutdown,
};

/// A hub ready to be mounted in an axum [`Router`].
///
/// ```no_run
/// # use tidings::{HubEndpoint, HubError, Context};
/// # struct Chat;
/// # #[tidings::hub] impl Chat { async fn ping(&self) -> String { "pong".into() } }
/// # async fn run() {
/// let chat = HubEndpoint::new(Chat);
/// let pusher = chat.context(); // send from background tasks
/// let app: axum::Router = axum::Router::new().nest("/hubs/chat", chat.into_router());
/// # let _ = (app, pusher);
/// # }
/// ```
///
/// Wrap the app with [`HubPaths`](crate::HubPaths) for paths of any case
/// and with a trailing slash, as ASP.NET Core routes hubs.
pub struct HubEndpoint<H: Hub> {
    hub: Arc<H>,
    name: Arc<str>,
    metrics: Option<Metrics>,
    options: HubOptions,
    lifetime: Arc<dyn LifetimeManager>,
    /// The connection layer's settings (authenticator, limits, origins,
    /// cluster, shutdown); its options and metrics are the hub's, given at
    /// `into_router`.
    setup: Setup,
    access: Access,
}

/// The hub's own security settings: who the user is and what it may call.
#[derive(Clone, Default)]
struct Access {
    policies: Policies,
    user_ids: Option<UserIdProvider>,
    filters: Vec<Arc<dyn HubFilter>>,
}

impl<H: Hub> std::fmt::Debug for HubEndpoint<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubEndpoint")
            .field("hub", &std::any::type_name::<H>())
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<H: Hub> HubEndpoint<H> {
    /// An endpoint for `hub` with default options and an in-memory lifetime
    /// manager.
    pub fn new(hub: H) -> Self {
        HubEndpoint {
            hub: Arc::new(hub),
            name: Arc::from(short_type_name::<H>()),
            metrics: None,
            options: HubOptions::default(),
            lifetime: Arc::new(MemoryLifetimeManager::new()),
            setup: Setup::default(),
            access: Access::default(),
        }
    }

    /// Replaces the options.
    pub fn options(mut self, options: HubOptions) -> Self {
        self.options = options;
        self
    }

    /// Names the hub: the `signalr_hub` label of its metrics and the
    /// `rpc.service` of its invocation spans. Defaults to the type's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Arc::from(name.into());
        self
    }

    /// The hub's name (see [`name`](Self::name)).
    pub(crate) fn hub_name(&self) -> &str {
        &self.name
    }

    /// Records the hub's connections, messages and invocations into a
    /// (usually server-wide) [`Metrics`] registry.
    pub fn metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Replaces the lifetime manager (e.g. with a backplane). Call it before
    /// [`context`](Self::context), whose handle uses the manager of the moment.
    pub fn lifetime_manager(mut self, manager: Arc<dyn LifetimeManager>) -> Self {
        self.lifetime = manager;
        self
    }

    /// Authenticates negotiate and transport requests. Without one, every
    /// connection is anonymous.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.setup.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Chooses the user identifier of each connection from its principal
    /// (ASP.NET Core's `IUserIdProvider`), e.g. an `email` claim instead of
    /// the name identifier. `None` makes the connection anonymous to
    /// `Clients.User`.
    pub fn user_id_provider(
        mut self,
        provider: impl Fn(&Principal) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.access.user_ids = Some(Arc::new(provider));
        self
    }

    /// The user identifier is the first value of the claim `kind` (e.g.
    /// `email`) instead of what the authenticator chose (for a JWT, its
    /// name-identifier claim). A principal without that claim has no user
    /// identifier, as in ASP.NET Core when a custom `IUserIdProvider`
    /// answers `null`.
    ///
    /// ```
    /// # use tidings::HubEndpoint;
    /// # struct Chat;
    /// # #[tidings::hub] impl Chat { async fn ping(&self) {} }
    /// let endpoint = HubEndpoint::new(Chat).user_id_claim("email");
    /// # let _ = endpoint;
    /// ```
    pub fn user_id_claim(self, kind: impl Into<String>) -> Self {
        let kind = kind.into();
        self.user_id_provider(move |principal| principal.claim(&kind).map(str::to_owned))
    }

    /// Registers a named policy for `#[authorize(policy = "name")]`: a
    /// predicate over the caller's principal.
    ///
    /// ```
    /// # use tidings::HubEndpoint;
    /// # struct Chat;
    /// # #[tidings::hub] impl Chat { #[authorize(policy = "staff")] async fn ping(&self) {} }
    /// let endpoint = HubEndpoint::new(Chat)
    ///     .policy("staff", |user| user.claim("email").is_some_and(|e| e.ends_with("@example.com")));
    /// # let _ = endpoint;
    /// ```
    pub fn policy(
        mut self,
        name: impl Into<String>,
        policy: impl Fn(&Principal) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.access.policies.insert(name.into(), Arc::new(policy));
        self
    }

    /// Adds a [`HubFilter`], run around every invocation (filters run in
    /// the order they were added).
    pub fn filter(mut self, filter: impl HubFilter) -> Self {
        self.access.filters.push(Arc::new(filter));
        self
    }

    /// Counts this endpoint's connections under `limits` (share one value
    /// between endpoints for a server-wide ceiling).
    pub fn connection_limits(mut self, limits: &ConnectionLimits) -> Self {
        self.setup.limits = Some(limits.clone());
        self
    }

    /// Browser origins allowed besides the server's own (`scheme://host[:port]`,
    /// or `*` for any): cross-origin HTTP requests get CORS answers for them,
    /// and WebSocket upgrades carrying another `Origin` are refused with
    /// `403`. Without this, only same-origin pages may connect (clients
    /// outside browsers send no `Origin` and are not affected).
    pub fn allowed_origins<S: AsRef<str>>(mut self, origins: impl IntoIterator<Item = S>) -> Self {
        self.setup.allow_origins(origins);
        self
    }

    /// Whether cross-origin requests of the allowed origins may carry
    /// credentials (`Access-Control-Allow-Credentials`; on by default, as
    /// the official JavaScript client sends them).
    pub fn cors_credentials(mut self, allow: bool) -> Self {
        self.setup.cors_credentials(allow);
        self
    }

    /// Makes this server one of a cluster without sticky sessions: requests
    /// for a connection negotiated on another server of the cluster are
    /// forwarded to it (see [`Cluster`]). Without it nothing is forwarded and
    /// ids carry no server id.
    pub fn cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.setup.cluster = Some(cluster);
        self
    }

    /// Ties the endpoint's connections to a shared [`Shutdown`].
    pub fn shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.setup.shutdown = shutdown.clone();
        self
    }

    /// A handle for sending to this hub's clients from any task.
    pub fn context(&self) -> HubContext {
        HubContext::new(Arc::new(self.shared()))
    }

    fn shared(&self) -> HubShared {
        HubShared {
            name: Arc::clone(&self.name),
            lifetime: Arc::clone(&self.lifetime),
            options: self.options.clone(),
            metrics: self.metrics.as_ref().map(|m| m.hub(&self.name)),
        }
    }

    /// The routes of this hub, to be nested at the hub's path.
    pub fn into_router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let shared = Arc::new(self.shared());
        let access = self.access;
        check_policies::<H>(&access.policies);
        let setup = Setup {
            options: self.options.connection_options(),
            metrics: shared.metrics.clone(),
            ..self.setup
        };
        let handler = HubHandler {
            hub: self.hub,
            methods: Methods::new(),
            shared,
            shutdown: setup.shutdown.clone(),
            policies: access.policies,
            user_ids: access.user_ids,
            filters: access.filters.into(),
        };
        setup.into_router(Arc::new(handler))
    }
}

/// Every policy the hub's attributes name must be registered: a typo would
/// otherwise deny every call at run time.
fn check_policies<H: Hub>(policies: &Policies) {
    let named = H::methods()
        .iter()
        .chain(H::fallback())
        .filter_map(|m| m.authorize)
        .chain(H::authorization())
        .filter_map(|a| a.policy());
    for name in named {
        assert!(
            policies.contains(name),
            "the authorization policy '{name}' is not registered (HubEndpoint::policy)"
        );
    }
}
