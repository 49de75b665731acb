//! The link to Redis: one multiplexed RESP3 connection per server (or one
//! cluster connection, see the `connection` module), and the tasks that
//! keep it useful through failures.
//!
//! * The **supervisor** connects (while Redis is unreachable, every probe
//!   interval; after a failure Redis answered, with exponential backoff;
//!   both with jitter), subscribes every wanted channel, registers the server, and only then
//!   declares the link up. While up it applies subscription changes in
//!   batches; when the connection breaks it starts over. Subscriptions are
//!   desired state ([`Link::want`]): what is wanted while Redis is away is
//!   subscribed when it is back.
//! * The **receiver** of each connection turns pushed messages into calls
//!   of the hub that wants the channel ([`Route`]), dropping a message the
//!   same server already published once (sequence numbers survive a
//!   resend after a failure).
//! * The **publisher** drains the outbox: publishes queued by
//!   [`Link::publish`], which never waits. It sends them in pipelined
//!   batches; a batch that fails stays at the front and is sent again after
//!   the reconnect. After a reconnect it first waits (up to the resubscribe
//!   grace) until the servers it knew are registered again — registered
//!   means subscribed — so what was buffered reaches them.
//!
//! The outbox is bounded in messages and bytes. When it is full, the
//! [`DropPolicy`] drops either the new message or the oldest ones waiting
//! (never those of a batch being sent: the publisher removes them from the
//! front once Redis took them); every drop is counted in
//! [`BackplaneStats::dropped`] and logged. Nothing ever waits for Redis on
//! the delivery path.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use redis::{PushInfo, PushKind, Value};
use tokio::{
    sync::{Notify, mpsc, watch},
    time::{Instant, sleep, timeout},
};

use tokio_util::sync::CancellationToken;

use crate::{
    DropPolicy, RedisOptions,
    connection::{Client, Connection, slot},
    manager::HubCore,
    wire::ChannelKind,
};

/// Where a subscribed channel's messages go.
#[derive(Clone)]
pub(crate) struct Route {
    pub hub: Weak<HubCore>,
    pub kind: ChannelKind,
}

/// Counters of the backplane, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneStats {
    /// Messages published to Redis.
    pub published: u64,
    /// Messages waiting in the outbox (Redis away or slow).
    pub buffered: u64,
    /// Messages dropped because the outbox was full (the new ones or the
    /// oldest, by the [`DropPolicy`]).
    pub dropped: u64,
    /// Messages received from other servers.
    pub received: u64,
    /// Messages received twice (a resend after a failure) and dropped.
    pub duplicates: u64,
    /// Successful connections to Redis after the first.
    pub reconnects: u64,
    /// Whether the link is up now.
    pub connected: bool,
    /// When `connected` last changed (or the backplane started, if it has
    /// never connected): connected since, or reconnecting since.
    pub since: Option<SystemTime>,
}

/// The current connection, when the link is up.
#[derive(Clone)]
pub(crate) enum State {
    Down,
    Up { connection: Connection, epoch: u64 },
}

struct Publish {
    channel: String,
    payload: Bytes,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Publish>,
    bytes: usize,
    /// How many messages at the front form the batch being sent: they stay
    /// until Redis took them (or the send failed), and dropping the oldest
    /// must skip them, or the publisher would remove unsent ones.
    in_flight: usize,
    /// How many messages at the front were sent in a batch that failed.
    /// Redis may have published some of them before it went away, so they
    /// are sent again (receivers drop by number what they had) and never
    /// dropped: a dropped message must be one that no client received.
    attempted: usize,
}

impl Outbox {
    /// Whether a message of `size` bytes fits now.
    fn fits(&self, size: usize, options: &RedisOptions) -> bool {
        self.queue.len() < options.buffer_messages && self.bytes + size <= options.buffer_bytes
    }

    /// The batch of the first `count` messages failed: they are sent again.
    fn failed(&mut self, count: usize) {
        self.in_flight = 0;
        self.attempted = self.attempted.max(count);
    }

    /// The messages at the front that dropping the oldest must skip: the
    /// batch in flight, and those sent before in a batch that failed.
    fn protected(&self) -> usize {
        self.in_flight.max(self.attempted)
    }

