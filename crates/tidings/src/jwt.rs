//! [`JwtAuthenticator`]: bearer-token authentication with JSON Web Tokens
//! (feature `jwt`).
//!
//! The token comes from the `Authorization: Bearer` header or, where a
//! browser cannot set headers (WebSocket, EventSource), from the
//! `access_token` query parameter ([`bearer_token`]). A request without a
//! token is anonymous — whether anonymous users may connect is the hub's
//! [`Authorize`](crate::Authorize) requirement. A token that is present but
//! does not verify (signature, algorithm, expiry, issuer, audience) is always
//! refused with `401`, even on a hub open to anonymous users: a client that
//! sends credentials must not be silently downgraded.
//!
//! The user identifier is the first name-identifier claim of the token
//! ([`NAME_IDENTIFIER_CLAIMS`]: `sub`, `nameid` or
//! `http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier`),
//! as ASP.NET Core finds it: its JWT handler maps all three to
//! `ClaimTypes.NameIdentifier`, keeping the token's order, and its default
//! user-id provider takes the first claim of that type. So a token issued
//! for a .NET backend targets the same user in `Clients.User`; when a token
//! carries several of them with different values, the one written first in
//! its payload wins. (A hub endpoint may choose another claim:
//! [`HubEndpoint::user_id_claim`](crate::HubEndpoint::user_id_claim).)
//! Every string claim, and every string of an array claim such as `roles`,
//! becomes a claim of the [`Principal`], in the token's order; `exp` becomes
//! its expiry. A token
//! without `exp` is refused, as ASP.NET Core's JWT bearer handler refuses it
//! by default (`RequireExpirationTime`): a credential that never expires
//! cannot be revoked by waiting ([`JwtAuthenticator::allow_missing_expiry`]
//! turns that off). Error texts name the failure, never the token.

use std::{
    fmt,
    time::{Duration, UNIX_EPOCH},
};

use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, errors::ErrorKind};
use serde::{Deserialize, Deserializer, de};
use serde_json::Value;

use crate::{AuthError, Authenticator, BoxFuture, Principal, bearer_token};

/// The claim types that name the user, as ASP.NET Core's JWT handler maps
/// them to `ClaimTypes.NameIdentifier` (the short JWT names `sub` and
/// `nameid`, and that claim type's own URI). The first of them in the
/// token is the user identifier.
pub const NAME_IDENTIFIER_CLAIMS: [&str; 3] = [
    "sub",
    "nameid",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier",
];

/// Why a [`JwtAuthenticator`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtKeyError {
    /// The PEM text holds neither an RSA nor an EC public key.
    #[error("not an RSA or EC public key in PEM format")]
    UnsupportedKey,
}

/// Validates JSON Web Tokens: HS256 with a shared secret, or RS256/ES256
/// (and the stronger RS384/RS512/ES384) with a public key.
///
/// ```
/// use tidings::{HubEndpoint, JwtAuthenticator};
/// # struct Chat;
/// # #[tidings::hub] impl Chat { async fn ping(&self) {} }
/// let jwt = JwtAuthenticator::hs256(b"a long random secret")
///     .issuer("https://login.example")
///     .audience("chat");
/// let endpoint = HubEndpoint::new(Chat).authenticator(jwt);
/// # let _ = endpoint;
/// ```
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("JwtAuthenticator")
            .field("algorithms", &self.validation.algorithms)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    /// Tokens signed with the shared `secret`: HS256, and HS384 and HS512
    /// too, as ASP.NET Core's JWT handler accepts any HMAC algorithm for a
    /// symmetric key.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(
            DecodingKey::from_secret(secret),
            &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        )
    }

    /// Tokens signed with the private half of a PEM public key: an RSA key
    /// accepts RS256, RS384 and RS512; an EC key ES256 and ES384.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<Self, JwtKeyError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self::with(
                key,
                &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
            ));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self::with(key, &[Algorithm::ES256, Algorithm::ES384]));
        }
        Err(JwtKeyError::UnsupportedKey)
    }

    fn with(key: DecodingKey, algorithms: &[Algorithm]) -> Self {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.to_vec();
        // `exp` is required and checked; `iss` and `aud` only when asked for.
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        // An expired token is expired: no grace period unless asked for.
        validation.leeway = 0;
        JwtAuthenticator { key, validation }
    }

    /// Requires the `iss` claim to be `issuer`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation
            .required_spec_claims
            .insert("iss".to_owned());
        self
    }

    /// Requires the `aud` claim to be (or to contain) `audience`.
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation
            .required_spec_claims
            .insert("aud".to_owned());
        self
    }

    /// Accepts tokens without an `exp` claim, which then never expire.
    /// (`exp` is still checked when a token has one.)
    pub fn allow_missing_expiry(mut self) -> Self {
        self.validation.required_spec_claims.remove("exp");
        self
    }

    /// Accepts tokens this long after their `exp` (and before their `nbf`),
    /// for clocks that differ between issuer and server. Default: none.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
        self
    }

    /// The principal of a token.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Unauthorized(describe(e.kind())))?;
        Ok(principal(&data.claims.0))
    }

    /// The principal of a request: anonymous without a token, the token's
    /// principal if it verifies, `Unauthorized` otherwise.
    pub fn principal(&self, request: &Parts) -> Result<Principal, AuthError> {
        match bearer_token(request) {
            None => Ok(Principal::anonymous()),
            Some(token) => self.verify(&token),
        }
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate<'a>(
        &'a self,
        request: &'a Parts,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        let result = self.principal(request);
        Box::pin(async move { result })
    }
}

