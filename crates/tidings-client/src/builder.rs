//! [`HubConnectionBuilder`]: the URL, protocol, transports, token factory, reconnect policy and
//! timeouts of a connection.

use std::{future::Future, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use tidings_protocol::{Protocol, TransportType};
use url::Url;

use crate::{
    DefaultRetryPolicy, HubConnection, RetryPolicy,
    transport::http::{BoxError, TlsConfig, TokenFactory},
};

/// Why [`HubConnectionBuilder::build`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The hub URL is not an absolute `http`, `https`, `ws` or `wss` URL.
    #[error("invalid hub URL '{url}': {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A custom header has an invalid name or value.
    #[error("invalid header '{0}'")]
    Header(String),
    /// No transport is allowed.
    #[error("at least one transport must be allowed")]
    NoTransport,
    /// A root certificate could not be read.
    #[error("invalid root certificate: {0}")]
    Certificate(String),
    /// The HTTP client could not be created (for example, TLS initialization failed).
    #[error("the HTTP client could not be created: {0}")]
    HttpClient(String),
}

/// The settings of one connection, fixed at build time.
pub(crate) struct Config {
    pub(crate) url: Url,
    pub(crate) protocol: Protocol,
    pub(crate) transports: Vec<TransportType>,
    pub(crate) skip_negotiation: bool,
    pub(crate) headers: Arc<HeaderMap>,
    pub(crate) token_factory: Option<TokenFactory>,
    pub(crate) retry: Option<Arc<dyn RetryPolicy>>,
    pub(crate) stateful_reconnect: bool,
    pub(crate) stateful_buffer_size: usize,
    pub(crate) server_timeout: Duration,
    pub(crate) keep_alive: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) http_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) tls: Option<TlsConfig>,
}

/// Builds a [`HubConnection`]. Defaults follow the official clients: JSON, every transport (in the
/// server's order), no automatic reconnect, server timeout 30 s, keep-alive 15 s, handshake timeout
/// 15 s, HTTP request timeout 100 s.
///
/// ```
/// use std::time::Duration;
/// use tidings_client::{HubConnectionBuilder, Protocol, TransportType};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let connection = HubConnectionBuilder::new("https://example.com/hubs/chat")
///     .with_protocol(Protocol::MessagePack)
///     .with_transport(TransportType::WebSockets)
///     .with_access_token_factory(|| async { Ok::<_, std::io::Error>("a token".to_owned()) })
///     .with_automatic_reconnect()
///     .with_stateful_reconnect()
///     .with_server_timeout(Duration::from_secs(60))
///     .build()?;
/// # drop(connection);
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct HubConnectionBuilder {
    url: String,
    protocol: Protocol,
    transports: Vec<TransportType>,
    skip_negotiation: bool,
    headers: Vec<(String, String)>,
    token_factory: Option<TokenFactory>,
    retry: Option<Arc<dyn RetryPolicy>>,
    stateful_reconnect: bool,
    stateful_buffer_size: usize,
    server_timeout: Duration,
    keep_alive: Duration,
    handshake_timeout: Duration,
    http_timeout: Duration,
    root_certificates: Vec<Vec<u8>>,
}

impl std::fmt::Debug for HubConnectionBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConnectionBuilder")
            .field("url", &self.url)
            .field("protocol", &self.protocol)
            .field("transports", &self.transports)
            .field("stateful_reconnect", &self.stateful_reconnect)
            .finish_non_exhaustive()
    }
}

impl HubConnectionBuilder {
    /// A builder for the hub at `url` (for example `http://127.0.0.1:5000/hubs/chat`).
    pub fn new(url: impl Into<String>) -> Self {
        HubConnectionBuilder {
            url: url.into(),
            protocol: Protocol::Json,
            transports: vec![
                TransportType::WebSockets,
                TransportType::ServerSentEvents,
                TransportType::LongPolling,
            ],
            skip_negotiation: false,
            headers: Vec::new(),
            token_factory: None,
            retry: None,
            stateful_reconnect: false,
            stateful_buffer_size: 100_000,
            server_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(15),
            http_timeout: Duration::from_secs(100),
            root_certificates: Vec::new(),
        }
    }

    /// The hub protocol: [`Protocol::Json`] (default) or [`Protocol::MessagePack`].
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Use only this transport.
    pub fn with_transport(self, transport: TransportType) -> Self {
        self.with_transports([transport])
    }

    /// Allow only these transports; they are tried in the order the server lists them.
    pub fn with_transports(mut self, transports: impl IntoIterator<Item = TransportType>) -> Self {
        self.transports = transports.into_iter().collect();
        self
    }

    /// Skip the negotiate request and open a WebSocket directly (WebSockets only, like the
    /// official clients; the connection id is then unknown).
    pub fn skip_negotiation(mut self) -> Self {
        self.skip_negotiation = true;
        self
    }

    /// A header sent with every HTTP request and the WebSocket upgrade.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A source of bearer tokens, called before negotiating (and when a request gets `401`).
    pub fn with_access_token_factory<F, Fut, E>(mut self, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.token_factory = Some(Arc::new(move || {
            let fut = factory();
            Box::pin(async move { fut.await.map_err(Into::into) })
        }));
        self
    }

