//! What the standard OpenTelemetry environment variables ask of the OTLP
//! export: which signals leave the process, where to and how.
//!
//! The rules are the specification's (the "OTLP Exporter Configuration"
//! and "Environment Variable Specification" pages), read in one place for
//! both signals: the span exporter is handed the result instead of reading
//! the variables itself, so traces and metrics cannot disagree on an
//! endpoint. Only OTLP over HTTP with protobuf bodies is offered.

use std::{collections::HashMap, time::Duration};

use thiserror::Error;

/// The default collector address of OTLP/HTTP (the specification's).
const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
/// The default time to wait for one export request.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time between two metric exports.
const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(60);
/// The default time one metric export may take, retries included.
const DEFAULT_METRIC_TIMEOUT: Duration = Duration::from_secs(30);

/// A signal the server exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The part of the variable names that names the signal (`TRACES`).
    fn upper(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    /// The path appended to `OTEL_EXPORTER_OTLP_ENDPOINT`.
    fn path(self) -> &'static str {
        match self {
            Signal::Traces => "v1/traces",
            Signal::Metrics => "v1/metrics",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }
}

/// Where and how one signal is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Export {
    /// The full URL the requests are posted to.
    pub(crate) endpoint: String,
    /// Extra request headers (an API key, a tenant).
    pub(crate) headers: HashMap<String, String>,
    /// How long one request may take.
    pub(crate) timeout: Duration,
}

/// The OTLP export the environment asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OtlpSettings {
    /// Spans, when exported.
    pub(crate) traces: Option<Export>,
    /// Metrics, when exported.
    pub(crate) metrics: Option<Export>,
    /// Time between two metric exports (`OTEL_METRIC_EXPORT_INTERVAL`).
    pub(crate) metric_interval: Duration,
    /// Time one metric export may take (`OTEL_METRIC_EXPORT_TIMEOUT`).
    pub(crate) metric_timeout: Duration,
}

/// A variable whose value the export cannot use, and what is done instead.
/// A signal whose endpoint, protocol or timeout is unusable is not
/// exported: sending to a guessed place would hide the mistake.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{variable}={value:?}: {reason}")]
pub(crate) struct SettingError {
    variable: String,
    value: String,
    reason: String,
}

impl OtlpSettings {
    /// Reads the process environment.
    pub(crate) fn from_env() -> (OtlpSettings, Vec<SettingError>) {
        Self::read(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `var` (empty values count as unset, as
    /// the specification asks). Returns the settings and what was wrong.
    pub(crate) fn read(var: impl Fn(&str) -> Option<String>) -> (OtlpSettings, Vec<SettingError>) {
        let var = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut errors = Vec::new();
        let mut settings = OtlpSettings {
            metric_interval: millis(&var, "OTEL_METRIC_EXPORT_INTERVAL", &mut errors)
                .unwrap_or(DEFAULT_METRIC_INTERVAL),
            metric_timeout: millis(&var, "OTEL_METRIC_EXPORT_TIMEOUT", &mut errors)
                .unwrap_or(DEFAULT_METRIC_TIMEOUT),
            ..OtlpSettings::default()
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return (settings, errors);
        }
        settings.traces = export(&var, Signal::Traces, &mut errors);
        settings.metrics = export(&var, Signal::Metrics, &mut errors);
        (settings, errors)
    }
}

/// The export of `signal`, if the variables ask for one.
fn export(
    var: &impl Fn(&str) -> Option<String>,
    signal: Signal,
    errors: &mut Vec<SettingError>,
) -> Option<Export> {
    let upper = signal.upper();
    let mut error = |variable: &str, value: &str, reason: &str| {
        errors.push(SettingError {
            variable: variable.to_owned(),
            value: value.to_owned(),
            reason: format!("{reason}; {} are not exported", signal.name()),
        });
    };
    // `OTEL_TRACES_EXPORTER=otlp` alone exports to the default endpoint;
    // with no variable at all nothing is exported, so that a server whose
    // operator did not ask for telemetry never knocks on localhost:4318.
    let exporter_variable = format!("OTEL_{upper}_EXPORTER");
    let asked = match var(&exporter_variable).as_deref() {
        None => false,
        Some("otlp") => true,
        Some("none") => return None,
        Some(other) => {
            error(
                &exporter_variable,
                other,
                "only otlp (or none) is supported",
            );
            return None;
        }
    };
    let specific = format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT");
    let (source, endpoint) = if let Some(endpoint) = var(&specific) {
        // The signal's own URL is used as it is.
        (specific, endpoint)
    } else if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            join(&base, signal.path()),
        )
    } else if asked {
        (exporter_variable, join(DEFAULT_ENDPOINT, signal.path()))
    } else {
        return None;
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        || http::Uri::try_from(endpoint.as_str()).is_err()
    {
        error(&source, &endpoint, "not an http:// or https:// URL");
        return None;
    }

    let protocol_variable = [
        format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL"),
        "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
    ]
    .into_iter()
    .find_map(|name| var(&name).map(|value| (name, value)));
    if let Some((name, protocol)) = protocol_variable
        && protocol != "http/protobuf"
    {
        error(&name, &protocol, "only http/protobuf is supported");
        return None;
    }

    if let Some((name, compression)) = first(
        var,
        &[
            &format!("OTEL_EXPORTER_OTLP_{upper}_COMPRESSION"),
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ],
    ) && compression != "none"
    {
        error(
            &name,
            &compression,
            "requests are not compressed (only none is supported)",
        );
        return None;
    }

    let headers = first(
        var,
        &[
            &format!("OTEL_EXPORTER_OTLP_{upper}_HEADERS"),
            "OTEL_EXPORTER_OTLP_HEADERS",
        ],
    )
    .map(|(_, value)| headers(&value))
    .unwrap_or_default();
    let timeout = match first(
        var,
        &[
            &format!("OTEL_EXPORTER_OTLP_{upper}_TIMEOUT"),
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ],
    ) {
        None => DEFAULT_TIMEOUT,
        Some((name, value)) => match value.parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                error(&name, &value, "not a positive number of milliseconds");
                return None;
            }
        },
    };
    Some(Export {
        endpoint,
        headers,
        timeout,
    })
}

