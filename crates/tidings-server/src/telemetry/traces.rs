//! Spans over OTLP: the `tracing` spans of hub invocations (`{hub}/{method}`)
//! handed to the OpenTelemetry SDK, which batches them and posts them to
//! the collector.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::{Level, Subscriber};
use tracing_subscriber::{Layer, filter::Targets, registry::LookupSpan};

use super::{http::ExportClient, settings::Export};

/// The target of the invocation spans, which tidings opens at DEBUG so
/// that they cost nothing when only logs are wanted.
const INVOCATION_TARGET: &str = "tidings::invocation";

/// The span pipeline: the SDK's batch processor (configured by the
/// `OTEL_BSP_*` variables, sampled by `OTEL_TRACES_SAMPLER`) with an OTLP
/// exporter.
pub(crate) fn provider(export: &Export, resource: Resource) -> anyhow::Result<SdkTracerProvider> {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(export.endpoint.as_str())
        .with_timeout(export.timeout)
        .with_headers(export.headers.clone())
        .with_http_client(ExportClient::new(export.timeout)?)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The layer that turns spans into OpenTelemetry spans. Its own filter
/// takes the invocation spans at DEBUG (whatever `RUST_LOG` says of the
/// logs) and other spans at INFO; events inside an exported span become
/// its span events.
pub(crate) fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let spans = Targets::new()
        .with_target(INVOCATION_TARGET, Level::DEBUG)
        .with_default(Level::INFO);
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tidings"))
        .with_filter(spans)
}
