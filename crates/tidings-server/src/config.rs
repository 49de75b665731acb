//! The configuration file (`--config tidings.toml`): one TOML file for
//! everything the command line sets, plus what only a file can say —
//! serverless hubs, their upstreams, transports per hub.
//!
//! Layers, lowest first (loaded with `figment`):
//!
//! 1. built-in defaults;
//! 2. the TOML file;
//! 3. environment variables `TIDINGS_<SECTION>__<KEY>` (double underscore
//!    between levels, e.g. `TIDINGS_REDIS__URL`,
//!    `TIDINGS_HUBS__GAME__UPSTREAM`);
//! 4. command-line flags and their single-level environment variables
//!    (`--redis`, `TIDINGS_REDIS`), when given.
//!
//! Unknown keys are errors (a typo must not silently do nothing), and the
//! whole file is validated before the server starts: [`check`] is what
//! `tidings check-config` runs.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{ArgMatches, parser::ValueSource};
use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::{Deserialize, Deserializer};
use tidings::TrustedProxy;
use tidings_service::{AccessKey, UpstreamOptions};

use crate::{Args, LogFormat, Transport};

/// The hubs the server has code for.
pub const BUILT_IN_HUBS: [&str; 3] = ["chat", "test", "dashboard"];

/// The configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerSection,
    pub tls: Option<TlsSection>,
    pub limits: LimitsSection,
    pub auth: AuthSection,
    pub cors: CorsSection,
    pub redis: Option<RedisSection>,
    /// By name: a built-in hub's settings, or a serverless hub.
    pub hubs: BTreeMap<String, HubSection>,
    /// Named upstreams that serverless hubs refer to.
    pub upstreams: BTreeMap<String, UpstreamSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// One address, or a list of them.
    #[serde(deserialize_with = "addresses")]
    pub listen: Option<Vec<SocketAddr>>,
    pub advertise: Option<String>,
    pub log_format: Option<LogFormatName>,
    pub detailed_errors: Option<bool>,
    #[serde(deserialize_with = "duration")]
    pub metrics_period: Option<Duration>,
    /// Transports of every hub without its own list.
    pub transports: Option<Vec<TransportName>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatName {
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_message_size: Option<usize>,
    pub max_parallel_invocations: Option<usize>,
    pub stream_buffer_capacity: Option<usize>,
    pub outbound_buffer: Option<usize>,
    #[serde(deserialize_with = "duration")]
    pub keep_alive: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub client_timeout: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub disconnect_timeout: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub client_result_timeout: Option<Duration>,
    pub allow_stateful_reconnects: Option<bool>,
    pub stateful_reconnect_buffer: Option<usize>,
    /// Largest REST API request body, in bytes.
    pub rest_body: Option<usize>,
    /// Largest body of one SSE or Long Polling POST, in bytes.
    pub max_request_body: Option<usize>,
    /// Most live connections in all (0 = no limit).
    pub max_connections: Option<usize>,
    /// Most live connections from one IP address (0 = no limit).
    pub max_connections_per_ip: Option<usize>,
    /// Reverse proxies whose Forwarded or X-Forwarded-For names the client.
    #[serde(deserialize_with = "proxies")]
    pub trusted_proxies: Option<Vec<TrustedProxy>>,
    /// Invocations a connection may make at once before the rate limit
    /// applies (0 = no rate limit).
    pub rate_limit_burst: Option<u32>,
    /// Invocations per second a connection regains.
    pub rate_limit_per_second: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// REST API and client-token keys; the first signs.
    pub access_keys: Option<Vec<String>>,
    /// HS256 secret of client bearer tokens.
    pub jwt_secret: Option<String>,
    /// PEM file of the RS256/ES256 public key of client bearer tokens.
    pub jwt_public_key: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub jwt_leeway: Option<Duration>,
    pub jwt_require_exp: Option<bool>,
    /// The claim that names the user (default: the name identifier).
    pub user_id_claim: Option<String>,
    pub close_on_auth_expiration: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSection {
    /// Browser origins allowed besides the server's own (or `"*"`).
    pub allowed_origins: Option<Vec<String>>,
    /// Whether cross-origin requests may carry credentials.
    pub credentials: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: String,
    /// `url` lists seed nodes of a Redis Cluster (comma-separated).
    pub cluster: Option<bool>,
    pub prefix: Option<String>,
    pub buffer_messages: Option<usize>,
    pub buffer_bytes: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub heartbeat: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubSection {
    /// Makes the hub serverless: an upstream's name, or a URL template.
    pub upstream: Option<String>,
    /// Transports offered by this hub (default: the server's).
    pub transports: Option<Vec<TransportName>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TransportName {
    WebSockets,
    ServerSentEvents,
    LongPolling,
}

impl From<TransportName> for Transport {
    fn from(name: TransportName) -> Self {
        match name {
            TransportName::WebSockets => Transport::WebSockets,
            TransportName::ServerSentEvents => Transport::ServerSentEvents,
            TransportName::LongPolling => Transport::LongPolling,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// `http(s)://…` with optional `{hub}`, `{category}`, `{event}`.
    pub url: String,
    /// How long one upstream call may take (default 10s).
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
}

/// A duration as humans write it: `"15s"`, `"500ms"`, `"1m 30s"`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text: Option<String> = Option::deserialize(deserializer)?;
    text.map(|text| {
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "'{text}' is not a duration ({e}); write e.g. \"15s\" or \"500ms\""
            ))
        })
    })
    .transpose()
}

