//! The hub's WebSockets: upgraded here, over a connection that answers a
//! Close frame without a status with 1000.
//!
//! A client may close without a status code (the `ws` package's and a
//! browser's `close()` do). The WebSocket library answers a Close frame by
//! echoing its status, so the client would read 1005 ("no status"), where
//! ASP.NET Core answers with 1000 (normal closure). The echo is written
//! inside the library, so the write half of the connection rewrites it:
//! the server's own Close frames always carry a status, and the only empty
//! one is that echo. Written bytes are looked at only once the client's
//! Close frame has been read (the read half watches for it), so that the
//! frames of a connection's life cost no scan.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{
    body::Body,
    extract::FromRequestParts,
    extract::ws::WebSocketUpgrade,
    http::{HeaderValue, StatusCode, Version, header, request::Parts},
    response::{IntoResponse, Response},
};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

/// A hub's WebSocket.
pub(crate) type WebSocket = WebSocketStream<NormalClose<TokioIo<Upgraded>>>;

/// A WebSocket upgrade accepted, to be answered with [`Upgrade::on_upgrade`].
pub(crate) struct Upgrade {
    on_upgrade: OnUpgrade,
    /// `Sec-WebSocket-Key` of an HTTP/1.1 upgrade (`None` over HTTP/2).
    key: Option<HeaderValue>,
    config: WebSocketConfig,
}

impl Upgrade {
    /// Checks a WebSocket request. Requests that are not a valid upgrade
    /// get axum's answers.
    pub(crate) async fn from_parts(
        parts: &mut Parts,
        config: WebSocketConfig,
    ) -> Result<Upgrade, Response> {
        // Taken before axum's check removes it (it is shared: the copy
        // axum's value holds is dropped unused).
        let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let _checked = WebSocketUpgrade::from_request_parts(parts, &())
            .await
            .map_err(IntoResponse::into_response)?;
        let on_upgrade = on_upgrade.ok_or_else(|| StatusCode::UPGRADE_REQUIRED.into_response())?;
        let key = if parts.version <= Version::HTTP_11 {
            parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned()
        } else {
            None
        };
        Ok(Upgrade {
            on_upgrade,
            key,
            config,
        })
    }

    /// The answer to the upgrade request; `callback` gets the socket once
    /// the connection is upgraded.
    pub(crate) fn on_upgrade<C, F>(self, callback: C) -> Response
    where
        C: FnOnce(WebSocket) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Upgrade {
            on_upgrade,
            key,
            config,
        } = self;
        // The task lives as long as the connection and is sized for its
        // largest state. Waiting for the upgrade and building the socket
        // happen in a box that is freed once the socket is ready, and the
        // task's own state is then the connection's future alone: awaited
        // inline, the socket being built was kept in the task beside it
        // (a moved-from local keeps its room in an async block), which made
        // the task of every connection 4 KiB (BENCHMARKS.md, "How the idle
        // target was met").
        // The callback goes into that box too: a value the task's future
        // captures keeps its room there after it is moved out.
        let opening = Box::pin(async move { open(on_upgrade, config).await.map(callback) });
        tokio::spawn(async move {
            // Matched, not `if let`: the scrutinee would be kept, with a
            // second copy of the connection's future, while it runs.
            let serve = match opening.await {
                Some(serve) => serve,
                None => return,
            };
            serve.await;
        });
        let response = match key {
            Some(key) => Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header(
                    header::SEC_WEBSOCKET_ACCEPT,
                    tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .body(Body::empty()),
            // HTTP/2 (RFC 8441): a 2xx answer without a body.
            None => Ok(Response::new(Body::empty())),
        };
        response.unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// The upgraded connection as a WebSocket, once hyper hands it over.
async fn open(on_upgrade: OnUpgrade, config: WebSocketConfig) -> Option<WebSocket> {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, "WebSocket upgrade failed");
            return None;
        }
    };
    let io = NormalClose::new(TokioIo::new(upgraded));
    Some(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await)
}

/// The status and length byte of a Close frame with status 1000, written
/// in place of the length byte (0) of an empty Close frame.
const NORMAL_CLOSURE: [u8; 3] = [2, 0x03, 0xE8];

