//! What hub code uses to reach clients: the per-connection [`Context`], the
//! [`HubContext`] for background tasks, and the [`Clients`] / [`Groups`]
//! facades both hand out.
//!
//! Every send goes through the hub's [`LifetimeManager`], so the same code
//! reaches clients on other servers once a backplane is installed. That
//! includes client results ([`SingleClientProxy::invoke`]): the context only
//! adds the rules of where it was handed out (refused in `on_connected`,
//! the invocation slot freed while waiting) and the timeout.

use std::{fmt, future::IntoFuture, marker::PhantomData, sync::Arc, time::Duration};

use axum::http::HeaderMap;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tidings_protocol::{Protocol, ToArguments};
use tokio::sync::OwnedSemaphorePermit;

use crate::{
    ConnectionHandle, GroupError, HubOptions, InvokeError, PresenceError, Principal, SendError,
    connections::handler::BoxFuture,
    error::short_type_name,
    hub::{
        lifetime::{LifetimeManager, Member, Target},
        message::{ClientInvocation, SerializedMessage},
    },
    metrics::HubMetrics,
};

/// The future of a typed send: resolves when the lifetime manager has taken
/// the message (not when clients received it), like [`ClientProxy::send`].
pub type SendFuture<'a> = BoxFuture<'a, Result<(), SendError>>;

/// Hub-wide state shared by every connection of one endpoint.
pub(crate) struct HubShared {
    /// The hub's name (metrics labels, spans).
    pub name: Arc<str>,
    pub lifetime: Arc<dyn LifetimeManager>,
    pub options: HubOptions,
    pub metrics: Option<HubMetrics>,
}

/// The per-connection context handed to hub methods and lifecycle hooks.
///
/// Cheap to clone; a clone kept after the connection ended still reads its
/// identity, and sends to it are dropped.
#[derive(Clone)]
pub struct Context {
    connection: ConnectionHandle,
    hub: Arc<HubShared>,
    scope: Scope,
}

/// Where a [`Context`] was handed out; it decides what a client result
/// started from it must do first.
#[derive(Clone, Default)]
pub(crate) enum Scope {
    /// Streaming methods, methods fed by client streams, `on_disconnected`,
    /// and every [`HubContext`]: nothing to do.
    #[default]
    Free,
    /// `on_connected`: the connection is not read until it returns, so a
    /// client result could never be answered; it is refused.
    OnConnected,
    /// A method holding one of the client's invocation slots
    /// (`MaximumParallelInvocationsPerClient`).
    Invocation(Arc<InvocationSlot>),
}

static FREE: Scope = Scope::Free;

/// The invocation slot of one running method.
///
/// A method that waits for a client result gives its slot up: with one slot
/// per client (the default), the read loop would otherwise wait for the
/// slot before it could read the client's answer, or a call the client
/// makes before answering, and both sides would wait forever. ASP.NET Core
/// gives the slot up the same way and does not take it back.
#[derive(Debug)]
pub(crate) struct InvocationSlot(Mutex<Option<OwnedSemaphorePermit>>);

impl InvocationSlot {
    pub(crate) fn new(permit: OwnedSemaphorePermit) -> Arc<Self> {
        Arc::new(InvocationSlot(Mutex::new(Some(permit))))
    }

    /// Frees the slot; later calls do nothing. The session calls it when the
    /// invocation has answered, whatever clones of its context live on.
    pub(crate) fn release(&self) {
        {
            let mut permit = self.0.lock();
            permit.take();
        }
    }
}

impl Context {
    pub(crate) fn new(connection: ConnectionHandle, hub: Arc<HubShared>) -> Self {
        Context {
            connection,
            hub,
            scope: Scope::Free,
        }
    }

    /// This context, handed out in `scope`.
    pub(crate) fn with_scope(&self, scope: Scope) -> Self {
        Context {
            connection: self.connection.clone(),
            hub: Arc::clone(&self.hub),
            scope,
        }
    }

    /// A handle to this hub for work that outlives the current call (a
    /// spawned task): the same as
    /// [`HubEndpoint::context`](crate::HubEndpoint::context).
    pub fn hub_context(&self) -> HubContext {
        HubContext::new(Arc::clone(&self.hub))
    }

