//! Access keys and the tokens they sign.
//!
//! An [`AccessKey`] is the shared secret between tidings and the backends
//! that drive it, as in Azure SignalR Service:
//!
//! * backends sign **REST API tokens** with it (HS256, `aud` = the URL of
//!   the request, a short `exp`), see [`rest_token`] and [`AccessKeys::verify_rest`];
//! * backends (or `tidings token`) mint **client tokens** with it
//!   ([`ClientToken`]): the bearer token a client connects with, naming
//!   its user and roles;
//! * tidings signs what it **posts upstream** with it
//!   ([`crate::signature`]), so a backend can check a request came from tidings.
//!
//! Several keys may be configured ([`AccessKeys`]) for rotation: the first
//! one signs, every one verifies.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};
use sha2::Sha256;

/// The shortest secret accepted, in bytes.
pub const MIN_KEY_LENGTH: usize = 16;

/// A shared secret. Never printed.
#[derive(Clone)]
pub struct AccessKey {
    secret: Arc<[u8]>,
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessKey(..)")
    }
}

/// A secret that cannot be used as an access key.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Too short to resist guessing.
    #[error("an access key must be at least {MIN_KEY_LENGTH} bytes long (it is {0})")]
    TooShort(usize),
}

impl AccessKey {
    /// A key from its secret text (any string of at least 16 bytes; a
    /// generated key is 43 characters of base64url).
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_KEY_LENGTH {
            return Err(KeyError::TooShort(secret.len()));
        }
        Ok(AccessKey {
            secret: Arc::from(secret),
        })
    }

    /// A new random key (32 random bytes) and its secret text.
    pub fn generate() -> (Self, String) {
        let text =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let key = AccessKey {
            secret: Arc::from(text.as_bytes()),
        };
        (key, text)
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC accepts keys of any length");
        for part in parts {
            mac.update(part);
        }
        mac
    }

    /// HMAC-SHA256 of `parts`, concatenated, with this key.
    pub(crate) fn hmac(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.mac(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is the HMAC-SHA256 of `parts` (compared in constant time).
    pub(crate) fn verify_hmac(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.mac(parts).verify_slice(tag).is_ok()
    }

    fn encoding(&self) -> EncodingKey {
        EncodingKey::from_secret(&self.secret)
    }

    fn decoding(&self) -> DecodingKey {
        DecodingKey::from_secret(&self.secret)
    }

    /// Signs `claims` as an HS256 JWT.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding())
            .map_err(|e| TokenError::Encode(e.to_string()))
    }
}

/// The configured keys: the first signs, all verify.
#[derive(Debug, Clone, Default)]
pub struct AccessKeys {
    keys: Vec<AccessKey>,
}

impl AccessKeys {
    /// The set holding `keys`, the first being the signing key.
    pub fn new(keys: impl IntoIterator<Item = AccessKey>) -> Self {
        AccessKeys {
            keys: keys.into_iter().collect(),
        }
    }

    /// The signing key, if any key is configured.
    pub fn primary(&self) -> Option<&AccessKey> {
        self.keys.first()
    }

