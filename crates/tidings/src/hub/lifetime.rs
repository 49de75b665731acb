//! The lifetime manager: who is connected, who is in which group, which
//! connections belong to which user, and delivery of a message to a
//! [`Target`].
//!
//! [`LifetimeManager`] is the seam for scale-out: a backplane implements it by
//! delivering locally through a [`MemoryLifetimeManager`] and publishing to
//! the other servers. The in-memory implementation keeps every index under
//! one `RwLock` that is never held across an `.await`: delivery only calls
//! [`ConnectionHandle::send`], which never waits.
//!
//! Client results go through the manager too, so that a backplane can route
//! an invocation to the server holding the connection and the answer back:
//! [`LifetimeManager::invoke_connection`] sends the invocation and waits,
//! [`LifetimeManager::set_connection_result`] receives the client's
//! Completion. The in-memory manager keeps the pending answers per
//! connection, so a connection can only answer what it was asked, and its
//! departure fails whatever it still owes.
//!
//! Presence queries (who is connected, who is in a group) go through the
//! manager as well: the in-memory manager answers from its own indexes, a
//! backplane answers for the whole cluster.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use parking_lot::RwLock;
use tidings_protocol::{Completion, CompletionResult, Payload};
use tokio::sync::oneshot;

use crate::{
    ConnectionHandle, GroupError, InvokeError, PresenceError, SendError,
    connections::handler::BoxFuture,
    hub::{
        handover::Handover,
        message::{ClientInvocation, SerializedMessage},
    },
};

/// The recipients of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Every connection of the hub.
    All,
    /// Every connection except the listed connection ids.
    AllExcept(Vec<String>),
    /// One connection.
    Connection(String),
    /// Several connections.
    Connections(Vec<String>),
    /// The members of one group.
    Group(String),
    /// The members of several groups (each connection receives one copy).
    Groups(Vec<String>),
    /// The members of a group except the listed connection ids.
    GroupExcept(String, Vec<String>),
    /// Every connection of one user.
    User(String),
    /// Every connection of several users.
    Users(Vec<String>),
}

/// A connection as presence queries report it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct Member {
    /// The public connection id.
    pub connection_id: String,
    /// The connection's user identifier, if authenticated.
    pub user_id: Option<String>,
}

impl Member {
    /// A member with this connection id and user.
    pub fn new(connection_id: impl Into<String>, user_id: Option<String>) -> Self {
        Member {
            connection_id: connection_id.into(),
            user_id,
        }
    }
}

