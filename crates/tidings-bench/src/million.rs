//! The many-connections scenario (`tidings-bench million`): a cluster of
//! tidings servers on one `redis-server`, all started here, holding N
//! WebSocket connections opened by worker processes; then one broadcast to
//! everyone, ten in a row, and messages to groups of 100 at a rate. Between
//! the phases it reads what the kernel says (process CPU and RSS, socket
//! and slab memory), and it writes its report as a section of
//! BENCHMARKS.md, replacing only that section.
//!
//! Every process it starts is killed when the run ends, fails or is
//! interrupted (Ctrl-C, SIGTERM): the handles kill their child on drop, and
//! an interruption drops the run.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tidings_protocol::Protocol;

use crate::{
    conn::{Endpoint, ServerKind, Transport},
    procs::{Redis, Server},
    run::{self, Report, RunConfig},
    scenario::{Phase, Scenario, server_of_listener},
    suite::sibling,
    sysinfo::{self, PAGE, Setting},
};

/// The count the scenario is named after; a run below it is partial.
const TARGET: usize = 1_000_000;

/// Connections per source address when the count is not given.
const SOURCE_SHARE: usize = 10_000;

/// Where the report goes in BENCHMARKS.md.
const BEGIN: &str = "<!-- million:begin (written by `bash scripts/bench.sh --million`) -->";
const END: &str = "<!-- million:end -->";

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MillionArgs {
    /// WebSocket connections to hold (listeners; one sender per group is added).
    #[arg(short = 'n', long, default_value_t = TARGET)]
    connections: usize,
    /// Server processes (0: as few as --per-server allows).
    #[arg(long, default_value_t = 0)]
    servers: usize,
    /// Most connections one server process holds (20 000 open files each).
    #[arg(long, default_value_t = 19_800)]
    per_server: usize,
    /// Most connections one worker process opens.
    #[arg(long, default_value_t = 19_800)]
    per_process: usize,
    /// Listeners per group.
    #[arg(long, default_value_t = 100)]
    group_size: usize,
    /// Group phase: messages per second, over all groups. Several
    /// (comma-separated, highest first) step down: each is run in turn
    /// until one keeps the delivery p99 under one second.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    group_rate: Vec<f64>,
    /// Servers each group's listeners are spread over (consecutive ones,
    /// from the group's number; 0: every server), so that a server holds
    /// members of some groups only and Redis sends it only theirs.
    #[arg(long, default_value_t = 2)]
    group_servers: usize,
    /// Keep-alive interval in seconds, both ways: the servers' Ping
    /// interval (`--keep-alive-ms`, with `--client-timeout-ms` twice it)
    /// and the clients'.
    #[arg(long, default_value_t = 15.0)]
    keep_alive: f64,
    /// Group phase: seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    group_seconds: f64,
    /// Seconds the connections stay idle while the keep-alives' CPU is measured.
    #[arg(long, default_value_t = 30.0)]
    idle_seconds: f64,
    /// Seconds to wait for deliveries after a phase's last send.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// Source addresses 127.0.0.2… (0: one per 10 000 connections).
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// Connections each worker opens at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Hub protocol: json or messagepack.
    #[arg(long, default_value = "json", value_parser = parse_protocol)]
    protocol: Protocol,
    /// The tidings server binary (default: `tidings` next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Write the report into this file's million section (BENCHMARKS.md).
    #[arg(long)]
    benchmarks_md: Option<PathBuf>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

fn parse_protocol(name: &str) -> Result<Protocol, String> {
    Protocol::from_name(name).ok_or_else(|| format!("unknown protocol '{name}'"))
}

/// What the kernel says at one instant, about the machine and the run's processes.
#[derive(Debug, Clone, Serialize)]
struct Snapshot {
    #[serde(skip)]
    at: Option<Instant>,
    servers_ticks: u64,
    servers_rss_kib: u64,
    workers_ticks: u64,
    workers_rss_kib: u64,
    workers: usize,
    redis_ticks: u64,
    redis_rss_kib: u64,
    redis: BTreeMap<String, String>,
    /// Per server: backplane messages (received from Redis, published),
    /// from its `/metrics`.
    backplane: Vec<(u64, u64)>,
    meminfo: BTreeMap<String, u64>,
    sockstat: BTreeMap<String, u64>,
}

fn redis_info(port: &str) -> BTreeMap<String, String> {
    std::process::Command::new("redis-cli")
        .args(["-p", port, "INFO"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A server's backplane counters (received, published) from its `/metrics`
/// (zeros when it cannot be read).
fn backplane_counts(address: SocketAddr) -> (u64, u64) {
    let read = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        // HTTP/1.0: the body comes whole, up to the end of the stream.
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    };
    let text = read().unwrap_or_default();
    let counter = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    (
        counter("tidings_backplane_messages_received_total"),
        counter("tidings_backplane_messages_published_total"),
    )
}

impl Snapshot {
    fn take(servers: &[u32], addresses: &[SocketAddr], redis: u32, redis_port: &str) -> Snapshot {
        let workers: Vec<u32> = sysinfo::children()
            .into_iter()
            .filter(|pid| *pid != redis && !servers.contains(pid))
            .collect();
        Snapshot {
            at: Some(Instant::now()),
            servers_ticks: servers.iter().map(|&p| sysinfo::cpu_ticks(p)).sum(),
            servers_rss_kib: servers.iter().map(|&p| sysinfo::rss_kib(p)).sum(),
            workers_ticks: workers.iter().map(|&p| sysinfo::cpu_ticks(p)).sum(),
            workers_rss_kib: workers.iter().map(|&p| sysinfo::rss_kib(p)).sum(),
            workers: workers.len(),
            redis_ticks: sysinfo::cpu_ticks(redis),
            redis_rss_kib: sysinfo::rss_kib(redis),
            redis: redis_info(redis_port),
            backplane: addresses.iter().map(|&a| backplane_counts(a)).collect(),
            meminfo: sysinfo::meminfo(),
            sockstat: sysinfo::sockstat(),
        }
    }

    fn seconds_since(&self, earlier: &Snapshot) -> f64 {
        match (self.at, earlier.at) {
            (Some(a), Some(b)) => a.duration_since(b).as_secs_f64(),
            _ => 0.0,
        }
    }

    fn mem(&self, key: &str) -> u64 {
        self.meminfo.get(key).copied().unwrap_or(0)
    }

    fn sock(&self, key: &str) -> u64 {
        self.sockstat.get(key).copied().unwrap_or(0)
    }

    fn redis_number(&self, key: &str) -> u64 {
        self.redis
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Everything the report is made of.
#[derive(Debug, Serialize)]
struct Outcome {
    command: String,
    unix_time: u64,
    requested: usize,
    servers: usize,
    sources: usize,
    open_files: String,
    load_at_start: String,
    cpus: usize,
    settings: Vec<Setting>,
    reports: Vec<Report>,
    /// Before connecting, then after each phase.
    snapshots: Vec<Snapshot>,
    ticks_per_second: u64,
    group_size: usize,
    idle_seconds: f64,
    keep_alive_s: f64,
    group_servers: usize,
    /// Per server (in start order): listeners and groups with members there.
    layout: Vec<(usize, usize)>,
}

/// A group phase meets the bar when its delivery p99 is under this.
const GROUP_P99_MS: f64 = 1000.0;

/// The phases, in order; the report reads them by these indices.
const HOLD: usize = 0;
const IDLE: usize = 1;
const BROADCAST_ONE: usize = 2;
const BROADCAST_TEN: usize = 3;
const GROUPS: usize = 4;

fn phases(args: &MillionArgs) -> Vec<Phase> {
    let drain_ms = (args.drain * 1000.0) as u64;
    let mut phases = vec![
        Phase::Hold,
        Phase::Wait {
            duration_ms: (args.idle_seconds * 1000.0) as u64,
        },
        Phase::Fanout {
            rate: 1.0,
            duration_ms: 1000,
            drain_ms,
            broadcast: true,
        },
        Phase::Fanout {
            rate: 10.0,
            duration_ms: 1000,
            drain_ms,
            broadcast: true,
        },
    ];
    phases.extend(args.group_rate.iter().map(|&rate| Phase::Fanout {
        rate,
        duration_ms: (args.group_seconds * 1000.0) as u64,
        drain_ms,
        broadcast: false,
    }));
    phases
}

/// Whether a group phase delivered everything with its p99 under the bar.
fn meets_bar(report: &Report) -> bool {
    report.all_delivered() && report.errors == 0 && report.latency.p99_ms < GROUP_P99_MS
}

/// Runs the scenario; an interruption ends it, killing what it started.
pub(crate) async fn run(args: MillionArgs) -> anyhow::Result<()> {
    tokio::select! {
        outcome = scenario(&args) => outcome,
        signal = interrupted() => {
            signal?;
            bail!("interrupted: the servers, redis-server and workers were stopped")
        }
    }
}

async fn interrupted() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn scenario(args: &MillionArgs) -> anyhow::Result<()> {
    let n = args.connections.max(1);
    let group_size = args.group_size.max(1);
    let senders = n.div_ceil(group_size);
    let server_count = if args.servers > 0 {
        args.servers
    } else {
        (n + senders).div_ceil(args.per_server.max(1))
    };
    // `bind` to a source address with port 0 picks from the even half of
    // the ephemeral range first (~14 000 ports by default); past it every
    // bind scans the range in the kernel, and the connect rate collapses.
    let sources = if args.sources > 0 {
        args.sources
    } else {
        (n + senders).div_ceil(SOURCE_SHARE)
    };
    let server_bin = match &args.server_bin {
        Some(path) => path.clone(),
        None => sibling("tidings")?,
    };
    let settings = sysinfo::check_settings(n + senders, sources);
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");

    let redis = Redis::start().await?;
    let redis_port = redis.url.rsplit(':').next().unwrap_or("6379").to_owned();
    let keep_alive_ms = (args.keep_alive * 1000.0).round().max(1.0) as u64;
    let extra = [
        "--redis".to_owned(),
        redis.url.clone(),
        "--redis-prefix".to_owned(),
        "million:".to_owned(),
        "--keep-alive-ms".to_owned(),
        keep_alive_ms.to_string(),
        // As ASP.NET Core advises: twice the keep-alive interval, so one
        // late Ping does not close a connection.
        "--client-timeout-ms".to_owned(),
        (2 * keep_alive_ms).to_string(),
    ];
    let mut servers = Vec::with_capacity(server_count);
    for _ in 0..server_count {
        servers.push(Server::start(&server_bin, ServerKind::Tidings, &extra).await?);
    }
    let server_pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
    let server_addresses: Vec<SocketAddr> = servers.iter().map(|s| s.address).collect();
    let config = RunConfig {
        endpoint: Endpoint {
            kind: ServerKind::Tidings,
            server: servers[0].address,
            peers: servers[1..].iter().map(|s| s.address).collect(),
            hub_path: "/hubs/test".to_owned(),
            protocol: args.protocol,
            transport: Transport::WebSockets,
        },
        scenario: Scenario::Million,
        connections: n,
        group_size,
        sources,
        payload: 32,
        processes: 0,
        per_process: args.per_process,
        connect_concurrency: args.connect_concurrency,
        server_pid: None,
        settle: Duration::ZERO,
        progress: !args.quiet,
        keep_alive: Duration::from_millis(keep_alive_ms),
        group_servers: args.group_servers,
    };
    let take = || Snapshot::take(&server_pids, &server_addresses, redis.pid, &redis_port);
    let mut snapshots = vec![take()];
    let reports = run::run(&config, &phases(args), |report| {
        snapshots.push(take());
        if !args.quiet {
            eprintln!(
                "{} done: {} connections, {}/{} deliveries, {} errors",
                phase_name(snapshots.len() - 2),
                report.alive,
                report.ops,
                report.expected.unwrap_or(0),
                report.errors
            );
        }
        // Group rates step down until one meets the bar.
        snapshots.len() - 2 < GROUPS || !meets_bar(report)
    })
    .await?;
    for server in servers {
        server.stop().await;
    }
    redis.stop().await;

    let outcome = Outcome {
        command: command_line(),
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        requested: n,
        servers: server_count,
        sources,
        open_files: sysinfo::open_files_limit(),
        load_at_start,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        settings,
        reports,
        snapshots,
        ticks_per_second: sysinfo::clock_ticks(),
        group_size,
        idle_seconds: args.idle_seconds,
        keep_alive_s: keep_alive_ms as f64 / 1000.0,
        group_servers: args.group_servers,
        layout: layout(n, group_size, server_count, args.group_servers),
    };
    let text = markdown(&outcome);
    println!("{text}");
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&outcome)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.benchmarks_md {
        write_section(path, &text)?;
    }
    verdict(&outcome)
}

/// Listeners and groups with members, per server, as the workers place them.
fn layout(
    listeners: usize,
    group_size: usize,
    servers: usize,
    group_servers: usize,
) -> Vec<(usize, usize)> {
    let mut held = vec![(0usize, 0usize); servers.max(1)];
    let mut last_group = vec![usize::MAX; servers.max(1)];
    for index in 0..listeners {
        let server = server_of_listener(index, group_size, servers, group_servers);
        let group = index / group_size.max(1);
        held[server].0 += 1;
        if last_group[server] != group {
            last_group[server] = group;
            held[server].1 += 1;
        }
    }
    held
}

/// The group messages Redis should send each server in a group phase: each
/// message goes to every server holding a member of its group (the
/// sender's own server included: its subscription hears its own publish).
fn expected_per_server(o: &Outcome, rate: f64, duration_ms: u64) -> Vec<u64> {
    let servers = o.layout.len();
    let groups = o.requested.div_ceil(o.group_size.max(1)).max(1);
    let mut expected = vec![0u64; servers];
    let mut last_group = vec![usize::MAX; servers];
    for index in 0..o.requested {
        let server = server_of_listener(index, o.group_size, servers, o.group_servers);
        let group = index / o.group_size.max(1);
        if last_group[server] != group {
            last_group[server] = group;
            expected[server] += Phase::messages_of(rate, duration_ms, groups, group);
        }
    }
    expected
}

fn phase_name(index: usize) -> &'static str {
    match index {
        HOLD => "connect",
        IDLE => "idle",
        BROADCAST_ONE => "one broadcast",
        BROADCAST_TEN => "ten broadcasts",
        _ => "groups",
    }
}

/// The command that reproduces the run, as `scripts/bench.sh` takes it
/// (the output files it names itself left out).
fn command_line() -> String {
    let mut line = "bash scripts/bench.sh --million".to_owned();
    let mut args = std::env::args().skip_while(|a| a != "million").skip(1);
    while let Some(arg) = args.next() {
        if arg == "--benchmarks-md" || arg == "--json" {
            args.next();
            continue;
        }
        let _ = write!(line, " {arg}");
    }
    line
}

/// Fails the run when a connection was not opened or kept, or a delivery
/// is missing or doubled.
fn verdict(outcome: &Outcome) -> anyhow::Result<()> {
    let Some(held) = outcome.reports.first() else {
        bail!("no phase ran");
    };
    let wanted = outcome.requested + outcome.requested.div_ceil(outcome.group_size);
    if held.failed_connections > 0 || held.connections < wanted {
        bail!(
            "{} of {} connections opened; first error: {}",
            held.connections,
            wanted,
            held.first_error.as_deref().unwrap_or("none")
        );
    }
    for (index, report) in outcome.reports.iter().enumerate() {
        if let Some(expected) = report.expected
            && report.ops != expected
        {
            bail!(
                "{}: {} deliveries where {} were expected (each exactly once)",
                phase_name(index),
                report.ops,
                expected
            );
        }
        if report.errors > 0 || report.alive < held.alive {
            bail!(
                "{}: {} errors, {} of {} connections left; first error: {}",
                phase_name(index),
                report.errors,
                report.alive,
                held.alive,
                report.first_error.as_deref().unwrap_or("none")
            );
        }
    }
    // Redis sends each server the messages of the groups it holds members
    // of, and no others.
    for index in GROUPS..outcome.reports.len() {
        let (Some(r), Some(before), Some(after)) = (
            outcome.reports.get(index),
            outcome.snapshots.get(index),
            outcome.snapshots.get(index + 1),
        ) else {
            continue;
        };
        let duration_ms = (r.duration_s * 1000.0).round() as u64;
        let expected = expected_per_server(outcome, r.rate.unwrap_or(0.0), duration_ms);
        for (server, wanted) in expected.iter().enumerate() {
            let at = |s: &Snapshot| s.backplane.get(server).map_or(0, |c| c.0);
            let received = at(after).saturating_sub(at(before));
            if received != *wanted {
                bail!(
                    "{} msg/s group phase: Redis sent server {} {received} group messages where its groups were sent {wanted}",
                    r.rate.unwrap_or(0.0),
                    server + 1
                );
            }
        }
    }
    Ok(())
}

/// Replaces the million section of `path` (or appends one) with `text`.
fn write_section(path: &Path, text: &str) -> anyhow::Result<()> {
    let current = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{BEGIN}\n{text}\n{END}");
    let updated = match (current.find(BEGIN), current.find(END)) {
        (Some(begin), Some(end)) if end > begin => {
            format!(
                "{}{section}{}",
                &current[..begin],
                &current[end + END.len()..]
            )
        }
        _ => format!("{}\n\n{section}\n", current.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

fn markdown(o: &Outcome) -> String {
    let mut md = String::new();
    let held = o.reports.first().map_or(0, |r| r.connections);
    let date = {
        let days = o.unix_time / 86_400;
        let (y, m, d) = civil(days as i64);
        let secs = o.unix_time % 86_400;
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
            secs / 3600,
            secs / 60 % 60
        )
    };
    if held < TARGET {
        let _ = writeln!(
            md,
            "### Partial scale: {} connections held, of the {} the scenario is named after (`{}`, run of {date})\n",
            thousands(held as u64),
            thousands(TARGET as u64),
            o.command,
        );
    } else {
        let _ = writeln!(
            md,
            "### {} connections held (`{}`, run of {date})\n",
            thousands(held as u64),
            o.command
        );
    }
    let mem_total = o.snapshots.first().map_or(0, |s| s.mem("MemTotal"));
    let _ = writeln!(
        md,
        "{} CPUs, MemTotal {:.1} GiB, load average at start {}, open files (soft/hard) {}. \
         {} tidings servers (release build, `--redis` on one `redis-server`, `--test-hub`, \
         WebSockets, keep-alive {ka} s, client timeout {} s), {} load-generator worker processes, {} source addresses, {} protocol; \
         every client sends a Ping every {ka} s. Each group's listeners are on {}.\n",
        o.cpus,
        mem_total as f64 / 1024.0 / 1024.0,
        o.load_at_start,
        o.open_files,
        o.servers,
        2.0 * o.keep_alive_s,
        o.snapshots.get(1).map_or(0, |s| s.workers),
        o.sources,
        o.reports.first().map_or("json", |r| r.protocol.as_str()),
        if o.group_servers == 0 || o.group_servers >= o.servers {
            "every server".to_owned()
        } else {
            format!("{} servers", o.group_servers)
        },
        ka = o.keep_alive_s,
    );

    let _ = writeln!(md, "Kernel settings:\n");
    let _ = writeln!(
        md,
        "| setting | value | the run needs | enough | change tried |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for s in &o.settings {
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} |",
            s.name,
            s.value,
            s.needed,
            if s.enough { "yes" } else { "no" },
            s.change.as_deref().unwrap_or("none needed")
        );
    }
    md.push('\n');

    let Some(hold) = o.reports.get(HOLD) else {
        let _ = writeln!(md, "No phase ran.");
        return md;
    };
    let senders = o.requested.div_ceil(o.group_size);
    let opened = hold.connections;
    let _ = writeln!(md, "| connect storm | |\n|---|---|");
    let _ = writeln!(
        md,
        "| connections held (listeners + one sender per group) | {} of {} ({} failed{}) |",
        thousands(opened as u64),
        thousands((o.requested + senders) as u64),
        hold.failed_connections,
        hold.first_error
            .as_deref()
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "| time to all open (handshake done, group joined) | {:.1} s |",
        hold.connect_s
    );
    let _ = writeln!(
        md,
        "| connect rate | {:.0} connections/s |\n",
        opened as f64 / hold.connect_s.max(0.001)
    );

    let _ = writeln!(
        md,
        "| fan-out phase | sent | deliveries / expected | late | errors | p50 ms | p99 ms | max ms (last delivery) | server CPU s | Redis bytes out | Redis CPU s |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for index in [BROADCAST_ONE, BROADCAST_TEN]
        .into_iter()
        .chain(GROUPS..o.reports.len())
    {
        let (Some(r), Some(before), Some(after)) = (
            o.reports.get(index),
            o.snapshots.get(index),
            o.snapshots.get(index + 1),
        ) else {
            continue;
        };
        let name = match index {
            BROADCAST_ONE => "one `Clients.All` broadcast".to_owned(),
            BROADCAST_TEN => "ten broadcasts in one second".to_owned(),
            _ => format!(
                "groups of {}, {:.0} msg/s requested, {:.1} msg/s sent ({}p99 < 1 s)",
                o.group_size,
                r.rate.unwrap_or(0.0),
                r.sent.unwrap_or(0) as f64 / r.duration_s.max(0.001),
                if meets_bar(r) { "" } else { "not " },
            ),
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} / {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.2} |",
            r.sent.unwrap_or(0),
            thousands(r.ops),
            thousands(r.expected.unwrap_or(0)),
            r.late,
            r.errors,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            after.servers_ticks.saturating_sub(before.servers_ticks) as f64
                / o.ticks_per_second as f64,
            thousands(
                after
                    .redis_number("total_net_output_bytes")
                    .saturating_sub(before.redis_number("total_net_output_bytes"))
            ),
            after.redis_ticks.saturating_sub(before.redis_ticks) as f64 / o.ticks_per_second as f64,
        );
    }
    md.push('\n');
    group_summary(&mut md, o);

    if let (Some(s0), Some(s1)) = (o.snapshots.first(), o.snapshots.get(1)) {
        let held = opened.max(1) as f64;
        let server_kib = s1.servers_rss_kib.saturating_sub(s0.servers_rss_kib) as f64;
        let worker_kib = s1.workers_rss_kib as f64;
        let redis_kib = s1.redis_rss_kib.saturating_sub(s0.redis_rss_kib) as f64;
        let sock_kib =
            (s1.sock("TCP mem").saturating_sub(s0.sock("TCP mem")) * PAGE) as f64 / 1024.0;
        let slab_kib = s1.mem("Slab").saturating_sub(s0.mem("Slab")) as f64;
        let total = server_kib + worker_kib + redis_kib + sock_kib + slab_kib;
        let used = |s: &Snapshot| s.mem("MemTotal").saturating_sub(s.mem("MemAvailable"));
        let used_kib = used(s1) as f64 - used(s0) as f64;
        let _ = writeln!(
            md,
            "| memory with every connection open (change from before connecting) | MiB | bytes per connection |"
        );
        let _ = writeln!(md, "|---|---|---|");
        for (what, kib) in [
            ("tidings servers' RSS", server_kib),
            ("load generator's RSS", worker_kib),
            ("redis-server's RSS", redis_kib),
            (
                "kernel TCP buffers (`/proc/net/sockstat` TCP mem)",
                sock_kib,
            ),
            (
                "kernel slab (`/proc/meminfo` Slab: sockets, dentries, epoll)",
                slab_kib,
            ),
            ("**accounted**", total),
            (
                "machine used (MemTotal − MemAvailable; other work included)",
                used_kib,
            ),
        ] {
            let _ = writeln!(
                md,
                "| {what} | {:.1} | {:.0} |",
                mib(kib),
                kib * 1024.0 / held
            );
        }
        let _ = writeln!(
            md,
            "\nAccounted: {:.2} % of MemTotal; at this cost per connection {} connections would take {:.1} GiB. \
             TCP sockets in use {} (orphans {}, time-wait {}), slab unreclaimable {:.0} MiB.\n",
            100.0 * total / (s1.mem("MemTotal").max(1) as f64),
            thousands(TARGET as u64),
            total * 1024.0 / held * TARGET as f64 / (1u64 << 30) as f64,
            thousands(s1.sock("TCP inuse")),
            s1.sock("TCP orphan"),
            s1.sock("TCP tw"),
            mib(s1.mem("SUnreclaim") as f64),
        );
    }

    if let (Some(s1), Some(s2)) = (o.snapshots.get(1), o.snapshots.get(2)) {
        let seconds = s2.seconds_since(s1).max(0.001);
        let per_100k = 100_000.0 / opened.max(1) as f64;
        let cores = |ticks: u64| ticks as f64 / o.ticks_per_second as f64 / seconds;
        let _ = writeln!(
            md,
            "Idle for {seconds:.1} s (keep-alives only, {} s each way): servers {:.3} cores, \
             load generator {:.3} cores, redis-server {:.3} cores in all; per 100 000 idle connections \
             the servers spend **{:.3} cores** on keep-alives at a {} s interval (the generator {:.3}).\n",
            o.keep_alive_s,
            cores(s2.servers_ticks.saturating_sub(s1.servers_ticks)),
            cores(s2.workers_ticks.saturating_sub(s1.workers_ticks)),
            cores(s2.redis_ticks.saturating_sub(s1.redis_ticks)),
            cores(s2.servers_ticks.saturating_sub(s1.servers_ticks)) * per_100k,
            o.keep_alive_s,
            cores(s2.workers_ticks.saturating_sub(s1.workers_ticks)) * per_100k,
        );
        let _ = writeln!(
            md,
            "Redis: {} clients connected, {} pub/sub channels with every connection open.",
            s2.redis
                .get("connected_clients")
                .map_or("?", String::as_str),
            s2.redis.get("pubsub_channels").map_or("?", String::as_str),
        );
    }
    md
}

/// The group rates tried, the highest meeting the bar, and what Redis sent
/// each server in that phase (or the last one tried).
fn group_summary(md: &mut String, o: &Outcome) {
    let tried: Vec<(usize, &Report)> = o.reports.iter().enumerate().skip(GROUPS).collect();
    let Some(&(last, _)) = tried.last() else {
        return;
    };
    let rates = tried
        .iter()
        .map(|(_, r)| format!("{:.0}", r.rate.unwrap_or(0.0)))
        .collect::<Vec<_>>()
        .join(", ");
    let passed = tried.iter().find(|(_, r)| meets_bar(r));
    match passed {
        Some((_, r)) => {
            let _ = writeln!(
                md,
                "Group rates tried, highest first: {rates} msg/s. The highest with every delivery made \
                 and p99 under 1 s: **{:.0} msg/s** to random groups of {} ({:.0} deliveries/s), p99 {:.0} ms.\n",
                r.rate.unwrap_or(0.0),
                o.group_size,
                r.ops as f64 / r.duration_s.max(0.001),
                r.latency.p99_ms,
            );
        }
        None => {
            let _ = writeln!(
                md,
                "Group rates tried, highest first: {rates} msg/s; none kept the delivery p99 under 1 s.\n"
            );
        }
    }
    let index = passed.map_or(last, |(i, _)| *i);
    let (Some(r), Some(before), Some(after)) = (
        o.reports.get(index),
        o.snapshots.get(index),
        o.snapshots.get(index + 1),
    ) else {
        return;
    };
    let duration_ms = (r.duration_s * 1000.0).round() as u64;
    let expected = expected_per_server(o, r.rate.unwrap_or(0.0), duration_ms);
    let groups = o.requested.div_ceil(o.group_size.max(1));
    let _ = writeln!(
        md,
        "Redis traffic per server in the {:.0} msg/s group phase (backplane messages from each server's \
         `/metrics`; expected: the messages sent to the groups it holds members of, its own included, \
         since its subscription hears its own publishes; {} groups in all):\n",
        r.rate.unwrap_or(0.0),
        thousands(groups as u64),
    );
    let _ = writeln!(
        md,
        "| server | listeners | groups with members there | messages published | messages Redis sent it | expected |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (server, &(listeners, with_members)) in o.layout.iter().enumerate() {
        let delta = |pick: fn(&(u64, u64)) -> u64| {
            let at = |s: &Snapshot| s.backplane.get(server).map_or(0, pick);
            at(after).saturating_sub(at(before))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            server + 1,
            thousands(listeners as u64),
            thousands(with_members as u64),
            thousands(delta(|c| c.1)),
            thousands(delta(|c| c.0)),
            thousands(expected.get(server).copied().unwrap_or(0)),
        );
    }
    md.push('\n');
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_replaces_only_its_section() -> anyhow::Result<()> {
        let path = std::env::temp_dir().join(format!("million-{}.md", std::process::id()));
        std::fs::write(
            &path,
            format!("# Top\n\nbefore\n\n{BEGIN}\nold\n{END}\n\n## After\nkept\n"),
        )?;
        write_section(&path, "new report")?;
        let text = std::fs::read_to_string(&path)?;
        assert_eq!(
            text,
            format!("# Top\n\nbefore\n\n{BEGIN}\nnew report\n{END}\n\n## After\nkept\n")
        );
        // Without markers the section is appended, once.
        std::fs::write(&path, "# Top\n")?;
        write_section(&path, "first")?;
        write_section(&path, "second")?;
        let text = std::fs::read_to_string(&path)?;
        std::fs::remove_file(&path)?;
        assert_eq!(text, format!("# Top\n\n{BEGIN}\nsecond\n{END}\n"));
        Ok(())
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_794), (2026, 12, 7));
    }
}
