//! The load generator's driver for the HTTP transports: one negotiated
//! Server-Sent Events or Long Polling connection, held idle.
//!
//! It speaks just enough HTTP/1.1 over one keep-alive TCP connection per
//! hub connection (negotiate, the handshake's POST, then the event stream
//! or the polls, all on that one TCP connection), so that the server holds
//! exactly what one such client costs it: one HTTP connection with one
//! request outstanding. Only what the idle scenario needs: the handshake
//! answer is checked, everything else the server sends is read and dropped.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, bail};
use tidings_protocol::{
    Protocol,
    handshake::{self, HandshakeRequest},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
};

use crate::conn::{Endpoint, Transport};

/// The longest response head or chunk-size line accepted.
const MAX_LINE: usize = 8 * 1024;

/// An open SSE or Long Polling connection whose handshake is done.
pub(crate) struct HttpConn {
    stream: BufReader<TcpStream>,
    transport: Transport,
    host: String,
    /// The transport path with the connection's token.
    path: String,
}

impl std::fmt::Debug for HttpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConn")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// How a response body is delimited.
enum Body {
    Length(usize),
    Chunked,
    /// Until the connection closes.
    Close,
}

struct Head {
    status: u16,
    body: Body,
}

impl HttpConn {
    /// Negotiates, posts the handshake and starts the transport; returns once
    /// the handshake answer has arrived.
    pub(crate) async fn open(
        endpoint: &Endpoint,
        server: SocketAddr,
        source: Ipv4Addr,
    ) -> anyhow::Result<HttpConn> {
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::from((source, 0)))
            .with_context(|| format!("cannot bind {source}"))?;
        let stream = socket
            .connect(server)
            .await
            .with_context(|| format!("cannot connect to {server}"))?;
        stream.set_nodelay(true)?;
        let mut conn = HttpConn {
            stream: BufReader::new(stream),
            transport: endpoint.transport,
            host: server.to_string(),
            path: String::new(),
        };
        let negotiate = format!("{}/negotiate?negotiateVersion=1", endpoint.hub_path);
        conn.request("POST", &negotiate, &[], b"").await?;
        let (status, body) = conn.response().await?;
        if status != 200 {
            bail!("negotiate answered {status}");
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&body).context("negotiate answer is not JSON")?;
        let token = answer
            .get("connectionToken")
            .and_then(|t| t.as_str())
            .context("negotiate answer without a connection token")?;
        // Tokens are base64url: nothing to escape in a query.
        conn.path = format!("{}?id={token}", endpoint.hub_path);

        // The handshake is posted before the transport starts (the server
        // keeps it for the connection's first read), so that everything
        // runs in order on this one TCP connection.
        let mut request = Vec::new();
        handshake::write_request(
            &HandshakeRequest {
                protocol: endpoint.protocol.name().to_owned(),
                version: 1,
            },
            &mut request,
        );
        let path = conn.path.clone();
        conn.request("POST", &path, &[], &request).await?;
        let (status, _) = conn.response().await?;
        if status != 200 {
            bail!("the handshake's POST answered {status}");
        }

