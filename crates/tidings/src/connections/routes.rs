//! The HTTP routes of one mounted endpoint — the negotiate endpoint, the
//! transport endpoint — and the registries of its connections: negotiated
//! ones waiting for their transport, live HTTP and stateful ones by token.
//!
//! ```text
//! POST {path}/negotiate     → connection id + secret token, transports
//! GET  {path}?id=<token>    → WebSocket upgrade → transport → application
//! GET  {path}               → WebSocket without negotiation (new connection)
//! POST {path}?id=<token>    → client messages (SSE, Long Polling)
//! DELETE {path}?id=<token>  → Long Polling ends
//! ```

use std::{sync::Arc, time::Instant};

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

use super::tokens::{LiveTokens, Pending, PendingConnection};

use crate::{
    auth::{
        AuthError, Denied, Principal, SharedAuthenticator, bearer_token, form_urlencoded_pairs,
    },
    connections::{
        access::{ConnectionLimits, Origins, Refused, Slot},
        cluster::{self, Cluster},
        connection::{AbortReason, ConnectionInit},
        frozen,
        handler::Application,
        handover,
        options::ConnectionOptions,
        registry::Registry,
        served::Served,
        transport::{
            self,
            http::{self, HttpConnection},
            resume::{Reattach, Resumable},
            socket::Upgrade,
        },
    },
    metrics::{HubMetrics, TransportMetrics},
    serve::ConnectionCloser,
    shutdown::Shutdown,
};

/// What an endpoint is configured with, besides its application: the
/// connection layer's settings, shared by a raw
/// [`ConnectionEndpoint`](crate::connections::ConnectionEndpoint) and a hub's
/// endpoint.
#[derive(Clone, Default)]
pub(crate) struct Setup {
    pub options: ConnectionOptions,
    pub authenticator: Option<SharedAuthenticator>,
    pub limits: Option<ConnectionLimits>,
    pub origins: Option<Origins>,
    pub cluster: Option<Arc<dyn Cluster>>,
    pub shutdown: Shutdown,
    pub metrics: Option<HubMetrics>,
}

impl Setup {
    /// Allows `origins` besides the server's own, keeping the credentials
    /// setting.
    pub(crate) fn allow_origins<S: AsRef<str>>(&mut self, origins: impl IntoIterator<Item = S>) {
        let credentials = self.origins.as_ref().is_none_or(|o| o.credentials);
        let mut origins = Origins::new(origins);
        origins.credentials = credentials;
        self.origins = Some(origins);
    }

    /// Whether cross-origin requests may carry credentials.
    pub(crate) fn cors_credentials(&mut self, allow: bool) {
        self.origins
            .get_or_insert_with(Origins::default)
            .credentials = allow;
    }

    /// The routes serving `app`, to be nested at its path:
    /// `POST /negotiate` and the transport endpoint.
    pub(crate) fn into_router<C: Application, S>(self, app: Arc<C>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let cors = self
            .origins
            .as_ref()
            .filter(|o| o.is_configured())
            .map(Origins::cors);
        let hands_over = self.cluster.is_some() && app.hands_over();
        let endpoint = Arc::new(Endpoint {
            served: Arc::new(Served {
                hands_over,
                app,
                options: self.options,
                shutdown: self.shutdown,
            }),
            authenticator: self.authenticator,
            limits: self.limits,
            origins: self.origins.unwrap_or_default(),
            cluster: self.cluster,
            metrics: self.metrics,
            pending: Mutex::new(Pending::default()),
            http: Registry::default(),
            resumable: Registry::default(),
            websockets: Arc::default(),
        });
        let router = Router::new()
            .route("/negotiate", post(negotiate::<C>))
            .route("/", get(connect::<C>).post(send::<C>).delete(delete::<C>))
            .with_state(endpoint);
        match cors {
            Some(cors) => router.layer(cors),
            None => router,
        }
    }
}

