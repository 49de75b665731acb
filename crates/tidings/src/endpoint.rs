//! [`HubEndpoint`]: one hub mounted in an axum router — the negotiate
//! endpoint, the transport endpoint, and the registry of negotiated
//! connections waiting for their transport.
//!
//! ```text
//! POST {hub}/negotiate      → connection id + secret token, transports
//! GET  {hub}?id=<token>     → WebSocket upgrade → transport → session
//! GET  {hub}                → WebSocket without negotiation (new connection)
//! ```

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use bytes::Bytes;
use parking_lot::Mutex;
use tidings_protocol::{
    AvailableTransport, NegotiateRequest, NegotiateResponse, TransferFormat, TransportType,
};

use tokio::sync::mpsc;

use crate::{
    HubContext, HubFilter, HubOptions, Metrics, Principal, Shutdown,
    access::{ConnectionLimits, Origins, Refused, Slot},
    auth::{
        AuthError, Authenticator, Denied, Policies, SharedAuthenticator, UserIdProvider,
        bearer_token, form_urlencoded_pairs,
    },
    cluster::{self, Cluster},
    connection::ConnectionInit,
    context::HubShared,
    dispatch::Methods,
    error::short_type_name,
    hub::Hub,
    lifetime::{LifetimeManager, MemoryLifetimeManager},
    metrics::TransportMetrics,
    registry::Registry,
    serve::ConnectionCloser,
    transport::{
        self,
        http::{self, HttpConnection, Inbound},
        resume::{Reattach, Resumable},
        socket::Upgrade,
    },
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
    authenticator: Option<SharedAuthenticator>,
    shutdown: Shutdown,
    cluster: Option<Arc<dyn Cluster>>,
    access: Access,
}

/// The security settings of an endpoint beyond authentication.
#[derive(Clone, Default)]
struct Access {
    policies: Policies,
    user_ids: Option<UserIdProvider>,
    filters: Vec<Arc<dyn HubFilter>>,
    limits: Option<ConnectionLimits>,
    origins: Option<Origins>,
}

/// The hub filters of an endpoint, shared with its connections.
pub(crate) type Filters = Arc<[Arc<dyn HubFilter>]>;

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
            authenticator: None,
            shutdown: Shutdown::new(),
            cluster: None,
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
        self.authenticator = Some(Arc::new(authenticator));
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
        self.access.limits = Some(limits.clone());
        self
    }

    /// Browser origins allowed besides the server's own (`scheme://host[:port]`,
    /// or `*` for any): cross-origin HTTP requests get CORS answers for them,
    /// and WebSocket upgrades carrying another `Origin` are refused with
    /// `403`. Without this, only same-origin pages may connect (clients
    /// outside browsers send no `Origin` and are not affected).
    pub fn allowed_origins<S: AsRef<str>>(mut self, origins: impl IntoIterator<Item = S>) -> Self {
        let credentials = self.access.origins.as_ref().is_none_or(|o| o.credentials);
        let mut origins = Origins::new(origins);
        origins.credentials = credentials;
        self.access.origins = Some(origins);
        self
    }

    /// Whether cross-origin requests of the allowed origins may carry
    /// credentials (`Access-Control-Allow-Credentials`; on by default, as
    /// the official JavaScript client sends them).
    pub fn cors_credentials(mut self, allow: bool) -> Self {
        let origins = self.access.origins.get_or_insert_with(Origins::default);
        origins.credentials = allow;
        self
    }

    /// Makes this server one of a cluster without sticky sessions: requests
    /// for a connection negotiated on another server of the cluster are
    /// forwarded to it (see [`Cluster`]). Without it nothing is forwarded and
    /// ids carry no server id.
    pub fn cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Ties the endpoint's connections to a shared [`Shutdown`].
    pub fn shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.shutdown = shutdown.clone();
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
        let cors = access
            .origins
            .as_ref()
            .filter(|o| o.is_configured())
            .map(Origins::cors);
        let endpoint = Arc::new(Endpoint {
            policies: access.policies,
            user_ids: access.user_ids,
            filters: access.filters.into(),
            limits: access.limits,
            origins: access.origins.unwrap_or_default(),
            methods: Methods::new(),
            shared,
            hub: self.hub,
            authenticator: self.authenticator,
            shutdown: self.shutdown,
            cluster: self.cluster,
            pending: Mutex::new(Pending::default()),
            http: Registry::default(),
            resumable: Registry::default(),
            websockets: Arc::default(),
        });
        let router = Router::new()
            .route("/negotiate", post(negotiate::<H>))
            .route("/", get(connect::<H>).post(send::<H>).delete(delete::<H>))
            .with_state(endpoint);
        match cors {
            Some(cors) => router.layer(cors),
            None => router,
        }
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

