//! Latency recording: a histogram per runtime thread (so that thousands of
//! connection tasks record without contending on one lock), merged at the end
//! of a phase, and shipped between processes as base64 of HdrHistogram's V2
//! format.

use std::{
    cell::RefCell,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use base64::Engine;
use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer, V2Serializer},
};
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to 5 minutes, with three
/// significant digits.
const HIGHEST_US: u64 = 300_000_000;

pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that HdrHistogram accepts.
    Histogram::new_with_bounds(1, HIGHEST_US, 3).unwrap_or_else(|_| Histogram::new(3).expect("3"))
}

/// A latency recorder shared by the tasks of one phase.
#[derive(Clone)]
pub struct Recorder {
    /// Identity of this recorder, so that a thread's shard is replaced when
    /// a new phase's recorder is used on it.
    id: u64,
    shards: Arc<Mutex<Vec<Shard>>>,
}

/// One thread's histogram of one recorder.
type Shard = Arc<Mutex<Histogram<u64>>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static SHARD: RefCell<Option<(u64, Shard)>> = const { RefCell::new(None) };
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shards: Arc::default(),
        }
    }

    /// Records one latency.
    pub fn record(&self, latency: Duration) {
        self.record_us(latency.as_micros() as u64);
    }

    pub fn record_us(&self, us: u64) {
        let us = us.clamp(1, HIGHEST_US);
        SHARD.with(|cell| {
            let mut cell = cell.borrow_mut();
            let key = self.id;
            let shard = match &*cell {
                Some((k, shard)) if *k == key => Arc::clone(shard),
                _ => {
                    let shard = Arc::new(Mutex::new(new_histogram()));
                    if let Ok(mut shards) = self.shards.lock() {
                        shards.push(Arc::clone(&shard));
                    }
                    *cell = Some((key, Arc::clone(&shard)));
                    shard
                }
            };
            if let Ok(mut h) = shard.lock() {
                h.saturating_record(us);
            }
        });
    }

    /// Everything recorded so far, merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut total = new_histogram();
        if let Ok(shards) = self.shards.lock() {
            for shard in shards.iter() {
                if let Ok(h) = shard.lock() {
                    let _ = total.add(&*h);
                }
            }
        }
        total
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

pub fn encode(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .map_err(|e| anyhow::anyhow!("cannot serialize a histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

pub fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("histogram is not base64")?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("cannot read a histogram: {e:?}"))
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// Points of the latency distribution for a plot: (percentile, ms).
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0,
    ]
    .iter()
    .map(|&p| (p, h.value_at_percentile(p) as f64 / 1000.0))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_and_roundtrip() {
        let recorder = Recorder::new();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let recorder = recorder.clone();
                s.spawn(move || {
                    for i in 1..=1000u64 {
                        recorder.record_us(i * (t + 1));
                    }
                });
            }
        });
        let merged = recorder.merged();
        assert_eq!(merged.len(), 4000);
        let back = decode(&encode(&merged).expect("encode")).expect("decode");
        assert_eq!(back.len(), 4000);
        assert_eq!(back.max(), merged.max());
        // A new recorder on the same thread starts empty.
        let other = Recorder::new();
        other.record_us(5);
        assert_eq!(other.merged().len(), 1);
    }
}
