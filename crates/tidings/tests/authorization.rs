//! Authorization and hub filters over a real server: a hub-level
//! requirement answered at negotiate and at the WebSocket upgrade (401 /
//! 403), method-level roles and named policies answered with ASP.NET Core's
//! Completion error while the connection stays open, a user-id provider,
//! and filters that see every invocation — unknown names and refusals
//! included — before and after it runs.

#[path = "support/websocket.rs"]
mod websocket;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::http::request::Parts;
use futures_util::{SinkExt, Stream};
use parking_lot::Mutex;
use tidings::{
    AuthError, BoxFuture, Context, HubEndpoint, HubError, HubFilter, InvocationInfo, Principal, hub,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{
    Message,
    client::IntoClientRequest,
    http::{HeaderName, HeaderValue},
};
use websocket::{Socket, next_text};

/// Members only; some methods need more.
struct Vault;

#[hub(authorize(roles = "Member, Admin"))]
impl Vault {
    async fn whoami(&self, cx: &Context) -> Option<String> {
        cx.user_identifier().map(str::to_owned)
    }

    #[authorize(roles = "Admin")]
    async fn purge(&self) -> &'static str {
        "purged"
    }

    #[authorize(policy = "named-ann")]
    async fn diary(&self) -> &'static str {
        "dear diary"
    }

    /// Two entries, then (if `fail`) an error instead of the rest.
    #[hub(stream)]
    async fn ledger(&self, fail: bool) -> impl Stream<Item = Result<u32, HubError>> + use<> {
        let failure = fail.then(|| Err(HubError::new("the ledger is torn")));
        futures_util::stream::iter([Ok(1), Ok(2)].into_iter().chain(failure))
    }
}

/// Users come from test headers: `x-user` and comma-separated `x-roles`; a
/// `x-user: invalid` header is a credential that does not verify.
fn from_headers(parts: &Parts) -> Result<Principal, AuthError> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let Some(user) = header("x-user") else {
        return Ok(Principal::anonymous());
    };
    if user == "invalid" {
        return Err(AuthError::Unauthorized("bad credentials".into()));
    }
    let mut principal = Principal::user(user).with_claim("name", user.to_uppercase());
    for role in header("x-roles").unwrap_or_default().split(',') {
        principal = principal.with_claim("role", role);
    }
    Ok(principal)
}

/// Records what it sees; refuses any method called "Forbidden".
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock())
    }

    /// Waits (up to 2 s) until at least `lines` lines were recorded.
    async fn wait_for(&self, lines: usize) {
        for _ in 0..100 {
            if self.seen.lock().len() >= lines {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn push(&self, line: String) {
        self.seen.lock().push(line);
    }
}

impl HubFilter for Recorder {
    fn before<'a>(
        &'a self,
        invocation: &'a InvocationInfo<'a>,
    ) -> BoxFuture<'a, Result<(), HubError>> {
        Box::pin(async move {
            self.push(format!(
                "before {} {:?} args={}",
                invocation.target(),
                invocation.invocation_id(),
                invocation.argument_count()
            ));
            if invocation.target() == "Forbidden" {
                return Err(HubError::new("Not through this filter."));
            }
            Ok(())
        })
    }

    fn after(&self, invocation: &InvocationInfo<'_>, outcome: Result<(), &str>) {
        self.push(format!("after {} {:?}", invocation.target(), outcome));
    }

    fn disconnected(&self, cx: &Context) {
        self.push(format!("disconnected {:?}", cx.user_identifier()));
    }
}

