//! Test client: HTTP/1.1 and HTTP/2 (prior knowledge or over any stream,
//! such as TLS) with hyper, and a reader of `text/event-stream` bodies.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, client::conn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a test waits for one event before it fails.
pub(crate) const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP connection: every request made through it uses it.
pub(crate) enum Client {
    Http1(conn::http1::SendRequest<Full<Bytes>>, String),
    Http2(conn::http2::SendRequest<Full<Bytes>>, String),
}

impl Client {
    /// HTTP/1.1 over `io`; `base` is `http://host:port` or `https://…`.
    pub(crate) async fn http1<I>(io: I, base: &str) -> anyhow::Result<Client>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(connection);
        Ok(Client::Http1(sender, base.to_owned()))
    }

    /// HTTP/2 with prior knowledge over `io` (a TCP stream for h2c, a TLS
    /// stream after ALPN chose `h2`).
    pub(crate) async fn http2<I>(io: I, base: &str) -> anyhow::Result<Client>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) =
            conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(connection);
        Ok(Client::Http2(sender, base.to_owned()))
    }

    /// Sends a request for `path` with `headers`, and an optional body.
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> anyhow::Result<Response<Incoming>> {
        let (base, is_h2) = match self {
            Client::Http1(_, base) => (base.clone(), false),
            Client::Http2(_, base) => (base.clone(), true),
        };
        let uri = format!("{base}{path}");
        let mut builder = Request::builder().method(method);
        if is_h2 {
            builder = builder.uri(&uri);
        } else {
            let authority = base.split("://").nth(1).unwrap_or(&base).to_owned();
            builder = builder.uri(path).header("host", authority);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body.unwrap_or_default()))?;
        let response = match self {
            Client::Http1(sender, _) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Client::Http2(sender, _) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        Ok(response)
    }

    pub(crate) async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response<Incoming>> {
        self.send("GET", path, headers, None).await
    }
}

/// The whole body of a response, as text.
pub(crate) async fn text(response: Response<Incoming>) -> anyhow::Result<String> {
    let body = tokio::time::timeout(EVENT_TIMEOUT, response.into_body().collect())
        .await
        .context("body timed out")??;
    Ok(String::from_utf8(body.to_bytes().to_vec())?)
}

/// The whole body of a response, as bytes.
pub(crate) async fn bytes(response: Response<Incoming>) -> anyhow::Result<Bytes> {
    let body = tokio::time::timeout(EVENT_TIMEOUT, response.into_body().collect())
        .await
        .context("body timed out")??;
    Ok(body.to_bytes())
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub id: Option<String>,
    pub data: String,
}

/// Reads events from a `text/event-stream` body.
pub(crate) struct Events {
    body: Incoming,
    buffer: Vec<u8>,
    /// Comment lines seen so far (the opening one and keep-alives).
    pub comments: usize,
    /// The last `retry:` field, in milliseconds.
    pub retry: Option<u64>,
}

impl Events {
    pub(crate) fn new(response: Response<Incoming>) -> anyhow::Result<Events> {
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with("text/event-stream") {
            bail!("not an event stream: {} {content_type}", response.status());
        }
        Ok(Events {
            body: response.into_body(),
            buffer: Vec::new(),
            comments: 0,
            retry: None,
        })
    }

    /// The next event; `None` when the response ended. Fails after
    /// [`EVENT_TIMEOUT`] without one.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        tokio::time::timeout(EVENT_TIMEOUT, self.next_inner())
            .await
            .context("no event in time")?
    }

    async fn next_inner(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(event) = self.parse_one()? {
                return Ok(Some(event));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        // Lines may end in CRLF (the SignalR transport) or LF.
                        self.buffer.extend(data.iter().filter(|&&b| b != b'\r'));
                    }
                }
            }
        }
    }

    /// Takes one complete block (up to a blank line) from the buffer.
    fn parse_one(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") else {
                return Ok(None);
            };
            let block = String::from_utf8(self.buffer[..end].to_vec())?;
            self.buffer.drain(..end + 2);
            let mut id = None;
            let mut data: Option<String> = None;
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                } else if let Some(value) = line.strip_prefix("retry:") {
                    self.retry = Some(value.trim().parse()?);
                } else if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim_start().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    data = Some(match data {
                        Some(previous) => format!("{previous}\n{value}"),
                        None => value.to_owned(),
                    });
                }
            }
            if let Some(data) = data {
                return Ok(Some(Event { id, data }));
            }
        }
    }
}
