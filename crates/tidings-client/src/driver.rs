//! The connection task: it owns the transport link, the pending invocations and streams, the
//! client-to-server streams being uploaded, the keep-alive and timeout timers, the stateful
//! reconnect buffer, and the reconnect loop. Everything it owns ends when it ends.
//!
//! Calls reach it as [`Command`]s, already serialized by the caller. Server-to-client invocations
//! go to a second task that runs the client methods one at a time (a handler may call back into
//! the hub without blocking this loop).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt, stream::SelectAll};
use tidings_protocol::{
    CancelInvocation, Close, Completion, CompletionResult, HandshakeRequest, Headers, HubMessage,
    Invocation, MessageDecoder, Payload, Protocol, StreamItem, TransportType, handshake,
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::{Instant, sleep_until},
};
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use url::Url;

use crate::{
    ClientStream, ConnectionError, HubConnectionState, InvokeError, RetryContext, StartError,
    TransportError,
    args::UploadItem,
    buffer::MessageBuffer,
    connection::Shared,
    handler,
    negotiate::{connect_url, negotiate},
    stream::StreamEvent,
    transport::{
        Link, TransportEvent,
        http::{Auth, Http, bearer},
        long_polling, sse, websocket,
    },
};

/// A call from a handle, serialized once by the caller.
pub(crate) enum Command {
    /// A blocking invocation: the reply carries the result payload (null for a void result).
    Invoke {
        id: u64,
        frame: Bytes,
        reply: oneshot::Sender<Result<Payload, InvokeError>>,
        streams: Vec<(u64, ClientStream)>,
    },
    /// A stream invocation: items and the final error go to `events`.
    Stream {
        id: u64,
        frame: Bytes,
        events: mpsc::UnboundedSender<StreamEvent>,
        streams: Vec<(u64, ClientStream)>,
    },
    /// A non-blocking invocation.
    Send {
        frame: Bytes,
        streams: Vec<(u64, ClientStream)>,
    },
    /// A client result (a Completion) from the handler task.
    Frame(Bytes),
}

/// A transport with a completed handshake.
pub(crate) struct Session {
    link: Link,
    pub(crate) connection_id: Option<String>,
    /// The transport URL (with `id`), for reopening the WebSocket on stateful reconnect.
    connect_url: Url,
    http: Http,
    /// Hub messages that arrived with the handshake answer.
    leftover: Bytes,
    stateful: bool,
}

/// Opens a connection: negotiate (unless skipped), the first transport that works, handshake.
pub(crate) async fn establish(shared: &Shared) -> Result<Session, StartError> {
    let config = &shared.config;
    let http = Http {
        client: shared.client.clone(),
        headers: Arc::clone(&config.headers),
        auth: Auth::new(config.token_factory.clone()),
        timeout: config.http_timeout,
        tls: config.tls.clone(),
    };
    let protocol = config.protocol;
    let (mut link, connect_url, connection_id, stateful) = if config.skip_negotiation {
        if config.transports != [TransportType::WebSockets] {
            return Err(StartError::SkipNegotiationNeedsWebSockets);
        }
        let link = open_websocket(&http, &config.url, protocol)
            .await
            .map_err(StartError::Transport)?;
        (link, config.url.clone(), None, false)
    } else {
        connect_negotiated(&http, shared).await?
    };
    // Version 2 turns stateful reconnect on; servers without it must not see it.
    let version = if stateful { 2 } else { 1 };
    let leftover = handshake(&mut link, protocol, version, config.handshake_timeout).await?;
    tracing::debug!(transport = link.transport.name(), %protocol, "connected");
    Ok(Session {
        link,
        connection_id,
        connect_url,
        http,
        leftover,
        stateful,
    })
}

async fn open_websocket(
    http: &Http,
    url: &Url,
    protocol: Protocol,
) -> Result<Link, TransportError> {
    let mut headers = (*http.headers).clone();
    bearer(&mut headers, http.auth.current().await?.as_deref())?;
    websocket::connect(url, headers, protocol, http.tls.as_ref()).await
}