/// The state behind a mounted hub.
pub(crate) struct Endpoint<H: Hub> {
    pub hub: Arc<H>,
    pub methods: Methods<H>,
    pub shared: Arc<HubShared>,
    pub shutdown: Shutdown,
    authenticator: Option<SharedAuthenticator>,
    /// Named authorization policies.
    pub policies: Policies,
    user_ids: Option<UserIdProvider>,
    /// Hub filters, in order.
    pub filters: Filters,
    limits: Option<ConnectionLimits>,
    origins: Origins,
    cluster: Option<Arc<dyn Cluster>>,
    pending: Mutex<Pending>,
    /// Live SSE and Long Polling connections, by token; each connection's
    /// task holds its entry's guard.
    http: Registry<Arc<HttpConnection>>,
    /// Live stateful-reconnect WebSocket connections, by token: a new
    /// WebSocket presenting the token re-attaches to the connection. The
    /// connection's task holds its entry's guard.
    resumable: Registry<Resumable>,
    /// Live WebSocket connections, by token.
    websockets: Arc<LiveTokens>,
}

impl<H: Hub> Endpoint<H> {
    /// A new connection id or token: tagged with this server's id in a
    /// cluster.
    fn new_id(&self) -> String {
        match &self.cluster {
            Some(cluster) => cluster::tagged_id(&**cluster, &new_id()),
            None => new_id(),
        }
    }

    /// Serves `request` on the server that holds its connection if that is
    /// another server of the cluster; hands it back to be served here
    /// otherwise. A WebSocket for a connection another server negotiated
    /// but has not started is taken over (served here) unless it is
    /// stateful: its later sockets must find it by its token.
    async fn elsewhere(&self, request: Request) -> Result<Response, Here> {
        let here = |request| Here {
            request,
            claimed: None,
        };
        let Some(cluster) = &self.cluster else {
            return Err(here(request));
        };
        let Some(token) = request
            .uri()
            .query()
            .and_then(|q| form_urlencoded_pairs(q).find(|(k, _)| k.eq_ignore_ascii_case("id")))
            .map(|(_, v)| v)
        else {
            return Err(here(request));
        };
        match cluster::route(&**cluster, request.headers(), &token).await {
            cluster::Route::Local => Err(here(request)),
            cluster::Route::Forward(address) => {
                if is_websocket(request.headers())
                    && let Some(id) = cluster::claim(&request, &address).await
                {
                    return Err(Here {
                        request,
                        claimed: Some(Arc::from(id.as_str())),
                    });
                }
                let stop = self.shutdown.token().clone();
                Ok(cluster::forward(request, &address, stop).await)
            }
            cluster::Route::Gone => Ok(text(StatusCode::NOT_FOUND, "No Connection with that ID")),
        }
    }

    /// Another server of the cluster claims a negotiated connection whose
    /// WebSocket reached it: the connection id, if the connection has not
    /// started and is not stateful (`409` if it is, `404` if unknown).
    fn hand_over(&self, parts: &Parts) -> Response {
        let Some(token) = query_value(parts, "id") else {
            return text(StatusCode::BAD_REQUEST, "Connection ID required");
        };
        let timeout = self.shared.options.disconnect_timeout;
        let mut pending = self.pending.lock();
        pending.expire(timeout);
        match pending.by_token.get(&token) {
            None => text(StatusCode::NOT_FOUND, "No Connection with that ID"),
            Some(p) if p.stateful => StatusCode::CONFLICT.into_response(),
            Some(_) => match pending.by_token.remove(&token) {
                Some(p) => p.id.to_string().into_response(),
                None => text(StatusCode::NOT_FOUND, "No Connection with that ID"),
            },
        }
    }

