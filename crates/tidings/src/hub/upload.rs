//! Client-to-server streams ("upload" streams): the [`ClientStream`] a hub
//! method receives, and the per-connection registry that feeds it.
//!
//! A client opens an upload stream by listing a stream id in the
//! `streamIds` of an invocation, then sends StreamItems with that id and
//! ends it with a Completion (with an error to fail it). The session keeps
//! one bounded channel per open stream, of `stream_buffer_capacity` items:
//! when a channel is full the session stops reading the connection until
//! the method consumes (ASP.NET Core's behaviour), so a fast client cannot
//! grow the server's memory. Items stay serialized until the method asks
//! for them, so the read loop never deserializes an item.

use std::{
    collections::HashMap,
    fmt,
    marker::PhantomData,
    pin::Pin,
    task::{Context as TaskContext, Poll, ready},
};

use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tidings_protocol::Payload;
use tokio::sync::mpsc;

use crate::HubError;

/// What travels from the read loop to a [`ClientStream`].
#[derive(Debug)]
pub(crate) enum UploadItem {
    /// One item, still serialized.
    Item(Payload),
    /// The client ended the stream with this error.
    Error(String),
}

/// A stream of values the client sends to a hub method (a client-to-server
/// stream, fed by a JavaScript `Subject` or a .NET `ChannelReader` /
/// `IAsyncEnumerable` argument).
///
/// Declare it as a parameter of a hub method; `#[hub]` maps the
/// invocation's stream ids to these parameters in order, and they do not
/// count as `arguments`:
///
/// ```
/// use tidings::{ClientStream, HubError, hub};
///
/// struct Totals;
///
/// #[hub]
/// impl Totals {
///     async fn sum(&self, mut numbers: ClientStream<f64>) -> Result<f64, HubError> {
///         let mut total = 0.0;
///         while let Some(n) = numbers.recv().await? {
///             total += n;
///         }
///         Ok(total)
///     }
/// }
/// ```
///
/// It is also a [`Stream`] of `Result<T, HubError>`, so stream combinators
/// work (`futures::TryStreamExt::try_fold`, or returning it, mapped, from a
/// `#[hub(stream)]` method).
///
/// The stream ends when the client completes it. If the client completes it
/// with an error, or sends an item that cannot be read as `T`, the stream
/// yields that error once and then ends; a method that propagates it with
/// `?` fails the invocation with ASP.NET Core's text
/// (`An unexpected error occurred invoking 'Sum' on the server. HubException: <error>`).
/// When the invocation finishes, its streams the client has not completed
/// are closed by the server and later items for them are ignored.
pub struct ClientStream<T> {
    rx: mpsc::Receiver<UploadItem>,
    detailed: bool,
    done: bool,
    _item: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for ClientStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStream")
            .field("item", &std::any::type_name::<T>())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> ClientStream<T> {
    pub(crate) fn new(rx: mpsc::Receiver<UploadItem>, detailed: bool) -> Self {
        ClientStream {
            rx,
            detailed,
            done: false,
            _item: PhantomData,
        }
    }

    /// The next item: `Ok(Some(item))`, `Ok(None)` once the client completed
    /// the stream, or the error that ended it.
    pub async fn recv(&mut self) -> Result<Option<T>, HubError> {
        self.next().await.transpose()
    }

    fn finish(&mut self) {
        self.done = true;
        // Later items fail to send, so the read loop never waits on a
        // stream nobody reads any more.
        self.rx.close();
    }
}

impl<T: DeserializeOwned> Stream for ClientStream<T> {
    type Item = Result<T, HubError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let next = match ready!(this.rx.poll_recv(cx)) {
            None => {
                this.finish();
                None
            }
            Some(UploadItem::Item(payload)) => match payload.deserialize::<T>() {
                Ok(value) => Some(Ok(value)),
                Err(error) => {
                    tracing::debug!(%error, "cannot bind a client stream item");
                    this.finish();
                    // ASP.NET Core's text for an item of the wrong type.
                    let mut text = "Failed to bind Stream message.".to_owned();
                    if this.detailed {
                        text.push_str(&format!(" InvalidDataException: {error}"));
                    }
                    Some(Err(HubError::new(text)))
                }
            },
            Some(UploadItem::Error(error)) => {
                this.finish();
                Some(Err(HubError::new(error)))
            }
        };
        Poll::Ready(next)
    }
}

/// The open upload streams of one connection, by stream id.
///
/// Each entry remembers the invocation that opened it, so that the end of
/// that invocation closes exactly its own streams even if a later
/// invocation reused an id.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    open: HashMap<String, (u64, mpsc::Sender<UploadItem>)>,
    next_owner: u64,
}