/// The first of `names` that is set, with its value.
fn first(var: &impl Fn(&str) -> Option<String>, names: &[&str]) -> Option<(String, String)> {
    names
        .iter()
        .find_map(|name| var(name).map(|value| ((*name).to_owned(), value)))
}

/// `base` with `path` appended, one slash between them.
fn join(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

/// A duration in milliseconds; an unusable value is reported and ignored.
fn millis(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    errors: &mut Vec<SettingError>,
) -> Option<Duration> {
    let value = var(name)?;
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
        _ => {
            errors.push(SettingError {
                variable: name.to_owned(),
                value,
                reason: "not a positive number of milliseconds; the default is used".to_owned(),
            });
            None
        }
    }
}

/// `key1=value1,key2=value2`, values percent-decoded (the W3C Baggage
/// format the specification names); malformed entries are skipped.
fn headers(value: &str) -> HashMap<String, String> {
    value
        .split(',')
        .filter_map(|entry| {
            let (key, value) = entry.split_once('=')?;
            let key = key.trim();
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .ok()?;
            (!key.is_empty()).then(|| (key.to_owned(), value.into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> (OtlpSettings, Vec<SettingError>) {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtlpSettings::read(|name| vars.get(name).cloned())
    }

    fn endpoint(export: &Option<Export>) -> Option<&str> {
        export.as_ref().map(|e| e.endpoint.as_str())
    }

    #[test]
    fn without_variables_nothing_is_exported() {
        let (settings, errors) = read(&[
            ("OTEL_SERVICE_NAME", "chat"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ]);
        assert_eq!(settings.traces, None);
        assert_eq!(settings.metrics, None);
        assert!(errors.is_empty());
        assert_eq!(settings.metric_interval, Duration::from_secs(60));
    }

    #[test]
    fn the_common_endpoint_gets_each_signal_path() {
        let (settings, errors) = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=a%20b,tenant=7,broken",
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "2500"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            endpoint(&settings.traces),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            endpoint(&settings.metrics),
            Some("http://collector:4318/v1/metrics")
        );
        let metrics = settings.metrics.expect("metrics on");
        assert_eq!(
            metrics.headers.get("api-key").map(String::as_str),
            Some("a b")
        );
        assert_eq!(metrics.headers.get("tenant").map(String::as_str), Some("7"));
        assert_eq!(metrics.headers.len(), 2);
        assert_eq!(metrics.timeout, Duration::from_millis(2500));
        assert_eq!(settings.traces.map(|t| t.timeout), Some(DEFAULT_TIMEOUT));
        assert_eq!(settings.metric_interval, Duration::from_millis(250));
    }

    #[test]
    fn a_signal_endpoint_is_used_as_it_is_and_alone() {
        let (settings, _) = read(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://traces.example/otlp",
        )]);
        assert_eq!(
            endpoint(&settings.traces),
            Some("https://traces.example/otlp")
        );
        assert_eq!(settings.metrics, None);
        let (settings, _) = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://metrics:9000/in",
            ),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]);
        assert_eq!(settings.traces, None);
        assert_eq!(endpoint(&settings.metrics), Some("http://metrics:9000/in"));
    }

    #[test]
    fn asking_for_otlp_alone_uses_the_default_endpoint() {
        let (settings, _) = read(&[("OTEL_METRICS_EXPORTER", "otlp")]);
        assert_eq!(
            endpoint(&settings.metrics),
            Some("http://localhost:4318/v1/metrics")
        );
        assert_eq!(settings.traces, None);
    }

    #[test]
    fn the_sdk_can_be_disabled() {
        let (settings, _) = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]);
        assert_eq!((settings.traces, settings.metrics), (None, None));
    }

    #[test]
    fn unsupported_values_turn_the_signal_off_and_say_why() {
        let (settings, errors) = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ]);
        assert_eq!(settings.traces, None);
        assert!(settings.metrics.is_some());
        assert_eq!(settings.metric_interval, DEFAULT_METRIC_INTERVAL);
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "OTEL_METRIC_EXPORT_INTERVAL=\"soon\": not a positive number of milliseconds; the default is used",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"grpc\": only http/protobuf is supported; traces are not exported",
            ]
        );
        let (settings, errors) = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip"),
        ]);
        assert!(settings.traces.is_some());
        assert_eq!(settings.metrics, None);
        assert_eq!(
            errors[0].to_string(),
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION=\"gzip\": requests are not compressed (only none is supported); metrics are not exported"
        );
        let (settings, errors) = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]);
        assert_eq!((settings.traces, settings.metrics), (None, None));
        assert_eq!(errors.len(), 2);
    }
}