    /// The principal of a request, which must satisfy the hub's own
    /// requirement: `401` without valid credentials, `403` with credentials
    /// that do not meet it.
    async fn authenticate(&self, parts: &Parts) -> Result<Principal, Response> {
        let mut principal = match &self.authenticator {
            None => Principal::anonymous(),
            Some(authenticator) => authenticator.authenticate(parts).await.map_err(|error| {
                // The error names the failure, never the credentials.
                tracing::debug!(%error, "request refused");
                match error {
                    AuthError::Forbidden(_) => StatusCode::FORBIDDEN.into_response(),
                    _ => unauthorized(),
                }
            })?,
        };
        if let Some(provider) = &self.user_ids {
            let user_id = provider(&principal);
            principal.set_user_id(user_id);
        }
        if let Some(requirement) = H::authorization() {
            match self.policies.check(requirement, &principal) {
                Ok(()) => {}
                Err(Denied::Unauthenticated) => return Err(unauthorized()),
                Err(Denied::Forbidden) => return Err(StatusCode::FORBIDDEN.into_response()),
            }
        }
        Ok(principal)
    }

    /// A new connection's place under the connection limits.
    fn admit(&self, parts: &Parts) -> Result<Option<Slot>, Refused> {
        match &self.limits {
            None => Ok(None),
            Some(limits) => limits.admit(parts).map(Some),
        }
    }

    fn transport_metrics(&self, transport: TransportType) -> Option<Arc<TransportMetrics>> {
        self.shared.metrics.as_ref().map(|m| m.transport(transport))
    }

    fn transports(&self) -> Vec<AvailableTransport> {
        let options = &self.shared.options;
        let mut list = Vec::new();
        if options.websockets {
            list.push(AvailableTransport {
                transport: TransportType::WebSockets,
                transfer_formats: vec![TransferFormat::Text, TransferFormat::Binary],
            });
        }
        if options.server_sent_events {
            list.push(AvailableTransport {
                transport: TransportType::ServerSentEvents,
                transfer_formats: vec![TransferFormat::Text],
            });
        }
        if options.long_polling {
            list.push(AvailableTransport {
                transport: TransportType::LongPolling,
                transfer_formats: vec![TransferFormat::Text, TransferFormat::Binary],
            });
        }
        list
    }

    fn http_connection(&self, token: &str) -> Option<Arc<HttpConnection>> {
        self.http.get(token)
    }

    fn take_pending(&self, token: &str) -> Option<PendingConnection> {
        let timeout = self.shared.options.disconnect_timeout;
        let mut pending = self.pending.lock();
        pending.expire(timeout);
        pending.by_token.remove(token)
    }

    fn add_pending(&self, token: String, connection: PendingConnection) {
        let timeout = self.shared.options.disconnect_timeout;
        let mut pending = self.pending.lock();
        pending.expire(timeout);
        pending.order.push_back((connection.created, token.clone()));
        pending.by_token.insert(token, connection);
    }

    /// The principal a negotiated connection that has not started was
    /// negotiated by.
    fn pending_principal(&self, token: &str) -> Option<Principal> {
        let timeout = self.shared.options.disconnect_timeout;
        let mut pending = self.pending.lock();
        pending.expire(timeout);
        pending.by_token.get(token).map(|p| p.principal.clone())
    }

    /// Where a POST for a negotiated connection that has not started puts
    /// its body: the channel its HTTP transport will read once it starts.
    fn pending_inbound(&self, token: &str) -> Option<mpsc::Sender<Bytes>> {
        let timeout = self.shared.options.disconnect_timeout;
        let mut pending = self.pending.lock();
        pending.expire(timeout);
        let connection = pending.by_token.get_mut(token)?;
        let (sender, _) = connection.inbound.get_or_insert_with(http::inbound_channel);
        Some(sender.clone())
    }

