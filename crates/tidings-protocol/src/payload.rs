//! [`Payload`] — one serialized value kept as bytes until a handler asks for a concrete type — and
//! [`ToArguments`], the conversion of Rust values into argument lists for outgoing invocations.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{EncodeError, PayloadError, Protocol, msgpack};

/// How deeply MessagePack payloads may nest when deserialized (serde_json's built-in limit is the same).
const MAX_DEPTH: usize = 128;

/// One serialized value in a given protocol: JSON text or exactly one MessagePack value.
///
/// Decoded messages keep their arguments, results and items as slices of the received frame, so
/// cloning a payload or a message is cheap and nothing is parsed twice until
/// [`deserialize`](Payload::deserialize) is called with the target type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Payload {
    protocol: Protocol,
    bytes: Bytes,
}

impl Payload {
    /// Wraps bytes already known to be one valid value (produced by our own encoder or decoder).
    pub(crate) fn new_unchecked(protocol: Protocol, bytes: Bytes) -> Self {
        Payload { protocol, bytes }
    }

    /// Wraps `bytes` that hold exactly one serialized value of `protocol`, checking that they do.
    ///
    /// The JSON encoder copies payload bytes verbatim, so this check is what keeps a frame well-formed.
    pub fn from_raw(protocol: Protocol, bytes: impl Into<Bytes>) -> Result<Self, PayloadError> {
        let bytes = bytes.into();
        let invalid = |reason: String| PayloadError::Invalid { protocol, reason };
        match protocol {
            Protocol::Json => {
                let text = std::str::from_utf8(&bytes).map_err(|e| invalid(e.to_string()))?;
                let raw: &serde_json::value::RawValue =
                    serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
                // Surrounding whitespace would be copied into frames; keep the payload canonical.
                if raw.get().len() != text.len() {
                    return Err(invalid("leading or trailing whitespace".into()));
                }
            }
            Protocol::MessagePack => {
                let end = msgpack::skip_value(&bytes, 0).map_err(|e| invalid(e.to_string()))?;
                if end != bytes.len() {
                    return Err(invalid("trailing bytes after the value".into()));
                }
            }
        }
        Ok(Payload { protocol, bytes })
    }

    /// The null value of `protocol` (`null` in JSON, `nil` in MessagePack).
    pub fn null(protocol: Protocol) -> Payload {
        let bytes = match protocol {
            Protocol::Json => Bytes::from_static(b"null"),
            Protocol::MessagePack => Bytes::from_static(&[0xc0]),
        };
        Payload { protocol, bytes }
    }

    /// The protocol this value is serialized in.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The serialized value.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The serialized value as a shared buffer.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Whether this is the protocol's null value.
    pub fn is_null(&self) -> bool {
        match self.protocol {
            Protocol::Json => self.bytes[..] == *b"null",
            Protocol::MessagePack => self.bytes[..] == [0xc0],
        }
    }

    /// Reads the value as `T`.
    ///
    /// JSON uses `serde_json`. MessagePack uses `rmp_serde`, which accepts what the JavaScript client
    /// writes: structs as maps with string keys (or as arrays), integers of any width, and integers where a
    /// float is expected.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        match self.protocol {
            Protocol::Json => Ok(serde_json::from_slice(&self.bytes)?),
            Protocol::MessagePack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(&self.bytes[..]);
                // The default limit (1024) lets a nested payload from the network overflow a 2 MiB
                // thread stack in recursive visitors; match serde_json's limit instead.
                de.set_max_depth(MAX_DEPTH);
                Ok(T::deserialize(&mut de)?)
            }
        }
    }
}

/// Turns a Rust value into the argument list of an outgoing invocation.
///
/// Implemented for tuples of up to 8 [`Serialize`] elements (`()` is no arguments, `(x,)` is one), for
/// `Vec<T>`, `[T]` and `[T; N]` of `Serialize` elements (one argument per element), and for lists of already
/// serialized [`Payload`]s (which must be in the requested protocol).
pub trait ToArguments {
    /// Serializes each argument in `protocol`.
    fn to_arguments(&self, protocol: Protocol) -> Result<Vec<Payload>, EncodeError>;
}

impl<T: ToArguments + ?Sized> ToArguments for &T {
    fn to_arguments(&self, protocol: Protocol) -> Result<Vec<Payload>, EncodeError> {
        (**self).to_arguments(protocol)
    }
}

impl<T: Serialize> ToArguments for [T] {
    fn to_arguments(&self, protocol: Protocol) -> Result<Vec<Payload>, EncodeError> {
        self.iter().map(|v| protocol.encode_value(v)).collect()
    }
}

impl<T: Serialize> ToArguments for Vec<T> {
    fn to_arguments(&self, protocol: Protocol) -> Result<Vec<Payload>, EncodeError> {
        self.as_slice().to_arguments(protocol)
    }
}

impl<T: Serialize, const N: usize> ToArguments for [T; N] {
    fn to_arguments(&self, protocol: Protocol) -> Result<Vec<Payload>, EncodeError> {
        self.as_slice().to_arguments(protocol)
    }
}

impl ToArguments for [Payload] {
    fn to_arguments(&self, protocol: Protocol) -> Result<Vec<Payload>, EncodeError> {
        self.iter()
            .map(|p| {
                if p.protocol() == protocol {
                    Ok(p.clone())
                } else {
                    Err(EncodeError::ProtocolMismatch {
                        expected: protocol,
                        found: p.protocol(),
                    })
                }
            })
            .collect()
    }
}

impl ToArguments for Vec<Payload> {
    fn to_arguments(&self, protocol: Protocol) -> Result<Vec<Payload>, EncodeError> {
        self.as_slice().to_arguments(protocol)
    }
}

impl ToArguments for () {
    fn to_arguments(&self, _protocol: Protocol) -> Result<Vec<Payload>, EncodeError> {
        Ok(Vec::new())
    }
}

macro_rules! tuple_to_arguments {
    ($($name:ident : $idx:tt),+) => {
        impl<$($name: Serialize),+> ToArguments for ($($name,)+) {
            fn to_arguments(&self, protocol: Protocol) -> Result<Vec<Payload>, EncodeError> {
                Ok(vec![$(protocol.encode_value(&self.$idx)?),+])
            }
        }
    };
}

tuple_to_arguments!(A: 0);
tuple_to_arguments!(A: 0, B: 1);
tuple_to_arguments!(A: 0, B: 1, C: 2);
tuple_to_arguments!(A: 0, B: 1, C: 2, D: 3);
tuple_to_arguments!(A: 0, B: 1, C: 2, D: 3, E: 4);
tuple_to_arguments!(A: 0, B: 1, C: 2, D: 3, E: 4, F: 5);
tuple_to_arguments!(A: 0, B: 1, C: 2, D: 3, E: 4, F: 5, G: 6);
tuple_to_arguments!(A: 0, B: 1, C: 2, D: 3, E: 4, F: 5, G: 6, H: 7);