/// Tracks connections and groups and delivers messages to targets.
///
/// Implementations must be cheap to call concurrently from many tasks.
///
/// A backplane implements it for a cluster of servers: every target reaches
/// the matching connections of every server, group changes work for
/// connections of any server, and presence queries answer for the whole
/// cluster. The specification every implementation must pass is
/// `tidings::testing::spec` (feature `testing`).
pub trait LifetimeManager: Send + Sync + 'static {
    /// A connection completed its handshake.
    fn on_connected<'a>(&'a self, connection: &'a ConnectionHandle) -> BoxFuture<'a, ()>;

    /// A connection ended: forget it and remove it from all its groups.
    fn on_disconnected<'a>(&'a self, connection: &'a ConnectionHandle) -> BoxFuture<'a, ()>;

    /// Delivers an invocation to every connection of `target`.
    fn send<'a>(
        &'a self,
        target: &'a Target,
        message: Arc<SerializedMessage>,
    ) -> BoxFuture<'a, Result<(), SendError>>;

    /// Adds a connection (by id, possibly on another server) to a group.
    fn add_to_group<'a>(
        &'a self,
        connection_id: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<(), GroupError>>;

    /// Removes a connection from a group.
    fn remove_from_group<'a>(
        &'a self,
        connection_id: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<(), GroupError>>;

    /// Invokes a client method on one connection (possibly on another
    /// server) and waits for its answer: the result serialized in the
    /// client's protocol, or why there is none.
    ///
    /// The manager chooses the invocation id; it must not collide with the
    /// ids clients give their own streams (ASP.NET Core uses `s1`, `s2`, …
    /// locally and random ids across servers). Dropping the future abandons
    /// the call (that is how timeouts work): a late answer is then ignored.
    fn invoke_connection<'a>(
        &'a self,
        connection_id: &'a str,
        invocation: ClientInvocation,
    ) -> BoxFuture<'a, Result<Payload, InvokeError>>;

    /// Connection `connection_id` sent a Completion that is not for one of
    /// its own streams: the answer to an [`invoke_connection`](Self::invoke_connection).
    /// A Completion for an id this connection was not asked is ignored.
    fn set_connection_result<'a>(
        &'a self,
        connection_id: &'a str,
        completion: Completion,
    ) -> BoxFuture<'a, ()>;

    /// The ids of the connections of a user, on every server.
    fn connections_of_user<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, PresenceError>> {
        let _ = user_id;
        Box::pin(async { Err(PresenceError::Unsupported) })
    }

    /// The members of a group, on every server.
    fn group_members<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Member>, PresenceError>> {
        let _ = group;
        Box::pin(async { Err(PresenceError::Unsupported) })
    }

    /// The groups a connection (of any server) is in.
    fn groups_of_connection<'a>(
        &'a self,
        connection_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, PresenceError>> {
        let _ = connection_id;
        Box::pin(async { Err(PresenceError::Unsupported) })
    }

    /// How many distinct users have at least one connection, on every
    /// server (anonymous connections are not counted).
    fn online_user_count(&self) -> BoxFuture<'_, Result<usize, PresenceError>> {
        Box::pin(async { Err(PresenceError::Unsupported) })
    }

    /// Whether a connection with this id is connected, on any server.
    fn connection_exists<'a>(
        &'a self,
        connection_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, PresenceError>> {
        let _ = connection_id;
        Box::pin(async { Err(PresenceError::Unsupported) })
    }

    /// How connections move between servers of the cluster (a server
    /// shutting down hands its stateful-reconnect connections over to the
    /// others); `None`, the default, if they cannot: the in-memory manager
    /// has no other server.
    fn handover(&self) -> Option<&dyn Handover> {
        None
    }
}

/// The single-server lifetime manager: everything in memory.
#[derive(Debug, Default)]
pub struct MemoryLifetimeManager {
    state: RwLock<State>,
    /// The last client-result invocation number (ids are `s1`, `s2`, …).
    last_invocation: AtomicU64,
}

/// Where a connection's answer to a client result goes.
type Answer = oneshot::Sender<Result<Payload, InvokeError>>;

type Members = HashMap<Arc<str>, ConnectionHandle>;

#[derive(Debug, Default)]
struct State {
    connections: HashMap<Arc<str>, Entry>,
    groups: HashMap<Arc<str>, Members>,
    users: HashMap<Arc<str>, Members>,
}

#[derive(Debug)]
struct Entry {
    handle: ConnectionHandle,
    /// Boxed and made on first use: an entry is 16 bytes instead of 112,
    /// and the table reserves room for up to twice as many entries as
    /// there are connections.
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Default)]
struct Extra {
    groups: HashSet<Arc<str>>,
    /// Client results this connection has been asked for and owes. When
    /// the entry goes, the senders drop and the callers learn that the
    /// connection disconnected.
    answers: HashMap<Box<str>, Answer>,
}

impl State {
    /// The handles of the listed connections that are local. Exclusions
    /// are compared by handle rather than by id: an id comparison would
    /// read every recipient's id from its own allocation.
    fn local_handles(&self, ids: &[String]) -> Vec<&ConnectionHandle> {
        ids.iter()
            .filter_map(|id| self.connections.get(id.as_str()))
            .map(|e| &e.handle)
            .collect()
    }
}

impl Entry {
    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    fn groups(&self) -> impl Iterator<Item = &Arc<str>> {
        self.extra.iter().flat_map(|extra| extra.groups.iter())
    }
}

impl MemoryLifetimeManager {
    /// An empty manager.
    pub fn new() -> Self {
        MemoryLifetimeManager::default()
    }

    /// Number of connections.
    pub fn connection_count(&self) -> usize {
        self.read().connections.len()
    }

    /// The local connection with this id.
    pub fn connection(&self, connection_id: &str) -> Option<ConnectionHandle> {
        self.read()
            .connections
            .get(connection_id)
            .map(|e| e.handle.clone())
    }