async fn start(recorder: Recorder) -> anyhow::Result<SocketAddr> {
    let endpoint = HubEndpoint::new(Vault)
        .authenticator(from_headers)
        .policy("named-ann", |user| user.claim("name") == Some("ANN"))
        // The user id is the upper-cased name: a provider replaces `sub`.
        .user_id_provider(|user| user.claim("name").map(|n| format!("user:{n}")))
        .filter(recorder);
    let app: axum::Router = axum::Router::new().nest("/vault", endpoint.into_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(tidings::serve(listener, app).into_future());
    Ok(address)
}

/// A server whose filter is a fresh recorder, and a member's socket to it.
async fn member_ann_recorded() -> anyhow::Result<(Recorder, Socket)> {
    let recorder = Recorder::default();
    let address = start(recorder.clone()).await?;
    let Ok(ann) = open(address, &[("x-user", "ann"), ("x-roles", "Member")]).await? else {
        anyhow::bail!("ann is a member");
    };
    Ok((recorder, ann))
}

/// The status code of a `POST /vault/negotiate` with these headers.
async fn negotiate(address: SocketAddr, headers: &[(&str, &str)]) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(address).await?;
    let mut request = format!(
        "POST /vault/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no status line: {response}"))?;
    Ok(status.parse()?)
}

/// A WebSocket to the hub without negotiation, after its handshake; or the
/// HTTP status of the refused upgrade.
async fn open(
    address: SocketAddr,
    headers: &[(&str, &str)],
) -> anyhow::Result<Result<Socket, u16>> {
    let mut request = format!("ws://{address}/vault").into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    let mut socket = match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => socket,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            return Ok(Err(response.status().as_u16()));
        }
        Err(error) => return Err(error.into()),
    };
    socket
        .send(Message::text("{\"protocol\":\"json\",\"version\":1}\u{1e}"))
        .await?;
    anyhow::ensure!(next_text(&mut socket).await? == "{}\u{1e}", "handshake");
    Ok(Ok(socket))
}

/// Invokes `target` and returns the Completion's text.
async fn call(socket: &mut Socket, id: &str, target: &str) -> anyhow::Result<String> {
    socket
        .send(Message::text(format!(
            "{{\"type\":1,\"invocationId\":\"{id}\",\"target\":\"{target}\",\"arguments\":[]}}\u{1e}"
        )))
        .await?;
    next_text(socket).await
}

#[tokio::test]
async fn the_hub_requirement_is_checked_before_any_connection_exists() -> anyhow::Result<()> {
    let address = start(Recorder::default()).await?;
    assert_eq!(negotiate(address, &[]).await?, 401);
    assert_eq!(negotiate(address, &[("x-user", "invalid")]).await?, 401);
    assert_eq!(
        negotiate(address, &[("x-user", "eve"), ("x-roles", "Guest")]).await?,
        403
    );
    assert_eq!(
        negotiate(address, &[("x-user", "ann"), ("x-roles", "Member")]).await?,
        200
    );
    assert_eq!(
        negotiate(address, &[("x-user", "bob"), ("x-roles", "Guest,Admin")]).await?,
        200
    );

    // The same answers when the client skips negotiation.
    assert_eq!(open(address, &[]).await?.err(), Some(401));
    assert_eq!(
        open(address, &[("x-user", "invalid")]).await?.err(),
        Some(401)
    );
    assert_eq!(
        open(address, &[("x-user", "eve"), ("x-roles", "Guest")])
            .await?
            .err(),
        Some(403)
    );
    assert!(
        open(address, &[("x-user", "ann"), ("x-roles", "Member")])
            .await?
            .is_ok()
    );
    Ok(())
}

#[tokio::test]
async fn method_requirements_answer_with_a_completion_and_keep_the_connection() -> anyhow::Result<()>
{
    let recorder = Recorder::default();
    let address = start(recorder.clone()).await?;
    let Ok(mut ann) = open(address, &[("x-user", "ann"), ("x-roles", "Member")]).await? else {
        anyhow::bail!("ann is a member");
    };
    let Ok(mut bob) = open(address, &[("x-user", "bob"), ("x-roles", "Admin")]).await? else {
        anyhow::bail!("bob is an admin");
    };
    let denied = |id: &str, target: &str| {
        format!(
            "{{\"type\":3,\"invocationId\":\"{id}\",\"error\":\"Failed to invoke '{target}' because user is unauthorized\"}}\u{1e}"
        )
    };
    let ok = |id: &str, result: &str| {
        format!("{{\"type\":3,\"invocationId\":\"{id}\",\"result\":{result}}}\u{1e}")
    };
    // Roles.
    assert_eq!(call(&mut ann, "1", "Purge").await?, denied("1", "Purge"));
    assert_eq!(call(&mut bob, "1", "purge").await?, ok("1", "\"purged\""));
    // A named policy over the claims.
    assert_eq!(call(&mut bob, "2", "Diary").await?, denied("2", "Diary"));
    assert_eq!(
        call(&mut ann, "2", "Diary").await?,
        ok("2", "\"dear diary\"")
    );
    // Still connected, with the user id the provider chose.
    assert_eq!(
        call(&mut ann, "3", "WhoAmI").await?,
        ok("3", "\"user:ANN\"")
    );
    Ok(())
}

