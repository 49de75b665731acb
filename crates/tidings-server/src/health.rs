//! `/healthz` and `/readyz`: liveness and readiness for orchestrators.
//!
//! * `/healthz` answers 200 while the process serves HTTP at all.
//! * `/readyz` answers 200 while the server accepts new connections and its
//!   backplane (if any) is connected, 503 otherwise, so that a load
//!   balancer stops sending clients to a server that is shutting down or
//!   cut off from the others. The body says which check failed.

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tidings::{Metrics, Shutdown};

#[derive(Clone)]
struct Checks {
    shutdown: Shutdown,
    metrics: Metrics,
    /// Whether a backplane must be connected for readiness.
    backplane: bool,
}

/// The health routes. `backplane`: whether readiness requires the
/// backplane to report itself connected (through the metrics registry).
pub(crate) fn router(shutdown: Shutdown, metrics: Metrics, backplane: bool) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .with_state(Checks {
            shutdown,
            metrics,
            backplane,
        })
}

async fn ready(State(checks): State<Checks>) -> Response {
    let accepting = !checks.shutdown.is_shutting_down();
    let backplane = !checks.backplane || checks.metrics.backplane().is_connected();
    let status = if accepting && backplane {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ready" } else { "unavailable" },
        "accepting": accepting,
        "backplane": if checks.backplane { json!(backplane) } else { json!(null) },
    });
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
        let app = router(shutdown.clone(), Metrics::new(), false);
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
        assert!(shutdown.shutdown(Duration::from_millis(10)).await);
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["accepting"], false);
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn ready_only_with_the_backplane_connected() {
        let metrics = Metrics::new();
        let app = router(Shutdown::new(), metrics.clone(), true);
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["backplane"], false);
        metrics.backplane().set_connected(true);
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["backplane"], true);
    }
}
