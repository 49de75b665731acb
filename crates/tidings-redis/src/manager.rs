//! [`RedisLifetimeManager`]: one hub's lifetime manager on the backplane.
//!
//! Local connections live in a [`MemoryLifetimeManager`]; the Redis side
//! is what the other servers need:
//!
//! * **Delivery.** Local recipients are served at once, synchronously, and
//!   the message is queued for Redis once per channel (all, group, user,
//!   or connection when the connection is elsewhere). The publishing server
//!   skips its own messages when they come back, so a local recipient gets
//!   one copy, in the order its server sent them — also while Redis is
//!   away. A message for a connection of this server is never published.
//! * **Subscriptions** follow local state: `all` and the internal channels
//!   always; a connection's channel while it is here; a user's or group's
//!   channel while at least one local connection is in it. Changes are
//!   ordered by one lock around the local change and the subscription
//!   change, and awaited (when Redis is up) before `on_connected` or a group
//!   change returns, so a message sent afterwards by any server arrives.
//! * **Groups of other servers' connections** use ASP.NET Core's command and
//!   acknowledgement; an id that no server has (by presence) is ignored at
//!   once, as the in-memory manager ignores it.
//! * **Client results** for a connection elsewhere are published with a
//!   random invocation id and this server's return channel; the server
//!   holding the connection relays the client's Completion back.

