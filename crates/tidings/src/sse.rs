//! Plain Server-Sent Events: one-way push to `EventSource`, without a hub.
//!
//! The counterpart of ASP.NET Core's `Results.ServerSentEvents`, plus
//! resumption: a browser's `EventSource` reconnects by itself after a
//! network cut and sends the id of the last event it saw in the
//! `Last-Event-ID` header; the server continues after it.
//!
//! * [`ServerSentEvents`] turns any [`Stream`] of [`Serialize`] items into
//!   an SSE response. Each item becomes one event whose `data:` is the item
//!   as JSON and whose `id:` counts up from a first id, with keep-alive
//!   comments while the stream is quiet.
//! * [`EventLog`] is a broadcast source shared by many subscribers that
//!   keeps the most recent events (a bounded ring). [`EventLog::sse`]
//!   answers a request carrying `Last-Event-ID: n` with the retained events
//!   after `n`, then the live ones: none missing, none twice.
//! * [`LastEventId`] extracts the header in an axum handler.
//!
//! ```
//! use axum::{Router, extract::State, routing::get};
//! use serde::Serialize;
//! use tidings::sse::{EventLog, LastEventId, ServerSentEvents};
//!
//! #[derive(Serialize)]
//! struct Price {
//!     symbol: &'static str,
//!     cents: u64,
//! }
//!
//! // Many subscribers, resumable: the last 256 prices are kept.
//! async fn prices(State(log): State<EventLog<Price>>, last: LastEventId) -> ServerSentEvents {
//!     log.sse(last)
//! }
//!
//! // One stream per request: event ids count from 1, or continue after
//! // the client's Last-Event-ID when the stream can start anywhere.
//! async fn countdown(last: LastEventId) -> ServerSentEvents {
//!     let first = last.id().map_or(1, |id| id + 1);
//!     let items = futures_util::stream::iter(first..=10).map(|n| 10 - n);
//!     ServerSentEvents::numbered_from(first, items)
//! }
//! # use futures_util::StreamExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let log = EventLog::new(256);
//! let publisher = log.clone();
//! tokio::spawn(async move {
//!     let mut cents = 100;
//!     loop {
//!         cents += 1;
//!         // Serialized once, whatever the number of subscribers.
//!         let _ = publisher.publish(&Price { symbol: "ACME", cents });
//!         tokio::time::sleep(std::time::Duration::from_secs(1)).await;
//!     }
//! });
//! let app: Router = Router::new()
//!     .route("/prices", get(prices))
//!     .route("/countdown", get(countdown))
//!     .with_state(log);
//! # }
//! ```
//!
//! Ids are consecutive integers, so a client that sees a jump from `n` to
//! `m` knows it missed `m - n - 1` events: that happens only when it
//! reconnects with an id older than the log retains, or reads so slowly
//! that the ring overtakes it.

use std::{
    collections::VecDeque,
    convert::Infallible,
    fmt::{self, Write as _},
    marker::PhantomData,
    sync::Arc,
    time::Duration,
};

use axum::{
    body::Body,
    extract::FromRequestParts,
    http::{HeaderMap, HeaderValue, header, request::Parts},
    response::{IntoResponse, Response},
};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream::BoxStream};
use serde::Serialize;
use tokio::sync::watch;

/// Keep-alive comments keep proxies and load balancers from closing a quiet
/// stream; ASP.NET Core's hub keep-alive uses the same period.
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// An SSE response (`text/event-stream`). Return it from an axum handler.
///
/// Made by [`ServerSentEvents::new`] or [`numbered_from`](Self::numbered_from)
/// from a stream, or by [`EventLog::sse`]. The response ends when the
/// stream ends (or the log is closed); if the client goes away first, the
/// stream is dropped.
#[must_use = "a ServerSentEvents does nothing until it is returned as a response"]
pub struct ServerSentEvents {
    /// Complete events (`id:` … `data:` … blank line), one per item.
    events: BoxStream<'static, Bytes>,
    keep_alive: Option<Duration>,
    retry: Option<Duration>,
}

