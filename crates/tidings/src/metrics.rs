//! [`Metrics`]: the one metrics registry of a server. Hub endpoints record
//! into it, the Prometheus endpoint (`/metrics`) and dashboards read it.
//!
//! Names follow the OpenTelemetry semantic conventions for SignalR where
//! they exist, converted to Prometheus form (dots become underscores, the
//! unit becomes a suffix):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `signalr_server_active_connections` | gauge | `signalr_hub`, `signalr_transport` |
//! | `signalr_server_connection_duration_seconds` | histogram | `signalr_hub`, `signalr_transport`, `signalr_connection_status` |
//! | `tidings_messages_received_total` | counter | `signalr_hub`, `signalr_transport` |
//! | `tidings_messages_sent_total` | counter | `signalr_hub`, `signalr_transport` |
//! | `tidings_bytes_received_total` | counter | `signalr_hub`, `signalr_transport` |
//! | `tidings_bytes_sent_total` | counter | `signalr_hub`, `signalr_transport` |
//! | `tidings_invocation_duration_seconds` | histogram | `signalr_hub`, `outcome` (`ok`, `error`) |
//! | `tidings_stream_invocations_total` | counter | `signalr_hub` |
//! | `tidings_backplane_messages_published_total` | counter | |
//! | `tidings_backplane_messages_received_total` | counter | |
//! | `tidings_backplane_messages_buffered` | gauge | |
//! | `tidings_backplane_messages_dropped_total` | counter | |
//! | `tidings_backplane_connected` | gauge | |
//!
//! Transports are labelled `web_sockets`, `server_sent_events` and
//! `long_polling`; connection statuses `normal_closure`, `timeout` and
//! `app_shutdown`, as ASP.NET Core labels them, and `slow_consumer` for a
//! client closed because it did not keep up (its queue overflowed, or it
//! made no write progress for `HubOptions::transport_send_timeout`).
//!
//! Recording is lock-free: a connection resolves its counters once, when it
//! starts, and then only touches atomics. Families (a metric with labels)
//! take a short lock only when a new label combination first appears. The
//! exposition is written by `prometheus-client` (OpenMetrics text).
//!
//! Other components add their own metrics with [`Metrics::counter`],
//! [`Metrics::gauge`] and [`Metrics::histogram`].
//! [`Metrics::collect`] reads every family's values for exporters of other
//! formats (the standalone server's OTLP export).

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use parking_lot::{Mutex, RwLock};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use tidings_protocol::TransportType;

mod collect;
pub use collect::{FamilySnapshot, MetricKind, Series, SeriesValue};

/// Buckets (seconds) of connection durations: the OpenTelemetry advice for
/// `signalr.server.connection.duration`.
pub const CONNECTION_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets (seconds) of invocation latencies: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The metrics registry of a server. Cheap to clone; clones share it.
///
/// ```
/// use tidings::Metrics;
///
/// let metrics = Metrics::new();
/// // HubEndpoint::new(hub).name("chat").metrics(&metrics) records into it;
/// // metrics.router() serves GET /metrics.
/// let requests = metrics.counter("myapp_requests", "Requests handled.", &["route"])?;
/// requests.with(&["/"]).inc();
/// assert!(metrics.render().contains("myapp_requests_total{route=\"/\"} 1"));
/// // A name is one kind of metric: asking for it as another is an error.
/// assert!(metrics.gauge("myapp_requests", "Requests handled.", &["route"]).is_err());
/// # Ok::<(), tidings::metrics::MetricKindError>(())
/// ```
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    families: Mutex<Vec<Family>>,
    builtin: Builtin,
}

