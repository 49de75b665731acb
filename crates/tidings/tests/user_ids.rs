//! Which user a connection is, over a real server with `JwtAuthenticator`:
//! a token of a .NET backend names its user with `nameid` or the long
//! name-identifier URI rather than `sub`, and `Clients.User` must reach it
//! all the same; an endpoint may pick another claim (`user_id_claim`).

#[path = "support/http_client.rs"]
mod http_client;
#[path = "support/raw.rs"]
mod raw;

use std::net::SocketAddr;

use jsonwebtoken::{EncodingKey, Header, encode};
use raw::{Incoming, RawConnection, Transport};
use serde_json::{Value, json};
use tidings::{HubContext, HubEndpoint, JwtAuthenticator, Protocol, hub};
use tidings_protocol::HubMessage;

const SECRET: &[u8] = b"user-id tests";

struct Inbox;

#[hub]
impl Inbox {
    async fn ping(&self) {}
}

/// A server whose endpoint `configure` finishes, and the hub's context.
async fn start(
    configure: impl FnOnce(HubEndpoint<Inbox>) -> HubEndpoint<Inbox>,
) -> anyhow::Result<(SocketAddr, HubContext)> {
    let endpoint =
        configure(HubEndpoint::new(Inbox).authenticator(JwtAuthenticator::hs256(SECRET)));
    let context = endpoint.context();
    let app: axum::Router = axum::Router::new().nest("/inbox", endpoint.into_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(tidings::serve(listener, app).into_future());
    Ok((address, context))
}

/// A WebSocket connection presenting a token with `claims`.
async fn connect_with(address: SocketAddr, claims: Value) -> anyhow::Result<RawConnection> {
    let mut claims = claims;
    claims["exp"] = json!(4_000_000_000u64);
    let token = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )?;
    let path = format!("/inbox?access_token={token}");
    RawConnection::connect(address, &path, Transport::WebSockets, Protocol::Json).await
}

/// The text of the next `Note` that `connection` receives.
async fn next_note(connection: &mut RawConnection) -> anyhow::Result<String> {
    match connection.next().await? {
        Incoming::Message(HubMessage::Invocation(invocation)) if invocation.target == "Note" => {
            let argument = invocation.arguments.first().map(|a| a.deserialize());
            Ok(argument.transpose()?.unwrap_or_default())
        }
        other => anyhow::bail!("expected a Note, got {other:?}"),
    }
}

/// Sends a note to `user`.
async fn note(context: &HubContext, user: &str, text: &str) -> anyhow::Result<()> {
    context
        .clients()
        .user(user)
        .send("Note", (text.to_owned(),))
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_dotnet_name_identifier_claim_names_the_user() -> anyhow::Result<()> {
    let (address, context) = start(|endpoint| endpoint).await?;
    let uri = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier";
    let mut nia = connect_with(address, json!({ "nameid": "nia" })).await?;
    let mut uma = connect_with(address, json!({ uri: "uma" })).await?;
    let mut sue =
        connect_with(address, json!({ "sub": "sue", "email": "sue@example.com" })).await?;
    note(&context, "nia", "to nia").await?;
    note(&context, "uma", "to uma").await?;
    // Another claim does not name the user: this one reaches nobody, so
    // the next note sue receives is the one sent to "sue".
    note(&context, "sue@example.com", "to the email").await?;
    note(&context, "sue", "to sue").await?;
    assert_eq!(next_note(&mut nia).await?, "to nia");
    assert_eq!(next_note(&mut uma).await?, "to uma");
    assert_eq!(next_note(&mut sue).await?, "to sue");
    Ok(())
}

#[tokio::test]
async fn an_endpoint_may_take_the_user_from_another_claim() -> anyhow::Result<()> {
    let (address, context) = start(|endpoint| endpoint.user_id_claim("email")).await?;
    let mut ann =
        connect_with(address, json!({ "sub": "ann", "email": "ann@example.com" })).await?;
    // Without the claim, no user: `sub` is not a fallback.
    let mut bob = connect_with(address, json!({ "sub": "bob" })).await?;
    note(&context, "ann", "to sub").await?;
    note(&context, "bob", "to bob").await?;
    note(&context, "ann@example.com", "to email").await?;
    assert_eq!(next_note(&mut ann).await?, "to email");
    // The note to "bob" reached nobody: the next one bob hears is for all.
    context.clients().all().send("Note", ("to all",)).await?;
    assert_eq!(next_note(&mut bob).await?, "to all");
    Ok(())
}
