//! The hub message model shared by both hub protocols (`type` 1–9 of the SignalR hub protocol).

use std::collections::BTreeMap;

use crate::Payload;

/// Custom string headers attached to a message (for example W3C trace context). Unknown headers are
/// carried along and otherwise ignored.
pub type Headers = BTreeMap<String, String>;

/// An `Invocation` (type 1) or `StreamInvocation` (type 4): a call of `target` with `arguments`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Invocation {
    /// Custom headers.
    pub headers: Headers,
    /// `None` for a non-blocking call that expects no completion. Always `Some` for a stream invocation.
    /// The decoders map an empty id to `None`, as ASP.NET Core does.
    pub invocation_id: Option<String>,
    /// The method name.
    pub target: String,
    /// The arguments, each one serialized value (client-to-server stream arguments are not included).
    pub arguments: Vec<Payload>,
    /// Ids of the client-to-server streams that feed the stream parameters of the method, in order.
    pub stream_ids: Vec<String>,
}

impl Invocation {
    /// A non-blocking invocation (no id) without headers or streams.
    pub fn new(target: impl Into<String>, arguments: Vec<Payload>) -> Self {
        Invocation {
            headers: Headers::new(),
            invocation_id: None,
            target: target.into(),
            arguments,
            stream_ids: Vec::new(),
        }
    }

    /// Sets the invocation id, turning this into a call that expects a completion.
    pub fn with_invocation_id(mut self, id: impl Into<String>) -> Self {
        self.invocation_id = Some(id.into());
        self
    }
}

/// A `StreamItem` (type 2): one item of a stream identified by `invocation_id`.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamItem {
    /// Custom headers.
    pub headers: Headers,
    /// The stream (server-to-client: the stream invocation's id; client-to-server: the stream id).
    pub invocation_id: String,
    /// The item (a null value is still an item).
    pub item: Payload,
}

/// A `Completion` (type 3): the end of an invocation or stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// Custom headers.
    pub headers: Headers,
    /// The invocation or stream being completed.
    pub invocation_id: String,
    /// Success with or without a value, or failure.
    pub result: CompletionResult,
}

impl Completion {
    /// A completion without a result (used to end streams).
    pub fn void(invocation_id: impl Into<String>) -> Self {
        Completion {
            headers: Headers::new(),
            invocation_id: invocation_id.into(),
            result: CompletionResult::Void,
        }
    }

    /// A successful completion carrying `value`.
    pub fn value(invocation_id: impl Into<String>, value: Payload) -> Self {
        Completion {
            headers: Headers::new(),
            invocation_id: invocation_id.into(),
            result: CompletionResult::Value(value),
        }
    }

    /// A failed completion.
    pub fn error(invocation_id: impl Into<String>, error: impl Into<String>) -> Self {
        Completion {
            headers: Headers::new(),
            invocation_id: invocation_id.into(),
            result: CompletionResult::Error(error.into()),
        }
    }
}

/// The outcome carried by a [`Completion`].
#[derive(Clone, Debug, PartialEq)]
pub enum CompletionResult {
    /// No result (JSON: neither `result` nor `error`; MessagePack: result kind 2).
    Void,
    /// A result value, possibly null (JSON: `result`; MessagePack: result kind 3).
    Value(Payload),
    /// An error message (JSON: `error`; MessagePack: result kind 1).
    Error(String),
}

/// A `CancelInvocation` (type 5): the client no longer wants the stream `invocation_id`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CancelInvocation {
    /// Custom headers.
    pub headers: Headers,
    /// The stream invocation to cancel.
    pub invocation_id: String,
}

/// A `Close` (type 7): the sender is closing the connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Close {
    /// Why, if the close is due to an error.
    pub error: Option<String>,
    /// Whether the peer may reconnect automatically.
    pub allow_reconnect: bool,
}

/// One hub protocol message.
#[derive(Clone, Debug, PartialEq)]
pub enum HubMessage {
    /// Type 1.
    Invocation(Invocation),
    /// Type 2.
    StreamItem(StreamItem),
    /// Type 3.
    Completion(Completion),
    /// Type 4.
    StreamInvocation(Invocation),
    /// Type 5.
    CancelInvocation(CancelInvocation),
    /// Type 6: keep-alive. Never has headers.
    Ping,
    /// Type 7.
    Close(Close),
    /// Type 8 (stateful reconnect): the highest sequence id the sender has processed.
    Ack {
        /// The acknowledged sequence id.
        sequence_id: u64,
    },
    /// Type 9 (stateful reconnect): the sequence id of the next message the sender sends.
    Sequence {
        /// The sequence id of the following message.
        sequence_id: u64,
    },
}

impl HubMessage {
    /// The numeric `type` of this message on the wire (1–9).
    pub fn message_type(&self) -> u8 {
        match self {
            HubMessage::Invocation(_) => 1,
            HubMessage::StreamItem(_) => 2,
            HubMessage::Completion(_) => 3,
            HubMessage::StreamInvocation(_) => 4,
            HubMessage::CancelInvocation(_) => 5,
            HubMessage::Ping => 6,
            HubMessage::Close(_) => 7,
            HubMessage::Ack { .. } => 8,
            HubMessage::Sequence { .. } => 9,
        }
    }

    /// Whether this message counts for stateful reconnect (gets a sequence id and is buffered for replay):
    /// invocations, stream items, completions, stream invocations and cancellations.
    pub fn is_trackable(&self) -> bool {
        matches!(self.message_type(), 1..=5)
    }
}
