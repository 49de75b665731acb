//! `/healthz` and `/readyz`: liveness and readiness for orchestrators.
//!
//! * `/healthz` answers 200 while the process serves HTTP at all.
//! * `/readyz` answers 200 while the server accepts new connections and its
//!   backplane (if any) is connected, 503 otherwise, so that a load
//!   balancer stops sending clients to a server that is shutting down or
//!   cut off from the others. The body says which check failed and, with a
//!   backplane, what an outage costs so far:
//!
//! ```json
//! {"status": "unavailable", "accepting": true, "backplane": false,
//!  "backplaneStatus": {"state": "reconnecting", "since": "2025-01-01T10:00:00.000Z",
//!                      "buffered": 10000, "dropped": 1234}}
//! ```
//!
//! `state` is `connected` or `reconnecting`, `since` when it became so
//! (RFC 3339, UTC), `buffered` the cross-server messages waiting for Redis,
//! `dropped` those lost to the full buffer since the server started.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tidings::Shutdown;
use tidings_redis::BackplaneStats;

/// Reads the backplane's state now.
pub(crate) type BackplaneStatus = Arc<dyn Fn() -> BackplaneStats + Send + Sync>;

#[derive(Clone)]
struct Checks {
    shutdown: Shutdown,
    /// The backplane, which must be connected for readiness.
    backplane: Option<BackplaneStatus>,
}

/// The health routes. `backplane`: the state of the backplane, if there is
/// one; readiness then requires it to be connected.
pub(crate) fn router(shutdown: Shutdown, backplane: Option<BackplaneStatus>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .with_state(Checks {
            shutdown,
            backplane,
        })
}

async fn ready(State(checks): State<Checks>) -> Response {
    let accepting = !checks.shutdown.is_shutting_down();
    let stats = checks.backplane.as_ref().map(|status| status());
    let connected = stats.as_ref().is_none_or(|s| s.connected);
    let status = if accepting && connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if status == StatusCode::OK { "ready" } else { "unavailable" },
        "accepting": accepting,
        "backplane": stats.as_ref().map(|s| s.connected),
    });
    if let Some(stats) = stats {
        body["backplaneStatus"] = json!({
            "state": if stats.connected { "connected" } else { "reconnecting" },
            "since": stats
                .since
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            "buffered": stats.buffered,
            "dropped": stats.dropped,
        });
    }
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(app: &Router, path: &str) -> (StatusCode, serde_json::Value) {
        let request = axum::http::Request::get(path)
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, serde_json::from_slice(&body).expect("json"))
    }

    #[tokio::test]
    async fn not_ready_while_shutting_down_alive_still() {
        let shutdown = Shutdown::new();
        let app = router(shutdown.clone(), None);
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
        assert!(shutdown.shutdown(Duration::from_millis(10)).await);
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["accepting"], false);
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn ready_only_with_the_backplane_connected() {
        let stats = Arc::new(parking_lot::Mutex::new(BackplaneStats::default()));
        let read = Arc::clone(&stats);
        let status: BackplaneStatus = Arc::new(move || *read.lock());
        let app = router(Shutdown::new(), Some(status));
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["backplane"], false);
        {
            let mut stats = stats.lock();
            stats.buffered = 10;
            stats.dropped = 3;
            stats.since = Some(std::time::UNIX_EPOCH + Duration::from_millis(1_500));
        }
        let (_, body) = get(&app, "/readyz").await;
        assert_eq!(
            body["backplaneStatus"],
            json!({
                "state": "reconnecting",
                "since": "1970-01-01T00:00:01.500Z",
                "buffered": 10,
                "dropped": 3,
            })
        );
        stats.lock().connected = true;
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["backplane"], true);
        assert_eq!(body["backplaneStatus"]["state"], "connected");
    }

    #[tokio::test]
    async fn without_a_backplane_the_body_says_nothing_of_one() {
        let app = router(Shutdown::new(), None);
        let (_, body) = get(&app, "/readyz").await;
        assert_eq!(
            body,
            json!({"status": "ready", "accepting": true, "backplane": null})
        );
    }
}
