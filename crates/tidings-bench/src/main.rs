//! `tidings-bench`: the load generator.
//!
//! ```text
//! tidings-bench echo      --connections 100 --duration 10        # invoke Echo and await, in a loop
//! tidings-bench broadcast --connections 9000 --rate 10,20,40     # one sender, N listeners
//! tidings-bench group     --connections 9000 --group-size 100 --rate 400
//! tidings-bench connect   --concurrency 50 --duration 10         # connection storm
//! tidings-bench idle      --connections 19800 --server-pid PID   # RSS per idle connection
//! tidings-bench idle      --transport sse --server-pid PID       # … over Server-Sent Events (or longpolling)
//! tidings-bench suite                                            # everything, against tidings and the raw baseline
//! tidings-bench million   --connections 1000000                  # a cluster on one Redis holding N connections
//! ```
//!
//! Connections are spread over the source addresses 127.0.0.2, 127.0.0.3, …
//! and over several worker processes when one process could not hold them
//! all (`--per-process`).

mod conn;
mod http_conn;
mod million;
mod procs;
mod report;
mod run;
mod scenario;
mod stats;
mod suite;
mod sysinfo;
mod worker;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tidings_protocol::Protocol;

use crate::{
    conn::{Endpoint, ServerKind, Transport},
    run::{Report, RunConfig},
    scenario::{Phase, Scenario, WorkerSpec},
};

#[derive(Debug, Parser)]
#[command(
    name = "tidings-bench",
    version,
    about = "Load generator for tidings (SignalR) and a raw WebSocket baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// N connections invoke `Echo` and await the answer, in a loop.
    Echo(RunArgs),
    /// N listeners and one sender at fixed rates: fan-out latency and deliveries.
    Broadcast(RunArgs),
    /// Listeners in groups of `--group-size`, one sender per group.
    Group(RunArgs),
    /// Connection storm: connects per second and handshake latency.
    Connect(RunArgs),
    /// Hold N idle connections and report the server's RSS per connection.
    Idle(RunArgs),
    /// The whole suite: starts the servers, runs every scenario against the
    /// raw baseline and tidings, JSON and MessagePack, and writes the results.
    Suite(suite::SuiteArgs),
    /// Many connections: starts redis-server and a cluster of tidings
    /// servers, holds N connections, broadcasts to all, sends to groups,
    /// and accounts for memory and keep-alive CPU.
    Million(million::MillionArgs),
    /// (internal) One worker process of a run.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
}

/// Options shared by every scenario.
#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// The server: `tidings` (SignalR hub) or `raw` (the tidings-baseline server).
    #[arg(long, value_enum, default_value = "tidings")]
    server: ServerArg,
    /// Address of the server.
    #[arg(long, default_value = "127.0.0.1:5000")]
    url: SocketAddr,
    /// Further servers of a cluster (sharing a Redis backplane): listeners
    /// are spread over `--url` and these; the sender uses `--url`.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<SocketAddr>,
    /// Hub path on a tidings server (the default, the test hub, is served
    /// only by a server started with `--test-hub`).
    #[arg(long, default_value = "/hubs/test")]
    hub: String,
    /// Hub protocol: json or messagepack.
    #[arg(long, default_value = "json", value_parser = parse_protocol)]
    protocol: Protocol,
    /// Idle: the transport of the connections held (Server-Sent Events and
    /// Long Polling: tidings only; the server must offer it).
    #[arg(long, value_enum, default_value = "websockets")]
    transport: Transport,
    /// Connections (listeners, for broadcast and group).
    #[arg(short = 'n', long, default_value_t = 100)]
    connections: usize,
    /// Seconds each measured phase lasts.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Echo: seconds at the start of the phase that are not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Echo: each connection stops after this many echoes, and the run
    /// ends when all have (a fixed amount of work: `scripts/callgrind.sh`).
    #[arg(long)]
    echoes: Option<u64>,
    /// Broadcast/group: messages per second (all senders together); a list runs one phase per rate.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    rate: Vec<f64>,
    /// Group: listeners per group.
    #[arg(long, default_value_t = 100)]
    group_size: usize,
    /// Broadcast/group: seconds to wait for deliveries after the last send.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Connect: connections opened at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Worker processes (0: as few as --per-process allows).
    #[arg(long, default_value_t = 0)]
    processes: usize,
    /// Most connections one worker process opens (a process may hold only so many files).
    #[arg(long, default_value_t = 19_000)]
    per_process: usize,
    /// Source addresses to spread connections over (127.0.0.2 onwards).
    #[arg(long, default_value_t = 8)]
    sources: usize,
    /// Bytes of padding in each message.
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Connections being opened at once while setting up.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Idle: the server process whose RSS is read.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the reports as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a latency plot (SVG) to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ServerArg {
    Tidings,
    Raw,
    /// The raw baseline started with `--codec tokio-websockets`.
    RawTws,
}

