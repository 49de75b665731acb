//! Negotiation (`POST {hub}/negotiate`): the JSON body of the response, for servers and clients, and
//! what the request asks for in its URL query ([`NegotiateRequest`], [`query_pairs`]).

use serde::{Deserialize, Serialize};

use crate::NegotiateError;

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

/// What a negotiate request asks for, read from its URL query: the negotiate version and whether the
/// client wants stateful reconnect. Servers answer the version (or the error) in the negotiate
/// response; the token scheme depends on it (version 0: the connection id is the token).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NegotiateRequest {
    /// The version to answer with: the client's `negotiateVersion`, capped at 1 (the highest this
    /// implementation speaks); 0 when the client sent none (older clients, Python's `signalrcore`).
    pub version: u32,
    /// `useStatefulReconnect=true` was in the query. Honour it only when the endpoint allows stateful
    /// reconnect and `version` is at least 1 (a version-0 token is the public connection id).
    pub stateful_reconnect: bool,
}

impl NegotiateRequest {
    /// Reads the query string of a negotiate request (without the leading `?`), matching keys
    /// case-insensitively as ASP.NET Core does. A `negotiateVersion` that is not a 32-bit integer,
    /// or is negative, is an error whose text is ASP.NET Core's (servers send it as
    /// `{"error":"…"}` with status 200).
    ///
    /// ```
    /// use tidings_protocol::negotiate::NegotiateRequest;
    ///
    /// let request = NegotiateRequest::from_query(Some("negotiateVersion=7&useStatefulReconnect=True"))?;
    /// assert_eq!(request, NegotiateRequest { version: 1, stateful_reconnect: true });
    /// assert_eq!(NegotiateRequest::from_query(None)?.version, 0);
    /// let error = NegotiateRequest::from_query(Some("negotiateVersion=one")).unwrap_err();
    /// assert_eq!(error.to_string(), "The client requested an invalid protocol version 'one'");
    /// # Ok::<(), tidings_protocol::NegotiateError>(())
    /// ```
    pub fn from_query(query: Option<&str>) -> Result<NegotiateRequest, NegotiateError> {
        let query = query.unwrap_or_default();
        let version = match query_value(query, "negotiateVersion") {
            None => 0,
            // int.TryParse: optional sign, digits, surrounding white space.
            Some(raw) => match raw.trim().parse::<i32>() {
                Err(_) => return Err(NegotiateError::InvalidVersion(raw)),
                Ok(v) if v < 0 => return Err(NegotiateError::UnsupportedVersion(v)),
                Ok(v) => v.min(1).unsigned_abs(),
            },
        };
        let stateful_reconnect = query_value(query, "useStatefulReconnect")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        Ok(NegotiateRequest {
            version,
            stateful_reconnect,
        })
    }
}

/// The first value of `key` in a URL query (keys compared ASCII case-insensitively, values
/// percent-decoded), as ASP.NET Core reads `id`, `negotiateVersion` and `useStatefulReconnect`.
pub fn query_value(query: &str, key: &str) -> Option<String> {
    query_pairs(query)
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// The `key=value` pairs of a URL query (`application/x-www-form-urlencoded`), in order: `+` is a
/// space, `%XX` a byte; a `%` not followed by two hex digits stays as it is, a pair without `=` has
/// an empty value, empty pairs are skipped, and bytes that do not form UTF-8 become U+FFFD.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
}