    /// Every key.
    pub fn iter(&self) -> impl Iterator<Item = &AccessKey> {
        self.keys.iter()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies a REST API token: an HS256 JWT signed by one of the keys,
    /// not expired (30 s leeway), whose `aud` is the URL of this request.
    ///
    /// The audience is compared by authority (`host[:port]`, as the `Host`
    /// header gives it) and path; its scheme and query string are not
    /// compared, because a TLS-terminating proxy or the `api-version`
    /// parameter may change them on the way.
    pub fn verify_rest(
        &self,
        token: &str,
        authority: &str,
        path: &str,
    ) -> Result<Map<String, Value>, RestAuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        validation.leeway = 30;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "aud"]);
        let mut last = RestAuthError::NoKey;
        for key in &self.keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding(), &validation) {
                Ok(data) => {
                    return if audience_matches(data.claims.get("aud"), authority, path) {
                        Ok(data.claims)
                    } else {
                        Err(RestAuthError::Audience)
                    };
                }
                Err(error) => {
                    last = match error.kind() {
                        ErrorKind::ExpiredSignature => RestAuthError::Expired,
                        ErrorKind::ImmatureSignature => RestAuthError::NotYetValid,
                        ErrorKind::InvalidSignature => RestAuthError::Signature,
                        ErrorKind::MissingRequiredClaim(claim) => {
                            RestAuthError::MissingClaim(claim.clone())
                        }
                        _ => RestAuthError::Malformed,
                    };
                    // A bad signature may be another key's token; anything
                    // else is wrong whatever the key.
                    if !matches!(last, RestAuthError::Signature) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// Why a REST API request was not authenticated. The texts never quote
/// the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestAuthError {
    /// No `Authorization: Bearer` header.
    #[error("the request has no bearer token")]
    Missing,
    /// No access key is configured: the REST API refuses everything.
    #[error("no access key is configured")]
    NoKey,
    /// Not a JWT, or not HS256/384/512.
    #[error("the token is malformed or uses an unsupported algorithm")]
    Malformed,
    /// Signed with no configured key.
    #[error("the token's signature does not verify with any access key")]
    Signature,
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// Before its `nbf`.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// A required claim (`exp`, `aud`) is missing.
    #[error("the token has no '{0}' claim")]
    MissingClaim(String),
    /// `aud` is not the URL of this request.
    #[error("the token's audience is not the URL of this request")]
    Audience,
}

/// Whether `aud` (a string or an array of strings) names this request.
fn audience_matches(aud: Option<&Value>, authority: &str, path: &str) -> bool {
    let matches = |aud: &str| {
        let Ok(url) = url::Url::parse(aud) else {
            return false;
        };
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => return false,
        };
        let request_host = strip_default_port(authority, url.scheme());
        // Paths are compared decoded: the token's signer and the HTTP
        // client may escape the same name differently.
        let decode = |p: &str| percent_decode_str(p).collect::<Vec<u8>>();
        host.eq_ignore_ascii_case(request_host) && decode(url.path()) == decode(path)
    };
    match aud {
        Some(Value::String(aud)) => matches(aud),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(matches),
        _ => false,
    }
}

/// `host:443` for `https` is `host` (url drops default ports).
fn strip_default_port<'a>(authority: &'a str, scheme: &str) -> &'a str {
    let default = match scheme {
        "https" | "wss" => ":443",
        "http" | "ws" => ":80",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// A token could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The JWT library refused the claims.
    #[error("cannot sign the token: {0}")]
    Encode(String),
    /// A lifetime too long to express.
    #[error("the token lifetime is out of range")]
    Lifetime,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A REST API token for `url` (the full request URL), valid for `ttl`:
/// what a backend sends as `Authorization: Bearer …`.
pub fn rest_token(key: &AccessKey, url: &str, ttl: Duration) -> Result<String, TokenError> {
    let now = unix_now();
    let exp = now.checked_add(ttl.as_secs()).ok_or(TokenError::Lifetime)?;
    let claims = json!({ "aud": url, "iat": now, "exp": exp });
    let Value::Object(claims) = claims else {
        return Err(TokenError::Encode("claims are not an object".to_owned()));
    };
    key.sign(&claims)
}

/// A client access token: who the client is (`sub`), its roles (`role`),
/// which hub it is for (`aud`), until when (`exp`).
///
/// ```
/// use std::time::Duration;
/// use tidings_service::{AccessKey, ClientToken};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let key = AccessKey::new("a secret of at least 16 bytes")?;
/// let token = ClientToken::new("chat")
///     .user("alice")
///     .role("Admin")
///     .ttl(Duration::from_secs(3600))
///     .sign(&key)?;
/// # let _ = token; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientToken {
    hub: String,
    user: Option<String>,
    roles: Vec<String>,
    ttl: Duration,
    claims: Map<String, Value>,
}

impl ClientToken {
    /// A token for `hub`, anonymous, valid for one hour.
    pub fn new(hub: impl Into<String>) -> Self {
        ClientToken {
            hub: hub.into(),
            user: None,
            roles: Vec::new(),
            ttl: Duration::from_secs(3600),
            claims: Map::new(),
        }
    }

    /// The user identifier (`sub`): what `Clients.User` targets.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Adds a role (`role` claim).
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// How long the token is valid.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Adds a claim of any JSON value.
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// The claims the token will carry (`iat` and `exp` from now).
    pub fn claims(&self) -> Result<Map<String, Value>, TokenError> {
        let now = unix_now();
        let exp = now
            .checked_add(self.ttl.as_secs())
            .ok_or(TokenError::Lifetime)?;
        let mut claims = self.claims.clone();
        claims.insert("aud".to_owned(), Value::from(self.hub.clone()));
        claims.insert("iat".to_owned(), Value::from(now));
        claims.insert("exp".to_owned(), Value::from(exp));
        if let Some(user) = &self.user {
            claims.insert("sub".to_owned(), Value::from(user.clone()));
        }
        if !self.roles.is_empty() {
            claims.insert("role".to_owned(), Value::from(self.roles.clone()));
        }
        Ok(claims)
    }

