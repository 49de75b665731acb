//! Moving a connection between servers over the backplane (the
//! [`Handover`] of [`RedisLifetimeManager`]).
//!
//! Exactly once rests on two facts of the link. Every server numbers its
//! publishes (`seq`), and every subscriber gets one server's messages of a
//! lane in that order; and a message that reached Redis before a server's
//! own marker reaches that server before the marker.
//!
//! * The new server (B) subscribes to the moving connection's channels
//!   and keeps every message for it aside, with its publisher and number —
//!   its own messages included, kept as they are sent.
//! * The old server (A) then publishes a marker to itself and waits for it:
//!   whatever reached Redis before B was listening has reached A and been
//!   delivered. Under the delivery lock (no send or delivery in between) it
//!   forgets the connection locally and reads its position: per
//!   publishing server and lane, the last number it took in, and its own
//!   last number.
//! * B delivers what it kept beyond that position and drops the rest: A
//!   had it, and it is in the state A handed over (or was acknowledged).
//!
//! On a Redis Cluster the marker orders one shard only: messages on the
//! connection's other shards may then be duplicated or lost in the
//! instant of the move.

use std::{collections::HashMap, sync::Arc};

use serde_json::{Map, Value, json};
use tidings::{
    BoxFuture, ConnectionHandle, Handover, Journal, Recovered, SerializedMessage, Target,
};

use crate::{
    durable::RedisJournal,
    manager::{HubCore, RedisLifetimeManager},
    wire::{ChannelKind, Envelope},
};

/// What a connection on its way here receives meanwhile.
pub(crate) struct Hold {
    user: Option<String>,
    groups: Vec<String>,
    kept: Vec<Kept>,
}

/// A message kept for a connection on its way here, with who published it
/// and its number.
struct Kept {
    origin: String,
    lane: u16,
    seq: u64,
    message: Arc<SerializedMessage>,
}

impl Hold {
    /// What is held for a connection of `user` in `groups`, nothing kept yet.
    pub(crate) fn new(user: Option<String>, groups: Vec<String>) -> Hold {
        Hold {
            user,
            groups,
            kept: Vec::new(),
        }
    }

    pub(crate) fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    pub(crate) fn is_user(&self, user: &str) -> bool {
        self.user.as_deref() == Some(user)
    }

    /// Whether a message on `kind` reaches the connection `id`.
    pub(crate) fn receives(&self, id: &str, kind: &ChannelKind, envelope: &Envelope) -> bool {
        let excluded = || envelope.excluded.iter().any(|e| e == id);
        match kind {
            ChannelKind::All => !excluded(),
            ChannelKind::Group(group) => {
                self.groups.contains(group)
                    && !excluded()
                    && !envelope.earlier.iter().any(|e| self.groups.contains(e))
            }
            ChannelKind::User(user) => self.user.as_deref() == Some(user.as_str()),
            ChannelKind::Connection(target) => target == id && envelope.result.is_none(),
            _ => false,
        }
    }
}

impl HubCore {
    /// Keeps a copy of a message on `kind` for every held connection it
    /// reaches. Called with the delivery lock held for reading.
    pub(crate) fn keep(&self, kind: &ChannelKind, envelope: &Envelope, lane: u16) {
        let (Some(origin), Some(seq)) = (&envelope.origin, envelope.seq) else {
            return;
        };
        let mut holds = self.holds.lock();
        let mut message = None;
        for (id, hold) in holds.iter_mut() {
            if !hold.receives(id, kind, envelope) {
                continue;
            }
            let message = message
                .get_or_insert_with(|| {
                    Arc::new(match &envelope.close {
                        Some(reason) => SerializedMessage::close(reason.clone()),
                        None => SerializedMessage::from_frames(
                            envelope.json.clone(),
                            envelope.msgpack.clone(),
                        ),
                    })
                })
                .clone();
            hold.kept.push(Kept {
                origin: origin.clone(),
                lane,
                seq,
                message,
            });
        }
    }

    /// Keeps a copy of a message this server just sent, published at
    /// `(lane, seq)`, for every held connection it `reaches`. (Messages of
    /// this server are not delivered again when they come back from Redis,
    /// and a connection released meanwhile would miss them.) Called with
    /// the delivery lock held for reading.
    pub(crate) fn keep_sent(
        &self,
        message: &Arc<SerializedMessage>,
        (lane, seq): (u16, u64),
        reaches: impl Fn(&str, &Hold) -> bool,
    ) {
        if !self.holding() {
            return;
        }
        let origin = &self.link.server_id;
        for (id, hold) in self.holds.lock().iter_mut() {
            if reaches(id, hold) {
                hold.kept.push(Kept {
                    origin: origin.clone(),
                    lane,
                    seq,
                    message: Arc::clone(message),
                });
            }
        }
    }

    /// Whether a connection is held in `group` (its channel stays wanted).
    pub(crate) fn held_in(&self, group: &str) -> bool {
        self.holds
            .lock()
            .values()
            .any(|hold| hold.groups.iter().any(|g| g == group))
    }

    /// Publishes a marker to this server and waits until it comes back:
    /// everything Redis sent this server before has been delivered.
    async fn barrier(&self) -> bool {
        self.ping_self().await
    }

    /// This server's position: the last number taken in from every other
    /// server, per lane, and its own last number.
    fn position(&self) -> Value {
        let (own, seen) = self.link.position();
        let origins: Map<String, Value> = seen
            .into_iter()
            .map(|(origin, lanes)| {
                let lanes: Map<String, Value> = lanes
                    .into_iter()
                    .map(|(lane, seq)| (lane.to_string(), json!(seq)))
                    .collect();
                (origin, Value::Object(lanes))
            })
            .collect();
        json!({ "server": self.link.server_id, "own": own, "origins": origins })
    }
}

