//! Metrics over OTLP: the server's one registry ([`tidings::Metrics`], the
//! one `/metrics` shows) read every `OTEL_METRIC_EXPORT_INTERVAL` and
//! posted to the collector as an OTLP request.
//!
//! Why a bridge from the registry rather than the OpenTelemetry metrics
//! SDK: the registry already aggregates everything the SDK would (counters,
//! gauges, histograms with fixed buckets), lock-free on the hot path.
//! Recording every value a second time into SDK instruments would double
//! that cost on every message, and the SDK has no observable histogram
//! through which a registry histogram could be read instead. Its values
//! map one to one onto OTLP's data model: a counter is a monotonic
//! cumulative sum, a gauge a gauge, a histogram a cumulative
//! explicit-bucket histogram with the same bounds. Cumulative values also
//! make a lost request harmless: the next one carries the totals.
//!
//! Names are the registry's (`tidings_messages_received`,
//! `signalr_server_connection_duration` with unit `s`): a collector that
//! writes them to Prometheus adds `_total` and `_seconds` and so gives the
//! very names `/metrics` shows, and one dashboard serves both paths.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_http::HttpClient as _;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use prost::Message as _;
use tidings::metrics::{FamilySnapshot, MetricKind, Series, SeriesValue};
use tokio::task::JoinHandle;

use super::{http::ExportClient, settings::Export};

/// The periodic export of the registry; [`MetricsExport::finish`] sends
/// the last values.
#[derive(Debug)]
pub(crate) struct MetricsExport {
    exporter: std::sync::Arc<Exporter>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Exporter {
    registry: tidings::Metrics,
    client: ExportClient,
    export: Export,
    resource: Resource,
    /// When the cumulative values started (the registry is made at start).
    start: u64,
    /// Time one export may take, retries included.
    timeout: Duration,
    /// Whether the last export failed: failures are logged when they start
    /// and when they end, not once per interval.
    failing: parking_lot::Mutex<bool>,
}

impl MetricsExport {
    /// Starts exporting `registry` every `interval`, on the current runtime.
    pub(crate) fn start(
        registry: &tidings::Metrics,
        export: Export,
        resource: &opentelemetry_sdk::Resource,
        interval: Duration,
        timeout: Duration,
    ) -> anyhow::Result<MetricsExport> {
        let attributes = ResourceAttributesWithSchema::from(resource);
        let exporter = std::sync::Arc::new(Exporter {
            registry: registry.clone(),
            client: ExportClient::new(export.timeout)?,
            export,
            resource: Resource {
                attributes: attributes.attributes.0,
                ..Resource::default()
            },
            start: unix_nanos(SystemTime::now()),
            timeout,
            failing: parking_lot::Mutex::new(false),
        });
        let periodic = std::sync::Arc::clone(&exporter);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: the first export is one interval in.
            ticks.tick().await;
            loop {
                ticks.tick().await;
                periodic.export().await;
            }
        });
        Ok(MetricsExport { exporter, task })
    }

    /// Stops the periodic export and sends the values as they are now.
    pub(crate) async fn finish(self) {
        self.task.abort();
        self.exporter.export().await;
    }
}

