//! The REST publish API: how a backend with nothing but HTTP reaches
//! clients, shaped like Azure SignalR Service's data-plane API (version
//! 2022-06-01), so that its tooling and habits carry over.
//!
//! | method | path | does | answers |
//! |---|---|---|---|
//! | `HEAD`/`GET` | `/api/health` | service health (no token) | 200 |
//! | `POST` | `/api/hubs/{hub}/:send?excluded=…` | send to every connection | 202 |
//! | `POST` | `/api/hubs/{hub}/users/{user}/:send` | send to a user's connections | 202 |
//! | `POST` | `/api/hubs/{hub}/connections/{id}/:send` | send to one connection | 202 |
//! | `POST` | `/api/hubs/{hub}/groups/{group}/:send?excluded=…` | send to a group | 202 |
//! | `PUT`/`DELETE` | `/api/hubs/{hub}/groups/{group}/connections/{id}` | a connection joins/leaves a group | 200, 404 |
//! | `PUT`/`DELETE`/`HEAD` | `/api/hubs/{hub}/users/{user}/groups/{group}` | a user's connections join/leave a group; is one in it | 200, 404 |
//! | `DELETE` | `/api/hubs/{hub}/connections/{id}?reason=…` | close a connection | 200 |
//! | `POST` | `/api/hubs/{hub}/:closeConnections?excluded=…&reason=…` | close every connection | 204 |
//! | `POST` | `/api/hubs/{hub}/groups/{group}/:closeConnections` | close a group's connections | 204 |
//! | `POST` | `/api/hubs/{hub}/users/{user}/:closeConnections` | close a user's connections | 204 |
//! | `HEAD` | `/api/hubs/{hub}/connections/{id}` | is the connection connected | 200, 404 |
//! | `HEAD` | `/api/hubs/{hub}/users/{user}` | has the user a connection | 200, 404 |
//! | `HEAD` | `/api/hubs/{hub}/groups/{group}` | has the group a member | 200, 404 |
//! | `GET` | `/api/openapi.json` | this API's OpenAPI document (no token) | 200 |
//!
//! A send's body is `{"target": "method", "arguments": [...]}`. Every
//! request but the health check and the document carries
//! `Authorization: Bearer <JWT>` signed with an access key, whose `aud` is
//! the request's URL ([`AccessKeys::verify_rest`]). Failures answer with a
//! JSON body `{"code": "…", "message": "…"}`: 400 for a bad body or name,
//! 401 for a missing or invalid token, 404 for an unknown path, hub or
//! connection, 405 for a method a path does not take, 413 for a body over
//! the limit, 503 when the backplane cannot answer.
//!
//! Everything goes through the hub's lifetime manager, so on a cluster
//! (the Redis backplane) a request to any server reaches the connections
//! of every server, and the existence checks answer for the whole cluster.
//!
//! Unlike the managed service, a user's group membership is that of the
//! user's current connections: `PUT …/users/{user}/groups/{group}` adds
//! the connections the user has now (`ttl` is accepted and ignored).