    /// The connection's public id.
    pub fn connection_id(&self) -> &str {
        self.connection.id()
    }

    /// The user identifier (`Clients.User` target), if authenticated.
    pub fn user_identifier(&self) -> Option<&str> {
        self.connection.user_id()
    }

    /// The connection's principal: user identifier and claims.
    pub fn user(&self) -> &Principal {
        self.connection.principal()
    }

    /// A query parameter of the request that opened the transport.
    pub fn query(&self, key: &str) -> Option<&str> {
        self.connection
            .query()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The headers of the request that opened the transport, without those
    /// of the WebSocket upgrade itself (`Connection`, `Upgrade`,
    /// `Sec-WebSocket-*`).
    pub fn headers(&self) -> &HeaderMap {
        self.connection.headers()
    }

    /// The hub protocol the client chose.
    pub fn protocol(&self) -> Protocol {
        self.connection.protocol()
    }

    /// The transport carrying this connection (`WebSockets`,
    /// `ServerSentEvents` or `LongPolling`).
    pub fn transport(&self) -> tidings_protocol::TransportType {
        self.connection.transport()
    }

    /// Closes this connection (the client is told not to reconnect).
    pub fn abort(&self) {
        self.connection.abort();
    }

    /// The connection itself.
    pub fn connection(&self) -> &ConnectionHandle {
        &self.connection
    }

    /// Send to clients; includes the caller-relative targets.
    pub fn clients(&self) -> Clients<'_> {
        Clients {
            lifetime: &*self.hub.lifetime,
            caller: Some(self.connection.id()),
            scope: &self.scope,
            timeout: self.hub.options.client_result_timeout,
        }
    }

    /// Group membership.
    pub fn groups(&self) -> Groups<'_> {
        Groups {
            lifetime: &*self.hub.lifetime,
        }
    }

    /// Who is connected and who is in which group, across every server of
    /// a backplane.
    pub fn presence(&self) -> Presence<'_> {
        Presence {
            lifetime: &*self.hub.lifetime,
        }
    }

    pub(crate) fn options(&self) -> &HubOptions {
        &self.hub.options
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

/// A handle to a hub usable from any task: send to clients, change groups.
///
/// Obtain it from [`HubEndpoint::context`](crate::HubEndpoint::context);
/// clones share the same hub.
#[derive(Clone)]
pub struct HubContext {
    hub: Arc<HubShared>,
}

impl HubContext {
    pub(crate) fn new(hub: Arc<HubShared>) -> Self {
        HubContext { hub }
    }

    /// Send to clients.
    pub fn clients(&self) -> Clients<'_> {
        Clients {
            lifetime: &*self.hub.lifetime,
            caller: None,
            scope: &FREE,
            timeout: self.hub.options.client_result_timeout,
        }
    }

    /// Group membership.
    pub fn groups(&self) -> Groups<'_> {
        Groups {
            lifetime: &*self.hub.lifetime,
        }
    }

    /// Who is connected and who is in which group, across every server of
    /// a backplane.
    pub fn presence(&self) -> Presence<'_> {
        Presence {
            lifetime: &*self.hub.lifetime,
        }
    }
}

impl fmt::Debug for HubContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubContext").finish_non_exhaustive()
    }
}

/// Chooses the recipients of a message (ASP.NET Core's `Clients`).
#[derive(Clone, Copy)]
pub struct Clients<'a> {
    lifetime: &'a dyn LifetimeManager,
    caller: Option<&'a str>,
    scope: &'a Scope,
    timeout: Duration,
}

impl fmt::Debug for Clients<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients")
            .field("caller", &self.caller)
            .finish()
    }
}

