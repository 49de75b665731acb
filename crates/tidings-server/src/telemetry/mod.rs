//! What the server tells the world about itself: logs on stdout (filtered
//! by `RUST_LOG`), and, when the standard OpenTelemetry variables ask for
//! it, the invocation spans and the metrics over OTLP/HTTP
//! ([`settings`] has the rules). With none of those variables set, nothing
//! but the logs is set up and nothing is sent anywhere.

mod http;
mod metrics;
mod settings;
mod traces;

use std::time::Duration;

use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::config::LogFormat;

use self::{metrics::MetricsExport, settings::OtlpSettings};

/// The installed logging and export; [`Telemetry::shutdown`] sends what is
/// still pending.
#[derive(Debug)]
pub(crate) struct Telemetry {
    settings: OtlpSettings,
    resource: Resource,
    tracer: Option<SdkTracerProvider>,
    metrics: Option<MetricsExport>,
}

impl Telemetry {
    /// Installs the global subscriber: the logs in `format`, and the span
    /// export if configured. Call it from inside the runtime: exports run
    /// on it.
    pub(crate) fn init(format: LogFormat) -> Telemetry {
        let (settings, errors) = OtlpSettings::from_env();
        let resource = resource();
        let mut trace_error = None;
        let tracer = settings.traces.as_ref().and_then(|export| {
            traces::provider(export, resource.clone())
                .map_err(|error| trace_error = Some(error))
                .ok()
        });

        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let logs = match format {
            // Colours only for a terminal: a log file or collector would
            // get the escape codes as text.
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .boxed(),
            // One JSON object per line, with the fields of the enclosing spans
            // (an invocation's hub, method and connection id).
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .boxed(),
        };
        tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .with(tracer.as_ref().map(traces::layer))
            .init();

        // Said once the logs can say it.
        for error in errors {
            tracing::error!(%error, "OpenTelemetry setting not used");
        }
        if let Some(error) = trace_error {
            tracing::error!(
                error = format!("{error:#}"),
                "cannot export spans over OTLP"
            );
        }
        if let (Some(export), Some(_)) = (&settings.traces, &tracer) {
            tracing::info!(endpoint = %export.endpoint, "exporting spans over OTLP");
        }
        Telemetry {
            settings,
            resource,
            tracer,
            metrics: None,
        }
    }

    /// Starts exporting `registry` over OTLP, if configured.
    pub(crate) fn export_metrics(&mut self, registry: &tidings::Metrics) {
        let Some(export) = self.settings.metrics.clone() else {
            return;
        };
        let endpoint = export.endpoint.clone();
        match MetricsExport::start(
            registry,
            export,
            &self.resource,
            self.settings.metric_interval,
            self.settings.metric_timeout,
        ) {
            Ok(metrics) => {
                tracing::info!(%endpoint, interval = ?self.settings.metric_interval, "exporting metrics over OTLP");
                self.metrics = Some(metrics);
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "cannot export metrics over OTLP"
                );
            }
        }
    }

    /// Sends the spans still queued and the metrics as they are now,
    /// giving up after [`SHUTDOWN_BUDGET`]: an unreachable collector must
    /// not hold a stopping server past its orchestrator's grace period.
    pub(crate) async fn shutdown(self) {
        let metrics = async {
            if let Some(metrics) = self.metrics
                && tokio::time::timeout(SHUTDOWN_BUDGET, metrics.finish())
                    .await
                    .is_err()
            {
                tracing::warn!("the last metrics were not exported in time");
            }
        };
        let spans = async {
            let Some(tracer) = self.tracer else {
                return;
            };
            // The SDK waits for its export thread, which waits for the
            // runtime: off the runtime's own threads.
            let flushed =
                tokio::task::spawn_blocking(move || tracer.shutdown_with_timeout(SHUTDOWN_BUDGET))
                    .await;
            if let Ok(Err(error)) = flushed {
                tracing::warn!(%error, "spans may not all have been exported");
            }
        };
        tokio::join!(metrics, spans);
    }
}

/// How long a stopping server waits for its last exports.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);

/// Who is exporting: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` as
/// the SDK reads them, with `tidings` as the service name and the server's
/// version when they say nothing of those (rather than the SDK's
/// `unknown_service`).
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let mut missing = Vec::new();
    let unnamed = detected
        .get(&Key::from_static_str("service.name"))
        .is_none_or(|name| name.as_str().starts_with("unknown_service"));
    if unnamed {
        missing.push(KeyValue::new("service.name", "tidings"));
    }
    if detected
        .get(&Key::from_static_str("service.version"))
        .is_none()
    {
        missing.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    if missing.is_empty() {
        return detected;
    }
    Resource::builder().with_attributes(missing).build()
}