use std::{
    collections::HashMap,
    sync::{
        Arc, Weak,
        atomic::{AtomicI32, AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tidings::{
    BoxFuture, ClientInvocation, ConnectionHandle, GroupError, InvokeError, LifetimeManager,
    Member, MemoryLifetimeManager, PresenceError, Protocol, SendError, SerializedMessage, Target,
};
use tidings_protocol::{Completion, CompletionResult, HubMessage, MessageDecoder, Payload};
use tokio::sync::oneshot;

use crate::{
    connection::Connection,
    durable::{self, RedisJournal},
    handover::Hold,
    link::{Link, Route},
    presence::Presence,
    wire::{
        ChannelKind, Channels, Envelope, GroupAction, GroupCommand, decode_ack, decode_completion,
        encode_ack, encode_completion,
    },
};

/// The text ASP.NET Core's server sends back when the connection asked for
/// a client result left before answering.
const DISCONNECTED: &str = "Connection disconnected.";

type Answer = oneshot::Sender<Result<Payload, InvokeError>>;

/// One hub's state on the backplane.
pub(crate) struct HubCore {
    pub(crate) link: Arc<Link>,
    pub(crate) channels: Channels,
    pub(crate) local: MemoryLifetimeManager,
    /// Orders a local membership change with its subscription change.
    pub(crate) membership: Mutex<()>,
    /// Orders every delivery to local connections (sends, messages from
    /// Redis: read) with a handover's freeze and release (write), so that
    /// the position read then matches what was delivered.
    pub(crate) delivery: RwLock<()>,
    /// Connections on their way here from another server, by id.
    pub(crate) holds: Mutex<HashMap<String, Hold>>,
    /// How many: deliveries look at `holds` only when some are.
    holding: AtomicUsize,
    acks: Mutex<HashMap<i32, oneshot::Sender<()>>>,
    last_ack: AtomicI32,
    results: Mutex<HashMap<String, Answer>>,
    pub(crate) presence: Presence,
    /// The journals of this hub's stateful connections, by connection id
    /// (durability mode only).
    pub(crate) journals: Mutex<HashMap<String, Weak<RedisJournal>>>,
    /// Orders this server's publishes with their local deliveries in the
    /// durability mode, so that a connection receives them in the order
    /// of their numbers (its journal's position assumes it).
    publishing: Mutex<()>,
    me: Weak<HubCore>,
}

/// A hub's lifetime manager backed by Redis: made by
/// [`RedisBackplane::lifetime_manager`](crate::RedisBackplane::lifetime_manager).
#[derive(Clone)]
pub struct RedisLifetimeManager {
    pub(crate) core: Arc<HubCore>,
}

impl std::fmt::Debug for RedisLifetimeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLifetimeManager")
            .field("hub", &self.core.channels.base())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    mutex.lock()
}

impl RedisLifetimeManager {
    pub(crate) fn from_core(core: Arc<HubCore>) -> Self {
        RedisLifetimeManager { core }
    }

    pub(crate) fn new(link: Arc<Link>, hub: &str) -> Self {
        let channels = Channels::new(&link.options.channel_prefix, hub);
        let core = Arc::new_cyclic(|me| HubCore {
            presence: Presence::new(channels.base()),
            link: Arc::clone(&link),
            channels,
            local: MemoryLifetimeManager::new(),
            membership: Mutex::new(()),
            delivery: RwLock::new(()),
            holds: Mutex::new(HashMap::new()),
            holding: AtomicUsize::new(0),
            acks: Mutex::new(HashMap::new()),
            last_ack: AtomicI32::new(0),
            results: Mutex::new(HashMap::new()),
            journals: Mutex::new(HashMap::new()),
            publishing: Mutex::new(()),
            me: me.clone(),
        });
        let server = &link.server_id;
        for (channel, kind) in [
            (core.channels.all(), ChannelKind::All),
            (
                core.channels.group_management(),
                ChannelKind::GroupManagement,
            ),
            (core.channels.ack(server), ChannelKind::Ack),
            (core.channels.return_results(server), ChannelKind::Return),
        ] {
            core.want(channel, kind);
        }
        lock(&link.hubs).push(Arc::downgrade(&core));
        RedisLifetimeManager { core }
    }

    /// The local connections (this server's share of the hub).
    pub fn local(&self) -> &MemoryLifetimeManager {
        &self.core.local
    }
}

impl HubCore {
    fn route(&self, kind: ChannelKind) -> Route {
        Route {
            hub: self.me.clone(),
            kind,
        }
    }

    pub(crate) fn want(&self, channel: String, kind: ChannelKind) -> u64 {
        let route = self.route(kind);
        self.link.want(channel, Some(route))
    }

    pub(crate) fn unwant(&self, channel: String) -> u64 {
        self.link.want(channel, None)
    }

    pub(crate) fn hold_count(&self, delta: isize) {
        if delta >= 0 {
            self.holding
                .fetch_add(delta.unsigned_abs(), Ordering::AcqRel);
        } else {
            self.holding
                .fetch_sub(delta.unsigned_abs(), Ordering::AcqRel);
        }
    }

    pub(crate) fn holding(&self) -> bool {
        self.holding.load(Ordering::Acquire) > 0
    }

    /// The envelope of `message` for other servers: every protocol's frame.
    fn envelope(
        &self,
        message: &SerializedMessage,
        excluded: &[String],
    ) -> Result<Envelope, SendError> {
        let json = message.try_frame(Protocol::Json).ok();
        let msgpack = message.try_frame(Protocol::MessagePack).ok();
        if json.is_none() && msgpack.is_none() {
            // Report the reason the JSON attempt failed.
            message.try_frame(Protocol::Json)?;
        }
        Ok(Envelope {
            excluded: excluded.to_vec(),
            json,
            msgpack,
            close: message
                .is_close()
                .then(|| message.close_reason().map(str::to_owned)),
            origin: Some(self.link.server_id.clone()),
            ..Default::default()
        })
    }

    /// Queues `envelope` for `channel`; returns the lane and the number
    /// it was published under.
    fn publish(&self, channel: String, mut envelope: Envelope) -> (u16, u64) {
        let lane = self.link.lane(&channel);
        let mut numbered = 0;
        self.link.publish(channel, |seq| {
            numbered = seq;
            envelope.seq = Some(seq);
            Bytes::from(envelope.encode())
        });
        (lane, numbered)
    }

    /// Publishes `envelope`s on their channels and delivers `message` to
    /// the local connections of `target`; returns where each was published.
    /// In the durability mode the local copy is marked with the last
    /// number, for the journals.
    fn publish_and_deliver(
        &self,
        target: &Target,
        message: &Arc<SerializedMessage>,
        publishes: impl IntoIterator<Item = (String, Envelope)>,
    ) -> Vec<(u16, u64)> {
        if self.link.options.durable.is_none() || message.is_close() {
            self.local.send_local(target, message);
            return publishes
                .into_iter()
                .map(|(channel, envelope)| self.publish(channel, envelope))
                .collect();
        }
        let _order = lock(&self.publishing);
        let mut frames = None;
        let at: Vec<(u16, u64)> = publishes
            .into_iter()
            .map(|(channel, envelope)| {
                frames.get_or_insert_with(|| (envelope.json.clone(), envelope.msgpack.clone()));
                self.publish(channel, envelope)
            })
            .collect();
        match (frames, at.last()) {
            (Some((json, msgpack)), Some(&(_, seq))) => {
                let marked = SerializedMessage::from_frames(json, msgpack)
                    .with_mark(durable::mark(&self.link.server_id, seq));
                self.local.send_local(target, &Arc::new(marked));
            }
            _ => {
                self.local.send_local(target, message);
            }
        }
        at
    }

    fn send(&self, target: &Target, message: &Arc<SerializedMessage>) -> Result<(), SendError> {
        let _delivery = self.delivery.read();
        let none: &[String] = &[];
        match target {
            Target::All => {
                let envelope = self.envelope(message, none)?;
                let at =
                    self.publish_and_deliver(target, message, [(self.channels.all(), envelope)]);
                self.keep_sent(message, at[0], |_, _| true);
            }
            Target::AllExcept(excluded) => {
                let envelope = self.envelope(message, excluded)?;
                let at =
                    self.publish_and_deliver(target, message, [(self.channels.all(), envelope)]);
                self.keep_sent(message, at[0], |id, _| !excluded.iter().any(|e| e == id));
            }
            Target::Connection(id) => {
                self.send_to_connections(std::slice::from_ref(id), message)?
            }
            Target::Connections(ids) => self.send_to_connections(ids, message)?,
            Target::Group(group) => {
                let envelope = self.envelope(message, none)?;
                let at = self.publish_and_deliver(
                    target,
                    message,
                    [(self.channels.group(group), envelope)],
                );
                self.keep_sent(message, at[0], |_, hold| hold.in_group(group));
            }
            Target::GroupExcept(group, excluded) => {
                let envelope = self.envelope(message, excluded)?;
                let at = self.publish_and_deliver(
                    target,
                    message,
                    [(self.channels.group(group), envelope)],
                );
                self.keep_sent(message, at[0], |id, hold| {
                    hold.in_group(group) && !excluded.iter().any(|e| e == id)
                });
            }
            Target::Groups(groups) => {
                let envelope = self.envelope(message, none)?;
                let mut distinct: Vec<&String> = Vec::new();
                for group in groups {
                    if !distinct.contains(&group) {
                        distinct.push(group);
                    }
                }
                // Each group's envelope names the groups before it: a
                // member is reached through the first of its groups.
                let publishes = distinct.iter().enumerate().map(|(i, group)| {
                    let envelope = Envelope {
                        earlier: distinct[..i].iter().map(|g| (*g).clone()).collect(),
                        ..envelope.clone()
                    };
                    (self.channels.group(group), envelope)
                });
                let at = self.publish_and_deliver(target, message, publishes);
                for (i, (group, at)) in distinct.iter().zip(at).enumerate() {
                    let earlier = &distinct[..i];
                    self.keep_sent(message, at, |_, hold| {
                        hold.in_group(group) && !earlier.iter().any(|e| hold.in_group(e))
                    });
                }
            }
            Target::User(user) => {
                let envelope = self.envelope(message, none)?;
                let at = self.publish_and_deliver(
                    target,
                    message,
                    [(self.channels.user(user), envelope)],
                );
                self.keep_sent(message, at[0], |_, hold| hold.is_user(user));
            }
            Target::Users(users) => {
                let envelope = self.envelope(message, none)?;
                let mut distinct: Vec<&String> = Vec::new();
                for user in users {
                    if !distinct.contains(&user) {
                        distinct.push(user);
                    }
                }
                let publishes = distinct
                    .iter()
                    .map(|user| (self.channels.user(user), envelope.clone()));
                let at = self.publish_and_deliver(target, message, publishes);
                for (user, at) in distinct.iter().zip(at) {
                    self.keep_sent(message, at, |_, hold| hold.is_user(user));
                }
            }
            // Target is non-exhaustive: a new kind must be added here.
            other => {
                return Err(SendError::Delivery(format!(
                    "the Redis backplane cannot send to {other:?}"
                )));
            }
        }
        Ok(())
    }

    fn send_to_connections(
        &self,
        ids: &[String],
        message: &Arc<SerializedMessage>,
    ) -> Result<(), SendError> {
        let mut envelope = None;
        let mut done: Vec<&String> = Vec::new();
        for id in ids {
            if done.contains(&id) {
                continue;
            }
            done.push(id);
            if let Some(handle) = self.local.connection(id) {
                handle.send(message);
                continue;
            }
            let envelope = match &envelope {
                Some(envelope) => envelope,
                None => envelope.insert(self.envelope(message, &[])?),
            };
            let at = self.publish(self.channels.connection(id), envelope.clone());
            self.keep_sent(message, at, |held, _| held == id);
        }
        Ok(())
    }

    /// A message arrived on one of this hub's channels.
    pub(crate) fn receive(&self, kind: &ChannelKind, payload: &[u8], lane: u16) {
        match kind {
            ChannelKind::All
            | ChannelKind::Group(_)
            | ChannelKind::User(_)
            | ChannelKind::Connection(_) => {
                let envelope = match Envelope::decode(payload) {
                    Ok(envelope) => envelope,
                    Err(error) => {
                        tracing::warn!(%error, "ignoring a backplane message");
                        return;
                    }
                };
                let _delivery = self.delivery.read();
                let holding = self.holding();
                if !self
                    .link
                    .accept(envelope.origin.as_deref(), envelope.seq, lane)
                {
                    return;
                }
                if holding {
                    self.keep(kind, &envelope, lane);
                }
                self.deliver(kind, envelope);
            }
            ChannelKind::GroupManagement => match GroupCommand::decode(payload) {
                Ok(command) => self.on_group_command(command),
                Err(error) => tracing::warn!(%error, "ignoring a group command"),
            },
            ChannelKind::Ack => match decode_ack(payload) {
                Ok(id) => {
                    if let Some(waiter) = lock(&self.acks).remove(&id) {
                        let _ = waiter.send(());
                    }
                }
                Err(error) => tracing::warn!(%error, "ignoring an ack"),
            },
            ChannelKind::Return => self.on_result(payload),
        }
    }

    fn deliver(&self, kind: &ChannelKind, envelope: Envelope) {
        let Envelope {
            excluded,
            json,
            msgpack,
            result,
            earlier,
            close,
            origin: envelope_origin,
            seq: envelope_seq,
        } = envelope;
        let message = Arc::new(match close {
            Some(reason) => SerializedMessage::close(reason),
            None => {
                let message = SerializedMessage::from_frames(json, msgpack);
                match (&envelope_origin, envelope_seq) {
                    (Some(origin), Some(seq)) if self.link.options.durable.is_some() => {
                        message.with_mark(durable::mark(origin, seq))
                    }
                    _ => message,
                }
            }
        });
        match kind {
            ChannelKind::All if excluded.is_empty() => {
                self.local.send_local(&Target::All, &message);
            }
            ChannelKind::All => {
                self.local
                    .send_local(&Target::AllExcept(excluded), &message);
            }
            ChannelKind::Group(group) => {
                self.local
                    .send_local_to_group_once(group, &excluded, &earlier, &message);
            }
            ChannelKind::User(user) => {
                self.local.send_local(&Target::User(user.clone()), &message);
            }
            ChannelKind::Connection(id) => match result {
                None => {
                    self.local
                        .send_local(&Target::Connection(id.clone()), &message);
                }
                Some((invocation_id, return_channel)) => {
                    let Some(core) = self.me.upgrade() else {
                        return;
                    };
                    let id = id.clone();
                    tokio::spawn(async move {
                        core.answer_for(&id, invocation_id, return_channel, message)
                            .await;
                    });
                }
            },
            _ => {}
        }
    }

    /// A client result asked by another server of a local connection: ask
    /// the client, publish its answer on the asker's return channel.
    async fn answer_for(
        &self,
        connection_id: &str,
        invocation_id: String,
        return_channel: String,
        message: Arc<SerializedMessage>,
    ) {
        let Some(handle) = self.local.connection(connection_id) else {
            return;
        };
        let protocol = handle.protocol();
        let message = Arc::try_unwrap(message).unwrap_or_else(|shared| {
            SerializedMessage::from_frames(
                shared.frame(Protocol::Json),
                shared.frame(Protocol::MessagePack),
            )
        });
        let answer = self
            .local
            .invoke_local_message(connection_id, invocation_id.clone().into(), message)
            .await;
        let completion = match answer {
            Ok(payload) => Completion::value(invocation_id, payload),
            Err(InvokeError::Client(text)) => Completion::error(invocation_id, text),
            Err(InvokeError::Disconnected(_)) => Completion::error(invocation_id, DISCONNECTED),
            Err(other) => Completion::error(invocation_id, other.to_string()),
        };
        let mut frame = Vec::with_capacity(64);
        if let Err(error) = protocol.write_message(&HubMessage::Completion(completion), &mut frame)
        {
            tracing::warn!(%error, "cannot relay a client result");
            return;
        }
        let payload = encode_completion(protocol.name(), &frame);
        if let Some(mut connection) = self.link.connection() {
            let sent: redis::RedisResult<i64> = redis::cmd(connection.publish_command())
                .arg(&return_channel)
                .arg(payload)
                .query_async(&mut connection)
                .await;
            if let Err(error) = sent {
                tracing::warn!(%error, "cannot relay a client result");
            }
        } else {
            tracing::warn!("Redis is away; a client result for another server is lost");
        }
    }

    fn on_result(&self, payload: &[u8]) {
        let (protocol, frame) = match decode_completion(payload) {
            Ok(parts) => parts,
            Err(error) => {
                tracing::warn!(%error, "ignoring a client result");
                return;
            }
        };
        let Some(protocol) = Protocol::from_name(&protocol) else {
            tracing::warn!(%protocol, "a client result in an unknown protocol");
            return;
        };
        let mut decoder = MessageDecoder::new(protocol, None);
        decoder.push(&frame);
        let Ok(Some(HubMessage::Completion(completion))) = decoder.next_message() else {
            tracing::warn!("a client result that is not a Completion");
            return;
        };
        let Some(answer) = lock(&self.results).remove(&completion.invocation_id) else {
            return;
        };
        let result = match completion.result {
            CompletionResult::Value(payload) => Ok(payload),
            CompletionResult::Void => Ok(Payload::null(protocol)),
            CompletionResult::Error(error) if error == DISCONNECTED => {
                Err(InvokeError::Disconnected(String::new()))
            }
            CompletionResult::Error(error) => Err(InvokeError::Client(error)),
        };
        let _ = answer.send(result);
    }

    async fn invoke_remote(
        &self,
        connection_id: &str,
        invocation: ClientInvocation,
    ) -> Result<Payload, InvokeError> {
        let Some(mut connection) = self.link.connection() else {
            return Err(InvokeError::Delivery("Redis is unavailable".to_owned()));
        };
        // ASP.NET Core's cross-server ids: 16 random bytes in base64 (22
        // characters); they cannot collide with clients' stream ids.
        let invocation_id = random_id();
        let message = invocation.into_message(invocation_id.clone());
        let mut envelope = self.envelope(&message, &[]).map_err(InvokeError::from)?;
        envelope.result = Some((
            invocation_id.clone(),
            self.channels.return_results(&self.link.server_id),
        ));
        let (tx, rx) = oneshot::channel();
        lock(&self.results).insert(invocation_id.clone(), tx);
        let _pending = Forget {
            results: &self.results,
            id: &invocation_id,
        };
        let receivers: i64 = redis::cmd(connection.publish_command())
            .arg(self.channels.connection(connection_id))
            .arg(envelope.encode())
            .query_async(&mut connection)
            .await
            .map_err(|e| InvokeError::Delivery(e.to_string()))?;
        if receivers == 0 {
            return Err(InvokeError::UnknownConnection(connection_id.to_owned()));
        }
        match rx.await {
            Ok(Err(InvokeError::Disconnected(_))) | Err(_) => {
                Err(InvokeError::Disconnected(connection_id.to_owned()))
            }
            Ok(result) => result,
        }
    }

    /// Adds or removes a local connection; false if it is not here.
    async fn change_local(&self, connection_id: &str, group: &str, action: GroupAction) -> bool {
        let generation = {
            let _order = lock(&self.membership);
            let here = match action {
                GroupAction::Add => self.local.add_local_to_group(connection_id, group),
                GroupAction::Remove => self.local.remove_local_from_group(connection_id, group),
            };
            if !here {
                return false;
            }
            self.journal_groups(connection_id);
            let channel = self.channels.group(group);
            let members = self.local.group_size(group);
            match (members, self.link.is_wanted(&channel)) {
                (0, true) if !self.held_in(group) => Some(self.unwant(channel)),
                (1.., false) => Some(self.want(channel, ChannelKind::Group(group.to_owned()))),
                _ => None,
            }
        };
        if let Some(generation) = generation {
            self.link.wait_applied(generation).await;
        }
        if let Some(mut connection) = self.link.connection() {
            let written = match action {
                GroupAction::Add => {
                    self.presence
                        .join(&mut connection, connection_id, group)
                        .await
                }
                GroupAction::Remove => {
                    self.presence
                        .leave(&mut connection, connection_id, group)
                        .await
                }
            };
            if let Err(error) = written {
                tracing::debug!(%error, "presence not updated; it is rewritten after the reconnect");
            }
        }
        true
    }

    async fn change_group(
        &self,
        connection_id: &str,
        group: &str,
        action: GroupAction,
    ) -> Result<(), GroupError> {
        if self.change_local(connection_id, group, action).await {
            return Ok(());
        }
        let Some(mut connection) = self.link.connection() else {
            return Err(GroupError::Delivery("Redis is unavailable".to_owned()));
        };
        let owner = self
            .presence
            .owner(&mut connection, connection_id)
            .await
            .map_err(|e| GroupError::Delivery(e.to_string()))?;
        if owner.is_none() {
            // Connected nowhere: ignored, as the in-memory manager does.
            return Ok(());
        }
        let server = self.link.server_id.clone();
        let acknowledged = self
            .publish_acknowledged(&mut connection, self.channels.group_management(), |id| {
                GroupCommand {
                    id,
                    server,
                    action,
                    group: group.to_owned(),
                    connection_id: connection_id.to_owned(),
                }
                .encode()
            })
            .await;
        match acknowledged {
            Err(error) => Err(GroupError::Delivery(error.to_string())),
            Ok(true) => Ok(()),
            Ok(false) => Err(GroupError::Delivery(format!(
                "the server holding connection '{connection_id}' did not acknowledge within {} ms",
                self.link.options.ack_timeout.as_millis()
            ))),
        }
    }

    /// Publishes `payload(id)` on `channel` under a fresh acknowledgement
    /// id and waits, up to the acknowledgement timeout, until `:ack` of this
    /// server receives that id; whether it did.
    async fn publish_acknowledged(
        &self,
        connection: &mut Connection,
        channel: String,
        payload: impl FnOnce(i32) -> Vec<u8>,
    ) -> redis::RedisResult<bool> {
        let id = self
            .last_ack
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        lock(&self.acks).insert(id, tx);
        let published: redis::RedisResult<i64> = redis::cmd(connection.publish_command())
            .arg(channel)
            .arg(payload(id))
            .query_async(connection)
            .await;
        let acknowledged = match published {
            Err(error) => Err(error),
            Ok(_) => Ok(matches!(
                tokio::time::timeout(self.link.options.ack_timeout, rx).await,
                Ok(Ok(()))
            )),
        };
        lock(&self.acks).remove(&id);
        acknowledged
    }

    fn on_group_command(&self, command: GroupCommand) {
        if self.local.connection(&command.connection_id).is_none() {
            return;
        }
        let Some(core) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            core.change_local(&command.connection_id, &command.group, command.action)
                .await;
            let ack = encode_ack(command.id);
            if let Some(mut connection) = core.link.connection() {
                let sent: redis::RedisResult<i64> = redis::cmd(connection.publish_command())
                    .arg(core.channels.ack(&command.server))
                    .arg(ack)
                    .query_async(&mut connection)
                    .await;
                if let Err(error) = sent {
                    tracing::warn!(%error, "cannot acknowledge a group command");
                }
            }
        });
    }

    async fn connected(&self, handle: &ConnectionHandle) {
        let generation = {
            let _order = lock(&self.membership);
            self.local.add_connection(handle);
            let mut generation = self.want(
                self.channels.connection(handle.id()),
                ChannelKind::Connection(handle.id().to_owned()),
            );
            if let Some(user) = handle.user_id() {
                let channel = self.channels.user(user);
                if !self.link.is_wanted(&channel) {
                    generation = self.want(channel, ChannelKind::User(user.to_owned()));
                }
            }
            generation
        };
        self.link.wait_applied(generation).await;
        if let Some(mut connection) = self.link.connection() {
            let written = self
                .presence
                .connect(
                    &mut connection,
                    handle.id(),
                    &self.link.server_id,
                    handle.user_id(),
                )
                .await;
            if let Err(error) = written {
                tracing::debug!(%error, "presence not updated; it is rewritten after the reconnect");
            }
        }
    }

    /// Removes a local connection and the subscriptions only it needed;
    /// the cluster's presence is left as it is.
    pub(crate) fn forget_locally(&self, handle: &ConnectionHandle) {
        let _order = lock(&self.membership);
        let groups = self.local.groups_of(handle.id());
        self.local.remove_connection(handle);
        self.unwant(self.channels.connection(handle.id()));
        if let Some(user) = handle.user_id()
            && self.local.user_connection_count(user) == 0
        {
            self.unwant(self.channels.user(user));
        }
        for group in groups {
            if self.local.group_size(&group) == 0 && !self.held_in(&group) {
                self.unwant(self.channels.group(&group));
            }
        }
    }

    /// Tells the cluster that a connection is here, in `groups`.
    pub(crate) async fn register_presence(&self, handle: &ConnectionHandle, groups: &[String]) {
        let Some(mut connection) = self.link.connection() else {
            return;
        };
        let server = &self.link.server_id;
        let written = async {
            // Listed by its old server: moved over, groups and all.
            if self
                .presence
                .moved(&mut connection, handle.id(), server)
                .await?
            {
                return Ok(());
            }
            self.presence
                .connect(&mut connection, handle.id(), server, handle.user_id())
                .await?;
            for group in groups {
                self.presence
                    .join(&mut connection, handle.id(), group)
                    .await?;
            }
            Ok::<_, redis::RedisError>(())
        }
        .await;
        if let Err(error) = written {
            tracing::debug!(%error, "presence not updated; it is rewritten after the reconnect");
        }
    }

    /// Publishes a marker on this server's acknowledgement channel and
    /// waits until it comes back: everything Redis sent this server before
    /// has been received and delivered.
    pub(crate) async fn ping_self(&self) -> bool {
        let Some(mut connection) = self.link.connection() else {
            return false;
        };
        let channel = self.channels.ack(&self.link.server_id);
        matches!(
            self.publish_acknowledged(&mut connection, channel, encode_ack)
                .await,
            Ok(true)
        )
    }

    async fn disconnected(&self, handle: &ConnectionHandle) {
        self.forget_locally(handle);
        if let Some(mut connection) = self.link.connection()
            && let Err(error) = self.presence.disconnect(&mut connection, handle.id()).await
        {
            tracing::debug!(%error, "presence not updated; it is rewritten after the reconnect");
        }
    }

    /// After a reconnect: Redis may have lost everything (a restart), so
    /// this server writes its own presence entries again.
    pub(crate) async fn resynchronize(&self) {
        let Some(mut connection) = self.link.connection() else {
            return;
        };
        let server = self.link.server_id.clone();
        let result = async {
            self.presence.purge(&mut connection, &server).await?;
            for member in self.local.local_members() {
                self.presence
                    .connect(
                        &mut connection,
                        &member.connection_id,
                        &server,
                        member.user_id.as_deref(),
                    )
                    .await?;
                for group in self.local.groups_of(&member.connection_id) {
                    self.presence
                        .join(&mut connection, &member.connection_id, &group)
                        .await?;
                }
            }
            // Connections that left while this ran must not stay listed.
            for id in self
                .presence
                .connections_of_server(&mut connection, &server)
                .await?
            {
                if self.local.connection(&id).is_none() {
                    self.presence.disconnect(&mut connection, &id).await?;
                }
            }
            Ok::<_, redis::RedisError>(())
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "presence not rewritten after the reconnect");
        }
    }

    async fn with_connection<T, F>(&self, query: F) -> Result<T, PresenceError>
    where
        F: AsyncFnOnce(&mut Connection) -> redis::RedisResult<T>,
    {
        let Some(mut connection) = self.link.connection() else {
            return Err(PresenceError::Backend("Redis is unavailable".to_owned()));
        };
        query(&mut connection)
            .await
            .map_err(|e| PresenceError::Backend(e.to_string()))
    }
}

