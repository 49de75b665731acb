//! [`Call`] and [`MethodOutput`]: what a generated method handler receives
//! (the invocation's context, arguments and client streams) and returns.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use serde::{Serialize, de::DeserializeOwned};
use tidings_protocol::Payload;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    error::HubError,
    hub::{
        context::Context,
        upload::{ClientStream, UploadItem},
    },
};

/// The text ASP.NET Core uses when arguments cannot be bound.
pub(crate) const BINDING_ERROR: &str = "Error binding arguments. Make sure that the types of the provided values match the types of the hub method being invoked.";

/// One invocation as seen by a generated handler.
#[derive(Debug)]
pub struct Call {
    cx: Context,
    target: String,
    arguments: Vec<Payload>,
    /// The receiving ends of the invocation's client-to-server streams, in
    /// `streamIds` order; each is taken once by [`Call::upload`].
    uploads: Vec<Option<mpsc::Receiver<UploadItem>>>,
    /// A streaming invocation's cancellation (see [`Call::cancellation`]);
    /// `None` for unary invocations.
    cancellation: Option<CancellationToken>,
}

/// The receiving ends of an invocation's client-to-server streams.
pub(crate) type UploadReceivers = Vec<mpsc::Receiver<UploadItem>>;

impl Call {
    pub(crate) fn new(
        cx: Context,
        target: String,
        arguments: Vec<Payload>,
        uploads: UploadReceivers,
        cancellation: Option<CancellationToken>,
    ) -> Self {
        Call {
            cx,
            target,
            arguments,
            uploads: uploads.into_iter().map(Some).collect(),
            cancellation,
        }
    }

    /// The calling connection's context.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// The method name the client invoked, as it spelled it.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The cancellation token of a streaming invocation (ASP.NET Core's
    /// `CancellationToken` parameter): cancelled when the client cancels
    /// the stream (CancelInvocation), when the connection ends, and when
    /// the server shuts down. `None` for unary invocations.
    pub fn cancellation(&self) -> Option<&CancellationToken> {
        self.cancellation.as_ref()
    }

    /// How many arguments the invocation carries (client streams aside).
    pub fn argument_count(&self) -> usize {
        self.arguments.len()
    }

    /// Deserializes argument `index`. A value of the wrong type is a binding
    /// error, reported to the client as ASP.NET Core reports it.
    pub fn arg<T: DeserializeOwned>(&self, index: usize) -> Result<T, HubError> {
        let payload = self
            .arguments
            .get(index)
            .ok_or_else(|| HubError::binding(BINDING_ERROR))?;
        payload.deserialize().map_err(|error| {
            tracing::debug!(index, %error, "cannot bind an argument");
            HubError::binding(BINDING_ERROR)
        })
    }

    /// Takes client-to-server stream `index` (counted among the stream
    /// parameters only, in the order of the invocation's `streamIds`).
    pub fn upload<T: DeserializeOwned>(
        &mut self,
        index: usize,
    ) -> Result<ClientStream<T>, HubError> {
        let detailed = self.cx.options().enable_detailed_errors;
        self.uploads
            .get_mut(index)
            .and_then(Option::take)
            .map(|rx| ClientStream::new(rx, detailed))
            .ok_or_else(|| HubError::binding(BINDING_ERROR))
    }

    /// Turns a stream of values into a streaming method's output: each item
    /// is serialized in the caller's protocol as it is produced.
    pub fn stream<S, T>(&self, stream: S) -> Result<MethodOutput, HubError>
    where
        S: Stream<Item = T> + Send + 'static,
        T: Serialize,
    {
        let protocol = self.cx.protocol();
        let items = stream.map(move |item| protocol.encode_value(&item).map_err(HubError::from));
        Ok(MethodOutput::Stream(Box::pin(items)))
    }

    /// Like [`stream`](Self::stream) for streams of `Result`s: an `Err` item
    /// ends the stream with that error.
    pub fn try_stream<S, T, E>(&self, stream: S) -> Result<MethodOutput, HubError>
    where
        S: Stream<Item = Result<T, E>> + Send + 'static,
        T: Serialize,
        E: Into<HubError>,
    {
        let protocol = self.cx.protocol();
        let items = stream.map(move |item| match item {
            Ok(value) => protocol.encode_value(&value).map_err(HubError::from),
            Err(error) => Err(error.into()),
        });
        Ok(MethodOutput::Stream(Box::pin(items)))
    }

    /// Serializes a method's return value in the caller's protocol.
    pub fn output<T: Serialize + ?Sized>(&self, value: &T) -> Result<MethodOutput, HubError> {
        let payload = self.cx.protocol().encode_value(value)?;
        Ok(MethodOutput::Value(payload))
    }
}

/// The items of a streaming method, already serialized.
pub type ItemStream = Pin<Box<dyn Stream<Item = Result<Payload, HubError>> + Send>>;

/// What a method produced.
#[non_exhaustive]
pub enum MethodOutput {
    /// No value (sent as `result: null`, as ASP.NET Core does).
    Void,
    /// A serialized value.
    Value(Payload),
    /// The items of a streaming method.
    Stream(ItemStream),
}

impl std::fmt::Debug for MethodOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MethodOutput::Void => f.write_str("Void"),
            MethodOutput::Value(p) => f.debug_tuple("Value").field(p).finish(),
            MethodOutput::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}