/// The families tidings itself records into.
struct Builtin {
    active: GaugeFamily,
    duration: HistogramFamily,
    messages_received: CounterFamily,
    messages_sent: CounterFamily,
    bytes_received: CounterFamily,
    bytes_sent: CounterFamily,
    invocations: HistogramFamily,
    streams: CounterFamily,
    backplane: BackplaneMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const HUB_TRANSPORT: &[&str] = &["signalr_hub", "signalr_transport"];

impl Metrics {
    /// A registry holding tidings' own metrics (all zero).
    pub fn new() -> Self {
        let families = Mutex::new(Vec::new());
        let mut registered = Vec::new();
        let mut family = |name: &str, help: &str, unit, labels: &[&str], kind| {
            let family = Family::new(name, help, unit, labels, kind);
            registered.push(family.clone());
            family
        };
        let builtin = Builtin {
            active: GaugeFamily(family(
                "signalr_server_active_connections",
                "Number of connections that are currently active on the server.",
                None,
                HUB_TRANSPORT,
                Kind::Gauge,
            )),
            duration: HistogramFamily(family(
                "signalr_server_connection_duration",
                "The duration of connections on the server.",
                Some(Unit::Seconds),
                &[
                    "signalr_hub",
                    "signalr_transport",
                    "signalr_connection_status",
                ],
                Kind::Histogram(CONNECTION_DURATION_BUCKETS.into()),
            )),
            messages_received: CounterFamily(family(
                "tidings_messages_received",
                "Hub messages received from clients.",
                None,
                HUB_TRANSPORT,
                Kind::Counter,
            )),
            messages_sent: CounterFamily(family(
                "tidings_messages_sent",
                "Hub messages written to clients (pings and closes included).",
                None,
                HUB_TRANSPORT,
                Kind::Counter,
            )),
            bytes_received: CounterFamily(family(
                "tidings_bytes_received",
                "Bytes of hub messages received from clients.",
                None,
                HUB_TRANSPORT,
                Kind::Counter,
            )),
            bytes_sent: CounterFamily(family(
                "tidings_bytes_sent",
                "Bytes of hub messages written to clients.",
                None,
                HUB_TRANSPORT,
                Kind::Counter,
            )),
            invocations: HistogramFamily(family(
                "tidings_invocation_duration",
                "Time from receiving a non-streaming hub invocation to queueing its completion.",
                Some(Unit::Seconds),
                &["signalr_hub", "outcome"],
                Kind::Histogram(LATENCY_BUCKETS.into()),
            )),
            streams: CounterFamily(family(
                "tidings_stream_invocations",
                "Streaming hub invocations started.",
                None,
                &["signalr_hub"],
                Kind::Counter,
            )),
            backplane: BackplaneMetrics {
                published: family(
                    "tidings_backplane_messages_published",
                    "Messages published to the backplane.",
                    None,
                    &[],
                    Kind::Counter,
                )
                .counter(&[]),
                received: family(
                    "tidings_backplane_messages_received",
                    "Messages received from the backplane.",
                    None,
                    &[],
                    Kind::Counter,
                )
                .counter(&[]),
                buffered: family(
                    "tidings_backplane_messages_buffered",
                    "Messages waiting for the backplane to come back.",
                    None,
                    &[],
                    Kind::Gauge,
                )
                .gauge(&[]),
                dropped: family(
                    "tidings_backplane_messages_dropped",
                    "Messages the backplane could not deliver or buffer.",
                    None,
                    &[],
                    Kind::Counter,
                )
                .counter(&[]),
                connected: family(
                    "tidings_backplane_connected",
                    "1 while the backplane is connected, 0 otherwise.",
                    None,
                    &[],
                    Kind::Gauge,
                )
                .gauge(&[]),
            },
        };
        families.lock().extend(registered);
        Metrics {
            inner: Arc::new(Inner { families, builtin }),
        }
    }

    /// A counter family: `name` gets the `_total` suffix in the exposition.
    /// Asking again for a registered name returns the same family; asking
    /// for a name registered as another kind of metric is an error.
    pub fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<CounterFamily, MetricKindError> {
        self.family(name, help, None, labels, Kind::Counter)
            .map(CounterFamily)
    }

    /// A gauge family (the same rules as [`counter`](Self::counter)).
    pub fn gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<GaugeFamily, MetricKindError> {
        self.family(name, help, None, labels, Kind::Gauge)
            .map(GaugeFamily)
    }

    /// A histogram family of durations in seconds (`name` gets the
    /// `_seconds` suffix) with the given bucket upper bounds.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<HistogramFamily, MetricKindError> {
        self.family(
            name,
            help,
            Some(Unit::Seconds),
            labels,
            Kind::Histogram(buckets.into()),
        )
        .map(HistogramFamily)
    }

    fn family(
        &self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        labels: &[&str],
        kind: Kind,
    ) -> Result<Family, MetricKindError> {
        let mut families = self.inner.families.lock();
        if let Some(existing) = families.iter().find(|f| f.0.name == name) {
            // Handing out a family of another kind would record into
            // values that are never exported, silently.
            if existing.0.kind.name() != kind.name() {
                return Err(MetricKindError {
                    name: name.to_owned(),
                    registered: existing.0.kind.name(),
                    asked: kind.name(),
                });
            }
            return Ok(existing.clone());
        }
        let family = Family::new(name, help, unit, labels, kind);
        families.push(family.clone());
        Ok(family)
    }