#[tokio::test]
async fn filters_see_every_invocation() -> anyhow::Result<()> {
    let (recorder, mut ann) = member_ann_recorded().await?;
    assert_eq!(
        call(&mut ann, "1", "Nope").await?,
        "{\"type\":3,\"invocationId\":\"1\",\"error\":\"Failed to invoke 'Nope' due to an error on the server. HubException: Method does not exist.\"}\u{1e}"
    );
    // A filter's refusal: the method does not run, the client is told why.
    assert_eq!(
        call(&mut ann, "2", "Forbidden").await?,
        "{\"type\":3,\"invocationId\":\"2\",\"error\":\"An unexpected error occurred invoking 'Forbidden' on the server. HubException: Not through this filter.\"}\u{1e}"
    );
    call(&mut ann, "3", "Purge").await?;
    call(&mut ann, "4", "WhoAmI").await?;
    ann.close(None).await?;
    // `disconnected` runs as the connection ends.
    recorder.wait_for(9).await;
    assert_eq!(
        recorder.take(),
        [
            "before Nope Some(\"1\") args=0",
            "after Nope Err(\"Failed to invoke 'Nope' due to an error on the server. HubException: Method does not exist.\")",
            "before Forbidden Some(\"2\") args=0",
            "after Forbidden Err(\"An unexpected error occurred invoking 'Forbidden' on the server. HubException: Not through this filter.\")",
            "before Purge Some(\"3\") args=0",
            "after Purge Err(\"Failed to invoke 'Purge' because user is unauthorized\")",
            "before WhoAmI Some(\"4\") args=0",
            "after WhoAmI Ok(())",
            "disconnected Some(\"user:ANN\")",
        ]
    );
    Ok(())
}

#[tokio::test]
async fn filters_see_how_a_stream_ended() -> anyhow::Result<()> {
    let (recorder, mut ann) = member_ann_recorded().await?;
    for (id, fail) in [("s1", false), ("s2", true)] {
        ann.send(Message::text(format!(
            "{{\"type\":4,\"invocationId\":\"{id}\",\"target\":\"Ledger\",\"arguments\":[{fail}]}}\u{1e}"
        )))
        .await?;
        // Two items, then the Completion.
        let mut received = String::new();
        while !received.contains("\"type\":3") {
            received.push_str(&next_text(&mut ann).await?);
        }
        assert_eq!(received.matches("\"type\":2").count(), 2, "{received}");
        assert_eq!(received.contains("\"error\""), fail, "{received}");
    }
    // `after` runs once the Completion is queued: wait for both.
    recorder.wait_for(4).await;
    let seen = recorder.take();
    assert_eq!(
        seen[..3],
        [
            "before Ledger Some(\"s1\") args=1",
            "after Ledger Ok(())",
            "before Ledger Some(\"s2\") args=1"
        ]
    );
    // A stream that fails mid-way is a failed invocation, with the text the
    // client received.
    assert!(
        seen[3].starts_with(
            "after Ledger Err(\"An error occurred on the server while streaming results."
        ) && seen[3].contains("the ledger is torn"),
        "{seen:?}"
    );
    Ok(())
}

#[test]
#[should_panic(expected = "the authorization policy 'named-ann' is not registered")]
fn an_unregistered_policy_is_a_programming_error() {
    let _ = HubEndpoint::new(Vault).into_router::<()>();
}
