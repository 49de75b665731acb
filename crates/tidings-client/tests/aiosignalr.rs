//! Interop tests against an independent SignalR server: `aiosignalr` 0.1.1 from PyPI, running
//! the small hub in `tests/aiosignalr/hub.py`. `scripts/aiosignalr-venv.sh` installs it into a
//! virtual environment under `target/` (set `AIOSIGNALR_PYTHON` to use another interpreter).
//!
//! aiosignalr 0.1.1 deviates from ASP.NET Core SignalR in ways that decide what is tested here
//! (the client accepts what the protocol allows and nothing more):
//!
//! * WebSocket frames are always Binary, even for JSON and the handshake answer. The protocol
//!   lets the receiver ignore the frame type, and so does this client: tested.
//! * MessagePack StreamItem, Completion and CancelInvocation messages carry the integer 128 where
//!   the headers map belongs (`0xcc 0x80` instead of the empty map `0x80`). The protocol requires
//!   a map, so the client closes the connection on the first such message (invocation results,
//!   stream items). Tested over MessagePack: everything that does not need those messages
//!   (server-to-client invocations, client results, client-to-server streams), and that an
//!   invocation result ends the connection with a protocol error.
//! * Long Polling: the first poll is held until there is data instead of being answered at once,
//!   and the connection is torn down when no new poll arrives within the poll timeout of the
//!   previous one (the same 15 s), racing the client's next poll. A client that waits for the
//!   first poll, as the official clients do, cannot connect reliably. Not tested.
//! * Error texts: an unknown method is `Unknown hub method 'X'` (ASP.NET Core: `Failed to invoke
//!   'X' due to an error on the server. HubException: Method does not exist.`), and a
//!   `HubException` is reported as its bare message (without the `An unexpected error occurred
//!   invoking 'X' on the server. HubException: ` prefix). Tested as aiosignalr sends them.
//! * No authentication: the server accepts any token. Tested: the token (and custom headers)
//!   reach the hub on the transport request, and a negotiate redirect's token replaces the
//!   factory (the redirect route is part of the test server).
//! * Server-to-client invocation ids for client results are `s1`, `s2`, … per server, like
//!   ASP.NET Core; fine.

#[path = "support/common.rs"]
mod common;
#[path = "support/proxy.rs"]
mod proxy;

use std::{
    process::Stdio,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use common::{WAIT, channel, forward, hub_error, listening_url, next};
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tidings_client::{
    ClientStream, ConnectionError, HubConnectionBuilder, HubConnectionState, InvokeError, Protocol,
    TransportType,
};
use tokio::{
    process::{Child, Command},
    time::timeout,
};

/// The Python interpreter with aiosignalr installed (installs it on first use).
fn python() -> Result<String> {
    static PYTHON: OnceLock<Result<String, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Ok(python) = std::env::var("AIOSIGNALR_PYTHON") {
                return Ok(python);
            }
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../scripts/aiosignalr-venv.sh"
            );
            let output = std::process::Command::new("bash")
                .arg(script)
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("running {script}: {e}"))?;
            if !output.status.success() {
                return Err(format!("{script} failed"));
            }
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The aiosignalr test server; killed when dropped.
struct PyServer {
    _child: Child,
    url: String,
}

impl PyServer {
    async fn start() -> Result<PyServer> {
        let python = python()?;
        let hub = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aiosignalr/hub.py");
        let mut child = Command::new(python)
            .arg(hub)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the aiosignalr hub")?;
        let url = listening_url(&mut child, Duration::from_secs(30)).await?;
        Ok(PyServer { _child: child, url })
    }

    fn hub(&self) -> String {
        format!("{}/hub", self.url)
    }
}

fn builder(url: &str, transport: TransportType, protocol: Protocol) -> HubConnectionBuilder {
    HubConnectionBuilder::new(url)
        .with_transport(transport)
        .with_protocol(protocol)
}

/// The JSON combinations that interoperate (see the module docs for Long Polling).
const JSON_TRANSPORTS: [TransportType; 2] =
    [TransportType::WebSockets, TransportType::ServerSentEvents];

