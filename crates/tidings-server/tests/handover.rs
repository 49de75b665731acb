//! A server shutting down hands its stateful-reconnect connections over to
//! another server of the cluster: two `tidings` processes on one real
//! `redis-server`, the Rust client behind a TCP proxy that sends new
//! connections to the second server once the first is told to stop (as a
//! load balancer takes a server out of its rotation). The connection keeps
//! its id and its groups, a stream running on the first server finishes,
//! and every group message sent before, during and after the move arrives
//! exactly once, in order. In the durability mode the same holds when the
//! first server is killed outright (`kill -9`).

#[path = "../../tidings-client/tests/support/common.rs"]
mod common;
#[path = "../../tidings-client/tests/support/proxy.rs"]
mod proxy;
mod support;

use std::{net::TcpListener, process::Stdio, time::Duration};

use anyhow::{Context as _, Result};
use common::{WAIT, forward, next};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tidings_client::{HubConnection, HubConnectionBuilder, Protocol, TransportType};
use tokio::{
    process::{Child, Command},
    time::{sleep, timeout},
};

/// A `redis-server` on a free port; killed when dropped.
struct Redis {
    _child: Child,
    url: String,
}

impl Redis {
    async fn start() -> Result<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            sleep(Duration::from_millis(20)).await;
        }
        Ok(Redis {
            _child: child,
            url: format!("redis://127.0.0.1:{port}"),
        })
    }
}

/// A `tidings` process on the backplane; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    async fn start(redis: &Redis, prefix: &str, extra: &[&str]) -> Result<Server> {
        let mut args = vec![
            "--test-hub",
            "--redis",
            &redis.url,
            "--redis-prefix",
            prefix,
            // A server that is gone is noticed (and purged) within a second.
            "--redis-heartbeat-ms",
            "200",
        ];
        args.extend_from_slice(extra);
        let (child, url) = support::binary::start_on("127.0.0.1:0", &args).await?;
        Ok(Server { child, url })
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.id().context("the server has exited")?;
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed");
        Ok(())
    }

    fn terminate(&self) -> Result<()> {
        self.signal("-TERM")
    }
}

/// Sends 0..80 to `group`, 100 per second; gives the sender back.
async fn send_numbered(sender: HubConnection, group: &'static str) -> Result<HubConnection> {
    for i in 0..80 {
        sender.invoke::<()>("SendToGroup", (group, i)).await?;
        sleep(Duration::from_millis(10)).await;
    }
    Ok(sender)
}

/// Expects what [`send_numbered`] sent, each once, in order.
async fn the_numbered(received: &mut Received, protocol: Protocol) -> Result<()> {
    for i in 0..80 {
        assert_eq!(next(received).await?, json!(i), "{protocol}");
    }
    Ok(())
}

/// Sends one more message to `group`: it arrives, and nothing arrives twice.
async fn after_the_numbered(
    sender: &HubConnection,
    group: &str,
    received: &mut Received,
    protocol: Protocol,
) -> Result<()> {
    sender.invoke::<()>("SendToGroup", (group, "after")).await?;
    assert_eq!(next(received).await?, json!("after"), "{protocol}");
    sleep(Duration::from_millis(200)).await;
    assert!(
        received.try_recv().is_err(),
        "{protocol}: a message arrived twice"
    );
    Ok(())
}

type Received = tokio::sync::mpsc::UnboundedReceiver<Value>;

async fn client(url: &str, protocol: Protocol, stateful: bool) -> Result<HubConnection> {
    let mut builder = HubConnectionBuilder::new(format!("{url}/hubs/test"))
        .with_transport(TransportType::WebSockets)
        .with_protocol(protocol);
    if stateful {
        builder = builder.with_stateful_reconnect();
    }
    let connection = builder.build()?;
    connection.start().await?;
    Ok(connection)
}

