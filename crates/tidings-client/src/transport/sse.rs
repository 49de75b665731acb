//! The Server-Sent Events transport: a streaming `GET` (`Accept: text/event-stream`) carries the
//! server's messages, one event per batch; sends go by `POST`.
//!
//! The event parser follows the SSE format as far as SignalR uses it: `data:` lines (one optional
//! space after the colon) are joined with `\n` and delivered at the blank line; comment lines
//! (`:`) and other fields are ignored; lines may end with `\n` or `\r\n`.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{Method, StatusCode, header};
use tidings_protocol::TransportType;
use url::Url;

use super::{
    Link, LinkEnds, TransportEvent,
    http::{Http, error_chain, post_loop, status_error},
};
use crate::TransportError;

/// Opens the event stream; the link is up once the server answered `200`.
pub(crate) async fn connect(http: &Http, url: &Url) -> Result<Link, TransportError> {
    let response = http
        .request(
            Method::GET,
            url,
            None,
            &[(header::ACCEPT, "text/event-stream")],
            None,
            false,
        )
        .await?;
    if response.status() != StatusCode::OK {
        return Err(status_error(response).await);
    }
    let http = http.clone();
    let url = url.clone();
    Ok(Link::new(
        TransportType::ServerSentEvents,
        move |ends, tasks| {
            let LinkEnds { outgoing, incoming } = ends;
            tasks.spawn(read_events(response, incoming.clone()));
            tasks.spawn(post_loop(http, url, outgoing, incoming, false));
        },
    ))
}

async fn read_events(
    response: reqwest::Response,
    incoming: tokio::sync::mpsc::Sender<TransportEvent>,
) {
    let mut body = response.bytes_stream();
    let mut parser = EventParser::default();
    let outcome = loop {
        match body.next().await {
            Some(Ok(chunk)) => {
                parser.push(&chunk);
                while let Some(data) = parser.next_event() {
                    if incoming.send(TransportEvent::Data(data)).await.is_err() {
                        return;
                    }
                }
            }
            Some(Err(e)) => break Some(TransportError::Http(error_chain(&e))),
            None => break None,
        }
    };
    let _ = incoming.send(TransportEvent::Closed(outcome)).await;
}

/// Incremental parser of an SSE body into the data of each event.
#[derive(Debug, Default)]
pub(crate) struct EventParser {
    buffer: BytesMut,
    data: BytesMut,
    has_data: bool,
}

impl EventParser {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The data of the next complete event, if one has arrived.
    pub(crate) fn next_event(&mut self) -> Option<Bytes> {
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line = self.buffer.split_to(end + 1);
            let line = &line[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                if self.has_data {
                    self.has_data = false;
                    return Some(self.data.split().freeze());
                }
                continue;
            }
            if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if self.has_data {
                    self.data.put_u8(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            // Comments (":") and other fields carry nothing for SignalR.
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<Bytes> {
        let mut parser = EventParser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk);
            while let Some(event) = parser.next_event() {
                out.push(event);
            }
        }
        out
    }

    #[test]
    fn parses_signalr_events_split_anywhere() {
        let body: &[u8] =
            b":\r\ndata: {}\x1e\r\n\r\ndata: {\"type\":6}\x1e{\"type\":6}\x1e\r\n\r\n";
        let whole = events(&[body]);
        assert_eq!(
            whole,
            [
                Bytes::from_static(b"{}\x1e"),
                Bytes::from_static(b"{\"type\":6}\x1e{\"type\":6}\x1e")
            ]
        );
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(events(&bytewise), whole);
    }

    #[test]
    fn joins_data_lines_and_accepts_bare_newlines() {
        assert_eq!(
            events(&[b"data:a\ndata: b\nid: 7\n\n"]),
            [Bytes::from_static(b"a\nb")]
        );
    }
}
