//! Client results seen from hub code, with a raw WebSocket client: refused
//! inside `on_connected` (but available to a task it spawns), and bounded
//! by the hub's default timeout.

#[path = "support/websocket.rs"]
mod websocket;

use std::time::Duration;

use futures_util::SinkExt;
use tidings::{Context, HubEndpoint, HubError, HubOptions, InvokeError, hub};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use websocket::next_text;

type Events = mpsc::UnboundedSender<String>;

struct Asker {
    events: Events,
}

#[hub]
impl Asker {
    /// Asks the caller with the hub's default timeout.
    async fn ask(&self, cx: &Context) -> Result<i64, HubError> {
        let answer: Result<i64, InvokeError> = cx.clients().caller().invoke("Answer", ()).await;
        answer.map_err(|error| HubError::new(error.to_string()))
    }

    #[on_connected]
    async fn connected(&self, cx: &Context) {
        // Refused: the connection is not read before this returns.
        let refused = cx
            .clients()
            .caller()
            .invoke::<i64, _>("Answer", ())
            .await
            .expect_err("client results are refused in on_connected");
        let _ = self.events.send(format!("on_connected: {refused}"));
        // A task started here may ask once the connection is read.
        let hub = cx.hub_context();
        let id = cx.connection_id().to_owned();
        let events = self.events.clone();
        tokio::spawn(async move {
            let answer = hub
                .clients()
                .client(id)
                .invoke::<i64, _>("Answer", ())
                .await;
            let _ = events.send(format!("background: {answer:?}"));
        });
    }
}

#[tokio::test]
async fn refused_in_on_connected_and_bounded_by_the_default_timeout() -> anyhow::Result<()> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let endpoint = HubEndpoint::new(Asker { events: events_tx })
        .options(HubOptions::default().client_result_timeout(Duration::from_millis(150)));
    let app: axum::Router = axum::Router::new().nest("/hub", endpoint.into_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/hub", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    socket
        .send(Message::text("{\"protocol\":\"json\",\"version\":1}\u{1e}"))
        .await?;
    assert_eq!(next_text(&mut socket).await?, "{}\u{1e}");
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await?;
    assert_eq!(
        event.as_deref(),
        Some("on_connected: Client results inside OnConnectedAsync Hub methods are not allowed.")
    );

    // The background task's question arrives once the connection is read.
    let question = next_text(&mut socket).await?;
    assert_eq!(
        question,
        "{\"type\":1,\"invocationId\":\"s1\",\"target\":\"Answer\",\"arguments\":[]}\u{1e}"
    );
    socket
        .send(Message::text(
            "{\"type\":3,\"invocationId\":\"s1\",\"result\":42}\u{1e}",
        ))
        .await?;
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await?;
    assert_eq!(event.as_deref(), Some("background: Ok(42)"));

    // A question nobody answers fails after the hub's default timeout.
    socket
        .send(Message::text(
            "{\"type\":1,\"invocationId\":\"7\",\"target\":\"Ask\",\"arguments\":[]}\u{1e}",
        ))
        .await?;
    let question = next_text(&mut socket).await?;
    assert!(question.contains("\"invocationId\":\"s2\""), "{question}");
    let reply = next_text(&mut socket).await?;
    assert_eq!(
        reply,
        "{\"type\":3,\"invocationId\":\"7\",\"error\":\"An unexpected error occurred invoking 'Ask' on the server. HubException: The client did not provide a result within 150 ms.\"}\u{1e}"
    );
    Ok(())
}