fn addresses<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<SocketAddr>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match Option::<OneOrMany>::deserialize(deserializer)? {
        None => return Ok(None),
        // One string may list several (as TIDINGS_SERVER__LISTEN would).
        Some(OneOrMany::One(one)) => one.split(',').map(|a| a.trim().to_owned()).collect(),
        Some(OneOrMany::Many(many)) => many,
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
        .collect::<Result<_, _>>()
        .map(Some)
}

fn proxies<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<TrustedProxy>>, D::Error> {
    let list: Option<Vec<String>> = Option::deserialize(deserializer)?;
    list.map(|list| {
        list.iter()
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .collect()
    })
    .transpose()
}

/// A serverless hub, ready to build.
#[derive(Debug, Clone)]
pub struct ServerlessSpec {
    pub name: String,
    pub upstream: UpstreamOptions,
}

/// Reads the file and the `TIDINGS_…__…` environment variables.
pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        if !path.is_file() {
            bail!("the configuration file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file(path));
    }
    // Only nested names: the single-level TIDINGS_* variables are the
    // command line's.
    let env = Env::prefixed("TIDINGS_")
        .filter(|key| key.as_str().contains("__"))
        .split("__");
    figment = figment.merge(env);
    let file: anyhow::Result<FileConfig> = figment.extract().map_err(|error| {
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
        anyhow::anyhow!(errors.join("\n"))
    });
    let file = file.with_context(|| match path {
        Some(path) => format!("invalid configuration in {}", path.display()),
        None => "invalid configuration in the environment".to_owned(),
    })?;
    Ok(file)
}

