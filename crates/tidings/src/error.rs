//! Errors: what a hub method returns ([`HubError`]), why a connection ended
//! ([`ConnectionError`]), and what sending to clients can fail with
//! ([`SendError`]).
//!
//! The texts mirror ASP.NET Core SignalR on purpose: clients written against
//! ASP.NET Core match on them (`HubException: …`, `Connection closed with an
//! error.`), so the wording is part of the wire contract.

use std::fmt;

/// The error a hub method fails with.
///
/// Two kinds matter to the caller, exactly as in ASP.NET Core:
///
/// * [`HubError::new`] is the equivalent of throwing a `HubException`: its
///   message is **always** sent to the client
///   (`An unexpected error occurred invoking 'X' on the server. HubException: <message>`).
/// * Any other error (`?` on an `std::error::Error`, or [`HubError::internal`])
///   is hidden from the client unless detailed errors are enabled, because it
///   may carry server internals.
///
/// `HubError` deliberately does not implement `std::error::Error`, so that
/// `?` converts every error type into it (as `anyhow::Error` does).
pub struct HubError {
    pub(crate) kind: HubErrorKind,
}

#[derive(Debug, Clone)]
pub(crate) enum HubErrorKind {
    /// A `HubException`: the message is meant for the client.
    Hub(String),
    /// Any other failure: shown only with detailed errors.
    Internal { type_name: String, message: String },
    /// The arguments could not be bound to the method's parameters.
    Binding(String),
}

impl HubError {
    /// An error whose message is always shown to the client (ASP.NET Core's
    /// `HubException`).
    pub fn new(message: impl Into<String>) -> Self {
        HubError {
            kind: HubErrorKind::Hub(message.into()),
        }
    }

    /// An internal error: the client sees a generic message unless detailed
    /// errors are enabled.
    pub fn internal<E: fmt::Display + ?Sized>(error: &E) -> Self {
        HubError {
            kind: HubErrorKind::Internal {
                type_name: "Exception".to_owned(),
                message: error.to_string(),
            },
        }
    }

    pub(crate) fn binding(detail: impl Into<String>) -> Self {
        HubError {
            kind: HubErrorKind::Binding(detail.into()),
        }
    }

    /// The error's own message (without any prefix).
    pub fn message(&self) -> &str {
        match &self.kind {
            HubErrorKind::Hub(m) | HubErrorKind::Binding(m) => m,
            HubErrorKind::Internal { message, .. } => message,
        }
    }

    /// Whether the message is always shown to clients (see [`HubError::new`]).
    pub fn is_hub_exception(&self) -> bool {
        matches!(self.kind, HubErrorKind::Hub(_))
    }

    /// The ` Type: message` suffix ASP.NET Core appends to error texts, if
    /// this error may be shown.
    pub(crate) fn detail(&self, detailed: bool) -> Option<String> {
        match &self.kind {
            HubErrorKind::Hub(m) => Some(format!("HubException: {m}")),
            HubErrorKind::Internal { type_name, message } if detailed => {
                Some(format!("{type_name}: {message}"))
            }
            HubErrorKind::Binding(m) if detailed => Some(format!("InvalidDataException: {m}")),
            _ => None,
        }
    }
}

impl fmt::Debug for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HubError {
    fn from(error: E) -> Self {
        let full = std::any::type_name::<E>();
        // `my_crate::module::ParseError<T>` → `ParseError`: the short name is
        // what a reader of the detailed message wants, like .NET's type name.
        let base = full.split('<').next().unwrap_or(full);
        let short = base.rsplit("::").next().unwrap_or(base);
        HubError {
            kind: HubErrorKind::Internal {
                type_name: short.to_owned(),
                message: error.to_string(),
            },
        }
    }
}

/// Why a connection ended abnormally; passed to `on_disconnected`.
///
/// The `Display` text is what ASP.NET Core puts after
/// `Connection closed with an error.` when detailed errors are enabled.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The client sent nothing (not even a Ping) for `ClientTimeoutInterval`.
    #[error(
        "OperationCanceledException: Client hasn't sent a message/ping within the configured ClientTimeoutInterval."
    )]
    ClientTimeout,
    /// A message exceeded `MaximumReceiveMessageSize`, or could not be parsed.
    #[error("InvalidDataException: {0}")]
    InvalidData(String),
    /// The client closed the connection with an error (`Close` message with `error`).
    #[error("HubException: {0}")]
    ClosedByClient(String),
    /// The outbound queue was full: the client did not read fast enough.
    #[error(
        "SlowConsumerException: The client did not read its messages fast enough and its outbound queue overflowed."
    )]
    SlowConsumer,
    /// The transport failed (socket error, abrupt disconnect, stuck write).
    #[error("IOException: {0}")]
    Transport(String),
    /// `on_connected` failed.
    #[error("{0}")]
    OnConnected(String),
}

impl ConnectionError {
    /// Whether the text may be shown to the client without detailed errors
    /// (ASP.NET Core shows `HubException`s always).
    pub(crate) fn always_shown(&self) -> bool {
        matches!(self, ConnectionError::ClosedByClient(_))
    }
}

/// Failure to send a message to clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The arguments could not be serialized.
    #[error("could not serialize the message: {0}")]
    Encode(#[from] tidings_protocol::EncodeError),
    /// The message was built from frames that do not include this protocol.
    #[error("the message has no {0} frame")]
    NoFrame(tidings_protocol::Protocol),
    /// The lifetime manager (for example a backplane) failed to deliver.
    #[error("could not deliver the message: {0}")]
    Delivery(String),
}

/// Failure to change a group membership.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The lifetime manager (for example a backplane) failed.
    #[error("could not change the group membership: {0}")]
    Delivery(String),
}