fn parse_protocol(name: &str) -> Result<Protocol, String> {
    Protocol::from_name(name).ok_or_else(|| format!("unknown protocol '{name}'"))
}

fn ms(seconds: f64) -> u64 {
    (seconds * 1000.0).round().max(0.0) as u64
}

impl RunArgs {
    fn config(&self, scenario: Scenario) -> RunConfig {
        RunConfig {
            endpoint: Endpoint {
                kind: match self.server {
                    ServerArg::Tidings => ServerKind::Tidings,
                    ServerArg::Raw => ServerKind::Raw,
                    ServerArg::RawTws => ServerKind::RawTws,
                },
                server: self.url,
                peers: self.peers.clone(),
                hub_path: self.hub.clone(),
                protocol: self.protocol,
                transport: self.transport,
            },
            scenario,
            connections: self.connections,
            group_size: self.group_size,
            sources: self.sources,
            payload: self.payload,
            processes: self.processes,
            per_process: self.per_process,
            connect_concurrency: self.connect_concurrency,
            server_pid: self.server_pid,
            settle: std::time::Duration::from_secs(2),
            progress: !self.quiet,
            keep_alive: std::time::Duration::from_millis(crate::scenario::DEFAULT_KEEP_ALIVE_MS),
            group_servers: 0,
        }
    }

    fn phases(&self, scenario: Scenario) -> Vec<Phase> {
        let duration_ms = ms(self.duration);
        match scenario {
            Scenario::Echo => vec![Phase::Echo {
                duration_ms: duration_ms + ms(self.warmup),
                warmup_ms: ms(self.warmup),
                per_connection: self.echoes,
            }],
            Scenario::Broadcast | Scenario::Group | Scenario::Cluster => self
                .rate
                .iter()
                .map(|&rate| Phase::Fanout {
                    rate,
                    duration_ms,
                    drain_ms: ms(self.drain),
                    broadcast: false,
                })
                .collect(),
            Scenario::Connect => vec![Phase::Connect {
                duration_ms,
                concurrency: self.concurrency,
            }],
            Scenario::Idle => vec![Phase::Hold],
            Scenario::Million => unreachable!("the million scenario has its own subcommand"),
        }
    }
}

fn write_outputs(
    reports: &[Report],
    json: Option<&PathBuf>,
    svg: Option<&PathBuf>,
) -> anyhow::Result<()> {
    println!("{}", report::table(reports));
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(reports)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = svg {
        let title = reports
            .first()
            .map(|r| format!("{} latency", r.scenario.name()))
            .unwrap_or_default();
        std::fs::write(path, report::svg(reports, &title))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (scenario, args) = match &cli.command {
        Cmd::Worker { spec } => {
            let spec: WorkerSpec = serde_json::from_str(spec).context("bad worker spec")?;
            return runtime.block_on(worker::run(spec));
        }
        Cmd::Suite(args) => return runtime.block_on(suite::run(args.clone())),
        Cmd::Million(args) => return runtime.block_on(million::run(args.clone())),
        Cmd::Echo(args) => (Scenario::Echo, args),
        Cmd::Broadcast(args) => (Scenario::Broadcast, args),
        Cmd::Group(args) => (Scenario::Group, args),
        Cmd::Connect(args) => (Scenario::Connect, args),
        Cmd::Idle(args) => (Scenario::Idle, args),
    };
    if args.transport != Transport::WebSockets && scenario != Scenario::Idle {
        anyhow::bail!("--transport is for the idle scenario only");
    }
    let config = args.config(scenario);
    let phases = args.phases(scenario);
    let reports = runtime.block_on(run::run(&config, &phases, |_| true))?;
    write_outputs(&reports, args.json.as_ref(), args.svg.as_ref())?;
    if reports
        .iter()
        .any(|r| r.connections == 0 && scenario != Scenario::Connect)
    {
        anyhow::bail!(
            "no connection could be opened: {}",
            reports
                .iter()
                .find_map(|r| r.first_error.clone())
                .unwrap_or_default()
        );
    }
    Ok(())
}
