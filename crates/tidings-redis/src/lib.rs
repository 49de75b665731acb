//! # tidings-redis
//!
//! A Redis backplane for [tidings]: several tidings servers behind
//! a load balancer act as one. A message to all clients, a group, a user or
//! one connection reaches it on whichever server it is connected to; group
//! membership works for connections of any server; client results reach a
//! connection elsewhere; presence queries answer for the whole cluster.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tidings::Server;
//! use tidings_redis::{RedisBackplane, RedisOptions};
//! # struct Chat;
//! # #[tidings::hub] impl Chat { async fn ping(&self) {} }
//!
//! // The address the other servers reach this one at (no sticky sessions).
//! let options = RedisOptions::new("redis://127.0.0.1:6379").advertise("10.0.0.1:5000");
//! let backplane = Arc::new(RedisBackplane::connect(options).await?);
//! let server = Server::builder()
//!     .backplane(backplane)
//!     // Every server uses the same name for the same hub.
//!     .hub_with("/hubs/chat", Chat, |hub| hub.name("MyApp.ChatHub"))
//!     .build();
//! # let _ = server; Ok(()) }
//! ```
//!
//! Given once to the server, the backplane is both each hub's lifetime
//! manager and the forwarding between servers ([`tidings::Backplane`]).
//! [`RedisBackplane::connect`] waits for Redis; [`RedisBackplane::start`]
//! does not (the server then starts while Redis is away).
//!
//! ## Wire format
//!
//! The channels and payloads are those of ASP.NET Core's
//! `Microsoft.AspNetCore.SignalR.StackExchangeRedis` (`{prefix}{hub}:all`,
//! `:connection:{id}`, `:group:{name}`, `:user:{id}`, `:internal:groups`,
//! `:internal:ack:{server}`, `:internal:return:{server}`; MessagePack
//! envelopes carrying the message pre-serialized in every protocol), so a
//! tidings server and an ASP.NET Core server configured with the same hub
//! name and prefix can share one backplane. tidings adds a trailing
//! extension item that ASP.NET Core ignores (see the `wire` module), and
//! its own keys for presence and the server registry.
//!
//! ## Redis Cluster
//!
//! [`RedisOptions::cluster`] connects to a Redis Cluster (Redis 7 or
//! later) through any of its nodes:
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tidings_redis::{RedisBackplane, RedisOptions};
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let options = RedisOptions::cluster(["redis://10.0.0.9:7000", "redis://10.0.0.10:7000"]);
//! let backplane = RedisBackplane::connect(options).await?;
//! # let _ = backplane; Ok::<_, Box<dyn std::error::Error>>(()) })?;
//! # Ok(()) }
//! ```
//!
//! Channel messages then travel by sharded pub/sub (`SPUBLISH`,
//! `SSUBSCRIBE`): each reaches only the shard owning its channel's hash
//! slot, not every node. The channel names are unchanged and spread over
//! the shards; keys used together share a hash tag (one hub's presence
//! keys `{<prefix><hub>}:presence…`, which they do on a single node too,
//! and the server registry, `{<prefix>tidings}:servers` and `:addresses`
//! instead of `<prefix>tidings:…`).
//!
//! Ordering is weaker than on a single node: one server's messages on one
//! channel (or any channels of one slot) arrive in the order it sent them,
//! but messages for channels of different shards reach a receiver over
//! different connections, so under load a later one may overtake an
//! earlier one. The publisher narrows this: runs of one slot are
//! pipelined, and the next slot's run is published only once the previous
//! run was accepted. After a shard fails, buffered messages wait until the
//! other servers have subscribed again on a new connection (a subscription
//! epoch in the registry), as after a single node's restart.
//!
//! ## When Redis fails
//!
//! Local delivery never waits for Redis. Cross-server messages go through a
//! bounded outbox ([`RedisOptions::buffer`]); while Redis is away they wait
//! there, and are published after the reconnect, once the other servers are
//! back and subscribed. While Redis cannot be reached at all the backplane
//! tries again every [probe interval](RedisOptions::reconnect_probe), so it
//! is back within about that long after Redis is. When the outbox is full,
//! the [`DropPolicy`] says which message goes (by default the oldest); every
//! message dropped is counted ([`BackplaneStats::dropped`], and the
//! registry's `tidings_backplane_messages_dropped_total`) and logged. A
//! message published again after a failure is recognised by its sequence
//! number and delivered once.
//!
//! ## Presence
//!
//! Each server keeps its connections, users and groups in Redis hashes and
//! sets, tagged with its server id; a server whose heartbeat stops is
//! purged by the others.
//!
//! ## When a server crashes: the durability mode
//!
//! A server shutting down hands its stateful-reconnect connections over to
//! another server ([`tidings::Handover`]). A server that crashes cannot;
//! with [`RedisOptions::durable`] it need not. Each stateful connection's
//! numbered messages are recorded in a Redis stream before they are
//! written to its socket, and every publish is appended to the publishing
//! server's log, both kept for the retention. The server a client
//! re-attaches to after a crash claims the connection, replays the record
//! under the original numbers and adds what the logs hold that the dead
//! server had not delivered: every message exactly once. Each message to
//! such a connection then costs a Redis write before it is sent
//! (BENCHMARKS.md, "Durability mode: what it costs"); a single Redis node
//! only.
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tidings_redis::RedisOptions;
//!
//! let options = RedisOptions::new("redis://127.0.0.1:6379")
//!     .advertise("10.0.0.1:5000")
//!     .durable(Duration::from_secs(60));
//! # let _ = options; Ok(()) }
//! ```

