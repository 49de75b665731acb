//! The standalone server's settings: one schema for the command line, the
//! environment and the configuration file (`--config tidings.toml`).
//!
//! Each setting is one field of [`Settings`]: its doc comment is the
//! `--help` text, its `#[arg]` the flag and the single-level environment
//! variable, its field name (under its section) the file key, and its
//! default is taken from the library (`HubOptions::DEFAULT_…` and the
//! like) wherever the library has one. The file adds what only a file can
//! say: serverless hubs, their upstreams, transports per hub.
//!
//! Layers, lowest first (merged with `figment`):
//!
//! 1. the defaults;
//! 2. the TOML file;
//! 3. environment variables `TIDINGS_<SECTION>__<KEY>` (double underscore
//!    between levels, e.g. `TIDINGS_REDIS__URL`,
//!    `TIDINGS_HUBS__GAME__UPSTREAM`);
//! 4. the flags' single-level environment variables (`TIDINGS_REDIS`);
//! 5. the flags (`--redis`).
//!
//! Unknown keys are errors (a typo must not silently do nothing), and the
//! whole configuration is validated before the server starts: [`check`]
//! is what `tidings check-config` runs.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::bail;
use clap::{ArgMatches, parser::ValueSource};
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tidings::{HubOptions, TrustedProxy};
use tidings_redis::RedisOptions;
use tidings_service::{AccessKey, UpstreamOptions};

/// The hubs the server has code for.
pub(crate) const BUILT_IN_HUBS: [&str; 3] = ["chat", "test", "dashboard"];

/// Every setting of the standalone server. The sections are the file's
/// tables; on the command line they are flat.
///
/// Every field of a section is a flag whose clap id is the field name, so
/// that [`load`] can tell, key by key, whether the command line (or its
/// environment variable) gave it.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    #[command(flatten)]
    pub server: ServerSettings,
    #[command(flatten)]
    pub tls: TlsSettings,
    #[command(flatten)]
    pub limits: LimitsSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub cors: CorsSettings,
    #[command(flatten)]
    pub redis: RedisSettings,
    /// By name: a built-in hub's settings, or a serverless hub.
    #[arg(skip)]
    #[serde(default, skip_serializing)]
    pub hubs: BTreeMap<String, HubSection>,
    /// Named upstreams that serverless hubs refer to.
    #[arg(skip)]
    #[serde(default, skip_serializing)]
    pub upstreams: BTreeMap<String, UpstreamSection>,
}

/// The file's sections and the clap groups of their flags (for the
/// checks that walk the schema).
#[cfg(test)]
const SECTIONS: [(&str, &str); 6] = [
    ("server", "ServerSettings"),
    ("tls", "TlsSettings"),
    ("limits", "LimitsSettings"),
    ("auth", "AuthSettings"),
    ("cors", "CorsSettings"),
    ("redis", "RedisSettings"),
];

/// `[server]`
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSettings {
    /// Addresses to listen on (comma-separated or repeated, e.g. an IPv4
    /// and an IPv6 one); the first is the one other servers are told of.
    #[arg(
        long,
        env = "TIDINGS_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:5000"
    )]
    #[serde(deserialize_with = "addresses")]
    pub listen: Vec<SocketAddr>,

    /// `host:port` at which the other servers reach this one (requests for
    /// connections of this server are forwarded there). Default: the listen
    /// address, with 127.0.0.1 for an unspecified IP.
    #[arg(long, env = "TIDINGS_ADVERTISE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,

    /// Log format: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, env = "TIDINGS_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Send the real text of hub method errors to clients.
    #[arg(long, env = "TIDINGS_DETAILED_ERRORS")]
    pub detailed_errors: bool,

    /// Period of the dashboard's metrics push, in milliseconds (or `2s`).
    #[arg(
        long = "metrics-period-ms",
        env = "TIDINGS_METRICS_PERIOD_MS",
        default_value = "2000"
    )]
    pub metrics_period: Millis,

    /// Transports to offer (comma-separated): WebSockets, ServerSentEvents, LongPolling.
    #[arg(
        long,
        env = "TIDINGS_TRANSPORTS",
        value_delimiter = ',',
        default_value = "WebSockets,ServerSentEvents,LongPolling"
    )]
    pub transports: Vec<Transport>,

    /// Serve the test hub at `/hubs/test` (and in the REST API): a fixture
    /// of the test suites that lets any client broadcast to everyone and
    /// send to any user, so never in production.
    #[arg(long, env = "TIDINGS_TEST_HUB")]
    pub test_hub: bool,
}