/// Negotiates and tries the offered transports in the server's order, renegotiating before each
/// retry (a failed attempt may have used up the connection), like the JavaScript client.
async fn connect_negotiated(
    http: &Http,
    shared: &Shared,
) -> Result<(Link, Url, Option<String>, bool), StartError> {
    let config = &shared.config;
    let protocol = config.protocol;
    let first = negotiate(http, &config.url, config.stateful_reconnect).await?;
    let offers = first.response.available_transports.clone();
    let mut current = Some(first);
    let mut failures = Vec::new();
    for offer in offers {
        if !config.transports.contains(&offer.transport)
            || !offer.transfer_formats.contains(&protocol.transfer_format())
        {
            continue;
        }
        let negotiated = match current.take() {
            Some(negotiated) => negotiated,
            None => negotiate(http, &config.url, config.stateful_reconnect).await?,
        };
        let url = connect_url(&negotiated.url, negotiated.token());
        let attempt = match offer.transport {
            TransportType::WebSockets => open_websocket(http, &url, protocol).await,
            TransportType::ServerSentEvents => sse::connect(http, &url).await,
            TransportType::LongPolling => long_polling::connect(http, &url).await,
        };
        match attempt {
            Ok(link) => {
                // Only WebSockets can be reopened for the same connection.
                let stateful = negotiated.response.use_stateful_reconnect == Some(true)
                    && offer.transport == TransportType::WebSockets;
                return Ok((link, url, negotiated.response.connection_id, stateful));
            }
            Err(error) => {
                tracing::debug!(transport = offer.transport.name(), %error, "transport failed, trying the next");
                failures.push((offer.transport, error));
            }
        }
    }
    if failures.is_empty() {
        Err(StartError::NoSuitableTransport)
    } else {
        Err(StartError::AllTransportsFailed(failures))
    }
}

/// Sends the handshake request in a frame of its own and waits for the answer; returns the bytes
/// that followed it.
async fn handshake(
    link: &mut Link,
    protocol: Protocol,
    version: u32,
    timeout: Duration,
) -> Result<Bytes, StartError> {
    let mut request = Vec::with_capacity(48);
    handshake::write_request(
        &HandshakeRequest {
            protocol: protocol.name().to_owned(),
            version,
        },
        &mut request,
    );
    if !link.send(Bytes::from(request)).await {
        return Err(StartError::ClosedDuringHandshake(None));
    }
    let mut received = BytesMut::new();
    let (answer, used) = tokio::time::timeout(timeout, async {
        loop {
            match link.recv().await {
                TransportEvent::Data(data) => {
                    received.extend_from_slice(&data);
                    if let Some(answer) = handshake::parse_response(&received)? {
                        return Ok(answer);
                    }
                }
                TransportEvent::Closed(error) => {
                    return Err(StartError::ClosedDuringHandshake(error));
                }
            }
        }
    })
    .await
    .map_err(|_| StartError::HandshakeTimeout)??;
    if let Some(error) = answer.error {
        return Err(StartError::HandshakeRejected(error));
    }
    Ok(received.split_off(used).freeze())
}

fn encode(protocol: Protocol, message: &HubMessage) -> Option<Bytes> {
    let mut frame = Vec::with_capacity(32);
    match protocol.write_message(message, &mut frame) {
        Ok(()) => Some(Bytes::from(frame)),
        Err(error) => {
            tracing::error!(%error, "a message could not be serialized");
            None
        }
    }
}

fn parse_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

/// A call waiting for the server.
enum Pending {
    Invoke(oneshot::Sender<Result<Payload, InvokeError>>),
    Stream(mpsc::UnboundedSender<StreamEvent>),
}