/// A token's claims in the order its payload lists them. The order matters:
/// of several name-identifier claims the first is the user (a map sorted by
/// name would let `nameid` win over an earlier `sub`).
struct Claims(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> de::Visitor<'de> for Ordered {
            type Value = Claims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
                let mut claims = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    claims.push(entry);
                }
                Ok(Claims(claims))
            }
        }
        deserializer.deserialize_map(Ordered)
    }
}

/// The principal a token's claims describe.
fn principal(claims: &[(String, Value)]) -> Principal {
    let mut user_id = None;
    let mut principal = Principal::anonymous();
    for (kind, value) in claims {
        let names_user = NAME_IDENTIFIER_CLAIMS.contains(&kind.as_str());
        // A numeric id (`"sub": 42`) is the user "42", as in ASP.NET Core,
        // which keeps a number's text as the claim's value; other numbers
        // (`exp`, `iat`) are not claims here.
        let text = |value: &Value| match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) if names_user => Some(n.to_string()),
            _ => None,
        };
        let values: Vec<String> = match value {
            Value::Array(items) => items.iter().filter_map(text).collect(),
            single => text(single).into_iter().collect(),
        };
        if user_id.is_none() && names_user {
            user_id = values.first().cloned();
        }
        for value in values {
            principal = principal.with_claim(kind, value);
        }
    }
    principal.set_user_id(user_id);
    if let Some(exp) = claims
        .iter()
        .find(|(kind, _)| kind == "exp")
        .and_then(|(_, exp)| exp.as_u64())
    {
        principal = principal.with_expiry(UNIX_EPOCH + Duration::from_secs(exp));
    }
    principal
}

/// A failure's description: the kind only, never the token.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet".to_owned(),
        ErrorKind::InvalidSignature => "the signature is invalid".to_owned(),
        ErrorKind::InvalidIssuer => "the issuer is not accepted".to_owned(),
        ErrorKind::InvalidAudience => "the audience is not accepted".to_owned(),
        ErrorKind::InvalidAlgorithm => "the algorithm is not accepted".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no '{claim}' claim"),
        _ => "the token is malformed".to_owned(),
    }
}