/// `[tls]`
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSettings {
    /// PEM certificate chain: serve HTTPS (HTTP/2 or HTTP/1.1 by ALPN).
    #[arg(long = "tls-cert", env = "TIDINGS_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,

    /// PEM private key of the certificate.
    #[arg(long = "tls-key", env = "TIDINGS_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// `[limits]`
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSettings {
    /// Largest message a client may send, in bytes (0 = unlimited).
    #[arg(long, env = "TIDINGS_MAX_MESSAGE_SIZE", default_value_t = HubOptions::DEFAULT_MAXIMUM_RECEIVE_MESSAGE_SIZE)]
    pub max_message_size: usize,

    /// How many invocations of one client may run at once.
    #[arg(long, env = "TIDINGS_MAX_PARALLEL_INVOCATIONS", default_value_t = HubOptions::DEFAULT_MAXIMUM_PARALLEL_INVOCATIONS_PER_CLIENT)]
    pub max_parallel_invocations: usize,

    /// How many items of one stream may wait, in either direction (StreamBufferCapacity).
    #[arg(long, env = "TIDINGS_STREAM_BUFFER_CAPACITY", default_value_t = HubOptions::DEFAULT_STREAM_BUFFER_CAPACITY)]
    pub stream_buffer_capacity: usize,

    /// How many messages may wait for one client before it is closed as a slow consumer.
    #[arg(long, env = "TIDINGS_OUTBOUND_BUFFER", default_value_t = HubOptions::DEFAULT_OUTBOUND_BUFFER_CAPACITY)]
    pub outbound_buffer: usize,

    /// Close a client as a slow consumer when messages wait for it and none
    /// can be written for this long, in milliseconds (TransportSendTimeout).
    #[arg(long = "send-timeout-ms", env = "TIDINGS_SEND_TIMEOUT_MS", default_value_t = Span(HubOptions::DEFAULT_TRANSPORT_SEND_TIMEOUT))]
    pub send_timeout: Millis,

    /// Server keep-alive (Ping) interval, in milliseconds (or `15s`).
    #[arg(long = "keep-alive-ms", env = "TIDINGS_KEEP_ALIVE_MS", default_value_t = Span(HubOptions::DEFAULT_KEEP_ALIVE_INTERVAL))]
    pub keep_alive: Millis,

    /// Close clients silent for this long, in milliseconds.
    #[arg(long = "client-timeout-ms", env = "TIDINGS_CLIENT_TIMEOUT_MS", default_value_t = Span(HubOptions::DEFAULT_CLIENT_TIMEOUT_INTERVAL))]
    pub client_timeout: Millis,

    /// Time allowed for the handshake, in milliseconds.
    #[arg(long = "handshake-timeout-ms", env = "TIDINGS_HANDSHAKE_TIMEOUT_MS", default_value_t = Span(HubOptions::DEFAULT_HANDSHAKE_TIMEOUT))]
    pub handshake_timeout: Millis,

    /// How long a negotiated, long-polling or stateful-reconnect connection
    /// may go without a transport, in milliseconds.
    #[arg(long = "disconnect-timeout-ms", env = "TIDINGS_DISCONNECT_TIMEOUT_MS", default_value_t = Span(HubOptions::DEFAULT_DISCONNECT_TIMEOUT))]
    pub disconnect_timeout: Millis,

    /// How long to wait for a client result, in milliseconds.
    #[arg(long = "client-result-timeout-ms", env = "TIDINGS_CLIENT_RESULT_TIMEOUT_MS", default_value_t = Span(HubOptions::DEFAULT_CLIENT_RESULT_TIMEOUT))]
    pub client_result_timeout: Millis,

    /// Let clients keep their connection across a dropped WebSocket
    /// (`withStatefulReconnect()`); `false` to refuse it. (On here, while
    /// the library, like ASP.NET Core, leaves it off: the official clients
    /// only use it when asked to.)
    #[arg(
        long,
        env = "TIDINGS_ALLOW_STATEFUL_RECONNECTS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub allow_stateful_reconnects: bool,

    /// Bytes of unacknowledged messages kept per stateful-reconnect connection for replay.
    #[arg(long, env = "TIDINGS_STATEFUL_RECONNECT_BUFFER", default_value_t = HubOptions::DEFAULT_STATEFUL_RECONNECT_BUFFER_SIZE)]
    pub stateful_reconnect_buffer: usize,

    /// Largest REST API request body, in bytes (413 beyond).
    #[arg(long = "rest-body-limit", env = "TIDINGS_REST_BODY_LIMIT", default_value_t = tidings_service::rest::DEFAULT_BODY_LIMIT)]
    pub rest_body: usize,

    /// Largest body of one Server-Sent Events or Long Polling POST, in bytes (413 beyond).
    #[arg(long, env = "TIDINGS_MAX_REQUEST_BODY", default_value_t = HubOptions::DEFAULT_MAXIMUM_REQUEST_BODY_SIZE)]
    pub max_request_body: usize,

    /// Most live connections in all (503 beyond; 0 = no limit).
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Most live connections from one IP address (429 beyond; 0 = no limit).
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Reverse proxies whose Forwarded or X-Forwarded-For header names the
    /// client for the per-IP limit (comma-separated addresses or networks:
    /// `10.0.0.0/8`).
    #[arg(long, env = "TIDINGS_TRUSTED_PROXIES", value_delimiter = ',')]
    #[serde(with = "text_list")]
    pub trusted_proxies: Vec<TrustedProxy>,

    /// Invocations one connection may make at once before the rate limit
    /// applies (0 = no rate limit).
    #[arg(long, env = "TIDINGS_RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,

    /// Invocations per second one connection regains under the rate limit.
    #[arg(long, env = "TIDINGS_RATE_LIMIT_PER_SECOND", default_value_t = 10.0)]
    pub rate_limit_per_second: f64,
}

/// `[auth]`
#[derive(Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthSettings {
    /// Access key of the REST API (`/api/...`) and of client tokens; give
    /// several (comma-separated) to rotate: the first signs, all verify.
    #[arg(
        long = "access-key",
        env = "TIDINGS_ACCESS_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    pub access_keys: Vec<String>,

    /// Secret for HS256 bearer tokens. Without it (and without
    /// --jwt-public-key) every client is anonymous.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,

    /// PEM file with the RSA (RS256) or EC (ES256) public key that verifies bearer tokens.
    #[arg(long, env = "TIDINGS_JWT_PUBLIC_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `iss` claim of bearer tokens.
    #[arg(long, env = "TIDINGS_JWT_ISSUER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim of bearer tokens.
    #[arg(long, env = "TIDINGS_JWT_AUDIENCE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,

    /// Accept tokens this many seconds past their expiry (clock skew).
    #[arg(
        long = "jwt-leeway-secs",
        env = "TIDINGS_JWT_LEEWAY_SECS",
        default_value = "0"
    )]
    pub jwt_leeway: Secs,

    /// Refuse tokens without an `exp` claim (as ASP.NET Core does by
    /// default); `false` accepts them, and they never expire.
    #[arg(
        long,
        env = "TIDINGS_JWT_REQUIRE_EXP",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub jwt_require_exp: bool,

    /// The claim whose value is the user id (`Clients.User`, send-to-user),
    /// e.g. `email`. Default: the first of `sub`, `nameid` and
    /// `http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier`
    /// in the token, as ASP.NET Core reads it.
    #[arg(long, env = "TIDINGS_USER_ID_CLAIM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id_claim: Option<String>,

    /// Close connections when their token expires.
    #[arg(
        long,
        env = "TIDINGS_CLOSE_ON_AUTH_EXPIRATION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub close_on_auth_expiration: bool,

    /// Serve `POST /demo/token`, which signs a token for any user name, for
    /// the demo app at `/` (never in production: anyone can act as anyone).
    /// Without --jwt-secret the tokens use a random secret made at start.
    #[arg(long, env = "TIDINGS_DEMO_TOKENS")]
    pub demo_tokens: bool,
}

