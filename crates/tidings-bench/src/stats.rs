//! Latency recording: a histogram per runtime thread (so that thousands of
//! connection tasks record without contending on one lock), merged at the end
//! of a phase, and shipped between processes as base64 of HdrHistogram's V2
//! format.

use std::{
    cell::RefCell,
    sync::{
        Arc,
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
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to 5 minutes, with three
/// significant digits.
const HIGHEST_US: u64 = 300_000_000;

pub(crate) fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that HdrHistogram accepts.
    Histogram::new_with_bounds(1, HIGHEST_US, 3).unwrap_or_else(|_| Histogram::new(3).expect("3"))
}

/// A latency recorder shared by the tasks of one phase.
#[derive(Clone)]
pub(crate) struct Recorder {
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
    pub(crate) fn new() -> Self {
        Recorder {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shards: Arc::default(),
        }
    }

    /// Records one latency.
    pub(crate) fn record(&self, latency: Duration) {
        self.record_us(latency.as_micros() as u64);
    }

    pub(crate) fn record_us(&self, us: u64) {
        let us = us.clamp(1, HIGHEST_US);
        SHARD.with(|cell| {
            let mut cell = cell.borrow_mut();
            let key = self.id;
            let shard = match &*cell {
                Some((k, shard)) if *k == key => Arc::clone(shard),
                _ => {
                    let shard = Arc::new(Mutex::new(new_histogram()));
                    {
                        let mut shards = self.shards.lock();
                        shards.push(Arc::clone(&shard));
                    }
                    *cell = Some((key, Arc::clone(&shard)));
                    shard
                }
            };
            {
                let mut h = shard.lock();
                h.saturating_record(us);
            }
        });
    }

    /// Everything recorded so far, merged.
    pub(crate) fn merged(&self) -> Histogram<u64> {
        let mut total = new_histogram();
        {
            let shards = self.shards.lock();
            for shard in shards.iter() {
                {
                    let h = shard.lock();
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

pub(crate) fn encode(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .map_err(|e| anyhow::anyhow!("cannot serialize a histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

pub(crate) fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("histogram is not base64")?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("cannot read a histogram: {e:?}"))
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
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
pub(crate) fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
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

/// How clearly the rounds in `a` ran higher than those in `b`: the
/// Mann-Whitney count of pairs in which the `a` round is the higher one
/// (ties count half), out of `a.len() * b.len()`, and the exact one-sided
/// p-value of that count, i.e. the share of all ways to split the pooled
/// rounds into groups of these sizes whose count is at least as high. A
/// small p says `a` is higher beyond what the spread of the rounds
/// explains; with 5 rounds each the smallest possible p is 1/252.
///
/// Rank-based and exact, because the rounds of a shared virtual machine are
/// few and not normally distributed (an unlucky round can be 50 % off).
/// `None` if a side is empty or the pool is too large to enumerate.
pub(crate) fn higher_rounds(a: &[f64], b: &[f64]) -> Option<RankTest> {
    const MAX_POOL: usize = 20;
    let (na, pool): (usize, Vec<f64>) = (a.len(), a.iter().chain(b).copied().collect());
    if na == 0 || b.is_empty() || pool.len() > MAX_POOL {
        return None;
    }
    // Twice the count, to keep the half points of ties exact.
    let doubled = |chosen: &dyn Fn(usize) -> bool| -> u32 {
        let side = |wanted: bool| {
            pool.iter()
                .enumerate()
                .filter(move |(i, _)| chosen(*i) == wanted)
                .map(|(_, x)| x)
        };
        let mut u = 0;
        for x in side(true) {
            for y in side(false) {
                u += match x.total_cmp(y) {
                    std::cmp::Ordering::Greater => 2,
                    std::cmp::Ordering::Equal => 1,
                    std::cmp::Ordering::Less => 0,
                };
            }
        }
        u
    };
    let observed = doubled(&|i| i < na);
    let (mut splits, mut as_high) = (0u32, 0u32);
    for mask in 0u32..(1 << pool.len()) {
        if mask.count_ones() as usize != na {
            continue;
        }
        splits += 1;
        if doubled(&|i| mask & (1 << i) != 0) >= observed {
            as_high += 1;
        }
    }
    Some(RankTest {
        higher_pairs: f64::from(observed) / 2.0,
        pairs: na * b.len(),
        p_value: f64::from(as_high) / f64::from(splits),
    })
}

/// See [`higher_rounds`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RankTest {
    pub higher_pairs: f64,
    pub pairs: usize,
    pub p_value: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_test_tells_a_clear_difference_from_an_overlap() {
        let low = [70.0, 72.0, 74.0, 76.0, 78.0];
        let high = [90.0, 91.0, 92.0, 93.0, 94.0];
        let clear = higher_rounds(&high, &low).expect("small pools are enumerated");
        assert_eq!(clear.higher_pairs, 25.0);
        assert_eq!(clear.pairs, 25);
        // Only the observed split puts all five high rounds on one side.
        assert!((clear.p_value - 1.0 / 252.0).abs() < 1e-12);
        let reverse = higher_rounds(&low, &high).expect("enumerated");
        assert_eq!(reverse.higher_pairs, 0.0);
        assert_eq!(reverse.p_value, 1.0);
        // Interleaved rounds: no evidence either way.
        let mixed = higher_rounds(&[71.0, 75.0, 79.0], &[73.0, 77.0, 70.0]).expect("enumerated");
        assert_eq!(mixed.higher_pairs, 6.0);
        assert!(mixed.p_value > 0.3 && mixed.p_value < 0.7, "{mixed:?}");
        // Ties count half.
        let tied = higher_rounds(&[1.0, 2.0], &[1.0, 2.0]).expect("enumerated");
        assert_eq!(tied.higher_pairs, 2.0);
        assert_eq!(higher_rounds(&[], &[1.0]), None);
        assert_eq!(higher_rounds(&[1.0; 11], &[1.0; 10]), None);
    }

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
