//! The coordinating process of one run: splits the connections over worker
//! processes (each may hold at most [`RunConfig::per_process`] of them, since
//! a process may open only so many files), shows a progress bar, starts every
//! phase at the same instant in all workers, and merges their results into
//! [`Report`]s.

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin},
    sync::mpsc,
    time::{Instant, sleep},
};

use crate::{
    conn::{Endpoint, ServerKind, Transport},
    procs::with_max_files,
    scenario::{self, Event, Phase, PhaseResult, Scenario, WorkerSpec},
    stats::{self, Latency},
    worker::unix_us,
};

/// Everything a run needs besides its phases.
#[derive(Debug, Clone)]
pub(crate) struct RunConfig {
    pub endpoint: Endpoint,
    pub scenario: Scenario,
    /// Connections (listeners, for fan-out) of the whole run.
    pub connections: usize,
    pub group_size: usize,
    pub sources: usize,
    pub payload: usize,
    /// Worker processes; 0 = as few as `per_process` allows.
    pub processes: usize,
    /// Most connections one worker process opens.
    pub per_process: usize,
    pub connect_concurrency: usize,
    /// The server's process, whose RSS is read for the idle scenario and
    /// whose CPU time is read over every measured window.
    pub server_pid: Option<u32>,
    /// Idle: how long to let the server settle before reading its RSS.
    pub settle: Duration,
    /// Show progress bars.
    pub progress: bool,
    /// How often each connection sends a Ping.
    pub keep_alive: Duration,
    /// Servers each group's listeners are spread over (0: all).
    pub group_servers: usize,
}

impl Report {
    /// The server column of a table: `tidings`, `raw`, or `tidings ×3` for
    /// a cluster run.
    pub(crate) fn server_label(&self) -> String {
        match (self.scenario, self.servers) {
            (Scenario::Cluster, n) => format!("{} ×{n} + Redis", self.server.name()),
            _ => self.server.name().to_owned(),
        }
    }
}

fn one() -> usize {
    1
}

/// Resident memory of the server around an idle run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub(crate) struct Rss {
    pub before_kib: u64,
    pub after_kib: u64,
    pub per_connection_bytes: f64,
}

/// The measured outcome of one phase of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    pub scenario: Scenario,
    pub server: ServerKind,
    /// Server processes the listeners were spread over.
    #[serde(default = "one")]
    pub servers: usize,
    pub protocol: String,
    /// The transport of the connections (WebSockets unless an idle run
    /// says otherwise).
    #[serde(default)]
    pub transport: Transport,
    pub connections: usize,
    pub failed_connections: usize,
    /// Seconds from starting the worker processes until every connection
    /// was open (handshake done) or had failed.
    #[serde(default)]
    pub connect_s: f64,
    pub processes: usize,
    pub group_size: Option<usize>,
    /// Fan-out: messages per second sent.
    pub rate: Option<f64>,
    /// Length of the measured window, in seconds.
    pub duration_s: f64,
    /// Echoes, deliveries or connects in the window.
    pub ops: u64,
    /// `ops` per second.
    pub throughput: f64,
    pub errors: u64,
    pub sent: Option<u64>,
    pub expected: Option<u64>,
    pub late: u64,
    /// Connections still open after the phase.
    pub alive: usize,
    pub latency: Latency,
    pub rss: Option<Rss>,
    /// The server's CPU time (user + system, from `/proc/<pid>/stat`) over
    /// the measured window, per operation, in microseconds: per echo, per
    /// delivery for fan-out. Only the first server's (the sender's, in a
    /// cluster run).
    #[serde(default)]
    pub server_cpu_us: Option<f64>,
    pub first_error: Option<String>,
    /// (percentile, ms) points for a plot.
    pub distribution: Vec<(f64, f64)>,
}

impl Report {
    /// Whether every expected fan-out delivery arrived.
    pub(crate) fn all_delivered(&self) -> bool {
        self.expected.is_none_or(|e| self.ops >= e)
    }
}

struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
}

/// Reads the resident set size of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

