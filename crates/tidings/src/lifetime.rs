//! The lifetime manager: who is connected, who is in which group, which
//! connections belong to which user, and delivery of a message to a
//! [`Target`].
//!
//! [`LifetimeManager`] is the seam for scale-out: a backplane implements it by
//! delivering locally through a [`MemoryLifetimeManager`] and publishing to
//! the other servers. The in-memory implementation keeps every index under
//! one `RwLock` that is never held across an `.await`: delivery only calls
//! [`ConnectionHandle::send`], which never waits.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use crate::{ConnectionHandle, GroupError, SendError, hub::BoxFuture, message::SerializedMessage};

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

/// Tracks connections and groups and delivers messages to targets.
///
/// Implementations must be cheap to call concurrently from many tasks.
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
}

/// The single-server lifetime manager: everything in memory.
#[derive(Debug, Default)]
pub struct MemoryLifetimeManager {
    state: RwLock<State>,
}

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
    groups: HashSet<Arc<str>>,
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
                groups: HashSet::new(),
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
        for group in entry.groups {
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
        if entry.groups.insert(Arc::clone(&group)) {
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
        if entry.groups.remove(group) {
            remove_member(&mut state.groups, group, connection_id);
        }
        true
    }

    /// The groups a local connection is in.
    pub fn groups_of(&self, connection_id: &str) -> Vec<String> {
        self.read()
            .connections
            .get(connection_id)
            .map(|e| e.groups.iter().map(|g| g.to_string()).collect())
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
            Target::AllExcept(excluded) => state
                .connections
                .values()
                .filter(|e| !excluded.iter().any(|x| x.as_str() == e.handle.id()))
                .for_each(|e| deliver(&e.handle)),
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
                    members
                        .values()
                        .filter(|h| !excluded.iter().any(|x| x.as_str() == h.id()))
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than losing every connection would, so
        // a poisoned lock is used as is.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Principal,
        connection::{ConnectionInit, Outbound},
    };
    use tidings_protocol::{Protocol, TransportType};
    use tokio::sync::mpsc;

    fn connection(id: &str, user: Option<&str>) -> (ConnectionHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(16);
        let init = ConnectionInit {
            id: Arc::from(id),
            protocol: Protocol::Json,
            transport: TransportType::WebSockets,
            principal: user.map(Principal::user).unwrap_or_default(),
            query: Vec::new(),
            headers: Default::default(),
        };
        (ConnectionHandle::new(init, tx), rx)
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
