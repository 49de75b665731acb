//! A server of a cluster that is shutting down, and the sockets it relays
//! to the server holding their connection.
//!
//! Its relays end with its shutdown, so a socket it accepted then would be
//! cut as soon as its client saw it open: a stateful-reconnect client would
//! take the re-attach for a success and lose the socket at once (the
//! official JS client then runs two reconnects of one connection side by
//! side). The server refuses such a socket instead (503), so that the
//! client, or a load balancer retrying elsewhere, tries another server; a
//! socket for one of its own connections gets 404, since no other server
//! could resume it.

#[path = "support/http_client.rs"]
mod http_client;

use std::{
    collections::HashMap, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use anyhow::Context as _;
use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_client::{Client, text};
use tidings::{
    Cluster, ConnectionOptions, Shutdown,
    connections::{Connection, ConnectionEndpoint, ConnectionHandler, Inbound},
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{self, Message};

/// Numbers what it echoes, so that a client sees whether it still talks
/// to the same connection.
struct Numbered;

impl ConnectionHandler for Numbered {
    async fn on_connected(&self, connection: Connection, mut inbound: Inbound) {
        let mut count = 0;
        while let Some(Ok(bytes)) = inbound.next().await {
            count += 1;
            let reply = format!("{count}:{}", String::from_utf8_lossy(&bytes));
            if !connection.send(Bytes::from(reply)).await {
                break;
            }
        }
    }
}

/// Servers known by their id, all alive.
struct Fixed {
    id: &'static str,
    servers: HashMap<&'static str, String>,
}

impl Cluster for Fixed {
    fn server_id(&self) -> &str {
        self.id
    }

    fn locate<'a>(
        &'a self,
        server_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>> {
        Box::pin(async move { self.servers.get(server_id).cloned() })
    }
}

/// The next data message of a WebSocket, as text.
async fn next_text<S>(socket: &mut S) -> anyhow::Result<String>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
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
async fn a_server_shutting_down_relays_no_new_socket() -> anyhow::Result<()> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0").await?,
        TcpListener::bind("127.0.0.1:0").await?,
    ];
    let addresses: Vec<SocketAddr> = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<_, _>>()?;
    let servers: HashMap<&'static str, String> = [
        ("a", addresses[0].to_string()),
        ("b", addresses[1].to_string()),
    ]
    .into();
    let shutdowns = [Shutdown::new(), Shutdown::new()];
    for ((listener, id), shutdown) in listeners.into_iter().zip(["a", "b"]).zip(&shutdowns) {
        let cluster = Arc::new(Fixed {
            id,
            servers: servers.clone(),
        });
        let endpoint = ConnectionEndpoint::new(Numbered)
            .options(ConnectionOptions::default().allow_stateful_reconnects(true))
            .cluster(cluster)
            .shutdown(shutdown);
        let app = axum::Router::new().nest("/echo", endpoint.into_router());
        // The listener stays open through the shutdown, as the server's
        // does while its connections drain.
        tokio::spawn(tidings::serve(listener, app).into_future());
    }
    let (a, b) = (addresses[0], addresses[1]);

    // A stateful connection negotiated on a, its socket relayed by b.
    let stream = tokio::net::TcpStream::connect(a).await?;
    let mut client = Client::http1(stream, &format!("http://{a}")).await?;
    let response = client
        .send(
            "POST",
            "/echo/negotiate?negotiateVersion=1&useStatefulReconnect=true",
            &[],
            None,
        )
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&text(response).await?)?;
    let token = body["connectionToken"]
        .as_str()
        .context("no token")?
        .to_owned();
    assert!(token.starts_with("a."), "a's token: {token}");
    let through_b = format!("ws://{b}/echo?id={token}");
    let (mut socket, _) = tokio_tungstenite::connect_async(through_b.as_str()).await?;
    socket.send(Message::text("one")).await?;
    assert_eq!(next_text(&mut socket).await?, "1:one");

    // A connection negotiated on b, not started yet.
    let stream = tokio::net::TcpStream::connect(b).await?;
    let mut client = Client::http1(stream, &format!("http://{b}")).await?;
    let response = client
        .send("POST", "/echo/negotiate?negotiateVersion=1", &[], None)
        .await?;
    let body: serde_json::Value = serde_json::from_str(&text(response).await?)?;
    let b_token = body["connectionToken"]
        .as_str()
        .context("no token")?
        .to_owned();

    // b is told to stop; its relay ends.
    let draining = {
        let shutdown = shutdowns[1].clone();
        tokio::spawn(async move { shutdown.shutdown(Duration::from_secs(10)).await })
    };
    assert!(
        next_text(&mut socket).await.is_err(),
        "the relay ends with b's shutdown"
    );

    // The client's next socket reaches b again, still draining: refused,
    // not accepted and cut.
    match tokio_tungstenite::connect_async(through_b.as_str()).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        Err(error) => anyhow::bail!("the re-attach failed otherwise: {error}"),
        Ok((mut socket, _)) => {
            let cut = socket.send(Message::text("lost")).await.is_err()
                || next_text(&mut socket).await.is_err();
            anyhow::bail!(
                "a server shutting down accepted a socket it relays{}",
                if cut { ", and cut it at once" } else { "" }
            );
        }
    }

    // A socket for one of b's own connections: gone with b (no other
    // server could take it), not worth retrying elsewhere.
    match tokio_tungstenite::connect_async(format!("ws://{b}/echo?id={b_token}")).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
        }
        Err(error) => anyhow::bail!("refused otherwise: {error}"),
        Ok(_) => anyhow::bail!("a server shutting down started a new connection"),
    }

    // The connection is still there for the client on a server that
    // stays: it resumes where it was.
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{a}/echo?id={token}")).await?;
    socket.send(Message::text("two")).await?;
    assert_eq!(next_text(&mut socket).await?, "2:two");
    socket.close(None).await?;
    assert!(draining.await?, "b had nothing of its own to drain");
    Ok(())
}
