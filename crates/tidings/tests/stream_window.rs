//! `stream_buffer_capacity` bounds a server-to-client stream: a client that
//! does not collect its messages (a Long Polling client that stops polling)
//! holds the producer back after that many items, instead of letting it
//! fill the connection's queue; each poll lets it run that far again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode},
};
use futures_util::Stream;
use tidings::{HubEndpoint, HubOptions, hub};
use tower::ServiceExt;

struct Producer {
    produced: Arc<AtomicUsize>,
}

#[hub]
impl Producer {
    /// Counts every item the server pulls from it.
    #[hub(stream)]
    async fn numbers(&self) -> impl Stream<Item = usize> + use<> {
        let produced = Arc::clone(&self.produced);
        futures_util::stream::unfold(0usize, move |i| {
            let produced = Arc::clone(&produced);
            async move {
                produced.fetch_add(1, Ordering::SeqCst);
                Some((i, i + 1))
            }
        })
    }
}

async fn call(app: &Router, method: Method, uri: &str, body: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_owned()))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Waits until the producer has been idle for a while and returns its count.
async fn settled(produced: &AtomicUsize) -> usize {
    let mut last = produced.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = produced.load(Ordering::SeqCst);
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn a_stream_runs_at_most_its_capacity_ahead_of_the_client() -> anyhow::Result<()> {
    const CAPACITY: usize = 4;
    let produced = Arc::new(AtomicUsize::new(0));
    let endpoint = HubEndpoint::new(Producer {
        produced: Arc::clone(&produced),
    })
    .options(
        HubOptions::default()
            .stream_buffer_capacity(CAPACITY)
            .outbound_buffer_capacity(1024),
    );
    let app: Router = Router::new().nest("/hub", endpoint.into_router());

    let (status, negotiated) =
        call(&app, Method::POST, "/hub/negotiate?negotiateVersion=1", "").await;
    assert_eq!(status, StatusCode::OK);
    let negotiated: serde_json::Value = serde_json::from_str(&negotiated)?;
    let token = negotiated["connectionToken"]
        .as_str()
        .expect("a connection token")
        .to_owned();
    let uri = format!("/hub?id={token}");

    // The first poll starts the connection and answers at once.
    let (status, _) = call(&app, Method::GET, &uri, "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &app,
        Method::POST,
        &uri,
        "{\"protocol\":\"json\",\"version\":1}\u{1e}{\"type\":4,\"invocationId\":\"1\",\"target\":\"Numbers\",\"arguments\":[]}\u{1e}",
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Nobody polls: the producer stops once CAPACITY items wait (without
    // the window it would run on until the 1024-message queue was full).
    assert_eq!(settled(&produced).await, CAPACITY);

    // A poll takes what waits, which lets the producer run CAPACITY further.
    let (status, body) = call(&app, Method::GET, &uri, "").await;
    assert_eq!(status, StatusCode::OK);
    let items = body.matches("\"type\":2").count();
    assert_eq!(items, CAPACITY, "{body}");
    assert!(body.starts_with("{}\u{1e}"), "{body}");
    assert_eq!(settled(&produced).await, 2 * CAPACITY);

    let (status, body) = call(&app, Method::GET, &uri, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"item\":4"), "{body}");
    assert_eq!(body.matches("\"type\":2").count(), CAPACITY, "{body}");

    let (status, _) = call(&app, Method::DELETE, &uri, "").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    Ok(())
}