/// The server's side of an upgraded connection, rewriting the empty Close
/// frame the WebSocket library echoes into one with status 1000.
pub(crate) struct NormalClose<S> {
    inner: S,
    /// Where the written bytes stand in the outgoing frames. A write that
    /// took its whole buffer ends between two frames: the WebSocket library
    /// buffers whole frames and hands each write all it holds. So the
    /// position is known without a scan except after a partial write.
    frames: FrameScan,
    /// Where the read bytes stand in the incoming frames, until the
    /// client's Close frame shows up.
    incoming: FrameScan,
    /// The client's Close frame was read: the library's echo may follow,
    /// and written bytes are scanned for it.
    peer_closed: bool,
    /// Rewritten bytes still to be written, and how many were.
    pending: Option<usize>,
}

impl<S> NormalClose<S> {
    fn new(inner: S) -> Self {
        NormalClose {
            inner,
            frames: FrameScan::default(),
            incoming: FrameScan::default(),
            peer_closed: false,
            pending: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> NormalClose<S> {
    /// Writes what is left of a rewritten Close frame.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(written) = self.pending {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &NORMAL_CLOSURE[written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending = Some(written + n).filter(|&w| w < NORMAL_CLOSURE.len());
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NormalClose<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if !self.peer_closed {
            // Read before the library sees it, so before it queues its echo.
            self.peer_closed = self.incoming.finds_close(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NormalClose<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if !self.peer_closed {
            // No echo can come yet: the bytes go as they are. (The
            // server's own Close frames carry a status, so the scan of a
            // partial write cannot stop at one.)
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
            if n == buf.len() {
                self.frames = FrameScan::default();
            } else {
                self.frames.advance(&buf[..n]);
            }
            return Poll::Ready(Ok(n));
        }
        let mut probe = self.frames;
        let close_at = probe.advance(buf);
        let end = close_at.unwrap_or(buf.len());
        if end == 0 && !buf.is_empty() {
            // The length byte of an empty Close frame: taken, and written
            // as the status's.
            self.frames.skip_empty_close();
            self.pending = Some(0);
            // Written now if it can be; otherwise by the next write or flush.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(1));
        }
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..end]))?;
        if close_at.is_none() && n == buf.len() {
            // All written: the probe already stands where the scan would
            // (scanning the same bytes twice was ~2 % of a broadcast's
            // instructions per recipient, scripts/callgrind.sh).
            self.frames = probe;
        } else {
            self.frames.advance(&buf[..n]);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where the outgoing bytes are in the sequence of frames.
#[derive(Clone, Copy, Default)]
struct FrameScan {
    /// The frame header read so far (at most 2 + 8 length + 4 mask bytes).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload: u64,
}

/// First header byte of an unfragmented Close frame.
const FIN_CLOSE: u8 = 0x88;
/// The opcode bits of a frame's first byte, and a Close frame's opcode.
const OPCODE: u8 = 0x0F;
const CLOSE: u8 = 0x08;

impl FrameScan {
    /// Moves past `bytes`, stopping before the length byte of an empty
    /// Close frame if one is among them (its index is returned).
    fn advance(&mut self, bytes: &[u8]) -> Option<usize> {
        self.walk(bytes, |header, byte| header == [FIN_CLOSE] && byte == 0)
    }

    /// Moves past `bytes` of incoming frames; true once a Close frame's
    /// header begins among them.
    fn finds_close(&mut self, bytes: &[u8]) -> bool {
        self.walk(bytes, |header, byte| {
            header.is_empty() && byte & OPCODE == CLOSE
        })
        .is_some()
    }

    /// Moves past `bytes`, skipping payloads, until `stop` holds for a
    /// header byte (given the header bytes before it); that byte's index.
    fn walk(&mut self, bytes: &[u8], stop: impl Fn(&[u8], u8) -> bool) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if self.payload > 0 {
                let skip = self.payload.min((bytes.len() - i) as u64);
                self.payload -= skip;
                i += skip as usize;
                continue;
            }
            let byte = bytes[i];
            if stop(&self.header[..self.have], byte) {
                return Some(i);
            }
            self.header[self.have] = byte;
            self.have += 1;
            i += 1;
            if let Some(payload) = self.complete() {
                self.have = 0;
                self.payload = payload;
            }
        }
        None
    }

    /// The payload length, once the whole header has been read.
    fn complete(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let second = self.header[1];
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        let (extended, short) = match second & 0x7F {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        if self.have < 2 + extended + mask {
            return None;
        }
        Some(short.unwrap_or_else(|| {
            self.header[2..2 + extended]
                .iter()
                .fold(0, |length, &b| length << 8 | u64::from(b))
        }))
    }

    /// Moves past the length byte of an empty Close frame.
    fn skip_empty_close(&mut self) {
        self.have = 0;
        self.payload = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client's Close frame without a status (masked, as a client's are).
    const CLIENT_CLOSE: [u8; 6] = [FIN_CLOSE, 0x80, 1, 2, 3, 4];
    /// A client's Text frame whose payload (mask of zeros) holds the bytes
    /// of a Close frame's header.
    const CLIENT_TEXT: [u8; 8] = [0x81, 0x82, 0, 0, 0, 0, FIN_CLOSE, FIN_CLOSE];

    /// What the connection carries for `writes`, written one after another
    /// into a sink that takes at most `chunk` bytes per write; the client's
    /// Text and Close frames are read before write number `close_at`.
    async fn carried(writes: &[&[u8]], close_at: usize, chunk: usize) -> anyhow::Result<Vec<u8>> {
        let (inner, peer) = tokio::io::duplex(chunk);
        let (mut from_server, mut to_server) = tokio::io::split(peer);
        let mut io = NormalClose::new(inner);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            from_server.read_to_end(&mut out).await.map(|_| out)
        });
        for (i, write) in writes.iter().enumerate() {
            if i == close_at {
                let sent = [CLIENT_TEXT.as_slice(), &CLIENT_CLOSE].concat();
                let mut read = vec![0; sent.len()];
                let (written, got) =
                    tokio::join!(to_server.write_all(&sent), io.read_exact(&mut read));
                written?;
                got?;
                assert_eq!(read, sent);
            }
            io.write_all(write).await?;
        }
        io.shutdown().await?;
        drop(io);
        Ok(reader.await??)
    }

    #[tokio::test]
    async fn an_empty_close_frame_goes_out_with_status_1000() -> anyhow::Result<()> {
        // A text frame "hi", a 200-byte binary frame whose payload holds
        // the bytes of an empty Close, then the empty Close.
        let mut binary = vec![0x82, 126, 0, 200];
        binary.extend(std::iter::repeat_n([FIN_CLOSE, 0], 100).flatten());
        let writes: [&[u8]; 3] = [&[0x81, 2, b'h', b'i'], &binary, &[FIN_CLOSE, 0]];
        let mut expected = writes[..2].concat();
        expected.extend([FIN_CLOSE, 2, 0x03, 0xE8]);
        // The client's Close read before any of them, or after the frames
        // that came before the echo (written whole, or a few bytes at a
        // time when the sink takes less).
        for close_at in [0, 1, 2] {
            for chunk in [1, 3, 1024] {
                let what = format!("close read before write {close_at}, chunk {chunk}");
                assert_eq!(carried(&writes, close_at, chunk).await?, expected, "{what}");
            }
        }
        // Once the client's Close was read, split anywhere, even between
        // its two bytes.
        let all = writes.concat();
        let (a, b) = all.split_at(all.len() - 1);
        assert_eq!(carried(&[a, b], 0, 7).await?, expected);
        // A Close frame with a status is left as it is.
        let with_status: &[u8] = &[FIN_CLOSE, 2, 0x03, 0xF3];
        assert_eq!(carried(&[with_status], 0, 2).await?, with_status);
        Ok(())
    }

    #[tokio::test]
    async fn written_bytes_pass_unread_until_the_client_closes() -> anyhow::Result<()> {
        // Nothing is rewritten before the client's Close frame was read:
        // the library echoes only a Close it received.
        let writes: [&[u8]; 2] = [&[0x81, 2, b'h', b'i'], &[FIN_CLOSE, 0]];
        assert_eq!(carried(&writes, usize::MAX, 3).await?, writes.concat());
        Ok(())
    }

    #[test]
    fn a_close_frame_is_found_among_incoming_frames() {
        let incoming = [CLIENT_TEXT.as_slice(), &CLIENT_CLOSE].concat();
        // Whole, or a byte at a time: the Text frame's payload is skipped.
        let mut whole = FrameScan::default();
        assert!(whole.finds_close(&incoming));
        let mut bytes = FrameScan::default();
        let found = incoming.iter().position(|b| bytes.finds_close(&[*b]));
        assert_eq!(found, Some(CLIENT_TEXT.len()));
        assert!(!FrameScan::default().finds_close(&CLIENT_TEXT));
    }
}