/// Whether `kept` came after `position` (the old server did not have it).
fn beyond(position: &Value, kept: &Kept) -> bool {
    let last = if position["server"].as_str() == Some(kept.origin.as_str()) {
        position["own"].as_u64()
    } else {
        position["origins"][&kept.origin][kept.lane.to_string()].as_u64()
    };
    kept.seq > last.unwrap_or(0)
}

impl Handover for RedisLifetimeManager {
    fn local_groups(&self, connection_id: &str) -> Vec<String> {
        self.core.local.groups_of(connection_id)
    }

    fn journal(&self, connection: &ConnectionHandle, token: &str) -> Option<Arc<dyn Journal>> {
        self.core.link.options.durable?;
        let groups = self.core.local.groups_of(connection.id());
        let journal: Arc<dyn Journal> = RedisJournal::new(&self.core, connection, token, &groups);
        Some(journal)
    }

    fn recover<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<Recovered>> {
        Box::pin(self.core.recover(token))
    }

    fn hold<'a>(
        &'a self,
        connection_id: &'a str,
        user_id: Option<&'a str>,
        groups: &'a [String],
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let core = &self.core;
            if core.link.connection().is_none() {
                // Nothing could be received meanwhile.
                return false;
            }
            let generation = {
                let _order = core.membership.lock();
                core.holds.lock().insert(
                    connection_id.to_owned(),
                    Hold::new(user_id.map(str::to_owned), groups.to_vec()),
                );
                core.hold_count(1);
                let mut generation = core.want(
                    core.channels.connection(connection_id),
                    ChannelKind::Connection(connection_id.to_owned()),
                );
                let mut wanted = Vec::new();
                if let Some(user) = user_id {
                    wanted.push((core.channels.user(user), ChannelKind::User(user.to_owned())));
                }
                for group in groups {
                    wanted.push((
                        core.channels.group(group),
                        ChannelKind::Group(group.clone()),
                    ));
                }
                for (channel, kind) in wanted {
                    if !core.link.is_wanted(&channel) {
                        generation = core.want(channel, kind);
                    }
                }
                generation
            };
            core.link.wait_applied(generation).await;
            // Listening only counts if Redis took the subscriptions.
            let up = core.link.connection().is_some();
            if !up {
                self.unhold(connection_id);
            }
            up
        })
    }

    fn unhold(&self, connection_id: &str) {
        let core = &self.core;
        let _order = core.membership.lock();
        let Some(hold) = core.holds.lock().remove(connection_id) else {
            return;
        };
        core.hold_count(-1);
        if core.local.connection(connection_id).is_none() {
            core.unwant(core.channels.connection(connection_id));
        }
        if let Some(user) = &hold.user
            && core.local.user_connection_count(user) == 0
        {
            core.unwant(core.channels.user(user));
        }
        for group in &hold.groups {
            if core.local.group_size(group) == 0 && !core.held_in(group) {
                core.unwant(core.channels.group(group));
            }
        }
    }

    fn freeze<'a>(&'a self, connection: &'a ConnectionHandle) -> BoxFuture<'a, Option<Value>> {
        Box::pin(async move {
            let core = &self.core;
            if !core.barrier().await {
                tracing::debug!(connection_id = %connection.id(), "handover refused: Redis did not answer");
                return None;
            }
            let _delivery = core.delivery.write();
            core.forget_locally(connection);
            Some(core.position())
        })
    }

    fn release<'a>(
        &'a self,
        connection: &'a ConnectionHandle,
        groups: &'a [String],
        position: &'a Value,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let core = &self.core;
            let id = connection.id();
            {
                let _delivery = core.delivery.write();
                let _order = core.membership.lock();
                core.local.add_connection(connection);
                for group in groups {
                    core.local.add_local_to_group(id, group);
                }
                let hold = core.holds.lock().remove(id);
                if let Some(hold) = hold {
                    core.hold_count(-1);
                    let target = Target::Connection(id.to_owned());
                    let (mut delivered, mut dropped) = (0usize, 0usize);
                    for kept in hold.kept {
                        if beyond(position, &kept) {
                            core.local.send_local(&target, &kept.message);
                            delivered += 1;
                        } else {
                            dropped += 1;
                        }
                    }
                    tracing::debug!(connection_id = %id, delivered, dropped, "messages kept during the handover");
                }
            }
            core.journal_groups(id);
            core.register_presence(connection, groups).await;
        })
    }
}

/// The positions per publishing server and lane, as the link keeps them.
pub(crate) type Seen = HashMap<String, HashMap<u16, u64>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(origin: &str, lane: u16, seq: u64) -> Kept {
        Kept {
            origin: origin.to_owned(),
            lane,
            seq,
            message: Arc::new(SerializedMessage::from_frames(None, None)),
        }
    }

    #[test]
    fn only_what_the_old_server_had_not_taken_in_is_delivered() {
        let position = json!({
            "server": "a",
            "own": 10,
            "origins": { "b": { "0": 5 }, "c": { "0": 7, "3": 2 } },
        });
        // The old server's own messages, by its own numbering.
        assert!(!beyond(&position, &kept("a", 0, 10)));
        assert!(beyond(&position, &kept("a", 0, 11)));
        // Other servers', per lane.
        assert!(!beyond(&position, &kept("b", 0, 5)));
        assert!(beyond(&position, &kept("b", 0, 6)));
        assert!(!beyond(&position, &kept("c", 3, 2)));
        assert!(beyond(&position, &kept("c", 3, 3)));
        // A lane or a server it never heard from: all new to it.
        assert!(beyond(&position, &kept("b", 1, 1)));
        assert!(beyond(&position, &kept("d", 0, 1)));
    }
}
