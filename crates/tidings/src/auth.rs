//! Who is connecting and what they may do: [`Principal`] (user identifier,
//! claims, expiry), the [`Authenticator`] hook that derives it from the HTTP
//! request, and the requirements ([`Authorize`], named policies) that hubs
//! and methods place on it.
//!
//! tidings does not validate credentials itself here; an authenticator (for
//! example a JWT validator) turns request headers into a principal, exactly as
//! ASP.NET Core's authentication middleware fills `HttpContext.User` before
//! SignalR sees the request. It runs on negotiate and again on the transport
//! request, because both carry the token.

use std::{collections::HashMap, fmt, sync::Arc, time::SystemTime};

use axum::http::request::Parts;

use crate::connections::handler::BoxFuture;

/// The authenticated user of a connection.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Principal {
    user_id: Option<String>,
    claims: Vec<(String, String)>,
    expires_at: Option<SystemTime>,
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
            expires_at: None,
        }
    }

    /// Sets when the credentials expire (a token's `exp`): an open
    /// connection is closed then (see
    /// [`HubOptions::close_on_authentication_expiration`](crate::HubOptions::close_on_authentication_expiration)).
    pub fn with_expiry(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// When the credentials expire, if they do.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Whether one of the principal's `role` or `roles` claims is `role`.
    pub fn is_in_role(&self, role: &str) -> bool {
        self.claims
            .iter()
            .any(|(k, v)| (k == "role" || k == "roles") && v == role)
    }

    /// Replaces the user identifier (what a user-id provider decides).
    pub(crate) fn set_user_id(&mut self, user_id: Option<String>) {
        self.user_id = user_id;
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
            .field("expires_at", &self.expires_at)
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

/// Chooses the user identifier of a principal (ASP.NET Core's
/// `IUserIdProvider`); the default keeps what the authenticator set (the
/// name-identifier claim of a JWT).
pub(crate) type UserIdProvider = Arc<dyn Fn(&Principal) -> Option<String> + Send + Sync>;

/// What a hub or a hub method requires of the caller: an authenticated
/// user, and optionally one of a set of roles and a named policy.
///
/// Written with attributes rather than by hand:
///
/// ```
/// use tidings::{Context, HubError, hub};
///
/// struct Admin;
///
/// #[hub(authorize)] // every connection must be authenticated
/// impl Admin {
///     #[authorize(roles = "Admin, Ops")] // one of these roles
///     async fn purge(&self) {}
///
///     #[authorize(policy = "employees")] // HubEndpoint::policy("employees", …)
///     async fn payroll(&self) {}
/// }
/// ```
///
/// A hub-level requirement is checked when the client negotiates and when
/// its transport connects (`401` without a user, `403` otherwise); a
/// method-level one at each invocation, which fails with ASP.NET Core's
/// `Failed to invoke 'X' because user is unauthorized` while the connection
/// stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorize {
    roles: &'static [&'static str],
    policy: Option<&'static str>,
}

impl Authorize {
    /// A requirement: authenticated, in one of `roles` (none: any role),
    /// and satisfying the named policy if one is given.
    pub const fn new(roles: &'static [&'static str], policy: Option<&'static str>) -> Self {
        Authorize { roles, policy }
    }

    /// The roles of which the caller needs one (empty: no role needed).
    pub fn roles(&self) -> &'static [&'static str] {
        self.roles
    }

    /// The named policy the caller must satisfy.
    pub fn policy(&self) -> Option<&'static str> {
        self.policy
    }
}

/// A policy: a predicate over the caller's principal.
pub(crate) type Policy = Arc<dyn Fn(&Principal) -> bool + Send + Sync>;

/// Why a requirement was not met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No user: `401`.
    Unauthenticated,
    /// A user without the right: `403`.
    Forbidden,
}

/// The named policies of an endpoint.
#[derive(Clone, Default)]
pub(crate) struct Policies {
    by_name: HashMap<String, Policy>,
}

impl Policies {
    pub(crate) fn insert(&mut self, name: String, policy: Policy) {
        self.by_name.insert(name, policy);
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Checks `requirement` against `principal`. An unknown policy name
    /// denies: a missing rule must not open a door.
    pub(crate) fn check(
        &self,
        requirement: &Authorize,
        principal: &Principal,
    ) -> Result<(), Denied> {
        if !principal.is_authenticated() {
            return Err(Denied::Unauthenticated);
        }
        if !requirement.roles.is_empty()
            && !requirement.roles.iter().any(|r| principal.is_in_role(r))
        {
            return Err(Denied::Forbidden);
        }
        if let Some(name) = requirement.policy {
            match self.by_name.get(name) {
                Some(policy) if policy(principal) => {}
                _ => return Err(Denied::Forbidden),
            }
        }
        Ok(())
    }
}

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
    tidings_protocol::negotiate::query_pairs(query)
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
        assert!(p.is_in_role("ops"));
        assert!(!p.is_in_role("Ann"));
    }

    #[test]
    fn requirements() {
        let mut policies = Policies::default();
        policies.insert(
            "ann".into(),
            Arc::new(|p: &Principal| p.claim("name") == Some("Ann")),
        );
        let admin = Principal::user("a").with_claim("roles", "Admin");
        let ann = Principal::user("b").with_claim("name", "Ann");
        let anyone = Authorize::new(&[], None);
        let admins = Authorize::new(&["Ops", "Admin"], None);
        let anns = Authorize::new(&[], Some("ann"));
        let unknown = Authorize::new(&[], Some("nobody"));
        let anonymous = Principal::anonymous();
        assert_eq!(
            policies.check(&anyone, &anonymous),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(policies.check(&anyone, &ann), Ok(()));
        assert_eq!(policies.check(&admins, &admin), Ok(()));
        assert_eq!(policies.check(&admins, &ann), Err(Denied::Forbidden));
        assert_eq!(policies.check(&anns, &ann), Ok(()));
        assert_eq!(policies.check(&anns, &admin), Err(Denied::Forbidden));
        assert_eq!(policies.check(&unknown, &admin), Err(Denied::Forbidden));
    }
}