    /// The backplane's counters, for a lifetime manager that publishes to
    /// other servers.
    pub fn backplane(&self) -> &BackplaneMetrics {
        &self.inner.builtin.backplane
    }

    /// The exposition in the OpenMetrics text format (which Prometheus reads).
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition(self.clone())));
        let mut out = String::with_capacity(4096);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(%error, "cannot encode the metrics");
        }
        out
    }

    /// `GET /metrics` serving [`render`](Self::render).
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/metrics", get(scrape))
            .with_state(self.clone())
    }

    /// Totals over every hub and transport, for dashboards.
    pub fn snapshot(&self) -> Snapshot {
        let b = &self.inner.builtin;
        Snapshot {
            connections: b.active.0.sum_gauges(),
            messages_received: b.messages_received.0.sum_counters(),
            messages_sent: b.messages_sent.0.sum_counters(),
            bytes_received: b.bytes_received.0.sum_counters(),
            bytes_sent: b.bytes_sent.0.sum_counters(),
            invocation_latency: b.invocations.0.merged_histogram(),
        }
    }

    /// The recorders of one hub endpoint.
    pub(crate) fn hub(&self, hub: &str) -> HubMetrics {
        let b = &self.inner.builtin;
        let invocation_ok = b.invocations.with(&[hub, "ok"]);
        let invocation_error = b.invocations.with(&[hub, "error"]);
        let transport = |t: TransportType| {
            let labels = [hub, transport_label(t)];
            Arc::new(TransportMetrics {
                invocation_ok: invocation_ok.clone(),
                invocation_error: invocation_error.clone(),
                hub: hub.into(),
                transport: t,
                active: b.active.with(&labels),
                messages_received: b.messages_received.with(&labels),
                messages_sent: b.messages_sent.with(&labels),
                bytes_received: b.bytes_received.with(&labels),
                bytes_sent: b.bytes_sent.with(&labels),
                durations: b.duration.clone(),
            })
        };
        HubMetrics {
            websockets: transport(TransportType::WebSockets),
            server_sent_events: transport(TransportType::ServerSentEvents),
            long_polling: transport(TransportType::LongPolling),
            streams: b.streams.with(&[hub]),
        }
    }
}

async fn scrape(State(metrics): State<Metrics>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// The label value of a transport (ASP.NET Core's spelling).
pub(crate) fn transport_label(transport: TransportType) -> &'static str {
    match transport {
        TransportType::WebSockets => "web_sockets",
        TransportType::ServerSentEvents => "server_sent_events",
        TransportType::LongPolling => "long_polling",
    }
}

/// Totals read by [`Metrics::snapshot`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Snapshot {
    /// Connections open now.
    pub connections: i64,
    /// Hub messages received from clients so far.
    pub messages_received: u64,
    /// Hub messages written to clients so far.
    pub messages_sent: u64,
    /// Bytes received from clients so far.
    pub bytes_received: u64,
    /// Bytes written to clients so far.
    pub bytes_sent: u64,
    /// Latencies of non-streaming invocations, every hub and outcome.
    pub invocation_latency: HistogramSnapshot,
}

/// The backplane's counters ([`Metrics::backplane`]).
#[derive(Debug, Clone)]
pub struct BackplaneMetrics {
    published: Counter,
    received: Counter,
    buffered: Gauge,
    dropped: Counter,
    connected: Gauge,
}

impl BackplaneMetrics {
    /// A message was published.
    pub fn published(&self) {
        self.published.inc();
    }

    /// A message arrived from another server.
    pub fn received(&self) {
        self.received.inc();
    }

