//! The state of a stateful connection as it moves between servers: what
//! the old server let go in a handover, or what the journal kept of a
//! crashed server's connection.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Principal;

/// A connection as the old server let it go.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Frozen {
    pub id: String,
    pub user_id: Option<String>,
    pub claims: Vec<(String, String)>,
    /// When the credentials expire, in milliseconds since the epoch.
    pub expires_at_ms: Option<u64>,
    /// The sequence id of `frames[0]`.
    pub first_id: u64,
    /// Every message the client has not acknowledged, then every message
    /// queued and not yet sent, in order (base64).
    pub frames: Vec<String>,
    /// The last client message processed.
    pub received: u64,
    /// The application's part (see the connection layer's `Application::freeze`).
    pub app: Value,
}

impl Frozen {
    /// A connection recovered from what its dead server recorded.
    pub(crate) fn recovered(
        id: String,
        (user_id, claims, expires_at_ms): (Option<String>, Vec<(String, String)>, Option<u64>),
        first_id: u64,
        frames: &[Bytes],
        received: u64,
        app: Value,
    ) -> Frozen {
        Frozen {
            id,
            user_id,
            claims,
            expires_at_ms,
            first_id,
            frames: frames.iter().map(|f| encode(f)).collect(),
            received,
            app,
        }
    }

    pub(crate) fn principal(&self) -> Principal {
        let mut principal = self
            .claims
            .iter()
            .fold(Principal::anonymous(), |p, (k, v)| p.with_claim(k, v));
        principal.set_user_id(self.user_id.clone());
        if let Some(ms) = self.expires_at_ms {
            principal = principal.with_expiry(UNIX_EPOCH + Duration::from_millis(ms));
        }
        principal
    }
}

/// A frame as the state carries it (base64).
pub(crate) fn encode(frame: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(frame)
}