/// Whether the command line (or its environment variable) set `id`.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Puts the file's settings into `args` where the command line did not
/// set them.
pub fn apply(file: &FileConfig, args: &mut Args, matches: &ArgMatches) {
    macro_rules! set {
        ($field:ident, $value:expr) => {
            if !given(matches, stringify!($field)) {
                if let Some(value) = $value {
                    args.$field = value;
                }
            }
        };
    }
    // The security options live in `args.security`.
    macro_rules! secure {
        ($field:ident, $value:expr) => {
            if !given(matches, stringify!($field)) {
                if let Some(value) = $value {
                    args.security.$field = value;
                }
            }
        };
    }
    let ms = |d: &Option<Duration>| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let server = &file.server;
    set!(listen, server.listen.clone());
    set!(advertise, server.advertise.clone().map(Some));
    set!(
        log_format,
        server.log_format.map(|f| match f {
            LogFormatName::Text => LogFormat::Text,
            LogFormatName::Json => LogFormat::Json,
        })
    );
    set!(detailed_errors, server.detailed_errors);
    set!(metrics_period_ms, ms(&server.metrics_period));
    set!(
        transports,
        server
            .transports
            .as_ref()
            .map(|list| list.iter().copied().map(Transport::from).collect())
    );
    if let Some(tls) = &file.tls {
        set!(tls_cert, Some(Some(tls.cert.clone())));
        set!(tls_key, Some(Some(tls.key.clone())));
    }
    let limits = &file.limits;
    set!(max_message_size, limits.max_message_size);
    set!(max_parallel_invocations, limits.max_parallel_invocations);
    set!(stream_buffer_capacity, limits.stream_buffer_capacity);
    set!(outbound_buffer, limits.outbound_buffer);
    set!(keep_alive_ms, ms(&limits.keep_alive));
    set!(client_timeout_ms, ms(&limits.client_timeout));
    set!(handshake_timeout_ms, ms(&limits.handshake_timeout));
    set!(disconnect_timeout_ms, ms(&limits.disconnect_timeout));
    set!(client_result_timeout_ms, ms(&limits.client_result_timeout));
    set!(allow_stateful_reconnects, limits.allow_stateful_reconnects);
    set!(stateful_reconnect_buffer, limits.stateful_reconnect_buffer);
    set!(rest_body_limit, limits.rest_body);
    set!(access_keys, file.auth.access_keys.clone());
    secure!(max_request_body, limits.max_request_body);
    secure!(max_connections, limits.max_connections);
    secure!(max_connections_per_ip, limits.max_connections_per_ip);
    secure!(trusted_proxies, limits.trusted_proxies.clone());
    secure!(rate_limit_burst, limits.rate_limit_burst);
    secure!(rate_limit_per_second, limits.rate_limit_per_second);
    let auth = &file.auth;
    secure!(jwt_secret, auth.jwt_secret.clone().map(Some));
    secure!(jwt_public_key, auth.jwt_public_key.clone().map(Some));
    secure!(jwt_issuer, auth.jwt_issuer.clone().map(Some));
    secure!(jwt_audience, auth.jwt_audience.clone().map(Some));
    secure!(jwt_leeway_secs, auth.jwt_leeway.map(|d| d.as_secs()));
    secure!(jwt_require_exp, auth.jwt_require_exp);
    secure!(user_id_claim, auth.user_id_claim.clone().map(Some));
    secure!(close_on_auth_expiration, auth.close_on_auth_expiration);
    secure!(allowed_origins, file.cors.allowed_origins.clone());
    secure!(cors_credentials, file.cors.credentials);
    if let Some(redis) = &file.redis {
        set!(redis, Some(Some(redis.url.clone())));
        set!(redis_cluster, redis.cluster);
        set!(redis_prefix, redis.prefix.clone());
        set!(redis_buffer_messages, redis.buffer_messages);
        set!(redis_buffer_bytes, redis.buffer_bytes);
        set!(redis_heartbeat_ms, ms(&redis.heartbeat));
    }
}

