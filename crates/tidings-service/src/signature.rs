//! Signatures of what tidings posts upstream, so that a backend can check
//! that a request came from tidings and was not altered or replayed.
//!
//! Every upstream request carries
//!
//! ```text
//! X-Tidings-Timestamp: 1767225600
//! X-Tidings-Signature: sha256=<hex HMAC-SHA256(key, "{timestamp}.{body}")>[,sha256=<…>]
//! ```
//!
//! with one `sha256=` entry per configured access key (so a backend holding
//! either key of a rotation verifies). A backend recomputes the HMAC over
//! the timestamp, a dot and the raw body bytes, compares it in constant
//! time with any entry, and refuses timestamps more than a few minutes old.
//!
//! For tooling written against Azure SignalR Service, the request also
//! carries `X-ASRS-Signature: sha256=<hex HMAC-SHA256(key, connectionId)>`
//! (Azure's scheme, which covers only the connection id).

use crate::AccessKeys;

/// The header holding the signatures.
pub const SIGNATURE_HEADER: &str = "X-Tidings-Signature";
/// The header holding the signing time (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "X-Tidings-Timestamp";
/// Azure SignalR Service's signature header (connection id only).
pub const ASRS_SIGNATURE_HEADER: &str = "X-ASRS-Signature";

/// The `X-Tidings-Signature` value for `body` sent at `timestamp`.
pub fn sign(keys: &AccessKeys, timestamp: u64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    entries(keys, &[timestamp.as_bytes(), b".", body])
}

/// The `X-ASRS-Signature` value for a connection id.
pub fn sign_connection_id(keys: &AccessKeys, connection_id: &str) -> String {
    entries(keys, &[connection_id.as_bytes()])
}

fn entries(keys: &AccessKeys, parts: &[&[u8]]) -> String {
    keys.iter()
        .map(|key| format!("sha256={}", hex(&key.hmac(parts))))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `header` (an `X-Tidings-Signature` value) holds a valid
/// signature of `body` at `timestamp` by one of `keys`. The comparison is
/// constant-time; the timestamp's age is the caller's to check.
pub fn verify(keys: &AccessKeys, header: &str, timestamp: u64, body: &[u8]) -> bool {
    let timestamp = timestamp.to_string();
    let parts: [&[u8]; 3] = [timestamp.as_bytes(), b".", body];
    header
        .split(',')
        .filter_map(|entry| entry.trim().strip_prefix("sha256="))
        .filter_map(unhex)
        .any(|tag| keys.iter().any(|key| key.verify_hmac(&parts, &tag)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AccessKey;

    #[test]
    fn signatures_verify_with_any_key_and_only_for_the_same_body() {
        let a = AccessKey::new("first-key-0123456789").expect("key");
        let b = AccessKey::new("second-key-0123456789").expect("key");
        let both = AccessKeys::new([a.clone(), b.clone()]);
        let header = sign(&both, 1_700_000_000, b"{\"x\":1}");
        assert_eq!(header.matches("sha256=").count(), 2);
        for one in [a, b] {
            let keys = AccessKeys::new([one]);
            assert!(verify(&keys, &header, 1_700_000_000, b"{\"x\":1}"));
            assert!(!verify(&keys, &header, 1_700_000_001, b"{\"x\":1}"));
            assert!(!verify(&keys, &header, 1_700_000_000, b"{\"x\":2}"));
        }
        assert!(!verify(&both, "sha256=zz", 1, b""));
        assert!(!verify(&both, "", 1, b""));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body_in_hex() {
        // Computed independently:
        // printf '1.{}' | openssl dgst -sha256 -hmac 0123456789abcdef
        let key = AccessKey::new("0123456789abcdef").expect("key");
        let header = sign(&AccessKeys::new([key]), 1, b"{}");
        assert_eq!(
            header,
            "sha256=2af693cb56b22c16912222aeefdc75a01de562bf70ee2015f41ecea48382997f"
        );
    }
}