// By hand, so that no secret reaches a log line.
impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field("access_keys", &self.access_keys.len())
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "…"))
            .field("jwt_public_key", &self.jwt_public_key)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_leeway", &self.jwt_leeway)
            .field("jwt_require_exp", &self.jwt_require_exp)
            .field("close_on_auth_expiration", &self.close_on_auth_expiration)
            .field("demo_tokens", &self.demo_tokens)
            .finish()
    }
}

/// `[cors]`
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CorsSettings {
    /// Browser origins allowed besides the server's own (comma-separated,
    /// `https://app.example`, or `*`): CORS on negotiate and the HTTP
    /// transports, and the WebSocket `Origin` allow-list.
    #[arg(long, env = "TIDINGS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Let cross-origin requests carry credentials (Access-Control-Allow-Credentials).
    #[arg(
        long = "cors-credentials",
        env = "TIDINGS_CORS_CREDENTIALS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub credentials: bool,
}

/// `[redis]`
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisSettings {
    /// Redis URL (`redis://host:port`): turns on the backplane, so that
    /// several servers act as one.
    #[arg(long = "redis", env = "TIDINGS_REDIS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// `--redis` names nodes of a Redis Cluster (comma-separated seeds,
    /// `redis://host:port,redis://host:port`): channel messages use
    /// sharded pub/sub, each going only to the shard owning its channel.
    #[arg(long = "redis-cluster", env = "TIDINGS_REDIS_CLUSTER")]
    pub cluster: bool,

    /// Prepended to every Redis channel and key, to keep applications
    /// sharing one Redis apart.
    #[arg(
        long = "redis-prefix",
        env = "TIDINGS_REDIS_PREFIX",
        default_value = ""
    )]
    pub prefix: String,

    /// Cross-server messages kept while Redis is away (more are dropped and counted).
    #[arg(long = "redis-buffer-messages", env = "TIDINGS_REDIS_BUFFER_MESSAGES", default_value_t = RedisOptions::DEFAULT_BUFFER_MESSAGES)]
    pub buffer_messages: usize,

    /// Bytes of cross-server messages kept while Redis is away.
    #[arg(long = "redis-buffer-bytes", env = "TIDINGS_REDIS_BUFFER_BYTES", default_value_t = RedisOptions::DEFAULT_BUFFER_BYTES)]
    pub buffer_bytes: usize,

    /// How often this server renews its registration on the backplane, in
    /// milliseconds; after five missed renewals the others forget its
    /// connections.
    #[arg(long = "redis-heartbeat-ms", env = "TIDINGS_REDIS_HEARTBEAT_MS", default_value_t = Span(RedisOptions::DEFAULT_HEARTBEAT))]
    pub heartbeat: Millis,

    /// Which cross-server message is dropped when the buffer is full:
    /// `oldest` (after an outage the freshest traffic arrives) or `newest`
    /// (the start of the outage arrives, later messages are refused).
    #[arg(
        long = "redis-drop-policy",
        env = "TIDINGS_REDIS_DROP_POLICY",
        default_value = "oldest"
    )]
    pub drop_policy: RedisDropPolicy,

    /// The durability mode, in milliseconds of retention (0: off): stateful
    /// reconnect connections survive the crash of their server. Their
    /// messages are recorded in Redis before they are sent, and every
    /// publish is logged for this long; a client whose server died resumes
    /// on another server with every message exactly once if it comes back
    /// within it. A single Redis node only.
    #[arg(
        long = "redis-durable-ms",
        env = "TIDINGS_REDIS_DURABLE_MS",
        default_value_t = Span(Duration::ZERO)
    )]
    pub durable: Millis,
}

