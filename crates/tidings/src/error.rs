//! Errors: what a hub method returns ([`HubError`]), why a connection ended
//! ([`ConnectionError`]), what sending to clients can fail with
//! ([`SendError`]), why a client result was not obtained
//! ([`InvokeError`]), and why a presence query was not answered
//! ([`PresenceError`]).
//!
//! The texts mirror ASP.NET Core SignalR on purpose: clients written against
//! ASP.NET Core match on them (`HubException: …`, `Connection closed with an
//! error.`), so the wording is part of the wire contract.

use std::{any::Any, fmt, time::Duration};

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
    /// A `HubException` with a type name of the application's choosing.
    Typed { type_name: String, message: String },
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

    /// Names the error's type, which detailed error texts show before the
    /// message as ASP.NET Core shows the exception's type
    /// (`InvalidOperationException: …`). Without it an error converted
    /// with `?` is named after its Rust type (`ParseIntError`), and
    /// [`HubError::internal`] says `Exception`. A [`HubError::new`] error
    /// named this way is shown with its name instead of `HubException`
    /// (as a subclass of `HubException` is in ASP.NET Core).
    #[must_use]
    pub fn with_type_name(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.kind = match self.kind {
            HubErrorKind::Hub(message) | HubErrorKind::Typed { message, .. } => {
                HubErrorKind::Typed {
                    type_name: name,
                    message,
                }
            }
            HubErrorKind::Internal { message, .. } => HubErrorKind::Internal {
                type_name: name,
                message,
            },
            // Binding failures are the server's own: their name is fixed.
            binding @ HubErrorKind::Binding(_) => binding,
        };
        self
    }

    /// The type name detailed error texts show (`HubException` for
    /// [`HubError::new`]).
    pub fn type_name(&self) -> &str {
        match &self.kind {
            HubErrorKind::Hub(_) => "HubException",
            HubErrorKind::Binding(_) => "InvalidDataException",
            HubErrorKind::Internal { type_name, .. } | HubErrorKind::Typed { type_name, .. } => {
                type_name
            }
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
            HubErrorKind::Internal { message, .. } | HubErrorKind::Typed { message, .. } => message,
        }
    }

    /// Whether the message is always shown to clients (see [`HubError::new`]).
    pub fn is_hub_exception(&self) -> bool {
        matches!(self.kind, HubErrorKind::Hub(_) | HubErrorKind::Typed { .. })
    }

    /// The ` Type: message` suffix ASP.NET Core appends to error texts, if
    /// this error may be shown.
    pub(crate) fn detail(&self, detailed: bool) -> Option<String> {
        match &self.kind {
            HubErrorKind::Hub(m) => Some(format!("HubException: {m}")),
            HubErrorKind::Typed { type_name, message } => Some(format!("{type_name}: {message}")),
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
        // A failed client result keeps ASP.NET Core's meaning when a hub
        // method passes it on with `?` (see `InvokeError`).
        if let Some(invoke) = (&error as &dyn Any).downcast_ref::<InvokeError>() {
            return invoke.to_hub_error();
        }
        HubError {
            kind: HubErrorKind::Internal {
                type_name: short_type_name::<E>().to_owned(),
                message: error.to_string(),
            },
        }
    }
}

/// `my_crate::module::ParseError<T>` → `ParseError`: the short name is what
/// a reader of an error message wants, like .NET's type name.
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
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
    /// The client did not read fast enough: its outbound queue overflowed,
    /// or no write made progress within the transport send timeout.
    #[error(
        "SlowConsumerException: The client did not read its messages fast enough (its outbound queue overflowed, or nothing could be written to it within the send timeout)."
    )]
    SlowConsumer,
    /// The transport failed (socket error, abrupt disconnect, stuck write).
    #[error("IOException: {0}")]
    Transport(String),
    /// `on_connected` failed.
    #[error("{0}")]
    OnConnected(String),
    /// The connection's credentials expired (see
    /// [`HubOptions::close_on_authentication_expiration`](crate::HubOptions::close_on_authentication_expiration)).
    #[error("AuthenticationExpiredException: The authentication of the connection expired.")]
    AuthenticationExpired,
}

