//! Arguments of outgoing invocations: [`InvocationArgs`] (tuples of values, or a raw payload list)
//! and [`ClientStream`], a Rust `Stream` passed as an argument to a hub method that takes a
//! client-to-server stream.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::Stream;
use serde::Serialize;
use tidings_protocol::{EncodeError, Payload, Protocol};

/// The argument list of an invocation: `()`, a tuple of up to 8 [`Argument`]s, or a `Vec<Payload>`
/// of values already serialized in the connection's protocol.
///
/// Arguments are serialized once, when the call is made. A [`ClientStream`] element is not
/// serialized: it is sent as a client-to-server stream (it gets a stream id, and its items follow
/// the invocation).
pub trait InvocationArgs {
    /// Serializes the values and collects the streams.
    fn into_arg_parts(self, protocol: Protocol) -> Result<ArgParts, EncodeError>;
}

/// Serialized arguments and the client-to-server streams of one invocation.
#[derive(Debug, Default)]
pub struct ArgParts {
    pub(crate) values: Vec<Payload>,
    pub(crate) streams: Vec<ClientStream>,
}

/// One element of an argument tuple: any `Serialize` value, or a [`ClientStream`].
pub trait Argument {
    /// Adds this argument to `parts`.
    fn add_to(self, protocol: Protocol, parts: &mut ArgParts) -> Result<(), EncodeError>;
}

impl<T: Serialize> Argument for T {
    fn add_to(self, protocol: Protocol, parts: &mut ArgParts) -> Result<(), EncodeError> {
        parts.values.push(protocol.encode_value(&self)?);
        Ok(())
    }
}

impl Argument for ClientStream {
    fn add_to(self, _protocol: Protocol, parts: &mut ArgParts) -> Result<(), EncodeError> {
        parts.streams.push(self);
        Ok(())
    }
}

impl InvocationArgs for () {
    fn into_arg_parts(self, _protocol: Protocol) -> Result<ArgParts, EncodeError> {
        Ok(ArgParts::default())
    }
}

impl InvocationArgs for Vec<Payload> {
    fn into_arg_parts(self, protocol: Protocol) -> Result<ArgParts, EncodeError> {
        if let Some(other) = self.iter().find(|p| p.protocol() != protocol) {
            return Err(EncodeError::ProtocolMismatch {
                expected: protocol,
                found: other.protocol(),
            });
        }
        Ok(ArgParts {
            values: self,
            streams: Vec::new(),
        })
    }
}

macro_rules! tuple_args {
    ($($name:ident : $idx:tt),+) => {
        impl<$($name: Argument),+> InvocationArgs for ($($name,)+) {
            fn into_arg_parts(self, protocol: Protocol) -> Result<ArgParts, EncodeError> {
                let mut parts = ArgParts {
                    values: Vec::with_capacity(tuple_args!(@count $($name)+)),
                    streams: Vec::new(),
                };
                $(self.$idx.add_to(protocol, &mut parts)?;)+
                Ok(parts)
            }
        }
    };
    (@count $($name:ident)+) => { 0 $(+ tuple_args!(@one $name))+ };
    (@one $name:ident) => { 1 };
}

tuple_args!(A: 0);
tuple_args!(A: 0, B: 1);
tuple_args!(A: 0, B: 1, C: 2);
tuple_args!(A: 0, B: 1, C: 2, D: 3);
tuple_args!(A: 0, B: 1, C: 2, D: 3, E: 4);
tuple_args!(A: 0, B: 1, C: 2, D: 3, E: 4, F: 5);
tuple_args!(A: 0, B: 1, C: 2, D: 3, E: 4, F: 5, G: 6);
tuple_args!(A: 0, B: 1, C: 2, D: 3, E: 4, F: 5, G: 6, H: 7);

/// One item of a client-to-server stream, ready for the wire: a value, or the error that ends
/// the stream.
pub(crate) type UploadItem = Result<Payload, String>;

/// The part of a client stream the connection polls: yields serialized items.
trait UploadSource: Send {
    fn poll_item(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        protocol: Protocol,
    ) -> Poll<Option<UploadItem>>;
}

