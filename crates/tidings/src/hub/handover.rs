//! [`Handover`]: what a lifetime manager does when a connection moves from
//! one server of the cluster to another (a server shutting down hands its
//! stateful-reconnect connections over; see `connections::handover` for
//! the exchange between the two servers).
//!
//! The difficulty is the messages sent to the connection while it moves.
//! The new server starts receiving for the connection first
//! ([`hold`](Handover::hold)): whatever arrives is kept aside. The old one
//! then stops ([`freeze`](Handover::freeze)) once it has delivered
//! everything that may have been sent before the new server was listening,
//! and says how far it got — its *position*. The new server delivers what
//! it kept beyond that position and drops the rest
//! ([`release`](Handover::release)): the old server delivered it.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tidings_protocol::Protocol;

use crate::{
    connections::{handler::BoxFuture, journal::Journal},
    hub::connection::ConnectionHandle,
};

/// A stateful connection whose server died, as recorded outside it (see
/// [`Handover::recover`]).
#[derive(Debug)]
pub struct Recovered {
    /// The connection id.
    pub id: String,
    /// The user id of its principal.
    pub user_id: Option<String>,
    /// The claims of its principal.
    pub claims: Vec<(String, String)>,
    /// When its credentials expire, in milliseconds since the epoch.
    pub expires_at_ms: Option<u64>,
    /// Its hub protocol.
    pub protocol: Protocol,
    /// Its groups.
    pub groups: Vec<String>,
    /// The sequence id of `frames[0]`.
    pub first_id: u64,
    /// The messages to replay: what the client may not have acknowledged,
    /// then what was sent to it while no server held it.
    pub frames: Vec<Bytes>,
    /// The client messages its server processed.
    pub received: u64,
    /// Where [`Handover::release`] starts.
    pub position: Value,
}

/// Moving a connection between servers, for a lifetime manager of a
/// cluster (see [`LifetimeManager::handover`](crate::LifetimeManager::handover)).
pub trait Handover: Send + Sync {
    /// The groups a connection of this server is in.
    fn local_groups(&self, connection_id: &str) -> Vec<String>;

    /// The new server: start receiving what is sent to the connection
    /// (to its id, its user, its groups) and keep it aside. Returns once
    /// this server listens (`false`: it cannot).
    fn hold<'a>(
        &'a self,
        connection_id: &'a str,
        user_id: Option<&'a str>,
        groups: &'a [String],
    ) -> BoxFuture<'a, bool>;

    /// The new server: the move failed; forget what was kept.
    fn unhold(&self, connection_id: &str);

    /// The old server: stop delivering to `connection` (without telling the
    /// cluster it left: it lives on elsewhere), once everything sent before
    /// the new server held is delivered to it. Returns the position the
    /// new server starts from (`None`: it cannot move).
    fn freeze<'a>(&'a self, connection: &'a ConnectionHandle) -> BoxFuture<'a, Option<Value>>;

    /// A journal for a stateful connection of this server, whose secret
    /// token is `token`, so that another server can resume it if this one
    /// dies ([`recover`](Self::recover)); `None`: not kept.
    fn journal(&self, _connection: &ConnectionHandle, _token: &str) -> Option<Arc<dyn Journal>> {
        None
    }

    /// The new server: the stateful connection of `token`, whose server
    /// died, as its journal recorded it, with what was sent to it since;
    /// claimed for this server, and held as by [`hold`](Self::hold) until
    /// [`release`](Self::release). `None`: not recorded, or claimed by
    /// another server.
    fn recover<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Option<Recovered>> {
        Box::pin(async { None })
    }

    /// The new server: the connection runs here now, in `groups`; deliver
    /// what was kept beyond `position` (in order, before anything sent
    /// later) and register it as connected here.
    fn release<'a>(
        &'a self,
        connection: &'a ConnectionHandle,
        groups: &'a [String],
        position: &'a Value,
    ) -> BoxFuture<'a, ()>;
}