fn owned<S: AsRef<str>>(ids: impl IntoIterator<Item = S>) -> Vec<String> {
    ids.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

impl<'a> Clients<'a> {
    fn proxy(self, target: Target) -> ClientProxy<'a> {
        ClientProxy {
            lifetime: self.lifetime,
            target,
        }
    }

    fn caller_id(&self) -> String {
        self.caller.unwrap_or_default().to_owned()
    }

    fn single(self, connection_id: Option<String>, target: Target) -> SingleClientProxy<'a> {
        SingleClientProxy {
            proxy: self.proxy(target),
            connection_id,
            scope: self.scope,
            timeout: self.timeout,
        }
    }

    /// Every connection.
    pub fn all(self) -> ClientProxy<'a> {
        self.proxy(Target::All)
    }

    /// Every connection except these.
    pub fn all_except<S: AsRef<str>>(self, ids: impl IntoIterator<Item = S>) -> ClientProxy<'a> {
        self.proxy(Target::AllExcept(owned(ids)))
    }

    /// One connection; it can also be asked for a result
    /// ([`SingleClientProxy::invoke`]).
    pub fn client(self, id: impl Into<String>) -> SingleClientProxy<'a> {
        let id = id.into();
        self.single(Some(id.clone()), Target::Connection(id))
    }

    /// Several connections.
    pub fn clients<S: AsRef<str>>(self, ids: impl IntoIterator<Item = S>) -> ClientProxy<'a> {
        self.proxy(Target::Connections(owned(ids)))
    }

    /// The members of a group.
    pub fn group(self, name: impl Into<String>) -> ClientProxy<'a> {
        self.proxy(Target::Group(name.into()))
    }

    /// The members of several groups (one copy per connection).
    pub fn groups<S: AsRef<str>>(self, names: impl IntoIterator<Item = S>) -> ClientProxy<'a> {
        self.proxy(Target::Groups(owned(names)))
    }

    /// The members of a group except these connections.
    pub fn group_except<S: AsRef<str>>(
        self,
        name: impl Into<String>,
        excluded: impl IntoIterator<Item = S>,
    ) -> ClientProxy<'a> {
        self.proxy(Target::GroupExcept(name.into(), owned(excluded)))
    }

    /// Every connection of a user.
    pub fn user(self, user_id: impl Into<String>) -> ClientProxy<'a> {
        self.proxy(Target::User(user_id.into()))
    }

    /// Every connection of several users.
    pub fn users<S: AsRef<str>>(self, user_ids: impl IntoIterator<Item = S>) -> ClientProxy<'a> {
        self.proxy(Target::Users(owned(user_ids)))
    }

    /// The calling connection; it can also be asked for a result
    /// ([`SingleClientProxy::invoke`]). From a [`HubContext`] (no caller)
    /// this reaches nobody.
    pub fn caller(self) -> SingleClientProxy<'a> {
        match self.caller {
            Some(id) => self.single(
                Some(id.to_owned()),
                Target::Connections(vec![id.to_owned()]),
            ),
            None => self.single(None, Target::Connections(Vec::new())),
        }
    }

    /// Every connection except the caller.
    pub fn others(self) -> ClientProxy<'a> {
        let id = self.caller_id();
        self.proxy(Target::AllExcept(vec![id]))
    }

    /// The members of a group except the caller.
    pub fn others_in_group(self, name: impl Into<String>) -> ClientProxy<'a> {
        let id = self.caller_id();
        self.proxy(Target::GroupExcept(name.into(), vec![id]))
    }
}

/// A set of recipients; [`send`](Self::send) invokes a client method on all
/// of them.
#[derive(Clone)]
pub struct ClientProxy<'a> {
    lifetime: &'a dyn LifetimeManager,
    target: Target,
}

impl fmt::Debug for ClientProxy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientProxy")
            .field("target", &self.target)
            .finish()
    }
}

impl ClientProxy<'_> {
    /// Invokes `method` on every recipient with `arguments` (a tuple, a
    /// `Vec`, an array, or `()`), without waiting for them.
    ///
    /// The message is serialized once per hub protocol in use, however many
    /// recipients there are, and possibly after this call returns — which is
    /// why the arguments must be owned (`'static`): pass `String`, not `&str`. A recipient whose outbound queue is full is
    /// closed (see [`HubOptions::outbound_buffer_capacity`]).
    pub async fn send<A>(&self, method: &str, arguments: A) -> Result<(), SendError>
    where
        A: ToArguments + Send + Sync + 'static,
    {
        let message = Arc::new(SerializedMessage::invocation(method, arguments));
        self.lifetime.send(&self.target, message).await
    }

    /// Sends a message built (or received) elsewhere.
    pub async fn send_serialized(&self, message: Arc<SerializedMessage>) -> Result<(), SendError> {
        self.lifetime.send(&self.target, message).await
    }

    /// The recipients.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// [`send_serialized`](Self::send_serialized) without the extra state
    /// machine: what typed client contracts return.
    pub(crate) fn send_boxed(&self, message: Arc<SerializedMessage>) -> SendFuture<'_> {
        self.lifetime.send(&self.target, message)
    }
}