    /// Registers a connection.
    pub fn add_connection(&self, connection: &ConnectionHandle) {
        let mut state = self.write();
        let id = Arc::clone(connection.id_arc());
        if let Some(user) = connection.user_id() {
            state
                .users
                .entry(Arc::from(user))
                .or_default()
                .insert(Arc::clone(&id), connection.clone());
        }
        state.connections.insert(
            id,
            Entry {
                handle: connection.clone(),
                extra: None,
            },
        );
    }

    /// Forgets a connection and its group memberships.
    pub fn remove_connection(&self, connection: &ConnectionHandle) {
        let mut state = self.write();
        let id = connection.id();
        let Some(entry) = state.connections.remove(id) else {
            return;
        };
        for group in entry.extra.map(|extra| extra.groups).unwrap_or_default() {
            remove_member(&mut state.groups, &group, id);
        }
        if let Some(user) = connection.user_id() {
            remove_member(&mut state.users, user, id);
        }
    }

    /// Adds a local connection to a group; returns false if the connection
    /// is not on this server.
    pub fn add_local_to_group(&self, connection_id: &str, group: &str) -> bool {
        let mut state = self.write();
        let state = &mut *state;
        let Some(entry) = state.connections.get_mut(connection_id) else {
            return false;
        };
        let group: Arc<str> = Arc::from(group);
        if entry.extra().groups.insert(Arc::clone(&group)) {
            state
                .groups
                .entry(group)
                .or_default()
                .insert(Arc::clone(entry.handle.id_arc()), entry.handle.clone());
        }
        true
    }

    /// Removes a local connection from a group; returns false if the
    /// connection is not on this server.
    pub fn remove_local_from_group(&self, connection_id: &str, group: &str) -> bool {
        let mut state = self.write();
        let state = &mut *state;
        let Some(entry) = state.connections.get_mut(connection_id) else {
            return false;
        };
        if entry
            .extra
            .as_mut()
            .is_some_and(|extra| extra.groups.remove(group))
        {
            remove_member(&mut state.groups, group, connection_id);
        }
        true
    }

    /// How many local connections are in a group.
    pub fn group_size(&self, group: &str) -> usize {
        self.read().groups.get(group).map_or(0, HashMap::len)
    }

    /// How many local connections a user has.
    pub fn user_connection_count(&self, user_id: &str) -> usize {
        self.read().users.get(user_id).map_or(0, HashMap::len)
    }

    /// The ids of the local connections of a user.
    pub fn local_connections_of_user(&self, user_id: &str) -> Vec<String> {
        self.read()
            .users
            .get(user_id)
            .map(|m| m.keys().map(|id| id.to_string()).collect())
            .unwrap_or_default()
    }

