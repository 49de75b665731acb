//! Raw connection handlers: a [`ConnectionHandler`] mounted with a
//! `ConnectionEndpoint` (or `Server::builder().connection`) gets negotiate,
//! every transport, authentication and connection limits from the
//! connection layer, and bytes in and out without the hub protocol.

#[path = "support/http_client.rs"]
mod http_client;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_client::{Client, text};
use tidings::{
    AuthError, ConnectionLimits, Principal, Server,
    connections::{Connection, ConnectionEndpoint, ConnectionHandler, Inbound},
};
use tokio_tungstenite::tungstenite::Message;

/// Sends back everything, after a greeting naming the connection's user.
struct Echo;

impl ConnectionHandler for Echo {
    async fn on_connected(&self, connection: Connection, mut inbound: Inbound) {
        let user = connection.user_id().unwrap_or("anonymous").to_owned();
        if !connection.send(Bytes::from(format!("hello {user}"))).await {
            return;
        }
        while let Some(Ok(bytes)) = inbound.next().await {
            if !connection.send(bytes).await {
                break;
            }
        }
    }
}

/// Serves `app` on a free port.
async fn serve(app: axum::Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(tidings::serve(listener, app).into_future());
    Ok(address)
}

async fn client(address: SocketAddr) -> anyhow::Result<Client> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    Client::http1(stream, &format!("http://{address}")).await
}

/// Negotiates a connection at `path`: its token, or the refusal's status.
async fn negotiate(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Result<String, StatusCode>> {
    let mut client = client(address).await?;
    let response = client
        .send(
            "POST",
            &format!("{path}/negotiate?negotiateVersion=1"),
            headers,
            None,
        )
        .await?;
    let status = response.status();
    if status != StatusCode::OK {
        return Ok(Err(status));
    }
    let body: serde_json::Value = serde_json::from_str(&text(response).await?)?;
    let token = body["connectionToken"].as_str().context("no token")?;
    Ok(Ok(token.to_owned()))
}

/// The next data message of a WebSocket, as text.
async fn next_text<S>(socket: &mut S) -> anyhow::Result<String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .context("no message")?
            .context("socket ended")??;
        match message {
            Message::Text(text) => return Ok(text.to_string()),
            Message::Binary(_) => anyhow::bail!("a Binary message on a Text connection"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_websocket_echoes_with_and_without_negotiate() -> anyhow::Result<()> {
    let app = axum::Router::new().nest("/echo", ConnectionEndpoint::new(Echo).into_router());
    let address = serve(app).await?;

    let token = negotiate(address, "/echo", &[])
        .await?
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{address}/echo?id={token}")).await?;
    assert_eq!(next_text(&mut socket).await?, "hello anonymous");
    socket.send(Message::text("no handshake here")).await?;
    assert_eq!(next_text(&mut socket).await?, "no handshake here");
    socket.send(Message::text("\u{1e}{}")).await?;
    assert_eq!(next_text(&mut socket).await?, "\u{1e}{}");
    socket.close(None).await?;

    // Without negotiate: a new connection at once.
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/echo")).await?;
    assert_eq!(next_text(&mut socket).await?, "hello anonymous");
    socket.send(Message::text("again")).await?;
    assert_eq!(next_text(&mut socket).await?, "again");
    Ok(())
}

#[tokio::test]
async fn long_polling_carries_the_same_bytes() -> anyhow::Result<()> {
    let server = Server::builder().connection("/echo", Echo).build();
    let address = serve(server.into_router()).await?;
    let token = negotiate(address, "/echo", &[])
        .await?
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    let mut client = client(address).await?;
    let path = format!("/echo?id={token}");
    // The first poll starts the connection and answers at once, empty.
    let first = client.get(&path, &[]).await?;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(text(first).await?, "");
    let posted = client
        .send("POST", &path, &[], Some(Bytes::from_static(b"ping")))
        .await?;
    assert_eq!(posted.status(), StatusCode::OK);
    let mut received = String::new();
    while received != "hello anonymousping" {
        let poll = client.get(&path, &[]).await?;
        assert_eq!(poll.status(), StatusCode::OK);
        received.push_str(&text(poll).await?);
        assert!(
            received.len() <= "hello anonymousping".len(),
            "{received:?}"
        );
    }
    let deleted = client.send("DELETE", &path, &[], None).await?;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    Ok(())
}

#[tokio::test]
async fn authentication_and_limits_apply_to_raw_connections() -> anyhow::Result<()> {
    let authenticate = |parts: &axum::http::request::Parts| match tidings::bearer_token(parts) {
        Some(user) => Ok(Principal::user(user)),
        None => Err(AuthError::Unauthorized("no token".into())),
    };
    let limits = ConnectionLimits::new().max_connections(1);
    let endpoint = ConnectionEndpoint::new(Echo)
        .authenticator(authenticate)
        .connection_limits(&limits);
    let address = serve(axum::Router::new().nest("/echo", endpoint.into_router())).await?;

    assert_eq!(
        negotiate(address, "/echo", &[]).await?,
        Err(StatusCode::UNAUTHORIZED)
    );
    let token = negotiate(address, "/echo", &[("authorization", "Bearer ann")])
        .await?
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    // The one place under the limit is taken by the negotiated connection.
    let refused = negotiate(address, "/echo", &[("authorization", "Bearer bob")]).await?;
    assert_eq!(refused, Err(StatusCode::SERVICE_UNAVAILABLE));

    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{address}/echo?id={token}"
        ))?;
    request
        .headers_mut()
        .insert("authorization", "Bearer ann".parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    assert_eq!(next_text(&mut socket).await?, "hello ann");
    Ok(())
}
