//! `tidings-bench suite`: starts the raw baseline and the tidings server
//! (release binaries next to this one), runs every scenario against both
//! with JSON and MessagePack, and writes `results.json`, `results.md`
//! (tables, ratios to the baseline, targets met or missed) and latency plots.
//!
//! Each scenario gets fresh server processes, so memory and state never
//! carry over, and the baseline and tidings runs of one scenario follow each
//! other so that both see the same machine conditions.
//!
//! Echo and broadcast, whose targets are ratios to the baseline, run in
//! several rounds (`--rounds`), the baseline first in one round and tidings
//! first in the next, and are compared by the median round: on a shared
//! 2-core machine one run's p99 moves by several percent from run to run,
//! as much as the differences being measured.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tidings_protocol::Protocol;

use crate::{
    conn::{Endpoint, ServerKind, Transport},
    procs::{Redis, Server},
    report,
    run::{self, Report, RunConfig},
    scenario::{Phase, Scenario},
    stats,
};

/// Targets: tidings' echo throughput as a share of the raw baseline's.
const ECHO_TARGET: f64 = 1.0;
/// Broadcast deliveries per second as a share of the raw baseline's: the
/// same rate (every message delivered), to two decimals.
const BROADCAST_TARGET: f64 = 0.995;
/// Highest broadcast rate is the last one whose p99 stays under this.
const P99_LIMIT_MS: f64 = 50.0;
/// The one-sided p-value below which tidings' p99 rounds count as higher
/// than the baseline's beyond their spread (see [`stats::higher_rounds`]).
const SIGNIFICANCE: f64 = 0.05;
/// Server memory per idle WebSocket connection.
const IDLE_TARGET_BYTES: f64 = 4.0 * 1024.0;
/// Memory per machine for the projection.
const MACHINE_BYTES: f64 = 24.0 * 1024.0 * 1024.0 * 1024.0;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SuiteArgs {
    /// Directory for results.json, results.md and the plots.
    #[arg(long, default_value = "bench-results")]
    out_dir: PathBuf,
    /// A short run with few connections, to check that everything works.
    #[arg(long)]
    quick: bool,
    /// The tidings server binary (default: `tidings` next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The baseline binary (default: `tidings-baseline` next to this executable).
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Scenarios to run (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    scenarios: Vec<Scenario>,
    /// Echo and broadcast: rounds of both servers, alternating which goes
    /// first; the figures compared are the median round's.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Hub protocols to run.
    #[arg(long, value_delimiter = ',', default_value = "json,messagepack", value_parser = parse_protocol)]
    protocols: Vec<Protocol>,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Echo: seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Fan-out: seconds to wait for deliveries after the last send.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Echo: connections.
    #[arg(long, default_value_t = 100)]
    echo_connections: usize,
    /// Broadcast: listeners.
    #[arg(long, default_value_t = 9_000)]
    broadcast_connections: usize,
    /// Broadcast: rates tried in order; the ramp stops after the first rate
    /// whose p99 exceeds 50 ms or that loses messages (the first three always run).
    #[arg(long, value_delimiter = ',', default_value = "10,20,40,80,160,320")]
    broadcast_rates: Vec<f64>,
    /// Broadcast: rates below the targets, run once (in the first round)
    /// so that the highest rate with p99 under 50 ms is found, or shown not
    /// to exist, when the target rates are already above it.
    #[arg(long, value_delimiter = ',', default_value = "1,5")]
    low_rates: Vec<f64>,
    /// Group: listeners, group size and messages per second.
    #[arg(long, default_value_t = 9_000)]
    group_connections: usize,
    #[arg(long, default_value_t = 100)]
    group_size: usize,
    #[arg(long, default_value_t = 400.0)]
    group_rate: f64,
    /// Connect: connections opened at once.
    #[arg(long, default_value_t = 50)]
    connect_concurrency: usize,
    /// Idle: connections held on one server process (a process may open
    /// 20 000 files here; the server needs a few for itself).
    #[arg(long, default_value_t = 19_800)]
    idle_connections: usize,
    /// Most connections per load-generator process.
    #[arg(long, default_value_t = 19_000)]
    per_process: usize,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Fail if any run had errors, failed connections or lost messages (for
    /// smoke tests; figures under heavy load may legitimately lose messages).
    #[arg(long)]
    check: bool,
}

fn parse_protocol(name: &str) -> Result<Protocol, String> {
    Protocol::from_name(name).ok_or_else(|| format!("unknown protocol '{name}'"))
}

impl SuiteArgs {
    fn shrink(&mut self) {
        if self.quick {
            self.duration = self.duration.min(2.0);
            self.echo_connections = self.echo_connections.min(10);
            self.broadcast_connections = self.broadcast_connections.min(200);
            self.broadcast_rates.truncate(2);
            self.low_rates.clear();
            self.group_connections = self.group_connections.min(200);
            self.group_size = self.group_size.min(20);
            self.group_rate = self.group_rate.min(50.0);
            self.connect_concurrency = self.connect_concurrency.min(4);
            self.idle_connections = self.idle_connections.min(200);
            self.warmup = self.warmup.min(0.5);
            self.drain = self.drain.min(3.0);
            self.rounds = 1;
        }
        self.rounds = self.rounds.max(1);
    }
}

/// One run of the suite, with the load of the machine when it started.
#[derive(Debug, Serialize)]
struct Entry {
    load_1min: f64,
    /// The round of a repeated scenario (0 for the others).
    round: usize,
    #[serde(flatten)]
    report: Report,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    memory_gib: f64,
    kernel: String,
    max_open_files: String,
}

#[derive(Debug, Serialize)]
struct Results {
    unix_time: u64,
    quick: bool,
    machine: Machine,
    load_at_start: [f64; 3],
    runs: Vec<Entry>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn load() -> [f64; 3] {
    let text = read("/proc/loadavg");
    let mut parts = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        parts.next().unwrap_or(0.0),
        parts.next().unwrap_or(0.0),
        parts.next().unwrap_or(0.0),
    ]
}

fn machine() -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let limits = read("/proc/self/limits");
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default(),
        memory_gib: meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        max_open_files: limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| {
                l.split_whitespace()
                    .skip(3)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default(),
    }
}

/// Runs the cluster scenario: the broadcast through a Redis backplane with
/// the listeners on one server, then spread over three, in one run.
async fn run_cluster(
    args: &SuiteArgs,
    server_bin: &Path,
    protocol: Protocol,
) -> anyhow::Result<Vec<Report>> {
    let redis = Redis::start().await?;
    let mut reports = Vec::new();
    for (round, count) in [1usize, 3].into_iter().enumerate() {
        // A fresh channel prefix per round: nothing of the previous round's
        // servers (presence, registry) is seen by the next.
        let extra = [
            "--redis".to_owned(),
            redis.url.clone(),
            "--redis-prefix".to_owned(),
            format!("bench{round}:"),
        ];
        let mut servers = Vec::new();
        for _ in 0..count {
            servers.push(Server::start(server_bin, ServerKind::Tidings, &extra).await?);
        }
        let outcome = run_one(
            args,
            (Scenario::Cluster, Transport::WebSockets),
            protocol,
            ServerKind::Tidings,
            &servers,
            0,
        )
        .await;
        for server in servers {
            server.stop().await;
        }
        reports.extend(outcome?);
        if !args.quick {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    redis.stop().await;
    Ok(reports)
}

pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable directory")?;
    Ok(dir.join(name))
}

pub(crate) async fn run(mut args: SuiteArgs) -> anyhow::Result<()> {
    args.shrink();
    let server_bin = match &args.server_bin {
        Some(path) => path.clone(),
        None => sibling("tidings")?,
    };
    let baseline_bin = match &args.baseline_bin {
        Some(path) => path.clone(),
        None => sibling("tidings-baseline")?,
    };
    for bin in [&server_bin, &baseline_bin] {
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --release -p tidings-server -p tidings-bench)",
                bin.display()
            );
        }
    }
    std::fs::create_dir_all(&args.out_dir)?;
    let scenarios = if args.scenarios.is_empty() {
        vec![
            Scenario::Echo,
            Scenario::Broadcast,
            Scenario::Group,
            Scenario::Connect,
            Scenario::Idle,
            Scenario::Cluster,
        ]
    } else {
        args.scenarios.clone()
    };
    let mut results = Results {
        unix_time: crate::worker::unix_us() / 1_000_000,
        quick: args.quick,
        machine: machine(),
        load_at_start: load(),
        runs: Vec::new(),
    };
    eprintln!(
        "machine: {} CPUs, {:.1} GiB; load {:?}",
        results.machine.cpus, results.machine.memory_gib, results.load_at_start
    );
    for &scenario in &scenarios {
        for &protocol in &args.protocols {
            if scenario == Scenario::Cluster {
                let load_1min = load()[0];
                let reports = run_cluster(&args, &server_bin, protocol)
                    .await
                    .with_context(|| format!("cluster broadcast ({protocol})"))?;
                println!("{}", report::table(&reports));
                results.runs.extend(reports.into_iter().map(|report| Entry {
                    load_1min,
                    round: 0,
                    report,
                }));
                continue;
            }
            let rounds = if matches!(scenario, Scenario::Echo | Scenario::Broadcast) {
                args.rounds
            } else {
                1
            };
            // Baseline first in even rounds, tidings first in odd ones, so
            // that neither always runs on the machine the other just warmed
            // (or heated). The second raw baseline (tokio-websockets) runs
            // between them, in echo and broadcast: where the transport's
            // own limit stands.
            let second = matches!(scenario, Scenario::Echo | Scenario::Broadcast);
            let order = (0..rounds).flat_map(|round| {
                let mut kinds = vec![ServerKind::Raw];
                if second {
                    kinds.push(ServerKind::RawTws);
                }
                kinds.push(ServerKind::Tidings);
                if round % 2 == 1 {
                    kinds.reverse();
                }
                kinds.into_iter().map(move |kind| (round, kind))
            });
            // Idle tidings connections are also held over the HTTP
            // transports (Server-Sent Events carry text only).
            let order = order.flat_map(|(round, kind)| {
                let transports = match (scenario, kind) {
                    (Scenario::Idle, ServerKind::Tidings) => {
                        let mut transports = vec![Transport::WebSockets];
                        if protocol == Protocol::Json {
                            transports.push(Transport::ServerSentEvents);
                        }
                        transports.push(Transport::LongPolling);
                        transports
                    }
                    _ => vec![Transport::WebSockets],
                };
                transports
                    .into_iter()
                    .map(move |transport| (round, kind, transport))
            });
            for (round, kind, transport) in order {
                let binary = match kind {
                    ServerKind::Raw | ServerKind::RawTws => &baseline_bin,
                    ServerKind::Tidings => &server_bin,
                };
                let load_1min = load()[0];
                let extra = match transport {
                    Transport::WebSockets => Vec::new(),
                    other => vec!["--transports".to_owned(), other.server_name().to_owned()],
                };
                let server = Server::start(binary, kind, &extra).await?;
                let outcome = run_one(
                    &args,
                    (scenario, transport),
                    protocol,
                    kind,
                    std::slice::from_ref(&server),
                    round,
                )
                .await;
                server.stop().await;
                let reports = outcome.with_context(|| {
                    format!(
                        "{} against {} ({protocol}, {})",
                        scenario.name(),
                        kind.name(),
                        transport.name()
                    )
                })?;
                println!("{}", report::table(&reports));
                results.runs.extend(reports.into_iter().map(|report| Entry {
                    load_1min,
                    round,
                    report,
                }));
                if !args.quick {
                    // Let sockets of the previous run finish closing.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    let json = args.out_dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    let markdown = markdown(&results);
    std::fs::write(args.out_dir.join("results.md"), &markdown)?;
    for scenario in [Scenario::Echo, Scenario::Broadcast] {
        // The median round of each server and protocol.
        let rate = (scenario == Scenario::Broadcast).then_some(20.0);
        let results = &results;
        let reports: Vec<Report> = [ServerKind::Raw, ServerKind::RawTws, ServerKind::Tidings]
            .into_iter()
            .flat_map(|kind| {
                args.protocols
                    .iter()
                    .filter_map(move |p| find(results, scenario, kind, p.name(), rate))
            })
            .cloned()
            .collect();
        if !reports.is_empty() {
            let title = match scenario {
                Scenario::Broadcast => "broadcast latency at 20 msg/s".to_owned(),
                _ => format!("{} latency", scenario.name()),
            };
            std::fs::write(
                args.out_dir.join(format!("{}.svg", scenario.name())),
                report::svg(&reports, &title),
            )?;
        }
    }
    println!("{markdown}");
    eprintln!("results written to {}", args.out_dir.display());
    if args.check {
        let bad: Vec<String> = results
            .runs
            .iter()
            .map(|e| &e.report)
            .filter(|r| !healthy(r))
            .map(|r| {
                format!(
                    "{} against {} ({}): {} errors, {} failed connections, {} of {:?} delivered ({:?} sent, {} late), throughput {:.0}/s, {} of {} open at the end; first error: {}",
                    r.scenario.name(),
                    r.server.name(),
                    r.protocol,
                    r.errors,
                    r.failed_connections,
                    r.ops,
                    r.expected,
                    r.sent,
                    r.late,
                    r.throughput,
                    r.alive,
                    r.connections,
                    r.first_error.as_deref().unwrap_or("none")
                )
            })
            .collect();
        if !bad.is_empty() {
            bail!("unhealthy runs:\n{}", bad.join("\n"));
        }
    }
    Ok(())
}

/// A run that did what it should: no errors, every connection opened and
/// still open, every message delivered, something measured.
fn healthy(r: &Report) -> bool {
    let measured = match r.scenario {
        Scenario::Idle => r.rss.is_some(),
        _ => r.ops > 0 && r.latency.count > 0,
    };
    let open = r.scenario == Scenario::Connect || r.alive == r.connections;
    r.errors == 0 && r.failed_connections == 0 && r.all_delivered() && measured && open
}

async fn run_one(
    args: &SuiteArgs,
    (scenario, transport): (Scenario, Transport),
    protocol: Protocol,
    kind: ServerKind,
    servers: &[Server],
    round: usize,
) -> anyhow::Result<Vec<Report>> {
    let server = servers.first().context("no server")?;
    let duration_ms = (args.duration * 1000.0) as u64;
    let mut config = RunConfig {
        endpoint: Endpoint {
            kind,
            server: server.address,
            peers: servers[1..].iter().map(|s| s.address).collect(),
            hub_path: "/hubs/test".to_owned(),
            protocol,
            transport,
        },
        scenario,
        connections: 0,
        group_size: args.group_size,
        sources: 16,
        payload: 32,
        processes: 0,
        per_process: args.per_process,
        connect_concurrency: 200,
        server_pid: Some(server.pid),
        settle: Duration::from_millis(if args.quick { 300 } else { 2_000 }),
        progress: !args.quiet,
        keep_alive: Duration::from_millis(crate::scenario::DEFAULT_KEEP_ALIVE_MS),
        group_servers: 0,
    };
    let drain_ms = (args.drain * 1000.0) as u64;
    let warmup_ms = (args.warmup * 1000.0) as u64;
    // Phases that run whatever the latency of the ones before.
    let mut always = 3;
    let phases = match scenario {
        Scenario::Echo => {
            config.connections = args.echo_connections;
            vec![Phase::Echo {
                duration_ms: duration_ms + warmup_ms,
                warmup_ms,
                per_connection: None,
            }]
        }
        Scenario::Broadcast => {
            config.connections = args.broadcast_connections;
            // Later rounds repeat the target rates only; the low rates and
            // the ramp beyond the targets run once.
            let (low, rates) = if round == 0 {
                (&args.low_rates[..], usize::MAX)
            } else {
                (&[][..], 3)
            };
            always = low.len() + 3;
            low.iter()
                .chain(args.broadcast_rates.iter().take(rates))
                .map(|&rate| Phase::Fanout {
                    rate,
                    duration_ms,
                    drain_ms,
                    broadcast: false,
                })
                .collect()
        }
        Scenario::Group => {
            config.connections = args.group_connections;
            vec![Phase::Fanout {
                rate: args.group_rate,
                duration_ms,
                drain_ms,
                broadcast: false,
            }]
        }
        Scenario::Connect => vec![Phase::Connect {
            duration_ms,
            concurrency: args.connect_concurrency,
        }],
        Scenario::Idle => {
            config.connections = args.idle_connections;
            vec![Phase::Hold]
        }
        Scenario::Million => bail!("the million scenario has its own subcommand"),
        Scenario::Cluster => {
            config.connections = args.broadcast_connections;
            // The target rates only: the cluster figures compare one server
            // with three, not the ramp.
            args.broadcast_rates
                .iter()
                .take(3)
                .map(|&rate| Phase::Fanout {
                    rate,
                    duration_ms,
                    drain_ms,
                    broadcast: false,
                })
                .collect()
        }
    };
    let mut index = 0;
    run::run(&config, &phases, |report| {
        index += 1;
        // The ramp: the low rates and the three target rates always run;
        // after that, stop once latency or delivery gives out.
        index < always || (report.latency.p99_ms < P99_LIMIT_MS && report.all_delivered())
    })
    .await
}

fn find<'a>(
    results: &'a Results,
    scenario: Scenario,
    kind: ServerKind,
    protocol: &str,
    rate: Option<f64>,
) -> Option<&'a Report> {
    median(rounds_of(results, scenario, kind, protocol, rate, 1))
}

/// The median of a run's rounds (by p99 latency for fan-out, by
/// throughput for echo and connect, by memory for idle).
fn median(mut rounds: Vec<&Report>) -> Option<&Report> {
    let key = |r: &Report| match r.scenario {
        Scenario::Echo | Scenario::Connect => r.throughput,
        Scenario::Idle => r.rss.map_or(0.0, |rss| rss.per_connection_bytes),
        Scenario::Broadcast | Scenario::Group | Scenario::Cluster | Scenario::Million => {
            r.latency.p99_ms
        }
    };
    rounds.sort_by(|a, b| key(a).total_cmp(&key(b)));
    rounds.get(rounds.len().saturating_sub(1) / 2).copied()
}

/// Every round of one scenario, server, protocol and rate, in run order.
fn rounds_of<'a>(
    results: &'a Results,
    scenario: Scenario,
    kind: ServerKind,
    protocol: &str,
    rate: Option<f64>,
    servers: usize,
) -> Vec<&'a Report> {
    results
        .runs
        .iter()
        .map(|e| &e.report)
        .filter(|r| {
            r.scenario == scenario
                && r.transport == Transport::WebSockets
                && r.server == kind
                && r.protocol == protocol
                && r.rate == rate
                && r.servers == servers
        })
        .collect()
}

