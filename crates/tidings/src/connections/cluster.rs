//! No sticky sessions: any server of a cluster accepts every request of a
//! connection, whichever server negotiated it.
//!
//! With a [`Cluster`] installed (by a [`Backplane`](crate::Backplane) given to
//! [`ServerBuilder::backplane`](crate::ServerBuilder::backplane), or with
//! [`HubEndpoint::cluster`](crate::HubEndpoint::cluster)),
//! connection ids and tokens start with the id of the server that
//! negotiated them (`<server id>.<random>`; the random part keeps the token
//! as secret and unguessable as without a cluster). A transport request
//! (`GET`, `POST`, `DELETE` with `?id=`) carrying another server's token is
//! forwarded to that server as it is: headers, body and all, streaming in
//! both directions. A WebSocket upgrade is forwarded too; once the owner
//! answers `101`, the two upgraded connections are spliced byte for byte.
//! So every transport, Long Polling's held polls and stateful reconnect's
//! re-attaching sockets included, reaches the one server that holds the
//! connection's state.
//!
//! A WebSocket for a connection that another server negotiated but has
//! not started yet is *taken over* instead: the server it reached asks the
//! negotiating server for the pending connection (one short request) and
//! serves the socket itself, so the connection's traffic crosses no extra
//! hop. Only stateful-reconnect connections are not taken over: their later
//! sockets present the token, which names the negotiating server.
//!
//! A forwarded request carries a marker header and is never forwarded
//! again. A token whose server is gone (unknown to the cluster, or not
//! answering) gets `404`, like any unknown id.

use std::sync::OnceLock;

use axum::{
    body::Body,
    extract::{OriginalUri, Request},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version, header},
    response::{IntoResponse, Response},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio_util::sync::CancellationToken;

use crate::connections::handler::BoxFuture;

/// The servers of a cluster, as far as request forwarding needs them.
///
/// A backplane implements it (for example `tidings_redis::RedisBackplane`).
pub trait Cluster: Send + Sync + 'static {
    /// This server's id in the cluster. It must not contain `.`.
    fn server_id(&self) -> &str;

    /// The address (`host:port`, plain HTTP) at which the server
    /// `server_id` accepts forwarded requests, if it is alive.
    fn locate<'a>(&'a self, server_id: &'a str) -> BoxFuture<'a, Option<String>>;

    /// The server now holding the connection of `token`, if it moved
    /// from the server that negotiated it (a stateful connection handed
    /// over when its server shut down). The default: connections never move.
    fn moved<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<String>> {
        let _ = token;
        Box::pin(async { None })
    }

    /// Records that the connection of `token` is held by this server now
    /// (see [`moved`](Self::moved)).
    fn record_move<'a>(&'a self, token: &'a str) -> BoxFuture<'a, ()> {
        let _ = token;
        Box::pin(async {})
    }

    /// The connection of `token`, held by this server since it moved here,
    /// ended: forget the record (unless another server holds it by now).
    fn forget_move<'a>(&'a self, token: &'a str) -> BoxFuture<'a, ()> {
        let _ = token;
        Box::pin(async {})
    }
}

/// Marks a forwarded request; its receiver never forwards it again.
pub(crate) const FORWARDED: HeaderName = HeaderName::from_static("tidings-forwarded");

/// Marks a claim: another server asks for a negotiated connection whose
/// WebSocket reached it.
pub(crate) const CLAIM: HeaderName = HeaderName::from_static("tidings-claim");

/// Where a request for connection token `token` must be served.
pub(crate) enum Route {
    /// Here.
    Local,
    /// At this address.
    Forward(String),
    /// Nowhere: the owning server is gone.
    Gone,
}

/// A new id for a connection negotiated here: `<server id>.<random>`.
pub(crate) fn tagged_id(cluster: &dyn Cluster, random: &str) -> String {
    format!("{}.{random}", cluster.server_id())
}

/// Whether a request with connection token `token` is served here: it was
/// forwarded here, or the token is this server's (or untagged).
pub(crate) fn is_local(cluster: &dyn Cluster, headers: &HeaderMap, token: &str) -> bool {
    owner(cluster, headers, token).is_none()
}

/// The other server a request with connection token `token` belongs to.
fn owner<'a>(cluster: &dyn Cluster, headers: &HeaderMap, token: &'a str) -> Option<&'a str> {
    if headers.contains_key(&FORWARDED) {
        return None;
    }
    let (owner, _) = token.split_once('.')?;
    (owner != cluster.server_id()).then_some(owner)
}

/// Decides where a request with connection token `token` is served. A
/// WebSocket may be for a stateful connection that moved from the server
/// its token names to another one.
pub(crate) async fn route(
    cluster: &dyn Cluster,
    headers: &HeaderMap,
    token: &str,
    websocket: bool,
) -> Route {
    let Some(mut owner) = owner(cluster, headers, token) else {
        return Route::Local;
    };
    let moved = match websocket {
        true => cluster.moved(token).await,
        false => None,
    };
    if let Some(holder) = &moved {
        if holder == cluster.server_id() {
            return Route::Local;
        }
        owner = holder;
    }
    match cluster.locate(owner).await {
        Some(address) => Route::Forward(address),
        None => Route::Gone,
    }
}

