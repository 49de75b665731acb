//! Bearer-token authentication for the standalone server: HS256 JWTs.
//!
//! The token's `sub` claim is the user identifier (what `Clients.User`
//! targets), as ASP.NET Core maps `sub` to the name identifier; every other
//! string claim (and each element of a string array, such as `role`) is kept
//! as a claim. Requests without a token are anonymous; a token that does not
//! verify is refused with 401.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde_json::{Map, Value};
use tidings::{AuthError, Principal, bearer_token};

/// Validates HS256 tokens with a shared secret.
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("JwtAuthenticator").finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        JwtAuthenticator {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn principal(&self, request: &axum::http::request::Parts) -> Result<Principal, AuthError> {
        let Some(token) = bearer_token(request) else {
            return Ok(Principal::anonymous());
        };
        let data = decode::<Map<String, Value>>(&token, &self.key, &self.validation)
            .map_err(|e| AuthError::Unauthorized(e.kind_description()))?;
        let claims = data.claims;
        let mut principal = match claims.get("sub").and_then(Value::as_str) {
            Some(sub) => Principal::user(sub),
            None => Principal::anonymous(),
        };
        for (kind, value) in &claims {
            match value {
                Value::String(s) => principal = principal.with_claim(kind, s),
                Value::Array(items) => {
                    for item in items.iter().filter_map(Value::as_str) {
                        principal = principal.with_claim(kind, item);
                    }
                }
                _ => {}
            }
        }
        Ok(principal)
    }
}

trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for jsonwebtoken::errors::Error {
    // The error kind only: never echo the token.
    fn kind_description(&self) -> String {
        format!("{:?}", self.kind())
    }
}
