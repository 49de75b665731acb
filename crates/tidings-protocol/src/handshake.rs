//! The handshake that opens every connection: the client names a hub protocol and version, the server
//! answers `{}` or `{"error":"…"}`. Both are JSON terminated by `0x1E`, whatever the hub protocol.

use serde_json::{Map, Value};

use crate::{HandshakeError, Protocol, RECORD_SEPARATOR};

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

/// The error a server sends when the handshake does not complete in time, or is larger than the
/// maximum message size (ASP.NET Core uses the same text for both).
pub const HANDSHAKE_CANCELED: &str = "Handshake was canceled.";

/// What a server accepts in a handshake.
#[derive(Clone, Copy, Debug)]
pub struct HandshakePolicy<'a> {
    /// The hub protocols clients may choose.
    pub supported: &'a [Protocol],
    /// The maximum message size, which applies to the handshake too (`None`: unlimited).
    pub max_message_size: Option<usize>,
    /// Whether the transport carries binary data (Server-Sent Events does not).
    pub binary_allowed: bool,
    /// Whether a malformed request's refusal names the parse error (detailed errors).
    pub detailed_errors: bool,
}

/// What a server makes of the first bytes of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeOutcome {
    /// No complete request yet: wait for more bytes.
    Pending,
    /// Accepted: the chosen protocol, the requested version (2 asks for stateful reconnect), and how
    /// many bytes the request used — the bytes after them are already hub messages.
    Accepted {
        /// The hub protocol for the rest of the connection.
        protocol: Protocol,
        /// The version the client asked for (0, 1 or 2).
        version: u32,
        /// Bytes used by the request, separator included.
        used: usize,
    },
    /// Refused: answer with this error (see [`write_response`]), then close.
    Refused(String),
}

/// Decides on a handshake from everything a client has sent so far (`buf`: its inbound bytes from the
/// start, every transport chunk appended), with ASP.NET Core's rules and error texts:
///
/// * only the first `max_message_size` bytes are looked at; more than that without a complete
///   request is refused with [`HANDSHAKE_CANCELED`];
/// * a request that cannot be parsed → `An unexpected error occurred during connection handshake.`
///   (with the parse error after it when `detailed_errors` is on);
/// * a protocol name not in `supported` (compared case-insensitively) → `The protocol '…' is not supported.`;
/// * a version above 2 → `The server does not support version … of the '…' protocol.`;
/// * MessagePack on a transport without binary data → `Cannot use the '…' protocol on the current
///   transport. The transport does not support 'Binary' transfer format.`
///
/// The outcome depends only on the bytes, not on how they were split into chunks.
pub fn accept(buf: &[u8], policy: &HandshakePolicy<'_>) -> HandshakeOutcome {
    let (segment, over) = match policy.max_message_size {
        Some(limit) if buf.len() > limit => (&buf[..limit], true),
        _ => (buf, false),
    };
    let (request, used) = match parse_request(segment) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if over => return HandshakeOutcome::Refused(HANDSHAKE_CANCELED.to_owned()),
        Ok(None) => return HandshakeOutcome::Pending,
        Err(error) => {
            let mut text = "An unexpected error occurred during connection handshake.".to_owned();
            if policy.detailed_errors {
                text.push_str(" InvalidDataException: ");
                text.push_str(&error.to_string());
            }
            return HandshakeOutcome::Refused(text);
        }
    };
    let protocol = Protocol::from_name(&request.protocol).filter(|p| policy.supported.contains(p));
    let Some(protocol) = protocol else {
        return HandshakeOutcome::Refused(format!(
            "The protocol '{}' is not supported.",
            request.protocol
        ));
    };
    if request.version > 2 {
        return HandshakeOutcome::Refused(format!(
            "The server does not support version {} of the '{}' protocol.",
            request.version, request.protocol
        ));
    }
    if protocol == Protocol::MessagePack && !policy.binary_allowed {
        return HandshakeOutcome::Refused(format!(
            "Cannot use the '{}' protocol on the current transport. The transport does not support 'Binary' transfer format.",
            request.protocol
        ));
    }
    HandshakeOutcome::Accepted {
        protocol,
        version: request.version,
        used,
    }
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