#[tokio::test]
async fn json_calls_streams_and_client_methods() -> Result<()> {
    let server = PyServer::start().await?;
    for transport in JSON_TRANSPORTS {
        let context = transport.name();
        let connection = builder(&server.hub(), transport, Protocol::Json).build()?;
        let mut notified = forward::<Value>(&connection, "Notified");
        connection.start().await.context(context)?;

        let id: String = connection.invoke("GetConnectionId", ()).await?;
        assert_eq!(Some(id), connection.connection_id(), "{context}");
        let sum: i64 = connection.invoke("Add", (40, 2)).await?;
        assert_eq!(sum, 42, "{context}");
        let object = json!({ "name": "ann", "list": [1, 2.5, null], "nested": { "ok": true } });
        let echoed: Value = connection.invoke("Echo", (object.clone(),)).await?;
        assert_eq!(echoed, object, "{context}");
        connection.invoke::<()>("Nothing", ()).await?;

        connection.send("Notify", ("sent",)).await?;
        assert_eq!(next(&mut notified).await?, json!("sent"), "{context}");

        let hub_error = hub_error::<()>;
        assert_eq!(
            hub_error(connection.invoke("Throw", ("secret",)).await)?,
            "An unexpected error occurred invoking 'Throw' on the server."
        );
        assert_eq!(
            hub_error(connection.invoke("ThrowHubException", ("told you",)).await)?,
            "told you"
        );
        assert_eq!(
            hub_error(connection.invoke("NoSuchMethod", ()).await)?,
            "Unknown hub method 'NoSuchMethod'"
        );

        let items: Vec<u32> = connection
            .stream::<u32>("Counter", (4, 10))
            .await?
            .map(|item| item.expect("an item"))
            .collect()
            .await;
        assert_eq!(items, [0, 1, 2, 3], "{context}");
        // A dropped stream is cancelled; the connection carries on.
        let mut long = connection.stream::<u32>("Counter", (1000, 20)).await?;
        assert_eq!(long.next().await.transpose()?, Some(0));
        drop(long);

        let total: f64 = connection
            .invoke("Sum", (ClientStream::new(stream::iter([1.5, 2.5, 3.0])),))
            .await?;
        assert_eq!(total, 7.0, "{context}");

        connection.stop().await;
        assert_eq!(connection.state(), HubConnectionState::Disconnected);
    }
    Ok(())
}