/// One connection (ASP.NET Core's `ISingleClientProxy`): send to it, or
/// invoke one of its methods and wait for the result.
#[derive(Clone)]
pub struct SingleClientProxy<'a> {
    proxy: ClientProxy<'a>,
    /// `None` for the caller of a [`HubContext`], which has none.
    connection_id: Option<String>,
    scope: &'a Scope,
    timeout: Duration,
}

impl fmt::Debug for SingleClientProxy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleClientProxy")
            .field("connection_id", &self.connection_id)
            .finish_non_exhaustive()
    }
}

impl<'a> SingleClientProxy<'a> {
    /// Invokes `method` on the connection without waiting for it (see
    /// [`ClientProxy::send`]).
    pub async fn send<A>(&self, method: &str, arguments: A) -> Result<(), SendError>
    where
        A: ToArguments + Send + Sync + 'static,
    {
        self.proxy.send(method, arguments).await
    }

    /// Sends a message built (or received) elsewhere.
    pub async fn send_serialized(&self, message: Arc<SerializedMessage>) -> Result<(), SendError> {
        self.proxy.send_serialized(message).await
    }

    /// The recipient.
    pub fn target(&self) -> &Target {
        self.proxy.target()
    }

    pub(crate) fn proxy(&self) -> &ClientProxy<'a> {
        &self.proxy
    }

    /// A client result of an invocation already built, or an error to
    /// report when it is awaited.
    pub(crate) fn invoke_prepared<T>(
        &self,
        invocation: Result<ClientInvocation, InvokeError>,
    ) -> ClientInvoke<'a, T> {
        ClientInvoke {
            lifetime: self.proxy.lifetime,
            connection_id: self.connection_id.clone(),
            invocation,
            scope: self.scope,
            timeout: self.timeout,
            _result: PhantomData,
        }
    }

    /// Invokes `method` on the connection with `arguments` and waits for the
    /// value its handler returns (a client result, ASP.NET Core's
    /// `Clients.Client(id).InvokeAsync<T>`); await the returned
    /// [`ClientInvoke`]:
    ///
    /// ```
    /// # use tidings::{Context, HubError};
    /// # use std::time::Duration;
    /// # async fn ask(cx: &Context) -> Result<(), HubError> {
    /// let name: String = cx.clients().caller().invoke("GetName", ()).await?;
    /// let sure: bool = cx
    ///     .clients()
    ///     .caller()
    ///     .invoke("Confirm", (format!("Delete {name}?"),))
    ///     .timeout(Duration::from_secs(60))
    ///     .await?;
    /// # let _ = sure; Ok(()) }
    /// ```
    ///
    /// * The wait is limited by
    ///   [`HubOptions::client_result_timeout`](crate::HubOptions::client_result_timeout)
    ///   (30 s by default) or [`ClientInvoke::timeout`].
    /// * The call goes through the [`LifetimeManager`], so with a backplane
    ///   it reaches a connection on another server.
    /// * A hub method that waits for a client result frees its invocation
    ///   slot, so the client may call the hub before it answers.
    /// * Inside `on_connected` it fails with [`InvokeError::NotAllowed`]:
    ///   the connection is not read before `on_connected` returns. Start the
    ///   call from a task with [`Context::hub_context`] instead.
    ///
    /// The errors, and what a client sees when a hub method passes them on
    /// with `?`, are described at [`InvokeError`].
    pub fn invoke<T, A>(&self, method: &str, arguments: A) -> ClientInvoke<'a, T>
    where
        A: ToArguments + Send + Sync + 'static,
    {
        self.invoke_prepared(Ok(ClientInvocation::new(method, arguments)))
    }
}