        match conn.transport {
            Transport::ServerSentEvents => {
                if endpoint.protocol != Protocol::Json {
                    bail!("Server-Sent Events carry text only: use the json protocol");
                }
                conn.request("GET", &path, &[("Accept", "text/event-stream")], b"")
                    .await?;
                let head = conn.head().await?;
                if head.status != 200 || !matches!(head.body, Body::Chunked | Body::Close) {
                    bail!("the event stream answered {}", head.status);
                }
                // Events until the handshake answer's has come.
                let mut seen = Vec::new();
                while parse_handshake(&events_data(&seen))?.is_none() {
                    let chunk = conn.chunk(&head.body).await?;
                    if chunk.is_empty() {
                        bail!("the event stream ended during the handshake");
                    }
                    seen.extend_from_slice(&chunk);
                }
            }
            Transport::LongPolling => {
                // The first poll is answered at once; the following ones
                // carry what the server sends, the handshake answer first.
                let mut seen = Vec::new();
                loop {
                    let (status, body) = conn.poll().await?;
                    if status != 200 {
                        bail!("a poll answered {status} during the handshake");
                    }
                    seen.extend_from_slice(&body);
                    if parse_handshake(&seen)?.is_some() {
                        break;
                    }
                }
            }
            Transport::WebSockets => bail!("WebSockets are driven by conn::Conn"),
        }
        Ok(conn)
    }

    /// Holds the connection: reads (and drops) the event stream, or polls
    /// again whenever a poll is answered. Returns when the server ends the
    /// connection; an error when the TCP connection fails.
    pub(crate) async fn hold(mut self) -> anyhow::Result<()> {
        match self.transport {
            Transport::ServerSentEvents => {
                // The stream's head was read by `open`; it is chunked.
                while !self.chunk(&Body::Chunked).await?.is_empty() {}
                Ok(())
            }
            _ => loop {
                let (status, _) = self.poll().await?;
                if status != 200 {
                    // 204: the connection is over.
                    return Ok(());
                }
            },
        }
    }

    async fn poll(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        let path = self.path.clone();
        self.request("GET", &path, &[], b"").await?;
        self.response().await
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<()> {
        let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "POST" {
            out.push_str(&format!(
                "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.get_mut().write_all(&bytes).await?;
        Ok(())
    }

    /// A whole response (status and body).
    async fn response(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        let head = self.head().await?;
        let mut body = Vec::new();
        match head.body {
            Body::Length(length) => {
                body.resize(length, 0);
                self.stream.read_exact(&mut body).await?;
            }
            Body::Chunked => loop {
                let chunk = self.chunk(&Body::Chunked).await?;
                if chunk.is_empty() {
                    break;
                }
                body.extend_from_slice(&chunk);
            },
            Body::Close => bail!("a response without a length on a keep-alive connection"),
        }
        Ok((head.status, body))
    }

    async fn line(&mut self) -> anyhow::Result<String> {
        let mut line = Vec::new();
        let read = (&mut self.stream)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            bail!("the server closed the connection");
        }
        if line.last() != Some(&b'\n') {
            bail!("a line longer than {MAX_LINE} bytes");
        }
        Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
    }

    async fn head(&mut self) -> anyhow::Result<Head> {
        let status_line = self.line().await?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line: {status_line}"))?;
        let mut body = Body::Close;
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                body = Body::Length(value.parse().context("bad Content-Length")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.eq_ignore_ascii_case("chunked")
            {
                body = Body::Chunked;
            }
        }
        // Answers without a body.
        if status == 204 || status == 304 {
            body = Body::Length(0);
        }
        Ok(Head { status, body })
    }

    /// The next piece of a streamed body; empty at its end.
    async fn chunk(&mut self, body: &Body) -> anyhow::Result<Vec<u8>> {
        match body {
            Body::Chunked => {
                let size_line = self.line().await?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .with_context(|| format!("bad chunk size: {size_line}"))?;
                let mut data = vec![0; size];
                self.stream.read_exact(&mut data).await?;
                // The CRLF after the chunk (after the last one, the end of
                // the trailers).
                self.line().await?;
                Ok(data)
            }
            Body::Close => {
                let mut data = vec![0; 4096];
                let n = self.stream.read(&mut data).await?;
                data.truncate(n);
                Ok(data)
            }
            Body::Length(_) => bail!("not a streamed body"),
        }
    }
}

/// The `data` of the complete events in an event stream, joined.
fn events_data(stream: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(stream);
    let mut data = Vec::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("data:") {
            data.extend_from_slice(value.strip_prefix(' ').unwrap_or(value).as_bytes());
        }
    }
    data
}

/// Whether the handshake answer is in `bytes`: `Some` if it is (an error
/// answer fails).
fn parse_handshake(bytes: &[u8]) -> anyhow::Result<Option<()>> {
    match handshake::parse_response(bytes)? {
        Some((response, _)) => match response.error {
            Some(error) => bail!("handshake refused: {error}"),
            None => Ok(Some(())),
        },
        None => Ok(None),
    }
}