#[tokio::test]
async fn json_client_results_and_groups() -> Result<()> {
    let server = PyServer::start().await?;
    for transport in JSON_TRANSPORTS {
        let context = transport.name();
        let connection = builder(&server.hub(), transport, Protocol::Json).build()?;
        connection.on_with_result("ask", |(question,): (String,)| async move {
            if question == "fail" {
                Err("cannot answer".to_owned())
            } else {
                Ok(format!("answer to {question}"))
            }
        });
        connection.start().await?;
        let answer: String = connection.invoke("AskCaller", ("life",)).await?;
        assert_eq!(answer, "answer to life", "{context}");
        match connection.invoke::<String>("AskCaller", ("fail",)).await {
            Err(InvokeError::Hub(text)) => assert_eq!(text, "cannot answer", "{context}"),
            other => bail!("{context}: expected the client's error, got {other:?}"),
        }

        let listener = builder(&server.hub(), transport, Protocol::Json).build()?;
        let mut group = forward::<Value>(&listener, "GroupMessage");
        listener.start().await?;
        let room = format!("room-{context}");
        listener.invoke::<()>("JoinGroup", (&room,)).await?;
        connection
            .invoke::<()>("SendToGroup", (&room, "hello room"))
            .await?;
        assert_eq!(next(&mut group).await?, json!("hello room"), "{context}");
        listener.stop().await;
        connection.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn headers_tokens_redirects_and_negotiate_version_zero() -> Result<()> {
    let server = PyServer::start().await?;
    for transport in JSON_TRANSPORTS {
        let context = transport.name();
        let calls = Arc::new(Mutex::new(0u32));
        let counted = Arc::clone(&calls);
        let connection = builder(&server.hub(), transport, Protocol::Json)
            .with_header("X-Custom", "custom value")
            .with_access_token_factory(move || {
                *counted.lock().expect("not poisoned") += 1;
                async { Ok::<_, std::io::Error>("factory-token".to_owned()) }
            })
            .build()?;
        connection.start().await?;
        let custom: Option<String> = connection.invoke("GetHeader", ("X-Custom",)).await?;
        assert_eq!(custom.as_deref(), Some("custom value"), "{context}");
        let auth: Option<String> = connection.invoke("GetHeader", ("Authorization",)).await?;
        assert_eq!(auth.as_deref(), Some("Bearer factory-token"), "{context}");
        assert!(*calls.lock().expect("not poisoned") >= 1);
        connection.stop().await;

        // The redirect's token replaces the factory.
        let redirected = builder(
            &format!("{}/redirect", server.url),
            transport,
            Protocol::Json,
        )
        .with_access_token_factory(|| async { Ok::<_, std::io::Error>("factory-token".to_owned()) })
        .build()?;
        redirected.start().await?;
        let auth: Option<String> = redirected.invoke("GetHeader", ("Authorization",)).await?;
        assert_eq!(
            auth.as_deref(),
            Some("Bearer redirected-token"),
            "{context}"
        );
        redirected.stop().await;

        // negotiateVersion=0 in the URL: the server answers version 0, without a token.
        let v0 = builder(
            &format!("{}?negotiateVersion=0", server.hub()),
            transport,
            Protocol::Json,
        )
        .build()?;
        v0.start().await?;
        let id: String = v0.invoke("GetConnectionId", ()).await?;
        assert_eq!(Some(id.clone()), v0.connection_id(), "{context}");
        // Version 0 connects with the connection id itself.
        let query: Option<String> = v0.invoke("GetQuery", ("id",)).await?;
        assert_eq!(query, Some(id), "{context}");
        v0.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn messagepack_what_interoperates() -> Result<()> {
    let server = PyServer::start().await?;
    let connection = builder(
        &server.hub(),
        TransportType::WebSockets,
        Protocol::MessagePack,
    )
    .build()?;
    let mut notified = forward::<Value>(&connection, "Notified");
    let mut totals = forward::<f64>(&connection, "Total");
    let (on_answer, mut answers) = channel::<(Option<String>, Option<String>)>();
    connection.on("Answer", move |answer: (Option<String>, Option<String>)| {
        let on_answer = Arc::clone(&on_answer);
        async move { on_answer(answer) }
    });
    connection.on_with_result("Ask", |(question,): (String,)| async move {
        Ok::<_, std::convert::Infallible>(format!("packed answer to {question}"))
    });
    let (on_closed, mut closed) = channel::<Option<String>>();
    connection.on_closed(move |error| on_closed(error.map(ToString::to_string)));
    connection.start().await?;

    // Server-to-client invocations.
    connection
        .send("Notify", (json!({ "n": 1, "s": "text" }),))
        .await?;
    assert_eq!(next(&mut notified).await?, json!({ "n": 1, "s": "text" }));
    // A client result in MessagePack, reported back by a server-to-client invocation.
    connection.send("AskAndReport", ("q",)).await?;
    assert_eq!(
        next(&mut answers).await?,
        (Some("packed answer to q".to_owned()), None)
    );
    // A client-to-server stream.
    connection
        .send(
            "SumAndReport",
            (ClientStream::new(stream::iter([1.0, 2.0, 4.5])),),
        )
        .await?;
    assert_eq!(next(&mut totals).await?, 7.5);

    // An invocation result: aiosignalr's Completion has no headers map, which the protocol
    // requires, so the connection ends with a protocol error.
    match connection.invoke::<i64>("Add", (1, 2)).await {
        Err(InvokeError::ConnectionClosed(Some(ConnectionError::Protocol(_)))) => {}
        other => bail!("expected aiosignalr's completion to be refused, got {other:?}"),
    }
    let reason = next(&mut closed).await?.context("closed with an error")?;
    assert!(reason.contains("headers"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn stateful_reconnect_survives_a_cut_connection() -> Result<()> {
    let server = PyServer::start().await?;
    let proxy = proxy::Proxy::start(&server.url).await?;
    let connection = builder(
        &format!("{}/hub", proxy.url),
        TransportType::WebSockets,
        Protocol::Json,
    )
    .with_stateful_reconnect()
    .build()?;
    let mut notified = forward::<Value>(&connection, "Notified");
    let (on_reconnecting, mut reconnecting) = channel::<String>();
    connection.on_reconnecting(move |error| on_reconnecting(error.to_string()));
    connection.start().await?;
    let id = connection.connection_id().context("a connection id")?;
    let sum: i64 = connection.invoke("Add", (1, 2)).await?;
    assert_eq!(sum, 3);

    // The result of this call is produced while the connection is cut: the server buffers it
    // and replays it on the new WebSocket.
    let delayed = tokio::spawn(connection.invoke::<String>("Delay", (300, "survived")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.cut();
    // Sent right after the cut: buffered by the client and replayed (or sent on the new socket).
    let during = tokio::spawn(connection.invoke::<i64>("Add", (20, 22)));
    connection.send("Notify", ("after the cut",)).await?;

    assert_eq!(timeout(WAIT, delayed).await???, "survived");
    assert_eq!(timeout(WAIT, during).await???, 42);
    assert_eq!(next(&mut notified).await?, json!("after the cut"));
    // Same logical connection, and no reconnect (which would have made a new one).
    assert_eq!(connection.connection_id(), Some(id.clone()));
    let same: String = connection.invoke("GetConnectionId", ()).await?;
    assert_eq!(same, id);
    assert!(reconnecting.try_recv().is_err());

    // Again, with the acks of the first round behind us.
    proxy.cut();
    let sum: i64 = connection.invoke("Add", (5, 5)).await?;
    assert_eq!(sum, 10);
    // Nothing arrives twice.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(notified.try_recv().is_err());
    connection.stop().await;
    Ok(())
}