/// A Rust `Stream` passed as an argument: the hub method receives it as a client-to-server stream.
///
/// Its items are serialized as they are produced and sent as StreamItem messages; the end of the
/// stream sends a Completion, and an `Err` item from [`ClientStream::try_new`] ends the stream
/// with that error (the hub method sees it as a failure of its stream parameter).
///
/// ```no_run
/// use futures_util::stream;
/// use tidings_client::{ClientStream, HubConnection};
///
/// # async fn demo(connection: HubConnection) -> Result<(), Box<dyn std::error::Error>> {
/// let numbers = stream::iter([1, 2, 3]);
/// let total: i64 = connection.invoke("Sum", (ClientStream::new(numbers),)).await?;
/// assert_eq!(total, 6);
/// # Ok(())
/// # }
/// ```
pub struct ClientStream {
    source: Pin<Box<dyn UploadSource>>,
}

impl fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStream").finish_non_exhaustive()
    }
}

impl ClientStream {
    /// A stream of values.
    pub fn new<S, T>(stream: S) -> Self
    where
        S: Stream<Item = T> + Send + 'static,
        T: Serialize,
    {
        ClientStream {
            source: Box::pin(Values { stream }),
        }
    }

    /// A stream of results: the first `Err` ends the stream with its text as the error.
    pub fn try_new<S, T, E>(stream: S) -> Self
    where
        S: Stream<Item = Result<T, E>> + Send + 'static,
        T: Serialize,
        E: fmt::Display,
    {
        ClientStream {
            source: Box::pin(Fallible {
                stream,
                failed: false,
            }),
        }
    }

    pub(crate) fn poll_item(
        &mut self,
        cx: &mut Context<'_>,
        protocol: Protocol,
    ) -> Poll<Option<UploadItem>> {
        self.source.as_mut().poll_item(cx, protocol)
    }
}

fn encode<T: Serialize>(protocol: Protocol, value: &T) -> UploadItem {
    protocol
        .encode_value(value)
        .map_err(|e| format!("a stream item could not be serialized: {e}"))
}

pin_project_lite::pin_project! {
    struct Values<S> {
        #[pin]
        stream: S,
    }
}

impl<S, T> UploadSource for Values<S>
where
    S: Stream<Item = T> + Send,
    T: Serialize,
{
    fn poll_item(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        protocol: Protocol,
    ) -> Poll<Option<UploadItem>> {
        self.project()
            .stream
            .poll_next(cx)
            .map(|item| item.map(|value| encode(protocol, &value)))
    }
}

pin_project_lite::pin_project! {
    struct Fallible<S> {
        #[pin]
        stream: S,
        failed: bool,
    }
}

impl<S, T, E> UploadSource for Fallible<S>
where
    S: Stream<Item = Result<T, E>> + Send,
    T: Serialize,
    E: fmt::Display,
{
    fn poll_item(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        protocol: Protocol,
    ) -> Poll<Option<UploadItem>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        this.stream.poll_next(cx).map(|item| {
            item.map(|result| match result {
                Ok(value) => encode(protocol, &value),
                Err(error) => {
                    *this.failed = true;
                    Err(error.to_string())
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_serialize_values_and_keep_streams_apart() {
        let parts = ("a", ClientStream::new(futures_util::stream::iter([1])), 2)
            .into_arg_parts(Protocol::Json)
            .expect("serializable");
        let values: Vec<&[u8]> = parts.values.iter().map(Payload::as_bytes).collect();
        assert_eq!(values, [&b"\"a\""[..], &b"2"[..]]);
        assert_eq!(parts.streams.len(), 1);
    }

    #[test]
    fn payload_lists_must_match_the_protocol() {
        let json = vec![Payload::null(Protocol::Json)];
        assert!(json.clone().into_arg_parts(Protocol::Json).is_ok());
        assert!(matches!(
            json.into_arg_parts(Protocol::MessagePack),
            Err(EncodeError::ProtocolMismatch { .. })
        ));
    }
}