    /// Whether a message of `size` bytes would fit once every message not
    /// protected is gone.
    fn could_fit(&self, size: usize, options: &RedisOptions) -> bool {
        let protected = self.protected();
        let bytes: usize = self
            .queue
            .iter()
            .take(protected)
            .map(|p| p.payload.len())
            .sum();
        protected < options.buffer_messages && bytes + size <= options.buffer_bytes
    }
}

#[derive(Default)]
struct Pending {
    /// Channels whose subscription may have to change.
    changed: Vec<String>,
    /// Bumped with every change.
    generation: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
    duplicates: AtomicU64,
    reconnects: AtomicU64,
}

pub(crate) struct Link {
    client: Client,
    pub options: RedisOptions,
    pub server_id: String,
    state: watch::Sender<State>,
    routes: RwLock<HashMap<String, Route>>,
    pending: Mutex<Pending>,
    applied: watch::Sender<u64>,
    nudge: Notify,
    outbox: Mutex<Outbox>,
    outbox_ready: Notify,
    seq: AtomicU64,
    /// The last sequence number seen from each other server, per lane
    /// (see [`Link::lane`]).
    seen: Mutex<HashMap<String, HashMap<u16, u64>>>,
    /// Other live servers, as of the last heartbeat.
    pub peers: Mutex<HashSet<String>>,
    /// On a cluster: how many times this server's subscriptions were made
    /// complete on a new connection, published in the registry. A shard
    /// that fails takes neither the registry nor the other servers'
    /// registrations with it, so "registered" cannot mean "subscribed
    /// again"; a higher epoch does.
    pub subscribed: AtomicU64,
    /// The other servers' epochs, as of the last heartbeat.
    pub peer_epochs: Mutex<HashMap<String, u64>>,
    /// `peer_epochs` when the link last went down.
    epochs_before_outage: Mutex<HashMap<String, u64>>,
    counters: Counters,
    /// When the state last changed, in milliseconds since the Unix epoch.
    since: AtomicU64,
    /// Hubs to tell about a reconnect (they resynchronize presence).
    pub hubs: Mutex<Vec<Weak<HubCore>>>,
    pub stop: CancellationToken,
}

/// The registry keys (process-wide, under the channel prefix). On a
/// cluster they share a hash tag, so that one pipeline may touch both.
pub(crate) fn servers_key(options: &RedisOptions) -> String {
    registry_key(options, "servers")
}

pub(crate) fn addresses_key(options: &RedisOptions) -> String {
    registry_key(options, "addresses")
}

/// On a cluster: each server's subscription epoch (see
/// [`Link::subscribed`]).
pub(crate) fn epochs_key(options: &RedisOptions) -> String {
    registry_key(options, "epochs")
}