impl Uploads {
    /// Opens a channel per stream id for a new invocation; returns the
    /// invocation's owner key and the receiving ends, in order. A reused id
    /// replaces the older stream (as ASP.NET Core does), which then ends.
    pub(crate) fn open(
        &mut self,
        ids: &[String],
        capacity: usize,
    ) -> (u64, Vec<mpsc::Receiver<UploadItem>>) {
        self.next_owner += 1;
        let owner = self.next_owner;
        let receivers = ids
            .iter()
            .map(|id| {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                self.open.insert(id.clone(), (owner, tx));
                rx
            })
            .collect();
        (owner, receivers)
    }

    /// The sender of an open stream (unknown ids are ignored by callers).
    pub(crate) fn sender(&self, id: &str) -> Option<mpsc::Sender<UploadItem>> {
        self.open.get(id).map(|(_, tx)| tx.clone())
    }

    /// Removes a stream: the client completed it, or its reader is gone.
    pub(crate) fn remove(&mut self, id: &str) -> Option<mpsc::Sender<UploadItem>> {
        self.open.remove(id).map(|(_, tx)| tx)
    }

    /// The invocation `owner` finished: close the streams it still has open.
    pub(crate) fn close_owner(&mut self, owner: u64) {
        self.open.retain(|_, (o, _)| *o != owner);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_protocol::Protocol;

    fn item(json: &str) -> UploadItem {
        UploadItem::Item(Payload::from_raw(Protocol::Json, json.to_owned()).expect("payload"))
    }

    #[tokio::test]
    async fn items_then_end() {
        let mut uploads = Uploads::default();
        let (_, mut rx) = uploads.open(&["0".to_owned()], 4);
        let tx = uploads.sender("0").expect("open");
        tx.send(item("1")).await.expect("send");
        tx.send(item("2")).await.expect("send");
        drop(tx);
        uploads.remove("0");
        let mut stream = ClientStream::<i32>::new(rx.remove(0), false);
        assert_eq!(stream.recv().await.expect("item"), Some(1));
        assert_eq!(stream.recv().await.expect("item"), Some(2));
        assert_eq!(stream.recv().await.expect("end"), None);
        assert_eq!(stream.recv().await.expect("still ended"), None);
    }

    #[tokio::test]
    async fn a_client_error_ends_the_stream_once() {
        let (tx, rx) = mpsc::channel(4);
        let mut stream = ClientStream::<i32>::new(rx, false);
        tx.send(item("1")).await.expect("send");
        tx.send(UploadItem::Error("bad".into()))
            .await
            .expect("send");
        assert_eq!(stream.recv().await.expect("item"), Some(1));
        let error = stream.recv().await.expect_err("error");
        assert!(error.is_hub_exception());
        assert_eq!(error.message(), "bad");
        assert!(stream.next().await.is_none());
        // The reader is closed: the read loop's next send fails at once.
        assert!(tx.send(item("2")).await.is_err());
    }

    #[tokio::test]
    async fn an_item_of_the_wrong_type_fails_the_stream() {
        let (tx, rx) = mpsc::channel(4);
        let mut stream = ClientStream::<i32>::new(rx, true);
        tx.send(item("\"text\"")).await.expect("send");
        let error = stream.recv().await.expect_err("error");
        assert!(
            error
                .message()
                .starts_with("Failed to bind Stream message. InvalidDataException: "),
            "{}",
            error.message()
        );
        assert!(stream.recv().await.expect("ended").is_none());
    }

    #[tokio::test]
    async fn the_end_of_an_invocation_closes_only_its_streams() {
        let mut uploads = Uploads::default();
        let (first, mut a) = uploads.open(&["0".to_owned(), "1".to_owned()], 2);
        let (_, mut b) = uploads.open(&["2".to_owned()], 2);
        uploads.close_owner(first);
        assert_eq!(uploads.len(), 1);
        assert!(a[0].recv().await.is_none());
        assert!(a[1].recv().await.is_none());
        assert!(uploads.sender("2").is_some());
        assert!(b[0].try_recv().is_err());
    }

    #[tokio::test]
    async fn a_reused_id_replaces_and_ends_the_older_stream() {
        let mut uploads = Uploads::default();
        let (first, mut a) = uploads.open(&["0".to_owned()], 2);
        let (_, _b) = uploads.open(&["0".to_owned()], 2);
        assert!(a[0].recv().await.is_none());
        // Closing the first owner leaves the newer stream alone.
        uploads.close_owner(first);
        assert!(uploads.sender("0").is_some());
    }
}