impl ConnectionError {
    /// Whether the text may be shown to the client without detailed errors
    /// (ASP.NET Core shows `HubException`s always).
    pub(crate) fn always_shown(&self) -> bool {
        matches!(
            self,
            ConnectionError::ClosedByClient(_) | ConnectionError::AuthenticationExpired
        )
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

/// Failure to answer a presence query ([`Presence`](crate::Presence)).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The lifetime manager keeps no presence information.
    #[error("this lifetime manager does not answer presence queries")]
    Unsupported,
    /// The lifetime manager (for example a backplane) failed to answer.
    #[error("could not read presence: {0}")]
    Backend(String),
}

/// Why a client result ([`SingleClientProxy::invoke`](crate::SingleClientProxy::invoke))
/// was not obtained.
///
/// Passed on from a hub method with `?`, it fails the invocation the way
/// ASP.NET Core does: an error the client answered with, or a result that
/// could not be read, is a `HubException` (its text always reaches the
/// caller); the other failures are hidden unless detailed errors are on.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// No connection with this id is connected (to this server, or to any
    /// server of a backplane).
    #[error("Connection '{0}' does not exist.")]
    UnknownConnection(String),
    /// The connection ended before it answered.
    #[error("Connection '{0}' disconnected.")]
    Disconnected(String),
    /// The client answered with an error. The JavaScript client answers
    /// `Client didn't provide a result.` when it has no handler for the
    /// method, and the text of the exception its handler threw otherwise.
    #[error("{0}")]
    Client(String),
    /// The client did not answer in time (see
    /// [`HubOptions::client_result_timeout`](crate::HubOptions::client_result_timeout)).
    #[error("The client did not provide a result within {} ms.", .0.as_millis())]
    Timeout(Duration),
    /// The client's result is not a value of the expected type.
    #[error("Error trying to deserialize result to {type_name}. {message}")]
    Deserialize {
        /// The expected type's name.
        type_name: String,
        /// Why it could not be read.
        message: String,
    },
    /// Client results are not available inside `on_connected`: the
    /// connection's messages are not read until it returns, so the answer
    /// could never arrive.
    #[error("Client results inside OnConnectedAsync Hub methods are not allowed.")]
    NotAllowed,
    /// The arguments could not be serialized.
    #[error("could not serialize the invocation: {0}")]
    Encode(String),
    /// The lifetime manager (for example a backplane) failed.
    #[error("could not deliver the invocation: {0}")]
    Delivery(String),
}

impl InvokeError {
    /// The hub error ASP.NET Core reports for this failure.
    fn to_hub_error(&self) -> HubError {
        let type_name = match self {
            InvokeError::Client(_) | InvokeError::Deserialize { .. } => {
                return HubError::new(self.to_string());
            }
            InvokeError::UnknownConnection(_)
            | InvokeError::Disconnected(_)
            | InvokeError::Delivery(_) => "IOException",
            InvokeError::Timeout(_) => "TimeoutException",
            InvokeError::NotAllowed => "InvalidOperationException",
            InvokeError::Encode(_) => "EncodeError",
        };
        HubError {
            kind: HubErrorKind::Internal {
                type_name: type_name.to_owned(),
                message: self.to_string(),
            },
        }
    }
}

impl From<tidings_protocol::EncodeError> for InvokeError {
    fn from(error: tidings_protocol::EncodeError) -> Self {
        InvokeError::Encode(error.to_string())
    }
}

impl From<SendError> for InvokeError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::Encode(error) => InvokeError::Encode(error.to_string()),
            other => InvokeError::Delivery(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through_question_mark(error: InvokeError) -> HubError {
        let failing = || -> Result<(), HubError> { Err(error)? };
        failing().expect_err("fails")
    }

    #[test]
    fn client_answers_are_hub_exceptions() {
        let error = through_question_mark(InvokeError::Client("Error: nope".into()));
        assert!(error.is_hub_exception());
        assert_eq!(
            error.detail(false).as_deref(),
            Some("HubException: Error: nope")
        );
    }

    #[test]
    fn applications_name_their_errors() {
        let error = HubError::internal("no such order").with_type_name("InvalidOperationException");
        assert_eq!(error.type_name(), "InvalidOperationException");
        assert_eq!(error.detail(false), None);
        assert_eq!(
            error.detail(true).as_deref(),
            Some("InvalidOperationException: no such order")
        );
        assert_eq!(HubError::internal("x").type_name(), "Exception");
        let parse: Result<i32, HubError> = "x".parse::<i32>().map_err(HubError::from);
        let parse = parse.expect_err("not a number");
        assert_eq!(parse.type_name(), "ParseIntError");
        // A named HubException is still always shown.
        let error = HubError::new("slow down").with_type_name("RateLimitedException");
        assert!(error.is_hub_exception());
        assert_eq!(
            error.detail(false).as_deref(),
            Some("RateLimitedException: slow down")
        );
        assert_eq!(HubError::new("x").type_name(), "HubException");
    }

    #[test]
    fn other_failures_are_shown_only_in_detail() {
        let error = through_question_mark(InvokeError::Disconnected("abc".into()));
        assert!(!error.is_hub_exception());
        assert_eq!(error.detail(false), None);
        assert_eq!(
            error.detail(true).as_deref(),
            Some("IOException: Connection 'abc' disconnected.")
        );
        let error = through_question_mark(InvokeError::Timeout(Duration::from_millis(250)));
        assert_eq!(
            error.detail(true).as_deref(),
            Some("TimeoutException: The client did not provide a result within 250 ms.")
        );
    }
}
