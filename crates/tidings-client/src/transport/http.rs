//! HTTP requests of one connection attempt: negotiate, SSE and poll GETs, POSTed sends and the
//! Long Polling DELETE, each with the user's headers and the bearer token.
//!
//! Token handling follows the JavaScript client: negotiate fetches a fresh token from the factory,
//! later requests reuse it, and a `401` is retried once with a fresh token. A negotiate redirect
//! with an `accessToken` replaces the factory for the rest of the attempt.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use url::Url;

use crate::TransportError;

use super::TransportEvent;

/// An error from an access token factory.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;
pub(crate) type TokenFactory = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// The bearer token of one connection attempt.
pub(crate) struct Auth {
    factory: Mutex<Option<TokenFactory>>,
    token: Mutex<Option<String>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    pub(crate) fn new(factory: Option<TokenFactory>) -> Arc<Auth> {
        Arc::new(Auth {
            factory: Mutex::new(factory),
            token: Mutex::new(None),
        })
    }

    fn factory(&self) -> Option<TokenFactory> {
        self.factory.lock().clone()
    }

    fn cached(&self) -> Option<String> {
        self.token.lock().clone()
    }

    /// Asks the factory for a new token (if there is one) and caches it.
    pub(crate) async fn refresh(&self) -> Result<Option<String>, TransportError> {
        let Some(factory) = self.factory() else {
            return Ok(self.cached());
        };
        let token = factory()
            .await
            .map_err(|e| TransportError::AccessToken(e.to_string()))?;
        *self.token.lock() = Some(token.clone());
        Ok(Some(token))
    }

    /// The cached token, or a new one if none was fetched yet.
    pub(crate) async fn current(&self) -> Result<Option<String>, TransportError> {
        match self.cached() {
            Some(token) => Ok(Some(token)),
            None => self.refresh().await,
        }
    }

    /// A redirect's token: used as is from now on.
    pub(crate) fn set_fixed(&self, token: String) {
        *self.factory.lock() = None;
        *self.token.lock() = Some(token);
    }

    fn can_refresh(&self) -> bool {
        self.factory().is_some()
    }
}

/// Adds `Authorization: Bearer …` when there is a token.
pub(crate) fn bearer(headers: &mut HeaderMap, token: Option<&str>) -> Result<(), TransportError> {
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            TransportError::AccessToken("the token is not a valid header value".into())
        })?;
        headers.insert(header::AUTHORIZATION, value);
    }
    Ok(())
}

/// The TLS client configuration shared by HTTP requests and WebSockets (feature `rustls`).
#[cfg(feature = "rustls")]
pub(crate) type TlsConfig = Arc<rustls::ClientConfig>;
/// Without the `rustls` feature there is no TLS configuration (this type has no values).
#[cfg(not(feature = "rustls"))]
#[derive(Clone, Debug)]
pub(crate) enum TlsConfig {}

/// The HTTP side of one connection attempt.
#[derive(Clone, Debug)]
pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
    pub(crate) headers: Arc<HeaderMap>,
    pub(crate) auth: Arc<Auth>,
    /// Timeout of negotiate, POST, DELETE and each poll.
    pub(crate) timeout: Duration,
    /// Custom TLS settings for WebSockets (HTTP requests have them in `client`).
    pub(crate) tls: Option<TlsConfig>,
}

impl Http {
    /// Sends one request; a `401` is retried once with a fresh token. `timeout: None` means no
    /// timeout (the SSE stream).
    pub(crate) async fn request(
        &self,
        method: Method,
        url: &Url,
        body: Option<Bytes>,
        extra: &[(header::HeaderName, &'static str)],
        timeout: Option<Duration>,
        fresh_token: bool,
    ) -> Result<reqwest::Response, TransportError> {
        let mut token = if fresh_token {
            self.auth.refresh().await?
        } else {
            self.auth.current().await?
        };
        let mut retried = false;
        loop {
            let mut headers = (*self.headers).clone();
            for (name, value) in extra {
                headers.insert(name.clone(), HeaderValue::from_static(value));
            }
            bearer(&mut headers, token.as_deref())?;
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers);
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            let response = request
                .send()
                .await
                .map_err(|e| TransportError::Http(error_chain(&e)))?;
            if response.status() == StatusCode::UNAUTHORIZED && !retried && self.auth.can_refresh()
            {
                retried = true;
                token = self.auth.refresh().await?;
                continue;
            }
            return Ok(response);
        }
    }
}

/// A reqwest error with its causes ("error sending request: connection refused").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The error for an unexpected status: the body text, or the reason phrase if the body is empty.
pub(crate) async fn status_error(response: reqwest::Response) -> TransportError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    TransportError::Status {
        status: status.as_u16(),
        body: if body.is_empty() {
            status.canonical_reason().unwrap_or("").to_owned()
        } else {
            body
        },
    }
}

/// Sends queued frames by POST (SSE and Long Polling), several per request when they queue up.
/// When the connection task stops sending, Long Polling ends the connection with a DELETE. A failed
/// POST ends the transport, as in the .NET client.
pub(crate) async fn post_loop(
    http: Http,
    url: Url,
    mut outgoing: mpsc::Receiver<Bytes>,
    incoming: mpsc::Sender<TransportEvent>,
    delete_on_close: bool,
) {
    let mut batch = Vec::with_capacity(16);
    loop {
        if outgoing.recv_many(&mut batch, 64).await == 0 {
            if delete_on_close {
                // The server answers 202; the pending poll then ends with 204.
                let _ = http
                    .request(Method::DELETE, &url, None, &[], Some(http.timeout), false)
                    .await;
            }
            return;
        }
        let body = if batch.len() == 1 {
            batch.pop().unwrap_or_default()
        } else {
            let mut joined = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
            for frame in batch.drain(..) {
                joined.extend_from_slice(&frame);
            }
            joined.freeze()
        };
        let failure = match http
            .request(
                Method::POST,
                &url,
                Some(body),
                &[],
                Some(http.timeout),
                false,
            )
            .await
        {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(status_error(response).await),
            Err(e) => Some(e),
        };
        if let Some(error) = failure {
            tracing::debug!(%error, "sending by POST failed");
            let _ = incoming.send(TransportEvent::Closed(Some(error))).await;
            return;
        }
    }
}
