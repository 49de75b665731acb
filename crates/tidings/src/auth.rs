//! Who is connecting: [`Principal`] (user identifier and claims) and the
//! [`Authenticator`] hook that derives it from the HTTP request.
//!
//! tidings does not validate credentials itself here; an authenticator (for
//! example a JWT validator) turns request headers into a principal, exactly as
//! ASP.NET Core's authentication middleware fills `HttpContext.User` before
//! SignalR sees the request. It runs on negotiate and again on the transport
//! request, because both carry the token.

use std::{fmt, sync::Arc};

use axum::http::request::Parts;

use crate::hub::BoxFuture;

/// The authenticated user of a connection.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Principal {
    user_id: Option<String>,
    claims: Vec<(String, String)>,
}

impl Principal {
    /// The anonymous principal: no user identifier, no claims.
    pub fn anonymous() -> Self {
        Principal::default()
    }

    /// A principal with a user identifier (what `Clients.User(id)` targets).
    pub fn user(user_id: impl Into<String>) -> Self {
        Principal {
            user_id: Some(user_id.into()),
            claims: Vec::new(),
        }
    }

    /// Adds a claim. A claim type may occur several times (e.g. `role`).
    pub fn with_claim(mut self, kind: impl Into<String>, value: impl Into<String>) -> Self {
        self.claims.push((kind.into(), value.into()));
        self
    }

    /// The user identifier, if the user is authenticated.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// Whether this principal is authenticated (has a user identifier or claims).
    pub fn is_authenticated(&self) -> bool {
        self.user_id.is_some() || !self.claims.is_empty()
    }

    /// The first value of a claim.
    pub fn claim(&self, kind: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a claim.
    pub fn claim_values<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.claims
            .iter()
            .filter(move |(k, _)| k == kind)
            .map(|(_, v)| v.as_str())
    }

    /// All claims, in insertion order.
    pub fn claims(&self) -> impl Iterator<Item = (&str, &str)> {
        self.claims.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl fmt::Debug for Principal {
    // Claims are user data; print their kinds, not their values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("user_id", &self.user_id)
            .field(
                "claims",
                &self.claims.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No or invalid credentials: answered with `401 Unauthorized`.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Valid credentials without the right to connect: `403 Forbidden`.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

/// Derives the [`Principal`] of a request.
///
/// Return `Ok(Principal::anonymous())` for requests without credentials if
/// anonymous users may connect, `Err(AuthError::Unauthorized)` to refuse them.
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates one HTTP request (negotiate or transport).
    fn authenticate<'a>(
        &'a self,
        request: &'a Parts,
    ) -> BoxFuture<'a, Result<Principal, AuthError>>;
}

impl<F> Authenticator for F
where
    F: Fn(&Parts) -> Result<Principal, AuthError> + Send + Sync + 'static,
{
    fn authenticate<'a>(
        &'a self,
        request: &'a Parts,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        let result = self(request);
        Box::pin(async move { result })
    }
}

pub(crate) type SharedAuthenticator = Arc<dyn Authenticator>;

/// The token a request carries: the `Authorization: Bearer` header or, for
/// browsers that cannot set headers on WebSocket and EventSource requests,
/// the `access_token` query parameter.
pub fn bearer_token(request: &Parts) -> Option<String> {
    if let Some(value) = request.headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    let query = request.uri.query()?;
    form_urlencoded_pairs(query)
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v)
}

/// Decodes `application/x-www-form-urlencoded` pairs (a URL query).
pub(crate) fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|s| !s.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_pairs() {
        let pairs: Vec<_> =
            form_urlencoded_pairs("a=1&access_token=x%2By+z&empty&bad=%zz&end=%4").collect();
        assert_eq!(pairs[0], ("a".into(), "1".into()));
        assert_eq!(pairs[1], ("access_token".into(), "x+y z".into()));
        assert_eq!(pairs[2], ("empty".into(), "".into()));
        assert_eq!(pairs[3], ("bad".into(), "%zz".into()));
        assert_eq!(pairs[4], ("end".into(), "%4".into()));
    }

    #[test]
    fn principal_claims() {
        let p = Principal::user("u1")
            .with_claim("role", "admin")
            .with_claim("role", "ops")
            .with_claim("name", "Ann");
        assert_eq!(p.user_id(), Some("u1"));
        assert_eq!(p.claim("name"), Some("Ann"));
        assert_eq!(p.claim_values("role").collect::<Vec<_>>(), ["admin", "ops"]);
        assert!(!format!("{p:?}").contains("Ann"));
        assert!(!Principal::anonymous().is_authenticated());
    }
}