mod connection;
mod durable;
mod handover;
mod link;
mod manager;
mod presence;
mod wire;

use std::{collections::HashMap, sync::Arc, time::Duration};

use tidings::{Backplane, BoxFuture, Cluster, LifetimeManager, metrics::BackplaneMetrics};
use tokio::time::{Instant, sleep};

pub use link::BackplaneStats;
pub use manager::RedisLifetimeManager;

use crate::{
    connection::Client,
    link::{Link, addresses_key, epochs_key, lock, now_ms, servers_key},
};

/// Settings of a [`RedisBackplane`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// One URL for a single node; the seed nodes of a cluster.
    urls: Vec<String>,
    pub(crate) cluster: bool,
    pub(crate) channel_prefix: String,
    pub(crate) advertise: Option<String>,
    pub(crate) buffer_messages: usize,
    pub(crate) buffer_bytes: usize,
    pub(crate) drop_policy: DropPolicy,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_probe: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) ack_timeout: Duration,
    pub(crate) resubscribe_grace: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) server_ttl: Duration,
    pub(crate) metrics: Option<BackplaneMetrics>,
    pub(crate) durable: Option<Duration>,
}

impl RedisOptions {
    /// Default message count of [`buffer`](Self::buffer).
    pub const DEFAULT_BUFFER_MESSAGES: usize = 10_000;
    /// Default byte count of [`buffer`](Self::buffer).
    pub const DEFAULT_BUFFER_BYTES: usize = 32 << 20;
    /// Default period of [`heartbeat`](Self::heartbeat).
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
    /// Default of [`reconnect_probe`](Self::reconnect_probe).
    pub const DEFAULT_RECONNECT_PROBE: Duration = Duration::from_millis(250);