    /// Checks a request of an HTTP connection (its first `GET`, a later
    /// poll, a POST) against the connection's user: the user of the token
    /// it was negotiated with. A request carrying no credentials is
    /// accepted as that user (some clients send their token only on some
    /// requests); credentials that do not verify get `401`, and those of
    /// another user `403`. `Some` is the principal the request brought.
    async fn same_user(
        &self,
        parts: &Parts,
        user: Option<&str>,
    ) -> Result<Option<Principal>, Response> {
        if self.authenticator.is_none() {
            return Ok(None);
        }
        match self.authenticate(parts).await {
            Ok(principal) if !principal.is_authenticated() => Ok(None),
            Ok(principal) if principal.user_id() == user => Ok(Some(principal)),
            Ok(_) => {
                tracing::debug!("request refused: another user");
                Err(StatusCode::FORBIDDEN.into_response())
            }
            // An authenticator (or the hub's requirement) that refuses a
            // request without credentials: nothing to check against.
            Err(response)
                if response.status() == StatusCode::UNAUTHORIZED
                    && bearer_token(parts).is_none() =>
            {
                Ok(None)
            }
            Err(response) => Err(response),
        }
    }

    fn resumable(&self, token: &str) -> Option<Resumable> {
        self.resumable.get(token)
    }
}

/// The tokens of live WebSocket connections, to answer a request that
/// presents one at the wrong door as ASP.NET Core does: a POST gets `405`,
/// a DELETE or a poll `400`, a second socket `409` (not the `404` of an
/// unknown token). Kept as keyed hashes: a few bytes per connection and no
/// second copy of a secret. A collision could only give a forged token one
/// of those answers instead of `404`.
#[derive(Default)]
struct LiveTokens {
    keys: RandomState,
    live: Mutex<HashSet<u64>>,
}

impl LiveTokens {
    /// Marks `token` live until the returned guard is dropped.
    fn hold(self: &Arc<Self>, token: &str) -> LiveToken {
        let key = self.keys.hash_one(token);
        self.lock().insert(key);
        LiveToken {
            tokens: Arc::clone(self),
            key,
        }
    }

    fn contains(&self, token: &str) -> bool {
        self.lock().contains(&self.keys.hash_one(token))
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashSet<u64>> {
        self.live.lock()
    }
}

/// A live WebSocket connection's entry in [`LiveTokens`], owned by its task.
struct LiveToken {
    tokens: Arc<LiveTokens>,
    key: u64,
}

impl Drop for LiveToken {
    fn drop(&mut self) {
        self.tokens.lock().remove(&self.key);
    }
}

/// A request to serve on this server, with the connection id of a
/// connection taken over from another server of the cluster.
struct Here {
    request: Request,
    claimed: Option<Arc<str>>,
}

fn is_websocket(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A negotiated connection waiting for its transport.
struct PendingConnection {
    id: Arc<str>,
    created: Instant,
    /// Stateful reconnect was asked for and allowed at negotiation.
    stateful: bool,
    /// Its place under the connection limits, handed to the transport.
    slot: Option<Slot>,
    /// Who negotiated it: the user of its HTTP transport's requests.
    principal: Principal,
    /// What was posted before the HTTP transport started.
    inbound: Option<Inbound>,
}

/// Negotiated connections whose transport has not arrived yet. They expire
/// after `disconnect_timeout`; `order` lets expiry run in O(expired).
#[derive(Default)]
struct Pending {
    by_token: HashMap<String, PendingConnection>,
    order: VecDeque<(Instant, String)>,
}

impl Pending {
    fn expire(&mut self, timeout: Duration) {
        let now = Instant::now();
        while let Some((created, _)) = self.order.front() {
            if now.duration_since(*created) < timeout {
                break;
            }
            if let Some((created, token)) = self.order.pop_front()
                && self
                    .by_token
                    .get(&token)
                    .is_some_and(|p| p.created == created)
            {
                self.by_token.remove(&token);
            }
        }
    }
}

/// A new random id: 16 random bytes, base64url without padding (22 chars),
/// as ASP.NET Core makes them.
pub(crate) fn new_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

fn query_value(parts: &Parts, key: &str) -> Option<String> {
    tidings_protocol::negotiate::query_value(parts.uri.query()?, key)
}

/// `401` with an empty body: the TypeScript client builds its error from
/// the status then ("Unauthorized: Status code '401'").
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
    )
        .into_response()
}