/// The backplane's drop policy as the settings spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RedisDropPolicy {
    Oldest,
    Newest,
}

impl From<RedisDropPolicy> for tidings_redis::DropPolicy {
    fn from(policy: RedisDropPolicy) -> Self {
        match policy {
            RedisDropPolicy::Oldest => tidings_redis::DropPolicy::DropOldest,
            RedisDropPolicy::Newest => tidings_redis::DropPolicy::DropNewest,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// A transport name as the SignalR protocol spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub(crate) enum Transport {
    #[value(name = "WebSockets", alias = "websockets")]
    WebSockets,
    #[value(name = "ServerSentEvents", alias = "sse")]
    ServerSentEvents,
    #[value(name = "LongPolling", alias = "longpolling")]
    LongPolling,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HubSection {
    /// Makes the hub serverless: an upstream's name, or a URL template.
    pub upstream: Option<String>,
    /// Transports offered by this hub (default: the server's).
    pub transports: Option<Vec<Transport>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamSection {
    /// `http(s)://…` with optional `{hub}`, `{category}`, `{event}`.
    pub url: String,
    /// How long one upstream call may take (default 10s).
    #[serde(default)]
    pub timeout: Option<Millis>,
}

/// A duration counted in units of `UNIT_MS` milliseconds when written as
/// a bare number (the flags' historical `…-ms` and `…-secs` forms), or as
/// humans write it: `"15s"`, `"500ms"`, `"1m 30s"` (the file's form).
/// Either form is accepted everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span<const UNIT_MS: u64>(pub Duration);

/// Milliseconds when bare.
pub(crate) type Millis = Span<1>;
/// Seconds when bare.
pub(crate) type Secs = Span<1000>;

impl<const UNIT_MS: u64> Span<UNIT_MS> {
    fn units(self) -> u64 {
        u64::try_from(self.0.as_millis() / u128::from(UNIT_MS)).unwrap_or(u64::MAX)
    }

    fn from_units(units: u64) -> Self {
        Span(Duration::from_millis(units.saturating_mul(UNIT_MS)))
    }
}

impl<const UNIT_MS: u64> FromStr for Span<UNIT_MS> {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(units) = text.parse::<u64>() {
            return Ok(Self::from_units(units));
        }
        humantime::parse_duration(text).map(Span).map_err(|e| {
            format!("'{text}' is not a duration ({e}); write e.g. \"15s\" or \"500ms\"")
        })
    }
}

/// The bare number of units: what `--help` shows as the default.
impl<const UNIT_MS: u64> fmt::Display for Span<UNIT_MS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.units())
    }
}

impl<const UNIT_MS: u64> Serialize for Span<UNIT_MS> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.units())
    }
}

impl<'de, const UNIT_MS: u64> Deserialize<'de> for Span<UNIT_MS> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Units(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Units(units) => Ok(Self::from_units(units)),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

fn addresses<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(deserializer)? {
        // One string may list several (as TIDINGS_SERVER__LISTEN would).
        OneOrMany::One(one) => one.split(',').map(|a| a.trim().to_owned()).collect(),
        OneOrMany::Many(many) => many,
    };
    if list.is_empty() {
        return Err(serde::de::Error::custom("give at least one address"));
    }
    list.iter()
        .map(|text| {
            text.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "'{text}' is not an address to listen on (ip:port, [ipv6]:port)"
                ))
            })
        })
        .collect()
}

/// A list of values written as their text (`FromStr` and `Display`).
mod text_list {
    use std::{fmt::Display, str::FromStr};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<T: Display, S: Serializer>(
        list: &[T],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(list.iter().map(ToString::to_string))
    }