impl Pending {
    fn fail(self, error: InvokeError) {
        match self {
            Pending::Invoke(reply) => {
                let _ = reply.send(Err(error));
            }
            Pending::Stream(events) => {
                let _ = events.send(StreamEvent::Error(error));
            }
        }
    }
}

/// A client-to-server stream being sent: yields `(stream id, item)`, then `(stream id, None)`.
struct Upload {
    id: u64,
    stream: ClientStream,
    protocol: Protocol,
    finished: bool,
}

impl Stream for Upload {
    type Item = (u64, Option<UploadItem>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let protocol = self.protocol;
        let id = self.id;
        match self.stream.poll_item(cx, protocol) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(item)) => {
                self.finished = item.is_err();
                Poll::Ready(Some((id, Some(item))))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(Some((id, None)))
            }
        }
    }
}

/// How a session ended.
enum End {
    /// `stop` was called or the last handle dropped.
    Stopped,
    /// The connection ended; `reconnect` says whether automatic reconnect may try again.
    Lost {
        error: Option<ConnectionError>,
        reconnect: bool,
    },
}

/// Per-transport state of a session.
struct Live {
    decoder: MessageDecoder,
    buffer: Option<MessageBuffer>,
    last_sent: Instant,
    last_received: Instant,
    /// Long Polling has inherent keep-alive: no pings, no server timeout.
    keep_alive: bool,
}

/// The connection task.
pub(crate) struct Driver {
    shared: Arc<Shared>,
    protocol: Protocol,
    token: CancellationToken,
    commands: mpsc::Receiver<Command>,
    cancels: mpsc::UnboundedReceiver<u64>,
    done: watch::Sender<bool>,
    invocations: mpsc::UnboundedSender<Invocation>,
    _handlers: AbortOnDropHandle<()>,
    pending: HashMap<u64, Pending>,
    uploads: SelectAll<Upload>,
    ping: Bytes,
}

impl Driver {
    pub(crate) fn new(
        shared: Arc<Shared>,
        token: CancellationToken,
        commands: mpsc::Receiver<Command>,
        command_tx: mpsc::Sender<Command>,
        cancels: mpsc::UnboundedReceiver<u64>,
        done: watch::Sender<bool>,
    ) -> Self {
        let protocol = shared.config.protocol;
        let (invocations, invocation_rx) = mpsc::unbounded_channel();
        let handlers = tokio::spawn(run_handlers(
            Arc::clone(&shared),
            protocol,
            invocation_rx,
            command_tx,
        ));
        Driver {
            shared,
            protocol,
            token,
            commands,
            cancels,
            done,
            invocations,
            _handlers: AbortOnDropHandle::new(handlers),
            pending: HashMap::new(),
            uploads: SelectAll::new(),
            ping: encode(protocol, &HubMessage::Ping).unwrap_or_default(),
        }
    }

    pub(crate) async fn run(mut self, session: Session) {
        let mut session = session;
        let error = loop {
            match self.run_session(&mut session).await {
                End::Stopped => {
                    self.close_gracefully(session).await;
                    break None;
                }
                End::Lost { error, reconnect } => {
                    drop(session);
                    self.fail_pending(error.clone());
                    let error = match (error, reconnect) {
                        (error, false) => break error,
                        (Some(error), true) => error,
                        (None, true) => ConnectionError::TransportClosed,
                    };
                    match self.reconnect(error).await {
                        Ok(next) => session = next,
                        Err(error) => break error,
                    }
                }
            }
        };
        self.fail_pending(None);
        {
            let mut status = self.shared.status();
            status.state = HubConnectionState::Disconnected;
            status.connection_id = None;
            status.run = None;
        }
        match &error {
            Some(error) => tracing::info!(%error, "connection closed"),
            None => tracing::debug!("connection closed"),
        }
        self.shared.fire_closed(error.as_ref());
        let _ = self.done.send(true);
    }

