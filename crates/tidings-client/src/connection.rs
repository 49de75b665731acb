//! [`HubConnection`]: the handle applications use. It serializes calls and hands them to the
//! connection task (see `driver`), registers client methods and events, and reports the state.
//!
//! The handle holds no connection state of its own beyond what the task publishes under a short
//! lock (state, connection id, the command channel of the current run); nothing is locked across
//! an `.await`.

use std::{
    fmt,
    future::Future,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Serialize, de::DeserializeOwned};
use tidings_protocol::{Headers, HubMessage, Invocation, Payload};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    ClientStream, ConnectionError, FromArguments, HubStream, InvocationArgs, InvokeError,
    StartError,
    builder::Config,
    driver::{self, Command},
    handler::{ErasedHandler, HandlerMap, Plain, WithResult},
};

/// How many calls may queue for the connection task before callers wait.
const COMMAND_CAPACITY: usize = 256;

/// The state of a [`HubConnection`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HubConnectionState {
    /// Not connected; `start` may be called.
    Disconnected,
    /// `start` is running.
    Connecting,
    /// Connected: calls are sent.
    Connected,
    /// `stop` is running.
    Disconnecting,
    /// The connection was lost and automatic reconnect is trying again.
    Reconnecting,
}

type ReconnectingHandler = Arc<dyn Fn(&ConnectionError) + Send + Sync>;
type ReconnectedHandler = Arc<dyn Fn(Option<&str>) + Send + Sync>;
type ClosedHandler = Arc<dyn Fn(Option<&ConnectionError>) + Send + Sync>;

#[derive(Default)]
pub(crate) struct Events {
    reconnecting: Vec<ReconnectingHandler>,
    reconnected: Vec<ReconnectedHandler>,
    closed: Vec<ClosedHandler>,
}

/// One run of the connection, from `start` until it is closed.
#[derive(Clone)]
pub(crate) struct Run {
    pub(crate) token: CancellationToken,
    done: watch::Receiver<bool>,
    commands: mpsc::Sender<Command>,
    cancels: mpsc::UnboundedSender<u64>,
}

pub(crate) struct Status {
    pub(crate) state: HubConnectionState,
    pub(crate) connection_id: Option<String>,
    pub(crate) run: Option<Run>,
}

/// What the handle and the connection task share.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) client: reqwest::Client,
    pub(crate) handlers: RwLock<HandlerMap>,
    events: Mutex<Events>,
    pub(crate) status: Mutex<Status>,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn status(&self) -> parking_lot::MutexGuard<'_, Status> {
        self.status.lock()
    }

    fn events(&self) -> parking_lot::MutexGuard<'_, Events> {
        self.events.lock()
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn set_state(&self, state: HubConnectionState, connection_id: Option<String>) {
        let mut status = self.status();
        status.state = state;
        status.connection_id = connection_id;
    }

    pub(crate) fn fire_reconnecting(&self, error: &ConnectionError) {
        let handlers = self.events().reconnecting.clone();
        for handler in handlers {
            guard("on_reconnecting", || handler(error));
        }
    }

    pub(crate) fn fire_reconnected(&self, connection_id: Option<&str>) {
        let handlers = self.events().reconnected.clone();
        for handler in handlers {
            guard("on_reconnected", || handler(connection_id));
        }
    }

    pub(crate) fn fire_closed(&self, error: Option<&ConnectionError>) {
        let handlers = self.events().closed.clone();
        for handler in handlers {
            guard("on_closed", || handler(error));
        }
    }
}

/// Runs an event handler; a panic is logged, not propagated into the connection task.
fn guard(event: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        tracing::error!(event, "an event handler panicked");
    }
}

/// Stops the connection when the last handle is dropped.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(run) = &self.shared.status().run {
            run.token.cancel();
        }
    }
}