    pub(super) fn deserialize<'de, T, D>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

/// A serverless hub, ready to build.
#[derive(Debug, Clone)]
pub(crate) struct ServerlessSpec {
    pub name: String,
    pub upstream: UpstreamOptions,
}

/// Whether the command line (or its environment variable) set `id`.
fn given(matches: &ArgMatches, id: &str) -> bool {
    // `value_source` is only asked of ids the parser knows.
    matches.ids().any(|known| known.as_str() == id)
        && matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
}

/// The settings from every layer: `parsed` is what clap made of the
/// command line (defaults filled in), `matches` tells which of its values
/// were given rather than defaulted, `path` is the file.
pub(crate) fn load(
    parsed: &Settings,
    matches: &ArgMatches,
    path: Option<&Path>,
) -> anyhow::Result<Settings> {
    let mut figment = Figment::new();
    let Ok(serde_json::Value::Object(mut all)) = serde_json::to_value(parsed) else {
        bail!("the settings do not serialize to a table");
    };
    figment = figment.merge(Serialized::defaults(all.clone()));
    if let Some(path) = path {
        if !path.is_file() {
            bail!("the configuration file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file(path));
    }
    // Only nested names: the single-level TIDINGS_* variables are the
    // flags', which clap read.
    let env = Env::prefixed("TIDINGS_")
        .filter(|key| key.as_str().contains("__"))
        .split("__");
    figment = figment.merge(env);
    // On top, only what the command line or its variables gave: the
    // defaults clap filled in must not hide the file's values.
    for section in all.values_mut() {
        if let serde_json::Value::Object(keys) = section {
            keys.retain(|key, _| given(matches, key));
        }
    }
    figment = figment.merge(Serialized::defaults(all));
    figment.extract().map_err(|error| {
        // "section.key: what is wrong" (figment's own text also names
        // its profile, which a tidings file does not have).
        let errors: Vec<String> = error
            .into_iter()
            .map(|e| {
                let source = e
                    .metadata
                    .as_ref()
                    .and_then(|m| m.source.as_ref())
                    .map(|s| format!(" (in {s})"))
                    .unwrap_or_default();
                if e.path.is_empty() {
                    format!("{}{source}", e.kind)
                } else {
                    format!("{}: {}{source}", e.path.join("."), e.kind)
                }
            })
            .collect();
        anyhow::anyhow!(errors.join("\n")).context(match path {
            Some(path) => format!("invalid configuration in {}", path.display()),
            None => "invalid configuration in the environment".to_owned(),
        })
    })
}

/// The resolved settings as pretty JSON, with the secrets replaced by
/// `"…"` (what `tidings check-config --print` shows).
pub(crate) fn effective(settings: &Settings) -> anyhow::Result<String> {
    let mut value = serde_json::to_value(settings)?;
    for secret in ["access_keys", "jwt_secret"] {
        if let Some(slot) = value.pointer_mut(&format!("/auth/{secret}")) {
            *slot = match slot {
                serde_json::Value::Array(list) => {
                    serde_json::Value::Array(list.iter().map(|_| "…".into()).collect())
                }
                _ => "…".into(),
            };
        }
    }
    Ok(serde_json::to_string_pretty(&value)?)
}

/// Validates everything the server will use, with messages that name the
/// setting; returns the serverless hubs to build.
pub(crate) fn check(settings: &Settings) -> anyhow::Result<Vec<ServerlessSpec>> {
    let mut problems = Vec::new();
    for (i, secret) in settings.auth.access_keys.iter().enumerate() {
        if let Err(error) = AccessKey::new(secret) {
            problems.push(format!("auth.access_keys[{i}]: {error}"));
        }
    }
    let auth = &settings.auth;
    if auth.jwt_secret.is_some() && auth.jwt_public_key.is_some() {
        problems.push("auth: give jwt_secret or jwt_public_key, not both".to_owned());
    }
    if let Some(path) = &auth.jwt_public_key
        && !path.is_file()
    {
        problems.push(format!(
            "auth.jwt_public_key: cannot read {}: no such file",
            path.display()
        ));
    }
    for origin in &settings.cors.allowed_origins {
        let valid = origin == "*"
            || url::Url::parse(origin).is_ok_and(|url| {
                matches!(url.scheme(), "http" | "https")
                    && url.path() == "/"
                    && !origin.ends_with('/')
            });
        if !valid {
            problems.push(format!(
                "cors.allowed_origins: '{origin}' is not an origin (scheme://host[:port], or \"*\")"
            ));
        }
    }
    let rate = settings.limits.rate_limit_per_second;
    if !(rate.is_finite() && rate > 0.0) {
        problems.push("limits.rate_limit_per_second: must be more than 0".to_owned());
    }
    match (&settings.tls.cert, &settings.tls.key) {
        (Some(cert), Some(key)) => {
            for (name, path) in [("tls.cert", cert), ("tls.key", key)] {
                if !path.is_file() {
                    problems.push(format!(
                        "{name}: cannot read {}: no such file",
                        path.display()
                    ));
                }
            }
        }
        (None, None) => {}
        _ => problems.push("tls: give both cert and key".to_owned()),
    }
    // One URL, or a Redis Cluster's seed nodes separated by commas.
    for url in settings.redis.url.iter().flat_map(|urls| urls.split(',')) {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            problems.push(format!(
                "redis.url: '{url}' is not a redis:// or rediss:// URL"
            ));
        }
    }
    if settings.redis.cluster && settings.redis.url.is_none() {
        problems
            .push("redis.cluster: give the cluster's seed nodes as redis.url (--redis)".to_owned());
    }
    if settings.server.transports.is_empty() {
        problems.push("transports: offer at least one".to_owned());
    }
    let mut serverless = Vec::new();
    for (name, hub) in &settings.hubs {
        let at = format!("hubs.{name}");
        if !valid_hub_name(name) {
            problems.push(format!(
                "{at}: a hub name is letters, digits, '-' and '_' (it is part of the URL /hubs/{name})"
            ));
        }
        if let Some(transports) = &hub.transports
            && transports.is_empty()
        {
            problems.push(format!("{at}.transports: offer at least one"));
        }
        let built_in = BUILT_IN_HUBS.contains(&name.as_str());
        match (&hub.upstream, built_in) {
            (None, true) => {}
            (None, false) => problems.push(format!(
                "{at}: '{name}' is not a built-in hub ({}); give it an upstream to make it serverless",
                BUILT_IN_HUBS.join(", ")
            )),
            (Some(_), true) => problems.push(format!(
                "{at}: '{name}' is a built-in hub and cannot have an upstream; choose another name"
            )),
            (Some(upstream), false) => {
                let (template, timeout) = if upstream.contains("://") {
                    (upstream.clone(), None)
                } else if let Some(named) = settings.upstreams.get(upstream) {
                    (named.url.clone(), named.timeout.map(|t| t.0))
                } else {
                    problems.push(format!(
                        "{at}.upstream: no [upstreams.{upstream}] section (an upstream is a name of one, or an http(s) URL)"
                    ));
                    continue;
                };
                let mut options = UpstreamOptions::new(template);
                if let Some(timeout) = timeout {
                    options = options.timeout(timeout);
                }
                if let Err(error) = options.validate() {
                    problems.push(format!("{at}.upstream: {error}"));
                    continue;
                }
                serverless.push(ServerlessSpec {
                    name: name.clone(),
                    upstream: options,
                });
            }
        }
    }
    for (name, upstream) in &settings.upstreams {
        if let Err(error) = UpstreamOptions::new(upstream.url.as_str()).validate() {
            problems.push(format!("upstreams.{name}.url: {error}"));
        }
        if upstream.timeout.is_some_and(|t| t.0.is_zero()) {
            problems.push(format!("upstreams.{name}.timeout: must be more than 0"));
        }
    }
    if settings
        .auth
        .user_id_claim
        .as_deref()
        .is_some_and(str::is_empty)
    {
        problems.push("auth.user_id_claim: name a claim (e.g. \"email\")".to_owned());
    }
    if !serverless.is_empty() && settings.auth.access_keys.is_empty() {
        problems.push(
            "auth.access_keys: serverless hubs sign what they post upstream; configure an access key"
                .to_owned(),
        );
    }
    if problems.is_empty() {
        Ok(serverless)
    } else {
        bail!("{}", problems.join("\n"))
    }
}

fn valid_hub_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The transports hub `name` offers: its own list, or the server's.
pub(crate) fn transports<'a>(settings: &'a Settings, name: &str) -> &'a [Transport] {
    settings
        .hubs
        .get(name)
        .and_then(|hub| hub.transports.as_deref())
        .unwrap_or(&settings.server.transports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    /// The settings from `toml` as the file and `argv` as the command line.
    fn parse(toml: &str, argv: &[&str]) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tidings.toml");
        std::fs::write(&path, toml)?;
        let mut full = vec!["tidings"];
        full.extend_from_slice(argv);
        let matches = crate::Args::command().try_get_matches_from(full)?;
        let args = crate::Args::from_arg_matches(&matches)?;
        load(&args.settings, &matches, Some(&path))
    }

