//! [`SerializedMessage`]: one outgoing invocation, serialized at most once per
//! hub protocol however many connections receive it.
//!
//! A broadcast to ten thousand connections creates one `SerializedMessage`
//! behind an `Arc`. Queueing it for a connection takes the frame of that
//! connection's protocol; the first recipient of each protocol serializes,
//! every other one gets the cached bytes (`Bytes` clones are reference
//! counts). A backplane
//! that received frames already serialized builds the message from them with
//! [`SerializedMessage::from_frames`] and nothing is serialized again.
//!
//! A message can also be a request to close its recipients
//! ([`SerializedMessage::close`]): it travels through the same targets and
//! backplanes as an invocation, and each recipient's connection ends with
//! a Close message carrying the reason.

use std::{fmt, sync::OnceLock};

use bytes::Bytes;
use tidings_protocol::{Close, HubMessage, Invocation, Protocol, ToArguments};

use crate::error::SendError;

type ErasedArguments = Box<dyn ToArguments + Send + Sync>;

/// An invocation of a client method, serialized lazily and at most once per
/// protocol.
pub struct SerializedMessage {
    target: Box<str>,
    /// Set only for a client result's invocation, which expects an answer.
    invocation_id: Option<Box<str>>,
    arguments: Option<ErasedArguments>,
    /// Set for a request to close the recipients: the reason, if any.
    close: Option<Option<Box<str>>>,
    json: OnceLock<Option<Bytes>>,
    msgpack: OnceLock<Option<Bytes>>,
    /// Where it came from, for the journals of stateful connections (see
    /// [`with_mark`](Self::with_mark)).
    mark: Option<Bytes>,
}

impl SerializedMessage {
    /// A request to close every recipient's connection: each is sent a
    /// Close message with `reason` as its error (and no reconnect) and
    /// then closed. Its frames are that Close message.
    pub fn close(reason: Option<String>) -> Self {
        SerializedMessage {
            target: "".into(),
            invocation_id: None,
            arguments: None,
            close: Some(reason.map(String::into_boxed_str)),
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            mark: None,
        }
    }

    /// The same message marked with where it came from (a backplane's
    /// publisher and number), which the journal of a stateful connection
    /// records with it (see [`Connection::try_send_marked`](crate::Connection::try_send_marked)).
    pub fn with_mark(mut self, mark: Bytes) -> Self {
        self.mark = Some(mark);
        self
    }

    /// Its mark, if any.
    pub fn mark(&self) -> Option<&Bytes> {
        self.mark.as_ref()
    }

    /// Whether this is a request to close the recipients.
    pub fn is_close(&self) -> bool {
        self.close.is_some()
    }

    /// The reason of a close request.
    pub fn close_reason(&self) -> Option<&str> {
        self.close.as_ref().and_then(|reason| reason.as_deref())
    }

    /// An invocation of `target` on the client with `arguments`.
    pub fn invocation(
        target: impl Into<Box<str>>,
        arguments: impl ToArguments + Send + Sync + 'static,
    ) -> Self {
        SerializedMessage {
            target: target.into(),
            invocation_id: None,
            arguments: Some(Box::new(arguments)),
            close: None,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            mark: None,
        }
    }

    /// A message whose frames (with their record separator or length prefix)
    /// were serialized elsewhere, e.g. by another server of a backplane.
    /// A protocol without a frame cannot be delivered.
    pub fn from_frames(json: Option<Bytes>, msgpack: Option<Bytes>) -> Self {
        SerializedMessage {
            target: "".into(),
            invocation_id: None,
            arguments: None,
            close: None,
            json: OnceLock::from(json),
            msgpack: OnceLock::from(msgpack),
            mark: None,
        }
    }

    /// The complete frame of this message in `protocol`, serializing it on
    /// first use. `None` if the arguments cannot be serialized in it.
    pub fn frame(&self, protocol: Protocol) -> Option<Bytes> {
        let cell = match protocol {
            Protocol::Json => &self.json,
            Protocol::MessagePack => &self.msgpack,
        };
        cell.get_or_init(|| match self.serialize(protocol) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                tracing::warn!(target = %self.target, %protocol, %error, "cannot serialize a message");
                None
            }
        })
        .clone()
    }

    /// Serializes now, reporting the error instead of logging it. Used by
    /// senders that want to fail early (e.g. before publishing to a backplane).
    pub fn try_frame(&self, protocol: Protocol) -> Result<Bytes, SendError> {
        let cell = match protocol {
            Protocol::Json => &self.json,
            Protocol::MessagePack => &self.msgpack,
        };
        if let Some(cached) = cell.get() {
            return cached.clone().ok_or(SendError::NoFrame(protocol));
        }
        let bytes = self.serialize(protocol)?;
        Ok(cell
            .get_or_init(|| Some(bytes.clone()))
            .clone()
            .unwrap_or(bytes))
    }

    fn serialize(&self, protocol: Protocol) -> Result<Bytes, SendError> {
        if let Some(reason) = &self.close {
            let message = HubMessage::Close(Close {
                error: reason.as_deref().map(str::to_owned),
                allow_reconnect: false,
            });
            let mut out = Vec::with_capacity(64);
            protocol.write_message(&message, &mut out)?;
            return Ok(Bytes::from(out));
        }
        let Some(arguments) = &self.arguments else {
            return Err(SendError::NoFrame(protocol));
        };
        let arguments = arguments.to_arguments(protocol)?;
        let mut invocation = Invocation::new(self.target.to_string(), arguments);
        invocation.invocation_id = self.invocation_id.as_deref().map(str::to_owned);
        let message = HubMessage::Invocation(invocation);
        let mut out = Vec::with_capacity(64);
        protocol.write_message(&message, &mut out)?;
        Ok(Bytes::from(out))
    }
}