    fn fail_pending(&mut self, error: Option<ConnectionError>) {
        for (_, pending) in self.pending.drain() {
            pending.fail(InvokeError::ConnectionClosed(error.clone()));
        }
        self.uploads.clear();
    }

    async fn close_gracefully(&mut self, session: Session) {
        self.shared.set_state(
            HubConnectionState::Disconnecting,
            session.connection_id.clone(),
        );
        let close = HubMessage::Close(Close {
            error: None,
            allow_reconnect: false,
        });
        if let Some(frame) = encode(self.protocol, &close) {
            let _ = session.link.send(frame).await;
        }
        session.link.close(self.shared.config.close_timeout).await;
    }

    /// Automatic reconnect: waits as the retry policy says and opens a new connection (new
    /// negotiate, new connection id). `Err(None)` if stopped meanwhile.
    async fn reconnect(
        &mut self,
        error: ConnectionError,
    ) -> Result<Session, Option<ConnectionError>> {
        let Some(policy) = self.shared.config.retry.clone() else {
            return Err(Some(error));
        };
        let started = Instant::now();
        let mut previous = 0u32;
        let first = policy.next_retry_delay(&RetryContext {
            previous_retry_count: 0,
            elapsed: Duration::ZERO,
            retry_reason: &error,
        });
        let Some(mut delay) = first else {
            return Err(Some(error));
        };
        tracing::info!(%error, "connection lost, reconnecting");
        self.shared
            .set_state(HubConnectionState::Reconnecting, None);
        self.shared.fire_reconnecting(&error);
        let shared = Arc::clone(&self.shared);
        loop {
            tracing::debug!(
                attempt = previous + 1,
                ?delay,
                "reconnect attempt scheduled"
            );
            self.idle(tokio::time::sleep(delay)).await.ok_or(None)?;
            match self.idle(establish(&shared)).await.ok_or(None)? {
                Ok(session) => {
                    shared.set_state(HubConnectionState::Connected, session.connection_id.clone());
                    tracing::info!("reconnected");
                    shared.fire_reconnected(session.connection_id.as_deref());
                    return Ok(session);
                }
                Err(failure) => {
                    tracing::debug!(error = %failure, "reconnect attempt failed");
                    previous += 1;
                    let reason = ConnectionError::ReconnectFailed(Arc::new(failure));
                    match policy.next_retry_delay(&RetryContext {
                        previous_retry_count: previous,
                        elapsed: started.elapsed(),
                        retry_reason: &reason,
                    }) {
                        Some(next) => delay = next,
                        None => return Err(Some(reason)),
                    }
                }
            }
        }
    }