fn json_response(body: &NegotiateResponse) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "The server is shutting down.",
    )
        .into_response()
}

async fn negotiate<H: Hub>(State(endpoint): State<Arc<Endpoint<H>>>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    if endpoint.shutdown.is_shutting_down() {
        return unavailable();
    }
    let request = match NegotiateRequest::from_query(parts.uri.query()) {
        Ok(request) => request,
        Err(error) => return json_response(&NegotiateResponse::error(error.to_string())),
    };
    let version = request.version;
    // A negotiated connection counts under the limits from now on: a flood
    // of negotiations cannot outgrow them while waiting for transports.
    let slot = match endpoint.admit(&parts) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    let principal = match endpoint.authenticate(&parts).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let connection_id = endpoint.new_id();
    let token = if version >= 1 {
        endpoint.new_id()
    } else {
        connection_id.clone()
    };
    // Stateful reconnect needs a secret token: with negotiate version 0 the
    // token is the public connection id, which must not let anyone take the
    // connection over.
    let stateful = version >= 1
        && endpoint.shared.options.allow_stateful_reconnects
        && request.stateful_reconnect;
    endpoint.add_pending(
        token.clone(),
        PendingConnection {
            id: Arc::from(connection_id.as_str()),
            created: Instant::now(),
            stateful,
            slot,
            principal,
            inbound: None,
        },
    );
    json_response(&NegotiateResponse {
        use_stateful_reconnect: stateful.then_some(true),
        negotiate_version: Some(version),
        connection_id: Some(connection_id),
        connection_token: (version >= 1).then_some(token),
        available_transports: endpoint.transports(),
        ..Default::default()
    })
}

async fn connect<H: Hub>(State(endpoint): State<Arc<Endpoint<H>>>, request: Request) -> Response {
    let (request, claimed) = match endpoint.elsewhere(request).await {
        Ok(response) => return response,
        Err(here) => (here.request, here.claimed),
    };
    let (mut parts, _body) = request.into_parts();
    if endpoint.cluster.is_some() && parts.headers.contains_key(&cluster::CLAIM) {
        return endpoint.hand_over(&parts);
    }
    let is_websocket = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_websocket {
        return connect_http(endpoint, parts).await;
    }
    if endpoint.shutdown.is_shutting_down() {
        return unavailable();
    }
    if !endpoint.shared.options.websockets {
        return (
            StatusCode::NOT_FOUND,
            "WebSockets transport not supported by this end point type",
        )
            .into_response();
    }
    if !endpoint.origins.allows_websocket(&parts) {
        tracing::debug!("WebSocket refused: origin not allowed");
        return text(StatusCode::FORBIDDEN, "Origin not allowed");
    }
    let principal = match endpoint.authenticate(&parts).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    // A negotiated connection brings the place it took at negotiate; one
    // without negotiation (or taken over from another server) takes one
    // now; a socket re-attaching to a live connection takes none.
    let admit = || endpoint.admit(&parts);
    let presented = query_value(&parts, "id");
    let (connection_id, resume_token, slot) = match (claimed, presented.clone()) {
        (Some(claimed), _) => match admit() {
            Ok(slot) => (claimed, None, slot),
            Err(refused) => return refused.into_response(),
        },
        (None, Some(token)) => match endpoint.take_pending(&token) {
            Some(pending) => (pending.id, pending.stateful.then_some(token), pending.slot),
            None => match endpoint.resumable(&token) {
                // A stateful connection whose client lost its socket.
                Some(entry) => return reattach(&endpoint, parts, entry, &principal).await,
                None if endpoint.websockets.contains(&token) => {
                    tracing::debug!("WebSocket refused: the connection has one");
                    return StatusCode::CONFLICT.into_response();
                }
                None if endpoint.http_connection(&token).is_some() => {
                    return transport_changed();
                }
                None => return text(StatusCode::NOT_FOUND, "No Connection with that ID"),
            },
        },
        // Negotiation skipped: a new connection whose token is its id.
        (None, None) => match admit() {
            Ok(slot) => (Arc::from(endpoint.new_id().as_str()), None, slot),
            Err(refused) => return refused.into_response(),
        },
    };
    let upgrade = match websocket_upgrade(&endpoint, &mut parts).await {
        Ok(upgrade) => upgrade,
        Err(response) => return response,
    };
    // Held from now: a second socket for the token, while this one is being
    // upgraded, is a conflict too. A failed upgrade drops the callback and
    // with it the entry.
    let live = endpoint
        .websockets
        .hold(presented.as_deref().unwrap_or(&connection_id));
    // Boxed: the upgrade task keeps it until the socket is ready.
    let init = Box::new(ConnectionInit {
        id: connection_id,
        // Replaced by the handshake's choice.
        protocol: tidings_protocol::Protocol::Json,
        transport: TransportType::WebSockets,
        principal,
        query: request_query(&parts),
        headers: detached(&parts.headers),
        metrics: endpoint.transport_metrics(TransportType::WebSockets),
        abort: endpoint.shutdown.token().child_token(),
    });
    let tracker = endpoint.shutdown.tracker().clone();
    upgrade.on_upgrade(move |socket| {
        let reattach = resume_token.map(|token| Reattach {
            registry: endpoint.resumable.clone(),
            token,
        });
        let serve = transport::websocket::serve(endpoint, socket, init, reattach);
        tracker.track_future(async move {
            // The connection counts under the limits, and its token as
            // live, until it ends.
            let _slot = slot;
            let _live = live;
            serve.await;
        })
    })
}