/// The state behind a mounted endpoint.
struct Endpoint<C: Application> {
    /// The application, its settings and the server's shutdown, shared with
    /// the transports.
    served: Arc<Served<C>>,
    authenticator: Option<SharedAuthenticator>,
    limits: Option<ConnectionLimits>,
    /// The counters of the application (a hub's), by transport.
    metrics: Option<HubMetrics>,
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

impl<C: Application> Endpoint<C> {
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
            adopted: None,
        };
        let Some(cluster) = &self.cluster else {
            return Err(here(request));
        };
        let Some(token) = presented_token(request.uri()) else {
            return Err(here(request));
        };
        // A connection taken over from another server keeps that server's
        // token: it is found here first.
        if self.resumable(&token).is_some() {
            return Err(here(request));
        }
        let websocket = is_websocket(request.headers());
        match cluster::route(&**cluster, request.headers(), &token, websocket).await {
            cluster::Route::Local => Err(here(request)),
            cluster::Route::Forward(address) => {
                if is_websocket(request.headers()) {
                    if let Some(id) = cluster::claim(&request, &address).await {
                        return Err(Here {
                            request,
                            claimed: Some(Arc::from(id.as_str())),
                            adopted: None,
                        });
                    }
                    // A stateful connection whose server is shutting down
                    // moves here.
                    if self.served.hands_over
                        && let Some(uri) = cluster::uri_at(&request, &address)
                        && let Some(frozen) = handover::adopt(&self.served, uri, &address).await
                    {
                        return Err(Here::adopting(request, frozen));
                    }
                    // Or its server died: resumed from what it recorded.
                    if !cluster::answers(&address).await
                        && let Some(frozen) = self.served.app.recover(&token).await
                    {
                        return Err(Here::adopting(request, frozen));
                    }
                }
                let stop = self.served.shutdown.token().clone();
                Ok(cluster::forward(request, &address, stop).await)
            }
            cluster::Route::Gone => {
                // A stateful connection of a server that died and left the
                // cluster's registry may have been recorded.
                if websocket && let Some(frozen) = self.served.app.recover(&token).await {
                    return Err(Here::adopting(request, frozen));
                }
                Ok(text(StatusCode::NOT_FOUND, "No Connection with that ID"))
            }
        }
    }

    /// The answer of a server that is shutting down to a WebSocket.
    ///
    /// It takes no new socket, not even one it would relay to the server
    /// holding its connection: its relays end with the shutdown, so the
    /// client would see the socket open and lose it at once — a
    /// stateful-reconnect client takes that for a resumed connection (the
    /// official JS client then runs a second reconnect of the same
    /// connection beside the first). Such a socket gets `503`, so that it
    /// is tried on another server (by a load balancer retrying on 503, or
    /// by the client), and a connection negotiated elsewhere is not claimed
    /// from its server only to be dropped here. A socket for one of this
    /// server's own connections gets `404`: they end with the shutdown,
    /// and no other server can resume them, so trying elsewhere would only
    /// come back here.
    fn refuse_socket_while_shutting_down(&self, request: &Request) -> Response {
        let token = presented_token(request.uri());
        let ours = match (&self.cluster, &token) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(cluster), Some(token)) => cluster::is_local(&**cluster, request.headers(), token),
        };
        // A stateful connection of this server that moves to another one
        // is taken over by the server the socket is tried on next.
        let moving = self.served.hands_over
            && token
                .as_deref()
                .is_some_and(|token| self.resumable(token).is_some());
        if ours && !moving {
            text(StatusCode::NOT_FOUND, "No Connection with that ID")
        } else {
            unavailable()
        }
    }

    /// Another server of the cluster claims a negotiated connection whose
    /// WebSocket reached it: the connection id, if the connection has not
    /// started and is not stateful (`409` if it is, `404` if unknown).
    fn hand_over(&self, parts: &Parts) -> Response {
        let Some(token) = query_value(parts, "id") else {
            return text(StatusCode::BAD_REQUEST, "Connection ID required");
        };
        let timeout = self.served.options.disconnect_timeout;
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

    /// The principal of a request, which must satisfy the application's own
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
        match self.served.app.authorize(&mut principal) {
            Ok(()) => Ok(principal),
            Err(Denied::Unauthenticated) => Err(unauthorized()),
            Err(Denied::Forbidden) => Err(StatusCode::FORBIDDEN.into_response()),
        }
    }

    /// A new connection's place under the connection limits.
    fn admit(&self, parts: &Parts) -> Result<Option<Slot>, Refused> {
        match &self.limits {
            None => Ok(None),
            Some(limits) => limits.admit(parts).map(Some),
        }
    }

    fn transport_metrics(&self, transport: TransportType) -> Option<Arc<TransportMetrics>> {
        self.metrics.as_ref().map(|m| m.transport(transport))
    }

    fn transports(&self) -> Vec<AvailableTransport> {
        let options = &self.served.options;
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
        let timeout = self.served.options.disconnect_timeout;
        let mut pending = self.pending.lock();
        pending.expire(timeout);
        pending.by_token.remove(token)
    }

    fn add_pending(&self, token: String, connection: PendingConnection) {
        let timeout = self.served.options.disconnect_timeout;
        let mut pending = self.pending.lock();
        pending.expire(timeout);
        pending.order.push_back((connection.created, token.clone()));
        pending.by_token.insert(token, connection);
    }

    /// The principal a negotiated connection that has not started was
    /// negotiated by.
    fn pending_principal(&self, token: &str) -> Option<Principal> {
        let timeout = self.served.options.disconnect_timeout;
        let mut pending = self.pending.lock();
        pending.expire(timeout);
        pending.by_token.get(token).map(|p| p.principal.clone())
    }

    /// Where a POST for a negotiated connection that has not started puts
    /// its body: the channel its HTTP transport will read once it starts.
    fn pending_inbound(&self, token: &str) -> Option<mpsc::Sender<Bytes>> {
        let timeout = self.served.options.disconnect_timeout;
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

/// A request to serve on this server, with the connection id of a
/// connection taken over from another server of the cluster.
struct Here {
    request: Request,
    claimed: Option<Arc<str>>,
    /// A stateful connection taken over from a server shutting down, or
    /// recovered from what a crashed one recorded.
    adopted: Option<frozen::Frozen>,
}

impl Here {
    /// The socket of a stateful connection that runs here from now on.
    fn adopting(request: Request, frozen: frozen::Frozen) -> Here {
        Here {
            request,
            claimed: None,
            adopted: Some(frozen),
        }
    }
}

/// The connection token of a transport request (`?id=`).
fn presented_token(uri: &axum::http::Uri) -> Option<String> {
    uri.query()
        .and_then(|q| form_urlencoded_pairs(q).find(|(k, _)| k.eq_ignore_ascii_case("id")))
        .map(|(_, v)| v)
}

fn is_websocket(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
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

async fn negotiate<C: Application>(
    State(endpoint): State<Arc<Endpoint<C>>>,
    request: Request,
) -> Response {
    let (parts, _body) = request.into_parts();
    if endpoint.served.shutdown.is_shutting_down() {
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
        && endpoint.served.options.allow_stateful_reconnects
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

async fn connect<C: Application>(
    State(endpoint): State<Arc<Endpoint<C>>>,
    request: Request,
) -> Response {
    let is_websocket = is_websocket(request.headers());
    if is_websocket && endpoint.served.shutdown.is_shutting_down() {
        return endpoint.refuse_socket_while_shutting_down(&request);
    }
    let (request, claimed, adopted) = match endpoint.elsewhere(request).await {
        Ok(response) => return response,
        Err(here) => (here.request, here.claimed, here.adopted),
    };
    let (mut parts, _body) = request.into_parts();
    if endpoint.cluster.is_some() && parts.headers.contains_key(&cluster::CLAIM) {
        return endpoint.hand_over(&parts);
    }
    if endpoint.cluster.is_some()
        && let Some(step) = parts.headers.get(&handover::HANDOVER)
    {
        let step = step.to_str().unwrap_or_default().to_owned();
        let entry = query_value(&parts, "id").and_then(|token| endpoint.resumable(&token));
        return handover::answer(&endpoint.served, entry, &step).await;
    }
    if let Some(frozen) = adopted {
        return adopt(&endpoint, parts, frozen).await;
    }
    if !is_websocket {
        return connect_http(endpoint, parts).await;
    }
    if !endpoint.served.options.websockets {
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
        // Replaced by the opening's choice.
        format: TransferFormat::Text,
        transport: TransportType::WebSockets,
        principal,
        query: request_query(&parts),
        headers: detached(&parts.headers),
        metrics: endpoint.transport_metrics(TransportType::WebSockets),
        abort: endpoint.served.shutdown.token().child_token(),
    });
    let tracker = endpoint.served.shutdown.tracker().clone();
    upgrade.on_upgrade(move |socket| {
        let reattach = resume_token.map(|token| Reattach {
            registry: endpoint.resumable.clone(),
            token,
        });
        let served = Arc::clone(&endpoint.served);
        let serve = transport::websocket::serve(served, socket, init, reattach);
        tracker.track_future(async move {
            serve.await;
            // The connection counted under the limits, and its token as
            // live, until now. (Dropped here rather than bound to locals
            // at the start, which would give each a second place in the
            // connection's task.)
            drop((slot, live));
        })
    })
}

/// A stateful connection taken over from a server that shuts down: it runs
/// here from now on, and the socket that brought it re-attaches to it.
async fn adopt<C: Application>(
    endpoint: &Arc<Endpoint<C>>,
    parts: Parts,
    frozen: frozen::Frozen,
) -> Response {
    let Some(token) = query_value(&parts, "id") else {
        return text(StatusCode::NOT_FOUND, "No Connection with that ID");
    };
    // The connection is taken: it runs here whatever becomes of this
    // socket (its client may come back within the reconnect window), and
    // counts under the limits without being refused.
    let slot = endpoint.admit(&parts).ok().flatten();
    let live = endpoint.websockets.hold(&token);
    let init = ConnectionInit {
        id: Arc::from(frozen.id.as_str()),
        // Replaced by the application's reopening.
        format: TransferFormat::Text,
        transport: TransportType::WebSockets,
        principal: frozen.principal(),
        query: request_query(&parts),
        headers: detached(&parts.headers),
        metrics: endpoint.transport_metrics(TransportType::WebSockets),
        abort: tokio_util::sync::CancellationToken::new(),
    };
    let registration = Reattach {
        registry: endpoint.resumable.clone(),
        token: token.clone(),
    };
    let Some((entry, run)) = frozen.into_state().and_then(|state| {
        transport::resume::adopt(Arc::clone(&endpoint.served), init, state, registration)
    }) else {
        tracing::warn!("a connection handed over could not be reopened");
        return text(StatusCode::NOT_FOUND, "No Connection with that ID");
    };
    tracing::debug!(connection_id = %entry.connection().id(), "connection taken over");
    let cluster = endpoint.cluster.clone();
    if let Some(cluster) = &cluster {
        // Its next sockets may reach any server: they find it here.
        cluster.record_move(&token).await;
    }
    let connection = entry.connection().clone();
    endpoint.served.shutdown.tracker().spawn(async move {
        let _slot = slot;
        let _live = live;
        run.await;
        let moved_on = matches!(connection.abort_reason(), Some(AbortReason::HandedOver));
        if let (Some(cluster), false) = (cluster, moved_on) {
            cluster.forget_move(&token).await;
        }
    });
    let principal = match endpoint.authenticate(&parts).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    reattach(endpoint, parts, entry, &principal).await
}

/// The WebSocket upgrade of a request, with the endpoint's frame limits.
async fn websocket_upgrade<C: Application>(
    endpoint: &Endpoint<C>,
    parts: &mut Parts,
) -> Result<Upgrade, Response> {
    let config =
        transport::websocket::socket_config(endpoint.served.options.maximum_receive_message_size);
    Upgrade::from_parts(parts, config).await
}

/// A new WebSocket for a live stateful connection: after the upgrade the
/// socket is handed to the connection's task, which replays what the client
/// missed. Only the holder of the secret token gets here; with an
/// authenticator, the request must also authenticate as the same user.
async fn reattach<C: Application>(
    endpoint: &Endpoint<C>,
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
    let tracker = endpoint.served.shutdown.tracker().clone();
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

/// The query pairs the application may see: the token is a credential and is left out.
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
async fn connect_http<C: Application>(endpoint: Arc<Endpoint<C>>, parts: Parts) -> Response {
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
    let options = &endpoint.served.options;
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
    if endpoint.served.shutdown.is_shutting_down() {
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
        // Replaced by the opening's choice.
        format: TransferFormat::Text,
        transport,
        principal,
        query: request_query(&parts),
        headers: detached(&parts.headers),
        metrics: endpoint.transport_metrics(transport),
        abort: endpoint.served.shutdown.token().child_token(),
    };
    let connection = HttpConnection::start(
        &endpoint.served,
        init,
        transport,
        (&endpoint.http, token),
        (slot, inbound),
    );
    match transport {
        TransportType::ServerSentEvents => {
            let closer = parts.extensions.get::<ConnectionCloser>().cloned();
            http::sse(connection, closer)
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
async fn reauthenticate<C: Application>(
    endpoint: &Endpoint<C>,
    parts: &Parts,
    connection: &HttpConnection,
) -> Option<Response> {
    endpoint
        .same_user(parts, connection.user_id.as_deref())
        .await
        .err()
}

/// What a POST or DELETE starts with: served by the server of the cluster
/// holding its connection if that is another one; here, its parts, body
/// and connection token (`Err`: the answer).
async fn addressed<C: Application>(
    endpoint: &Endpoint<C>,
    request: Request,
) -> Result<(Parts, axum::body::Body, String), Response> {
    let request = match endpoint.elsewhere(request).await {
        Ok(response) => return Err(response),
        Err(here) => here.request,
    };
    let (parts, body) = request.into_parts();
    match query_value(&parts, "id") {
        Some(token) => Ok((parts, body, token)),
        None => Err(text(StatusCode::BAD_REQUEST, "Connection ID required")),
    }
}

/// `POST {hub}?id=…`: client-to-server messages of SSE and Long Polling.
async fn send<C: Application>(
    State(endpoint): State<Arc<Endpoint<C>>>,
    request: Request,
) -> Response {
    let (parts, body, token) = match addressed(&endpoint, request).await {
        Ok(addressed) => addressed,
        Err(response) => return response,
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
async fn post_body<C: Application>(
    endpoint: &Endpoint<C>,
    body: axum::body::Body,
) -> Result<Bytes, Response> {
    // A body larger than this is refused by axum before it is buffered.
    let limit = endpoint.served.options.maximum_request_body_size;
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
async fn send_early<C: Application>(
    endpoint: &Endpoint<C>,
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
    let wait = endpoint.served.options.disconnect_timeout;
    match tokio::time::timeout(wait, sender.send(bytes)).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        _ => gone(),
    }
}

/// `DELETE {hub}?id=…`: the Long Polling client stops.
async fn delete<C: Application>(
    State(endpoint): State<Arc<Endpoint<C>>>,
    request: Request,
) -> Response {
    let (parts, _body, token) = match addressed(&endpoint, request).await {
        Ok(addressed) => addressed,
        Err(response) => return response,
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
    // Only its own user ends a connection, as every other request of it.
    if let Some(refusal) = reauthenticate(&endpoint, &parts, &connection).await {
        return refusal;
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