    /// How many messages wait for the backplane now.
    pub fn set_buffered(&self, messages: u64) {
        self.buffered
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    /// `messages` were lost (buffer full, or given up on).
    pub fn dropped(&self, messages: u64) {
        self.dropped.add(messages);
    }

    /// Whether the backplane is connected now.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// Whether the backplane last reported itself connected.
    pub fn is_connected(&self) -> bool {
        self.connected.get() > 0
    }
}

/// What one hub endpoint records into.
#[derive(Clone)]
pub(crate) struct HubMetrics {
    websockets: Arc<TransportMetrics>,
    server_sent_events: Arc<TransportMetrics>,
    long_polling: Arc<TransportMetrics>,
    streams: Counter,
}

impl HubMetrics {
    pub(crate) fn transport(&self, transport: TransportType) -> Arc<TransportMetrics> {
        Arc::clone(match transport {
            TransportType::WebSockets => &self.websockets,
            TransportType::ServerSentEvents => &self.server_sent_events,
            TransportType::LongPolling => &self.long_polling,
        })
    }

    /// A streaming invocation started.
    pub(crate) fn stream_started(&self) {
        self.streams.inc();
    }
}

/// The counters of one (hub, transport): what a connection records into.
/// It holds its hub's invocation histograms too, so that an invocation
/// records through its connection's handle instead of taking a reference
/// on the hub's recorders.
pub(crate) struct TransportMetrics {
    invocation_ok: Histogram,
    invocation_error: Histogram,
    hub: Box<str>,
    transport: TransportType,
    active: Gauge,
    messages_received: Counter,
    messages_sent: Counter,
    bytes_received: Counter,
    bytes_sent: Counter,
    durations: HistogramFamily,
}

impl TransportMetrics {
    pub(crate) fn connected(&self) {
        self.active.inc();
    }

    /// The connection ended after `lived`; `status` is `normal_closure`,
    /// `timeout`, `app_shutdown` or `slow_consumer`.
    pub(crate) fn disconnected(&self, lived: Duration, status: &str) {
        self.active.dec();
        self.durations
            .with(&[&self.hub, transport_label(self.transport), status])
            .observe(lived.as_secs_f64());
    }

    pub(crate) fn received(&self, messages: u64, bytes: usize) {
        if messages > 0 {
            self.messages_received.add(messages);
        }
        if bytes > 0 {
            self.bytes_received.add(bytes as u64);
        }
    }

    /// A non-streaming invocation answered after `elapsed`.
    pub(crate) fn invocation(&self, elapsed: Duration, ok: bool) {
        let histogram = if ok {
            &self.invocation_ok
        } else {
            &self.invocation_error
        };
        histogram.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn sent(&self, bytes: usize) {
        self.messages_sent.inc();
        self.bytes_sent.add(bytes as u64);
    }
}

impl fmt::Debug for TransportMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportMetrics")
            .field("hub", &self.hub)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Families and values.

#[derive(Debug, Clone)]
enum Kind {
    Counter,
    Gauge,
    Histogram(Arc<[f64]>),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram(_) => "histogram",
        }
    }
}

/// A metric name asked for as another kind of metric than it was
/// registered as ([`Metrics::counter`], [`Metrics::gauge`],
/// [`Metrics::histogram`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the metric {name} is registered as a {registered}, not as a {asked}")]
pub struct MetricKindError {
    /// The metric's name.
    pub name: String,
    /// The kind it was registered as.
    pub registered: &'static str,
    /// The kind asked for.
    pub asked: &'static str,
}

/// One metric with its label names and a value per label combination.
#[derive(Clone)]
struct Family(Arc<FamilyInner>);

struct FamilyInner {
    name: String,
    help: String,
    unit: Option<Unit>,
    labels: Vec<String>,
    kind: Kind,
    values: RwLock<HashMap<Vec<String>, Value>>,
}

#[derive(Clone)]
enum Value {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

impl Family {
    fn new(name: &str, help: &str, unit: Option<Unit>, labels: &[&str], kind: Kind) -> Self {
        Family(Arc::new(FamilyInner {
            name: name.to_owned(),
            help: help.to_owned(),
            unit,
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            kind,
            values: RwLock::new(HashMap::new()),
        }))
    }

    /// The value of a label combination, created on first use. Missing
    /// label values are empty, extra ones are ignored.
    fn value(&self, labels: &[&str]) -> Value {
        let key: Vec<String> = (0..self.0.labels.len())
            .map(|i| labels.get(i).copied().unwrap_or_default().to_owned())
            .collect();
        if let Some(value) = self.0.values.read().get(&key) {
            return value.clone();
        }
        let mut values = self.0.values.write();
        values
            .entry(key)
            .or_insert_with(|| match &self.0.kind {
                Kind::Counter => Value::Counter(Counter::default()),
                Kind::Gauge => Value::Gauge(Gauge::default()),
                Kind::Histogram(bounds) => Value::Histogram(Histogram::new(bounds)),
            })
            .clone()
    }