/// A connection to a SignalR hub.
///
/// Cheap to clone; all clones control the same connection. It stops when [`stop`](Self::stop) is
/// called or when the last clone is dropped (a clone captured by a client method keeps it alive:
/// call `stop`). Client methods ([`on`](Self::on)) and event handlers stay registered across
/// `stop`/`start` and reconnects.
///
/// Client methods run one at a time, in the order the server sent them, on a task of their own:
/// they may call back into the hub (`invoke` from a handler is fine), and a slow handler delays the
/// handlers after it, not the connection.
#[derive(Clone)]
pub struct HubConnection {
    owner: Arc<Owner>,
}

impl fmt::Debug for HubConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConnection")
            .field("url", &self.shared().config.url.as_str())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// A registered client method; [`remove`](Self::remove) unregisters it.
#[derive(Debug)]
pub struct Subscription {
    shared: Weak<Shared>,
    method: String,
    id: u64,
}

impl Subscription {
    /// Unregisters this handler (other handlers of the method stay).
    pub fn remove(self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.handlers.write().remove(&self.method, Some(self.id));
        }
    }
}

/// A serialized call, ready for the connection task.
struct Prepared {
    commands: mpsc::Sender<Command>,
    cancels: mpsc::UnboundedSender<u64>,
    id: u64,
    frame: Bytes,
    streams: Vec<(u64, ClientStream)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Send,
    Invoke,
    Stream,
}