use std::{collections::HashMap, fmt, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{OriginalUri, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use tidings::{ClientProxy, Clients, HubContext, SerializedMessage};

use crate::AccessKeys;

/// The OpenAPI document of this API (OpenAPI 3.0, JSON).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// The default limit of a request body, in bytes.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// The longest user, group or connection name accepted.
const MAX_NAME: usize = 1024;

/// The REST publish API over a set of hubs.
///
/// ```no_run
/// # fn run(chat: tidings::HubContext) {
/// use tidings_service::{AccessKey, AccessKeys, RestApi};
/// let keys = AccessKeys::new([AccessKey::new("a secret of at least 16 bytes").unwrap()]);
/// let api = RestApi::new(keys).hub("chat", chat);
/// let app: axum::Router = axum::Router::new().merge(api.into_router());
/// # }
/// ```
#[derive(Clone)]
pub struct RestApi {
    keys: AccessKeys,
    /// By lowercase name: hub names are matched case-insensitively.
    hubs: HashMap<String, HubContext>,
    body_limit: usize,
}

impl fmt::Debug for RestApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestApi")
            .field("hubs", &self.hubs.keys().collect::<Vec<_>>())
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl RestApi {
    /// An API whose requests must be signed with one of `keys` (none:
    /// every authenticated request is refused), with no hub yet.
    pub fn new(keys: AccessKeys) -> Self {
        RestApi {
            keys,
            hubs: HashMap::new(),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Makes hub `name` reachable as `/api/hubs/{name}/…`.
    pub fn hub(mut self, name: &str, context: HubContext) -> Self {
        self.hubs.insert(name.to_lowercase(), context);
        self
    }

    /// The largest request body accepted, in bytes.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The routes, under `/api`; merge them into the server's router at
    /// the root (the token's audience is the full request URL).
    pub fn into_router(self) -> Router {
        let api = Arc::new(self);
        Router::new()
            .route("/api/{*path}", any(handle))
            .with_state(api)
    }
}

/// A failed request: status, code and message, as JSON.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static str>,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "message": self.message}).to_string();
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// What a path names.
#[derive(Debug)]
enum Route {
    Health,
    OpenApi,
    SendAll,
    CloseAll,
    SendUser(String),
    CloseUser(String),
    User(String),
    UserGroup(String, String),
    SendConnection(String),
    Connection(String),
    SendGroup(String),
    CloseGroup(String),
    Group(String),
    GroupConnection(String, String),
}

impl Route {
    /// The methods the route takes, for `405` answers.
    fn allow(&self) -> &'static str {
        match self {
            Route::Health => "GET, HEAD",
            Route::OpenApi => "GET",
            Route::SendAll
            | Route::CloseAll
            | Route::SendUser(_)
            | Route::CloseUser(_)
            | Route::SendConnection(_)
            | Route::SendGroup(_)
            | Route::CloseGroup(_) => "POST",
            Route::User(_) | Route::Group(_) => "HEAD",
            Route::UserGroup(..) => "PUT, DELETE, HEAD",
            Route::Connection(_) => "DELETE, HEAD",
            Route::GroupConnection(..) => "PUT, DELETE",
        }
    }
}

/// Splits `/api/…` into the hub (if any) and the route. `None`: no such
/// path.
fn parse(path: &str) -> Result<Option<(Option<String>, Route)>, Failure> {
    let Some(rest) = path.strip_prefix("/api/") else {
        return Ok(None);
    };
    let segments: Vec<String> = rest
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let names = |items: &[&String]| -> Result<(), Failure> {
        for name in items {
            if name.is_empty() {
                return Err(Failure::bad_request("a name in the path is empty"));
            }
            if name.len() > MAX_NAME {
                return Err(Failure::bad_request(format!(
                    "a name in the path is longer than {MAX_NAME} bytes"
                )));
            }
        }
        Ok(())
    };
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = match s.as_slice() {
        ["health"] => return Ok(Some((None, Route::Health))),
        ["openapi.json"] => return Ok(Some((None, Route::OpenApi))),
        ["hubs", _, rest @ ..] => match rest {
            [":send"] => Route::SendAll,
            [":closeConnections"] => Route::CloseAll,
            ["users", user] => Route::User((*user).to_owned()),
            ["users", user, ":send"] => Route::SendUser((*user).to_owned()),
            ["users", user, ":closeConnections"] => Route::CloseUser((*user).to_owned()),
            ["users", user, "groups", group] => {
                Route::UserGroup((*user).to_owned(), (*group).to_owned())
            }
            ["connections", id] => Route::Connection((*id).to_owned()),
            ["connections", id, ":send"] => Route::SendConnection((*id).to_owned()),
            ["groups", group] => Route::Group((*group).to_owned()),
            ["groups", group, ":send"] => Route::SendGroup((*group).to_owned()),
            ["groups", group, ":closeConnections"] => Route::CloseGroup((*group).to_owned()),
            ["groups", group, "connections", id] => {
                Route::GroupConnection((*group).to_owned(), (*id).to_owned())
            }
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    // Names sit at odd positions: hubs/{hub}/users/{user}/groups/{group}.
    let named: Vec<&String> = segments.iter().skip(1).step_by(2).collect();
    names(&named)?;
    let hub = segments[1].clone();
    Ok(Some((Some(hub), route)))
}

/// The query parameters this API reads.
#[derive(Debug, Default)]
struct Query {
    excluded: Vec<String>,
    reason: Option<String>,
}

fn query(raw: Option<&str>) -> Result<Query, Failure> {
    let mut out = Query::default();
    for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*name {
            "excluded" => {
                if value.is_empty() {
                    return Err(Failure::bad_request("an excluded connection id is empty"));
                }
                out.excluded.push(value.into_owned());
            }
            "reason" => out.reason = Some(value.into_owned()),
            // Accepted and ignored (membership lasts as long as the
            // connections), but it must be what the document says.
            "ttl" if value.parse::<u64>().is_err() => {
                return Err(Failure::bad_request(
                    "'ttl' must be a whole number of seconds",
                ));
            }
            // api-version is the managed service's; it is ignored.
            _ => {}
        }
    }
    Ok(out)
}

/// A send's body.
#[derive(Debug)]
struct Payload {
    target: String,
    arguments: Vec<Value>,
}

fn payload(body: &[u8]) -> Result<Payload, Failure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::bad_request(format!("the body is not JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(Failure::bad_request("the body must be a JSON object"));
    };
    let target = match object.remove("target") {
        Some(Value::String(target)) if !target.is_empty() => target,
        Some(Value::String(_)) => return Err(Failure::bad_request("'target' is empty")),
        Some(_) => return Err(Failure::bad_request("'target' must be a string")),
        None => return Err(Failure::bad_request("the body has no 'target'")),
    };
    let arguments = match object.remove("arguments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(arguments)) => arguments,
        Some(_) => return Err(Failure::bad_request("'arguments' must be an array")),
    };
    Ok(Payload { target, arguments })
}

async fn handle(State(api): State<Arc<RestApi>>, request: Request) -> Response {
    match serve(&api, request).await {
        Ok(response) => response,
        Err(failure) => failure.into_response(),
    }
}

fn status(status: StatusCode) -> Response {
    status.into_response()
}

async fn serve(api: &RestApi, request: Request) -> Result<Response, Failure> {
    let uri = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().clone(), |original| original.0.clone());
    let path = uri.path();
    let Some((hub, route)) = parse(path)? else {
        return Err(Failure::not_found(format!("no such path: {path}")));
    };
    let method = request.method().clone();
    let allowed = route.allow();
    if !allowed.split(", ").any(|m| m == method.as_str()) {
        let mut failure = Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{path} takes {allowed}"),
        );
        failure.allow = Some(allowed);
        return Err(failure);
    }
    match route {
        Route::Health => return Ok(status(StatusCode::OK)),
        Route::OpenApi => {
            return Ok(([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response());
        }
        _ => {}
    }

    authenticate(api, &request, &uri)?;
    let hub_name = hub.unwrap_or_default();
    let Some(hub) = api.hubs.get(&hub_name.to_lowercase()) else {
        return Err(Failure::not_found(format!("no hub named '{hub_name}'")));
    };
    let query = query(uri.query())?;
    let body = if method == Method::POST && is_send(&route) {
        Some(read_body(request.into_body(), api.body_limit).await?)
    } else {
        None
    };
    tracing::debug!(hub = %hub_name, %method, ?route, "REST request");
    route_request(hub, route, &method, query, body.as_deref()).await
}

fn is_send(route: &Route) -> bool {
    matches!(
        route,
        Route::SendAll | Route::SendUser(_) | Route::SendConnection(_) | Route::SendGroup(_)
    )
}

fn authenticate(api: &RestApi, request: &Request, uri: &http::Uri) -> Result<(), Failure> {
    let unauthorized =
        |message: String| Failure::new(StatusCode::UNAUTHORIZED, "Unauthorized", message);
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
        .ok_or_else(|| unauthorized(crate::RestAuthError::Missing.to_string()))?;
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    api.keys
        .verify_rest(token, &authority, uri.path())
        .map(drop)
        .map_err(|error| unauthorized(error.to_string()))
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Failure> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("the body is larger than {limit} bytes"),
        )),
        Err(_) => Err(Failure::bad_request("the body could not be read")),
    }
}

fn message(body: Option<&[u8]>) -> Result<Arc<SerializedMessage>, Failure> {
    let payload = payload(body.unwrap_or_default())?;
    Ok(Arc::new(SerializedMessage::invocation(
        payload.target,
        payload.arguments,
    )))
}

fn delivery(error: impl fmt::Display) -> Failure {
    Failure::unavailable(error.to_string())
}

/// 200 if `found`, else 404 with `what`.
fn found(found: bool, what: impl FnOnce() -> String) -> Result<Response, Failure> {
    if found {
        Ok(status(StatusCode::OK))
    } else {
        Err(Failure::not_found(what()))
    }
}

/// Every connection of the hub, or of one group, less the `excluded` ones.
fn everyone<'a>(
    clients: Clients<'a>,
    group: Option<String>,
    excluded: &[String],
) -> ClientProxy<'a> {
    match (group, excluded.is_empty()) {
        (None, true) => clients.all(),
        (None, false) => clients.all_except(excluded),
        (Some(group), true) => clients.group(group),
        (Some(group), false) => clients.group_except(group, excluded),
    }
}

