//! The wire side of the ASP.NET Core SignalR protocol, without any I/O.
//!
//! This crate turns bytes into [`HubMessage`]s and back, for both hub protocols the official clients
//! speak:
//!
//! * **JSON** ([`Protocol::Json`]): each message is a JSON object followed by the record separator
//!   [`RECORD_SEPARATOR`] (`0x1E`).
//! * **MessagePack** ([`Protocol::MessagePack`]): each message is a MessagePack array prefixed with its
//!   length as a VarInt.
//!
//! It also covers the [`handshake`] that selects the protocol (and the server's decision on it), the
//! [`negotiate`] request query and response body, and the Server-Sent Events framing ([`sse`]).
//! Transports, connections and hubs live elsewhere; nothing here depends on an async runtime or HTTP.
//!
//! Arguments, results and stream items are carried as [`Payload`]s: the serialized bytes of one value,
//! sliced out of the received frame without copying and deserialized only when the target type is known.
//!
//! ```
//! use tidings_protocol::{HubMessage, Invocation, MessageDecoder, Protocol, ToArguments};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let protocol = Protocol::Json;
//! let args = ("alice", 42).to_arguments(protocol)?;
//! let mut wire = Vec::new();
//! protocol.write_message(&HubMessage::Invocation(Invocation::new("Send", args)), &mut wire)?;
//! assert_eq!(wire, b"{\"type\":1,\"target\":\"Send\",\"arguments\":[\"alice\",42]}\x1e");
//!
//! let mut decoder = MessageDecoder::new(protocol, Some(32 * 1024));
//! decoder.push(&wire);
//! let Some(HubMessage::Invocation(invocation)) = decoder.next_message()? else { panic!() };
//! assert_eq!(invocation.arguments[1].deserialize::<i32>()?, 42);
//! # Ok(())
//! # }
//! ```

mod decoder;
mod error;
pub mod handshake;
mod json;
mod message;
mod msgpack;
pub mod negotiate;
mod payload;
mod protocol;
pub mod resume;
pub mod sse;

pub use decoder::MessageDecoder;
pub use error::{DecodeError, EncodeError, HandshakeError, NegotiateError, PayloadError};
pub use handshake::{HandshakeRequest, HandshakeResponse};
pub use message::{
    CancelInvocation, Close, Completion, CompletionResult, Headers, HubMessage, Invocation,
    StreamItem,
};
pub use negotiate::{
    AvailableTransport, NegotiateRequest, NegotiateResponse, TransferFormat, TransportType,
};
pub use payload::{Payload, ToArguments};
pub use protocol::Protocol;

/// The byte that terminates every JSON message and the handshake (ASCII record separator).
pub const RECORD_SEPARATOR: u8 = 0x1e;