    /// The local members of a group.
    pub fn local_group_members(&self, group: &str) -> Vec<Member> {
        self.read()
            .groups
            .get(group)
            .map(|members| {
                members
                    .values()
                    .map(|h| Member::new(h.id(), h.user_id().map(str::to_owned)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The local connections, as presence reports them.
    pub fn local_members(&self) -> Vec<Member> {
        self.read()
            .connections
            .values()
            .map(|e| Member::new(e.handle.id(), e.handle.user_id().map(str::to_owned)))
            .collect()
    }

    /// How many distinct users have a local connection.
    pub fn local_user_count(&self) -> usize {
        self.read().users.len()
    }

    /// Delivers a message to the local members of `group` except the
    /// `excluded` connections and the members of any of `earlier` groups;
    /// returns how many connections it was queued for.
    ///
    /// A backplane uses it for a message to several groups, sent as one
    /// publish per group: a connection in several of them is then served
    /// only for the first of its groups in the list, so it receives one copy.
    pub fn send_local_to_group_once(
        &self,
        group: &str,
        excluded: &[String],
        earlier: &[String],
        message: &Arc<SerializedMessage>,
    ) -> usize {
        let state = self.read();
        let Some(members) = state.groups.get(group) else {
            return 0;
        };
        let in_earlier = |id: &str| {
            earlier.iter().any(|g| {
                state
                    .groups
                    .get(g.as_str())
                    .is_some_and(|m| m.contains_key(id))
            })
        };
        members
            .iter()
            .filter(|(id, _)| !excluded.iter().any(|x| x.as_str() == &***id))
            .filter(|(id, _)| !in_earlier(id))
            .filter(|(_, handle)| handle.send(message))
            .count()
    }

    /// The groups a local connection is in.
    pub fn groups_of(&self, connection_id: &str) -> Vec<String> {
        self.read()
            .connections
            .get(connection_id)
            .map(|e| e.groups().map(|g| g.to_string()).collect())
            .unwrap_or_default()
    }

    /// Delivers a message to the local connections of `target`; returns how
    /// many connections it was queued for.
    pub fn send_local(&self, target: &Target, message: &Arc<SerializedMessage>) -> usize {
        let state = self.read();
        let mut sent = 0;
        let mut deliver = |handle: &ConnectionHandle| {
            if handle.send(message) {
                sent += 1;
            }
        };
        match target {
            Target::All => state.connections.values().for_each(|e| deliver(&e.handle)),
            Target::AllExcept(excluded) => {
                let excluded = state.local_handles(excluded);
                state
                    .connections
                    .values()
                    .filter(|e| !excluded.iter().any(|x| x.is(&e.handle)))
                    .for_each(|e| deliver(&e.handle))
            }
            Target::Connection(id) => {
                if let Some(e) = state.connections.get(id.as_str()) {
                    deliver(&e.handle);
                }
            }
            Target::Connections(ids) => {
                let mut seen = HashSet::new();
                for id in ids {
                    if let Some(e) = state.connections.get(id.as_str())
                        && seen.insert(id.as_str())
                    {
                        deliver(&e.handle);
                    }
                }
            }
            Target::Group(group) => {
                if let Some(members) = state.groups.get(group.as_str()) {
                    members.values().for_each(&mut deliver);
                }
            }
            Target::GroupExcept(group, excluded) => {
                if let Some(members) = state.groups.get(group.as_str()) {
                    let excluded = state.local_handles(excluded);
                    members
                        .values()
                        .filter(|h| !excluded.iter().any(|x| x.is(h)))
                        .for_each(&mut deliver);
                }
            }
            Target::User(user) => {
                if let Some(members) = state.users.get(user.as_str()) {
                    members.values().for_each(&mut deliver);
                }
            }
            Target::Groups(keys) | Target::Users(keys) => {
                let index = if matches!(target, Target::Groups(_)) {
                    &state.groups
                } else {
                    &state.users
                };
                // A connection in several of the groups receives one copy.
                let mut seen: HashSet<&str> = HashSet::new();
                for key in keys {
                    if let Some(members) = index.get(key.as_str()) {
                        for (id, handle) in members {
                            if seen.insert(id) {
                                deliver(handle);
                            }
                        }
                    }
                }
            }
        }
        sent
    }

    /// Invokes a client method on a local connection and waits for its
    /// answer (see [`LifetimeManager::invoke_connection`]). Invocation ids
    /// are `s1`, `s2`, …: clients number their own streams with plain
    /// integers, so the two never collide.
    pub async fn invoke_local(
        &self,
        connection_id: &str,
        invocation: ClientInvocation,
    ) -> Result<Payload, InvokeError> {
        let number = self.last_invocation.fetch_add(1, Ordering::Relaxed) + 1;
        let id: Box<str> = format!("s{number}").into();
        let message = invocation.into_message(id.clone());
        self.invoke_local_message(connection_id, id, message).await
    }

    /// Sends a client result's invocation, already carrying its id
    /// `invocation_id`, to a local connection and waits for the answer.
    /// A backplane uses it for invocations that arrive from other servers
    /// already serialized ([`SerializedMessage::from_frames`]).
    pub async fn invoke_local_message(
        &self,
        connection_id: &str,
        invocation_id: Box<str>,
        message: SerializedMessage,
    ) -> Result<Payload, InvokeError> {
        let id = invocation_id;
        let (tx, rx) = oneshot::channel();
        let handle = {
            let mut state = self.write();
            let Some(entry) = state.connections.get_mut(connection_id) else {
                return Err(InvokeError::UnknownConnection(connection_id.to_owned()));
            };
            entry.extra().answers.insert(id.clone(), tx);
            entry.handle.clone()
        };
        // However this ends (answered, failed, or dropped by a timeout),
        // the connection no longer owes the answer.
        let _owed = Owed {
            manager: self,
            connection_id,
            id: &id,
        };
        let frame = message.try_frame(handle.protocol())?;
        // Like a reply, this waits for room in the connection's queue
        // rather than closing a busy connection: the caller waits anyway.
        if !handle.send_frame(frame).await {
            return Err(InvokeError::Disconnected(connection_id.to_owned()));
        }
        rx.await
            .unwrap_or_else(|_| Err(InvokeError::Disconnected(connection_id.to_owned())))
    }

    /// Delivers a local connection's answer to a client result; returns
    /// false (and drops it) if the connection was not asked for this id.
    pub fn complete_local(&self, connection_id: &str, completion: Completion) -> bool {
        // Stray completions (a confused or hostile client) only take the
        // shared read lock, never the write lock every broadcast waits on.
        let asked = self
            .read()
            .connections
            .get(connection_id)
            .and_then(|entry| entry.extra.as_ref())
            .is_some_and(|extra| {
                extra
                    .answers
                    .contains_key(completion.invocation_id.as_str())
            });
        let owed = asked.then(|| {
            let mut state = self.write();
            state.connections.get_mut(connection_id).and_then(|entry| {
                let answer = entry
                    .extra
                    .as_mut()?
                    .answers
                    .remove(completion.invocation_id.as_str())?;
                Some((answer, entry.handle.protocol()))
            })
        });
        let owed = owed.flatten();
        let Some((answer, protocol)) = owed else {
            tracing::debug!(connection_id, invocation_id = %completion.invocation_id, "ignoring a completion nobody waits for");
            return false;
        };
        let result = match completion.result {
            CompletionResult::Value(payload) => Ok(payload),
            // An answer without a value reads as null (`()` or `None`).
            CompletionResult::Void => Ok(Payload::null(protocol)),
            CompletionResult::Error(error) => Err(InvokeError::Client(error)),
        };
        // The caller may have given up meanwhile; then nobody listens.
        let _ = answer.send(result);
        true
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state.read()
    }

    fn write(&self) -> parking_lot::RwLockWriteGuard<'_, State> {
        self.state.write()
    }
}

/// A client result a connection owes; forgotten when dropped.
struct Owed<'a> {
    manager: &'a MemoryLifetimeManager,
    connection_id: &'a str,
    id: &'a str,
}

impl Drop for Owed<'_> {
    fn drop(&mut self) {
        let mut state = self.manager.write();
        if let Some(extra) = state
            .connections
            .get_mut(self.connection_id)
            .and_then(|entry| entry.extra.as_mut())
        {
            extra.answers.remove(self.id);
        }
    }
}

fn remove_member(index: &mut HashMap<Arc<str>, Members>, key: &str, id: &str) {
    if let Some(members) = index.get_mut(key) {
        members.remove(id);
        if members.is_empty() {
            index.remove(key);
        }
    }
}

impl LifetimeManager for MemoryLifetimeManager {
    fn on_connected<'a>(&'a self, connection: &'a ConnectionHandle) -> BoxFuture<'a, ()> {
        self.add_connection(connection);
        Box::pin(async {})
    }

    fn on_disconnected<'a>(&'a self, connection: &'a ConnectionHandle) -> BoxFuture<'a, ()> {
        self.remove_connection(connection);
        Box::pin(async {})
    }

    fn send<'a>(
        &'a self,
        target: &'a Target,
        message: Arc<SerializedMessage>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        self.send_local(target, &message);
        Box::pin(async { Ok(()) })
    }

    fn add_to_group<'a>(
        &'a self,
        connection_id: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        // Unknown connections are ignored, as in ASP.NET Core.
        self.add_local_to_group(connection_id, group);
        Box::pin(async { Ok(()) })
    }

