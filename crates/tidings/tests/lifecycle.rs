//! The hub's lifecycle hooks, as ASP.NET Core runs them: a connection whose
//! `on_connected` failed is closed with the error and no reconnect, and its
//! `on_disconnected` does not run (it never connected); every other
//! connection's does.

#[path = "support/websocket.rs"]
mod websocket;

use std::time::Duration;

use futures_util::SinkExt;
use tidings::{ConnectionError, Context, HubEndpoint, HubError, hub};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use websocket::{Socket, next_text};

struct Picky {
    gone: mpsc::UnboundedSender<String>,
}

#[hub]
impl Picky {
    #[on_connected]
    async fn connected(&self, cx: &Context) -> Result<(), HubError> {
        match cx.query("refuse") {
            Some(_) => Err(HubError::new("not today")),
            None => Ok(()),
        }
    }

    #[on_disconnected]
    async fn gone(&self, cx: &Context, _error: Option<ConnectionError>) {
        let _ = self.gone.send(cx.connection_id().to_owned());
    }
}

async fn open(url: &str) -> anyhow::Result<Socket> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
    socket
        .send(Message::text("{\"protocol\":\"json\",\"version\":1}\u{1e}"))
        .await?;
    assert_eq!(next_text(&mut socket).await?, "{}\u{1e}");
    Ok(socket)
}

#[tokio::test]
async fn a_failed_on_connected_is_not_followed_by_on_disconnected() -> anyhow::Result<()> {
    let (gone_tx, mut gone) = mpsc::unbounded_channel();
    let endpoint = HubEndpoint::new(Picky { gone: gone_tx });
    let app: axum::Router = axum::Router::new().nest("/hub", endpoint.into_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("ws://{}/hub", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut refused = open(&format!("{base}?refuse=1")).await?;
    assert_eq!(
        next_text(&mut refused).await?,
        "{\"type\":7,\"error\":\"Connection closed with an error. HubException: not today\"}\u{1e}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), gone.recv())
            .await
            .is_err(),
        "on_disconnected ran for a connection whose on_connected failed"
    );

    let mut accepted = open(&base).await?;
    accepted.close(None).await?;
    let id = tokio::time::timeout(Duration::from_secs(5), gone.recv()).await?;
    assert!(
        id.is_some(),
        "on_disconnected runs for a connection that connected"
    );
    Ok(())
}
