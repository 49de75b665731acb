//! [`Protocol`]: the choice between the JSON and the MessagePack hub protocol, and the entry points
//! for writing messages and values in either.

use bytes::Bytes;
use serde::Serialize;

use crate::{DecodeError, EncodeError, HubMessage, Payload, TransferFormat, json, msgpack};

/// A hub protocol, selected per connection by the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `json`: UTF-8 JSON objects, each terminated by `0x1E`.
    Json,
    /// `messagepack`: MessagePack arrays, each prefixed with its VarInt length.
    MessagePack,
}

impl Protocol {
    /// Looks a protocol up by its handshake name, case-insensitively (`json`, `messagepack`).
    pub fn from_name(name: &str) -> Option<Protocol> {
        if name.eq_ignore_ascii_case("json") {
            Some(Protocol::Json)
        } else if name.eq_ignore_ascii_case("messagepack") {
            Some(Protocol::MessagePack)
        } else {
            None
        }
    }

    /// The handshake name: `json` or `messagepack`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::MessagePack => "messagepack",
        }
    }

    /// The transfer format the transport must support: `Text` for JSON, `Binary` for MessagePack.
    pub fn transfer_format(self) -> TransferFormat {
        match self {
            Protocol::Json => TransferFormat::Text,
            Protocol::MessagePack => TransferFormat::Binary,
        }
    }

    /// Appends one framed message to `out`: JSON text followed by `0x1E`, or the VarInt length followed
    /// by the MessagePack body.
    ///
    /// On error `out` is left as it was.
    pub fn write_message(self, msg: &HubMessage, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = match self {
            Protocol::Json => json::write_message(msg, out),
            Protocol::MessagePack => msgpack::write_message(msg, out),
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Parses one message frame as [`MessageDecoder::next_frame`](crate::MessageDecoder::next_frame)
    /// returns it. `Ok(None)` for a message of an unknown type (skipped, as the official
    /// implementations do).
    pub fn parse_frame(self, frame: &Bytes) -> Result<Option<HubMessage>, DecodeError> {
        match self {
            Protocol::Json => json::parse_message(frame),
            Protocol::MessagePack => msgpack::parse_message(frame),
        }
    }

    /// Serializes one value (an argument, a result, a stream item) in this protocol.
    ///
    /// MessagePack writes structs as maps keyed by field name, which is what the JavaScript and .NET
    /// clients expect.
    pub fn encode_value<T: Serialize + ?Sized>(self, value: &T) -> Result<Payload, EncodeError> {
        let bytes = match self {
            Protocol::Json => serde_json::to_vec(value)?,
            Protocol::MessagePack => rmp_serde::to_vec_named(value)?,
        };
        Ok(Payload::new_unchecked(self, Bytes::from(bytes)))
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