impl fmt::Debug for ServerSentEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSentEvents")
            .field("keep_alive", &self.keep_alive)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl ServerSentEvents {
    /// One event per item, with ids 1, 2, 3, …
    pub fn new<S>(items: S) -> Self
    where
        S: Stream + Send + 'static,
        S::Item: Serialize,
    {
        ServerSentEvents::numbered_from(1, items)
    }

    /// One event per item, with ids `first_id`, `first_id + 1`, …
    ///
    /// Use it to resume a stream that can start anywhere: build the stream
    /// from the item after the client's [`LastEventId`] and number it from
    /// there. An item that fails to serialize is skipped (and logged); its
    /// id is not reused, so ids keep matching positions in the stream.
    pub fn numbered_from<S>(first_id: u64, items: S) -> Self
    where
        S: Stream + Send + 'static,
        S::Item: Serialize,
    {
        let events = items.enumerate().filter_map(move |(index, item)| {
            let id = first_id.saturating_add(index as u64);
            let event = match serde_json::to_vec(&item) {
                Ok(json) => Some(event(id, &json)),
                Err(error) => {
                    tracing::warn!(id, %error, "cannot serialize a Server-Sent Event; skipped");
                    None
                }
            };
            std::future::ready(event)
        });
        ServerSentEvents::from_events(events.boxed())
    }

    fn from_events(events: BoxStream<'static, Bytes>) -> Self {
        ServerSentEvents {
            events,
            keep_alive: Some(DEFAULT_KEEP_ALIVE),
            retry: None,
        }
    }

    /// Sends a comment line when nothing was sent for `period` (default
    /// 15 s), so idle connections are not cut by proxies.
    pub fn keep_alive(mut self, period: Duration) -> Self {
        self.keep_alive = Some(period);
        self
    }

    /// Sends no keep-alive comments.
    pub fn without_keep_alive(mut self) -> Self {
        self.keep_alive = None;
        self
    }

    /// Asks the client to wait `delay` before reconnecting (the `retry:`
    /// field; browsers default to about 3 s).
    pub fn retry(mut self, delay: Duration) -> Self {
        self.retry = Some(delay);
        self
    }
}

impl IntoResponse for ServerSentEvents {
    fn into_response(self) -> Response {
        // The first chunk goes out at once, so the client's `open` fires
        // without waiting for the first event.
        let opening = match self.retry {
            Some(delay) => Bytes::from(format!("retry: {}\n\n", delay.as_millis())),
            None => Bytes::from_static(b":\n\n"),
        };
        let events = with_keep_alive(self.events, self.keep_alive);
        let body = futures_util::stream::once(std::future::ready(opening))
            .chain(events)
            .map(Ok::<_, Infallible>);
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                // Tells nginx-style proxies not to buffer the stream. Only
                // end-to-end headers: the response is valid over HTTP/2.
                (
                    header::HeaderName::from_static("x-accel-buffering"),
                    HeaderValue::from_static("no"),
                ),
            ],
            Body::from_stream(body),
        )
            .into_response()
    }
}

/// Interleaves a comment after every `period` of silence.
fn with_keep_alive(
    events: BoxStream<'static, Bytes>,
    period: Option<Duration>,
) -> BoxStream<'static, Bytes> {
    let Some(period) = period else {
        return events;
    };
    futures_util::stream::unfold(events, move |mut events| async move {
        // `next()` is cancel-safe: an event is never lost to the timer.
        let next = tokio::select! {
            event = events.next() => event,
            () = tokio::time::sleep(period) => Some(Bytes::from_static(b":\n\n")),
        };
        next.map(|bytes| (bytes, events))
    })
    .boxed()
}

/// One complete event. serde_json's compact output has no line breaks, but
/// the data is split on them anyway: a raw line break would end the field.
fn event(id: u64, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    // Writing to a BytesMut cannot fail.
    let _ = writeln!(out, "id: {id}");
    for line in data.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// The `Last-Event-ID` request header: the id of the last event the client
/// received before it reconnected.
///
/// An axum extractor that never rejects. Ids of this module are integers; a
/// header that is not one is [present](Self::is_present) but has no
/// [`id`](Self::id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastEventId(Last);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Last {
    /// A first connection.
    #[default]
    Absent,
    Id(u64),
    /// Present but not an integer: not an id this server gave out.
    Unknown,
}

impl LastEventId {
    /// A reconnection after event `id`.
    pub fn new(id: u64) -> Self {
        LastEventId(Last::Id(id))
    }

    /// Reads the header from a request's headers.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        match headers.get("last-event-id") {
            None => LastEventId(Last::Absent),
            Some(value) => match value.to_str().map(|v| v.trim().parse::<u64>()) {
                Ok(Ok(id)) => LastEventId(Last::Id(id)),
                _ => LastEventId(Last::Unknown),
            },
        }
    }

    /// The id, if the header is present and an integer.
    pub fn id(&self) -> Option<u64> {
        match self.0 {
            Last::Id(id) => Some(id),
            _ => None,
        }
    }

    /// Whether the client sent the header at all (it is reconnecting).
    pub fn is_present(&self) -> bool {
        self.0 != Last::Absent
    }
}

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(LastEventId::from_headers(&parts.headers))
    }
}

/// Why [`EventLog::publish`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The item could not be serialized to JSON.
    #[error("cannot serialize the event: {0}")]
    Serialize(String),
    /// [`EventLog::close`] was called.
    #[error("the event log is closed")]
    Closed,
}

