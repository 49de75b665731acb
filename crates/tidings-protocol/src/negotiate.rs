//! The JSON body of the negotiate response (`POST {hub}/negotiate`), for servers and clients.

use serde::{Deserialize, Serialize};

/// The negotiate response. Serializes with camelCase names, in the order ASP.NET Core writes them, and
/// omits `None` fields and an empty transport list.
///
/// Three forms exist: the normal one (`connectionId`, optional `connectionToken`, transports), the
/// redirect (`url` + `accessToken`) and the error (`error`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NegotiateResponse {
    /// `Some(true)` only when stateful reconnect was requested and is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_stateful_reconnect: Option<bool>,
    /// 0 (no connection token; the connection id is the token) or 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negotiate_version: Option<u32>,
    /// Redirect form: where the client should negotiate instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Redirect form: the bearer token to use from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// The public connection id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// The secret id the client passes as `id` (negotiate version 1 and above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_token: Option<String>,
    /// The transports the client may use, in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_transports: Vec<AvailableTransport>,
    /// Error form: why negotiation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NegotiateResponse {
    /// The error form: `{"error":"…"}`.
    pub fn error(message: impl Into<String>) -> Self {
        NegotiateResponse {
            error: Some(message.into()),
            ..Default::default()
        }
    }

    /// The redirect form: `{"url":"…","accessToken":"…"}`.
    pub fn redirect(url: impl Into<String>, access_token: Option<String>) -> Self {
        NegotiateResponse {
            url: Some(url.into()),
            access_token,
            ..Default::default()
        }
    }
}

/// One transport offered to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AvailableTransport {
    /// The transport.
    pub transport: TransportType,
    /// The formats it can carry; keep `Text` first (the Python client picks the first one).
    pub transfer_formats: Vec<TransferFormat>,
}

/// A transport, named as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransportType {
    /// `WebSockets`.
    WebSockets,
    /// `ServerSentEvents` (server-to-client only; sends go through HTTP POST).
    ServerSentEvents,
    /// `LongPolling`.
    LongPolling,
}

impl TransportType {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            TransportType::WebSockets => "WebSockets",
            TransportType::ServerSentEvents => "ServerSentEvents",
            TransportType::LongPolling => "LongPolling",
        }
    }
}

/// How a transport carries messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransferFormat {
    /// UTF-8 text (JSON hub protocol).
    Text,
    /// Arbitrary bytes (MessagePack hub protocol).
    Binary,
}