fn bar(progress: bool, length: u64, template: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs `phases` one after the other on one set of connections.
///
/// `keep_going` sees each report and may end the run early (for a rate ramp).
pub(crate) async fn run(
    config: &RunConfig,
    phases: &[Phase],
    mut keep_going: impl FnMut(&Report) -> bool,
) -> anyhow::Result<Vec<Report>> {
    let senders = if config.scenario.is_fanout() {
        config.connections.div_ceil(config.group_size.max(1))
    } else {
        0
    };
    let needed = (config.connections + senders).div_ceil(config.per_process.max(1));
    let processes = config.processes.max(needed).max(1);
    let rss_before = config.server_pid.map(rss_kib).transpose()?;

    let started = Instant::now();
    let (events_tx, mut events) = mpsc::unbounded_channel::<(usize, Event)>();
    let mut workers = Vec::with_capacity(processes);
    let exe = std::env::current_exe().context("cannot find the load generator's executable")?;
    let share = config.connections.div_ceil(processes);
    for index in 0..processes {
        let first = (index * share).min(config.connections);
        let count = share.min(config.connections - first);
        let spec = WorkerSpec {
            endpoint: config.endpoint.clone(),
            scenario: config.scenario,
            first,
            count,
            total: config.connections,
            group_size: if matches!(config.scenario, Scenario::Broadcast | Scenario::Cluster) {
                config.connections.max(1)
            } else {
                config.group_size.max(1)
            },
            sources: config.sources,
            payload: config.payload,
            connect_concurrency: config.connect_concurrency,
            keep_alive_ms: config.keep_alive.as_millis() as u64,
            group_servers: config.group_servers,
        };
        let mut child = with_max_files(&exe)
            .arg("worker")
            .arg("--spec")
            .arg(serde_json::to_string(&spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a worker process")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = events_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(event) => {
                        if tx.send((index, event)).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("worker {index}: {line}"),
                }
            }
        });
        workers.push(WorkerProc { child, stdin });
    }
    drop(events_tx);

    // Connect phase.
    let connecting = bar(
        config.progress && config.scenario != Scenario::Connect,
        (config.connections + senders) as u64,
        "{prefix} connecting {bar:40} {pos}/{len} {per_sec}",
    );
    connecting.set_prefix(label(config));
    let mut done = vec![0usize; processes];
    let mut ready = 0;
    let (mut connected, mut failed, mut first_error) = (0, 0, None);
    while ready < processes {
        let Some((index, event)) = events.recv().await else {
            bail!("a worker process ended while connecting");
        };
        match event {
            Event::Connecting { done: n } => {
                done[index] = n;
                connecting.set_position(done.iter().sum::<usize>() as u64);
            }
            Event::Ready {
                connected: c,
                failed: f,
                first_error: e,
            } => {
                ready += 1;
                connected += c;
                failed += f;
                first_error = first_error.or(e);
            }
            _ => {}
        }
    }
    connecting.finish_and_clear();
    let connect_s = started.elapsed().as_secs_f64();

    let rss = match (config.server_pid, rss_before) {
        (Some(pid), Some(before)) if config.scenario == Scenario::Idle => {
            // Let the server settle (lazily freed buffers, allocator caches).
            sleep(config.settle).await;
            let after = rss_kib(pid)?;
            Some(Rss {
                before_kib: before,
                after_kib: after,
                per_connection_bytes: (after.saturating_sub(before) * 1024) as f64
                    / connected.max(1) as f64,
            })
        }
        _ => None,
    };

    let mut reports = Vec::new();
    for (id, phase) in phases.iter().enumerate() {
        let start_unix_us = unix_us() + 300_000;
        let command = scenario::Command::Run {
            id: id as u32,
            phase: phase.clone(),
            start_unix_us,
        };
        let line = serde_json::to_string(&command)? + "\n";
        for worker in &mut workers {
            worker.stdin.write_all(line.as_bytes()).await?;
            worker.stdin.flush().await?;
        }
        let cpu = config
            .server_pid
            .map(|pid| CpuWindow::start(pid, phase, start_unix_us));
        let results = collect_phase(config, phase, &mut events, processes).await?;
        let mut report = merge(config, phase, processes, connected, failed, &results)?;
        if let Some(cpu) = cpu {
            report.server_cpu_us = cpu.per_op(report.ops).await;
        }
        report.first_error = report.first_error.or_else(|| first_error.clone());
        report.rss = rss;
        report.connect_s = connect_s;
        let go_on = keep_going(&report);
        reports.push(report);
        if !go_on {
            break;
        }
    }

    let stop = serde_json::to_string(&scenario::Command::Stop)? + "\n";
    for worker in &mut workers {
        let _ = worker.stdin.write_all(stop.as_bytes()).await;
        let _ = worker.stdin.flush().await;
    }
    for mut worker in workers {
        if tokio::time::timeout(Duration::from_secs(10), worker.child.wait())
            .await
            .is_err()
        {
            let _ = worker.child.kill().await;
        }
    }
    Ok(reports)
}

/// The server's CPU time over a phase's measured window: for echo, from
/// the end of the warm-up to the end of the phase (the echoes counted);
/// for the other phases, from the start until every worker has reported
/// (a fan-out's deliveries may arrive after the last send).
struct CpuWindow {
    pid: u32,
    first: tokio::task::JoinHandle<u64>,
    last: Option<tokio::task::JoinHandle<u64>>,
}

impl CpuWindow {
    fn start(pid: u32, phase: &Phase, start_unix_us: u64) -> CpuWindow {
        let start = Instant::now() + Duration::from_micros(start_unix_us.saturating_sub(unix_us()));
        let (from, to) = match phase {
            Phase::Echo {
                duration_ms,
                warmup_ms,
                ..
            } => (
                start + Duration::from_millis(*warmup_ms),
                Some(start + Duration::from_millis(*duration_ms)),
            ),
            _ => (start, None),
        };
        let ticks_at = move |at: Instant| {
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                crate::sysinfo::cpu_ticks(pid)
            })
        };
        CpuWindow {
            pid,
            first: ticks_at(from),
            last: to.map(ticks_at),
        }
    }

    /// Microseconds of server CPU per operation (`None` without operations
    /// or when `/proc` could not be read).
    async fn per_op(self, ops: u64) -> Option<f64> {
        let first = self.first.await.ok()?;
        let last = match self.last {
            Some(last) => last.await.ok()?,
            None => crate::sysinfo::cpu_ticks(self.pid),
        };
        if ops == 0 || first == 0 || last < first {
            return None;
        }
        let seconds = (last - first) as f64 / crate::sysinfo::clock_ticks() as f64;
        Some(seconds * 1e6 / ops as f64)
    }
}

