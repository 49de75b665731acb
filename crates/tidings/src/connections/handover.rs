//! Handing a live stateful-reconnect connection over to another server of
//! the cluster, so that a server going away (a rolling deploy's SIGTERM)
//! loses none of its clients' messages.
//!
//! A server that shuts down keeps its stateful WebSocket connections (their
//! sessions, groups, replay buffers) and only drops their sockets. Each
//! client re-attaches with its token, as after any lost socket; the server
//! going away refuses the socket with `503`, so the load balancer tries
//! another server, B. B sees a token of the old server, A, and adopts the
//! connection instead of relaying the socket to A:
//!
//! ```text
//! B ── GET ?id=<token>  tidings-handover: offer ──▶ A   (A is shutting down)
//!                                                  ◀── connection id, user, the
//!                                                      application's part (a hub:
//!                                                      the connection's groups)
//! B   Application::hold: B subscribes to everything the connection receives
//!     (its channel, its user's, its groups') and keeps what arrives aside
//! B ── GET ?id=<token>  tidings-handover: take ───▶ A
//!     A   Application::freeze: A stops delivering to the connection, after
//!         every message its backplane had before B's subscriptions arrived,
//!         and says how far it got (a hub's lifetime manager: per publishing
//!         server, the last sequence number it delivered)
//!     A   the writer stops: the unacknowledged messages and the queued ones,
//!         the numbering, the last client message processed
//!                                                  ◀── all of it
//! B   a connection with the same id, token, user and numbering, without a
//!     socket; Application::run_adopted releases what B kept aside beyond
//!     A's positions (the rest A had delivered); the client's socket then
//!     re-attaches here: Sequence, replay — exactly once, in order
//! ```
//!
//! The connection keeps its token, whose prefix names A; a later socket of
//! the client that reaches B finds the connection in B's registry first.

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use axum::{
    http::{HeaderName, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::connections::{
    cluster,
    connection::AbortReason,
    frozen::{self, Frozen},
    handler::Application,
    served::Served,
    transport::resume::{Forward, Frozen as WriterState, Resumable},
};

/// Marks a handover request between servers: `offer` or `take`.
pub(crate) const HANDOVER: HeaderName = HeaderName::from_static("tidings-handover");

/// How long one step of a handover may take before the adopting server
/// gives up (the client then reconnects as a new connection).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the old server says of a connection before it lets it go.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Offer {
    pub id: String,
    pub user_id: Option<String>,
    /// The application's part (see [`Application::offer`]).
    pub app: Value,
}

impl Frozen {
    /// What the writer and the application of the new connection start
    /// from; `None` if a frame is not base64.
    pub(crate) fn into_state(self) -> Option<(WriterState, Value)> {
        let frames = self
            .frames
            .iter()
            .map(|f| {
                base64::engine::general_purpose::STANDARD
                    .decode(f)
                    .ok()
                    .map(Bytes::from)
            })
            .collect::<Option<Vec<_>>>()?;
        let state = WriterState {
            first_id: self.first_id,
            frames,
            received: self.received,
        };
        Some((state, self.app))
    }
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The old server's side: answers `step` (`offer` or `take`) for the live
/// stateful connection `entry`. Only a server that is shutting down lets
/// its connections go (`409` otherwise: the socket is relayed as usual).
pub(crate) async fn answer<C: Application>(
    served: &Served<C>,
    entry: Option<Resumable>,
    step: &str,
) -> Response {
    if !served.shutdown.is_shutting_down() {
        return StatusCode::CONFLICT.into_response();
    }
    let Some(entry) = entry else {
        return (StatusCode::NOT_FOUND, "No Connection with that ID").into_response();
    };
    let connection = entry.connection().clone();
    match step {
        "offer" => match served.app.offer(&connection).await {
            Some(app) => json(&Offer {
                id: connection.id().to_owned(),
                user_id: connection.user_id().map(str::to_owned),
                app,
            }),
            None => StatusCode::CONFLICT.into_response(),
        },
        "take" => {
            // One adopter only: a second one finds the connection taken.
            if !entry.claim() {
                return StatusCode::CONFLICT.into_response();
            }
            let Some(app) = served.app.freeze(&connection).await else {
                return StatusCode::CONFLICT.into_response();
            };
            // The session's later frames follow the connection.
            let forward: Forward = {
                let app = Arc::clone(&served.app);
                let connection = connection.clone();
                Box::new(move |frame| {
                    let app = Arc::clone(&app);
                    let connection = connection.clone();
                    Box::pin(async move { app.forward(&connection, frame).await })
                })
            };
            let Some(WriterState {
                first_id,
                frames,
                received,
            }) = entry.freeze(forward).await
            else {
                return (StatusCode::NOT_FOUND, "No Connection with that ID").into_response();
            };
            // The session ends without a Close, hooks or leaving groups:
            // the connection lives on elsewhere.
            connection.abort_with(AbortReason::HandedOver);
            let principal = connection.principal();
            tracing::debug!(connection_id = %connection.id(), "connection handed over");
            json(&Frozen {
                id: connection.id().to_owned(),
                user_id: principal.user_id().map(str::to_owned),
                claims: principal
                    .claims()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                expires_at_ms: principal.expires_at().and_then(|at| {
                    at.duration_since(UNIX_EPOCH)
                        .ok()
                        .and_then(|d| u64::try_from(d.as_millis()).ok())
                }),
                first_id,
                frames: frames.iter().map(|f| frozen::encode(f)).collect(),
                received,
                app,
            })
        }
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The adopting server's side: takes the connection of `token` from the
/// server at `address`, if that server is letting it go. `None` leaves the
/// socket to be relayed (or refused) as before.
pub(crate) async fn adopt<C: Application>(
    served: &Served<C>,
    uri: axum::http::Uri,
    address: &str,
) -> Option<Frozen> {
    let (status, body) =
        cluster::ask(uri.clone(), address, &HANDOVER, "offer", STEP_TIMEOUT).await?;
    if status != StatusCode::OK {
        return None;
    }
    let offer: Offer = serde_json::from_slice(&body).ok()?;
    if !served
        .app
        .hold(&offer.id, offer.user_id.as_deref(), &offer.app)
        .await
    {
        return None;
    }
    let taken = cluster::ask(uri, address, &HANDOVER, "take", STEP_TIMEOUT)
        .await
        .filter(|(status, _)| *status == StatusCode::OK)
        .and_then(|(_, body)| serde_json::from_slice::<Frozen>(&body).ok())
        .filter(|frozen| frozen.id == offer.id);
    if taken.is_none() {
        served.app.unhold(&offer.id);
        tracing::debug!(connection_id = %offer.id, "handover failed");
    }
    taken
}