impl HubConnection {
    pub(crate) fn new(config: Config, client: reqwest::Client) -> Self {
        HubConnection {
            owner: Arc::new(Owner {
                shared: Arc::new(Shared {
                    config,
                    client,
                    handlers: RwLock::new(HandlerMap::default()),
                    events: Mutex::new(Events::default()),
                    status: Mutex::new(Status {
                        state: HubConnectionState::Disconnected,
                        connection_id: None,
                        run: None,
                    }),
                    next_id: AtomicU64::new(0),
                }),
            }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }

    /// The current state.
    pub fn state(&self) -> HubConnectionState {
        self.shared().status().state
    }

    /// The connection id the server assigned (negotiate's `connectionId`); `None` when not
    /// connected or when negotiation was skipped.
    pub fn connection_id(&self) -> Option<String> {
        self.shared().status().connection_id.clone()
    }

    /// Connects: negotiate, transport (falling back through the allowed ones), handshake.
    ///
    /// Fails if the connection is not [`Disconnected`](HubConnectionState::Disconnected).
    pub async fn start(&self) -> Result<(), StartError> {
        let shared = Arc::clone(self.shared());
        let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (cancel_tx, cancel_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = watch::channel(false);
        let token = CancellationToken::new();
        {
            let mut status = shared.status();
            if status.state != HubConnectionState::Disconnected {
                return Err(StartError::InvalidState(status.state));
            }
            status.state = HubConnectionState::Connecting;
            status.run = Some(Run {
                token: token.clone(),
                done: done_rx,
                commands: command_tx.clone(),
                cancels: cancel_tx.clone(),
            });
        }
        // If this future is dropped half-way, the connection goes back to Disconnected.
        let mut pending = StartGuard {
            shared: &shared,
            done: Some(done_tx),
        };
        let session = tokio::select! {
            session = driver::establish(&shared) => session,
            () = token.cancelled() => Err(StartError::Stopped),
        };
        let session = match session {
            Ok(session) if !token.is_cancelled() => session,
            Ok(_) => return Err(StartError::Stopped),
            Err(e) => return Err(e),
        };
        let Some(done) = pending.done.take() else {
            return Err(StartError::Stopped);
        };
        shared.set_state(HubConnectionState::Connected, session.connection_id.clone());
        let driver = driver::Driver::new(
            Arc::clone(&shared),
            token,
            command_rx,
            command_tx,
            cancel_rx,
            done,
        );
        tokio::spawn(driver.run(session));
        Ok(())
    }

    /// Stops the connection: sends a Close message, closes the transport, fails pending calls, and
    /// returns after the `on_closed` handlers ran. Stops a reconnect in progress too; does nothing
    /// if already disconnected.
    pub async fn stop(&self) {
        let run = self.shared().status().run.clone();
        let Some(run) = run else {
            return;
        };
        run.token.cancel();
        let mut done = run.done;
        let _ = done.wait_for(|done| *done).await;
    }

    fn prepare(
        &self,
        kind: CallKind,
        method: &str,
        args: impl InvocationArgs,
    ) -> Result<Prepared, InvokeError> {
        let shared = self.shared();
        let (commands, cancels) = {
            let status = shared.status();
            match (&status.run, status.state) {
                (Some(run), HubConnectionState::Connected) => {
                    (run.commands.clone(), run.cancels.clone())
                }
                _ => return Err(InvokeError::NotConnected),
            }
        };
        let protocol = shared.config.protocol;
        let parts = args.into_arg_parts(protocol)?;
        let streams: Vec<(u64, ClientStream)> = parts
            .streams
            .into_iter()
            .map(|stream| (shared.next_id(), stream))
            .collect();
        let id = shared.next_id();
        let invocation = Invocation {
            headers: Headers::new(),
            invocation_id: (kind != CallKind::Send).then(|| id.to_string()),
            target: method.to_owned(),
            arguments: parts.values,
            stream_ids: streams.iter().map(|(id, _)| id.to_string()).collect(),
        };
        let size = 32
            + method.len()
            + invocation
                .arguments
                .iter()
                .map(|a| a.as_bytes().len())
                .sum::<usize>();
        let message = if kind == CallKind::Stream {
            HubMessage::StreamInvocation(invocation)
        } else {
            HubMessage::Invocation(invocation)
        };
        let mut frame = Vec::with_capacity(size);
        protocol.write_message(&message, &mut frame)?;
        Ok(Prepared {
            commands,
            cancels,
            id,
            frame: Bytes::from(frame),
            streams,
        })
    }

    /// Calls a hub method and waits for its result, deserialized as `T` (use `()` for methods
    /// without a result).
    ///
    /// The arguments are serialized when `invoke` is called; the returned future is `'static` and
    /// can be spawned.
    ///
    /// ```no_run
    /// # async fn demo(connection: tidings_client::HubConnection) -> Result<(), tidings_client::InvokeError> {
    /// let sum: i64 = connection.invoke("Add", (40, 2)).await?;
    /// let echoed: String = connection.invoke("Echo", ("hello",)).await?;
    /// connection.invoke::<()>("JoinGroup", ("room",)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn invoke<T>(
        &self,
        method: &str,
        args: impl InvocationArgs,
    ) -> impl Future<Output = Result<T, InvokeError>> + Send + 'static
    where
        T: DeserializeOwned + 'static,
    {
        let prepared = self.prepare(CallKind::Invoke, method, args);
        async move {
            let Prepared {
                commands,
                id,
                frame,
                streams,
                ..
            } = prepared?;
            let (reply, result) = oneshot::channel();
            commands
                .send(Command::Invoke {
                    id,
                    frame,
                    reply,
                    streams,
                })
                .await
                .map_err(|_| InvokeError::ConnectionClosed(None))?;
            let payload: Payload = result
                .await
                .map_err(|_| InvokeError::ConnectionClosed(None))??;
            Ok(payload.deserialize::<T>()?)
        }
    }

    /// Calls a hub method without waiting for it to run (no result, no error from the server).
    ///
    /// Resolves once the message is queued for the transport.
    pub fn send(
        &self,
        method: &str,
        args: impl InvocationArgs,
    ) -> impl Future<Output = Result<(), InvokeError>> + Send + 'static {
        let prepared = self.prepare(CallKind::Send, method, args);
        async move {
            let Prepared {
                commands,
                frame,
                streams,
                ..
            } = prepared?;
            commands
                .send(Command::Send { frame, streams })
                .await
                .map_err(|_| InvokeError::ConnectionClosed(None))
        }
    }

    /// Calls a streaming hub method; its items arrive on the returned [`HubStream`].
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    ///
    /// # async fn demo(connection: tidings_client::HubConnection) -> Result<(), tidings_client::InvokeError> {
    /// let mut counter = connection.stream::<u32>("Counter", (5, 100)).await?;
    /// while let Some(item) = counter.next().await {
    ///     println!("{}", item?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stream<T>(
        &self,
        method: &str,
        args: impl InvocationArgs,
    ) -> Result<HubStream<T>, InvokeError>
    where
        T: DeserializeOwned,
    {
        let Prepared {
            commands,
            cancels,
            id,
            frame,
            streams,
        } = self.prepare(CallKind::Stream, method, args)?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        commands
            .send(Command::Stream {
                id,
                frame,
                events: events_tx,
                streams,
            })
            .await
            .map_err(|_| InvokeError::ConnectionClosed(None))?;
        Ok(HubStream::new(id, events_rx, cancels))
    }

