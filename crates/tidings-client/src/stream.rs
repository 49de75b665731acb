//! [`HubStream`]: the items of a server-to-client stream as a Rust `Stream`; dropping it before the
//! end cancels the stream on the server.

use std::{
    fmt,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::Stream;
use serde::de::DeserializeOwned;
use tidings_protocol::Payload;
use tokio::sync::mpsc;

use crate::InvokeError;

/// What the connection hands to a stream: an item, or the error that ends it. The end of the
/// channel without an error is the successful end of the stream.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    Item(Payload),
    Error(InvokeError),
}

/// The items of a server-to-client stream (`connection.stream::<T>(...)`), deserialized as `T`.
///
/// Ends with `None` after the server completes the stream; a failure (the server's error, the
/// connection closing, an item of the wrong type) is yielded as one `Err` and ends the stream.
/// Dropping a `HubStream` that has not ended sends CancelInvocation, which stops the hub method.
pub struct HubStream<T> {
    id: u64,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    cancel: mpsc::UnboundedSender<u64>,
    finished: bool,
    _item: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for HubStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubStream")
            .field("id", &self.id)
            .field("finished", &self.finished)
            .finish()
    }
}

impl<T> HubStream<T> {
    pub(crate) fn new(
        id: u64,
        events: mpsc::UnboundedReceiver<StreamEvent>,
        cancel: mpsc::UnboundedSender<u64>,
    ) -> Self {
        HubStream {
            id,
            events,
            cancel,
            finished: false,
            _item: PhantomData,
        }
    }

    /// The invocation id of this stream.
    pub fn invocation_id(&self) -> u64 {
        self.id
    }
}

impl<T: DeserializeOwned> Stream for HubStream<T> {
    type Item = Result<T, InvokeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.events.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(StreamEvent::Item(payload))) => match payload.deserialize() {
                Ok(item) => Poll::Ready(Some(Ok(item))),
                Err(e) => {
                    // The rest would not deserialize either: stop the stream on the server.
                    let id = self.id;
                    let _ = self.cancel.send(id);
                    self.finished = true;
                    Poll::Ready(Some(Err(InvokeError::Decode(e))))
                }
            },
            Poll::Ready(Some(StreamEvent::Error(e))) => {
                self.finished = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
        }
    }
}

impl<T> Drop for HubStream<T> {
    fn drop(&mut self) {
        if !self.finished {
            // The connection may be gone already; then there is nothing to cancel.
            let _ = self.cancel.send(self.id);
        }
    }
}