    /// Runs `fut` while not connected: calls are rejected meanwhile. `None` if stopped.
    async fn idle<F: std::future::Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                biased;
                () = self.token.cancelled() => return None,
                out = &mut fut => return Some(out),
                Some(command) = self.commands.recv() => reject(command),
                Some(_) = self.cancels.recv() => {}
            }
        }
    }

    async fn run_session(&mut self, session: &mut Session) -> End {
        let config = &self.shared.config;
        let (keep_alive_interval, server_timeout) = (config.keep_alive, config.server_timeout);
        let now = Instant::now();
        let mut live = Live {
            decoder: MessageDecoder::new(self.protocol, None),
            buffer: session
                .stateful
                .then(|| MessageBuffer::new(config.stateful_buffer_size)),
            last_sent: now,
            last_received: now,
            keep_alive: session.link.transport != TransportType::LongPolling,
        };
        if live.keep_alive {
            // The first ping arms the server's client timeout, as the official clients do.
            Self::write(&mut live, &session.link, self.ping.clone(), false).await;
        }
        live.decoder.push(&std::mem::take(&mut session.leftover));
        if let Err(end) = self.drain(&mut live, &session.link).await {
            return end;
        }
        let ping = sleep_until(live.last_sent + keep_alive_interval);
        let timeout = sleep_until(live.last_received + server_timeout);
        let ack = sleep_until(now + Duration::from_secs(3600));
        tokio::pin!(ping, timeout, ack);
        loop {
            let (accepting, ack_due) = match &live.buffer {
                Some(buffer) => (!buffer.is_full(), buffer.ack_due()),
                None => (true, None),
            };
            if let Some(due) = ack_due
                && ack.deadline() != due
            {
                ack.as_mut().reset(due);
            }
            tokio::select! {
                biased;
                () = self.token.cancelled() => return End::Stopped,
                event = session.link.recv() => match event {
                    TransportEvent::Data(data) => {
                        live.last_received = Instant::now();
                        live.decoder.push(&data);
                        if let Err(end) = self.drain(&mut live, &session.link).await {
                            return end;
                        }
                    }
                    TransportEvent::Closed(error) => {
                        if live.buffer.is_some() {
                            match self.reattach(session, &mut live).await {
                                Reattach::Done => continue,
                                Reattach::Stopped => return End::Stopped,
                                Reattach::Failed => {}
                            }
                        }
                        return End::Lost {
                            error: Some(error.map_or(ConnectionError::TransportClosed, ConnectionError::Transport)),
                            reconnect: true,
                        };
                    }
                },
                command = self.commands.recv(), if accepting => match command {
                    Some(command) => self.command(command, &mut live, &session.link).await,
                    None => return End::Stopped,
                },
                Some(id) = self.cancels.recv() => {
                    if let Some(Pending::Stream(_)) = self.pending.remove(&id) {
                        self.cancel(id, &mut live, &session.link).await;
                    }
                }
                Some((id, item)) = self.uploads.next(), if !self.uploads.is_empty() => {
                    self.upload(id, item, &mut live, &session.link).await;
                }
                () = &mut ping, if live.keep_alive => {
                    if Instant::now() >= live.last_sent + keep_alive_interval {
                        Self::write(&mut live, &session.link, self.ping.clone(), false).await;
                    }
                    ping.as_mut().reset(live.last_sent + keep_alive_interval);
                }
                () = &mut timeout, if live.keep_alive => {
                    if Instant::now() >= live.last_received + server_timeout {
                        return End::Lost { error: Some(ConnectionError::ServerTimeout), reconnect: true };
                    }
                    timeout.as_mut().reset(live.last_received + server_timeout);
                }
                () = &mut ack, if ack_due.is_some() => {
                    let ack_id = live.buffer.as_mut().and_then(MessageBuffer::take_ack);
                    if let Some(sequence_id) = ack_id
                        && let Some(frame) = encode(self.protocol, &HubMessage::Ack { sequence_id })
                    {
                        Self::write(&mut live, &session.link, frame, false).await;
                    }
                    ack.as_mut().reset(Instant::now() + Duration::from_secs(3600));
                }
            }
        }
    }

    /// Writes one frame; trackable frames are kept for replay when stateful reconnect is on.
    async fn write(live: &mut Live, link: &Link, frame: Bytes, trackable: bool) {
        if trackable && let Some(buffer) = &mut live.buffer {
            buffer.sent(&frame);
        }
        live.last_sent = Instant::now();
        // If the transport has ended, its Closed event is next in line; nothing to do here.
        let _ = link.send(frame).await;
    }

    async fn command(&mut self, command: Command, live: &mut Live, link: &Link) {
        let streams = match command {
            Command::Invoke {
                id,
                frame,
                reply,
                streams,
            } => {
                self.pending.insert(id, Pending::Invoke(reply));
                Self::write(live, link, frame, true).await;
                streams
            }
            Command::Stream {
                id,
                frame,
                events,
                streams,
            } => {
                self.pending.insert(id, Pending::Stream(events));
                Self::write(live, link, frame, true).await;
                streams
            }
            Command::Send { frame, streams } => {
                Self::write(live, link, frame, true).await;
                streams
            }
            Command::Frame(frame) => {
                Self::write(live, link, frame, true).await;
                Vec::new()
            }
        };
        // Items follow the invocation that announced the stream ids.
        for (id, stream) in streams {
            self.uploads.push(Upload {
                id,
                stream,
                protocol: self.protocol,
                finished: false,
            });
        }
    }

    async fn cancel(&mut self, id: u64, live: &mut Live, link: &Link) {
        let message = HubMessage::CancelInvocation(CancelInvocation {
            headers: Headers::new(),
            invocation_id: id.to_string(),
        });
        if let Some(frame) = encode(self.protocol, &message) {
            Self::write(live, link, frame, true).await;
        }
    }

    async fn upload(&mut self, id: u64, item: Option<UploadItem>, live: &mut Live, link: &Link) {
        let message = match item {
            Some(Ok(item)) => HubMessage::StreamItem(StreamItem {
                headers: Headers::new(),
                invocation_id: id.to_string(),
                item,
            }),
            Some(Err(error)) => HubMessage::Completion(Completion::error(id.to_string(), error)),
            None => HubMessage::Completion(Completion::void(id.to_string())),
        };
        if let Some(frame) = encode(self.protocol, &message) {
            Self::write(live, link, frame, true).await;
        }
    }

    /// Handles every complete message in the decoder.
    async fn drain(&mut self, live: &mut Live, link: &Link) -> Result<(), End> {
        loop {
            let message = match live.decoder.next_message() {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(()),
                Err(error) => {
                    tracing::warn!(%error, "invalid message from the server");
                    return Err(End::Lost {
                        error: Some(ConnectionError::Protocol(error.to_string().into())),
                        reconnect: true,
                    });
                }
            };
            self.handle(message, live, link).await?;
        }
    }

    async fn handle(
        &mut self,
        message: HubMessage,
        live: &mut Live,
        link: &Link,
    ) -> Result<(), End> {
        if let Some(buffer) = &mut live.buffer {
            match message {
                HubMessage::Sequence { sequence_id } => {
                    return buffer.sequence(sequence_id).map_err(|error| End::Lost {
                        error: Some(error),
                        reconnect: false,
                    });
                }
                HubMessage::Ack { sequence_id } => {
                    buffer.ack(sequence_id);
                    return Ok(());
                }
                _ if !buffer.should_process(&message) => return Ok(()),
                _ => {}
            }
        }
        match message {
            HubMessage::Invocation(invocation) => {
                // The handler task outlives nothing of ours; if it is gone, so are the handlers.
                let _ = self.invocations.send(invocation);
            }
            HubMessage::StreamItem(item) => {
                let Some(id) = parse_id(&item.invocation_id) else {
                    return Ok(());
                };
                let consumer_gone = match self.pending.get(&id) {
                    Some(Pending::Stream(events)) => {
                        events.send(StreamEvent::Item(item.item)).is_err()
                    }
                    Some(Pending::Invoke(_)) => {
                        tracing::warn!(id, "stream item for a non-streaming invocation");
                        false
                    }
                    None => false,
                };
                if consumer_gone {
                    self.pending.remove(&id);
                    self.cancel(id, live, link).await;
                }
            }
            HubMessage::Completion(completion) => {
                let pending =
                    parse_id(&completion.invocation_id).and_then(|id| self.pending.remove(&id));
                match (pending, completion.result) {
                    (Some(Pending::Invoke(reply)), result) => {
                        let _ = reply.send(match result {
                            CompletionResult::Void => Ok(Payload::null(self.protocol)),
                            CompletionResult::Value(value) => Ok(value),
                            CompletionResult::Error(error) => Err(InvokeError::Hub(error)),
                        });
                    }
                    (Some(Pending::Stream(events)), CompletionResult::Error(error)) => {
                        let _ = events.send(StreamEvent::Error(InvokeError::Hub(error)));
                    }
                    // Dropping the sender ends the stream.
                    (Some(Pending::Stream(_)), _) | (None, _) => {}
                }
            }
            HubMessage::Close(close) => {
                tracing::debug!(error = ?close.error, allow_reconnect = close.allow_reconnect, "close message from the server");
                let error = match close.error {
                    Some(error) => Some(ConnectionError::ServerClosed(error)),
                    None if close.allow_reconnect => Some(ConnectionError::TransportClosed),
                    None => None,
                };
                return Err(End::Lost {
                    error,
                    reconnect: close.allow_reconnect,
                });
            }
            // Pings only reset the timeout. Servers never send StreamInvocation or
            // CancelInvocation; Ack and Sequence matter only with stateful reconnect.
            _ => {}
        }
        Ok(())
    }

    /// Stateful reconnect: one immediate attempt to reopen the WebSocket for the same connection
    /// (no negotiate, no handshake), then Sequence and the unacknowledged messages. Calls wait
    /// meanwhile (they will be sent on the new socket).
    async fn reattach(&mut self, session: &mut Session, live: &mut Live) -> Reattach {
        let Some(buffer) = &mut live.buffer else {
            return Reattach::Failed;
        };
        buffer.disconnected();
        tracing::info!("transport lost, reopening the WebSocket (stateful reconnect)");
        let attempt = tokio::time::timeout(
            self.shared.config.handshake_timeout,
            open_websocket(&session.http, &session.connect_url, self.protocol),
        );
        let link = tokio::select! {
            biased;
            () = self.token.cancelled() => return Reattach::Stopped,
            link = attempt => match link {
                Ok(Ok(link)) => link,
                Ok(Err(error)) => {
                    tracing::info!(%error, "stateful reconnect failed");
                    return Reattach::Failed;
                }
                Err(_) => return Reattach::Failed,
            },
        };
        session.link = link;
        live.decoder = MessageDecoder::new(self.protocol, None);
        live.last_received = Instant::now();
        let (first, frames) = buffer.replay();
        let frames: Vec<Bytes> = frames.cloned().collect();
        let sequence = encode(self.protocol, &HubMessage::Sequence { sequence_id: first });
        for frame in sequence.into_iter().chain(frames) {
            Self::write(live, &session.link, frame, false).await;
        }
        tracing::info!("stateful reconnect succeeded");
        Reattach::Done
    }
}