    /// Settings for the Redis server at `url` (`redis://host:port/db`,
    /// `rediss://` for TLS is not built in), with the defaults below.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            urls: vec![url.into()],
            cluster: false,
            channel_prefix: String::new(),
            advertise: None,
            buffer_messages: Self::DEFAULT_BUFFER_MESSAGES,
            buffer_bytes: Self::DEFAULT_BUFFER_BYTES,
            drop_policy: DropPolicy::default(),
            reconnect_min: Duration::from_millis(100),
            reconnect_probe: Self::DEFAULT_RECONNECT_PROBE,
            reconnect_max: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(30),
            resubscribe_grace: Duration::from_secs(5),
            heartbeat: Self::DEFAULT_HEARTBEAT,
            server_ttl: Duration::from_secs(10),
            metrics: None,
            durable: None,
        }
    }

    /// Settings for a Redis Cluster, reached first through any of
    /// `nodes` (`redis://host:port` each; the others are discovered), with
    /// the defaults of [`new`](Self::new).
    ///
    /// Channel messages then use sharded pub/sub (`SPUBLISH`,
    /// `SSUBSCRIBE`): a message goes only to the shard that owns its
    /// channel's hash slot, instead of to every node over the cluster bus,
    /// so pub/sub traffic grows with the shards. The channel names are
    /// those of a single node and are spread over the shards by their
    /// slots; keys read or written together (one hub's presence, the
    /// server registry) share a hash tag. Order is kept per slot only:
    /// messages of different shards travel over different connections (see
    /// the crate documentation). Redis 7 or later is needed.
    pub fn cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisOptions {
            urls: nodes.into_iter().map(Into::into).collect(),
            cluster: true,
            ..RedisOptions::new(String::new())
        }
    }

    /// Whether these settings are for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Prepended verbatim to every channel and key (StackExchange.Redis's
    /// `ChannelPrefix`): applications sharing one Redis stay apart.
    pub fn channel_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.channel_prefix = prefix.into();
        self
    }

    /// The address (`host:port`) other servers use to reach this one,
    /// published in the server registry.
    pub fn advertise(mut self, address: impl Into<String>) -> Self {
        self.advertise = Some(address.into());
        self
    }

    /// Bounds the outbox of cross-server messages waiting for Redis, in
    /// messages and bytes (default 10 000 and 32 MiB).
    pub fn buffer(mut self, messages: usize, bytes: usize) -> Self {
        self.buffer_messages = messages;
        self.buffer_bytes = bytes;
        self
    }

    /// The durability mode: stateful-reconnect connections survive the
    /// crash of their server (`kill -9`, a lost machine). Their numbered
    /// messages are recorded in Redis before they are written, and every
    /// message a server publishes is logged, for `retention`; a client
    /// whose server died resumes on another server with every message
    /// exactly once, provided it comes back within `retention` (and the
    /// reconnect window of its client). Off by default: each message to
    /// such a connection then costs a Redis write before it is sent. A
    /// single Redis node only (refused with [`cluster`](Self::cluster)).
    /// Memory in Redis: each server's publishes of the last `retention`,
    /// plus each stateful connection's unacknowledged messages.
    pub fn durable(mut self, retention: Duration) -> Self {
        self.durable = Some(retention);
        self
    }

    /// Which message goes when the outbox is full (default
    /// [`DropPolicy::DropOldest`]).
    pub fn drop_policy(mut self, policy: DropPolicy) -> Self {
        self.drop_policy = policy;
        self
    }

    /// The reconnect backoff: the first wait, doubled up to `max`
    /// (default 100 ms to 5 s), with jitter. It paces attempts that Redis
    /// answered but that failed (subscribing, registering, an error reply);
    /// while Redis cannot be reached at all, the
    /// [probe interval](Self::reconnect_probe) applies instead.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// While Redis cannot be reached (connection refused, unreachable,
    /// timed out), the longest wait between two connection attempts
    /// (default 250 ms, with jitter). A refused connection costs Redis
    /// nothing, and every message sent meanwhile waits in the outbox: a
    /// short interval brings the backplane back within about this long
    /// after Redis accepts connections again.
    pub fn reconnect_probe(mut self, interval: Duration) -> Self {
        self.reconnect_probe = interval;
        self
    }

    /// Limit of one Redis command and of a connection attempt (default 5 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long a group change of another server's connection waits for
    /// that server's acknowledgement (default 30 s, as in ASP.NET Core).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// After a reconnect, how long buffered messages wait for the other
    /// servers to re-subscribe before they are published (default 5 s).
    pub fn resubscribe_grace(mut self, grace: Duration) -> Self {
        self.resubscribe_grace = grace;
        self
    }

    /// How often the server renews its registration, and after how long
    /// without renewal it is considered gone and its presence entries are
    /// purged (default 2 s and 10 s).
    pub fn heartbeat(mut self, every: Duration, ttl: Duration) -> Self {
        self.heartbeat = every;
        self.server_ttl = ttl.max(every * 2);
        self
    }
}

