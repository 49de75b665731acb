//! Error types, one enum per operation: encoding, decoding hub messages, reading payloads and the
//! handshake.

use crate::Protocol;

/// Why a message or a value could not be serialized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// `serde_json` refused the value (for example a map with non-string keys).
    #[error("JSON serialization failed: {0}")]
    Json(#[from] serde_json::Error),
    /// `rmp_serde` refused the value, or a MessagePack primitive could not be written.
    #[error("MessagePack serialization failed: {0}")]
    MessagePack(#[from] rmp_serde::encode::Error),
    /// A [`Payload`](crate::Payload) serialized in one protocol was written into a message of another.
    #[error("a {found:?} payload cannot be written into a {expected:?} message")]
    ProtocolMismatch {
        /// The protocol of the message being written.
        expected: Protocol,
        /// The protocol the payload was serialized with.
        found: Protocol,
    },
}

impl From<rmp::encode::ValueWriteError> for EncodeError {
    fn from(err: rmp::encode::ValueWriteError) -> Self {
        EncodeError::MessagePack(rmp_serde::encode::Error::InvalidValueWrite(err))
    }
}

impl From<std::io::Error> for EncodeError {
    fn from(err: std::io::Error) -> Self {
        EncodeError::from(rmp::encode::ValueWriteError::InvalidDataWrite(err))
    }
}

/// Why inbound bytes could not be turned into a hub message.
///
/// The `Display` texts follow the messages of the ASP.NET Core implementation where one exists, because
/// servers put them (after `InvalidDataException: `) into the close message sent to the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A single message is larger than the configured maximum.
    #[error(
        "The maximum message size of {limit}B was exceeded. The message size can be configured in AddHubOptions."
    )]
    MessageTooLarge {
        /// The configured maximum, in bytes.
        limit: usize,
    },
    /// A required property or array element is missing.
    #[error("Missing required property '{0}'.")]
    MissingProperty(&'static str),
    /// A property has the wrong JSON/MessagePack type.
    #[error("Expected '{name}' to be of type {expected}.")]
    InvalidProperty {
        /// The property name.
        name: &'static str,
        /// What was expected, e.g. `String` or `Integer`.
        expected: &'static str,
    },
    /// A completion carries both a result and an error.
    #[error("The 'error' and 'result' properties are mutually exclusive.")]
    ResultAndError,
    /// A MessagePack completion has a result kind other than 1, 2 or 3.
    #[error("Invalid invocation result kind.")]
    InvalidResultKind,
    /// A text message is not valid UTF-8. The text is ASP.NET Core's for any unreadable JSON; the
    /// position of the fault is in the source error (and in `Debug`), not in what clients see.
    #[error("Error reading JSON.")]
    InvalidUtf8(#[from] std::str::Utf8Error),
    /// A text message is not a JSON object. Worded as ASP.NET Core words it; the parser's own
    /// description is the source error.
    #[error("Error reading JSON.")]
    Json(#[from] serde_json::Error),
    /// A binary message is malformed MessagePack or does not have the expected layout.
    #[error("Error reading MessagePack: {0}")]
    MessagePack(String),
    /// The VarInt length prefix of a binary message is longer than 5 bytes or exceeds 2^31 - 1.
    #[error("Messages over 2GB in size are not supported.")]
    InvalidLengthPrefix,
}

/// Why a [`Payload`](crate::Payload) could not be read as the requested type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The JSON value does not match the requested type.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// The MessagePack value does not match the requested type.
    #[error("{0}")]
    MessagePack(#[from] rmp_serde::decode::Error),
    /// The bytes given to [`Payload::from_raw`](crate::Payload::from_raw) are not exactly one value.
    #[error("not a single {protocol:?} value: {reason}")]
    Invalid {
        /// The protocol the bytes were checked against.
        protocol: Protocol,
        /// What is wrong with them.
        reason: String,
    },
}

/// Why a handshake request or response could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The bytes before the record separator are not valid UTF-8.
    #[error("The handshake message is not valid UTF-8: {0}")]
    InvalidUtf8(#[from] std::str::Utf8Error),
    /// The handshake is not a JSON object.
    #[error("Error reading the handshake JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The handshake is valid JSON but not an object.
    #[error("Unexpected JSON Token Type '{0}'. Expected a JSON Object.")]
    NotAnObject(&'static str),
    /// A required property is missing.
    #[error("Missing required property '{0}'.")]
    MissingProperty(&'static str),
    /// A property has the wrong type.
    #[error("Expected '{name}' to be of type {expected}.")]
    InvalidProperty {
        /// The property name.
        name: &'static str,
        /// What was expected, e.g. `String` or `Integer`.
        expected: &'static str,
    },
    /// A message with a `type` was received where a handshake response was expected.
    #[error("Expected a handshake response from the server.")]
    UnexpectedMessage,
}

/// Why a negotiate request's query was refused. The texts are ASP.NET Core's: servers send them to the
/// client as the negotiate response's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiateError {
    /// `negotiateVersion` is not an integer.
    #[error("The client requested an invalid protocol version '{0}'")]
    InvalidVersion(String),
    /// `negotiateVersion` is below the lowest version the server speaks (0).
    #[error("The client requested version '{0}', but the server does not support this version.")]
    UnsupportedVersion(i32),
}