enum Reattach {
    Done,
    Failed,
    Stopped,
}

fn reject(command: Command) {
    match command {
        Command::Invoke { reply, .. } => {
            let _ = reply.send(Err(InvokeError::NotConnected));
        }
        Command::Stream { events, .. } => {
            let _ = events.send(StreamEvent::Error(InvokeError::NotConnected));
        }
        Command::Send { .. } | Command::Frame(_) => {}
    }
}

/// The handler task: runs the client methods of each server invocation in arrival order and sends
/// the client result when the server expects one.
async fn run_handlers(
    shared: Arc<Shared>,
    protocol: Protocol,
    mut invocations: mpsc::UnboundedReceiver<Invocation>,
    commands: mpsc::Sender<Command>,
) {
    while let Some(invocation) = invocations.recv().await {
        let handlers = shared.handlers.read().get(&invocation.target);
        let run = std::panic::AssertUnwindSafe(handler::run(handlers, &invocation, protocol));
        let completion = match run.catch_unwind().await {
            Ok(completion) => completion,
            Err(_) => {
                tracing::error!(method = %invocation.target, "a client method panicked");
                invocation
                    .invocation_id
                    .as_deref()
                    .map(|id| Completion::error(id, "The client method panicked."))
            }
        };
        let frame = completion.and_then(|c| encode(protocol, &HubMessage::Completion(c)));
        if let Some(frame) = frame
            && commands.send(Command::Frame(frame)).await.is_err()
        {
            return;
        }
    }
}