    fn counter(&self, labels: &[&str]) -> Counter {
        match self.value(labels) {
            Value::Counter(c) => c,
            _ => Counter::default(),
        }
    }

    fn gauge(&self, labels: &[&str]) -> Gauge {
        match self.value(labels) {
            Value::Gauge(g) => g,
            _ => Gauge::default(),
        }
    }

    fn histogram(&self, labels: &[&str]) -> Histogram {
        match self.value(labels) {
            Value::Histogram(h) => h,
            _ => Histogram::new(LATENCY_BUCKETS),
        }
    }

    fn sum_counters(&self) -> u64 {
        self.read_values()
            .iter()
            .map(|(_, v)| match v {
                Value::Counter(c) => c.get(),
                _ => 0,
            })
            .sum()
    }

    fn sum_gauges(&self) -> i64 {
        self.read_values()
            .iter()
            .map(|(_, v)| match v {
                Value::Gauge(g) => g.get(),
                _ => 0,
            })
            .sum()
    }

    fn merged_histogram(&self) -> HistogramSnapshot {
        let mut merged: Option<HistogramSnapshot> = None;
        for (_, value) in self.read_values() {
            if let Value::Histogram(h) = value {
                let snapshot = h.snapshot();
                match &mut merged {
                    None => merged = Some(snapshot),
                    Some(m) => m.merge(&snapshot),
                }
            }
        }
        merged.unwrap_or_else(|| Histogram::new(LATENCY_BUCKETS).snapshot())
    }

    /// A sorted copy of the values, so that the exposition is stable.
    fn read_values(&self) -> Vec<(Vec<String>, Value)> {
        let mut values: Vec<_> = self
            .0
            .values
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        values
    }

    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let inner = &self.0;
        let metric_type = match inner.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram(_) => MetricType::Histogram,
        };
        let mut family = encoder.encode_descriptor(
            &inner.name,
            &inner.help,
            inner.unit.as_ref(),
            metric_type,
        )?;
        for (key, value) in self.read_values() {
            let labels: Vec<(String, String)> = inner.labels.iter().cloned().zip(key).collect();
            let metric = family.encode_family(&labels)?;
            match value {
                Value::Counter(c) => ConstCounter::new(c.get()).encode(metric)?,
                Value::Gauge(g) => ConstGauge::new(g.get()).encode(metric)?,
                Value::Histogram(h) => {
                    let snapshot = h.snapshot();
                    let mut metric = metric;
                    metric.encode_histogram::<Vec<(String, String)>>(
                        snapshot.sum,
                        snapshot.count,
                        &snapshot.buckets,
                        None,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Encodes every family at scrape time.
struct Exposition(Metrics);

impl fmt::Debug for Exposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Exposition")
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let families: Vec<Family> = self.0.inner.families.lock().clone();
        for family in families {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// A family of counters ([`Metrics::counter`]).
#[derive(Clone)]
pub struct CounterFamily(Family);

impl CounterFamily {
    /// The counter of these label values (in the family's label order).
    pub fn with(&self, labels: &[&str]) -> Counter {
        self.0.counter(labels)
    }
}

/// A family of gauges ([`Metrics::gauge`]).
#[derive(Clone)]
pub struct GaugeFamily(Family);

impl GaugeFamily {
    /// The gauge of these label values (in the family's label order).
    pub fn with(&self, labels: &[&str]) -> Gauge {
        self.0.gauge(labels)
    }
}

/// A family of histograms ([`Metrics::histogram`]).
#[derive(Clone)]
pub struct HistogramFamily(Family);

impl HistogramFamily {
    /// The histogram of these label values (in the family's label order).
    pub fn with(&self, labels: &[&str]) -> Histogram {
        self.0.histogram(labels)
    }
}

macro_rules! family_debug {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($t)).field(&self.0.0.name).finish()
            }
        }
    )*};
}
family_debug!(CounterFamily, GaugeFamily, HistogramFamily);

/// How many parts a count that every connection records into is split
/// into. Each thread adds to one part, on a cache line of its own, so that
/// the worker threads do not take the line from each other on every
/// message; a reader sums the parts.
const STRIPES: usize = 8;

/// A value alone on its cache line.
#[derive(Default)]
#[repr(align(64))]
struct Padded<T>(T);

/// The part this thread records into.
fn stripe() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|stripe| *stripe)
}

