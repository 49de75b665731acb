//! The committed Grafana dashboard (`deploy/grafana/tidings-dashboard.json`)
//! asks only for metrics the server really exports: every metric named in
//! its queries appears in the `/metrics` output of the `tidings` binary
//! once a connection has come and gone and a method has been invoked.

#[path = "../../tidings-client/tests/support/common.rs"]
mod common;
mod support;

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use tidings_client::HubConnectionBuilder;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/grafana/tidings-dashboard.json"
);

/// Every PromQL text of the dashboard: the panels' queries and the
/// variables' (`label_values(...)`).
fn queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(query)) => out.push(query.clone()),
                    _ => queries(value, out),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The identifiers of a PromQL text, each with the character after it.
/// Quoted label values and `$variables` are not names: they are blanked
/// out first.
fn identifiers(query: &str) -> Vec<(String, Option<char>)> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let (mut plain, mut quoted, mut variable) = (Vec::new(), false, false);
    for c in query.chars() {
        variable = c == '$' || (variable && name_char(c));
        if c == '"' {
            quoted = !quoted;
        }
        plain.push(if quoted || c == '"' || variable {
            ' '
        } else {
            c
        });
    }
    let mut found = Vec::new();
    let mut i = 0;
    while i < plain.len() {
        let starts = (plain[i].is_ascii_alphabetic() || plain[i] == '_')
            && (i == 0 || !name_char(plain[i - 1]) && plain[i - 1] != '.');
        if !starts {
            i += 1;
            continue;
        }
        let end = (i..plain.len())
            .find(|&j| !name_char(plain[j]))
            .unwrap_or(plain.len());
        found.push((plain[i..end].iter().collect(), plain.get(end).copied()));
        i = end;
    }
    found
}

/// What the dashboard names: the identifiers written as a selector
/// (`name{...}`), which are its metrics, and the other names that look
/// like tidings' or SignalR's (which must be label names: a metric written
/// without braces would otherwise slip past the check).
struct Names {
    metrics: BTreeSet<String>,
    others: BTreeSet<String>,
}

fn dashboard_names() -> Result<Names> {
    let text = std::fs::read_to_string(DASHBOARD).context("reading the dashboard")?;
    let dashboard: Value = serde_json::from_str(&text).context("the dashboard is not JSON")?;
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    ensure!(all.len() >= 10, "only {} queries found", all.len());
    let mut names = Names {
        metrics: BTreeSet::new(),
        others: BTreeSet::new(),
    };
    for (name, next) in all.iter().flat_map(|query| identifiers(query)) {
        if next == Some('{') {
            names.metrics.insert(name);
        } else if name.starts_with("tidings_") || name.starts_with("signalr_") {
            names.others.insert(name);
        }
    }
    Ok(names)
}

/// The series names of an exposition (`name{labels} value` or `name
/// value`), and the label names used in it.
fn exported(exposition: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let samples = exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty());
    let (mut series, mut labels) = (BTreeSet::new(), BTreeSet::new());
    for sample in samples {
        let (name, rest) = sample.split_once(['{', ' ']).unwrap_or((sample, ""));
        series.insert(name.to_owned());
        if let Some((inside, _)) = rest.split_once('}') {
            labels.extend(
                inside
                    .split(',')
                    .filter_map(|pair| pair.split_once('=').map(|(label, _)| label.to_owned())),
            );
        }
    }
    (series, labels)
}

#[test]
fn identifiers_are_read_as_promql_names() {
    let names = identifiers(
        r#"histogram_quantile(0.5, sum by (le) (rate(a_b{x=~"$hub", y="q_r{"}[$__rate_interval]))) / c"#,
    );
    let names: Vec<(&str, Option<char>)> = names.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    assert_eq!(
        names,
        [
            ("histogram_quantile", Some('(')),
            ("sum", Some(' ')),
            ("by", Some(' ')),
            ("le", Some(')')),
            ("rate", Some('(')),
            ("a_b", Some('{')),
            ("x", Some('=')),
            ("y", Some('=')),
            ("c", None),
        ]
    );
}

#[tokio::test]
async fn every_metric_of_the_dashboard_is_exported() -> Result<()> {
    let names = dashboard_names()?;
    let wanted = &names.metrics;
    for family in [
        "signalr_server_active_connections",
        "signalr_server_connection_duration_seconds_bucket",
        "tidings_invocation_duration_seconds_bucket",
        "tidings_backplane_messages_dropped_total",
    ] {
        ensure!(
            wanted.contains(family),
            "the dashboard does not show {family}"
        );
    }

    let (_child, url) = support::binary::start_on("127.0.0.1:0", &[]).await?;

    // A connection that invokes a method and ends fills the histograms,
    // whose series exist only once observed.
    let connection = HubConnectionBuilder::new(format!("{url}/hubs/chat")).build()?;
    connection.start().await?;
    connection
        .invoke::<()>("SendMessage", ("ann", "hello"))
        .await?;
    connection.stop().await;

    let client = reqwest::Client::new();
    let mut missing = wanted.clone();
    let mut unknown = names.others.clone();
    // The server records the closed connection as it cleans up: a few tries.
    for _ in 0..50 {
        let exposition = client
            .get(format!("{url}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let (series, labels) = exported(&exposition);
        missing = wanted.difference(&series).cloned().collect();
        unknown = names.others.difference(&labels).cloned().collect();
        if missing.is_empty() && unknown.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "the dashboard asks for metrics the server does not export: {missing:?}; \
         names that are neither written as a selector (name{{...}}) nor labels: {unknown:?}"
    )
}
