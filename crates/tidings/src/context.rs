//! What hub code uses to reach clients: the per-connection [`Context`], the
//! [`HubContext`] for background tasks, and the [`Clients`] / [`Groups`]
//! facades both hand out.
//!
//! Every send goes through the hub's [`LifetimeManager`], so the same code
//! reaches clients on other servers once a backplane is installed.

use std::{fmt, sync::Arc};

use axum::http::HeaderMap;
use tidings_protocol::{Protocol, ToArguments};

use crate::{
    ConnectionHandle, GroupError, HubOptions, Principal, SendError,
    lifetime::{LifetimeManager, Target},
    message::SerializedMessage,
};

/// Hub-wide state shared by every connection of one endpoint.
pub(crate) struct HubShared {
    pub lifetime: Arc<dyn LifetimeManager>,
    pub options: HubOptions,
}

/// The per-connection context handed to hub methods and lifecycle hooks.
///
/// Cheap to clone; a clone kept after the connection ended still reads its
/// identity, and sends to it are dropped.
#[derive(Clone)]
pub struct Context {
    connection: ConnectionHandle,
    hub: Arc<HubShared>,
}

impl Context {
    pub(crate) fn new(connection: ConnectionHandle, hub: Arc<HubShared>) -> Self {
        Context { connection, hub }
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

    /// The headers of the request that opened the transport.
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
        }
    }

    /// Group membership.
    pub fn groups(&self) -> Groups<'_> {
        Groups {
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
        }
    }

    /// Group membership.
    pub fn groups(&self) -> Groups<'_> {
        Groups {
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

    /// Every connection.
    pub fn all(self) -> ClientProxy<'a> {
        self.proxy(Target::All)
    }

    /// Every connection except these.
    pub fn all_except<S: AsRef<str>>(self, ids: impl IntoIterator<Item = S>) -> ClientProxy<'a> {
        self.proxy(Target::AllExcept(owned(ids)))
    }

    /// One connection.
    pub fn client(self, id: impl Into<String>) -> ClientProxy<'a> {
        self.proxy(Target::Connection(id.into()))
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

    /// The calling connection. From a [`HubContext`] (no caller) this
    /// reaches nobody.
    pub fn caller(self) -> ClientProxy<'a> {
        let id = self.caller_id();
        self.proxy(Target::Connections(if id.is_empty() {
            Vec::new()
        } else {
            vec![id]
        }))
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
