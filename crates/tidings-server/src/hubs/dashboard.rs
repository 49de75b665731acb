//! `/hubs/dashboard` and `/dashboard/stream`: live server metrics, pushed
//! every 2 s from a background task, through a hub context to hub clients
//! and through an event log to plain Server-Sent Events subscribers.

use std::time::{Duration, Instant};

use serde::Serialize;
use tidings::{HubContext, hub, sse::EventLog};

/// The dashboard hub: clients only listen for `Metrics`.
#[derive(Debug, Default)]
pub struct DashboardHub;

#[hub]
impl DashboardHub {}

/// One `Metrics` sample.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    uptime_seconds: u64,
    connections: usize,
    timestamp: String,
}

/// How many samples `/dashboard/stream` keeps for reconnecting clients
/// (two minutes at the default period).
pub const STREAM_HISTORY: usize = 60;

/// Pushes a `Metrics` sample to every dashboard client and to the
/// `/dashboard/stream` log every `period`, until the task is dropped.
pub async fn push_metrics(
    dashboard: HubContext,
    stream: EventLog<Metrics>,
    connections: impl Fn() -> usize,
    period: Duration,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        let sample = Metrics {
            uptime_seconds: started.elapsed().as_secs(),
            connections: connections(),
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        if let Err(error) = stream.publish(&sample) {
            tracing::debug!(%error, "metrics not added to the stream");
        }
        if let Err(error) = dashboard.clients().all().send("Metrics", (sample,)).await {
            tracing::warn!(%error, "cannot push metrics");
        }
    }
}