/// A monotonically increasing count. Clones share the value.
#[derive(Clone, Default)]
pub struct Counter(Arc<[Padded<AtomicU64>; STRIPES]>);

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Counter").field(&self.get()).finish()
    }
}

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|part| part.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// A value that goes up and down. Clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted in fixed buckets, with their sum. Observing is a
/// few atomic operations; clones share the buckets.
#[derive(Clone)]
pub struct Histogram(Arc<HistogramInner>);

struct HistogramInner {
    bounds: Box<[f64]>,
    /// The counts, in parts (see [`STRIPES`]).
    stripes: Box<[Padded<HistogramStripe>]>,
}

struct HistogramStripe {
    /// One count per bound, plus the overflow bucket (+Inf).
    counts: Box<[AtomicU64]>,
    /// The sum, as `f64` bits.
    sum: AtomicU64,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.snapshot().count)
            .finish_non_exhaustive()
    }
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let stripes = (0..STRIPES)
            .map(|_| {
                Padded(HistogramStripe {
                    counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                    sum: AtomicU64::new(0f64.to_bits()),
                })
            })
            .collect();
        Histogram(Arc::new(HistogramInner {
            bounds: bounds.into(),
            stripes,
        }))
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let inner = &self.0;
        let index = inner.bounds.partition_point(|bound| *bound < value);
        let part = &inner.stripes[stripe()].0;
        part.counts[index].fetch_add(1, Ordering::Relaxed);
        let mut current = part.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match part.sum.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// The current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let inner = &self.0;
        let count_of = |index: usize| -> u64 {
            inner
                .stripes
                .iter()
                .map(|part| part.0.counts[index].load(Ordering::Relaxed))
                .fold(0, u64::wrapping_add)
        };
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            .map(|(index, bound)| (bound, count_of(index)))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum: inner
                .stripes
                .iter()
                .map(|part| f64::from_bits(part.0.sum.load(Ordering::Relaxed)))
                .sum(),
            buckets,
        }
    }
}

/// The counts of a [`Histogram`] at one moment.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Number of observations.
    pub count: u64,
    /// Sum of the observations.
    pub sum: f64,
    /// `(upper bound, observations in this bucket)`, not cumulative; the
    /// last bound is +∞.
    pub buckets: Vec<(f64, u64)>,
}