fn label(config: &RunConfig) -> String {
    let mut label = format!(
        "{} {} {}",
        config.scenario.name(),
        config.endpoint.kind.name(),
        config.endpoint.protocol
    );
    if config.endpoint.transport != Transport::WebSockets {
        label.push(' ');
        label.push_str(config.endpoint.transport.name());
    }
    label
}

fn phase_length(phase: &Phase) -> Duration {
    match phase {
        Phase::Echo { duration_ms, .. }
        | Phase::Fanout { duration_ms, .. }
        | Phase::Connect { duration_ms, .. }
        | Phase::Wait { duration_ms } => Duration::from_millis(*duration_ms),
        Phase::Hold => Duration::ZERO,
    }
}

async fn collect_phase(
    config: &RunConfig,
    phase: &Phase,
    events: &mut mpsc::UnboundedReceiver<(usize, Event)>,
    processes: usize,
) -> anyhow::Result<Vec<PhaseResult>> {
    let length = phase_length(phase);
    let progress = bar(
        config.progress && !length.is_zero(),
        length.as_millis() as u64,
        "{prefix} {bar:40} {elapsed}/{duration} {msg}",
    );
    let mut prefix = label(config);
    if let Phase::Fanout { rate, .. } = phase {
        prefix.push_str(&format!(" {rate}/s"));
    }
    progress.set_prefix(prefix);
    let started = Instant::now() + Duration::from_millis(300);
    let mut ops = vec![0u64; processes];
    let mut errors = vec![0u64; processes];
    let mut results: Vec<Option<PhaseResult>> = vec![None; processes];
    while results.iter().any(Option::is_none) {
        let Some((index, event)) = events.recv().await else {
            bail!("a worker process ended during a phase");
        };
        match event {
            Event::Progress { ops: o, errors: e } => {
                ops[index] = o;
                errors[index] = e;
                let elapsed = Instant::now().saturating_duration_since(started);
                progress.set_position(elapsed.min(length).as_millis() as u64);
                let total: u64 = ops.iter().sum();
                let secs = elapsed.as_secs_f64().max(0.001);
                progress.set_message(format!(
                    "{:.0}/s, {} errors",
                    total as f64 / secs,
                    errors.iter().sum::<u64>()
                ));
            }
            Event::Result(result) => results[index] = Some(result),
            _ => {}
        }
    }
    progress.finish_and_clear();
    Ok(results.into_iter().flatten().collect())
}

fn merge(
    config: &RunConfig,
    phase: &Phase,
    processes: usize,
    connected: usize,
    failed: usize,
    results: &[PhaseResult],
) -> anyhow::Result<Report> {
    let mut histogram = stats::new_histogram();
    for result in results {
        histogram
            .add(stats::decode(&result.histogram)?)
            .map_err(|e| anyhow::anyhow!("cannot merge histograms: {e:?}"))?;
    }
    let sum = |f: fn(&PhaseResult) -> u64| results.iter().map(f).sum::<u64>();
    let ops = sum(|r| r.ops);
    let (duration_s, rate) = match phase {
        Phase::Echo {
            duration_ms,
            warmup_ms,
            ..
        } => (duration_ms.saturating_sub(*warmup_ms) as f64 / 1000.0, None),
        Phase::Fanout {
            rate, duration_ms, ..
        } => (*duration_ms as f64 / 1000.0, Some(*rate)),
        Phase::Connect { duration_ms, .. } => (*duration_ms as f64 / 1000.0, None),
        Phase::Wait { duration_ms } => (*duration_ms as f64 / 1000.0, None),
        Phase::Hold => (0.0, None),
    };
    let fanout = config.scenario.is_fanout();
    Ok(Report {
        scenario: config.scenario,
        server: config.endpoint.kind,
        servers: 1 + config.endpoint.peers.len(),
        protocol: config.endpoint.protocol.name().to_owned(),
        transport: config.endpoint.transport,
        connections: connected,
        failed_connections: failed,
        connect_s: 0.0,
        processes,
        group_size: (config.scenario == Scenario::Group).then_some(config.group_size),
        rate,
        duration_s,
        ops,
        throughput: if duration_s > 0.0 {
            ops as f64 / duration_s
        } else {
            0.0
        },
        errors: sum(|r| r.errors),
        sent: fanout.then(|| sum(|r| r.sent)),
        expected: fanout.then(|| sum(|r| r.expected)),
        late: sum(|r| r.late),
        alive: results.iter().map(|r| r.alive).sum(),
        latency: Latency::of(&histogram),
        rss: None,
        server_cpu_us: None,
        first_error: results.iter().find_map(|r| r.first_error.clone()),
        distribution: stats::distribution(&histogram),
    })
}