    /// Signs the token with `key`.
    pub fn sign(&self, key: &AccessKey) -> Result<String, TokenError> {
        key.sign(&self.claims()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> AccessKey {
        AccessKey::new(text).expect("a valid key")
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(matches!(
            AccessKey::new("short"),
            Err(KeyError::TooShort(5))
        ));
        let (_, text) = AccessKey::generate();
        assert_eq!(text.len(), 43);
    }

    #[test]
    fn rest_tokens_verify_against_the_request_url() {
        let primary = key("primary-key-0123456789");
        let old = key("rotated-out-key-0123456789");
        let keys = AccessKeys::new([primary.clone(), old.clone()]);
        let url = "http://127.0.0.1:5000/api/hubs/chat/:send?api-version=2022-06-01";
        let ttl = Duration::from_secs(60);
        for signer in [&primary, &old] {
            let token = rest_token(signer, url, ttl).expect("token");
            assert!(
                keys.verify_rest(&token, "127.0.0.1:5000", "/api/hubs/chat/:send")
                    .is_ok()
            );
        }
        let token = rest_token(&primary, url, ttl).expect("token");
        assert_eq!(
            keys.verify_rest(&token, "127.0.0.1:5000", "/api/hubs/other/:send"),
            Err(RestAuthError::Audience)
        );
        assert_eq!(
            keys.verify_rest(&token, "example.com", "/api/hubs/chat/:send"),
            Err(RestAuthError::Audience)
        );
        let stranger = rest_token(&key("someone-elses-key-0123"), url, ttl).expect("token");
        assert_eq!(
            keys.verify_rest(&stranger, "127.0.0.1:5000", "/api/hubs/chat/:send"),
            Err(RestAuthError::Signature)
        );
        assert_eq!(
            keys.verify_rest("not.a.jwt", "127.0.0.1:5000", "/"),
            Err(RestAuthError::Malformed)
        );
        // Escaping differences do not matter.
        let spaced = rest_token(&primary, "http://h/api/hubs/my%20hub/:send", ttl).expect("token");
        assert!(
            keys.verify_rest(&spaced, "h", "/api/hubs/my hub/%3Asend")
                .is_ok()
        );
        // Default ports are the same authority.
        let https = rest_token(&primary, "https://svc.example/api/health", ttl).expect("token");
        assert!(
            keys.verify_rest(&https, "svc.example:443", "/api/health")
                .is_ok()
        );
    }

    #[test]
    fn expired_and_audience_free_rest_tokens_are_refused() {
        let k = key("primary-key-0123456789");
        let keys = AccessKeys::new([k.clone()]);
        let past = unix_now() - 3600;
        let Value::Object(claims) = json!({"aud": "http://h/api/health", "exp": past}) else {
            unreachable!()
        };
        let token = k.sign(&claims).expect("token");
        assert_eq!(
            keys.verify_rest(&token, "h", "/api/health"),
            Err(RestAuthError::Expired)
        );
        let Value::Object(claims) = json!({"exp": unix_now() + 60}) else {
            unreachable!()
        };
        let token = k.sign(&claims).expect("token");
        assert_eq!(
            keys.verify_rest(&token, "h", "/api/health"),
            Err(RestAuthError::MissingClaim("aud".to_owned()))
        );
    }

    #[test]
    fn client_tokens_carry_user_roles_hub_and_expiry() {
        let k = key("primary-key-0123456789");
        let token = ClientToken::new("chat")
            .user("alice")
            .role("Admin")
            .role("Ops")
            .claim("scope", "announce")
            .ttl(Duration::from_secs(120))
            .sign(&k)
            .expect("token");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["chat"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(&token, &k.decoding(), &validation)
            .expect("valid")
            .claims;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["role"], json!(["Admin", "Ops"]));
        assert_eq!(claims["scope"], "announce");
        let exp = claims["exp"].as_u64().unwrap_or_default();
        let iat = claims["iat"].as_u64().unwrap_or_default();
        assert_eq!(exp - iat, 120);
    }
}