/// The WebSocket upgrade of a request, with the endpoint's frame limits.
async fn websocket_upgrade<H: Hub>(
    endpoint: &Endpoint<H>,
    parts: &mut Parts,
) -> Result<Upgrade, Response> {
    let config =
        transport::websocket::socket_config(endpoint.shared.options.maximum_receive_message_size);
    Upgrade::from_parts(parts, config).await
}

/// A new WebSocket for a live stateful connection: after the upgrade the
/// socket is handed to the connection's task, which replays what the client
/// missed. Only the holder of the secret token gets here; with an
/// authenticator, the request must also authenticate as the same user.
async fn reattach<H: Hub>(
    endpoint: &Endpoint<H>,
    mut parts: Parts,
    entry: Resumable,
    principal: &Principal,
) -> Response {
    if principal.user_id() != entry.user_id() {
        tracing::debug!("re-attach refused: another user");
        return StatusCode::FORBIDDEN.into_response();
    }
    let upgrade = match websocket_upgrade(endpoint, &mut parts).await {
        Ok(upgrade) => upgrade,
        Err(response) => return response,
    };
    let tracker = endpoint.shutdown.tracker().clone();
    upgrade.on_upgrade(move |socket| tracker.track_future(entry.attach(socket)))
}

/// A copy of the request headers that owns its bytes. Parsed header values
/// are slices of the HTTP read buffer (16 KiB once grown); keeping them for
/// the life of a connection would keep that whole buffer alive, which was
/// most of an idle WebSocket connection's memory. The headers of the
/// WebSocket upgrade itself describe the transport, not the client, and are
/// left out.
fn detached(headers: &HeaderMap) -> HeaderMap {
    const UPGRADE: [&str; 6] = [
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    ];
    let kept = || {
        headers
            .iter()
            .filter(|(name, _)| !UPGRADE.contains(&name.as_str()))
    };
    let mut copy = HeaderMap::with_capacity(kept().count());
    for (name, value) in kept() {
        let name = HeaderName::from_bytes(name.as_str().as_bytes());
        let copied = HeaderValue::from_bytes(value.as_bytes());
        if let (Ok(name), Ok(mut copied)) = (name, copied) {
            copied.set_sensitive(value.is_sensitive());
            copy.append(name, copied);
        }
    }
    copy
}