fn registry_key(options: &RedisOptions, name: &str) -> String {
    let prefix = &options.channel_prefix;
    if options.cluster {
        format!("{{{prefix}tidings}}:{name}")
    } else {
        format!("{prefix}tidings:{name}")
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Link {
    pub(crate) fn new(client: Client, options: RedisOptions, server_id: String) -> Arc<Self> {
        Arc::new(Link {
            client,
            options,
            server_id,
            state: watch::Sender::new(State::Down),
            routes: RwLock::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            applied: watch::Sender::new(0),
            nudge: Notify::new(),
            outbox: Mutex::new(Outbox::default()),
            outbox_ready: Notify::new(),
            seq: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashSet::new()),
            subscribed: AtomicU64::new(0),
            peer_epochs: Mutex::new(HashMap::new()),
            epochs_before_outage: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            since: AtomicU64::new(now_ms()),
            hubs: Mutex::new(Vec::new()),
            stop: Default::default(),
        })
    }

    /// Starts the supervisor and the publisher.
    pub(crate) fn start(self: &Arc<Self>) {
        tokio::spawn(supervise(Arc::clone(self)));
        tokio::spawn(publish_loop(Arc::clone(self)));
    }

    pub(crate) fn stats(&self) -> BackplaneStats {
        let c = &self.counters;
        BackplaneStats {
            published: c.published.load(Ordering::Relaxed),
            buffered: lock(&self.outbox).queue.len() as u64,
            dropped: c.dropped.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            connected: self.connection().is_some(),
            since: Some(UNIX_EPOCH + Duration::from_millis(self.since.load(Ordering::Relaxed))),
        }
    }

    /// The connection, if the link is up now.
    pub(crate) fn connection(&self) -> Option<Connection> {
        match &*self.state.borrow() {
            State::Up { connection, .. } => Some(connection.clone()),
            State::Down => None,
        }
    }

    pub(crate) fn subscribe_state(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// Waits until the link is up (or `wait` passed).
    pub(crate) async fn wait_up(&self, wait: Duration) -> bool {
        let mut state = self.state.subscribe();
        timeout(wait, state.wait_for(|s| matches!(s, State::Up { .. })))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The next publish sequence number.
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Makes `channel` wanted (true) or not (false) and returns the change's
    /// generation, for [`wait_applied`](Self::wait_applied). Callers that
    /// must order changes of one channel hold their own lock around it.
    pub(crate) fn want(&self, channel: String, route: Option<Route>) -> u64 {
        {
            let mut routes = self.routes.write();
            match route {
                Some(route) => {
                    routes.insert(channel.clone(), route);
                }
                None => {
                    routes.remove(&channel);
                }
            }
        }
        let generation = {
            let mut pending = lock(&self.pending);
            pending.changed.push(channel);
            pending.generation += 1;
            pending.generation
        };
        self.nudge.notify_one();
        generation
    }

    pub(crate) fn is_wanted(&self, channel: &str) -> bool {
        self.routes.read().contains_key(channel)
    }

    /// Waits until the subscription changes up to `generation` reached
    /// Redis. Returns at once while the link is down (the changes are made
    /// when it is back) and gives up after the command timeout.
    pub(crate) async fn wait_applied(&self, generation: u64) {
        let mut applied = self.applied.subscribe();
        let mut state = self.state.subscribe();
        let _ = timeout(self.options.command_timeout, async {
            loop {
                if *applied.borrow_and_update() >= generation {
                    return;
                }
                if matches!(*state.borrow_and_update(), State::Down) {
                    return;
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    changed = state.changed() => if changed.is_err() { return },
                }
            }
        })
        .await;
    }

    /// Queues a publish; never waits. When the outbox is full the drop
    /// policy makes room (dropping the oldest) or refuses this message;
    /// returns false if this message was dropped. Every drop is counted.
    ///
    /// `encode` makes the payload from the publish's sequence number, which
    /// is taken under the outbox's lock: publishes are queued in the order
    /// of their numbers. (Taken before the lock, two tasks could queue N+1
    /// ahead of N, and receivers, which drop a number at or below the last
    /// one they saw as a duplicate, would lose N without counting it lost.)
    pub(crate) fn publish(&self, channel: String, encode: impl FnOnce(u64) -> Bytes) -> bool {
        let options = &self.options;
        let mut outbox = lock(&self.outbox);
        let payload = encode(self.next_seq());
        let mut dropped = 0;
        let accepted = if outbox.fits(payload.len(), options) {
            true
        } else {
            match options.drop_policy {
                DropPolicy::DropNewest => false,
                DropPolicy::DropOldest if outbox.could_fit(payload.len(), options) => {
                    while !outbox.fits(payload.len(), options) {
                        let oldest = outbox.protected();
                        let Some(old) = outbox.queue.remove(oldest) else {
                            break;
                        };
                        outbox.bytes -= old.payload.len();
                        dropped += 1;
                    }
                    true
                }
                // Larger than the room the batch in flight leaves: making
                // room would not help.
                DropPolicy::DropOldest => false,
            }
        };
        if accepted {
            outbox.bytes += payload.len();
            outbox.queue.push_back(Publish { channel, payload });
        } else {
            dropped += 1;
        }
        let waiting = outbox.queue.len();
        drop(outbox);
        if let Some(metrics) = &options.metrics {
            metrics.set_buffered(waiting as u64);
        }
        if dropped > 0 {
            self.count_dropped(dropped);
        }
        if accepted {
            self.outbox_ready.notify_one();
        }
        accepted
    }

    fn count_dropped(&self, dropped: u64) {
        if let Some(metrics) = &self.options.metrics {
            metrics.dropped(dropped);
        }
        let before = self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        let total = before + dropped;
        // One line per burst, not one per message: when the total reaches
        // a power of two or another thousand.
        if (before + 1).next_power_of_two() <= total || total / 1000 > before / 1000 {
            tracing::warn!(
                dropped = total,
                policy = ?self.options.drop_policy,
                limit_messages = self.options.buffer_messages,
                limit_bytes = self.options.buffer_bytes,
                "backplane outbox full; cross-server messages dropped"
            );
        }
    }

    /// The lane of a channel: the unit within which one server's messages
    /// arrive in the order it published them. A single node delivers
    /// everything over one connection (one lane); a cluster delivers each
    /// shard's messages over a connection of its own, so messages of
    /// different slots may overtake each other.
    pub(crate) fn lane(&self, channel: &str) -> u16 {
        if self.options.cluster {
            slot(channel)
        } else {
            0
        }
    }

    /// This server's last publish number, and the last number taken in from
    /// every other server, per lane (a handover's position).
    pub(crate) fn position(&self) -> (u64, crate::handover::Seen) {
        (self.seq.load(Ordering::Acquire), lock(&self.seen).clone())
    }

    /// Whether a message from `origin` numbered `seq` is new in its lane;
    /// records it.
    fn fresh(&self, origin: &str, lane: u16, seq: u64) -> bool {
        let mut seen = lock(&self.seen);
        let lanes = match seen.get_mut(origin) {
            Some(lanes) => lanes,
            None => seen.entry(origin.to_owned()).or_default(),
        };
        let last = lanes.entry(lane).or_insert(0);
        if *last >= seq {
            return false;
        }
        *last = seq;
        true
    }

    /// Filters received envelopes: not from this server, not seen before.
    pub(crate) fn accept(&self, origin: Option<&str>, seq: Option<u64>, lane: u16) -> bool {
        match (origin, seq) {
            (Some(origin), _) if origin == self.server_id => false,
            (Some(origin), Some(seq)) => {
                let fresh = self.fresh(origin, lane, seq);
                if !fresh {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                fresh
            }
            _ => true,
        }
    }

    fn route(&self, channel: &str) -> Option<Route> {
        self.routes.read().get(channel).cloned()
    }

    fn set_state(&self, state: State) {
        self.since.store(now_ms(), Ordering::Relaxed);
        if let Some(metrics) = &self.options.metrics {
            metrics.set_connected(matches!(state, State::Up { .. }));
        }
        self.state.send_replace(state);
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    mutex.lock()
}

/// Connects, subscribes, registers; keeps subscriptions in line with what
/// is wanted; starts over when the connection breaks.
async fn supervise(link: Arc<Link>) {
    let mut backoff = link.options.reconnect_min;
    let mut epoch = 0u64;
    while !link.stop.is_cancelled() {
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let connected = timeout(
            link.options.command_timeout,
            link.client.connect(push_tx, link.options.command_timeout),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "connecting timed out",
            )))
        });
        let mut connection = match connected {
            Ok(connection) => connection,
            Err(error) => {
                // An error reply (a password refused, a server still
                // loading) is paced by the backoff. Otherwise Redis did not
                // answer at all: trying again costs it nothing, and every
                // cross-server message waits until it is back, so try
                // often enough to be back promptly.
                let answered = error.code().is_some()
                    || error.kind() == redis::ErrorKind::AuthenticationFailed;
                tracing::debug!(%error, answered, "cannot connect to Redis; retrying");
                let cap = if answered {
                    link.options.reconnect_max
                } else {
                    link.options.reconnect_probe
                };
                wait_backoff(&link, &mut backoff, cap).await;
                continue;
            }
        };
        let broken = Arc::new(Notify::new());
        tokio::spawn(receive(Arc::clone(&link), push_rx, Arc::clone(&broken)));
        let mut subscribed = HashSet::new();
        let generation = {
            let mut pending = lock(&link.pending);
            pending.changed.clear();
            pending.generation
        };
        let wanted: Vec<String> = link.routes.read().keys().cloned().collect();
        link.subscribed.store(epoch + 1, Ordering::Relaxed);
        let ready = async {
            for chunk in wanted.chunks(512) {
                connection.subscribe(chunk).await?;
                subscribed.extend(chunk.iter().cloned());
            }
            register(&link, &mut connection).await
        };
        if let Err(error) = ready.await {
            tracing::warn!(%error, "Redis connection failed while subscribing; retrying");
            wait_backoff(&link, &mut backoff, link.options.reconnect_max).await;
            continue;
        }
        epoch += 1;
        if epoch > 1 {
            link.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                channels = subscribed.len(),
                "reconnected to Redis; subscriptions restored"
            );
        } else {
            tracing::info!(server_id = %link.server_id, "connected to Redis");
        }
        backoff = link.options.reconnect_min;
        link.set_state(State::Up {
            connection: connection.clone(),
            epoch,
        });
        link.applied.send_replace(generation);
        if epoch > 1 {
            let hubs: Vec<_> = lock(&link.hubs).iter().filter_map(Weak::upgrade).collect();
            for hub in hubs {
                tokio::spawn(async move { hub.resynchronize().await });
            }
        }
        // Up: apply subscription changes until the connection breaks.
        loop {
            tokio::select! {
                () = broken.notified() => break,
                () = link.nudge.notified() => {}
                () = link.stop.cancelled() => return,
            }
            let (changed, generation) = {
                let mut pending = lock(&link.pending);
                (std::mem::take(&mut pending.changed), pending.generation)
            };
            let mut add = Vec::new();
            let mut remove = Vec::new();
            let mut seen = HashSet::new();
            for channel in changed {
                if !seen.insert(channel.clone()) {
                    continue;
                }
                match (link.is_wanted(&channel), subscribed.contains(&channel)) {
                    (true, false) => add.push(channel),
                    (false, true) => remove.push(channel),
                    _ => {}
                }
            }
            let result = async {
                if !add.is_empty() {
                    connection.subscribe(&add).await?;
                    subscribed.extend(add);
                }
                if !remove.is_empty() {
                    connection.unsubscribe(&remove).await?;
                    for channel in &remove {
                        subscribed.remove(channel);
                    }
                }
                Ok::<_, redis::RedisError>(())
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(%error, "Redis subscription change failed; reconnecting");
                break;
            }
            link.applied.send_replace(generation);
        }
        link.set_state(State::Down);
        let known = lock(&link.peer_epochs).clone();
        *lock(&link.epochs_before_outage) = known;
        tracing::warn!(
            "lost the connection to Redis; local delivery continues, cross-server messages are buffered"
        );
        wait_backoff(&link, &mut backoff, link.options.reconnect_max).await;
    }
}