impl RedisOptions {
    /// Also counts into a metrics registry's backplane metrics (published,
    /// received, buffered, dropped, connected), besides
    /// [`RedisBackplane::stats`].
    pub fn metrics(mut self, metrics: BackplaneMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// Which cross-server message is dropped when the outbox is full (Redis
/// away, or slower than the traffic). Either way the drop is counted and
/// logged.
///
/// ASP.NET Core's Redis backplane keeps no outbox: a send fails while Redis
/// is away. tidings keeps local delivery going and buffers for the other
/// servers; this policy says what the bound costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DropPolicy {
    /// Make room by dropping the oldest waiting message (one not already
    /// being sent). What arrives after the outage is the most recent
    /// traffic: the freshest state, which is what real-time applications
    /// usually want: messages sent late in the outage, or after Redis is
    /// back but before the backplane is, are kept over older ones.
    #[default]
    DropOldest,
    /// Refuse the new message: what arrives after the outage is the start
    /// of it, in full, and nothing sent past the bound.
    DropNewest,
}

/// Why the backplane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackplaneError {
    /// The Redis URL is not usable.
    #[error("invalid Redis URL: {0}")]
    Url(String),
    /// [`RedisBackplane::connect`] could not connect and subscribe within
    /// the command timeout.
    #[error("Redis did not answer within {0:?}")]
    Unreachable(Duration),
}

/// A connection to Redis shared by the hubs of one server.
///
/// Create one per process with [`connect`](Self::connect) (or
/// [`start`](Self::start)) and give it to
/// [`ServerBuilder::backplane`](tidings::ServerBuilder::backplane): every
/// hub then gets its [`RedisLifetimeManager`] and the server forwards the
/// requests of connections held by other servers. Dropping the backplane
/// stops its background tasks.
pub struct RedisBackplane {
    link: Arc<Link>,
    /// Addresses of other servers, as last read from the registry.
    addresses: parking_lot::Mutex<HashMap<String, (String, Instant)>>,
}

/// How long a server address read from the registry is used without
/// asking again.
const ADDRESS_FRESHNESS: Duration = Duration::from_secs(5);

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("server_id", &self.link.server_id)
            .finish_non_exhaustive()
    }
}

impl RedisBackplane {
    /// Starts the backplane and waits until it is connected to Redis and
    /// subscribed, up to the [command
    /// timeout](RedisOptions::command_timeout). Once connected, it keeps
    /// reconnecting on its own whenever Redis goes away.
    pub async fn connect(options: RedisOptions) -> Result<Self, BackplaneError> {
        let wait = options.command_timeout;
        let backplane = RedisBackplane::start(options)?;
        if backplane.wait_connected(wait).await {
            Ok(backplane)
        } else {
            // Dropping it stops the attempts.
            Err(BackplaneError::Unreachable(wait))
        }
    }

