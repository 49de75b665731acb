//! A worker process: opens its share of the connections, then runs the
//! phases its coordinator sends on stdin and answers with JSON lines on
//! stdout (progress, then one result per phase).
//!
//! Every connection is one task. Phases are published through a `watch`
//! channel; each task reacts according to its role (echo loop, listener,
//! sender) and records into the phase's [`Recorder`].

use std::{
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::de::IgnoredAny;
use tidings_protocol::{CompletionResult, HubMessage, Invocation, Protocol, ToArguments};
use tokio::{
    io::AsyncBufReadExt,
    sync::watch,
    time::{Instant, sleep, sleep_until, timeout_at},
};

use crate::{
    conn::{Conn, ServerKind, Transport, source_address},
    http_conn::HttpConn,
    scenario::{Command, Event, Phase, PhaseResult, Role, Scenario, WorkerSpec},
    stats::{self, Recorder},
};

/// Prints one event line for the coordinator.
pub(crate) fn emit(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

pub(crate) fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The phase being run, shared by every connection task.
struct PhaseRun {
    id: u32,
    phase: Phase,
    start: Instant,
    end: Instant,
    recorder: Recorder,
    ops: AtomicU64,
    errors: AtomicU64,
    sent: AtomicU64,
    late: AtomicU64,
    /// Echo tasks still inside their loop.
    busy: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl PhaseRun {
    /// Fan-out: the messages group `group`'s sender sends (and each of its
    /// listeners gets); in a broadcast, the first sender's, which everyone gets.
    fn messages_of(&self, spec: &WorkerSpec, group: usize) -> u64 {
        match self.phase {
            Phase::Fanout {
                rate,
                duration_ms,
                broadcast: true,
                ..
            } => Phase::messages_of(rate, duration_ms, 1, 0),
            Phase::Fanout {
                rate, duration_ms, ..
            } => Phase::messages_of(rate, duration_ms, spec.groups(), group),
            _ => 0,
        }
    }

    fn error(&self, error: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        {
            let mut slot = self.first_error.lock();
            slot.get_or_insert_with(|| error.to_string());
        }
    }
}

type Current = watch::Receiver<Option<Arc<PhaseRun>>>;

struct Worker {
    spec: WorkerSpec,
    alive: AtomicUsize,
    /// The argument bytes of every message: padding, so messages have a size.
    padding: String,
}

/// Runs a worker to the end of its command stream.
pub(crate) async fn run(spec: WorkerSpec) -> anyhow::Result<()> {
    let worker = Arc::new(Worker {
        padding: "x".repeat(spec.payload),
        spec,
        alive: AtomicUsize::new(0),
    });
    let (publish, current) = watch::channel(None::<Arc<PhaseRun>>);

    if worker.spec.scenario != Scenario::Connect {
        open_all(&worker, &current).await;
    } else {
        emit(&Event::Ready {
            connected: 0,
            failed: 0,
            first_error: None,
        });
    }

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let command: Command = serde_json::from_str(&line).context("bad command")?;
        let Command::Run {
            id,
            phase,
            start_unix_us,
        } = command
        else {
            break;
        };
        let now_us = unix_us();
        let start = Instant::now() + Duration::from_micros(start_unix_us.saturating_sub(now_us));
        let length = match &phase {
            Phase::Echo { duration_ms, .. }
            | Phase::Fanout { duration_ms, .. }
            | Phase::Connect { duration_ms, .. }
            | Phase::Wait { duration_ms } => Duration::from_millis(*duration_ms),
            Phase::Hold => Duration::ZERO,
        };
        let run = Arc::new(PhaseRun {
            id,
            phase: phase.clone(),
            start,
            end: start + length,
            recorder: Recorder::new(),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            late: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            first_error: Mutex::new(None),
        });
        publish.send_replace(Some(Arc::clone(&run)));
        let progress = tokio::spawn(report_progress(Arc::clone(&run)));
        let expected = finish(&worker, &run).await;
        progress.abort();
        let histogram = stats::encode(&run.recorder.merged())?;
        emit(&Event::Result(PhaseResult {
            ops: run.ops.load(Ordering::Relaxed),
            errors: run.errors.load(Ordering::Relaxed),
            sent: run.sent.load(Ordering::Relaxed),
            expected,
            late: run.late.load(Ordering::Relaxed),
            alive: worker.alive.load(Ordering::Relaxed),
            first_error: run.first_error.lock().clone(),
            histogram,
        }));
    }
    Ok(())
}

async fn report_progress(run: Arc<PhaseRun>) {
    loop {
        sleep(Duration::from_millis(250)).await;
        emit(&Event::Progress {
            ops: run.ops.load(Ordering::Relaxed),
            errors: run.errors.load(Ordering::Relaxed),
        });
    }
}

/// Waits until the phase is over; returns the deliveries expected (fan-out).
async fn finish(worker: &Arc<Worker>, run: &Arc<PhaseRun>) -> u64 {
    match run.phase.clone() {
        Phase::Hold => 0,
        Phase::Wait { .. } => {
            sleep_until(run.end).await;
            0
        }
        Phase::Echo {
            per_connection: Some(_),
            ..
        } => {
            // Every echo loop counted itself busy before the start (the
            // phase is published ahead of it): once none is, all are done.
            sleep_until(run.start).await;
            while run.busy.load(Ordering::Relaxed) > 0 && Instant::now() < run.end {
                sleep(Duration::from_millis(5)).await;
            }
            0
        }
        Phase::Echo { .. } => {
            sleep_until(run.end).await;
            // Let the last invocations complete (they are not counted late).
            let grace = run.end + Duration::from_secs(5);
            while run.busy.load(Ordering::Relaxed) > 0 && Instant::now() < grace {
                sleep(Duration::from_millis(5)).await;
            }
            0
        }
        Phase::Connect {
            concurrency,
            duration_ms: _,
        } => {
            storm(worker, run, concurrency).await;
            0
        }
        Phase::Fanout { drain_ms, .. } => {
            let spec = &worker.spec;
            let expected = (spec.first..spec.first + spec.count)
                .map(|i| run.messages_of(spec, spec.group_of(i)))
                .sum::<u64>();
            sleep_until(run.end).await;
            let deadline = run.end + Duration::from_millis(drain_ms);
            while run.ops.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                sleep(Duration::from_millis(10)).await;
            }
            expected
        }
    }
}

/// Opens every connection of this worker (listeners, then senders) and
/// starts its task. Reports progress, then `Ready`.
async fn open_all(worker: &Arc<Worker>, current: &Current) {
    let spec = &worker.spec;
    let mut roles: Vec<(usize, Role)> = (spec.first..spec.first + spec.count)
        .map(|i| {
            let role = if spec.scenario.is_fanout() {
                Role::Listener(spec.group_of(i))
            } else {
                Role::Echo
            };
            (i, role)
        })
        .collect();
    if spec.scenario.is_fanout() {
        roles.extend(
            spec.sender_groups()
                .map(|g| (spec.total + g, Role::Sender(g))),
        );
    }
    let done = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let ticker = async {
        loop {
            sleep(Duration::from_millis(250)).await;
            emit(&Event::Connecting {
                done: done.load(Ordering::Relaxed),
            });
        }
    };
    let opening = futures_util::stream::iter(roles)
        .map(|(index, role)| {
            let worker = Arc::clone(worker);
            async move {
                let result = match worker.spec.endpoint.transport {
                    Transport::WebSockets => {
                        open_one(&worker, index, role).await.map(Opened::Socket)
                    }
                    _ => {
                        let source = source_address(index, worker.spec.sources);
                        let server = worker.spec.endpoint.listener_server(index);
                        HttpConn::open(&worker.spec.endpoint, server, source)
                            .await
                            .map(Opened::Http)
                    }
                };
                (index, role, result)
            }
        })
        .buffer_unordered(spec.connect_concurrency.max(1))
        .for_each(|(index, role, result)| {
            done.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(Opened::Http(conn)) => {
                    worker.alive.fetch_add(1, Ordering::Relaxed);
                    let worker = Arc::clone(worker);
                    tokio::spawn(async move {
                        // Held until the server ends it (or the worker
                        // stops); only whether it is still open counts.
                        let _ = conn.hold().await;
                        worker.alive.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Ok(Opened::Socket(conn)) => {
                    worker.alive.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(connection_task(
                        Arc::clone(worker),
                        conn,
                        role,
                        first_ping(&worker.spec, index),
                        current.clone(),
                    ));
                }
                Err(error) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut slot = first_error.lock();
                        slot.get_or_insert_with(|| format!("{error:#}"));
                    }
                }
            }
            std::future::ready(())
        });
    tokio::select! {
        () = opening => {}
        () = ticker => {}
    }
    let failed = failed.load(Ordering::Relaxed);
    emit(&Event::Ready {
        connected: done.load(Ordering::Relaxed) - failed,
        failed,
        first_error: first_error.lock().clone(),
    });
}

/// A connection opened by [`open_all`].
// Short-lived (until its task is spawned, which takes the connection):
// boxing the larger variant would only add an allocation per connection.
#[allow(clippy::large_enum_variant)]
enum Opened {
    Socket(Conn),
    /// Server-Sent Events or Long Polling (idle scenario).
    Http(HttpConn),
}

async fn open_one(worker: &Worker, index: usize, role: Role) -> anyhow::Result<Conn> {
    let spec = &worker.spec;
    let source = source_address(index, spec.sources);
    let server = match role {
        Role::Listener(_) => spec.endpoint.listener_server(spec.listener_server(index)),
        // Senders spread like listeners, so that no server holds a share
        // of the senders on top of its listeners; group 0's (the
        // broadcaster) is on the first server, and each group's on the
        // first of the group's servers.
        Role::Sender(g) if spec.scenario == Scenario::Million => spec.endpoint.listener_server(g),
        Role::Sender(_) | Role::Echo => spec.endpoint.server,
    };
    let mut conn = Conn::open(&spec.endpoint, server, &spec.path(role), source).await?;
    if let (Role::Listener(g), Scenario::Group | Scenario::Million, ServerKind::Tidings) =
        (role, spec.scenario, spec.endpoint.kind)
    {
        let args = (spec.group_name(g),).to_arguments(spec.endpoint.protocol)?;
        let invocation = Invocation::new("JoinGroup", args).with_invocation_id("join");
        conn.send(&HubMessage::Invocation(invocation)).await?;
        loop {
            match conn.recv().await? {
                Some(HubMessage::Completion(c)) => match c.result {
                    CompletionResult::Error(e) => anyhow::bail!("JoinGroup failed: {e}"),
                    _ => break,
                },
                Some(_) => continue,
                None => anyhow::bail!("closed while joining a group"),
            }
        }
    }
    Ok(conn)
}

/// How often a connection sends a Ping, as the official clients do (every
/// 15 s unless the run says otherwise): the server closes a connection it
/// has heard nothing from for its client timeout, and idle connections are
/// held for minutes.
fn keep_alive(spec: &WorkerSpec) -> Duration {
    Duration::from_millis(spec.keep_alive_ms.max(1))
}

/// When a connection sends its first Ping: spread over one interval by its
/// index, so that connections opened together do not ping together.
fn first_ping(spec: &WorkerSpec, index: usize) -> Instant {
    Instant::now() + keep_alive(spec).mul_f64((index % 1000) as f64 / 1000.0)
}

/// One connection's life: react to phases by role, consume what arrives.
async fn connection_task(
    worker: Arc<Worker>,
    mut conn: Conn,
    role: Role,
    mut next_ping: Instant,
    mut current: Current,
) {
    // The receiver was cloned before any phase was published, so a phase
    // published before this task first runs still shows as a change.
    let mut phase: Option<Arc<PhaseRun>> = None;
    let pings = worker.spec.endpoint.kind == ServerKind::Tidings;
    let interval = keep_alive(&worker.spec);
    loop {
        tokio::select! {
            // Phase changes first: a message must never be judged against
            // the previous phase when the new one is already known.
            biased;
            changed = current.changed() => {
                if changed.is_err() {
                    break;
                }
                phase = current.borrow_and_update().clone();
                let Some(run) = &phase else { continue };
                let outcome = match (role, &run.phase) {
                    (Role::Echo, Phase::Echo { warmup_ms, per_connection, .. }) => {
                        let limit = per_connection.unwrap_or(u64::MAX);
                        echo_loop(&worker, &mut conn, run, Duration::from_millis(*warmup_ms), limit).await
                    }
                    (Role::Sender(g), Phase::Fanout { .. }) => send_loop(&worker, &mut conn, run, g).await,
                    _ => Ok(true),
                };
                match outcome {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(error) => {
                        run.error(format!("{error:#}"));
                        break;
                    }
                }
            }
            () = sleep_until(next_ping), if pings => {
                next_ping = Instant::now() + interval;
                if let Err(error) = conn.send(&HubMessage::Ping).await {
                    if let Some(run) = &phase {
                        run.error(format!("{error:#}"));
                    }
                    break;
                }
            }
            message = conn.recv() => match message {
                Ok(Some(message)) => {
                    if let Some(run) = &phase {
                        passive(run, role, message);
                    }
                }
                Ok(None) => {
                    if let Some(run) = &phase {
                        run.error("the server closed a connection");
                    }
                    break;
                }
                Err(error) => {
                    if let Some(run) = &phase {
                        run.error(format!("{error:#}"));
                    }
                    break;
                }
            },
        }
    }
    worker.alive.fetch_sub(1, Ordering::Relaxed);
}

/// Handles a message that arrived outside an active loop.
fn passive(run: &PhaseRun, role: Role, message: HubMessage) {
    match (role, message) {
        (Role::Listener(_), HubMessage::Invocation(invocation)) => deliver(run, &invocation),
        (_, HubMessage::Completion(c)) => {
            if let CompletionResult::Error(e) = c.result {
                run.error(format!("completion error: {e}"));
            }
        }
        (_, HubMessage::Close(close)) => {
            run.error(format!(
                "the server closed a connection: {}",
                close.error.as_deref().unwrap_or("no error")
            ));
        }
        _ => {}
    }
}

/// The payload of a fan-out message: send time, phase, sequence, padding.
type Stamp = (u64, u32, u64, IgnoredAny);

fn deliver(run: &PhaseRun, invocation: &Invocation) {
    let Some(stamp) = invocation.arguments.first() else {
        run.error("a message without arguments");
        return;
    };
    match stamp.deserialize::<Stamp>() {
        Ok((sent_us, phase, _, _)) if phase == run.id => {
            run.recorder.record_us(unix_us().saturating_sub(sent_us));
            run.ops.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {
            run.late.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => run.error(format!("unreadable message: {e}")),
    }
}

/// The echo loop: invoke, await, record, until the phase ends. Returns
/// whether the connection is still usable.
async fn echo_loop(
    worker: &Worker,
    conn: &mut Conn,
    run: &PhaseRun,
    warmup: Duration,
    limit: u64,
) -> anyhow::Result<bool> {
    run.busy.fetch_add(1, Ordering::Relaxed);
    let _busy = Busy(&run.busy);
    let protocol = worker.spec.endpoint.protocol;
    sleep_until(run.start).await;
    let measure_from = run.start + warmup;
    let mut seq: u64 = 0;
    while seq < limit && Instant::now() < run.end {
        seq += 1;
        let id = seq.to_string();
        let args = ((0u64, run.id, seq, worker.padding.as_str()),).to_arguments(protocol)?;
        let invocation = Invocation::new("Echo", args).with_invocation_id(id.as_str());
        let started = Instant::now();
        conn.send(&HubMessage::Invocation(invocation)).await?;
        let deadline = run.end + Duration::from_secs(5);
        loop {
            let message = match timeout_at(deadline, conn.recv()).await {
                Ok(message) => message?,
                Err(_) => anyhow::bail!("no answer to an Echo within 5 s after the phase"),
            };
            match message {
                // The answer: a Completion (tidings) or the invocation itself (raw echo).
                Some(HubMessage::Completion(c)) if c.invocation_id == id => {
                    if let CompletionResult::Error(e) = c.result {
                        run.error(format!("Echo failed: {e}"));
                    }
                    break;
                }
                Some(HubMessage::Invocation(i)) if i.invocation_id.as_deref() == Some(&id) => break,
                Some(HubMessage::Close(close)) => {
                    anyhow::bail!("closed by the server: {:?}", close.error)
                }
                Some(_) => continue,
                None => return Ok(false),
            }
        }
        let now = Instant::now();
        if started >= measure_from {
            run.recorder.record(now - started);
            run.ops.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(true)
}

struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A fan-out sender: its share of the phase's messages at even intervals, offset by the
/// group so senders do not fire together. Reads completions meanwhile.
async fn send_loop(
    worker: &Worker,
    conn: &mut Conn,
    run: &PhaseRun,
    group: usize,
) -> anyhow::Result<bool> {
    let spec = &worker.spec;
    let broadcast = matches!(
        run.phase,
        Phase::Fanout {
            broadcast: true,
            ..
        }
    );
    if broadcast && group != 0 {
        // One sender broadcasts; the others only listen to it.
        return Ok(true);
    }
    let senders = if broadcast { 1 } else { spec.groups() };
    let protocol = spec.endpoint.protocol;
    let length = run.end - run.start;
    let messages = run.messages_of(spec, group);
    let interval = length / messages.max(1) as u32;
    let offset = interval.mul_f64(group as f64 / senders as f64);
    let group_name = spec.group_name(group);
    let mut out = Vec::with_capacity(256);
    for seq in 0..messages {
        let at = run.start + offset + interval * seq as u32;
        loop {
            tokio::select! {
                biased;
                () = sleep_until(at) => break,
                message = conn.recv() => match message? {
                    Some(message) => passive(run, Role::Sender(group), message),
                    None => anyhow::bail!("the server closed a sender"),
                },
            }
        }
        let stamp = (unix_us(), run.id, seq, worker.padding.as_str());
        let message = fanout_message(spec, protocol, &group_name, broadcast, stamp, seq)?;
        out.clear();
        protocol.write_message(&message, &mut out)?;
        conn.send_frame(bytes::Bytes::copy_from_slice(&out)).await?;
        run.sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(true)
}

/// What a sender sends: a hub invocation for tidings; for the raw server,
/// the very invocation frame a tidings server would deliver to listeners.
fn fanout_message(
    spec: &WorkerSpec,
    protocol: Protocol,
    group: &str,
    broadcast: bool,
    stamp: (u64, u32, u64, &str),
    seq: u64,
) -> anyhow::Result<HubMessage> {
    let invocation = match (spec.endpoint.kind, spec.scenario) {
        // `Clients.All`: the sender gets its own message too, and ignores it.
        (ServerKind::Tidings, Scenario::Million) if broadcast => {
            Invocation::new("Broadcast", (stamp,).to_arguments(protocol)?)
                .with_invocation_id(seq.to_string())
        }
        (ServerKind::Raw | ServerKind::RawTws, Scenario::Broadcast) => {
            Invocation::new("Broadcast", (stamp,).to_arguments(protocol)?)
        }
        (ServerKind::Raw | ServerKind::RawTws, _) => {
            Invocation::new("GroupMessage", (stamp,).to_arguments(protocol)?)
        }
        (ServerKind::Tidings, Scenario::Broadcast | Scenario::Cluster) => {
            Invocation::new("BroadcastOthers", (stamp,).to_arguments(protocol)?)
                .with_invocation_id(seq.to_string())
        }
        (ServerKind::Tidings, _) => {
            Invocation::new("SendToGroup", (group, stamp).to_arguments(protocol)?)
                .with_invocation_id(seq.to_string())
        }
    };
    Ok(HubMessage::Invocation(invocation))
}

/// The connection storm: `concurrency` loops of connect, handshake, close.
async fn storm(worker: &Arc<Worker>, run: &Arc<PhaseRun>, concurrency: usize) {
    sleep_until(run.start).await;
    let next = Arc::new(AtomicUsize::new(worker.spec.first));
    let loops = (0..concurrency.max(1)).map(|_| {
        let worker = Arc::clone(worker);
        let run = Arc::clone(run);
        let next = Arc::clone(&next);
        tokio::spawn(async move {
            let spec = &worker.spec;
            let path = spec.path(Role::Echo);
            while Instant::now() < run.end {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let source = source_address(index, spec.sources);
                let started = Instant::now();
                match Conn::open(&spec.endpoint, spec.endpoint.server, &path, source).await {
                    Ok(conn) => {
                        run.recorder.record(started.elapsed());
                        run.ops.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(conn.close());
                    }
                    Err(error) => {
                        run.error(format!("{error:#}"));
                        // Do not spin on a refusing server.
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
    });
    for task in loops.collect::<Vec<_>>() {
        let _ = task.await;
    }
}
