//! A serverless hub end to end in one process: an axum upstream that
//! verifies every signature, a tidings endpoint forwarding to it, and the
//! Rust client invoking over JSON and MessagePack.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};
use tidings::HubEndpoint;
use tidings_client::{HubConnectionBuilder, InvokeError, Protocol};
use tidings_service::{AccessKey, AccessKeys, ServerlessHub, Upstream, UpstreamOptions, signature};

const KEY: &str = "serverless-test-key-0123456789";

/// One request the upstream received.
#[derive(Debug, Clone)]
struct Seen {
    category: String,
    event: String,
    body: Value,
    signed: bool,
    asrs_hub: Option<String>,
}

#[derive(Clone, Default)]
struct Upstreamed {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstreamed {
    fn events(&self, category: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|e| e.category == category)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn upstream(
    State(state): State<Upstreamed>,
    Path((hub, category, event)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let keys = AccessKeys::new([AccessKey::new(KEY).expect("key")]);
    let timestamp: u64 = header(signature::TIMESTAMP_HEADER)
        .and_then(|t| t.parse().ok())
        .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signed = now.abs_diff(timestamp) < 300
        && header(signature::SIGNATURE_HEADER)
            .is_some_and(|s| signature::verify(&keys, &s, timestamp, &body));
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(body["hub"], hub);
    state.seen.lock().expect("lock").push(Seen {
        category: category.clone(),
        event: event.clone(),
        body: body.clone(),
        signed,
        asrs_hub: header("X-ASRS-Hub"),
    });
    if category != "messages" {
        return StatusCode::OK.into_response();
    }
    let args = body["arguments"].as_array().cloned().unwrap_or_default();
    match event.as_str() {
        "Add" => Json(json!(args.iter().filter_map(Value::as_i64).sum::<i64>())).into_response(),
        "Echo" => Json(args.first().cloned().unwrap_or(Value::Null)).into_response(),
        "Nothing" => StatusCode::NO_CONTENT.into_response(),
        "Whoami" => Json(json!({"connectionId": body["connectionId"], "userId": body["userId"]}))
            .into_response(),
        "Refuse" => (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "not in this room"})),
        )
            .into_response(),
        "Broken" => (StatusCode::INTERNAL_SERVER_ERROR, "stack trace").into_response(),
        "Garbage" => (StatusCode::OK, "<html>").into_response(),
        "Slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            StatusCode::OK.into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no method {event}")})),
        )
            .into_response(),
    }
}

async fn listen(app: Router) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{address}"))
}

/// A tidings server with serverless hub `game` forwarding to `template`.
async fn tidings_with(template: &str, timeout: Duration) -> Result<String> {
    let keys = AccessKeys::new([AccessKey::new(KEY)?]);
    let options = UpstreamOptions::new(template).timeout(timeout).keys(keys);
    let hub = ServerlessHub::new(Upstream::new("game", options)?);
    let app = Router::new().nest(
        "/hubs/game",
        HubEndpoint::new(hub).name("game").into_router(),
    );
    listen(app).await
}

fn hub_error(result: Result<Value, InvokeError>) -> String {
    match result {
        Err(InvokeError::Hub(text)) => text,
        other => format!("not a hub error: {other:?}"),
    }
}

async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn invocations_round_trip_through_the_upstream() -> Result<()> {
    let state = Upstreamed::default();
    let backend = listen(
        Router::new()
            .route("/api/{hub}/{category}/{event}", post(upstream))
            .with_state(state.clone()),
    )
    .await?;
    let url = tidings_with(
        &format!("{backend}/api/{{hub}}/{{category}}/{{event}}"),
        Duration::from_millis(400),
    )
    .await?;

    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let client = HubConnectionBuilder::new(format!("{url}/hubs/game"))
            .with_protocol(protocol)
            .build()?;
        client.start().await?;
        let id = client.connection_id().context("connection id")?;
        assert!(
            eventually(|| state
                .events("connections")
                .iter()
                .any(|e| e.event == "connected" && e.body["connectionId"] == id))
            .await,
            "the upstream heard of the connection"
        );

        assert_eq!(client.invoke::<i64>("Add", (2, 40)).await?, 42);
        let value = json!({"nested": [1, "two", null], "ok": true});
        assert_eq!(
            client.invoke::<Value>("Echo", (value.clone(),)).await?,
            value
        );
        assert_eq!(client.invoke::<Value>("Nothing", ()).await?, Value::Null);
        let me = client.invoke::<Value>("Whoami", ()).await?;
        assert_eq!(me, json!({"connectionId": id, "userId": null}));

        assert_eq!(
            hub_error(client.invoke::<Value>("Refuse", ()).await),
            "An unexpected error occurred invoking 'Refuse' on the server. HubException: not in this room"
        );
        assert_eq!(
            hub_error(client.invoke::<Value>("Broken", ()).await),
            "An unexpected error occurred invoking 'Broken' on the server. HubException: The upstream answered 500."
        );
        assert_eq!(
            hub_error(client.invoke::<Value>("Garbage", ()).await),
            "An unexpected error occurred invoking 'Garbage' on the server. HubException: The upstream's answer is not JSON."
        );
        let started = std::time::Instant::now();
        assert_eq!(
            hub_error(client.invoke::<Value>("Slow", ()).await),
            "An unexpected error occurred invoking 'Slow' on the server. HubException: The upstream did not answer within 400ms."
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        // Still usable after every failure.
        assert_eq!(client.invoke::<i64>("Add", (1, 1)).await?, 2);

        let message = state
            .events("messages")
            .into_iter()
            .find(|e| e.event == "Add" && e.body["connectionId"] == id)
            .context("the Add message")?;
        assert_eq!(message.body["target"], "Add");
        assert_eq!(message.body["arguments"], json!([2, 40]));
        assert_eq!(message.asrs_hub.as_deref(), Some("game"));

        client.stop().await;
        assert!(
            eventually(|| state
                .events("connections")
                .iter()
                .any(|e| e.event == "disconnected" && e.body["connectionId"] == id))
            .await,
            "the upstream heard of the disconnection"
        );
    }
    let all = state.seen.lock().expect("lock").clone();
    assert!(
        all.iter().all(|e| e.signed),
        "every request verifies: {all:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_upstream_fails_invocations_at_once() -> Result<()> {
    // A port that was free a moment ago: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    let url = tidings_with(
        &format!("http://{closed}/{{event}}"),
        Duration::from_secs(5),
    )
    .await?;
    let client = HubConnectionBuilder::new(format!("{url}/hubs/game")).build()?;
    client.start().await?;
    let started = std::time::Instant::now();
    assert_eq!(
        hub_error(client.invoke::<Value>("Anything", (1,)).await),
        "An unexpected error occurred invoking 'Anything' on the server. HubException: The upstream is unreachable."
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // Streams cannot be forwarded.
    let refused = client.stream::<Value>("Anything", ()).await;
    let text = match refused {
        Ok(mut items) => {
            use futures_util::StreamExt;
            match items.next().await {
                Some(Err(error)) => error.to_string(),
                other => format!("{other:?}"),
            }
        }
        Err(error) => error.to_string(),
    };
    assert_eq!(
        text,
        "The client attempted to invoke the non-streaming 'Anything' method with a streaming invocation."
    );
    client.stop().await;
    Ok(())
}
