//! `Server::builder()`: settings given once reach every hub, a hub's own
//! settings override them, and the result is an ordinary axum router that
//! takes the application's routes and layers beside the hubs.

#[path = "support/http_client.rs"]
mod http_client;
#[path = "support/raw.rs"]
mod raw;

use std::net::SocketAddr;

use axum::{http::HeaderValue, response::Response};
use http_client::{Client, text};
use jsonwebtoken::{EncodingKey, Header, encode};
use raw::{Incoming, RawConnection, Transport};
use serde_json::{Value, json};
use tidings::{
    AuthError, ConnectionLimits, HubOptions, JwtAuthenticator, Principal, Protocol, Server, hub,
};
use tidings_protocol::HubMessage;

const SECRET: &[u8] = b"server builder tests";

/// Both hubs need a signed-in user: negotiate answers 401 without one.
struct Alpha;

#[hub(authorize)]
impl Alpha {
    async fn ping(&self) {}
}

struct Beta;

#[hub(authorize)]
impl Beta {
    async fn ping(&self) {}
}

fn token(user: &str) -> anyhow::Result<String> {
    let claims = json!({ "sub": user, "exp": 4_000_000_000u64 });
    Ok(encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )?)
}

/// Serves `app` on a free port.
async fn serve(app: axum::Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(tidings::serve(listener, app).into_future());
    Ok(address)
}

/// `POST {hub}/negotiate?negotiateVersion=1`, with `token` as bearer if given.
async fn negotiate(
    address: SocketAddr,
    hub: &str,
    token: Option<&str>,
) -> anyhow::Result<Response<String>> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    let mut client = Client::http1(stream, &format!("http://{address}")).await?;
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("authorization", b))
        .into_iter()
        .collect();
    let path = format!("{hub}/negotiate?negotiateVersion=1");
    let response = client.send("POST", &path, &headers, None).await?;
    let (parts, body) = response.into_parts();
    let body = text(hyper::Response::from_parts(parts.clone(), body)).await?;
    Ok(Response::from_parts(parts, body))
}

/// The transports a negotiate answer offers.
fn transports(answer: &Response<String>) -> anyhow::Result<Vec<String>> {
    let body: Value = serde_json::from_str(answer.body())?;
    let offered = body["availableTransports"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no transports in {body}"))?;
    Ok(offered
        .iter()
        .filter_map(|t| t["transport"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test]
async fn two_hubs_share_authentication_and_limits_beside_app_routes_and_layers()
-> anyhow::Result<()> {
    let server = Server::builder()
        .authenticator(JwtAuthenticator::hs256(SECRET))
        // One connection for the whole server, whichever hub it is on.
        .connection_limits(ConnectionLimits::new().max_connections(1))
        .hub("/hubs/alpha", Alpha)
        .hub("/hubs/beta", Beta)
        .build();
    let alpha = server
        .hub_context::<Alpha>()
        .ok_or_else(|| anyhow::anyhow!("no context for Alpha"))?;
    assert!(server.context("/hubs/beta").is_some());
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .merge(server.into_router())
        .layer(axum::middleware::map_response(
            |mut response: Response| async move {
                response
                    .headers_mut()
                    .insert("x-app", HeaderValue::from_static("layered"));
                response
            },
        ));
    let address = serve(app).await?;

    // Both hubs refuse a negotiate without a token: one authenticator.
    for hub in ["/hubs/alpha", "/hubs/beta"] {
        let refused = negotiate(address, hub, None).await?;
        assert_eq!(refused.status(), 401, "{hub} without a token");
    }

    // Hub paths match as ASP.NET Core matches them: any case, with or
    // without a trailing slash; other paths stay unknown.
    let refused = negotiate(address, "/HUBS/Alpha", None).await?;
    assert_eq!(refused.status(), 401, "/HUBS/Alpha reaches the hub");
    let stream = tokio::net::TcpStream::connect(address).await?;
    let mut client = Client::http1(stream, &format!("http://{address}")).await?;
    let slash = client
        .send(
            "POST",
            "/Hubs/Beta/negotiate/?negotiateVersion=1",
            &[],
            None,
        )
        .await?;
    assert_eq!(slash.status(), 401, "/Hubs/Beta/negotiate/ reaches the hub");
    let unknown = client
        .send("POST", "/hubs/gamma/negotiate", &[], None)
        .await?;
    assert_eq!(unknown.status(), 404, "no hub at /hubs/gamma");

    // The application's route is served beside the hubs.
    let stream = tokio::net::TcpStream::connect(address).await?;
    let mut client = Client::http1(stream, &format!("http://{address}")).await?;
    assert_eq!(text(client.get("/health", &[]).await?).await?, "ok");

    // A signed-in user connects to alpha; the app's layer wraps the hubs.
    let ann = token("ann")?;
    let path = format!("/hubs/alpha?access_token={ann}");
    let mut connection =
        RawConnection::connect(address, &path, Transport::WebSockets, Protocol::Json).await?;
    let accepted = negotiate(address, "/hubs/alpha", Some(&ann)).await;
    // That second negotiate was over the shared limit of one (the socket
    // above holds it), on alpha...
    assert_eq!(accepted?.status(), 503);
    // ...and on beta: the limit is the server's, not one hub's.
    let refused = negotiate(address, "/hubs/beta", Some(&ann)).await?;
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers().get("x-app"),
        Some(&HeaderValue::from_static("layered"))
    );

    // The context the server handed out reaches the hub's connections.
    alpha.clients().all().send("Note", ("pushed",)).await?;
    match connection.next().await? {
        Incoming::Message(HubMessage::Invocation(invocation)) => {
            assert_eq!(invocation.target, "Note");
        }
        other => anyhow::bail!("expected a Note, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_hub_overrides_the_shared_settings() -> anyhow::Result<()> {
    let server = Server::builder()
        .authenticator(JwtAuthenticator::hs256(SECRET))
        .options(HubOptions::default().server_sent_events(false))
        .hub("/hubs/alpha", Alpha)
        .hub_with("/hubs/beta", Beta, |hub| {
            hub.options(HubOptions::default().long_polling(false))
                .authenticator(|_: &axum::http::request::Parts| {
                    Ok::<_, AuthError>(Principal::user("guest"))
                })
        })
        .build();
    let address = serve(server.into_router()).await?;

    let refused = negotiate(address, "/hubs/alpha", None).await?;
    assert_eq!(refused.status(), 401);
    let alpha = negotiate(address, "/hubs/alpha", Some(&token("ann")?)).await?;
    assert_eq!(alpha.status(), 200);
    assert_eq!(transports(&alpha)?, ["WebSockets", "LongPolling"]);

    // Beta's own authenticator signs everyone in as a guest, and its own
    // options offer Server-Sent Events but not Long Polling.
    let beta = negotiate(address, "/hubs/beta", None).await?;
    assert_eq!(beta.status(), 200, "{}", beta.body());
    assert_eq!(transports(&beta)?, ["WebSockets", "ServerSentEvents"]);
    Ok(())
}