/// The query pairs hub code may see: the token is a credential and is left out.
fn request_query(parts: &Parts) -> Vec<(String, String)> {
    parts
        .uri
        .query()
        .map(|q| {
            form_urlencoded_pairs(q)
                .filter(|(k, _)| k != "access_token")
                .collect()
        })
        .unwrap_or_default()
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

/// `GET` without an upgrade: Server-Sent Events (by `Accept`) or a long poll.
async fn connect_http<H: Hub>(endpoint: Arc<Endpoint<H>>, parts: Parts) -> Response {
    let event_stream = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let transport = if event_stream {
        TransportType::ServerSentEvents
    } else {
        TransportType::LongPolling
    };
    let options = &endpoint.shared.options;
    let enabled = match transport {
        TransportType::ServerSentEvents => options.server_sent_events,
        _ => options.long_polling,
    };
    if !enabled {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "{} transport not supported by this end point type",
                transport.name()
            ),
        )
            .into_response();
    }
    let Some(token) = query_value(&parts, "id") else {
        return text(StatusCode::BAD_REQUEST, "Connection ID required");
    };
    if let Some(existing) = endpoint.http_connection(&token) {
        if existing.transport != transport {
            return text(
                StatusCode::BAD_REQUEST,
                "Cannot change transports mid-connection",
            );
        }
        if transport == TransportType::ServerSentEvents {
            return StatusCode::CONFLICT.into_response();
        }
        if let Some(refusal) = reauthenticate(&endpoint, &parts, &existing).await {
            return refusal;
        }
        return http::poll(existing, false, options.long_poll_timeout).await;
    }
    if endpoint.websockets.contains(&token) {
        return transport_changed();
    }
    // No new connection starts during a shutdown; the polls of existing
    // ones above go on, so that they collect their Close.
    if endpoint.shutdown.is_shutting_down() {
        return unavailable();
    }
    let Some(negotiated) = endpoint.pending_principal(&token) else {
        // Credentials that do not verify are refused before the token is
        // looked at, as ASP.NET Core's authentication runs first.
        if let Err(response) = endpoint.authenticate(&parts).await
            && bearer_token(&parts).is_some()
        {
            return response;
        }
        return text(StatusCode::NOT_FOUND, "No Connection with that ID");
    };
    // A connection negotiated anonymously belongs to whoever opens its
    // transport; one negotiated with a token stays that token's user's.
    let owner = negotiated
        .is_authenticated()
        .then(|| negotiated.user_id())
        .flatten();
    let principal = if negotiated.is_authenticated() {
        match endpoint.same_user(&parts, owner).await {
            Ok(fresh) => fresh.unwrap_or(negotiated),
            Err(response) => return response,
        }
    } else {
        match endpoint.authenticate(&parts).await {
            Ok(principal) => principal,
            Err(response) => return response,
        }
    };
    let Some(mut pending) = endpoint.take_pending(&token) else {
        return text(StatusCode::NOT_FOUND, "No Connection with that ID");
    };
    let slot = pending.slot.take();
    let inbound = pending.inbound.take();
    let init = ConnectionInit {
        id: pending.id,
        protocol: tidings_protocol::Protocol::Json,
        transport,
        principal,
        query: request_query(&parts),
        headers: detached(&parts.headers),
        metrics: endpoint.transport_metrics(transport),
        abort: endpoint.shutdown.token().child_token(),
    };
    let connection = HttpConnection::start(
        &endpoint,
        init,
        transport,
        (&endpoint.http, token),
        (slot, inbound),
    );
    match transport {
        TransportType::ServerSentEvents => {
            let closer = parts.extensions.get::<ConnectionCloser>().cloned();
            http::sse(connection, options.keep_alive_interval, closer)
        }
        _ => http::poll(connection, true, options.long_poll_timeout).await,
    }
}

/// Checks a later request of an HTTP connection (a Long Polling poll, a
/// POST of messages) against the connection's user: credentials it carries
/// must still verify — an expired token gets `401`, as ASP.NET Core's
/// authentication answers every request — and name that user (`403`
/// otherwise); a request without any is the connection's user's. `Some`
/// is the refusal.
async fn reauthenticate<H: Hub>(
    endpoint: &Endpoint<H>,
    parts: &Parts,
    connection: &HttpConnection,
) -> Option<Response> {
    endpoint
        .same_user(parts, connection.user_id.as_deref())
        .await
        .err()
}