impl Exporter {
    async fn export(&self) {
        let request = request(
            &self.registry.collect(),
            &self.resource,
            self.start,
            unix_nanos(SystemTime::now()),
        );
        let outcome = tokio::time::timeout(self.timeout, self.post(request.encode_to_vec()))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        let mut failing = self.failing.lock();
        let failed = outcome.is_err();
        match outcome {
            Ok(()) if *failing => {
                tracing::info!(endpoint = %self.export.endpoint, "OTLP metrics export works again");
            }
            Ok(()) => {}
            Err(error) if !*failing => {
                tracing::warn!(endpoint = %self.export.endpoint, %error, "OTLP metrics export failed (retried every interval)");
            }
            Err(_) => {}
        }
        *failing = failed;
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let mut request = http::Request::post(self.export.endpoint.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf");
        for (name, value) in &self.export.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .body(Bytes::from(body))
            .map_err(|error| error.to_string())?;
        let response = self
            .client
            .send_bytes(request)
            .await
            .map_err(|error| error.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {}", response.status()))
        }
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// The OTLP request carrying `families`, cumulative since `start`.
fn request(
    families: &[FamilySnapshot],
    resource: &Resource,
    start: u64,
    now: u64,
) -> ExportMetricsServiceRequest {
    let metrics = families
        .iter()
        // A family with no label combination yet has nothing to say.
        .filter(|family| !family.series.is_empty())
        .filter_map(|family| metric(family, start, now))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "tidings".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

fn metric(family: &FamilySnapshot, start: u64, now: u64) -> Option<Metric> {
    let number = |series: &Series, value| NumberDataPoint {
        attributes: attributes(series),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(value),
        ..NumberDataPoint::default()
    };
    let cumulative = AggregationTemporality::Cumulative as i32;
    let data = match family.kind {
        MetricKind::Counter => Data::Sum(Sum {
            data_points: family
                .series
                .iter()
                .filter_map(|series| match series.value {
                    SeriesValue::Counter(n) => Some(number(
                        series,
                        number_data_point::Value::AsInt(i64::try_from(n).unwrap_or(i64::MAX)),
                    )),
                    _ => None,
                })
                .collect(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        MetricKind::Gauge => Data::Gauge(Gauge {
            data_points: family
                .series
                .iter()
                .filter_map(|series| match series.value {
                    SeriesValue::Gauge(n) => {
                        Some(number(series, number_data_point::Value::AsInt(n)))
                    }
                    _ => None,
                })
                .collect(),
        }),
        MetricKind::Histogram => Data::Histogram(Histogram {
            data_points: family
                .series
                .iter()
                .filter_map(|series| match &series.value {
                    SeriesValue::Histogram(h) => Some(HistogramDataPoint {
                        attributes: attributes(series),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: h.count,
                        sum: Some(h.sum),
                        // Both count each bucket on its own (not
                        // cumulatively), and the last bucket is the
                        // overflow past the last finite bound.
                        bucket_counts: h.buckets.iter().map(|(_, n)| *n).collect(),
                        explicit_bounds: h
                            .buckets
                            .iter()
                            .map(|(bound, _)| *bound)
                            .filter(|bound| bound.is_finite())
                            .collect(),
                        ..HistogramDataPoint::default()
                    }),
                    _ => None,
                })
                .collect(),
            aggregation_temporality: cumulative,
        }),
        // A kind this exporter does not know yet is left out rather than
        // sent as something it is not.
        _ => return None,
    };
    Some(Metric {
        name: family.name.clone(),
        description: family.help.clone(),
        unit: unit(family.unit.as_deref()),
        data: Some(data),
        ..Metric::default()
    })
}

/// The UCUM unit OTLP expects for a registry unit.
fn unit(unit: Option<&str>) -> String {
    match unit {
        None => String::new(),
        Some("seconds") => "s".to_owned(),
        Some("bytes") => "By".to_owned(),
        Some(other) => other.to_owned(),
    }
}

fn attributes(series: &Series) -> Vec<KeyValue> {
    series
        .labels
        .iter()
        .map(|(key, value)| KeyValue {
            key: key.clone(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.clone())),
            }),
            ..KeyValue::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_values_map_onto_the_otlp_model() {
        let registry = tidings::Metrics::new();
        registry
            .counter("app_jobs", "Jobs done.", &["queue"])
            .expect("a new name")
            .with(&["mail"])
            .add(3);
        let latency = registry
            .histogram("app_latency", "Latency.", &[], &[0.1, 1.0])
            .expect("a new name")
            .with(&[]);
        latency.observe(0.05);
        latency.observe(0.5);
        latency.observe(7.0);
        registry.backplane().set_connected(true);
        let request = request(&registry.collect(), &Resource::default(), 10, 20);
        let scope = &request.resource_metrics[0].scope_metrics[0];
        let find = |name: &str| {
            scope
                .metrics
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} is exported"))
        };

        let Some(Data::Sum(jobs)) = &find("app_jobs").data else {
            panic!("a counter is a sum");
        };
        assert!(jobs.is_monotonic);
        assert_eq!(
            jobs.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let point = &jobs.data_points[0];
        assert_eq!(point.value, Some(number_data_point::Value::AsInt(3)));
        assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (10, 20));
        assert_eq!(point.attributes[0].key, "queue");

        let latency = find("app_latency");
        assert_eq!(latency.unit, "s");
        let Some(Data::Histogram(histogram)) = &latency.data else {
            panic!("a histogram is a histogram");
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, [0.1, 1.0]);
        assert_eq!(point.bucket_counts, [1, 1, 1]);
        assert_eq!(point.count, 3);
        assert!((point.sum.unwrap_or_default() - 7.55).abs() < 1e-9);

        let Some(Data::Gauge(connected)) = &find("tidings_backplane_connected").data else {
            panic!("a gauge is a gauge");
        };
        assert_eq!(
            connected.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );
        // Families with no values yet (no hub has recorded) are left out.
        assert!(
            scope
                .metrics
                .iter()
                .all(|m| m.name != "signalr_server_active_connections")
        );
    }
}