/// Validates everything the server will use, with messages that name the
/// setting; returns the serverless hubs to build.
pub fn check(file: &FileConfig, args: &Args) -> anyhow::Result<Vec<ServerlessSpec>> {
    let mut problems = Vec::new();
    for (i, secret) in args.access_keys.iter().enumerate() {
        if let Err(error) = AccessKey::new(secret) {
            problems.push(format!("auth.access_keys[{i}]: {error}"));
        }
    }
    let security = &args.security;
    if security.jwt_secret.is_some() && security.jwt_public_key.is_some() {
        problems.push("auth: give jwt_secret or jwt_public_key, not both".to_owned());
    }
    if let Some(path) = &security.jwt_public_key
        && !path.is_file()
    {
        problems.push(format!(
            "auth.jwt_public_key: cannot read {}: no such file",
            path.display()
        ));
    }
    if security.user_id_claim.as_deref().is_some_and(str::is_empty) {
        problems.push("auth.user_id_claim: name a claim (e.g. \"email\")".to_owned());
    }
    for origin in &security.allowed_origins {
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
    if !(security.rate_limit_per_second.is_finite() && security.rate_limit_per_second > 0.0) {
        problems.push("limits.rate_limit_per_second: must be more than 0".to_owned());
    }
    match (&args.tls_cert, &args.tls_key) {
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
    for url in args.redis.iter().flat_map(|urls| urls.split(',')) {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            problems.push(format!(
                "redis.url: '{url}' is not a redis:// or rediss:// URL"
            ));
        }
    }
    if args.transports.is_empty() {
        problems.push("transports: offer at least one".to_owned());
    }
    let mut serverless = Vec::new();
    for (name, hub) in &file.hubs {
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
                } else if let Some(named) = file.upstreams.get(upstream) {
                    (named.url.clone(), named.timeout)
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
    for (name, upstream) in &file.upstreams {
        if let Err(error) = UpstreamOptions::new(upstream.url.as_str()).validate() {
            problems.push(format!("upstreams.{name}.url: {error}"));
        }
        if upstream.timeout.is_some_and(|t| t.is_zero()) {
            problems.push(format!("upstreams.{name}.timeout: must be more than 0"));
        }
    }
    if !serverless.is_empty() && args.access_keys.is_empty() {
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
pub fn transports(file: &FileConfig, name: &str, default: &[Transport]) -> Vec<Transport> {
    file.hubs
        .get(name)
        .and_then(|hub| hub.transports.as_ref())
        .map_or_else(
            || default.to_vec(),
            |list| list.iter().copied().map(Transport::from).collect(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn parse(toml: &str, argv: &[&str]) -> anyhow::Result<(FileConfig, Args)> {
        let file: FileConfig = Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| anyhow::anyhow!(e.to_string()))?;
        let mut full = vec!["tidings"];
        full.extend_from_slice(argv);
        let matches = Args::command().try_get_matches_from(full)?;
        let mut args = Args::from_arg_matches(&matches)?;
        apply(&file, &mut args, &matches);
        Ok((file, args))
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../../tidings.example.toml");
        let (file, args) = parse(text, &[]).expect("parses");
        let serverless = check(&file, &args).expect("valid");
        assert_eq!(serverless.len(), 1);
        assert_eq!(serverless[0].name, "game");
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
            max_message_size = 1000
            [redis]
            url = "redis://127.0.0.1:1"
            cluster = true
            heartbeat = "500ms"
            [hubs.chat]
            transports = ["LongPolling"]
        "#;
        let (file, args) = parse(toml, &["--keep-alive-ms", "7000"]).expect("parses");
        assert_eq!(args.listen, ["127.0.0.1:6001".parse().expect("an address")]);
        let (_, several) =
            parse("[server]\nlisten = [\"127.0.0.1:1\", \"[::1]:2\"]", &[]).expect("a list parses");
        let (_, joined) = parse("[server]\nlisten = \"127.0.0.1:1, [::1]:2\"", &[])
            .expect("a comma-separated string parses");
        let expected: Vec<SocketAddr> = ["127.0.0.1:1", "[::1]:2"]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        assert_eq!(
            (several.listen, joined.listen),
            (expected.clone(), expected)
        );
        assert_eq!(args.log_format, LogFormat::Json);
        // The flag wins over the file.
        assert_eq!(args.keep_alive_ms, 7000);
        assert_eq!(args.max_message_size, 1000);
        assert_eq!(args.redis.as_deref(), Some("redis://127.0.0.1:1"));
        assert_eq!(args.redis_heartbeat_ms, 500);
        assert!(args.redis_cluster);
        assert_eq!(
            transports(&file, "chat", &args.transports),
            [Transport::LongPolling]
        );
        assert_eq!(
            transports(&file, "test", &args.transports),
            [Transport::WebSockets, Transport::LongPolling]
        );
        // Security options plug in the same way.
        let (_, args) = parse(
            "[cors]\nallowed_origins = [\"https://app.example\"]\n[limits]\nmax_connections = 7\ntrusted_proxies = [\"10.0.0.0/8\"]\n[auth]\njwt_issuer = \"me\"\nuser_id_claim = \"email\"",
            &["--max-connections", "9"],
        )
        .expect("parses");
        assert_eq!(args.security.allowed_origins, ["https://app.example"]);
        assert_eq!(args.security.max_connections, 9);
        assert_eq!(args.security.jwt_issuer.as_deref(), Some("me"));
        assert_eq!(args.security.user_id_claim.as_deref(), Some("email"));
        assert_eq!(
            args.security
                .trusted_proxies
                .first()
                .map(ToString::to_string),
            Some("10.0.0.0/8".to_owned())
        );
        // The flag wins over the file here too.
        let (_, args) = parse(
            "[auth]\nuser_id_claim = \"email\"",
            &["--user-id-claim", "upn"],
        )
        .expect("parses");
        assert_eq!(args.security.user_id_claim.as_deref(), Some("upn"));
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
            (
                "[redis]\nurl = \"redis://a:1,http://localhost\"",
                "redis.url: 'http://localhost' is not a redis://",
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
            let (file, args) = parse(toml, &[]).expect(toml);
            let error = check(&file, &args).map(drop).expect_err(toml);
            assert!(error.to_string().contains(expected), "{toml}: {error}");
        }
    }
}
