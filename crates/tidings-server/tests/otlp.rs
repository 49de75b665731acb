//! OTLP export of the standalone server, against a small OTLP/HTTP receiver
//! run by the test: it accepts `POST /v1/traces` and `POST /v1/metrics`,
//! decodes the protobuf bodies with the OTLP message types, and the tests
//! assert on the decoded spans and metrics that the real `tidings` binary
//! sends after a hub invocation.

#[path = "../../tidings-client/tests/support/common.rs"]
mod common;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    routing::post,
};
use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{KeyValue, any_value},
    metrics::v1::{Metric, metric::Data, number_data_point},
    trace::v1::Span,
};
use tidings_client::{HubConnection, HubConnectionBuilder};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    process::{Child, Command},
    sync::mpsc,
    time::{Instant, timeout},
};

/// What the receiver got, decoded.
#[derive(Debug)]
enum Received {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

/// The OTLP/HTTP receiver: every request it decodes goes to `requests`.
struct Receiver {
    address: SocketAddr,
    requests: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decodes one request body, or answers 400 as a collector would.
fn decode<M: prost::Message + Default>(headers: &HeaderMap, body: &Bytes) -> Result<M, StatusCode> {
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/x-protobuf")
    {
        return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    M::decode(body.clone()).map_err(|_| StatusCode::BAD_REQUEST)
}

impl Receiver {
    async fn start(listener: TcpListener) -> Result<Receiver> {
        let address = listener.local_addr()?;
        let (tx, requests) = mpsc::unbounded_channel();
        let app = Router::new()
            .route(
                "/v1/traces",
                post(
                    |State(tx): State<mpsc::UnboundedSender<Received>>,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        let request = decode(&headers, &body)?;
                        let _ = tx.send(Received::Traces(request));
                        // An empty ExportTraceServiceResponse: full success.
                        Ok::<_, StatusCode>((
                            [(header::CONTENT_TYPE, "application/x-protobuf")],
                            Bytes::new(),
                        ))
                    },
                ),
            )
            .route(
                "/v1/metrics",
                post(
                    |State(tx): State<mpsc::UnboundedSender<Received>>,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        let request = decode(&headers, &body)?;
                        let _ = tx.send(Received::Metrics(request));
                        Ok::<_, StatusCode>((
                            [(header::CONTENT_TYPE, "application/x-protobuf")],
                            Bytes::new(),
                        ))
                    },
                ),
            )
            .with_state(tx);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            address,
            requests,
            task,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Waits until `found` picks something out of a request, for at most `within`.
    async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut found: impl FnMut(&Received) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + within;
        loop {
            let request = tokio::time::timeout_at(deadline, self.requests.recv())
                .await
                .context("timed out waiting for an OTLP request")?
                .context("the receiver stopped")?;
            if let Some(value) = found(&request) {
                return Ok(value);
            }
        }
    }

    /// Everything received within `within`.
    async fn drain(&mut self, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        let mut received = Vec::new();
        while let Ok(Some(request)) = tokio::time::timeout_at(deadline, self.requests.recv()).await
        {
            received.push(request);
        }
        received
    }
}

/// The running binary and the log lines it printed before listening.
struct Server {
    child: Child,
    url: String,
    startup_log: Vec<String>,
}

/// Starts `tidings` with `env`, and none of the OpenTelemetry variables of
/// the environment the tests run in.
async fn start_server(env: &[(&str, &str)]) -> Result<Server> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OTEL_")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().context("starting the tidings binary")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut startup_log = Vec::new();
    let url = timeout(common::WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("listening on ") {
                return Ok(url.trim().to_owned());
            }
            startup_log.push(line);
        }
        bail!("the server exited before listening")
    })
    .await
    .context("the server did not start")??;
    // Keep reading, so that the server's log writes never block on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        child,
        url,
        startup_log,
    })
}

/// Connects to the chat hub and calls `SendMessage` once.
async fn send_one_message(server: &Server) -> Result<HubConnection> {
    let connection = HubConnectionBuilder::new(format!("{}/hubs/chat", server.url)).build()?;
    connection.start().await?;
    connection
        .invoke::<()>("SendMessage", ("ann", "hello"))
        .await?;
    Ok(connection)
}

fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// The short export intervals of the tests (milliseconds).
const SHORT_INTERVALS: [(&str, &str); 2] = [
    ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
];

#[tokio::test]
async fn invocation_spans_and_metrics_reach_the_collector() -> Result<()> {
    let mut receiver = Receiver::start(TcpListener::bind("127.0.0.1:0").await?).await?;
    let endpoint = receiver.endpoint();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "tidings-under-test"),
    ];
    env.extend(SHORT_INTERVALS);
    let server = start_server(&env).await?;
    for said in ["exporting spans over OTLP", "exporting metrics over OTLP"] {
        ensure!(
            server.startup_log.iter().any(|line| line.contains(said)),
            "the log does not say {said:?}: {:?}",
            server.startup_log
        );
    }
    let connection = send_one_message(&server).await?;

    // The invocation's span, named `{hub}/{method}`, from the named service.
    let (service, span): (String, Span) = receiver
        .wait_for(Duration::from_secs(20), |request| {
            let Received::Traces(request) = request else {
                return None;
            };
            request.resource_spans.iter().find_map(|resource| {
                let service =
                    string_attribute(&resource.resource.as_ref()?.attributes, "service.name")?;
                let span = resource
                    .scope_spans
                    .iter()
                    .flat_map(|scope| &scope.spans)
                    .find(|span| span.name == "chat/SendMessage")?;
                Some((service.to_owned(), span.clone()))
            })
        })
        .await
        .context("no span named chat/SendMessage arrived")?;
    assert_eq!(service, "tidings-under-test");
    assert_eq!(
        string_attribute(&span.attributes, "rpc.system"),
        Some("signalr")
    );
    assert_eq!(
        string_attribute(&span.attributes, "rpc.service"),
        Some("chat")
    );
    assert_eq!(
        string_attribute(&span.attributes, "rpc.method"),
        Some("SendMessage")
    );
    assert_eq!(span.trace_id.len(), 16, "a trace id of 16 bytes");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);

    // The metrics: the open connection of the chat hub, and the invocation
    // counted in the latency histogram.
    let find = |metrics: &[&Metric], name: &str| -> Option<Metric> {
        metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| (*m).clone())
    };
    let (service, active, latency) = receiver
        .wait_for(Duration::from_secs(20), |request| {
            let Received::Metrics(request) = request else {
                return None;
            };
            let resource = request.resource_metrics.first()?;
            let service =
                string_attribute(&resource.resource.as_ref()?.attributes, "service.name")?;
            let metrics: Vec<&Metric> = resource
                .scope_metrics
                .iter()
                .flat_map(|scope| &scope.metrics)
                .collect();
            let latency = find(&metrics, "tidings_invocation_duration")?;
            // The histogram's series exist from the start: wait for a
            // request read after the invocation.
            let counted = match &latency.data {
                Some(Data::Histogram(h)) => h.data_points.iter().any(|point| point.count > 0),
                _ => true,
            };
            counted.then(|| {
                Some((
                    service.to_owned(),
                    find(&metrics, "signalr_server_active_connections")?,
                    latency,
                ))
            })?
        })
        .await
        .context("no metrics request with the connection gauge and the counted invocation")?;
    assert_eq!(service, "tidings-under-test");
    let Some(Data::Gauge(active)) = active.data else {
        bail!("signalr_server_active_connections is not a gauge: {active:?}");
    };
    let open_chat_connections: i64 = active
        .data_points
        .iter()
        .filter(|point| string_attribute(&point.attributes, "signalr_hub") == Some("chat"))
        .filter_map(|point| match point.value {
            Some(number_data_point::Value::AsInt(n)) => Some(n),
            _ => None,
        })
        .sum();
    assert_eq!(open_chat_connections, 1);
    assert_eq!(latency.unit, "s");
    let Some(Data::Histogram(latency)) = latency.data else {
        bail!("tidings_invocation_duration is not a histogram: {latency:?}");
    };
    let ok = latency
        .data_points
        .iter()
        .find(|point| {
            string_attribute(&point.attributes, "signalr_hub") == Some("chat")
                && string_attribute(&point.attributes, "outcome") == Some("ok")
        })
        .context("no data point of the chat hub's successful invocations")?;
    assert_eq!(ok.count, 1);
    assert_eq!(ok.bucket_counts.iter().sum::<u64>(), 1);
    assert_eq!(ok.bucket_counts.len(), ok.explicit_bounds.len() + 1);
    connection.stop().await;
    Ok(())
}