    /// Starts the backplane without waiting for Redis: it connects in the
    /// background and keeps reconnecting, so a server starts (and serves
    /// its own clients) while Redis is away; [`wait_connected`](Self::wait_connected)
    /// tells when it is up. Must be called inside a Tokio runtime.
    pub fn start(options: RedisOptions) -> Result<Self, BackplaneError> {
        if options.cluster && options.durable.is_some() {
            return Err(BackplaneError::Url(
                "the durability mode needs a single Redis node, not a cluster".to_owned(),
            ));
        }
        let client = if options.cluster {
            if options.urls.is_empty() {
                return Err(BackplaneError::Url(
                    "a Redis Cluster needs at least one node".to_owned(),
                ));
            }
            // Pub/sub pushes and commands share the nodes' connections:
            // RESP3. Few retries inside the client: the backplane has its
            // own reconnect loop and buffer.
            redis::cluster::ClusterClientBuilder::new(options.urls.iter().map(String::as_str))
                .use_protocol(redis::ProtocolVersion::RESP3)
                .retries(2)
                .connection_timeout(options.command_timeout)
                .response_timeout(options.command_timeout)
                .build()
                .map(|client| Client::Cluster(Box::new(client)))
                .map_err(|e| BackplaneError::Url(e.to_string()))?
        } else {
            use redis::IntoConnectionInfo;
            let url = options.urls.first().map_or("", String::as_str);
            let info = url
                .into_connection_info()
                .map_err(|e| BackplaneError::Url(e.to_string()))?;
            // Pub/sub and commands share one multiplexed connection: RESP3.
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let info = info.set_redis_settings(settings);
            redis::Client::open(info)
                .map(Client::Node)
                .map_err(|e| BackplaneError::Url(e.to_string()))?
        };
        let server_id = format!("{:016x}", rand::random::<u64>());
        let link = Link::new(client, options, server_id);
        link.start();
        tokio::spawn(heartbeat(Arc::clone(&link)));
        Ok(RedisBackplane {
            link,
            addresses: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Waits until the backplane is connected and subscribed; false if
    /// that did not happen within `wait`.
    pub async fn wait_connected(&self, wait: Duration) -> bool {
        self.link.wait_up(wait).await
    }

    /// The lifetime manager of one hub. `hub` names the hub on the
    /// backplane (for ASP.NET Core servers sharing it: the hub class's full
    /// .NET name); every server must use the same name for the same hub.
    pub fn lifetime_manager(&self, hub: &str) -> Arc<RedisLifetimeManager> {
        Arc::new(RedisLifetimeManager::new(Arc::clone(&self.link), hub))
    }

    /// This server's id on the backplane (random, per process).
    pub fn server_id(&self) -> &str {
        &self.link.server_id
    }

    /// Waits until every message queued for Redis has been published, for
    /// at most `within`; whether the outbox is empty. A server shutting
    /// down calls it once its connections have ended (or moved to another
    /// server, whose messages it forwards through Redis) and before it
    /// exits.
    pub async fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.link.stats().buffered == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// Leaves the cluster, last thing before the server exits (after
    /// [`flush`](Self::flush)): the backplane stops, and this server's
    /// registration is marked expired, so the other servers forget its
    /// address and purge whatever presence it left at their next
    /// heartbeat, rather than once the registration's time to live is over
    /// (meanwhile a server restarted on the same address would be sent
    /// requests meant for this one).
    pub async fn leave(&self) {
        let connection = self.link.connection();
        self.link.stop.cancel();
        if let Some(mut connection) = connection {
            let marked: redis::RedisResult<()> = redis::cmd("ZADD")
                .arg(servers_key(&self.link.options))
                .arg(0)
                .arg(&self.link.server_id)
                .query_async(&mut connection)
                .await;
            if let Err(error) = marked {
                tracing::debug!(%error, "the registration expires by itself");
            }
        }
    }

    /// The backplane's counters now.
    pub fn stats(&self) -> BackplaneStats {
        self.link.stats()
    }

    /// The advertised address of a live server, from the registry.
    pub async fn server_address(&self, server_id: &str) -> Option<String> {
        let mut connection = self.link.connection()?;
        let expires: Option<u64> = redis::cmd("ZSCORE")
            .arg(servers_key(&self.link.options))
            .arg(server_id)
            .query_async(&mut connection)
            .await
            .ok()?;
        if expires? < now_ms() {
            return None;
        }
        redis::cmd("HGET")
            .arg(addresses_key(&self.link.options))
            .arg(server_id)
            .query_async(&mut connection)
            .await
            .ok()?
    }
}

/// Forwarding between the servers of the backplane: the server id is the
/// backplane's, addresses come from the registry (cached for a few
/// seconds, and used as last known while Redis is away).
/// How long the record of a moved connection lives without being renewed
/// (by another move) or removed (when the connection ends).
const MOVE_RECORD_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// The key of the record of a moved connection: a digest of its token,
/// which is a secret of its client.
fn moved_key(options: &RedisOptions, token: &str) -> String {
    format!(
        "{}tidings:moved:{}",
        options.channel_prefix,
        durable::token_digest(token)
    )
}

impl Cluster for RedisBackplane {
    fn moved<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let mut connection = self.link.connection()?;
            redis::cmd("GET")
                .arg(moved_key(&self.link.options, token))
                .query_async::<Option<String>>(&mut connection)
                .await
                .ok()
                .flatten()
        })
    }

