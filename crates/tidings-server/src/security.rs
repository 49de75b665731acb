//! The standalone server's security settings: JWT bearer authentication,
//! allowed browser origins (CORS and the WebSocket `Origin` check),
//! connection limits, the per-connection rate limit and the request body
//! limit (their settings are in [`crate::config`]), and their application
//! to every hub endpoint.

use std::sync::Arc;

use anyhow::Context as _;
use tidings::{ConnectionLimits, Hub, HubEndpoint, HubOptions, JwtAuthenticator, RateLimiter};

use crate::config::{AuthSettings, CorsSettings, LimitsSettings, Settings};

/// The security settings, loaded (keys read) and shared by every hub.
#[derive(Debug, Clone)]
pub(crate) struct Security {
    auth: AuthSettings,
    cors: CorsSettings,
    limits_settings: LimitsSettings,
    jwt: Option<Arc<JwtAuthenticator>>,
    limits: Option<ConnectionLimits>,
}

impl Security {
    /// Reads the key file, if any. `hs256_secret` is the secret of HS256
    /// tokens: `--jwt-secret`, or one made up for the demo tokens.
    pub(crate) fn new(settings: &Settings, hs256_secret: Option<&str>) -> anyhow::Result<Self> {
        let (auth, limits) = (&settings.auth, &settings.limits);
        let jwt = match (hs256_secret, &auth.jwt_public_key) {
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
            if let Some(issuer) = &auth.jwt_issuer {
                jwt = jwt.issuer(issuer);
            }
            if let Some(audience) = &auth.jwt_audience {
                jwt = jwt.audience(audience);
            }
            if !auth.jwt_require_exp {
                jwt = jwt.allow_missing_expiry();
            }
            Arc::new(jwt.leeway(auth.jwt_leeway.0))
        });
        let connection_limits = (limits.max_connections > 0 || limits.max_connections_per_ip > 0)
            .then(|| {
                let mut connection_limits = ConnectionLimits::new();
                if limits.max_connections > 0 {
                    connection_limits = connection_limits.max_connections(limits.max_connections);
                }
                if limits.max_connections_per_ip > 0 {
                    connection_limits =
                        connection_limits.max_connections_per_ip(limits.max_connections_per_ip);
                }
                connection_limits.trusted_proxies(limits.trusted_proxies.iter().copied())
            });
        Ok(Security {
            auth: auth.clone(),
            cors: settings.cors.clone(),
            limits_settings: limits.clone(),
            jwt,
            limits: connection_limits,
        })
    }

    /// The hub options these settings change.
    pub(crate) fn hub_options(&self, options: HubOptions) -> HubOptions {
        options
            .close_on_authentication_expiration(self.auth.close_on_auth_expiration)
            .maximum_request_body_size(self.limits_settings.max_request_body)
    }

    /// Installs authentication, origins, limits and the rate limit on an endpoint.
    pub(crate) fn apply<H: Hub>(&self, mut endpoint: HubEndpoint<H>) -> HubEndpoint<H> {
        if let Some(jwt) = &self.jwt {
            let jwt = Arc::clone(jwt);
            endpoint = endpoint
                .authenticator(move |parts: &axum::http::request::Parts| jwt.principal(parts));
        }
        if let Some(claim) = &self.auth.user_id_claim {
            endpoint = endpoint.user_id_claim(claim);
        }
        if !self.cors.allowed_origins.is_empty() {
            endpoint = endpoint.allowed_origins(&self.cors.allowed_origins);
        }
        endpoint = endpoint.cors_credentials(self.cors.credentials);
        if let Some(limits) = &self.limits {
            endpoint = endpoint.connection_limits(limits);
        }
        if self.limits_settings.rate_limit_burst > 0 {
            endpoint = endpoint.filter(RateLimiter::new(
                self.limits_settings.rate_limit_burst,
                self.limits_settings.rate_limit_per_second,
            ));
        }
        endpoint
    }
}