#[tokio::test]
async fn otel_sdk_disabled_sends_nothing() -> Result<()> {
    let mut receiver = Receiver::start(TcpListener::bind("127.0.0.1:0").await?).await?;
    let endpoint = receiver.endpoint();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SDK_DISABLED", "true"),
    ];
    env.extend(SHORT_INTERVALS);
    let server = start_server(&env).await?;
    let connection = send_one_message(&server).await?;
    // Ten times the span delay, five times the metric interval.
    let received = receiver.drain(Duration::from_secs(1)).await;
    assert!(received.is_empty(), "received {received:?}");
    assert!(
        !server.startup_log.iter().any(|line| line.contains("OTLP")),
        "{:?}",
        server.startup_log
    );
    connection.stop().await;
    Ok(())
}

/// Without any endpoint variable, an SDK configured by default would post
/// to localhost:4318: the receiver listens there (when the port is free)
/// and must hear nothing.
#[tokio::test]
async fn without_the_variables_nothing_is_sent() -> Result<()> {
    let default_port = TcpListener::bind("127.0.0.1:4318").await;
    let mut receiver = match default_port {
        Ok(listener) => Some(Receiver::start(listener).await?),
        Err(error) => {
            eprintln!("port 4318 is taken ({error}): only the log is checked");
            None
        }
    };
    let server = start_server(&SHORT_INTERVALS).await?;
    let connection = send_one_message(&server).await?;
    if let Some(receiver) = &mut receiver {
        let received = receiver.drain(Duration::from_secs(1)).await;
        assert!(received.is_empty(), "received {received:?}");
    }
    assert!(
        !server.startup_log.iter().any(|line| line.contains("OTLP")),
        "{:?}",
        server.startup_log
    );
    connection.stop().await;

    // The control: asked for by `OTEL_METRICS_EXPORTER=otlp` alone, the
    // export goes to that default address, where the receiver hears it.
    if let Some(receiver) = &mut receiver {
        let mut env = vec![("OTEL_METRICS_EXPORTER", "otlp")];
        env.extend(SHORT_INTERVALS);
        let _server = start_server(&env).await?;
        receiver
            .wait_for(Duration::from_secs(20), |request| {
                matches!(request, Received::Metrics(_)).then_some(())
            })
            .await
            .context("the receiver on the default port heard nothing")?;
    }
    Ok(())
}

/// What is still queued when the server stops is sent before it exits:
/// with intervals far longer than the test, the span and the metrics
/// arrive only because of SIGTERM.
#[tokio::test]
async fn stopping_the_server_sends_what_is_pending() -> Result<()> {
    let mut receiver = Receiver::start(TcpListener::bind("127.0.0.1:0").await?).await?;
    let endpoint = receiver.endpoint();
    let mut server = start_server(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
    ])
    .await?;
    let connection = send_one_message(&server).await?;
    connection.stop().await;
    let received = receiver.drain(Duration::from_millis(500)).await;
    assert!(
        received.is_empty(),
        "nothing is due yet, received {received:?}"
    );

    let pid = server.child.id().context("the server has exited")?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed");
    let exited = timeout(common::WAIT, server.child.wait())
        .await
        .context("the server did not exit")??;
    ensure!(exited.success(), "the server exited with {exited}");

    let received = receiver.drain(Duration::from_millis(500)).await;
    let span = received.iter().any(|request| match request {
        Received::Traces(request) => request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .any(|span| span.name == "chat/SendMessage"),
        Received::Metrics(_) => false,
    });
    let closed_connection = received.iter().any(|request| match request {
        Received::Metrics(request) => request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .any(|metric| metric.name == "signalr_server_connection_duration"),
        Received::Traces(_) => false,
    });
    assert!(span, "the span was not sent at shutdown: {received:?}");
    assert!(
        closed_connection,
        "the metrics were not sent at shutdown: {received:?}"
    );
    Ok(())
}
