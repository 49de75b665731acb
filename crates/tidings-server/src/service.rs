//! Service mode of the standalone server: the configuration (file,
//! environment, flags) and its check, the `token` and `check-config`
//! commands, the REST publish API over the server's hubs, and the
//! serverless hubs the configuration declares.

use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches};
use tidings::HubContext;
use tidings_service::{AccessKey, AccessKeys, ClientToken, RestApi, ServerlessHub, Upstream};

use crate::{
    Args,
    config::{self, ServerlessSpec},
};

/// The commands besides serving.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Validate the configuration (file, environment and flags) and exit:
    /// 0 if the server would start with it, 1 with the reasons if not.
    CheckConfig {
        /// Also print the settings every layer resolved to (defaults, file,
        /// environment, flags), as JSON, secrets hidden.
        #[arg(long)]
        print: bool,
    },
    /// Print a token signed with the first access key (--access-key,
    /// TIDINGS_ACCESS_KEYS or auth.access_keys): a client access token
    /// (--hub), or a REST API token for one request URL (--url).
    Token(TokenArgs),
    /// Write the TypeScript module of a hub (typed wrappers over
    /// `HubConnection` and the types of its methods).
    Typescript(crate::typescript::TypescriptArgs),
}

/// `tidings token`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("for").required(true).args(["hub", "url"])))]
pub(crate) struct TokenArgs {
    /// A client token for this hub (its `aud` claim).
    #[arg(long)]
    hub: Option<String>,
    /// A REST API token for this request URL instead (e.g.
    /// `http://127.0.0.1:5000/api/hubs/chat/:send`).
    #[arg(long, conflicts_with_all = ["user", "roles", "claims"])]
    url: Option<String>,
    /// The user identifier (`sub`): what sends to a user target.
    #[arg(long)]
    user: Option<String>,
    /// A role (`role` claim); repeat for several.
    #[arg(long = "role")]
    roles: Vec<String>,
    /// How long the token is valid: `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// An extra string claim, `name=value`; repeat for several.
    #[arg(long = "claim", value_parser = claim)]
    claims: Vec<(String, String)>,
}

fn claim(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("'{text}' is not name=value"))
}

/// What `main` does after a command.
#[derive(Debug)]
pub(crate) enum Next {
    Serve,
    Exit,
}

/// Parses the command line, reads the configuration file under it and
/// validates the result.
pub(crate) fn configure() -> anyhow::Result<(Args, Vec<ServerlessSpec>)> {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).map_err(|e| e.exit())?;
    args.settings = config::load(&args.settings, &matches, args.config.as_deref())?;
    let serverless = config::check(&args.settings).with_context(|| match &args.config {
        Some(path) => format!("invalid configuration ({})", path.display()),
        None => "invalid configuration".to_owned(),
    })?;
    // Client tokens minted with the access key (`tidings token`) are
    // bearer tokens of this server unless another secret is configured.
    let auth = &mut args.settings.auth;
    if auth.jwt_secret.is_none() && auth.jwt_public_key.is_none() {
        auth.jwt_secret = auth.access_keys.first().cloned();
    }
    Ok((args, serverless))
}

/// Runs a command, if one was given.
pub(crate) fn run_command(args: &Args, serverless: &[ServerlessSpec]) -> anyhow::Result<Next> {
    let settings = &args.settings;
    match &args.command {
        None => Ok(Next::Serve),
        Some(Command::CheckConfig { print }) => {
            let hubs: Vec<String> = config::BUILT_IN_HUBS
                .iter()
                .filter(|h| settings.server.test_hub || **h != "test")
                .map(|h| (*h).to_owned())
                .chain(
                    serverless
                        .iter()
                        .map(|s| format!("{} (serverless)", s.name)),
                )
                .collect();
            println!(
                "configuration OK: listening on {}, hubs: {}, REST API {}, backplane {}",
                settings
                    .server
                    .listen
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and "),
                hubs.join(", "),
                if settings.auth.access_keys.is_empty() {
                    "off (no access key)"
                } else {
                    "on"
                },
                if settings.redis.url.is_some() {
                    "Redis"
                } else {
                    "none"
                },
            );
            if *print {
                println!("{}", config::effective(settings)?);
            }
            Ok(Next::Exit)
        }
        Some(Command::Typescript(typescript)) => {
            crate::typescript::run(typescript)?;
            Ok(Next::Exit)
        }
        Some(Command::Token(token)) => {
            let keys = access_keys(&settings.auth.access_keys)?;
            let key = keys.primary().context(
                "no access key: give --access-key, TIDINGS_ACCESS_KEYS or auth.access_keys in the configuration file",
            )?;
            if let Some(url) = &token.url {
                println!("{}", tidings_service::rest_token(key, url, token.ttl)?);
                return Ok(Next::Exit);
            }
            let hub = token.hub.as_deref().unwrap_or_default();
            let mut client = ClientToken::new(hub).ttl(token.ttl);
            if let Some(user) = &token.user {
                client = client.user(user.as_str());
            }
            for role in &token.roles {
                client = client.role(role.as_str());
            }
            for (name, value) in &token.claims {
                client = client.claim(name.as_str(), value.as_str());
            }
            println!("{}", client.sign(key)?);
            Ok(Next::Exit)
        }
    }
}

/// The access keys from their secret texts (the first signs).
pub(crate) fn access_keys(secrets: &[String]) -> anyhow::Result<AccessKeys> {
    let keys = secrets
        .iter()
        .enumerate()
        .map(|(i, secret)| {
            AccessKey::new(secret).with_context(|| format!("access key #{} is unusable", i + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(AccessKeys::new(keys))
}

/// The REST API over `hubs`. Without keys it still answers `/api/health`
/// and refuses everything else with 401.
pub(crate) fn rest_api<'a>(
    secrets: &[String],
    hubs: impl IntoIterator<Item = (&'a str, HubContext)>,
) -> anyhow::Result<RestApi> {
    let keys = access_keys(secrets)?;
    if keys.is_empty() {
        tracing::info!("no access key: the REST API refuses every request");
    }
    Ok(hubs
        .into_iter()
        .fold(RestApi::new(keys), |api, (name, hub)| api.hub(name, hub)))
}

/// A serverless hub, signing what it posts with the access keys.
pub(crate) fn serverless_hub(
    spec: &ServerlessSpec,
    secrets: &[String],
) -> anyhow::Result<ServerlessHub> {
    let options = spec.upstream.clone().keys(access_keys(secrets)?);
    let upstream = Upstream::new(spec.name.as_str(), options)
        .with_context(|| format!("hub {}: unusable upstream", spec.name))?;
    tracing::info!(hub = %spec.name, upstream = %spec.upstream.template(), "serverless hub");
    Ok(ServerlessHub::new(upstream))
}