/// Waits the current backoff, at most `cap`, and doubles the backoff.
async fn wait_backoff(link: &Link, backoff: &mut Duration, cap: Duration) {
    // Jitter keeps a fleet of servers from reconnecting in lockstep.
    let jitter = rand::random::<f64>() * 0.5 + 0.5;
    let wait = (*backoff).min(cap).mul_f64(jitter);
    tokio::select! {
        () = sleep(wait) => {}
        () = link.stop.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(link.options.reconnect_max);
}

/// Registers this server (address and liveness) in the registry.
pub(crate) async fn register(link: &Link, connection: &mut Connection) -> redis::RedisResult<()> {
    // A server that left stays unregistered.
    if link.stop.is_cancelled() {
        return Ok(());
    }
    let expires = now_ms() + link.options.server_ttl.as_millis() as u64;
    let mut pipe = redis::pipe();
    pipe.zadd(servers_key(&link.options), &link.server_id, expires)
        .ignore();
    if let Some(address) = &link.options.advertise {
        pipe.hset(addresses_key(&link.options), &link.server_id, address)
            .ignore();
    }
    if link.options.cluster {
        let epoch = link.subscribed.load(Ordering::Relaxed);
        pipe.hset(epochs_key(&link.options), &link.server_id, epoch)
            .ignore();
    }
    pipe.exec_async(connection).await
}

/// Reads one connection's pushed messages until it breaks.
async fn receive(
    link: Arc<Link>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    broken: Arc<Notify>,
) {
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                    continue;
                };
                let (Some(channel), Some(payload)) = (text(channel), bytes(payload)) else {
                    continue;
                };
                let Some(route) = link.route(&channel) else {
                    // Unsubscribed meanwhile.
                    continue;
                };
                let Some(hub) = route.hub.upgrade() else {
                    continue;
                };
                link.counters.received.fetch_add(1, Ordering::Relaxed);
                if let Some(metrics) = &link.options.metrics {
                    metrics.received();
                }
                hub.receive(&route.kind, &payload, link.lane(&channel));
            }
            PushKind::Disconnection => break,
            _ => {}
        }
    }
    broken.notify_one();
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// Largest pipeline the publisher sends at once.
const BATCH_MESSAGES: usize = 256;
const BATCH_BYTES: usize = 1 << 20;