/// A client result on its way: await it (it implements [`IntoFuture`]),
/// optionally after choosing its [`timeout`](Self::timeout). Made by
/// [`SingleClientProxy::invoke`].
#[must_use = "a client result is only requested when awaited"]
pub struct ClientInvoke<'a, T> {
    lifetime: &'a dyn LifetimeManager,
    connection_id: Option<String>,
    /// An error here (arguments a typed contract could not serialize) is
    /// the result.
    invocation: Result<ClientInvocation, InvokeError>,
    scope: &'a Scope,
    timeout: Duration,
    _result: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for ClientInvoke<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientInvoke")
            .field("connection_id", &self.connection_id)
            .field("invocation", &self.invocation)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<T> ClientInvoke<'_, T> {
    /// How long to wait for this answer, instead of the hub's
    /// [`client_result_timeout`](crate::HubOptions::client_result_timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl<'a, T: DeserializeOwned + 'a> IntoFuture for ClientInvoke<'a, T> {
    type Output = Result<T, InvokeError>;
    type IntoFuture = BoxFuture<'a, Result<T, InvokeError>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let invocation = self.invocation?;
            match self.scope {
                Scope::OnConnected => return Err(InvokeError::NotAllowed),
                Scope::Invocation(slot) => slot.release(),
                Scope::Free => {}
            }
            let Some(connection_id) = self.connection_id else {
                return Err(InvokeError::UnknownConnection(String::new()));
            };
            let answer = self.lifetime.invoke_connection(&connection_id, invocation);
            let payload = tokio::time::timeout(self.timeout, answer)
                .await
                .map_err(|_| InvokeError::Timeout(self.timeout))??;
            payload
                .deserialize::<T>()
                .map_err(|error| InvokeError::Deserialize {
                    type_name: short_type_name::<T>().to_owned(),
                    message: error.to_string(),
                })
        })
    }
}

/// Group membership (ASP.NET Core's `Groups`).
#[derive(Clone, Copy)]
pub struct Groups<'a> {
    lifetime: &'a dyn LifetimeManager,
}

impl fmt::Debug for Groups<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Groups").finish_non_exhaustive()
    }
}

impl Groups<'_> {
    /// Adds a connection to a group. Unknown connections are ignored.
    pub async fn add(&self, connection_id: &str, group: &str) -> Result<(), GroupError> {
        self.lifetime.add_to_group(connection_id, group).await
    }

    /// Removes a connection from a group.
    pub async fn remove(&self, connection_id: &str, group: &str) -> Result<(), GroupError> {
        self.lifetime.remove_from_group(connection_id, group).await
    }
}

/// Presence queries: who is connected and who is in which group.
///
/// With the in-memory lifetime manager the answers cover this server; with
/// a backplane they cover every server of the cluster. Lists come sorted.
#[derive(Clone, Copy)]
pub struct Presence<'a> {
    lifetime: &'a dyn LifetimeManager,
}

impl fmt::Debug for Presence<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presence").finish_non_exhaustive()
    }
}

impl Presence<'_> {
    /// The ids of a user's connections.
    pub async fn connections_of_user(&self, user_id: &str) -> Result<Vec<String>, PresenceError> {
        let mut ids = self.lifetime.connections_of_user(user_id).await?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// The connections in a group, with their users.
    pub async fn group_members(&self, group: &str) -> Result<Vec<Member>, PresenceError> {
        let mut members = self.lifetime.group_members(group).await?;
        members.sort_unstable();
        Ok(members)
    }

    /// The distinct users with a connection in a group (anonymous
    /// connections are left out).
    pub async fn users_in_group(&self, group: &str) -> Result<Vec<String>, PresenceError> {
        let mut users: Vec<String> = self
            .lifetime
            .group_members(group)
            .await?
            .into_iter()
            .filter_map(|m| m.user_id)
            .collect();
        users.sort_unstable();
        users.dedup();
        Ok(users)
    }

    /// The groups a connection is in.
    pub async fn groups_of_connection(
        &self,
        connection_id: &str,
    ) -> Result<Vec<String>, PresenceError> {
        let mut groups = self.lifetime.groups_of_connection(connection_id).await?;
        groups.sort_unstable();
        Ok(groups)
    }

    /// How many distinct users are connected.
    pub async fn online_user_count(&self) -> Result<usize, PresenceError> {
        self.lifetime.online_user_count().await
    }

    /// Whether a connection with this id is connected.
    pub async fn connection_exists(&self, connection_id: &str) -> Result<bool, PresenceError> {
        self.lifetime.connection_exists(connection_id).await
    }
}