    fn record_move<'a>(&'a self, token: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(mut connection) = self.link.connection() else {
                return;
            };
            let written: redis::RedisResult<()> = redis::cmd("SET")
                .arg(moved_key(&self.link.options, token))
                .arg(&self.link.server_id)
                .arg("EX")
                .arg(MOVE_RECORD_TTL_SECONDS)
                .query_async(&mut connection)
                .await;
            if let Err(error) = written {
                tracing::warn!(%error, "a moved connection was not recorded; its next socket may not find it");
            }
        })
    }

    fn forget_move<'a>(&'a self, token: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(mut connection) = self.link.connection() else {
                return;
            };
            // Only this server's record: the connection may have moved on.
            let script = redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            );
            let _: redis::RedisResult<i64> = script
                .key(moved_key(&self.link.options, token))
                .arg(&self.link.server_id)
                .invoke_async(&mut connection)
                .await;
        })
    }

    fn server_id(&self) -> &str {
        &self.link.server_id
    }

    fn locate<'a>(&'a self, server_id: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let cached = lock(&self.addresses).get(server_id).cloned();
            if let Some((address, read)) = &cached
                && read.elapsed() < ADDRESS_FRESHNESS
            {
                return Some(address.clone());
            }
            if self.link.connection().is_none() {
                return cached.map(|(address, _)| address);
            }
            let address = self.server_address(server_id).await;
            let mut addresses = lock(&self.addresses);
            match &address {
                Some(address) => {
                    addresses.insert(server_id.to_owned(), (address.clone(), Instant::now()));
                }
                None => {
                    addresses.remove(server_id);
                }
            }
            address
        })
    }
}

/// The backplane of a server: each hub's [`RedisLifetimeManager`], and
/// forwarding between the servers.
impl Backplane for RedisBackplane {
    fn lifetime_manager(&self, hub: &str) -> Arc<dyn LifetimeManager> {
        RedisBackplane::lifetime_manager(self, hub)
    }

    fn cluster(self: Arc<Self>) -> Option<Arc<dyn Cluster>> {
        Some(self)
    }
}

impl Drop for RedisBackplane {
    fn drop(&mut self) {
        self.link.stop.cancel();
    }
}

/// Renews this server's registration, learns the live servers, and purges
/// the presence entries of servers whose registration expired.
async fn heartbeat(link: Arc<Link>) {
    // The first beat runs as soon as Redis answers rather than one period
    // later: it is how a server learns the others, and a server that knows
    // none would flush its outbox after an outage without waiting for them
    // to re-subscribe (their clients would miss what it had buffered).
    let mut state = link.subscribe_state();
    tokio::select! {
        _ = state.wait_for(|s| matches!(s, link::State::Up { .. })) => {}
        () = link.stop.cancelled() => return,
    }
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                () = sleep(link.options.heartbeat) => {}
                () = link.stop.cancelled() => return,
            }
        }
        let Some(mut connection) = link.connection() else {
            continue;
        };
        if let Err(error) = link::register(&link, &mut connection).await {
            tracing::debug!(%error, "heartbeat failed");
            continue;
        }
        let key = servers_key(&link.options);
        let now = now_ms();
        let live: redis::RedisResult<Vec<String>> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(now)
            .arg("+inf")
            .query_async(&mut connection)
            .await;
        if let Ok(live) = live {
            *lock(&link.peers) = live.into_iter().filter(|s| *s != link.server_id).collect();
        }
        if link.options.cluster {
            let epochs: redis::RedisResult<HashMap<String, u64>> = redis::cmd("HGETALL")
                .arg(epochs_key(&link.options))
                .query_async(&mut connection)
                .await;
            if let Ok(epochs) = epochs {
                *lock(&link.peer_epochs) = epochs;
            }
        }
        let dead: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({now}"))
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        for server in dead {
            let hubs: Vec<_> = lock(&link.hubs)
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .collect();
            let mut purged = 0;
            for hub in hubs {
                purged += hub
                    .presence
                    .purge(&mut connection, &server)
                    .await
                    .unwrap_or(0);
            }
            tracing::info!(
                server,
                purged,
                "a server stopped renewing its registration; its connections were forgotten"
            );
            let _: redis::RedisResult<()> = redis::pipe()
                .zrem(&key, &server)
                .ignore()
                .hdel(addresses_key(&link.options), &server)
                .ignore()
                .hdel(epochs_key(&link.options), &server)
                .ignore()
                .exec_async(&mut connection)
                .await;
        }
    }
}