/// A call of a client method that expects the client's answer (a client
/// result), before the lifetime manager gave it an invocation id.
///
/// Built by [`SingleClientProxy::invoke`](crate::SingleClientProxy::invoke)
/// and handed to [`LifetimeManager::invoke_connection`](crate::LifetimeManager::invoke_connection).
pub struct ClientInvocation {
    target: Box<str>,
    arguments: ErasedArguments,
}

impl ClientInvocation {
    /// A call of `target` on the client with `arguments`.
    pub fn new(
        target: impl Into<Box<str>>,
        arguments: impl ToArguments + Send + Sync + 'static,
    ) -> Self {
        ClientInvocation {
            target: target.into(),
            arguments: Box::new(arguments),
        }
    }

    /// The client method.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The message to send, carrying `invocation_id` (which the client's
    /// Completion will echo). Like any [`SerializedMessage`] it is
    /// serialized at most once per protocol.
    pub fn into_message(self, invocation_id: impl Into<Box<str>>) -> SerializedMessage {
        SerializedMessage {
            target: self.target,
            invocation_id: Some(invocation_id.into()),
            arguments: Some(self.arguments),
            close: None,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            mark: None,
        }
    }
}

impl fmt::Debug for ClientInvocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientInvocation")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SerializedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerializedMessage")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Serializes a message the server itself produced (Close, Completion, Ping).
pub(crate) fn encode(protocol: Protocol, message: &HubMessage) -> Bytes {
    let mut out = Vec::with_capacity(64);
    if let Err(error) = protocol.write_message(message, &mut out) {
        // Only payloads can fail to serialize, and those were serialized
        // (and checked) already when the payload was built.
        tracing::error!(%error, "cannot serialize a server message");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_once_per_protocol() {
        let msg = SerializedMessage::invocation("Hello", ("a", 1));
        let json = msg.frame(Protocol::Json).expect("json");
        assert_eq!(
            &json[..],
            b"{\"type\":1,\"target\":\"Hello\",\"arguments\":[\"a\",1]}\x1e"
        );
        let again = msg.frame(Protocol::Json).expect("json");
        // The same allocation: the second call did not serialize again.
        assert_eq!(json.as_ptr(), again.as_ptr());
        let mp = msg.frame(Protocol::MessagePack).expect("msgpack");
        assert_eq!(mp[0] as usize, mp.len() - 1);
    }

    #[test]
    fn a_client_result_invocation_carries_its_id() {
        let msg = ClientInvocation::new("Ask", ("q",)).into_message("s7");
        let json = msg.frame(Protocol::Json).expect("json");
        assert_eq!(
            &json[..],
            b"{\"type\":1,\"invocationId\":\"s7\",\"target\":\"Ask\",\"arguments\":[\"q\"]}\x1e"
        );
    }

    #[test]
    fn a_close_request_is_a_close_message() {
        let msg = SerializedMessage::close(Some("maintenance".into()));
        assert!(msg.is_close());
        assert_eq!(msg.close_reason(), Some("maintenance"));
        let json = msg.frame(Protocol::Json).expect("json");
        assert_eq!(&json[..], b"{\"type\":7,\"error\":\"maintenance\"}\x1e");
        assert!(msg.frame(Protocol::MessagePack).is_some());
        assert!(!SerializedMessage::invocation("X", ()).is_close());
    }

    #[test]
    fn prebuilt_frames() {
        let msg = SerializedMessage::from_frames(Some(Bytes::from_static(b"x\x1e")), None);
        assert_eq!(msg.frame(Protocol::Json).as_deref(), Some(&b"x\x1e"[..]));
        assert!(msg.frame(Protocol::MessagePack).is_none());
        assert!(msg.try_frame(Protocol::MessagePack).is_err());
    }
}