/// `POST {hub}?id=…`: client-to-server messages of SSE and Long Polling.
async fn send<H: Hub>(State(endpoint): State<Arc<Endpoint<H>>>, request: Request) -> Response {
    let request = match endpoint.elsewhere(request).await {
        Ok(response) => return response,
        Err(here) => here.request,
    };
    let (parts, body) = request.into_parts();
    let Some(token) = query_value(&parts, "id") else {
        return text(StatusCode::BAD_REQUEST, "Connection ID required");
    };
    let Some(connection) = endpoint.http_connection(&token) else {
        if endpoint.websockets.contains(&token) {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST requests are not allowed for WebSocket connections.",
            );
        }
        return send_early(&endpoint, &parts, body, &token).await;
    };
    if let Some(refusal) = reauthenticate(&endpoint, &parts, &connection).await {
        return refusal;
    }
    let bytes = match post_body(&endpoint, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    if connection.post(bytes).await {
        StatusCode::OK.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// The body of a POST, up to the endpoint's limit.
async fn post_body<H: Hub>(
    endpoint: &Endpoint<H>,
    body: axum::body::Body,
) -> Result<Bytes, Response> {
    // A body larger than this is refused by axum before it is buffered.
    let limit = endpoint.shared.options.maximum_request_body_size;
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE.into_response())
}

/// A POST for a negotiated connection whose transport has not started
/// (some clients post their handshake before the first poll): queued for
/// the HTTP transport that starts it, as ASP.NET Core queues it into the
/// connection. The queue is the one the connection reads later, with the
/// same bound; a POST that finds it full waits, as it would then, but no
/// longer than a negotiated connection waits for its transport.
async fn send_early<H: Hub>(
    endpoint: &Endpoint<H>,
    parts: &Parts,
    body: axum::body::Body,
    token: &str,
) -> Response {
    let gone = || text(StatusCode::NOT_FOUND, "No Connection with that ID");
    let Some(negotiated) = endpoint.pending_principal(token) else {
        return gone();
    };
    if negotiated.is_authenticated()
        && let Err(response) = endpoint.same_user(parts, negotiated.user_id()).await
    {
        return response;
    }
    let bytes = match post_body(endpoint, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let Some(sender) = endpoint.pending_inbound(token) else {
        return gone();
    };
    let wait = endpoint.shared.options.disconnect_timeout;
    match tokio::time::timeout(wait, sender.send(bytes)).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        _ => gone(),
    }
}

/// `DELETE {hub}?id=…`: the Long Polling client stops.
async fn delete<H: Hub>(State(endpoint): State<Arc<Endpoint<H>>>, request: Request) -> Response {
    let request = match endpoint.elsewhere(request).await {
        Ok(response) => return response,
        Err(here) => here.request,
    };
    let (parts, _body) = request.into_parts();
    let Some(token) = query_value(&parts, "id") else {
        return text(StatusCode::BAD_REQUEST, "Connection ID required");
    };
    let Some(connection) = endpoint.http_connection(&token) else {
        // A connection whose transport has not started is not a Long
        // Polling one (yet): ASP.NET Core answers as for another transport.
        if endpoint.websockets.contains(&token) || endpoint.pending_principal(&token).is_some() {
            return not_deletable();
        }
        return text(StatusCode::NOT_FOUND, "No Connection with that ID");
    };
    if connection.transport != TransportType::LongPolling {
        return not_deletable();
    }
    http::delete(&connection);
    StatusCode::ACCEPTED.into_response()
}

/// ASP.NET Core's answer to a DELETE for a connection that does not use
/// Long Polling.
fn not_deletable() -> Response {
    text(
        StatusCode::BAD_REQUEST,
        "Cannot terminate this connection using the DELETE endpoint.",
    )
}

/// ASP.NET Core's answer to a request for a live connection on another
/// transport than its own.
fn transport_changed() -> Response {
    text(
        StatusCode::BAD_REQUEST,
        "Cannot change transports mid-connection",
    )
}