impl HistogramSnapshot {
    /// Estimates the `q` quantile (0 ≤ q ≤ 1) by linear interpolation
    /// inside the bucket that holds it, as Prometheus'
    /// `histogram_quantile` does; `None` without observations. A quantile
    /// in the overflow bucket reports the largest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        let mut lower = 0.0;
        for &(upper, n) in &self.buckets {
            if n > 0 && (below + n) as f64 >= rank {
                if upper.is_infinite() {
                    return Some(lower);
                }
                let within = (rank - below as f64) / n as f64;
                return Some(lower + (upper - lower) * within);
            }
            below += n;
            if upper.is_finite() {
                lower = upper;
            }
        }
        Some(lower)
    }

    /// The differences since an earlier snapshot of the same histogram
    /// (what happened in between): for rates and recent quantiles.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .zip(
                earlier
                    .buckets
                    .iter()
                    .map(|(_, n)| *n)
                    .chain(std::iter::repeat(0)),
            )
            .map(|(&(bound, n), before)| (bound, n.saturating_sub(before)))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum: (self.sum - earlier.sum).max(0.0),
            buckets,
        }
    }

    /// Adds another snapshot with the same bounds.
    fn merge(&mut self, other: &HistogramSnapshot) {
        self.count += other.count;
        self.sum += other.sum;
        for ((_, n), (_, m)) in self.buckets.iter_mut().zip(&other.buckets) {
            *n += m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_follows_the_conventions() {
        let metrics = Metrics::new();
        let hub = metrics.hub("chat");
        let ws = hub.transport(TransportType::WebSockets);
        ws.connected();
        ws.connected();
        ws.received(3, 120);
        ws.sent(40);
        ws.disconnected(Duration::from_millis(300), "normal_closure");
        ws.invocation(Duration::from_millis(2), true);
        metrics.backplane().set_connected(true);
        let text = metrics.render();
        for line in [
            "# TYPE signalr_server_active_connections gauge",
            "signalr_server_active_connections{signalr_hub=\"chat\",signalr_transport=\"web_sockets\"} 1",
            "signalr_server_active_connections{signalr_hub=\"chat\",signalr_transport=\"long_polling\"} 0",
            "# TYPE signalr_server_connection_duration_seconds histogram",
            "# UNIT signalr_server_connection_duration_seconds seconds",
            "signalr_server_connection_duration_seconds_count{signalr_hub=\"chat\",signalr_transport=\"web_sockets\",signalr_connection_status=\"normal_closure\"} 1",
            "signalr_server_connection_duration_seconds_bucket{le=\"0.5\",signalr_hub=\"chat\",signalr_transport=\"web_sockets\",signalr_connection_status=\"normal_closure\"} 1",
            "signalr_server_connection_duration_seconds_bucket{le=\"0.2\",signalr_hub=\"chat\",signalr_transport=\"web_sockets\",signalr_connection_status=\"normal_closure\"} 0",
            "tidings_messages_received_total{signalr_hub=\"chat\",signalr_transport=\"web_sockets\"} 3",
            "tidings_bytes_received_total{signalr_hub=\"chat\",signalr_transport=\"web_sockets\"} 120",
            "tidings_messages_sent_total{signalr_hub=\"chat\",signalr_transport=\"web_sockets\"} 1",
            "tidings_bytes_sent_total{signalr_hub=\"chat\",signalr_transport=\"web_sockets\"} 40",
            "tidings_invocation_duration_seconds_count{signalr_hub=\"chat\",outcome=\"ok\"} 1",
            "tidings_backplane_connected 1",
            "tidings_backplane_messages_dropped_total 0",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.connections, 1);
        assert_eq!(snapshot.messages_received, 3);
        assert_eq!(snapshot.bytes_sent, 40);
        assert_eq!(snapshot.invocation_latency.count, 1);
    }

    #[test]
    fn families_are_shared_by_name_and_label_values() {
        let metrics = Metrics::new();
        let a = metrics
            .counter("app_things", "Things.", &["kind"])
            .expect("a new name");
        let b = metrics
            .counter("app_things", "Things.", &["kind"])
            .expect("the same kind");
        a.with(&["x"]).inc();
        b.with(&["x"]).add(2);
        b.with(&["y\"z"]).inc();
        assert_eq!(a.with(&["x"]).get(), 3);
        let text = metrics.render();
        assert!(text.contains("app_things_total{kind=\"x\"} 3"), "{text}");
        // Label values are escaped.
        assert!(
            text.contains("app_things_total{kind=\"y\\\"z\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_name_is_one_kind_of_metric() {
        let metrics = Metrics::new();
        let counter = metrics
            .counter("app_jobs", "Jobs.", &[])
            .expect("a new name");
        counter.with(&[]).inc();
        let Err(error) = metrics.gauge("app_jobs", "Jobs.", &[]) else {
            panic!("a counter's name is no gauge");
        };
        assert_eq!(
            error.to_string(),
            "the metric app_jobs is registered as a counter, not as a gauge"
        );
        assert!(metrics.histogram("app_jobs", "Jobs.", &[], &[1.0]).is_err());
        // A built-in name is taken too.
        assert!(
            metrics
                .counter("tidings_backplane_connected", "", &[])
                .is_err()
        );
        // The counter is untouched, and still exported as one.
        let text = metrics.render();
        assert!(text.contains("app_jobs_total 1"), "{text}");
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        assert_eq!(h.snapshot().quantile(0.99), None);
        for _ in 0..90 {
            h.observe(0.0005);
        }
        for _ in 0..10 {
            h.observe(0.05);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert!((s.sum - (90.0 * 0.0005 + 10.0 * 0.05)).abs() < 1e-9);
        let p50 = s.quantile(0.5).unwrap_or_default();
        assert!(p50 > 0.0 && p50 <= 0.001, "{p50}");
        let p99 = s.quantile(0.99).unwrap_or_default();
        assert!(p99 > 0.01 && p99 <= 0.1, "{p99}");
        h.observe(7.0);
        assert_eq!(h.snapshot().quantile(1.0), Some(0.1));
        let later = h.snapshot().since(&s);
        assert_eq!(later.count, 1);
        assert!((later.sum - 7.0).abs() < 1e-9);
    }
}