/// Removes a pending client result when the caller stops waiting.
struct Forget<'a> {
    results: &'a Mutex<HashMap<String, Answer>>,
    id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.results).remove(self.id);
    }
}

pub(crate) fn random_id() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

impl LifetimeManager for RedisLifetimeManager {
    fn on_connected<'a>(&'a self, connection: &'a ConnectionHandle) -> BoxFuture<'a, ()> {
        Box::pin(self.core.connected(connection))
    }

    fn on_disconnected<'a>(&'a self, connection: &'a ConnectionHandle) -> BoxFuture<'a, ()> {
        Box::pin(self.core.disconnected(connection))
    }

    fn send<'a>(
        &'a self,
        target: &'a Target,
        message: Arc<SerializedMessage>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        let sent = self.core.send(target, &message);
        Box::pin(async { sent })
    }

    fn add_to_group<'a>(
        &'a self,
        connection_id: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(
            self.core
                .change_group(connection_id, group, GroupAction::Add),
        )
    }

    fn remove_from_group<'a>(
        &'a self,
        connection_id: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(
            self.core
                .change_group(connection_id, group, GroupAction::Remove),
        )
    }

    fn invoke_connection<'a>(
        &'a self,
        connection_id: &'a str,
        invocation: ClientInvocation,
    ) -> BoxFuture<'a, Result<Payload, InvokeError>> {
        Box::pin(async move {
            if self.core.local.connection(connection_id).is_some() {
                self.core
                    .local
                    .invoke_local(connection_id, invocation)
                    .await
            } else {
                self.core.invoke_remote(connection_id, invocation).await
            }
        })
    }

    fn set_connection_result<'a>(
        &'a self,
        connection_id: &'a str,
        completion: Completion,
    ) -> BoxFuture<'a, ()> {
        // The connection is local (it sent the Completion here); the
        // answer goes to whoever waits on this server — for a caller on
        // another server, that is the relay task of `answer_for`.
        self.core.local.complete_local(connection_id, completion);
        Box::pin(async {})
    }

    fn connections_of_user<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, PresenceError>> {
        Box::pin(
            self.core.with_connection(async |c| {
                self.core.presence.connections_of_user(c, user_id).await
            }),
        )
    }

    fn group_members<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Member>, PresenceError>> {
        Box::pin(
            self.core
                .with_connection(async |c| self.core.presence.members(c, group).await),
        )
    }

    fn groups_of_connection<'a>(
        &'a self,
        connection_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, PresenceError>> {
        Box::pin(
            self.core
                .with_connection(async |c| self.core.presence.groups_of(c, connection_id).await),
        )
    }

    fn online_user_count(&self) -> BoxFuture<'_, Result<usize, PresenceError>> {
        Box::pin(
            self.core
                .with_connection(async |c| self.core.presence.user_count(c).await),
        )
    }

    fn handover(&self) -> Option<&dyn tidings::Handover> {
        Some(self)
    }

    fn connection_exists<'a>(
        &'a self,
        connection_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, PresenceError>> {
        Box::pin(async move {
            if self.core.local.connection(connection_id).is_some() {
                return Ok(true);
            }
            self.core
                .with_connection(async |c| {
                    Ok(self.core.presence.owner(c, connection_id).await?.is_some())
                })
                .await
        })
    }
}