async fn publish_loop(link: Arc<Link>) {
    let mut state = link.subscribe_state();
    let mut last_epoch = 0;
    loop {
        // Something to send?
        let ready = link.outbox_ready.notified();
        if lock(&link.outbox).queue.is_empty() {
            tokio::select! {
                () = ready => {}
                () = link.stop.cancelled() => return,
            }
            continue;
        }
        // A connection to send it on?
        let (mut connection, epoch) = {
            let up = tokio::select! {
                up = state.wait_for(|s| matches!(s, State::Up { .. })) => up.map(|s| s.clone()),
                () = link.stop.cancelled() => return,
            };
            match up {
                Ok(State::Up { connection, epoch }) => (connection, epoch),
                _ => return,
            }
        };
        if epoch != last_epoch {
            // Epoch 1 is the first connection; any later one follows a
            // failure, after which the other servers may still be
            // re-subscribing.
            if epoch > 1 {
                wait_for_peers(&link, &mut connection).await;
            }
            last_epoch = epoch;
        }
        let (mut pipe, count) = {
            let mut outbox = lock(&link.outbox);
            let mut pipe = redis::pipe();
            let mut count = 0;
            let mut size = 0;
            let command = connection.publish_command();
            // On a cluster a pipeline goes to one node, so a batch holds
            // only messages of one slot: the run at the front of the
            // outbox. Runs are sent one after the other, each once the
            // previous one was accepted: one server's messages leave in
            // order across shards (they may still arrive out of order, over
            // the receivers' separate shard connections).
            let lane = outbox.queue.front().map(|p| link.lane(&p.channel));
            // The durability mode logs every publish before it goes out:
            // what a dead server's connections were sent while no server
            // received for them (see the `durable` module).
            let log = link.options.durable.map(|retention| {
                let oldest = now_ms()
                    .saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
                (
                    crate::durable::log_key(&link.options, &link.server_id),
                    oldest,
                    retention,
                )
            });
            for publish in outbox.queue.iter() {
                if count == BATCH_MESSAGES || (count > 0 && size >= BATCH_BYTES) {
                    break;
                }
                if count > 0 && Some(link.lane(&publish.channel)) != lane {
                    break;
                }
                if let Some((key, oldest, _)) = &log {
                    pipe.cmd("XADD")
                        .arg(key)
                        .arg("MINID")
                        .arg("~")
                        .arg(*oldest)
                        .arg("*")
                        .arg("c")
                        .arg(&publish.channel)
                        .arg("p")
                        .arg(publish.payload.as_ref())
                        .ignore();
                }
                pipe.cmd(command)
                    .arg(&publish.channel)
                    .arg(publish.payload.as_ref())
                    .ignore();
                count += 1;
                size += publish.payload.len();
            }
            if let Some((key, _, retention)) = &log
                && count > 0
            {
                let logs = crate::durable::logs_key(&link.options);
                pipe.cmd("ZADD")
                    .arg(&logs)
                    .arg(now_ms())
                    .arg(&link.server_id)
                    .ignore();
                // Servers whose last publish left the retention window.
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(&logs)
                    .arg("-inf")
                    .arg(format!("({}", log.as_ref().map_or(0, |l| l.1)))
                    .ignore();
                pipe.pexpire(
                    key,
                    i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
                )
                .ignore();
            }
            outbox.in_flight = count;
            (pipe, count)
        };
        let sent = timeout(
            link.options.command_timeout,
            pipe.exec_async(&mut connection),
        )
        .await;
        match sent {
            Ok(Ok(())) => {
                let mut outbox = lock(&link.outbox);
                outbox.in_flight = 0;
                outbox.attempted = outbox.attempted.saturating_sub(count);
                for _ in 0..count {
                    if let Some(publish) = outbox.queue.pop_front() {
                        outbox.bytes -= publish.payload.len();
                    }
                }
                let waiting = outbox.queue.len();
                drop(outbox);
                if let Some(metrics) = &link.options.metrics {
                    for _ in 0..count {
                        metrics.published();
                    }
                    metrics.set_buffered(waiting as u64);
                }
                link.counters
                    .published
                    .fetch_add(count as u64, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                lock(&link.outbox).failed(count);
                tracing::debug!(%error, "publish failed; kept for after the reconnect");
                wait_for_new_epoch(&link, &mut state, epoch).await;
            }
            Err(_) => {
                lock(&link.outbox).failed(count);
                tracing::debug!("publish timed out; kept for after the reconnect");
                wait_for_new_epoch(&link, &mut state, epoch).await;
            }
        }
        pipe.clear();
    }
}

/// After a failed publish: wait until the supervisor has a new connection
/// (or, if this one was fine after all, a short pause before retrying).
async fn wait_for_new_epoch(link: &Link, state: &mut watch::Receiver<State>, epoch: u64) {
    let newer = state.wait_for(|s| match s {
        State::Up { epoch: e, .. } => *e != epoch,
        State::Down => false,
    });
    tokio::select! {
        _ = newer => {}
        () = sleep(link.options.reconnect_max) => {}
        () = link.stop.cancelled() => {}
    }
}

/// After a reconnect: wait until every server known before is registered
/// again (and so subscribed), or the grace period passed. On a cluster,
/// until each has a higher subscription epoch than before the outage: a
/// failed shard leaves registrations on the other shards in place.
async fn wait_for_peers(link: &Link, connection: &mut Connection) {
    let known: HashSet<String> = lock(&link.peers).clone();
    tracing::debug!(
        peers = known.len(),
        "waiting for the other servers to re-subscribe"
    );
    if known.is_empty() {
        return;
    }
    let before = lock(&link.epochs_before_outage).clone();
    let deadline = Instant::now() + link.options.resubscribe_grace;
    let key = servers_key(&link.options);
    while Instant::now() < deadline {
        let ready = if link.options.cluster {
            redis::cmd("HGETALL")
                .arg(epochs_key(&link.options))
                .query_async::<HashMap<String, u64>>(connection)
                .await
                .map(|now| {
                    known.iter().all(|k| {
                        now.get(k).copied().unwrap_or(0) > before.get(k).copied().unwrap_or(0)
                    })
                })
        } else {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(now_ms())
                .arg("+inf")
                .query_async::<Vec<String>>(connection)
                .await
                .map(|live| known.iter().all(|k| live.contains(k)))
        };
        match ready {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => return,
        }
        sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(
        "not every server re-registered within the resubscribe grace; publishing anyway"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(messages: usize) -> Outbox {
        let mut outbox = Outbox::default();
        for i in 0..messages {
            outbox.queue.push_back(Publish {
                channel: format!("c{i}"),
                payload: Bytes::from_static(b"0123456789"),
            });
            outbox.bytes += 10;
        }
        outbox
    }

    #[test]
    fn a_batch_that_failed_is_never_dropped() {
        let options = RedisOptions::new("redis://127.0.0.1").buffer(4, 1 << 20);
        let mut outbox = outbox(4);
        outbox.in_flight = 3;
        assert_eq!(outbox.protected(), 3);
        // Redis went away mid-batch: some of it may have been published.
        outbox.failed(3);
        assert_eq!(outbox.in_flight, 0);
        assert_eq!(outbox.protected(), 3, "still protected after the failure");
        assert!(outbox.could_fit(10, &options), "the fourth may go");
        outbox.attempted = 4;
        assert!(!outbox.could_fit(10, &options), "nothing may go");
    }
}
