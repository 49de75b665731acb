//! JWT bearer authentication with roles. Every connection needs a valid
//! HS256 token (negotiate answers 401 without one); `WhoAmI()` is open to
//! any signed-in user, `Purge()` only to the role `Admin`: anyone else gets
//! the error "Failed to invoke 'Purge' because user is unauthorized" and
//! stays connected. `sub` is the user id, `role`/`roles` claims are roles.
//!
//! ```sh
//! export JWT_SECRET=a-secret-of-your-own
//! cargo run -p example-jwt-roles                          # serve (LISTEN=127.0.0.1:0: a free port)
//! cargo run -p example-jwt-roles -- token ann Admin       # print a token for trying it
//! ```
//!
//! In production the tokens come from your identity provider; the `token`
//! command only exists to try the server.
//!
//! ```js
//! import * as signalR from "@microsoft/signalr";
//! const c = new signalR.HubConnectionBuilder()
//!   .withUrl("http://127.0.0.1:5000/hubs/admin", { accessTokenFactory: () => process.env.TOKEN })
//!   .build();
//! await c.start();
//! console.log(await c.invoke("WhoAmI"), await c.invoke("Purge"));
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tidings::{Context, JwtAuthenticator, Server, hub};

/// Only for trying the example: a real deployment reads its secret from
/// its configuration and never ships a default.
const DEV_SECRET: &str = "example-secret-change-me";

struct Admin;

#[hub(authorize)]
impl Admin {
    async fn who_am_i(&self, cx: &Context) -> String {
        cx.user_identifier().unwrap_or_default().to_owned()
    }

    #[authorize(roles = "Admin")]
    async fn purge(&self, cx: &Context) -> String {
        format!("purged by {}", cx.user_identifier().unwrap_or_default())
    }
}

/// An HS256 token for `user` with `roles`, valid for an hour.
fn token(secret: &str, user: &str, roles: &[String]) -> jsonwebtoken::errors::Result<String> {
    let exp = (SystemTime::now() + Duration::from_secs(3600))
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({ "sub": user, "roles": roles, "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| DEV_SECRET.to_owned());
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [command, user, roles @ ..] = args.as_slice()
        && command == "token"
    {
        println!("{}", token(&secret, user, roles)?);
        return Ok(());
    }

    // The authenticator is the server's: every hub added here shares it.
    let server = Server::builder()
        .authenticator(JwtAuthenticator::hs256(secret.as_bytes()))
        .hub("/hubs/admin", Admin)
        .build();
    let app: axum::Router = server.into_router();
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:5000".to_owned());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
