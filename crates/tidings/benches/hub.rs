//! The server's hot paths without sockets: dispatch of one invocation (decode,
//! method lookup, argument binding, the method, the completion encoded),
//! serialization of one broadcast in each protocol, and fan-out of one
//! message to 10 000 local connections (enqueue, then each connection's
//! writer taking its frame).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use tidings::{
    MemoryLifetimeManager, Protocol, SerializedMessage, Target,
    bench::{Dispatcher, Outlet, connection},
    hub,
};
use tidings_protocol::{HubMessage, Invocation, ToArguments};

struct BenchHub;

#[hub]
impl BenchHub {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn echo(&self, message: String) -> String {
        message
    }
}

const PROTOCOLS: [Protocol; 2] = [Protocol::Json, Protocol::MessagePack];
const TEXT: &str = "Hello from the benchmark, how are you?";

fn frame(protocol: Protocol, target: &str, args: impl ToArguments) -> Vec<u8> {
    let invocation =
        Invocation::new(target, args.to_arguments(protocol).unwrap()).with_invocation_id("42");
    let mut out = Vec::new();
    protocol
        .write_message(&HubMessage::Invocation(invocation), &mut out)
        .unwrap();
    out
}

fn dispatch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("dispatch");
    for protocol in PROTOCOLS {
        let mut dispatcher = Dispatcher::new(BenchHub, protocol);
        for (name, wire) in [
            ("add", frame(protocol, "Add", (1, 2))),
            ("echo", frame(protocol, "echo", (TEXT,))),
        ] {
            assert!(runtime.block_on(dispatcher.invoke(&wire)).is_some());
            group.bench_function(BenchmarkId::new(name, protocol), |b| {
                b.iter(|| runtime.block_on(dispatcher.invoke(black_box(&wire))))
            });
        }
    }
    group.finish();
}

fn broadcast_serialization(c: &mut Criterion) {
    let mut group = c.benchmark_group("serialize_broadcast");
    for protocol in PROTOCOLS {
        group.bench_function(protocol.name(), |b| {
            b.iter(|| {
                let message = SerializedMessage::invocation(
                    "ReceiveMessage",
                    ("alice".to_owned(), TEXT.to_owned()),
                );
                black_box(message.frame(protocol))
            })
        });
    }
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    const CONNECTIONS: usize = 10_000;
    let mut group = c.benchmark_group("fan_out");
    group.throughput(Throughput::Elements(CONNECTIONS as u64));
    group.sample_size(20);
    for protocol in PROTOCOLS {
        let manager = MemoryLifetimeManager::new();
        let mut outlets: Vec<Outlet> = (0..CONNECTIONS)
            .map(|i| {
                let (handle, outlet) = connection(&format!("c{i}"), protocol, 1024);
                manager.add_connection(&handle);
                outlet
            })
            .collect();
        group.bench_function(BenchmarkId::new("10000", protocol), |b| {
            b.iter(|| {
                let message = Arc::new(SerializedMessage::invocation(
                    "ReceiveMessage",
                    ("alice".to_owned(), TEXT.to_owned()),
                ));
                let queued = manager.send_local(&Target::All, &message);
                assert_eq!(queued, CONNECTIONS);
                outlets.iter_mut().map(Outlet::drain).sum::<usize>()
            })
        });
    }
    // The raw WebSocket baseline's design for comparison: a map of tokio
    // bounded channels, one frame cloned into each, each drained.
    let frame =
        SerializedMessage::invocation("ReceiveMessage", ("alice".to_owned(), TEXT.to_owned()))
            .frame(Protocol::Json)
            .unwrap();
    let mut channels = std::collections::HashMap::new();
    let mut receivers = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS as u64 {
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1024);
        channels.insert(i, tx);
        receivers.push(rx);
    }
    group.bench_function(BenchmarkId::new("10000", "tokio-mpsc"), |b| {
        b.iter(|| {
            for tx in channels.values() {
                let _ = tx.try_send(frame.clone());
            }
            let mut total = 0;
            for rx in &mut receivers {
                while let Ok(frame) = rx.try_recv() {
                    total += frame.len();
                }
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, dispatch, broadcast_serialization, fan_out);
criterion_main!(benches);
