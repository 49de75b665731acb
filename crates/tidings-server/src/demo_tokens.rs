//! `POST /demo/token`: signs an HS256 token for any user name, so that the
//! demo app (`/`) can sign people in without an identity provider. Served
//! only with `--demo-tokens`: whoever reaches it can act as any user.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde::{Deserialize, Serialize};

/// How long a demo token is valid; the app asks for a new one on every
/// (re)connection, so it never sees one expire.
const LIFETIME: Duration = Duration::from_secs(3600);

/// Longest user name accepted, in characters.
const MAX_NAME_CHARS: usize = 32;

/// A secret for the tokens when none is configured: 32 random bytes, in
/// hex. Tokens signed with it stop verifying when the server restarts.
pub(crate) fn random_secret() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What demo tokens are signed with and say about where they come from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DemoTokenSettings<'a> {
    /// The HS256 secret the server verifies tokens with.
    pub secret: &'a str,
    /// The `iss` claim, when the server requires one.
    pub issuer: Option<&'a str>,
    /// The `aud` claim, when the server requires one.
    pub audience: Option<&'a str>,
}

/// The token endpoint, or nothing when `settings` is `None`.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(
    settings: Option<DemoTokenSettings<'_>>,
) -> Router<S> {
    let Some(settings) = settings else {
        return Router::new();
    };
    tracing::warn!("demo tokens on: POST /demo/token signs a token for any user name");
    let tokens = DemoTokens {
        key: Arc::new(EncodingKey::from_secret(settings.secret.as_bytes())),
        issuer: settings.issuer.map(Arc::from),
        audience: settings.audience.map(Arc::from),
    };
    Router::new()
        .route("/demo/token", post(issue))
        .with_state(tokens)
}

#[derive(Clone)]
struct DemoTokens {
    key: Arc<EncodingKey>,
    issuer: Option<Arc<str>>,
    audience: Option<Arc<str>>,
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    user: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    user: String,
    token: String,
    expires_in: u64,
}

/// The claims of a demo token: `sub` is the user id (what notifications to
/// a user target), `name` the display name in the chat; `iss` and `aud`
/// as the server requires them.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: &'a str,
    name: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Why no token was issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
enum TokenError {
    #[error("the user name must have 1 to {MAX_NAME_CHARS} characters and no control characters")]
    BadName,
    #[error("cannot sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let status = match self {
            TokenError::BadName => StatusCode::BAD_REQUEST,
            TokenError::Sign(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, self.to_string()).into_response()
    }
}

async fn issue(
    State(tokens): State<DemoTokens>,
    Json(request): Json<TokenRequest>,
) -> Result<Json<TokenResponse>, TokenError> {
    let user = request.user.trim();
    let chars = user.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || user.chars().any(char::is_control) {
        return Err(TokenError::BadName);
    }
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub: user,
        name: user,
        iat,
        exp: iat + LIFETIME.as_secs(),
        iss: tokens.issuer.as_deref(),
        aud: tokens.audience.as_deref(),
    };
    let token = encode(&Header::default(), &claims, &tokens.key).map_err(TokenError::Sign)?;
    Ok(Json(TokenResponse {
        user: user.to_owned(),
        token,
        expires_in: LIFETIME.as_secs(),
    }))
}
