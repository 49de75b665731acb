//! The standalone server's security settings: JWT bearer authentication,
//! allowed browser origins (CORS and the WebSocket `Origin` check),
//! connection limits, the per-connection rate limit and the request body
//! limit — as command-line options (each also an environment variable),
//! and their application to every hub endpoint.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tidings::{
    ConnectionLimits, Hub, HubEndpoint, HubOptions, JwtAuthenticator, RateLimiter, TrustedProxy,
};

/// Security options of the standalone server.
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// Secret for HS256 bearer tokens. Without it (and without
    /// --jwt-public-key) every client is anonymous.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file with the RSA (RS256) or EC (ES256) public key that verifies bearer tokens.
    #[arg(long, env = "TIDINGS_JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `iss` claim of bearer tokens.
    #[arg(long, env = "TIDINGS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim of bearer tokens.
    #[arg(long, env = "TIDINGS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Accept tokens this many seconds past their expiry (clock skew).
    #[arg(long, env = "TIDINGS_JWT_LEEWAY_SECS", default_value_t = 0)]
    pub jwt_leeway_secs: u64,

    /// Refuse tokens without an `exp` claim (as ASP.NET Core does by
    /// default); `false` accepts them, and they never expire.
    #[arg(
        long,
        env = "TIDINGS_JWT_REQUIRE_EXP",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub jwt_require_exp: bool,

    /// The claim whose value is the user id (`Clients.User`, send-to-user),
    /// e.g. `email`. Default: the first of `sub`, `nameid` and
    /// `http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier`
    /// in the token, as ASP.NET Core reads it.
    #[arg(long, env = "TIDINGS_USER_ID_CLAIM")]
    pub user_id_claim: Option<String>,

    /// Close connections when their token expires.
    #[arg(
        long,
        env = "TIDINGS_CLOSE_ON_AUTH_EXPIRATION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub close_on_auth_expiration: bool,

    /// Browser origins allowed besides the server's own (comma-separated,
    /// `https://app.example`, or `*`): CORS on negotiate and the HTTP
    /// transports, and the WebSocket `Origin` allow-list.
    #[arg(long, env = "TIDINGS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Let cross-origin requests carry credentials (Access-Control-Allow-Credentials).
    #[arg(
        long,
        env = "TIDINGS_CORS_CREDENTIALS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub cors_credentials: bool,

    /// Most live connections in all (503 beyond; 0 = no limit).
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Most live connections from one IP address (429 beyond; 0 = no limit).
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Reverse proxies whose Forwarded or X-Forwarded-For header names the
    /// client for the per-IP limit (comma-separated addresses or networks:
    /// `10.0.0.0/8`).
    #[arg(long, env = "TIDINGS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<TrustedProxy>,

    /// Invocations one connection may make at once before the rate limit
    /// applies (0 = no rate limit).
    #[arg(long, env = "TIDINGS_RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,

    /// Invocations per second one connection regains under the rate limit.
    #[arg(long, env = "TIDINGS_RATE_LIMIT_PER_SECOND", default_value_t = 10.0)]
    pub rate_limit_per_second: f64,

    /// Largest body of one Server-Sent Events or Long Polling POST, in bytes (413 beyond).
    #[arg(long, env = "TIDINGS_MAX_REQUEST_BODY", default_value_t = 2 << 20)]
    pub max_request_body: usize,
}

/// The security settings, loaded (keys read) and shared by every hub.
#[derive(Debug, Clone)]
pub struct Security {
    args: SecurityArgs,
    jwt: Option<Arc<JwtAuthenticator>>,
    limits: Option<ConnectionLimits>,
}

impl Security {
    /// Reads the key file, if any. `hs256_secret` is the secret of HS256
    /// tokens: `--jwt-secret`, or one made up for the demo tokens.
    pub fn new(args: &SecurityArgs, hs256_secret: Option<&str>) -> anyhow::Result<Self> {
        let jwt = match (hs256_secret, &args.jwt_public_key) {
            (Some(_), Some(_)) => {
                anyhow::bail!(
                    "--demo-tokens signs HS256 tokens and cannot be used with --jwt-public-key"
                )
            }
            (Some(secret), None) => Some(JwtAuthenticator::hs256(secret.as_bytes())),
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Some(
                    JwtAuthenticator::from_public_key_pem(&pem)
                        .with_context(|| format!("cannot use {}", path.display()))?,
                )
            }
            (None, None) => None,
        };
        let jwt = jwt.map(|mut jwt| {
            if let Some(issuer) = &args.jwt_issuer {
                jwt = jwt.issuer(issuer);
            }
            if let Some(audience) = &args.jwt_audience {
                jwt = jwt.audience(audience);
            }
            if !args.jwt_require_exp {
                jwt = jwt.allow_missing_expiry();
            }
            Arc::new(jwt.leeway(Duration::from_secs(args.jwt_leeway_secs)))
        });
        let limits = (args.max_connections > 0 || args.max_connections_per_ip > 0).then(|| {
            let mut limits = ConnectionLimits::new();
            if args.max_connections > 0 {
                limits = limits.max_connections(args.max_connections);
            }
            if args.max_connections_per_ip > 0 {
                limits = limits.max_connections_per_ip(args.max_connections_per_ip);
            }
            limits.trusted_proxies(args.trusted_proxies.iter().copied())
        });
        Ok(Security {
            args: args.clone(),
            jwt,
            limits,
        })
    }

    /// The hub options these settings change.
    pub fn hub_options(&self, options: HubOptions) -> HubOptions {
        options
            .close_on_authentication_expiration(self.args.close_on_auth_expiration)
            .maximum_request_body_size(self.args.max_request_body)
    }

    /// Installs authentication, origins, limits and the rate limit on an endpoint.
    pub fn apply<H: Hub>(&self, mut endpoint: HubEndpoint<H>) -> HubEndpoint<H> {
        if let Some(jwt) = &self.jwt {
            let jwt = Arc::clone(jwt);
            endpoint = endpoint
                .authenticator(move |parts: &axum::http::request::Parts| jwt.principal(parts));
        }
        if let Some(claim) = &self.args.user_id_claim {
            endpoint = endpoint.user_id_claim(claim);
        }
        if !self.args.allowed_origins.is_empty() {
            endpoint = endpoint.allowed_origins(&self.args.allowed_origins);
        }
        endpoint = endpoint.cors_credentials(self.args.cors_credentials);
        if let Some(limits) = &self.limits {
            endpoint = endpoint.connection_limits(limits);
        }
        if self.args.rate_limit_burst > 0 {
            endpoint = endpoint.filter(RateLimiter::new(
                self.args.rate_limit_burst,
                self.args.rate_limit_per_second,
            ));
        }
        endpoint
    }
}