/// The figures of every round, for the targets' lines: "a, b, c".
fn listed(rounds: &[&Report], figure: impl Fn(&Report) -> String) -> String {
    rounds
        .iter()
        .map(|r| figure(r))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each scenario, protocol, rate and server count once, in run order.
fn distinct_tidings_runs(reports: &[Report]) -> Vec<&Report> {
    let mut seen = Vec::new();
    // The HTTP transports' idle runs have lines of their own.
    for r in reports
        .iter()
        .filter(|r| r.server == ServerKind::Tidings && r.transport == Transport::WebSockets)
    {
        let same = |s: &&Report| {
            s.scenario == r.scenario
                && s.protocol == r.protocol
                && s.rate == r.rate
                && s.servers == r.servers
        };
        if !seen.iter().any(same) {
            seen.push(r);
        }
    }
    seen
}

/// Each round's ratio of tidings' figure to the baseline's, the rounds
/// paired in run order (the same machine conditions): "a, b, c".
fn per_round(
    tidings: &[&Report],
    raw: &[&Report],
    figure: impl Fn(&Report) -> Option<f64>,
) -> String {
    tidings
        .iter()
        .zip(raw)
        .map(|(t, raw)| match (figure(t), figure(raw)) {
            (Some(t), Some(raw)) => format!("{:.2}", ratio(t, raw)),
            _ => "–".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(met: bool) -> &'static str {
    if met { "**met**" } else { "**missed**" }
}

/// The Markdown report: machine, every run, ratios to the baseline, and the
/// targets met or missed.
fn markdown(results: &Results) -> String {
    let mut out = String::new();
    let m = &results.machine;
    let _ = writeln!(
        out,
        "Machine: {} CPUs ({}), {:.1} GiB, Linux {}, open files {}. Load average at start: {:.2} {:.2} {:.2}.{}\n",
        m.cpus,
        m.cpu_model,
        m.memory_gib,
        m.kernel,
        m.max_open_files,
        results.load_at_start[0],
        results.load_at_start[1],
        results.load_at_start[2],
        if results.quick {
            " Quick run (few connections, short phases): not for comparison."
        } else {
            ""
        }
    );
    let reports: Vec<Report> = results.runs.iter().map(|e| e.report.clone()).collect();
    out.push_str("### Every run\n\n");
    out.push_str(&report::table(&reports));
    let loads: Vec<String> = results
        .runs
        .iter()
        .map(|e| format!("{:.2}", e.load_1min))
        .collect();
    let _ = writeln!(
        out,
        "\n1-minute load before each run, in order: {}.\n",
        loads.join(", ")
    );
    let rounds = results.runs.iter().map(|e| e.round + 1).max().unwrap_or(1);
    if rounds > 1 {
        let _ = writeln!(
            out,
            "Echo and broadcast ran in {rounds} rounds (above in run order: the baseline first in the 1st, 3rd, … round, tidings first in the 2nd, 4th, …). The tables below compare the median round of each (by p99 latency for broadcast, by throughput for echo); the targets list every round.\n"
        );
    }

    out.push_str("### Ratios to the raw WebSocket baseline\n\n");
    out.push_str("| scenario | protocol | rate/s | raw throughput/s | tidings throughput/s | ratio | raw p99 ms | tidings p99 ms |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for t in distinct_tidings_runs(&reports) {
        let Some(t) = median(rounds_of(
            results,
            t.scenario,
            t.server,
            &t.protocol,
            t.rate,
            t.servers,
        )) else {
            continue;
        };
        // A cluster run is compared with the single raw server's broadcast.
        let baseline = match t.scenario {
            Scenario::Cluster => Scenario::Broadcast,
            other => other,
        };
        let Some(raw) = find(results, baseline, ServerKind::Raw, &t.protocol, t.rate) else {
            continue;
        };
        if t.scenario == Scenario::Idle {
            continue;
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            match t.scenario {
                Scenario::Cluster => format!("cluster ({})", t.server_label()),
                other => other.name().to_owned(),
            },
            t.protocol,
            t.rate.map(|r| r.to_string()).unwrap_or_default(),
            report::per_second(raw.throughput),
            report::per_second(t.throughput),
            ratio(t.throughput, raw.throughput),
            raw.latency.p99_ms,
            t.latency.p99_ms,
        );
    }

    out.push_str("\n### Targets\n\n");
    for protocol in ["json", "messagepack"] {
        if let (Some(t), Some(raw)) = (
            find(results, Scenario::Echo, ServerKind::Tidings, protocol, None),
            find(results, Scenario::Echo, ServerKind::Raw, protocol, None),
        ) {
            let r = ratio(t.throughput, raw.throughput);
            let every = |kind| rounds_of(results, Scenario::Echo, kind, protocol, None, 1);
            let (t_rounds, raw_rounds) = (every(ServerKind::Tidings), every(ServerKind::Raw));
            let per_second = |r: &Report| format!("{:.0}", r.throughput);
            let _ = writeln!(
                out,
                "- echo, {protocol}: {:.0}/s vs raw {:.0}/s = {r:.2} × (target ≥ {ECHO_TARGET}; rounds: tidings {}, raw {}; ratio per round {}): {}",
                t.throughput,
                raw.throughput,
                listed(&t_rounds, per_second),
                listed(&raw_rounds, per_second),
                per_round(&t_rounds, &raw_rounds, |r| Some(r.throughput)),
                verdict(r >= ECHO_TARGET && t_rounds.iter().all(|t| t.errors == 0))
            );
        }
        if let Some(tws) = find(results, Scenario::Echo, ServerKind::RawTws, protocol, None) {
            let rounds = rounds_of(
                results,
                Scenario::Echo,
                ServerKind::RawTws,
                protocol,
                None,
                1,
            );
            let _ = writeln!(
                out,
                "- echo, {protocol}, second raw baseline (tokio-websockets): {:.0}/s (rounds: {})",
                tws.throughput,
                listed(&rounds, |r| format!("{:.0}", r.throughput)),
            );
        }
        if let Some(line) = cpu_line(results, Scenario::Echo, protocol, None) {
            out.push_str(&line);
        }
        for rate in [10.0, 20.0, 40.0] {
            let (Some(t), Some(raw)) = (
                find(
                    results,
                    Scenario::Broadcast,
                    ServerKind::Tidings,
                    protocol,
                    Some(rate),
                ),
                find(
                    results,
                    Scenario::Broadcast,
                    ServerKind::Raw,
                    protocol,
                    Some(rate),
                ),
            ) else {
                continue;
            };
            let r = ratio(t.throughput, raw.throughput);
            let every =
                |kind| rounds_of(results, Scenario::Broadcast, kind, protocol, Some(rate), 1);
            let (t_rounds, raw_rounds) = (every(ServerKind::Tidings), every(ServerKind::Raw));
            // Every message of every round, and the median round's p99.
            let delivered: u64 = t_rounds.iter().map(|t| t.ops).sum();
            let expected: u64 = t_rounds.iter().map(|t| t.expected.unwrap_or(0)).sum();
            // The target: every message delivered in every round, at the
            // baseline's rate. The p99 is reported beside the baseline's,
            // with how far the rounds of the two overlap.
            let met = t_rounds.iter().all(|t| t.all_delivered() && t.errors == 0)
                && r >= BROADCAST_TARGET;
            let p99 = |r: &Report| format!("{:.1}", r.latency.p99_ms);
            let p99s = |rounds: &[&Report]| -> Vec<f64> {
                rounds.iter().map(|r| r.latency.p99_ms).collect()
            };
            let test = stats::higher_rounds(&p99s(&t_rounds), &p99s(&raw_rounds));
            let evidence = test.map_or_else(String::new, |test| {
                let reading = if test.p_value < SIGNIFICANCE {
                    "higher beyond the rounds' spread"
                } else if test.p_value > 1.0 - SIGNIFICANCE {
                    "lower beyond the rounds' spread"
                } else {
                    "no difference beyond the rounds' spread"
                };
                format!(
                    "; tidings' p99 the higher in {} of {} pairs of rounds, one-sided p = {:.2}: {reading}",
                    test.higher_pairs, test.pairs, test.p_value
                )
            });
            let _ = writeln!(
                out,
                "- broadcast to {} at {rate}/s, {protocol}: delivered {delivered}/{expected} over {} rounds, {:.0}/s = {r:.2} × raw (target: all delivered, 1.00 × raw; ratio per round {}): {}; p99 {:.2} ms vs raw {:.2} ms (reported; rounds: tidings {}, raw {}{evidence})",
                t.connections,
                t_rounds.len(),
                t.throughput,
                per_round(&t_rounds, &raw_rounds, |r| Some(r.throughput)),
                verdict(met),
                t.latency.p99_ms,
                raw.latency.p99_ms,
                listed(&t_rounds, p99),
                listed(&raw_rounds, p99),
            );
            if let Some(line) = cpu_line(results, Scenario::Broadcast, protocol, Some(rate)) {
                out.push_str(&line);
            }
        }
        for kind in [ServerKind::Raw, ServerKind::RawTws, ServerKind::Tidings] {
            let runs: Vec<&Report> = reports
                .iter()
                .filter(|r| {
                    r.scenario == Scenario::Broadcast && r.server == kind && r.protocol == protocol
                })
                .collect();
            let highest = runs
                .iter()
                .filter(|r| r.latency.p99_ms < P99_LIMIT_MS && r.all_delivered())
                .filter_map(|r| r.rate)
                .reduce(f64::max);
            let lowest = runs
                .iter()
                .filter_map(|r| Some((r.rate?, r.latency.p99_ms)))
                .reduce(|a, b| if b.0 < a.0 { b } else { a });
            let answer = match (highest, lowest) {
                (Some(rate), _) => format!("{rate}/s"),
                (None, Some((rate, p99))) => {
                    format!("none (the lowest rate run, {rate}/s, has p99 {p99:.1} ms)")
                }
                (None, None) => continue,
            };
            let _ = writeln!(
                out,
                "- highest broadcast rate with p99 < {P99_LIMIT_MS} ms to {}, {}, {protocol}: {answer}",
                runs.first().map_or(0, |r| r.connections),
                kind.name()
            );
        }
        for rate in [10.0, 20.0, 40.0] {
            let (Some(one), Some(three)) = (
                median(rounds_of(
                    results,
                    Scenario::Cluster,
                    ServerKind::Tidings,
                    protocol,
                    Some(rate),
                    1,
                )),
                median(rounds_of(
                    results,
                    Scenario::Cluster,
                    ServerKind::Tidings,
                    protocol,
                    Some(rate),
                    3,
                )),
            ) else {
                continue;
            };
            let _ = writeln!(
                out,
                "- broadcast through Redis at {rate}/s, {protocol}: one server {:.0} deliveries/s (p99 {:.2} ms, {}/{} delivered), three servers {:.0} deliveries/s (p99 {:.2} ms, {}/{} delivered)",
                one.throughput,
                one.latency.p99_ms,
                one.ops,
                one.expected.unwrap_or(0),
                three.throughput,
                three.latency.p99_ms,
                three.ops,
                three.expected.unwrap_or(0),
            );
        }
        // The connect storm: reported, no target. tidings' figure is a
        // whole SignalR connection (negotiate, WebSocket, handshake), the
        // baseline's a WebSocket accepted.
        if let (Some(t), Some(raw)) = (
            find(
                results,
                Scenario::Connect,
                ServerKind::Tidings,
                protocol,
                None,
            ),
            find(results, Scenario::Connect, ServerKind::Raw, protocol, None),
        ) {
            let _ = writeln!(
                out,
                "- connect storm, {protocol}: tidings {:.0} connections/s (negotiate, WebSocket, handshake; p99 {:.2} ms) vs raw {:.0} WebSocket accepts/s (p99 {:.2} ms) = {:.2} × (reported)",
                t.throughput,
                t.latency.p99_ms,
                raw.throughput,
                raw.latency.p99_ms,
                ratio(t.throughput, raw.throughput),
            );
        }
        for kind in [ServerKind::Raw, ServerKind::Tidings] {
            if let Some(idle) = find(results, Scenario::Idle, kind, protocol, None)
                && let Some(rss) = idle.rss
            {
                let per = rss.per_connection_bytes;
                let projected = MACHINE_BYTES / per.max(1.0);
                let target = if kind == ServerKind::Tidings {
                    format!(
                        " (target ≤ {} KiB): {}",
                        IDLE_TARGET_BYTES / 1024.0,
                        verdict(per <= IDLE_TARGET_BYTES && idle.alive == idle.connections)
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "- idle, {}, {protocol}: {} connections held ({} still open at the end), RSS {} → {} KiB, {:.2} KiB per connection{target}; 24 GiB would hold {:.0}k such connections (200 000 need {:.1} GiB)",
                    kind.name(),
                    idle.connections,
                    idle.alive,
                    rss.before_kib,
                    rss.after_kib,
                    per / 1024.0,
                    projected / 1000.0,
                    per * 200_000.0 / 1024.0 / 1024.0 / 1024.0,
                );
            }
        }
        // The HTTP transports, beside the WebSocket figure: reported, no
        // target. Each such connection also holds an HTTP connection with
        // a request outstanding (the event stream, or the current poll).
        for transport in [Transport::ServerSentEvents, Transport::LongPolling] {
            let idle = results.runs.iter().map(|e| &e.report).find(|r| {
                r.scenario == Scenario::Idle
                    && r.server == ServerKind::Tidings
                    && r.protocol == protocol
                    && r.transport == transport
            });
            if let Some(idle) = idle
                && let Some(rss) = idle.rss
            {
                let _ = writeln!(
                    out,
                    "- idle, tidings, {protocol}, {}: {} connections held ({} still open at the end), RSS {} → {} KiB, {:.2} KiB per connection (reported)",
                    transport.name(),
                    idle.connections,
                    idle.alive,
                    rss.before_kib,
                    rss.after_kib,
                    rss.per_connection_bytes / 1024.0,
                );
            }
        }
    }

    out.push_str("\n### MessagePack against JSON (tidings)\n\n");
    out.push_str("| scenario | rate/s | JSON throughput/s | MessagePack throughput/s | ratio | JSON p99 ms | MessagePack p99 ms |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for json in distinct_tidings_runs(&reports)
        .into_iter()
        .filter(|r| r.protocol == "json")
    {
        let Some(json) = median(rounds_of(
            results,
            json.scenario,
            ServerKind::Tidings,
            "json",
            json.rate,
            json.servers,
        )) else {
            continue;
        };
        let Some(mp) = median(rounds_of(
            results,
            json.scenario,
            ServerKind::Tidings,
            "messagepack",
            json.rate,
            json.servers,
        )) else {
            continue;
        };
        if json.scenario == Scenario::Idle {
            let (Some(a), Some(b)) = (json.rss, mp.rss) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| idle (RSS/conn) | | {:.2} KiB | {:.2} KiB | {:.2} | | |",
                a.per_connection_bytes / 1024.0,
                b.per_connection_bytes / 1024.0,
                ratio(b.per_connection_bytes, a.per_connection_bytes)
            );
            continue;
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            match json.scenario {
                Scenario::Cluster => format!("cluster ({})", json.server_label()),
                other => other.name().to_owned(),
            },
            json.rate.map(|r| r.to_string()).unwrap_or_default(),
            report::per_second(json.throughput),
            report::per_second(mp.throughput),
            ratio(mp.throughput, json.throughput),
            json.latency.p99_ms,
            mp.latency.p99_ms,
        );
    }
    out
}

/// The median of the rounds' server CPU per operation.
fn median_cpu(rounds: &[&Report]) -> Option<f64> {
    let mut cpu: Vec<f64> = rounds.iter().filter_map(|r| r.server_cpu_us).collect();
    cpu.sort_by(f64::total_cmp);
    cpu.get(cpu.len().checked_sub(1)? / 2).copied()
}

/// The target line "server CPU per message (echo) or per delivery
/// (broadcast) ≤ the baseline's", by the median of each server's rounds,
/// with the second raw baseline's figure beside it.
fn cpu_line(
    results: &Results,
    scenario: Scenario,
    protocol: &str,
    rate: Option<f64>,
) -> Option<String> {
    let every = |kind| rounds_of(results, scenario, kind, protocol, rate, 1);
    let (t_rounds, raw_rounds, tws_rounds) = (
        every(ServerKind::Tidings),
        every(ServerKind::Raw),
        every(ServerKind::RawTws),
    );
    let (t, raw) = (median_cpu(&t_rounds)?, median_cpu(&raw_rounds)?);
    let us = |r: &Report| {
        r.server_cpu_us
            .map_or("–".to_owned(), |us| format!("{us:.2}"))
    };
    let (what, at) = match rate {
        Some(rate) => ("delivery", format!("broadcast at {rate}/s")),
        None => ("message", scenario.name().to_owned()),
    };
    let second = median_cpu(&tws_rounds).map_or_else(String::new, |tws| {
        format!("; raw-tws {tws:.2} µs, rounds {}", listed(&tws_rounds, us))
    });
    Some(format!(
        "- server CPU per {what}, {at}, {protocol}: tidings {t:.2} µs vs raw {raw:.2} µs = {:.2} × (target ≤ raw; rounds: tidings {}, raw {}; ratio per round {}{second}): {}\n",
        ratio(t, raw),
        listed(&t_rounds, us),
        listed(&raw_rounds, us),
        per_round(&t_rounds, &raw_rounds, |r| r.server_cpu_us),
        verdict(t <= raw)
    ))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}