    fn remove_from_group<'a>(
        &'a self,
        connection_id: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        self.remove_local_from_group(connection_id, group);
        Box::pin(async { Ok(()) })
    }

    fn invoke_connection<'a>(
        &'a self,
        connection_id: &'a str,
        invocation: ClientInvocation,
    ) -> BoxFuture<'a, Result<Payload, InvokeError>> {
        Box::pin(self.invoke_local(connection_id, invocation))
    }

    fn set_connection_result<'a>(
        &'a self,
        connection_id: &'a str,
        completion: Completion,
    ) -> BoxFuture<'a, ()> {
        self.complete_local(connection_id, completion);
        Box::pin(async {})
    }

    fn connections_of_user<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, PresenceError>> {
        let found = self.local_connections_of_user(user_id);
        Box::pin(async { Ok(found) })
    }

    fn group_members<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Member>, PresenceError>> {
        let found = self.local_group_members(group);
        Box::pin(async { Ok(found) })
    }

    fn groups_of_connection<'a>(
        &'a self,
        connection_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, PresenceError>> {
        let found = self.groups_of(connection_id);
        Box::pin(async { Ok(found) })
    }

    fn online_user_count(&self) -> BoxFuture<'_, Result<usize, PresenceError>> {
        let count = self.local_user_count();
        Box::pin(async move { Ok(count) })
    }

    fn connection_exists<'a>(
        &'a self,
        connection_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, PresenceError>> {
        let found = self.connection(connection_id).is_some();
        Box::pin(async move { Ok(found) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Principal,
        connections::outbox::{self, Outbound},
    };
    use tidings_protocol::Protocol;

    fn connection(id: &str, user: Option<&str>) -> (ConnectionHandle, outbox::Receiver) {
        let principal = user.map(Principal::user).unwrap_or_default();
        ConnectionHandle::unattached(id, principal, Protocol::Json, 16)
    }

    fn message() -> Arc<SerializedMessage> {
        Arc::new(SerializedMessage::invocation("M", ()))
    }

    #[test]
    fn targets_reach_exactly_their_connections() {
        let manager = MemoryLifetimeManager::new();
        let (a, _ra) = connection("a", Some("ann"));
        let (b, _rb) = connection("b", Some("ann"));
        let (c, _rc) = connection("c", Some("bob"));
        for conn in [&a, &b, &c] {
            manager.add_connection(conn);
        }
        manager.add_local_to_group("a", "g1");
        manager.add_local_to_group("b", "g1");
        manager.add_local_to_group("b", "g2");
        manager.add_local_to_group("c", "g2");
        let msg = message();
        let s = |t: Target| manager.send_local(&t, &msg);
        assert_eq!(s(Target::All), 3);
        assert_eq!(s(Target::AllExcept(vec!["a".into()])), 2);
        assert_eq!(s(Target::Connection("c".into())), 1);
        assert_eq!(s(Target::Connection("zz".into())), 0);
        assert_eq!(
            s(Target::Connections(vec![
                "a".into(),
                "a".into(),
                "c".into()
            ])),
            2
        );
        assert_eq!(s(Target::Group("g1".into())), 2);
        assert_eq!(s(Target::Groups(vec!["g1".into(), "g2".into()])), 3);
        assert_eq!(s(Target::GroupExcept("g2".into(), vec!["b".into()])), 1);
        assert_eq!(s(Target::User("ann".into())), 2);
        assert_eq!(s(Target::Users(vec!["ann".into(), "bob".into()])), 3);
        assert!(!manager.add_local_to_group("unknown", "g1"));
    }

    #[test]
    fn a_departing_connection_leaves_its_groups_and_user() {
        let manager = MemoryLifetimeManager::new();
        let (a, _ra) = connection("a", Some("ann"));
        let (b, _rb) = connection("b", None);
        manager.add_connection(&a);
        manager.add_connection(&b);
        manager.add_local_to_group("a", "room");
        manager.add_local_to_group("b", "room");
        assert_eq!(manager.groups_of("a"), vec!["room".to_owned()]);

        manager.remove_connection(&a);
        let msg = message();
        assert_eq!(manager.connection_count(), 1);
        assert!(manager.groups_of("a").is_empty());
        assert_eq!(manager.send_local(&Target::Group("room".into()), &msg), 1);
        assert_eq!(manager.send_local(&Target::User("ann".into()), &msg), 0);
        manager.remove_connection(&b);
        // Empty groups are dropped, not kept as empty sets.
        assert!(manager.read().groups.is_empty());
        assert!(manager.read().users.is_empty());
    }

    /// The invocation frame a connection received.
    async fn sent_frame(rx: &mut outbox::Receiver) -> String {
        match rx.recv().await {
            Some(Outbound::Frame(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Asks connection `id` in a task, as a hub method would.
    fn ask(
        manager: &Arc<MemoryLifetimeManager>,
        id: &'static str,
        arguments: impl tidings_protocol::ToArguments + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<Result<Payload, InvokeError>> {
        let manager = Arc::clone(manager);
        tokio::spawn(async move {
            manager
                .invoke_local(id, ClientInvocation::new("Ask", arguments))
                .await
        })
    }

    #[tokio::test]
    async fn a_client_result_reaches_its_caller() {
        let manager = Arc::new(MemoryLifetimeManager::new());
        let (a, mut ra) = connection("a", None);
        let (b, _rb) = connection("b", None);
        manager.add_connection(&a);
        manager.add_connection(&b);
        let asking = ask(&manager, "a", ("q",));
        let frame = sent_frame(&mut ra).await;
        assert_eq!(
            frame,
            "{\"type\":1,\"invocationId\":\"s1\",\"target\":\"Ask\",\"arguments\":[\"q\"]}\u{1e}"
        );
        let answer = |value: &str| {
            Completion::value(
                "s1",
                Payload::from_raw(Protocol::Json, value.to_owned()).expect("json"),
            )
        };
        // Another connection cannot answer for it; an unknown id is ignored.
        assert!(!manager.complete_local("b", answer("1")));
        assert!(
            !manager.complete_local("a", Completion::value("s9", Payload::null(Protocol::Json)))
        );
        assert!(manager.complete_local("a", answer("42")));
        let result = asking.await.expect("task").expect("answered");
        assert_eq!(result.deserialize::<i32>().expect("int"), 42);
        // Answered once: a repeated answer is ignored.
        assert!(!manager.complete_local("a", answer("43")));
    }

    #[tokio::test]
    async fn client_results_fail_clearly() {
        let manager = Arc::new(MemoryLifetimeManager::new());
        let unknown = manager
            .invoke_local("nobody", ClientInvocation::new("Ask", ()))
            .await
            .expect_err("unknown");
        assert_eq!(unknown.to_string(), "Connection 'nobody' does not exist.");

        let (a, mut ra) = connection("a", None);
        manager.add_connection(&a);
        let asking = ask(&manager, "a", ());
        // The refused call used up s1.
        assert!(
            sent_frame(&mut ra)
                .await
                .contains("\"invocationId\":\"s2\"")
        );
        assert!(manager.complete_local(
            "a",
            Completion::error("s2", "Client didn't provide a result.")
        ));
        let error = asking.await.expect("task").expect_err("client error");
        assert!(
            matches!(error, InvokeError::Client(ref text) if text == "Client didn't provide a result.")
        );

        let asking = ask(&manager, "a", ());
        sent_frame(&mut ra).await;
        manager.remove_connection(&a);
        let error = asking.await.expect("task").expect_err("disconnected");
        assert_eq!(error.to_string(), "Connection 'a' disconnected.");
    }

    #[tokio::test]
    async fn an_abandoned_client_result_is_forgotten() {
        let manager = MemoryLifetimeManager::new();
        let (a, mut ra) = connection("a", None);
        manager.add_connection(&a);
        let asking = manager.invoke_local("a", ClientInvocation::new("Ask", ()));
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(20), asking).await;
        assert!(timed_out.is_err());
        sent_frame(&mut ra).await;
        assert!(
            manager.read().connections["a"]
                .extra
                .as_ref()
                .is_none_or(|extra| extra.answers.is_empty())
        );
        // The late answer finds nobody.
        assert!(
            !manager.complete_local("a", Completion::value("s1", Payload::null(Protocol::Json)))
        );
    }

    #[test]
    fn leaving_a_group_stops_delivery() {
        let manager = MemoryLifetimeManager::new();
        let (a, _ra) = connection("a", None);
        manager.add_connection(&a);
        manager.add_local_to_group("a", "g");
        assert!(manager.remove_local_from_group("a", "g"));
        assert_eq!(
            manager.send_local(&Target::Group("g".into()), &message()),
            0
        );
    }
}
