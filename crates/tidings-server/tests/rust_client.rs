//! End-to-end tests of the standalone server with the Rust client (`tidings-client`): every
//! scenario runs over every transport and protocol the server offers (WebSockets and Long Polling
//! with JSON and MessagePack, Server-Sent Events with JSON), against the real `tidings` binary
//! started on a free port.

#[path = "../../tidings-client/tests/support/common.rs"]
mod common;
#[path = "../../tidings-client/tests/support/proxy.rs"]
mod proxy;
mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use common::{WAIT, channel, forward, hub_error, next};
use futures_util::{StreamExt, future::try_join_all, stream};
use serde_json::{Value, json};
use tidings_client::{
    ClientStream, HubConnection, HubConnectionBuilder, HubConnectionState, InvokeError, Protocol,
    StartError, TransportType,
};
use tokio::{process::Child, time::timeout};

const COMBOS: [(TransportType, Protocol); 5] = [
    (TransportType::WebSockets, Protocol::Json),
    (TransportType::WebSockets, Protocol::MessagePack),
    (TransportType::ServerSentEvents, Protocol::Json),
    (TransportType::LongPolling, Protocol::Json),
    (TransportType::LongPolling, Protocol::MessagePack),
];
const JWT_SECRET: &str = "rust-client-test-secret";

/// A running `tidings` process; killed when dropped.
struct Server {
    child: Child,
    url: String,
    args: Vec<String>,
}

impl Server {
    async fn start(args: &[&str]) -> Result<Server> {
        Self::start_on("127.0.0.1:0", args.iter().map(|a| a.to_string()).collect()).await
    }

    async fn start_on(listen: &str, args: Vec<String>) -> Result<Server> {
        // The tests talk to the test hub, which is served only when asked for.
        let with_hub: Vec<&str> = std::iter::once("--test-hub")
            .chain(args.iter().map(String::as_str))
            .collect();
        let (child, url) = support::binary::start_on(listen, &with_hub).await?;
        Ok(Server { child, url, args })
    }

    fn hub(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.id().context("the server has exited")?;
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed");
        Ok(())
    }

    /// Kills the process and starts a new one on the same port with the same arguments.
    async fn restart(mut self) -> Result<Server> {
        self.child.kill().await?;
        let listen = self.url.trim_start_matches("http://").to_owned();
        Server::start_on(&listen, self.args.clone()).await
    }
}

fn builder(server: &Server, transport: TransportType, protocol: Protocol) -> HubConnectionBuilder {
    HubConnectionBuilder::new(server.hub("/hubs/test"))
        .with_transport(transport)
        .with_protocol(protocol)
}

async fn connect(
    server: &Server,
    transport: TransportType,
    protocol: Protocol,
) -> Result<HubConnection> {
    let connection = builder(server, transport, protocol).build()?;
    connection.start().await?;
    Ok(connection)
}

fn label(transport: TransportType, protocol: Protocol) -> String {
    format!("{}/{protocol}", transport.name())
}

/// Runs `scenario` for every transport × protocol at once and reports which one failed.
async fn for_each_combo<F, Fut>(scenario: F) -> Result<()>
where
    F: Fn(TransportType, Protocol) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    try_join_all(COMBOS.map(|(transport, protocol)| {
        let run = scenario(transport, protocol);
        async move {
            timeout(Duration::from_secs(30), run)
                .await
                .map_err(|_| anyhow::anyhow!("timed out"))
                .and_then(|r| r)
                .with_context(|| label(transport, protocol))
        }
    }))
    .await
    .map(drop)
}