async fn connection_exists(hub: &HubContext, id: &str) -> Result<bool, Failure> {
    hub.presence().connection_exists(id).await.map_err(delivery)
}

async fn route_request(
    hub: &HubContext,
    route: Route,
    method: &Method,
    query: Query,
    body: Option<&[u8]>,
) -> Result<Response, Failure> {
    let accepted = || Ok(status(StatusCode::ACCEPTED));
    let close = |reason: Option<String>| Arc::new(SerializedMessage::close(reason));
    let clients = hub.clients();
    match route {
        Route::Health | Route::OpenApi => Ok(status(StatusCode::OK)),
        Route::SendAll => {
            everyone(clients, None, &query.excluded)
                .send_serialized(message(body)?)
                .await
                .map_err(delivery)?;
            accepted()
        }
        Route::SendUser(user) => {
            clients
                .user(user)
                .send_serialized(message(body)?)
                .await
                .map_err(delivery)?;
            accepted()
        }
        Route::SendConnection(id) => {
            clients
                .client(id)
                .send_serialized(message(body)?)
                .await
                .map_err(delivery)?;
            accepted()
        }
        Route::SendGroup(group) => {
            everyone(clients, Some(group), &query.excluded)
                .send_serialized(message(body)?)
                .await
                .map_err(delivery)?;
            accepted()
        }
        Route::CloseAll => {
            everyone(clients, None, &query.excluded)
                .send_serialized(close(query.reason))
                .await
                .map_err(delivery)?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        Route::CloseUser(user) => {
            clients
                .user(user)
                .send_serialized(close(query.reason))
                .await
                .map_err(delivery)?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        Route::CloseGroup(group) => {
            everyone(clients, Some(group), &query.excluded)
                .send_serialized(close(query.reason))
                .await
                .map_err(delivery)?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        Route::Connection(id) if *method == Method::DELETE => {
            clients
                .client(id)
                .send_serialized(close(query.reason))
                .await
                .map_err(delivery)?;
            Ok(status(StatusCode::OK))
        }
        Route::Connection(id) => found(connection_exists(hub, &id).await?, || {
            format!("no connection '{id}'")
        }),
        Route::User(user) => {
            let connections = hub
                .presence()
                .connections_of_user(&user)
                .await
                .map_err(delivery)?;
            found(!connections.is_empty(), || {
                format!("user '{user}' has no connection")
            })
        }
        Route::Group(group) => {
            let members = hub
                .presence()
                .group_members(&group)
                .await
                .map_err(delivery)?;
            found(!members.is_empty(), || {
                format!("group '{group}' has no member")
            })
        }
        Route::GroupConnection(group, id) => {
            if !connection_exists(hub, &id).await? {
                return Err(Failure::not_found(format!("no connection '{id}'")));
            }
            let groups = hub.groups();
            if *method == Method::PUT {
                groups.add(&id, &group).await
            } else {
                groups.remove(&id, &group).await
            }
            .map_err(delivery)?;
            Ok(status(StatusCode::OK))
        }
        Route::UserGroup(user, group) => {
            let presence = hub.presence();
            if *method == Method::HEAD {
                let members = presence.users_in_group(&group).await.map_err(delivery)?;
                return found(members.contains(&user), || {
                    format!("user '{user}' is not in group '{group}'")
                });
            }
            let connections = presence
                .connections_of_user(&user)
                .await
                .map_err(delivery)?;
            let groups = hub.groups();
            for id in &connections {
                if *method == Method::PUT {
                    groups.add(id, &group).await
                } else {
                    groups.remove(id, &group).await
                }
                .map_err(delivery)?;
            }
            Ok(status(StatusCode::OK))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_routes() {
        let route = |p: &str| {
            parse(p)
                .expect("valid")
                .map(|(hub, r)| (hub, format!("{r:?}")))
        };
        assert_eq!(
            route("/api/hubs/chat/:send"),
            Some((Some("chat".into()), "SendAll".into()))
        );
        assert_eq!(
            route("/api/hubs/chat/groups/a%20b/connections/c1"),
            Some((
                Some("chat".into()),
                "GroupConnection(\"a b\", \"c1\")".into()
            ))
        );
        assert_eq!(
            route("/api/hubs/chat/users/u/%3Asend"),
            Some((Some("chat".into()), "SendUser(\"u\")".into()))
        );
        assert_eq!(route("/api/health"), Some((None, "Health".into())));
        assert_eq!(route("/api/hubs/chat/nothing"), None);
        assert_eq!(route("/api/hubs/chat/users/u/:sendx"), None);
        assert!(parse("/api/hubs/chat/groups//:send").is_err());
        assert!(parse("/api/hubs//:send").is_err());
        let long = format!("/api/hubs/chat/users/{}", "x".repeat(MAX_NAME + 1));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn bodies_need_a_target_and_an_array_of_arguments() {
        let ok = payload(br#"{"target":"Hi","arguments":[1,"a"]}"#).expect("valid");
        assert_eq!(ok.target, "Hi");
        assert_eq!(ok.arguments.len(), 2);
        assert!(payload(br#"{"target":"Hi"}"#).is_ok());
        for bad in [
            &br#"{"arguments":[]}"#[..],
            br#"{"target":"","arguments":[]}"#,
            br#"{"target":1}"#,
            br#"{"target":"x","arguments":{}}"#,
            br#"[]"#,
            b"nope",
        ] {
            assert_eq!(
                payload(bad).map(drop).map_err(|f| f.status),
                Err(StatusCode::BAD_REQUEST)
            );
        }
    }

    #[test]
    fn excluded_ids_repeat() {
        let q = query(Some(
            "excluded=a&excluded=b&api-version=2022-06-01&reason=bye",
        ))
        .expect("ok");
        assert_eq!(q.excluded, ["a", "b"]);
        assert_eq!(q.reason.as_deref(), Some("bye"));
        assert!(query(Some("ttl=30")).is_ok());
        for bad in ["ttl=-1", "ttl=soon", "excluded="] {
            assert!(query(Some(bad)).is_err(), "{bad}");
        }
    }
}
