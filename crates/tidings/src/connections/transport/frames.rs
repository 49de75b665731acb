//! What both WebSocket writers (an ordinary connection's and a stateful
//! one's) share: the transfer format's message kind, batching queued
//! frames into one message, the close handshake and its statuses.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, stream::SplitSink};
use tidings_protocol::TransferFormat;
use tokio::time::timeout;
use tungstenite::{Message, Utf8Bytes, protocol::CloseFrame};

use crate::connections::{
    outbox::{self, Outbound},
    transport::socket::WebSocket,
};

/// ASP.NET Core's `WebSockets.CloseTimeout`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The close status for a read that failed with `error` (RFC 6455,
/// section 7.4.1): 1007 for a Text message that is not UTF-8 (which the
/// RFC says must fail the connection), 1009 for a message over the frame
/// limit, 1002 for any other breach of the WebSocket protocol, 1011 for
/// the rest (I/O errors, and a peer that dropped the connection without a
/// closing handshake: it is gone, not misbehaving).
pub(crate) fn close_status(error: &tungstenite::Error) -> u16 {
    use tungstenite::{Error as WsError, error::ProtocolError};
    match error {
        WsError::Utf8(_) => 1007,
        WsError::Capacity(_) => 1009,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => 1011,
        WsError::Protocol(_) => 1002,
        _ => 1011,
    }
}

/// The payload of a data frame (the opcode does not matter); `None` for
/// control frames.
pub(crate) fn data(message: Message) -> Option<Bytes> {
    match message {
        Message::Text(text) => Some(Bytes::from(text)),
        Message::Binary(bytes) => Some(bytes),
        _ => None,
    }
}

/// The WebSocket message carrying `frame` in the transfer format.
pub(crate) fn frame_message(format: TransferFormat, frame: Bytes) -> Option<Message> {
    match format {
        TransferFormat::Text => match Utf8Bytes::try_from(frame) {
            Ok(text) => Some(Message::Text(text)),
            Err(_) => {
                tracing::error!("a frame of a Text connection is not UTF-8; dropped");
                None
            }
        },
        TransferFormat::Binary => Some(Message::Binary(frame)),
    }
}

/// Builds one WebSocket message's bytes from `first` and whatever else is
/// already queued ([`outbox::Receiver::drain`]). Sets `closing` when the
/// queue's final entry was reached. `admit` sees every message taken (the
/// final Close excepted) with its mark, and stops the batch by returning
/// false. A single
/// message is returned as it is, without a copy.
pub(crate) fn collect(
    first: Outbound,
    rx: &mut outbox::Receiver,
    batch: &mut Vec<u8>,
    closing: &mut bool,
    mut admit: impl FnMut(&Bytes, Option<Bytes>) -> bool,
) -> Option<Bytes> {
    let mut single: Option<Bytes> = None;
    batch.clear();
    *closing = rx.drain_marked(first, |frame, mark, last| {
        let more = last || admit(&frame, mark);
        match single.take() {
            None if batch.is_empty() => single = Some(frame),
            first => {
                if let Some(first) = first {
                    batch.extend_from_slice(&first);
                }
                batch.extend_from_slice(&frame);
            }
        }
        more && batch.len() < outbox::MAX_BATCH
    });
    if batch.is_empty() {
        single
    } else {
        Some(Bytes::copy_from_slice(batch))
    }
}

pub(crate) async fn close(sink: &mut SplitSink<WebSocket, Message>, code: u16) {
    let frame = Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(""),
    }));
    let _ = timeout(CLOSE_TIMEOUT, async {
        let _ = sink.send(frame).await;
        let _ = sink.close().await;
    })
    .await;
}

/// Queues a Close frame if the socket takes it at once, without waiting;
/// the socket is then dropped, whether or not the frame went out.
pub(crate) fn close_now(sink: &mut SplitSink<WebSocket, Message>, code: u16) {
    let _ = Box::pin(close(sink, code)).now_or_never();
}