    /// The file keys of each section: the ids of the section's flags.
    fn schema() -> Vec<(&'static str, Vec<String>)> {
        let command = crate::Args::command();
        SECTIONS
            .iter()
            .map(|(section, group)| {
                let group = command
                    .get_groups()
                    .find(|g| g.get_id() == group)
                    .unwrap_or_else(|| panic!("no group {group}"));
                let keys = group.get_args().map(|id| id.as_str().to_owned()).collect();
                (*section, keys)
            })
            .collect()
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../../tidings.example.toml");
        let settings = parse(text, &[]).expect("parses");
        let serverless = check(&settings).expect("valid");
        assert_eq!(serverless.len(), 1);
        assert_eq!(serverless[0].name, "game");
    }

    /// Every setting of the schema is in the example file (set, or
    /// commented out), and the example names no key the schema lacks.
    #[test]
    fn the_example_file_lists_every_setting() {
        let text = include_str!("../../../tidings.example.toml");
        let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim_start_matches(['#', ' ']);
            if let Some(header) = line.strip_prefix('[') {
                section = header.split(']').next().unwrap_or_default().to_owned();
            } else if let Some((key, _)) = line.split_once('=') {
                let key = key.trim();
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    found
                        .entry(section.clone())
                        .or_default()
                        .push(key.to_owned());
                }
            }
        }
        for (section, keys) in schema() {
            let listed = found.remove(section).unwrap_or_default();
            for key in &keys {
                assert!(
                    listed.contains(key),
                    "tidings.example.toml lacks {section}.{key}"
                );
            }
            for key in &listed {
                assert!(
                    keys.contains(key),
                    "tidings.example.toml: {section}.{key} is no setting"
                );
            }
        }
        // What is left are the file-only tables.
        for section in found.keys() {
            assert!(
                section.starts_with("hubs.") || section.starts_with("upstreams."),
                "tidings.example.toml: [{section}] is no section"
            );
        }
    }

    /// The README's table of flags names each flag with its environment
    /// variable and starts the default column with the default `--help`
    /// shows; and it has no row for a flag that does not exist.
    #[test]
    fn the_readme_table_matches_the_flags() {
        let readme = include_str!("../../../README.md");
        let rows: BTreeMap<&str, (&str, &str)> = readme
            .lines()
            .filter(|line| line.starts_with("| `--"))
            .filter_map(|line| {
                let mut cells = line.trim_matches('|').split(" | ").map(str::trim);
                let flag = cells.next()?.trim_matches('`');
                let env = cells.next()?.trim_matches('`');
                Some((flag, (env, cells.next()?)))
            })
            .collect();
        let mut command = crate::Args::command();
        // Built, the switches (`--detailed-errors`) have their `false` default.
        command.build();
        let mut flags = Vec::new();
        for arg in command.get_arguments() {
            let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
                continue;
            };
            let flag = format!("--{long}");
            let Some((row_env, default)) = rows.get(flag.as_str()) else {
                panic!("README.md has no row for {flag}");
            };
            assert_eq!(
                *row_env,
                env.to_string_lossy(),
                "README.md: the variable of {flag}"
            );
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let expected = match defaults.join(",").as_str() {
                "" if defaults.is_empty() => "none".to_owned(),
                "" => "empty".to_owned(),
                "false" if !arg.get_action().takes_values() => "off".to_owned(),
                other => other.to_owned(),
            };
            let written = default.replace('`', "");
            let rest = written.strip_prefix(expected.as_str());
            assert!(
                rest.is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric())),
                "README.md: the default of {flag} is {expected}, the table says {default:?}"
            );
            flags.push(flag);
        }
        for flag in rows.keys() {
            assert!(
                flags.iter().any(|f| f == flag),
                "README.md lists {flag}, which is no flag"
            );
        }
    }

    #[test]
    fn the_file_fills_what_the_command_line_does_not_set() {
        let toml = r#"
            [server]
            listen = "127.0.0.1:6001"
            log_format = "json"
            transports = ["WebSockets", "LongPolling"]
            [limits]
            keep_alive = "5s"
            client_timeout = 7000
            max_message_size = 1000
            [redis]
            url = "redis://127.0.0.1:1"
            cluster = true
            heartbeat = "500ms"
            [hubs.chat]
            transports = ["LongPolling"]
        "#;
        let settings = parse(toml, &["--keep-alive-ms", "7000"]).expect("parses");
        assert_eq!(
            settings.server.listen,
            ["127.0.0.1:6001".parse().expect("an address")]
        );
        let several =
            parse("[server]\nlisten = [\"127.0.0.1:1\", \"[::1]:2\"]", &[]).expect("a list parses");
        let joined = parse("[server]\nlisten = \"127.0.0.1:1, [::1]:2\"", &[])
            .expect("a comma-separated string parses");
        let expected: Vec<SocketAddr> = ["127.0.0.1:1", "[::1]:2"]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        assert_eq!(
            (several.server.listen, joined.server.listen),
            (expected.clone(), expected)
        );
        assert_eq!(settings.server.log_format, LogFormat::Json);
        // The flag wins over the file; a bare number in the file is milliseconds.
        assert_eq!(settings.limits.keep_alive.0, Duration::from_secs(7));
        assert_eq!(settings.limits.client_timeout.0, Duration::from_secs(7));
        assert_eq!(settings.limits.max_message_size, 1000);
        // What neither gives is the library's default.
        assert_eq!(
            settings.limits.handshake_timeout.0,
            HubOptions::DEFAULT_HANDSHAKE_TIMEOUT
        );
        assert_eq!(settings.redis.url.as_deref(), Some("redis://127.0.0.1:1"));
        assert_eq!(settings.redis.heartbeat.0, Duration::from_millis(500));
        assert!(settings.redis.cluster);
        assert_eq!(transports(&settings, "chat"), [Transport::LongPolling]);
        assert_eq!(
            transports(&settings, "test"),
            [Transport::WebSockets, Transport::LongPolling]
        );
        // A default of the command line does not hide the file's value.
        let settings = parse("[auth]\njwt_require_exp = false", &[]).expect("parses");
        assert!(!settings.auth.jwt_require_exp);
        let settings = parse(
            "[cors]\nallowed_origins = [\"https://app.example\"]\n[limits]\nmax_connections = 7\ntrusted_proxies = [\"10.0.0.0/8\"]\n[auth]\njwt_issuer = \"me\"",
            &["--max-connections", "9"],
        )
        .expect("parses");
        assert_eq!(settings.cors.allowed_origins, ["https://app.example"]);
        assert_eq!(settings.limits.max_connections, 9);
        assert_eq!(settings.auth.jwt_issuer.as_deref(), Some("me"));
        assert_eq!(
            settings
                .limits
                .trusted_proxies
                .first()
                .map(ToString::to_string),
            Some("10.0.0.0/8".to_owned())
        );
        // The flag wins over the file here too.
        let settings = parse(
            "[auth]\nuser_id_claim = \"email\"",
            &["--user-id-claim", "upn"],
        )
        .expect("parses");
        assert_eq!(settings.auth.user_id_claim.as_deref(), Some("upn"));
    }

    #[test]
    fn invalid_files_say_what_is_wrong() {
        let cases = [
            ("[server]\nlisten = \"nowhere\"", "listen"),
            (
                "[server]\nlisten = [\"127.0.0.1:1\", \"nowhere\"]",
                "'nowhere' is not an address to listen on",
            ),
            ("[server]\nlisten = []", "give at least one address"),
            ("[server]\nlisten_on = \"127.0.0.1:1\"", "listen_on"),
            (
                "[limits]\nkeep_alive = \"soon\"",
                "'soon' is not a duration",
            ),
            ("[hubs.chat]\ntransports = [\"Pigeons\"]", "Pigeons"),
            (
                "[limits]\ntrusted_proxies = [\"10.0.0.0/40\"]",
                "'10.0.0.0/40' is not an IP address or network",
            ),
            ("[sever]\nlisten = \"127.0.0.1:1\"", "sever"),
        ];
        for (toml, expected) in cases {
            let error = parse(toml, &[]).map(drop).expect_err(toml);
            assert!(format!("{error:#}").contains(expected), "{toml}: {error:#}");
        }
        let checks = [
            (
                "[hubs.game]\n",
                "'game' is not a built-in hub (chat, test, dashboard); give it an upstream",
            ),
            (
                "[auth]\naccess_keys=[\"0123456789abcdef\"]\n[hubs.game]\nupstream = \"backend\"",
                "hubs.game.upstream: no [upstreams.backend] section",
            ),
            (
                "[auth]\naccess_keys=[\"0123456789abcdef\"]\n[hubs.game]\nupstream = \"ftp://x/{event}\"",
                "hubs.game.upstream: not a valid upstream URL",
            ),
            (
                "[auth]\naccess_keys=[\"0123456789abcdef\"]\n[hubs.game]\nupstream = \"http://x/{evnt}\"",
                "unknown placeholder '{evnt}'",
            ),
            (
                "[hubs.game]\nupstream = \"http://x/{event}\"",
                "auth.access_keys: serverless hubs sign",
            ),
            (
                "[hubs.chat]\nupstream = \"http://x/{event}\"",
                "'chat' is a built-in hub",
            ),
            (
                "[auth]\naccess_keys = [\"short\"]",
                "auth.access_keys[0]: an access key must be at least 16 bytes",
            ),
            (
                "[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"",
                "tls.cert: cannot read /nonexistent/c.pem: no such file",
            ),
            ("[tls]\ncert = \"c.pem\"", "tls: give both cert and key"),
            (
                "[redis]\nurl = \"redis://a:1,http://localhost\"",
                "redis.url: 'http://localhost' is not a redis://",
            ),
            (
                "[redis]\ncluster = true",
                "redis.cluster: give the cluster's seed nodes",
            ),
            (
                "[hubs.chat]\ntransports = []",
                "hubs.chat.transports: offer at least one",
            ),
            (
                "[cors]\nallowed_origins = [\"app.example\"]",
                "cors.allowed_origins: 'app.example' is not an origin",
            ),
            (
                "[limits]\nrate_limit_per_second = 0.0",
                "limits.rate_limit_per_second: must be more than 0",
            ),
            (
                "[auth]\nuser_id_claim = \"\"",
                "auth.user_id_claim: name a claim",
            ),
            (
                "[auth]\njwt_secret = \"x\"\njwt_public_key = \"k.pem\"",
                "give jwt_secret or jwt_public_key, not both",
            ),
        ];
        for (toml, expected) in checks {
            let settings = parse(toml, &[]).expect(toml);
            let error = check(&settings).map(drop).expect_err(toml);
            assert!(error.to_string().contains(expected), "{toml}: {error}");
        }
    }

    #[test]
    fn the_drop_policy_comes_from_the_flag_or_the_file() {
        let default = parse("", &[]).expect("parses");
        assert_eq!(default.redis.drop_policy, RedisDropPolicy::Oldest);
        let file = parse("[redis]\ndrop_policy = \"newest\"", &[]).expect("parses");
        assert_eq!(file.redis.drop_policy, RedisDropPolicy::Newest);
        let flag = parse(
            "[redis]\ndrop_policy = \"newest\"",
            &["--redis-drop-policy", "oldest"],
        )
        .expect("parses");
        assert_eq!(flag.redis.drop_policy, RedisDropPolicy::Oldest);
        assert!(parse("[redis]\ndrop_policy = \"random\"", &[]).is_err());
    }
}