/// A broadcast source of Server-Sent Events that keeps its most recent
/// events, so reconnecting clients resume where they left off.
///
/// Clone it freely: clones share the log. [`publish`](Self::publish)
/// serializes an item once and appends it with the next id (1, 2, 3, …);
/// the oldest event is dropped when more than `capacity` are kept.
/// [`sse`](Self::sse) answers one subscriber:
///
/// | `Last-Event-ID` | the response carries |
/// |---|---|
/// | absent | live events only, from the next one published |
/// | `n`, still retained or the latest | the retained events after `n`, then live ones |
/// | `n` older than the oldest retained | every retained event, then live ones (the jump in ids tells the client how many it missed) |
/// | newer than any published, or not an integer (for example from before a server restart) | every retained event, then live ones |
///
/// A subscriber that reads so slowly that `capacity` newer events were
/// published since its last one skips ahead to the oldest retained event,
/// again visible as a jump in ids: publishing never waits for readers.
///
/// [`close`](Self::close) ends every subscriber's response once it has
/// sent what was published; call it when the server shuts down.
pub struct EventLog<T> {
    ring: Arc<watch::Sender<Ring>>,
    _items: PhantomData<fn(&T)>,
}

impl<T> Clone for EventLog<T> {
    fn clone(&self) -> Self {
        EventLog {
            ring: Arc::clone(&self.ring),
            _items: PhantomData,
        }
    }
}

impl<T> fmt::Debug for EventLog<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.ring.borrow();
        f.debug_struct("EventLog")
            .field("capacity", &ring.capacity)
            .field("retained", &ring.events.len())
            .field("next_id", &ring.next_id)
            .field("closed", &ring.closed)
            .field("subscribers", &self.ring.receiver_count())
            .finish()
    }
}

/// The retained events: `events[i]` has id `first_id + i`.
struct Ring {
    events: VecDeque<Bytes>,
    first_id: u64,
    next_id: u64,
    capacity: usize,
    closed: bool,
}

impl<T: Serialize> EventLog<T> {
    /// A log keeping the last `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let ring = Ring {
            events: VecDeque::with_capacity(capacity),
            first_id: 1,
            next_id: 1,
            capacity,
            closed: false,
        };
        EventLog {
            ring: Arc::new(watch::Sender::new(ring)),
            _items: PhantomData,
        }
    }

    /// Appends `item` and wakes every subscriber. Returns its event id.
    ///
    /// The item is serialized once here; subscribers share the bytes.
    pub fn publish(&self, item: &T) -> Result<u64, PublishError> {
        let json = serde_json::to_vec(item).map_err(|e| PublishError::Serialize(e.to_string()))?;
        let mut published = Err(PublishError::Closed);
        // The lock is held only to number and append the event.
        self.ring.send_if_modified(|ring| {
            if ring.closed {
                return false;
            }
            let id = ring.next_id;
            ring.events.push_back(event(id, &json));
            ring.next_id += 1;
            if ring.events.len() > ring.capacity {
                ring.events.pop_front();
                ring.first_id += 1;
            }
            published = Ok(id);
            true
        });
        published
    }
}

impl<T> EventLog<T> {
    /// The response for one subscriber, resuming after `last` (see the
    /// table above).
    pub fn sse(&self, last: LastEventId) -> ServerSentEvents {
        let mut ring = self.ring.subscribe();
        let cursor = {
            let r = ring.borrow_and_update();
            match last.0 {
                Last::Absent => r.next_id,
                Last::Id(id) if id < r.next_id => (id + 1).max(r.first_id),
                Last::Id(_) | Last::Unknown => r.first_id,
            }
        };
        let events =
            futures_util::stream::unfold((ring, cursor), |(mut ring, mut cursor)| async move {
                loop {
                    {
                        // Marking the version seen here, and waiting below only
                        // if nothing is left after `cursor`, means a publish
                        // after this read always wakes the wait: no event is
                        // missed between the history and the live events.
                        let r = ring.borrow_and_update();
                        if cursor < r.first_id {
                            tracing::debug!(
                                skipped = r.first_id - cursor,
                                "a slow Server-Sent Events subscriber skips ahead"
                            );
                            cursor = r.first_id;
                        }
                        if cursor < r.next_id {
                            let index = usize::try_from(cursor - r.first_id).unwrap_or(usize::MAX);
                            let event = r.events.get(index).cloned();
                            drop(r);
                            cursor += 1;
                            if let Some(event) = event {
                                return Some((event, (ring, cursor)));
                            }
                            continue;
                        }
                        if r.closed {
                            return None;
                        }
                    }
                    if ring.changed().await.is_err() {
                        // Every handle is gone: nothing more will be published.
                        // Deliver what is left, then end.
                        if cursor >= ring.borrow().next_id {
                            return None;
                        }
                    }
                }
            });
        ServerSentEvents::from_events(events.boxed())
    }

    /// Ends every subscriber's response after the events already published,
    /// and refuses later publishes. Responses made afterwards send the
    /// retained events they are owed and end.
    pub fn close(&self) {
        self.ring.send_if_modified(|ring| {
            let was_open = !ring.closed;
            ring.closed = true;
            was_open
        });
    }

    /// The id of the latest event, if any was published.
    pub fn last_id(&self) -> Option<u64> {
        let next = self.ring.borrow().next_id;
        (next > 1).then(|| next - 1)
    }

    /// How many responses are subscribed right now.
    pub fn subscribers(&self) -> usize {
        self.ring.receiver_count()
    }
}