#[tokio::test]
async fn a_stateful_connection_moves_when_its_server_shuts_down() -> Result<()> {
    let redis = Redis::start().await?;
    for (round, protocol) in [Protocol::Json, Protocol::MessagePack]
        .into_iter()
        .enumerate()
    {
        let prefix = format!("handover{round}:");
        let first = Server::start(&redis, &prefix, &[]).await?;
        let second = Server::start(&redis, &prefix, &[]).await?;
        let proxy = proxy::Proxy::start(&first.url).await?;

        let moving = client(&proxy.url, protocol, true).await?;
        let id = moving.connection_id().context("a connection id")?;
        let mut received = forward::<Value>(&moving, "GroupMessage");
        moving.invoke::<()>("JoinGroup", ("moving",)).await?;
        // A stream of 40 items, 25 ms apart: it runs across the move.
        let mut counted = moving.stream::<u32>("Counter", (40u32, 25u64)).await?;

        // Group messages from the second server, 100 per second.
        let sender = client(&second.url, protocol, false).await?;
        let publisher = tokio::spawn(send_numbered(sender, "moving"));

        sleep(Duration::from_millis(250)).await;
        proxy.retarget(&second.url);
        first.terminate()?;
        let sender = timeout(WAIT, publisher).await???;

        the_numbered(&mut received, protocol).await?;
        let mut items = Vec::new();
        while let Some(item) = timeout(WAIT, counted.next())
            .await
            .context("the stream ended")?
        {
            items.push(item?);
        }
        assert_eq!(items, (0..40).collect::<Vec<u32>>(), "{protocol}");

        // The same connection, now on the second server, still in its group.
        let now: String = moving.invoke("GetConnectionId", ()).await?;
        assert_eq!(now, id, "{protocol}");
        after_the_numbered(&sender, "moving", &mut received, protocol).await?;
        // The first server let go of it and exited.
        let mut first = first;
        let exited = timeout(WAIT, first.child.wait()).await??;
        assert!(exited.success(), "{protocol}: {exited}");
        // Its presence moved too: it outlives the purge of the first server.
        sleep(Duration::from_millis(1500)).await;
        let presence: Value = sender
            .invoke("GetPresence", ("nobody", "moving", &id))
            .await?;
        assert_eq!(
            presence["groupsOfConnection"],
            json!(["moving"]),
            "{protocol}: {presence}"
        );
        moving.stop().await;
        sender.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_stateful_connection_survives_a_kill_9_in_the_durability_mode() -> Result<()> {
    let redis = Redis::start().await?;
    let durable = ["--redis-durable-ms", "60000"];
    for (round, protocol) in [Protocol::Json, Protocol::MessagePack]
        .into_iter()
        .enumerate()
    {
        let prefix = format!("durable{round}:");
        let first = Server::start(&redis, &prefix, &durable).await?;
        let second = Server::start(&redis, &prefix, &durable).await?;
        let proxy = proxy::Proxy::start(&first.url).await?;

        let surviving = client(&proxy.url, protocol, true).await?;
        let id = surviving.connection_id().context("a connection id")?;
        let mut received = forward::<Value>(&surviving, "GroupMessage");
        surviving.invoke::<()>("JoinGroup", ("durable",)).await?;

        // Group messages from the second server, 100 per second, before,
        // during and after the crash.
        let sender = client(&second.url, protocol, false).await?;
        let publisher = tokio::spawn(send_numbered(sender, "durable"));

        sleep(Duration::from_millis(250)).await;
        proxy.retarget(&second.url);
        first.signal("-KILL")?;
        let sender = timeout(WAIT, publisher).await???;

        the_numbered(&mut received, protocol).await?;
        // The same connection, now on the second server, still in its group.
        let now: String = surviving.invoke("GetConnectionId", ()).await?;
        assert_eq!(now, id, "{protocol}");
        after_the_numbered(&sender, "durable", &mut received, protocol).await?;
        surviving.stop().await;
        sender.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn without_the_durability_mode_a_killed_servers_connection_is_not_resumed() -> Result<()> {
    let redis = Redis::start().await?;
    let first = Server::start(&redis, "plain:", &[]).await?;
    let second = Server::start(&redis, "plain:", &[]).await?;
    let proxy = proxy::Proxy::start(&first.url).await?;
    let connection = client(&proxy.url, Protocol::Json, true).await?;
    let id = connection.connection_id().context("a connection id")?;
    proxy.retarget(&second.url);
    first.signal("-KILL")?;
    // The client cannot resume it; whatever it does next, it is not the
    // same connection on the second server.
    sleep(Duration::from_millis(1500)).await;
    let resumed = timeout(
        Duration::from_secs(2),
        connection.invoke::<String>("GetConnectionId", ()),
    )
    .await;
    assert!(
        !matches!(&resumed, Ok(Ok(now)) if *now == id),
        "resumed without the durability mode: {resumed:?}"
    );
    connection.stop().await;
    Ok(())
}