    fn register(&self, method: &str, handler: Arc<dyn ErasedHandler>) -> Subscription {
        let shared = self.shared();
        let id = shared.next_id();
        shared.handlers.write().add(method, id, handler);
        Subscription {
            shared: Arc::downgrade(shared),
            method: method.to_owned(),
            id,
        }
    }

    /// Registers a client method: `handler` runs each time the server invokes `method` (matched
    /// case-insensitively). Arguments bind to a tuple (see [`FromArguments`]); invocations whose
    /// arguments do not bind are logged and skipped.
    ///
    /// ```no_run
    /// # fn demo(connection: tidings_client::HubConnection) {
    /// connection.on("ReceiveMessage", |(user, text): (String, String)| async move {
    ///     println!("{user}: {text}");
    /// });
    /// # }
    /// ```
    pub fn on<A, F, Fut>(&self, method: &str, handler: F) -> Subscription
    where
        A: FromArguments,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.register(method, Arc::new(Plain::new(handler)))
    }

    /// Registers a client method that returns a result to the server (client results: the hub
    /// awaits `InvokeAsync` on this client). `Ok` is serialized as the result; `Err`'s text is
    /// sent as the error.
    ///
    /// ```no_run
    /// # fn demo(connection: tidings_client::HubConnection) {
    /// connection.on_with_result("GetMessage", |(prompt,): (String,)| async move {
    ///     Ok::<_, std::convert::Infallible>(format!("answer to {prompt}"))
    /// });
    /// # }
    /// ```
    pub fn on_with_result<A, F, Fut, R, E>(&self, method: &str, handler: F) -> Subscription
    where
        A: FromArguments,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize,
        E: fmt::Display,
    {
        self.register(method, Arc::new(WithResult::new(handler)))
    }

    /// Unregisters every handler of `method`.
    pub fn off(&self, method: &str) {
        self.shared().handlers.write().remove(method, None);
    }

    /// Called when the connection is lost and automatic reconnect starts, with the cause.
    pub fn on_reconnecting(&self, handler: impl Fn(&ConnectionError) + Send + Sync + 'static) {
        self.shared().events().reconnecting.push(Arc::new(handler));
    }

    /// Called after automatic reconnect succeeded, with the new connection id.
    pub fn on_reconnected(&self, handler: impl Fn(Option<&str>) + Send + Sync + 'static) {
        self.shared().events().reconnected.push(Arc::new(handler));
    }

    /// Called when a started connection closes for good: `None` after `stop` or a clean close by
    /// the server, else the cause.
    pub fn on_closed(&self, handler: impl Fn(Option<&ConnectionError>) + Send + Sync + 'static) {
        self.shared().events().closed.push(Arc::new(handler));
    }
}

/// Puts the connection back to `Disconnected` if `start` does not complete.
struct StartGuard<'a> {
    shared: &'a Shared,
    done: Option<watch::Sender<bool>>,
}

impl Drop for StartGuard<'_> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            {
                let mut status = self.shared.status();
                status.state = HubConnectionState::Disconnected;
                status.connection_id = None;
                status.run = None;
            }
            let _ = done.send(true);
        }
    }
}