fn jwt(sub: &str) -> String {
    let claims = json!({ "sub": sub, "name": sub, "exp": 4_000_000_000u64 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("a test token signs")
}

#[tokio::test]
async fn invoke_send_and_client_methods() -> Result<()> {
    let server = Server::start(&[]).await?;
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let connection = connect(server, transport, protocol).await?;
            assert_eq!(connection.state(), HubConnectionState::Connected);
            let used: String = connection.invoke("GetTransport", ()).await?;
            assert_eq!(used, transport.name());
            let id: String = connection.invoke("GetConnectionId", ()).await?;
            assert_eq!(Some(id), connection.connection_id());

            let sum: i64 = connection.invoke("Add", (40, 2)).await?;
            assert_eq!(sum, 42);
            let object = json!({ "name": "ann", "tags": ["a", "b"], "n": 1.5, "none": null });
            let echoed: Value = connection.invoke("Echo", (object.clone(),)).await?;
            assert_eq!(echoed, object);
            let text: String = connection.invoke("Echo", ("héllo ✓",)).await?;
            assert_eq!(text, "héllo ✓");
            connection.invoke::<()>("Nothing", ()).await?;
            // A void result read as an Option is None.
            let none: Option<i32> = connection.invoke("Nothing", ()).await?;
            assert_eq!(none, None);

            // Client methods are matched case-insensitively; `send` does not wait.
            let mut direct = forward::<Value>(&connection, "directmessage");
            connection.send("SendToCaller", ("to me",)).await?;
            assert_eq!(next(&mut direct).await?, json!("to me"));
            connection
                .invoke::<()>("SendToCaller", (json!({ "k": 1 }),))
                .await?;
            assert_eq!(next(&mut direct).await?, json!({ "k": 1 }));

            // Many calls in flight at once all get their own answer.
            let calls = (0..20).map(|i| connection.invoke::<i64>("Add", (i, 1)));
            let results = try_join_all(calls).await?;
            assert_eq!(results, (1..=20).collect::<Vec<i64>>());

            connection.stop().await;
            assert_eq!(connection.state(), HubConnectionState::Disconnected);
            assert_eq!(connection.connection_id(), None);
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn hub_errors_reach_the_caller() -> Result<()> {
    let server = Server::start(&[]).await?;
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let connection = connect(server, transport, protocol).await?;
            let error = hub_error::<()>;
            assert_eq!(
                error(connection.invoke("Throw", ("secret",)).await)?,
                "An unexpected error occurred invoking 'Throw' on the server."
            );
            assert_eq!(
                error(connection.invoke("ThrowHubException", ("told you",)).await)?,
                "An unexpected error occurred invoking 'ThrowHubException' on the server. HubException: told you"
            );
            assert_eq!(
                error(connection.invoke("NoSuchMethod", ()).await)?,
                "Failed to invoke 'NoSuchMethod' due to an error on the server. HubException: Method does not exist."
            );
            assert!(error(connection.invoke("Add", (1,)).await)?.starts_with("Failed to invoke 'Add'"));
            // A result of the wrong type is the caller's error, and the connection carries on.
            let wrong = connection.invoke::<u32>("Echo", ("text",)).await;
            assert!(matches!(wrong, Err(InvokeError::Decode(_))), "{wrong:?}");
            let sum: i64 = connection.invoke("Add", (1, 2)).await?;
            assert_eq!(sum, 3);
            connection.stop().await;
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn server_streams_complete_fail_and_cancel() -> Result<()> {
    let server = Server::start(&[]).await?;
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let connection = connect(server, transport, protocol).await?;
            let items: Vec<u32> = connection
                .stream::<u32>("Counter", (5, 10))
                .await?
                .map(|item| item.expect("an item"))
                .collect()
                .await;
            assert_eq!(items, [0, 1, 2, 3, 4]);

            let mut failing = connection
                .stream::<u32>("CounterThenFail", (2, "bad end"))
                .await?;
            assert_eq!(failing.next().await.transpose()?, Some(0));
            assert_eq!(failing.next().await.transpose()?, Some(1));
            match failing.next().await {
                Some(Err(InvokeError::Hub(text))) => {
                    assert!(text.ends_with("HubException: bad end"), "{text}")
                }
                other => bail!("expected the stream's error, got {other:?}"),
            }
            assert!(failing.next().await.is_none());

            let mut long = connection.stream::<u32>("Counter", (1000, 20)).await?;
            assert_eq!(long.next().await.transpose()?, Some(0));
            assert_eq!(long.next().await.transpose()?, Some(1));
            drop(long);
            // Dropping the stream cancels it: the producer on the server goes away.
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let active: usize = connection.invoke("GetActiveStreams", ()).await?;
                if active == 0 {
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the stream was not cancelled"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            connection.stop().await;
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn groups_and_targets() -> Result<()> {
    let server = Server::start(&[]).await?;
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let member = connect(server, transport, protocol).await?;
            let other = connect(server, transport, protocol).await?;
            let mut group = forward::<Value>(&member, "GroupMessage");
            let room = format!("room-{}", label(transport, protocol));
            member.invoke::<()>("JoinGroup", (&room,)).await?;
            other.invoke::<()>("SendToGroup", (&room, "first")).await?;
            assert_eq!(next(&mut group).await?, json!("first"));
            member.invoke::<()>("LeaveGroup", (&room,)).await?;
            other
                .invoke::<()>("SendToGroup", (&room, "after leaving"))
                .await?;
            // A message to the caller after it proves nothing else was on the way.
            let mut direct = forward::<Value>(&member, "DirectMessage");
            member.invoke::<()>("SendToCaller", ("marker",)).await?;
            assert_eq!(next(&mut direct).await?, json!("marker"));
            assert!(
                group.try_recv().is_err(),
                "a message arrived after leaving the group"
            );

            let member_id = member.connection_id().context("a connection id")?;
            other
                .invoke::<()>("SendToConnection", (&member_id, "direct"))
                .await?;
            assert_eq!(next(&mut direct).await?, json!("direct"));
            member.stop().await;
            other.stop().await;
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn access_tokens_identify_the_user() -> Result<()> {
    let server = Server::start(&["--jwt-secret", JWT_SECRET]).await?;
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let user = format!("user-{}", label(transport, protocol));
            let calls = Arc::new(Mutex::new(0));
            let counted = Arc::clone(&calls);
            let token_user = user.clone();
            let connection = builder(server, transport, protocol)
                .with_access_token_factory(move || {
                    *counted.lock().expect("not poisoned") += 1;
                    let token = jwt(&token_user);
                    async move { Ok::<_, std::io::Error>(token) }
                })
                .build()?;
            connection.start().await?;
            let who: Option<String> = connection.invoke("GetUserIdentifier", ()).await?;
            assert_eq!(who.as_deref(), Some(user.as_str()));
            assert!(*calls.lock().expect("not poisoned") >= 1);

            // User targeting reaches this connection.
            let mut to_user = forward::<Value>(&connection, "UserMessage");
            connection
                .invoke::<()>("SendToUser", (&user, "for you"))
                .await?;
            assert_eq!(next(&mut to_user).await?, json!("for you"));
            connection.stop().await;

            // A token that does not verify is refused at negotiate.
            let forged = builder(server, transport, protocol)
                .with_access_token_factory(|| async {
                    Ok::<_, std::io::Error>("not.a.jwt".to_owned())
                })
                .build()?;
            match forged.start().await {
                Err(StartError::Negotiate(text)) => assert!(text.contains("401"), "{text}"),
                other => bail!("expected a 401 at negotiate, got {other:?}"),
            }
            // A failing factory fails the start.
            let failing = builder(server, transport, protocol)
                .with_access_token_factory(|| async {
                    Err::<String, _>(std::io::Error::other("no token today"))
                })
                .build()?;
            match failing.start().await {
                Err(StartError::Negotiate(text)) => {
                    assert!(text.contains("no token today"), "{text}")
                }
                other => bail!("expected the factory's error, got {other:?}"),
            }
            assert_eq!(failing.state(), HubConnectionState::Disconnected);
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn negotiate_version_zero_skip_negotiation_and_fallback() -> Result<()> {
    let server = Server::start(&[]).await?;
    // Version 0: the connection id is also the token.
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let connection = HubConnectionBuilder::new(format!(
                "{}?negotiateVersion=0",
                server.hub("/hubs/test")
            ))
            .with_transport(transport)
            .with_protocol(protocol)
            .build()?;
            connection.start().await?;
            let id: String = connection.invoke("GetConnectionId", ()).await?;
            assert_eq!(Some(id), connection.connection_id());
            connection.stop().await;
            Ok(())
        }
    })
    .await?;

    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let connection = HubConnectionBuilder::new(server.hub("/hubs/test"))
            .with_transport(TransportType::WebSockets)
            .with_protocol(protocol)
            .skip_negotiation()
            .build()?;
        connection.start().await?;
        assert_eq!(connection.connection_id(), None);
        let sum: i64 = connection.invoke("Add", (2, 3)).await?;
        assert_eq!(sum, 5);
        connection.stop().await;
    }
    let sse_only = HubConnectionBuilder::new(server.hub("/hubs/test"))
        .with_transport(TransportType::ServerSentEvents)
        .skip_negotiation()
        .build()?;
    assert!(matches!(
        sse_only.start().await,
        Err(StartError::SkipNegotiationNeedsWebSockets)
    ));

    // MessagePack cannot use SSE: the client skips it and falls back to Long Polling.
    let no_ws = Server::start(&["--transports", "ServerSentEvents,LongPolling"]).await?;
    let connection = HubConnectionBuilder::new(no_ws.hub("/hubs/test"))
        .with_protocol(Protocol::MessagePack)
        .build()?;
    connection.start().await?;
    let used: String = connection.invoke("GetTransport", ()).await?;
    assert_eq!(used, "LongPolling");
    connection.stop().await;
    let json = HubConnectionBuilder::new(no_ws.hub("/hubs/test")).build()?;
    json.start().await?;
    let used: String = json.invoke("GetTransport", ()).await?;
    assert_eq!(used, "ServerSentEvents");
    json.stop().await;

    // Nothing in common.
    let ws_only = HubConnectionBuilder::new(no_ws.hub("/hubs/test"))
        .with_transport(TransportType::WebSockets)
        .build()?;
    assert!(matches!(
        ws_only.start().await,
        Err(StartError::NoSuitableTransport)
    ));

    // Not a hub.
    let missing = HubConnectionBuilder::new(server.hub("/hubs/missing")).build()?;
    match missing.start().await {
        Err(StartError::Negotiate(text)) => assert!(text.contains("404"), "{text}"),
        other => bail!("expected a 404 at negotiate, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn stop_fails_pending_calls_and_reports_closed() -> Result<()> {
    let server = Server::start(&[]).await?;
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let connection = connect(server, transport, protocol).await?;
            let (on_closed, mut closed) = channel::<Option<String>>();
            connection.on_closed(move |error| on_closed(error.map(|e| e.to_string())));
            let slow = tokio::spawn(connection.invoke::<Value>("Delay", (5_000, "late")));
            let stream = connection.stream::<u32>("Counter", (1000, 50)).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            connection.stop().await;
            assert_eq!(next(&mut closed).await?, None);
            assert!(matches!(slow.await?, Err(InvokeError::ConnectionClosed(_))));
            let rest: Vec<_> = stream.collect().await;
            assert!(
                matches!(rest.last(), Some(Err(InvokeError::ConnectionClosed(_)))),
                "{rest:?}"
            );
            assert!(matches!(
                connection.invoke::<i64>("Add", (1, 1)).await,
                Err(InvokeError::NotConnected)
            ));
            // A stopped connection starts again.
            connection.start().await?;
            let sum: i64 = connection.invoke("Add", (1, 1)).await?;
            assert_eq!(sum, 2);
            assert!(matches!(
                connection.start().await,
                Err(StartError::InvalidState(HubConnectionState::Connected))
            ));
            connection.stop().await;
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn a_server_close_with_an_error_closes_the_connection() -> Result<()> {
    let server = Server::start(&["--max-message-size", "1024"]).await?;
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let connection = connect(server, transport, protocol).await?;
            let (on_closed, mut closed) = channel::<Option<String>>();
            connection.on_closed(move |error| on_closed(error.map(|e| e.to_string())));
            let result = connection
                .invoke::<Value>("Echo", ("x".repeat(4096),))
                .await;
            assert!(
                matches!(result, Err(InvokeError::ConnectionClosed(_))),
                "{result:?}"
            );
            assert_eq!(
                next(&mut closed).await?.as_deref(),
                Some("Server returned an error on close: Connection closed with an error.")
            );
            assert_eq!(connection.state(), HubConnectionState::Disconnected);
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn keep_alive_and_server_timeout() -> Result<()> {
    // The client's pings keep it alive past a short client timeout.
    let strict = Server::start(&["--client-timeout-ms", "600"]).await?;
    for_each_combo(|transport, protocol| {
        let server = &strict;
        async move {
            let connection = builder(server, transport, protocol)
                .with_keep_alive_interval(Duration::from_millis(150))
                .build()?;
            connection.start().await?;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let sum: i64 = connection.invoke("Add", (1, 1)).await?;
            assert_eq!(sum, 2);
            connection.stop().await;
            Ok(())
        }
    })
    .await?;

    // A server that pings less often than the client's server timeout: the client gives up.
    let quiet = Server::start(&["--keep-alive-ms", "60000"]).await?;
    for (transport, protocol) in COMBOS {
        if transport == TransportType::LongPolling {
            continue; // Long Polling has no server timeout (the polls are the keep-alive).
        }
        let connection = builder(&quiet, transport, protocol)
            .with_server_timeout(Duration::from_millis(400))
            .build()?;
        let (on_closed, mut closed) = channel::<Option<String>>();
        connection.on_closed(move |error| on_closed(error.map(|e| e.to_string())));
        connection.start().await?;
        assert_eq!(
            next(&mut closed).await?.as_deref(),
            Some("Server timeout elapsed without receiving a message from the server."),
            "{}",
            label(transport, protocol)
        );
    }
    Ok(())
}

#[tokio::test]
async fn automatic_reconnect_after_the_server_restarts() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut clients = Vec::new();
    for (transport, protocol) in COMBOS {
        let connection = builder(&server, transport, protocol)
            .with_automatic_reconnect_delays(
                [0, 100, 200, 400, 800, 1000, 1000, 1000].map(Duration::from_millis),
            )
            .build()?;
        let (on_reconnecting, reconnecting) = channel::<String>();
        let (on_reconnected, reconnected) = channel::<Option<String>>();
        connection.on_reconnecting(move |error| on_reconnecting(error.to_string()));
        connection.on_reconnected(move |id| on_reconnected(id.map(str::to_owned)));
        connection.start().await?;
        let before = connection.connection_id().context("a connection id")?;
        clients.push((
            connection,
            reconnecting,
            reconnected,
            before,
            label(transport, protocol),
        ));
    }
    let server = server.restart().await?;
    for (connection, mut reconnecting, mut reconnected, before, label) in clients {
        let cause = next(&mut reconnecting).await.context(label.clone())?;
        assert!(!cause.is_empty());
        let id = next(&mut reconnected).await.context(label.clone())?;
        assert!(
            id.is_some() && id.as_deref() != Some(before.as_str()),
            "{label}: new id expected"
        );
        assert_eq!(connection.state(), HubConnectionState::Connected, "{label}");
        assert_eq!(connection.connection_id(), id, "{label}");
        let sum: i64 = connection
            .invoke("Add", (2, 2))
            .await
            .context(label.clone())?;
        assert_eq!(sum, 4);
        connection.stop().await;
    }
    drop(server);
    Ok(())
}

#[tokio::test]
async fn graceful_shutdown_allows_reconnect_and_retries_give_up() -> Result<()> {
    let server = Server::start(&[]).await?;
    let connection = builder(&server, TransportType::WebSockets, Protocol::Json)
        .with_retry_policy(|cx: &tidings_client::RetryContext<'_>| {
            (cx.previous_retry_count < 2).then_some(Duration::from_millis(50))
        })
        .build()?;
    let (on_reconnecting, mut reconnecting) = channel::<String>();
    let (on_closed, mut closed) = channel::<Option<String>>();
    connection.on_reconnecting(move |error| on_reconnecting(error.to_string()));
    connection.on_closed(move |error| on_closed(error.map(|e| e.to_string())));
    connection.start().await?;
    // SIGTERM: the server sends Close with allowReconnect, so the client reconnects; the server
    // is gone, so both attempts fail and the connection closes with the last failure.
    server.signal("-TERM")?;
    let cause = next(&mut reconnecting).await?;
    assert_eq!(cause, "The underlying connection was closed.");
    let last = next(&mut closed).await?.context("closed with an error")?;
    assert!(last.starts_with("reconnecting failed:"), "{last}");
    assert_eq!(connection.state(), HubConnectionState::Disconnected);
    Ok(())
}

#[tokio::test]
async fn abort_from_the_hub_closes_without_reconnecting() -> Result<()> {
    let server = Server::start(&[]).await?;
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let connection = builder(server, transport, protocol)
                .with_automatic_reconnect()
                .build()?;
            let (on_reconnecting, mut reconnecting) = channel::<String>();
            let (on_closed, mut closed) = channel::<Option<String>>();
            connection.on_reconnecting(move |error| on_reconnecting(error.to_string()));
            connection.on_closed(move |error| on_closed(error.map(|e| e.to_string())));
            connection.start().await?;
            let _ = connection.invoke::<()>("Abort", ()).await;
            assert_eq!(next(&mut closed).await?, None);
            assert!(reconnecting.try_recv().is_err());
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn client_to_server_streams() -> Result<()> {
    let server = Server::start(&[]).await?;
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let connection = connect(server, transport, protocol).await?;
            let numbers = ClientStream::new(stream::iter([1.5, 2.5, 3.0]));
            let total: f64 = connection.invoke("Sum", (numbers,)).await?;
            assert_eq!(total, 7.0);
            let empty = ClientStream::new(stream::empty::<f64>());
            let total: f64 = connection.invoke("Sum", (empty,)).await?;
            assert_eq!(total, 0.0);
            // Items produced over time, interleaved with other calls.
            let slow = ClientStream::new(stream::iter(1..=5).then(|n| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                f64::from(n)
            }));
            let (total, sum) = tokio::join!(
                connection.invoke::<f64>("Sum", (slow,)),
                connection.invoke::<i64>("Add", (1, 2))
            );
            assert_eq!((total?, sum?), (15.0, 3));

            // An error item ends the stream; the hub method sees it as a HubException.
            let failing = ClientStream::try_new(stream::iter([Ok(1.0), Err("bad input")]));
            match connection.invoke::<f64>("Sum", (failing,)).await {
                Err(InvokeError::Hub(text)) => assert_eq!(
                    text,
                    "An unexpected error occurred invoking 'Sum' on the server. HubException: bad input"
                ),
                other => bail!("expected the stream error, got {other:?}"),
            }

            // A stream in, a stream out.
            let items = ClientStream::new(stream::iter([json!(1), json!("two"), json!({ "three": 3 })]));
            let echoed: Vec<Value> = connection
                .stream::<Value>("EchoStream", (items,))
                .await?
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            assert_eq!(echoed, [json!(1), json!("two"), json!({ "three": 3 })]);

            // Two streams around a plain argument: stream ids follow the stream order.
            let first = ClientStream::new(stream::iter(["a", "b"]));
            let second = ClientStream::new(stream::iter(["c"]));
            let joined: String = connection.invoke("ConcatStreams", (first, "-", second)).await?;
            assert_eq!(joined, "ab-c");

            // A non-blocking call with a stream: the server reads it, nobody answers.
            connection
                .send("Sum", (ClientStream::new(stream::iter([1.0, 2.0])),))
                .await?;
            let sum: i64 = connection.invoke("Add", (2, 2)).await?;
            assert_eq!(sum, 4);
            connection.stop().await;
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn client_streams_wait_for_a_server_that_stops_reading() -> Result<()> {
    let server = Server::start(&[]).await?;
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let uploader = connect(server, transport, protocol).await?;
            let releaser = connect(server, transport, protocol).await?;
            let id = uploader.connection_id().context("a connection id")?;
            // Far more items than the server buffers for a stream it does not read yet.
            let items = ClientStream::new(stream::iter(0..300));
            let count = tokio::spawn(uploader.invoke::<usize>("CountAfterRelease", (items,)));
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!count.is_finished());
            releaser.invoke::<()>("Release", (&id,)).await?;
            assert_eq!(timeout(WAIT, count).await???, 300);
            uploader.stop().await;
            releaser.stop().await;
            Ok(())
        }
    })
    .await
}

fn failed(method: &str, text: &str) -> String {
    format!("An unexpected error occurred invoking '{method}' on the server. HubException: {text}")
}

#[tokio::test]
async fn client_results() -> Result<()> {
    let server = Server::start(&[]).await?;
    for_each_combo(|transport, protocol| {
        let server = &server;
        async move {
            let connection = builder(server, transport, protocol).build()?;
            connection.on_with_result("Double", |(x,): (i64,)| async move {
                Ok::<_, std::convert::Infallible>(x * 2)
            });
            connection.on_with_result("describe", |(x,): (Value,)| async move {
                Ok::<_, std::convert::Infallible>(json!({ "got": x, "list": [1, "two"] }))
            });
            connection.on_with_result(
                "Fail",
                |(_x,): (Value,)| async move { Err::<Value, _>("nope") },
            );
            connection.on("Plain", |(_x,): (Value,)| async {});
            for n in [1, 2] {
                connection.on_with_result("Twice", move |(_x,): (Value,)| async move {
                    Ok::<_, std::convert::Infallible>(n)
                });
            }
            // A handler may call the hub before it answers (the waiting hub method frees its
            // invocation slot, and the client runs handlers off the connection task).
            let nested = connection.clone();
            connection.on_with_result("Nested", move |(x,): (i64,)| {
                let connection = nested.clone();
                async move {
                    let sum: i64 = connection
                        .invoke("Add", (x, 1))
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(sum * 10)
                }
            });
            connection.start().await?;

            let answer: i64 = connection.invoke("AskCaller", ("Double", 21)).await?;
            assert_eq!(answer, 42);
            let described: Value = connection.invoke("AskCaller", ("Describe", "it")).await?;
            assert_eq!(described, json!({ "got": "it", "list": [1, "two"] }));
            let answer: Value = connection
                .invoke("AskCallerWithin", ("Nested", 4, 3000))
                .await?;
            assert_eq!(answer, json!(50));

            let expect_error = |result: Result<Value, InvokeError>, text: &str| match result {
                Err(InvokeError::Hub(error)) => {
                    assert_eq!(error, failed("AskCaller", text));
                    Ok(())
                }
                other => bail!("expected '{text}', got {other:?}"),
            };
            expect_error(connection.invoke("AskCaller", ("Fail", 1)).await, "nope")?;
            expect_error(
                connection.invoke("AskCaller", ("NoSuchHandler", 1)).await,
                "Client didn't provide a result.",
            )?;
            expect_error(
                connection.invoke("AskCaller", ("Plain", 1)).await,
                "Client didn't provide a result.",
            )?;
            expect_error(
                connection.invoke("AskCaller", ("Twice", 1)).await,
                "Client provided multiple results.",
            )?;
            match connection
                .invoke::<Value>("AskCaller", ("Double", "not a number"))
                .await
            {
                Err(InvokeError::Hub(error)) => assert!(
                    error.starts_with(&failed(
                        "AskCaller",
                        "The arguments of 'Double' could not be bound"
                    )),
                    "{error}"
                ),
                other => bail!("expected a binding error, got {other:?}"),
            }
            connection.stop().await;
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn stateful_reconnect_survives_cut_connections() -> Result<()> {
    let server = Server::start(&[]).await?;
    let proxy = proxy::Proxy::start(&server.url).await?;
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let connection = HubConnectionBuilder::new(format!("{}/hubs/test", proxy.url))
            .with_transport(TransportType::WebSockets)
            .with_protocol(protocol)
            .with_stateful_reconnect()
            .build()?;
        let mut direct = forward::<Value>(&connection, "DirectMessage");
        let (on_reconnecting, mut reconnecting) = channel::<String>();
        connection.on_reconnecting(move |error| on_reconnecting(error.to_string()));
        connection.start().await?;
        let id = connection.connection_id().context("a connection id")?;
        // A second client, not behind the proxy, sends while the first is cut off.
        let sender = connect(&server, TransportType::WebSockets, protocol).await?;

        let delayed = tokio::spawn(connection.invoke::<Value>("Delay", (300, "survived")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.cut();
        sender
            .invoke::<()>("SendToConnection", (&id, "while cut"))
            .await?;
        let during = tokio::spawn(connection.invoke::<i64>("Add", (20, 22)));
        let items = ClientStream::new(stream::iter([1.0, 2.0]));
        let total = tokio::spawn(connection.invoke::<f64>("Sum", (items,)));

        assert_eq!(
            timeout(WAIT, delayed).await???,
            json!("survived"),
            "{protocol}"
        );
        assert_eq!(timeout(WAIT, during).await???, 42, "{protocol}");
        assert_eq!(timeout(WAIT, total).await???, 3.0, "{protocol}");
        assert_eq!(next(&mut direct).await?, json!("while cut"), "{protocol}");
        let same: String = connection.invoke("GetConnectionId", ()).await?;
        assert_eq!(same, id, "{protocol}: the same connection");
        assert_eq!(connection.connection_id(), Some(id.clone()));
        assert!(
            reconnecting.try_recv().is_err(),
            "{protocol}: no new connection"
        );

        // A second cut after acknowledgements went both ways; nothing is delivered twice.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        proxy.cut();
        sender
            .invoke::<()>("SendToConnection", (&id, "second"))
            .await?;
        let sum: i64 = connection.invoke("Add", (5, 5)).await?;
        assert_eq!(sum, 10);
        assert_eq!(next(&mut direct).await?, json!("second"), "{protocol}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            direct.try_recv().is_err(),
            "{protocol}: a message arrived twice"
        );
        connection.stop().await;
        sender.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn without_server_support_a_cut_is_a_lost_connection() -> Result<()> {
    let server = Server::start(&["--allow-stateful-reconnects", "false"]).await?;
    let proxy = proxy::Proxy::start(&server.url).await?;
    let connection = HubConnectionBuilder::new(format!("{}/hubs/test", proxy.url))
        .with_transport(TransportType::WebSockets)
        .with_stateful_reconnect()
        .build()?;
    let (on_closed, mut closed) = channel::<Option<String>>();
    connection.on_closed(move |error| on_closed(error.map(|e| e.to_string())));
    connection.start().await?;
    let sum: i64 = connection.invoke("Add", (1, 1)).await?;
    assert_eq!(sum, 2);
    proxy.cut();
    assert!(next(&mut closed).await?.is_some());
    assert_eq!(connection.state(), HubConnectionState::Disconnected);
    Ok(())
}

#[tokio::test]
async fn tls_with_a_trusted_root_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, signing_key.serialize_pem())?;
    let server = Server::start(&[
        "--tls-cert",
        cert_path.to_str().context("a UTF-8 path")?,
        "--tls-key",
        key_path.to_str().context("a UTF-8 path")?,
    ])
    .await?;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    for_each_combo(|transport, protocol| {
        let server = &server;
        let pem = cert.pem();
        async move {
            let connection = builder(server, transport, protocol)
                .with_root_certificate_pem(pem)
                .build()?;
            connection.start().await?;
            let used: String = connection.invoke("GetTransport", ()).await?;
            assert_eq!(used, transport.name());
            let sum: i64 = connection.invoke("Add", (20, 22)).await?;
            assert_eq!(sum, 42);
            connection.stop().await;
            // Without the certificate the server is not trusted.
            let untrusted = builder(server, transport, protocol).build()?;
            assert!(untrusted.start().await.is_err());
            Ok(())
        }
    })
    .await
}
