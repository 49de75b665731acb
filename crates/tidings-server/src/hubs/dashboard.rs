//! `/hubs/dashboard` and `/dashboard/stream`: live server metrics, pushed
//! every 2 s from a background task, through a hub context to hub clients
//! and through an event log to plain Server-Sent Events subscribers.

use std::time::{Duration, Instant};

use serde::Serialize;
use tidings::{HubContext, hub, sse::EventLog};
use ts_rs::TS;

/// The dashboard hub: clients only listen ([`DashboardClient`]).
#[derive(Debug, Default)]
pub(crate) struct DashboardHub;

/// What the dashboard hub calls on its clients.
#[tidings::client]
pub trait DashboardClient {
    /// A metrics sample, every period.
    fn metrics(sample: &Metrics);
}

#[hub(client = DashboardClient)]
impl DashboardHub {}

/// One `Metrics` sample.
#[derive(Debug, Serialize, TS)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metrics {
    uptime_seconds: u64,
    /// Connections of the chat, test and dashboard hubs (on every server
    /// with the backplane).
    connections: usize,
    /// Connections open on this server, every hub and transport.
    active_connections: i64,
    /// Hub messages received and sent per second since the last sample.
    messages_per_second: f64,
    /// 99th percentile of invocation latency since the last sample, in
    /// milliseconds; `null` when nothing was invoked.
    p99_latency_ms: Option<f64>,
    timestamp: String,
}

/// How many samples `/dashboard/stream` keeps for reconnecting clients
/// (two minutes at the default period).
pub(crate) const STREAM_HISTORY: usize = 60;

/// Pushes a `Metrics` sample to every dashboard client and to the
/// `/dashboard/stream` log every `period`, until the task is dropped. Rates
/// and latencies come from the differences between two snapshots of
/// `registry`.
pub(crate) async fn push_metrics(
    dashboard: HubContext,
    stream: EventLog<Metrics>,
    connections: impl Fn() -> usize,
    registry: tidings::Metrics,
    period: Duration,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(period);
    let mut previous = (Instant::now(), registry.snapshot());
    loop {
        ticker.tick().await;
        let (now, snapshot) = (Instant::now(), registry.snapshot());
        let (then, before) = &previous;
        let messages = (snapshot.messages_received + snapshot.messages_sent)
            .saturating_sub(before.messages_received + before.messages_sent);
        let elapsed = now.duration_since(*then).as_secs_f64();
        let recent = snapshot
            .invocation_latency
            .since(&before.invocation_latency);
        let sample = Metrics {
            uptime_seconds: started.elapsed().as_secs(),
            connections: connections(),
            active_connections: snapshot.connections,
            messages_per_second: if elapsed > 0.0 {
                messages as f64 / elapsed
            } else {
                0.0
            },
            p99_latency_ms: recent.quantile(0.99).map(|seconds| seconds * 1000.0),
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        previous = (now, snapshot);
        if let Err(error) = stream.publish(&sample) {
            tracing::debug!(%error, "metrics not added to the stream");
        }
        if let Err(error) = dashboard.clients().all().metrics(&sample).await {
            tracing::warn!(%error, "cannot push metrics");
        }
    }
}
