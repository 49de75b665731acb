//! [`Metrics::collect`]: every family's values at one moment, for an
//! exporter that is not Prometheus (the standalone server sends them over
//! OTLP).

use super::{Family, HistogramSnapshot, Kind, Metrics, Value};

/// One metric family at one moment, as [`Metrics::collect`] reads it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FamilySnapshot {
    /// The name as registered: without the `_total` suffix of counters or
    /// the unit suffix (`_seconds`) that the Prometheus exposition adds.
    pub name: String,
    /// The help text.
    pub help: String,
    /// The unit (`seconds` for histograms of durations), if the family has one.
    pub unit: Option<String>,
    /// What kind of metric it is.
    pub kind: MetricKind,
    /// One value per label combination recorded so far, sorted by label values.
    pub series: Vec<Series>,
}

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up, from the registry's creation on.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted in fixed buckets.
    Histogram,
}

/// The value of one label combination of a family.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Series {
    /// `(label name, label value)`, in the family's label order.
    pub labels: Vec<(String, String)>,
    /// The value now.
    pub value: SeriesValue,
}

/// A counter's, a gauge's or a histogram's value.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SeriesValue {
    /// A counter's total so far.
    Counter(u64),
    /// A gauge's value now.
    Gauge(i64),
    /// A histogram's counts so far.
    Histogram(HistogramSnapshot),
}

impl Metrics {
    /// Every family with its values now, in registration order: the same
    /// values `/metrics` shows, for exporters of other formats.
    ///
    /// ```
    /// use tidings::{Metrics, metrics::SeriesValue};
    ///
    /// let metrics = Metrics::new();
    /// metrics.counter("app_jobs", "Jobs.", &["queue"])?.with(&["mail"]).add(2);
    /// let jobs = metrics.collect().into_iter().find(|f| f.name == "app_jobs").expect("registered");
    /// assert_eq!(jobs.series[0].labels, [("queue".to_owned(), "mail".to_owned())]);
    /// assert!(matches!(jobs.series[0].value, SeriesValue::Counter(2)));
    /// # Ok::<(), tidings::metrics::MetricKindError>(())
    /// ```
    pub fn collect(&self) -> Vec<FamilySnapshot> {
        let families: Vec<Family> = self.inner.families.lock().clone();
        families.iter().map(Family::snapshot).collect()
    }
}

impl Family {
    fn snapshot(&self) -> FamilySnapshot {
        let inner = &self.0;
        let series = self
            .read_values()
            .into_iter()
            .map(|(key, value)| Series {
                labels: inner.labels.iter().cloned().zip(key).collect(),
                value: match value {
                    Value::Counter(c) => SeriesValue::Counter(c.get()),
                    Value::Gauge(g) => SeriesValue::Gauge(g.get()),
                    Value::Histogram(h) => SeriesValue::Histogram(h.snapshot()),
                },
            })
            .collect();
        FamilySnapshot {
            name: inner.name.clone(),
            help: inner.help.clone(),
            unit: inner.unit.as_ref().map(|unit| unit.as_str().to_owned()),
            kind: match inner.kind {
                Kind::Counter => MetricKind::Counter,
                Kind::Gauge => MetricKind::Gauge,
                Kind::Histogram(_) => MetricKind::Histogram,
            },
            series,
        }
    }
}
