//! Error types, one enum per operation: starting a connection ([`StartError`]), calling the hub
//! ([`InvokeError`]), and why a running connection ended ([`ConnectionError`]).
//!
//! Where the official JavaScript client has a message for the same situation, the `Display` text
//! is the same, so logs read alike whichever client produced them.

use std::sync::Arc;

use tidings_protocol::{EncodeError, HandshakeError, PayloadError};

use crate::HubConnectionState;

/// Why a transport (a WebSocket, an SSE stream, a poll or a POST) failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The server answered with an unexpected HTTP status.
    #[error("{body}: Status code '{status}'")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The response body, or the reason phrase when the body is empty.
        body: String,
    },
    /// The request could not be sent or its response could not be read.
    #[error("{0}")]
    Http(String),
    /// The WebSocket failed (connect, read or write).
    #[error("WebSocket failed: {0}")]
    WebSocket(String),
    /// The WebSocket was closed with a status other than a normal closure.
    #[error("WebSocket closed with status code: {code} ({reason}).")]
    WebSocketClosed {
        /// The close status code.
        code: u16,
        /// The close reason, or `no reason given`.
        reason: String,
    },
    /// Obtaining an access token failed.
    #[error("the access token factory failed: {0}")]
    AccessToken(String),
    /// The URL cannot be used for this transport.
    #[error("invalid URL: {0}")]
    Url(String),
}

/// Why a connection that was running has ended (given to `on_reconnecting` and `on_closed`).
///
/// Cloneable, because one cause is handed to every pending invocation and every event handler.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The server sent a Close message with an error.
    #[error("Server returned an error on close: {0}")]
    ServerClosed(String),
    /// Nothing arrived from the server within the server timeout.
    #[error("Server timeout elapsed without receiving a message from the server.")]
    ServerTimeout,
    /// The transport failed.
    #[error("{0}")]
    Transport(TransportError),
    /// The transport ended without an error and without a Close message.
    #[error("The underlying connection was closed.")]
    TransportClosed,
    /// The server sent bytes that are not a valid hub message.
    #[error("the server sent an invalid message: {0}")]
    Protocol(Arc<str>),
    /// Stateful reconnect: the server's Sequence message is ahead of what this client received.
    #[error("{}", tidings_protocol::resume::SequenceAhead::MESSAGE)]
    SequenceAhead,
    /// Automatic reconnection gave up; the last attempt failed with this error.
    #[error("reconnecting failed: {0}")]
    ReconnectFailed(Arc<StartError>),
}

/// Why [`HubConnection::start`](crate::HubConnection::start) (or a reconnect attempt) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// `start` was called while the connection was not disconnected.
    #[error("Cannot start a HubConnection that is not in the 'Disconnected' state (it is {0:?}).")]
    InvalidState(HubConnectionState),
    /// `stop` was called (or the last handle dropped) while starting.
    #[error("The connection was stopped before it could start.")]
    Stopped,
    /// The negotiate request failed or its answer could not be used.
    #[error("Failed to complete negotiation with the server: {0}")]
    Negotiate(String),
    /// The server answered negotiate with `{"error": ...}`.
    #[error("{0}")]
    NegotiateRejected(String),
    /// More than 100 negotiate redirects.
    #[error("Negotiate redirection limit exceeded.")]
    RedirectLimit,
    /// The server enabled stateful reconnect although the client did not ask for it.
    #[error("Client didn't negotiate Stateful Reconnect but the server did.")]
    UnexpectedStatefulReconnect,
    /// Negotiation was skipped with a transport other than WebSockets.
    #[error("Negotiation can only be skipped when using the WebSocket transport directly.")]
    SkipNegotiationNeedsWebSockets,
    /// No offered transport fits the allowed transports and the protocol's transfer format.
    #[error("None of the transports supported by the client are supported by the server.")]
    NoSuitableTransport,
    /// Every suitable transport failed to connect.
    #[error("Unable to connect to the server with any of the available transports. {}", join(.0))]
    AllTransportsFailed(Vec<(tidings_protocol::TransportType, TransportError)>),
    /// The transport failed (skip-negotiation WebSocket connect).
    #[error("{0}")]
    Transport(TransportError),
    /// The server refused the handshake.
    #[error("Server returned handshake error: {0}")]
    HandshakeRejected(String),
    /// The handshake answer is malformed.
    #[error("Error parsing handshake response: {0}")]
    HandshakeInvalid(#[from] HandshakeError),
    /// No handshake answer within the handshake timeout.
    #[error("Handshake timed out.")]
    HandshakeTimeout,
    /// The transport closed before the handshake answer arrived.
    #[error("The underlying connection was closed before the hub handshake could complete.")]
    ClosedDuringHandshake(Option<TransportError>),
}

fn join(errors: &[(tidings_protocol::TransportType, TransportError)]) -> String {
    errors
        .iter()
        .map(|(transport, error)| format!("{} failed: {error}", transport.name()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why an invocation, a send or a stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// The server (or the hub method) answered with an error; the text is the server's.
    #[error("{0}")]
    Hub(String),
    /// The connection is not in the `Connected` state.
    #[error("Cannot send data if the connection is not in the 'Connected' State.")]
    NotConnected,
    /// The connection ended before the server answered.
    #[error("Invocation canceled due to the underlying connection being closed.")]
    ConnectionClosed(Option<ConnectionError>),
    /// An argument could not be serialized.
    #[error("an argument could not be serialized: {0}")]
    Encode(#[from] EncodeError),
    /// The result or a stream item does not have the requested type.
    #[error("the result could not be deserialized: {0}")]
    Decode(#[from] PayloadError),
}

/// Why the arguments of a server-to-client invocation do not bind to a handler's argument types.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArgumentError {
    /// The number of arguments differs from the handler's.
    #[error("Invocation provides {actual} argument(s) but target expects {expected}.")]
    Count {
        /// How many the handler takes.
        expected: usize,
        /// How many the server sent.
        actual: usize,
    },
    /// An argument does not deserialize into the handler's type.
    #[error("argument {index}: {source}")]
    Payload {
        /// Zero-based position.
        index: usize,
        /// The deserialization error.
        source: PayloadError,
    },
}
