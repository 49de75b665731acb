//! [`NegotiateRedirect`]: the negotiate answer that sends a client to
//! another server.
//!
//! An application that keeps its own HTTP endpoints but lets a tidings
//! service hold the client connections answers its own `POST
//! {hub}/negotiate` with `{"url": …, "accessToken": …}`. The official
//! clients then negotiate again at `url`, sending `accessToken` as their
//! bearer token from then on — the same handshake Azure SignalR Service
//! uses.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use tidings_protocol::NegotiateResponse;

/// Redirects a negotiating client: `{"url": …, "accessToken": …}`.
///
/// ```
/// use axum::routing::post;
/// use tidings::NegotiateRedirect;
///
/// // The application's own negotiate route sends clients to the service,
/// // with a token it minted for the signed-in user.
/// let app: axum::Router = axum::Router::new().route(
///     "/hubs/chat/negotiate",
///     post(|| async {
///         NegotiateRedirect::new("https://rt.example.com/hubs/chat", Some("eyJ…".to_owned()))
///     }),
/// );
/// # let _ = app;
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct NegotiateRedirect {
    url: String,
    access_token: Option<String>,
}

impl std::fmt::Debug for NegotiateRedirect {
    // The token is a credential: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NegotiateRedirect")
            .field("url", &self.url)
            .field("access_token", &self.access_token.as_ref().map(|_| ".."))
            .finish()
    }
}

impl NegotiateRedirect {
    /// Sends the client to the hub at `url` (where it will `POST
    /// {url}/negotiate`), with `access_token` as its bearer token there.
    pub fn new(url: impl Into<String>, access_token: Option<String>) -> Self {
        NegotiateRedirect {
            url: url.into(),
            access_token,
        }
    }

    /// Where the client goes.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl IntoResponse for NegotiateRedirect {
    fn into_response(self) -> Response {
        let body = NegotiateResponse::redirect(self.url, self.access_token);
        match serde_json::to_vec(&body) {
            Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_body_is_the_redirect_form() {
        let response =
            NegotiateRedirect::new("http://svc/hubs/chat", Some("t0k3n".into())).into_response();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(
            &body[..],
            br#"{"url":"http://svc/hubs/chat","accessToken":"t0k3n"}"#
        );
        let shown = format!("{:?}", NegotiateRedirect::new("u", Some("secret".into())));
        assert!(!shown.contains("secret"));
    }
}
