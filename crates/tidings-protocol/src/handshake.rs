//! The handshake that opens every connection: the client names a hub protocol and version, the server
//! answers `{}` or `{"error":"…"}`. Both are JSON terminated by `0x1E`, whatever the hub protocol.

use serde_json::{Map, Value};

use crate::{HandshakeError, RECORD_SEPARATOR};

/// The client's handshake: `{"protocol":"json","version":1}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// The requested hub protocol name, as sent (compare case-insensitively).
    pub protocol: String,
    /// The requested protocol version (clients send 0, 1 or 2; 2 enables stateful reconnect).
    pub version: u32,
}

/// The server's handshake answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// `None` when the handshake succeeded.
    pub error: Option<String>,
}

/// A JSON object and the bytes it used, separator included.
type Record = (Map<String, Value>, usize);

/// Splits off the first record: `Ok(None)` if no separator has arrived yet.
fn first_object(buf: &[u8]) -> Result<Option<Record>, HandshakeError> {
    let Some(end) = buf.iter().position(|&b| b == RECORD_SEPARATOR) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end])?;
    let value: Value = serde_json::from_str(text)?;
    match value {
        Value::Object(map) => Ok(Some((map, end + 1))),
        Value::Null => Err(HandshakeError::NotAnObject("Null")),
        Value::Bool(_) => Err(HandshakeError::NotAnObject("Boolean")),
        Value::Number(_) => Err(HandshakeError::NotAnObject("Number")),
        Value::String(_) => Err(HandshakeError::NotAnObject("String")),
        Value::Array(_) => Err(HandshakeError::NotAnObject("StartArray")),
    }
}

/// Parses the client's handshake request at the start of `buf`.
///
/// `Ok(None)` means the request is incomplete (no `0x1E` yet); otherwise the request and the number of
/// bytes it used, separator included — any bytes after that are already hub messages. Other properties
/// (such as `minorVersion`) are ignored.
///
/// The maximum message size applies to the handshake too; that check is the caller's: reject when
/// `Ok(None)` comes back with more than the limit buffered, or when the bytes used exceed it.
pub fn parse_request(buf: &[u8]) -> Result<Option<(HandshakeRequest, usize)>, HandshakeError> {
    let Some((map, consumed)) = first_object(buf)? else {
        return Ok(None);
    };
    let protocol = match map.get("protocol") {
        None => return Err(HandshakeError::MissingProperty("protocol")),
        Some(Value::String(protocol)) => protocol.clone(),
        Some(_) => {
            return Err(HandshakeError::InvalidProperty {
                name: "protocol",
                expected: "String",
            });
        }
    };
    let version = match map.get("version") {
        None => return Err(HandshakeError::MissingProperty("version")),
        Some(value) => value.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or(
            HandshakeError::InvalidProperty {
                name: "version",
                expected: "Integer",
            },
        )?,
    };
    Ok(Some((HandshakeRequest { protocol, version }, consumed)))
}

/// Appends the server's answer: `{}` + `0x1E` on success, `{"error":"…"}` + `0x1E` otherwise.
pub fn write_response(error: Option<&str>, out: &mut Vec<u8>) {
    match error {
        None => out.extend_from_slice(b"{}"),
        Some(error) => {
            out.extend_from_slice(b"{\"error\":");
            // Serializing a `&str` to JSON cannot fail; fall back to a fixed text rather than panic.
            match serde_json::to_string(error) {
                Ok(quoted) => out.extend_from_slice(quoted.as_bytes()),
                Err(_) => out.extend_from_slice(b"\"Handshake failed.\""),
            }
            out.push(b'}');
        }
    }
    out.push(RECORD_SEPARATOR);
}

/// Appends a client's handshake request: `{"protocol":"…","version":N}` + `0x1E`.
pub fn write_request(request: &HandshakeRequest, out: &mut Vec<u8>) {
    let value = serde_json::json!({ "protocol": request.protocol, "version": request.version });
    out.extend_from_slice(value.to_string().as_bytes());
    out.push(RECORD_SEPARATOR);
}

/// Parses the server's handshake answer at the start of `buf` (client side).
///
/// `Ok(None)` means incomplete; otherwise the response and the bytes used, separator included. A
/// message with a `type` property (a hub message instead of a handshake answer) is an error.
pub fn parse_response(buf: &[u8]) -> Result<Option<(HandshakeResponse, usize)>, HandshakeError> {
    let Some((map, consumed)) = first_object(buf)? else {
        return Ok(None);
    };
    if map.contains_key("type") {
        return Err(HandshakeError::UnexpectedMessage);
    }
    let error = match map.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::String(error)) => Some(error.clone()),
        Some(_) => {
            return Err(HandshakeError::InvalidProperty {
                name: "error",
                expected: "String",
            });
        }
    };
    Ok(Some((HandshakeResponse { error }, consumed)))
}