fn client() -> &'static Client<HttpConnector, Body> {
    static CLIENT: OnceLock<Client<HttpConnector, Body>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(connector)
    })
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "No Connection with that ID").into_response()
}

fn target(request: &Request, address: &str) -> Option<Uri> {
    let original = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().clone(), |uri| uri.0.clone());
    let path = original.path_and_query().map_or("/", |p| p.as_str());
    format!("http://{address}{path}").parse::<Uri>().ok()
}

/// Asks the server at `address`, which negotiated the connection of this
/// WebSocket `request`, to hand the connection over so that it is served
/// here, where the socket landed, instead of through this server. Returns
/// the connection id; `None` when the connection is stateful (its later
/// sockets find it by its token, on its server), unknown, or the server
/// did not answer — then the request is forwarded.
pub(crate) fn claim(
    request: &Request,
    address: &str,
) -> impl Future<Output = Option<String>> + Send + 'static {
    // Nothing of the request is held across the wait (its body is not Sync).
    let uri = target(request, address);
    let address = address.to_owned();
    async move { claim_at(uri?, &address).await }
}

async fn claim_at(uri: Uri, address: &str) -> Option<String> {
    let (status, body) = ask(uri, address, &CLAIM, "1", CLAIM_TIMEOUT).await?;
    if status != StatusCode::OK {
        return None;
    }
    String::from_utf8(body.to_vec()).ok()
}

/// How long a claim may take (the socket waits meanwhile).
const CLAIM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The largest answer to a request between servers (a handed-over
/// connection carries its replay buffer: the official clients' 100 000
/// bytes by default, base64-encoded).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// One request of this server to the server at `address` about the
/// connection of `uri`, marked with `marker: value`: its status and body,
/// or `None` if it did not answer within `wait`.
pub(crate) async fn ask(
    uri: Uri,
    address: &str,
    marker: &HeaderName,
    value: &'static str,
    wait: std::time::Duration,
) -> Option<(StatusCode, bytes::Bytes)> {
    let request = axum::http::Request::get(uri)
        .header(FORWARDED, "1")
        .header(marker, value)
        .header(header::HOST, address)
        .body(Body::empty())
        .ok()?;
    let exchange = async {
        let response = client().request(request).await.ok()?;
        let status = response.status();
        let body = axum::body::to_bytes(Body::new(response.into_body()), MAX_ANSWER)
            .await
            .ok()?;
        Some((status, body))
    };
    tokio::time::timeout(wait, exchange).await.ok().flatten()
}

/// Whether the server at `address` may still be alive: false only once a
/// TCP connection to it was refused (a server that died; one that is slow
/// to answer is not taken for dead).
pub(crate) async fn answers(address: &str) -> bool {
    let connect = tokio::net::TcpStream::connect(address);
    !matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), connect).await,
        Ok(Err(_))
    )
}

/// The URI of `request` at the server at `address`.
pub(crate) fn uri_at(request: &Request, address: &str) -> Option<Uri> {
    target(request, address)
}

/// Forwards `request` to the server at `address` and relays its answer.
/// Spliced WebSockets end with `stop` (the server's shutdown).
pub(crate) async fn forward(
    mut request: Request,
    address: &str,
    stop: CancellationToken,
) -> Response {
    let Some(uri) = target(&request, address) else {
        return not_found();
    };
    let upgrading = request.headers().contains_key(header::UPGRADE);
    let client_side = upgrading.then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let mut outgoing = axum::http::Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    *outgoing.version_mut() = Version::HTTP_11;
    let headers = outgoing.headers_mut();
    for (name, value) in &parts.headers {
        if name == header::HOST || (is_hop_by_hop(name) && !upgrading) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers.insert(FORWARDED, HeaderValue::from_static("1"));
    if let Ok(host) = HeaderValue::from_str(address) {
        headers.insert(header::HOST, host);
    }

    let mut response = match client().request(outgoing).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, address, "the server holding the connection did not answer");
            return not_found();
        }
    };
    if let Some(client_side) = client_side
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let server_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (client_io, server_io) = tokio::join!(client_side, server_side);
            let (Ok(client_io), Ok(server_io)) = (client_io, server_io) else {
                tracing::debug!("a forwarded WebSocket upgrade failed");
                return;
            };
            let mut client_io = TokioIo::new(client_io);
            let mut server_io = TokioIo::new(server_io);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client_io, &mut server_io) => {}
                () = stop.cancelled() => {}
            }
        });
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    let (mut parts, body) = response.into_parts();
    let hop_by_hop: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|name| is_hop_by_hop(name))
        .cloned()
        .collect();
    for name in hop_by_hop {
        parts.headers.remove(name);
    }
    Response::from_parts(parts, Body::new(body))
}
