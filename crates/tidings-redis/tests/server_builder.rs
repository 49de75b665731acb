//! Two servers built with `Server::builder().backplane(...)` on one real
//! `redis-server`: giving the backplane once makes it both the hubs'
//! lifetime manager and the forwarding between servers, so a client that
//! negotiates on one server and sends every other request to the other
//! (no sticky sessions) is served, and messages sent on either server
//! reach it.

#[path = "../../tidings/tests/support/http_client.rs"]
mod http_client;
mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http_client::{Client, text};
use serde_json::Value;
use tidings::{HubContext, Server, hub};
use tidings_redis::{RedisBackplane, RedisOptions};

fn redis() -> &'static support::RedisServer {
    static SERVER: OnceLock<support::RedisServer> = OnceLock::new();
    SERVER.get_or_init(support::RedisServer::start)
}

struct Chat;

#[hub]
impl Chat {
    async fn ping(&self) {}
}

/// A running server: where it listens, its backplane and its chat hub.
struct Running {
    address: SocketAddr,
    backplane: Arc<RedisBackplane>,
    chat: HubContext,
}

/// Starts a server whose only scale-out setting is `.backplane(...)`.
async fn start(prefix: &str) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let options = RedisOptions::new(redis().url())
        .channel_prefix(prefix)
        .advertise(address.to_string());
    let backplane = Arc::new(RedisBackplane::connect(options).await?);
    let server = Server::builder()
        .backplane(backplane.clone())
        .hub("/hubs/chat", Chat)
        .build();
    let chat = server
        .hub_context::<Chat>()
        .ok_or_else(|| anyhow::anyhow!("no context for Chat"))?;
    tokio::spawn(tidings::serve(listener, server.into_router()).into_future());
    Ok(Running {
        address,
        backplane,
        chat,
    })
}

/// One request to `address`; the status and the body.
async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    let mut client = Client::http1(stream, &format!("http://{address}")).await?;
    let body = body.map(|b| Bytes::copy_from_slice(b.as_bytes()));
    let response = client.send(method, path, &[], body).await?;
    let status = response.status().as_u16();
    Ok((status, text(response).await?))
}

/// Long polls through `address` until a poll carries `needle`.
async fn poll_until(address: SocketAddr, path: &str, needle: &str) -> anyhow::Result<()> {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let (status, body) = request(address, "GET", path, None).await?;
        anyhow::ensure!(status == 200, "poll answered {status}: {body}");
        anyhow::ensure!(!body.is_empty(), "an empty poll: no {needle} in {seen:?}");
        seen.push_str(&body);
    }
    Ok(())
}

#[tokio::test]
async fn a_backplane_given_once_serves_a_client_without_sticky_sessions() -> anyhow::Result<()> {
    let prefix = format!("builder{:08x}.", rand::random::<u32>());
    let one = start(&prefix).await?;
    let two = start(&prefix).await?;

    let (status, answer) = request(
        one.address,
        "POST",
        "/hubs/chat/negotiate?negotiateVersion=1",
        None,
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer)?;
    let token = answer["connectionToken"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no token in {answer}"))?;
    // Tagged with the negotiating server: the backplane's forwarding is on.
    assert!(token.starts_with(&format!("{}.", one.backplane.server_id())));

    // Every transport request goes to the other server, which forwards it
    // to the one holding the connection instead of answering 404.
    let path = format!("/hubs/chat?id={token}");
    let (status, _) = request(two.address, "GET", &path, None).await?;
    assert_eq!(status, 200, "the first poll, through server two");
    let handshake = "{\"protocol\":\"json\",\"version\":1}\u{1e}";
    let (status, body) = request(two.address, "POST", &path, Some(handshake)).await?;
    assert_eq!(status, 200, "{body}");
    poll_until(two.address, &path, "{}\u{1e}").await?;

    // Messages travel through Redis: sent on either server, they reach the
    // connection held by server one.
    two.chat.clients().all().send("Note", ("from two",)).await?;
    poll_until(two.address, &path, "from two").await?;
    one.chat.clients().all().send("Note", ("from one",)).await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        poll_until(two.address, &path, "from one"),
    )
    .await??;
    Ok(())
}

#[tokio::test]
async fn a_server_that_leaves_is_forgotten_at_once() -> anyhow::Result<()> {
    let prefix = format!("leaving{:08x}.", rand::random::<u32>());
    let one = start(&prefix).await?;
    let two = start(&prefix).await?;
    let id = one.backplane.server_id().to_owned();
    assert_eq!(
        two.backplane.server_address(&id).await,
        Some(one.address.to_string())
    );
    one.backplane.flush(Duration::from_secs(1)).await;
    one.backplane.leave().await;
    assert_eq!(two.backplane.server_address(&id).await, None);
    // It stays gone: no heartbeat (every 2 s by default) renews it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(two.backplane.server_address(&id).await, None);
    Ok(())
}

#[tokio::test]
async fn connect_fails_when_redis_does_not_answer() {
    // A port nothing listens on.
    let url = format!("redis://127.0.0.1:{}", support::free_port());
    let options = RedisOptions::new(url).command_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let result = RedisBackplane::connect(options).await;
    assert!(
        matches!(result, Err(tidings_redis::BackplaneError::Unreachable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