    /// Reconnect automatically after a connection loss, waiting 0, 2, 10 and 30 seconds before the
    /// attempts, like the official clients ([`DefaultRetryPolicy`]).
    pub fn with_automatic_reconnect(self) -> Self {
        self.with_retry_policy(DefaultRetryPolicy::new())
    }

    /// Reconnect automatically with these delays, one per attempt.
    pub fn with_automatic_reconnect_delays(
        self,
        delays: impl IntoIterator<Item = Duration>,
    ) -> Self {
        self.with_retry_policy(DefaultRetryPolicy::with_delays(delays))
    }

    /// Reconnect automatically as `policy` decides.
    pub fn with_retry_policy(mut self, policy: impl RetryPolicy) -> Self {
        self.retry = Some(Arc::new(policy));
        self
    }

    /// Ask for stateful reconnect: if the server agrees (WebSockets only), a dropped WebSocket is
    /// reopened for the same connection and no message is lost or duplicated.
    pub fn with_stateful_reconnect(mut self) -> Self {
        self.stateful_reconnect = true;
        self
    }

    /// How many bytes of unacknowledged messages stateful reconnect keeps before sends wait
    /// (default 100 000).
    pub fn with_stateful_reconnect_buffer_size(mut self, bytes: usize) -> Self {
        self.stateful_buffer_size = bytes;
        self
    }

    /// Close the connection if nothing arrives from the server for this long (default 30 s).
    pub fn with_server_timeout(mut self, timeout: Duration) -> Self {
        self.server_timeout = timeout;
        self
    }

    /// Send a Ping when nothing was sent for this long (default 15 s).
    pub fn with_keep_alive_interval(mut self, interval: Duration) -> Self {
        self.keep_alive = interval;
        self
    }

    /// How long to wait for the handshake answer (default 15 s).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Timeout of negotiate, POST and DELETE requests and of each long poll (default 100 s).
    pub fn with_http_timeout(mut self, timeout: Duration) -> Self {
        self.http_timeout = timeout;
        self
    }

    /// Trust the certificates in `pem` (PEM, one or more) for `https`/`wss`, besides the public
    /// roots of `webpki-roots` (feature `rustls`).
    #[cfg(feature = "rustls")]
    pub fn with_root_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates.push(pem.into());
        self
    }

    /// Checks the settings and creates the (not yet started) connection.
    pub fn build(self) -> Result<HubConnection, BuildError> {
        let url = Url::parse(&self.url).map_err(|e| BuildError::Url {
            url: self.url.clone(),
            reason: e.to_string(),
        })?;
        let mut url = url;
        match url.scheme() {
            "http" | "https" => {}
            // The hub URL of the HTTP requests; the WebSocket URL is derived from it.
            "ws" | "wss" => {
                let scheme = if url.scheme() == "ws" {
                    "http"
                } else {
                    "https"
                };
                url.set_scheme(scheme).map_err(|()| BuildError::Url {
                    url: self.url.clone(),
                    reason: "cannot change the scheme".into(),
                })?;
            }
            other => {
                return Err(BuildError::Url {
                    url: self.url,
                    reason: format!("unsupported scheme '{other}'"),
                });
            }
        }
        if self.transports.is_empty() {
            return Err(BuildError::NoTransport);
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("tidings-client/", env!("CARGO_PKG_VERSION"))),
        );
        headers.insert(
            HeaderName::from_static("x-requested-with"),
            HeaderValue::from_static("XMLHttpRequest"),
        );
        for (name, value) in &self.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| BuildError::Header(name.clone()))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| BuildError::Header(name.to_string()))?;
            headers.insert(name, value);
        }
        let tls = tls_config(&self.root_certificates)?;
        let client = reqwest::Client::builder();
        #[cfg(feature = "rustls")]
        let client = match &tls {
            Some(config) => client.use_preconfigured_tls(rustls::ClientConfig::clone(config)),
            None => client,
        };
        let client = client
            .build()
            .map_err(|e| BuildError::HttpClient(e.to_string()))?;
        let config = Config {
            url,
            protocol: self.protocol,
            transports: self.transports,
            skip_negotiation: self.skip_negotiation,
            headers: Arc::new(headers),
            token_factory: self.token_factory,
            retry: self.retry,
            stateful_reconnect: self.stateful_reconnect,
            stateful_buffer_size: self.stateful_buffer_size,
            server_timeout: self.server_timeout,
            keep_alive: self.keep_alive,
            handshake_timeout: self.handshake_timeout,
            http_timeout: self.http_timeout,
            close_timeout: Duration::from_secs(5),
            tls,
        };
        Ok(HubConnection::new(config, client))
    }
}

/// The TLS configuration with the extra root certificates, if any were given.
#[cfg(feature = "rustls")]
fn tls_config(pems: &[Vec<u8>]) -> Result<Option<TlsConfig>, BuildError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};

    if pems.is_empty() {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for pem in pems {
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|e| BuildError::Certificate(e.to_string()))?;
            roots
                .add(certificate)
                .map_err(|e| BuildError::Certificate(e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

#[cfg(not(feature = "rustls"))]
fn tls_config(_pems: &[Vec<u8>]) -> Result<Option<TlsConfig>, BuildError> {
    Ok(None)
}