/// Seconds since the Unix epoch (for tests building tokens).
#[cfg(test)]
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn sign(claims: Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap_or_default()
    }

    #[test]
    fn a_shared_secret_verifies_every_hmac_algorithm() {
        let jwt = JwtAuthenticator::hs256(b"s");
        for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let token = encode(
                &Header::new(algorithm),
                &json!({"sub": "ann", "exp": now() + 60}),
                &EncodingKey::from_secret(b"s"),
            )
            .unwrap_or_default();
            let user = jwt
                .verify(&token)
                .ok()
                .and_then(|p| p.user_id().map(str::to_owned));
            assert_eq!(user.as_deref(), Some("ann"), "{algorithm:?}");
        }
    }

    #[test]
    fn verifies_claims() {
        let jwt = JwtAuthenticator::hs256(b"s").issuer("me").audience("you");
        let exp = now() + 60;
        let good = sign(
            json!({"sub": "ann", "iss": "me", "aud": ["you", "x"], "roles": ["A", "B"], "exp": exp}),
            b"s",
        );
        let p = jwt.verify(&good).unwrap_or_default();
        assert_eq!(p.user_id(), Some("ann"));
        assert!(p.is_in_role("B"));
        assert_eq!(p.expires_at(), Some(UNIX_EPOCH + Duration::from_secs(exp)));

        let cases = [
            (
                json!({"sub": "a", "iss": "me", "aud": "you", "exp": exp}),
                &b"t"[..],
                "signature",
            ),
            (
                json!({"sub": "a", "iss": "other", "aud": "you", "exp": exp}),
                b"s",
                "issuer",
            ),
            (
                json!({"sub": "a", "iss": "me", "aud": "them", "exp": exp}),
                b"s",
                "audience",
            ),
            (json!({"sub": "a", "aud": "you", "exp": exp}), b"s", "'iss'"),
            (
                json!({"sub": "a", "iss": "me", "aud": "you"}),
                b"s",
                "'exp'",
            ),
            (
                json!({"sub": "a", "iss": "me", "aud": "you", "exp": now() - 5}),
                b"s",
                "expired",
            ),
        ];
        for (claims, secret, expected) in cases {
            match jwt.verify(&sign(claims, secret)) {
                Err(AuthError::Unauthorized(text)) => assert!(text.contains(expected), "{text}"),
                other => panic!("{expected}: {other:?}"),
            }
        }
        assert!(jwt.verify("not.a.token").is_err());
    }

    #[test]
    fn a_token_without_expiry_is_accepted_only_when_allowed() {
        let forever = sign(json!({"sub": "ann"}), b"s");
        assert!(JwtAuthenticator::hs256(b"s").verify(&forever).is_err());
        let lenient = JwtAuthenticator::hs256(b"s").allow_missing_expiry();
        let p = lenient.verify(&forever).unwrap_or_default();
        assert_eq!(p.user_id(), Some("ann"));
        assert_eq!(p.expires_at(), None);
        // An `exp` that is there is still checked.
        let expired = sign(json!({"sub": "ann", "exp": now() - 5}), b"s");
        assert!(lenient.verify(&expired).is_err());
    }

    #[test]
    fn the_user_is_the_first_name_identifier_claim() {
        let jwt = JwtAuthenticator::hs256(b"s");
        let user = |payload: &str| {
            // Written by hand: the order of the payload's keys is the point.
            let b64 = |text: &str| {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
            };
            let body = format!("{}.{}", b64(r#"{"alg":"HS256","typ":"JWT"}"#), b64(payload));
            let key = EncodingKey::from_secret(b"s");
            let signature = jsonwebtoken::crypto::sign(body.as_bytes(), &key, Algorithm::HS256)
                .unwrap_or_default();
            let p = jwt
                .verify(&format!("{body}.{signature}"))
                .unwrap_or_default();
            p.user_id().map(str::to_owned)
        };
        let exp = now() + 60;
        let uri = NAME_IDENTIFIER_CLAIMS[2];
        let cases = [
            (format!(r#"{{"nameid":"nia","exp":{exp}}}"#), Some("nia")),
            (format!(r#"{{"{uri}":"uri","exp":{exp}}}"#), Some("uri")),
            (format!(r#"{{"sub":"sue","exp":{exp}}}"#), Some("sue")),
            // Several: the first in the payload, as ASP.NET Core's FindFirst.
            (
                format!(r#"{{"sub":"sue","nameid":"nia","exp":{exp}}}"#),
                Some("sue"),
            ),
            (
                format!(r#"{{"nameid":"nia","sub":"sue","exp":{exp}}}"#),
                Some("nia"),
            ),
            (
                format!(r#"{{"exp":{exp},"{uri}":"uri","sub":"sue"}}"#),
                Some("uri"),
            ),
            // An array claim: its first value.
            (format!(r#"{{"nameid":["a","b"],"exp":{exp}}}"#), Some("a")),
            (format!(r#"{{"sub":42,"exp":{exp}}}"#), Some("42")),
            // Other claims do not name the user.
            (format!(r#"{{"email":"e@x","name":"N","exp":{exp}}}"#), None),
        ];
        for (payload, expected) in cases {
            assert_eq!(user(&payload).as_deref(), expected, "{payload}");
        }
        // Claims keep the token's order.
        let p = jwt
            .verify(&sign(json!({"sub": "s", "exp": exp}), b"s"))
            .unwrap_or_default();
        assert_eq!(p.claim("sub"), Some("s"));
    }

    #[test]
    fn refuses_unknown_keys() {
        assert!(JwtAuthenticator::from_public_key_pem(b"-----BEGIN NOTHING-----").is_err());
    }
}
