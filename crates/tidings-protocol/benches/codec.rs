//! Encode/decode throughput of both hub protocols for the two most common messages: an invocation
//! with two string arguments and a completion carrying a result.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use tidings_protocol::{Completion, HubMessage, Invocation, MessageDecoder, Protocol, ToArguments};

fn messages(protocol: Protocol) -> [(&'static str, HubMessage); 2] {
    let args = ("alice", "Hello from the benchmark, how are you?")
        .to_arguments(protocol)
        .unwrap();
    [
        (
            "invocation",
            HubMessage::Invocation(Invocation::new("SendMessage", args).with_invocation_id("42")),
        ),
        (
            "completion",
            HubMessage::Completion(Completion::value(
                "42",
                protocol.encode_value(&12345).unwrap(),
            )),
        ),
    ]
}

fn codec(c: &mut Criterion) {
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let mut group = c.benchmark_group(protocol.name());
        for (name, message) in messages(protocol) {
            let mut wire = Vec::new();
            protocol.write_message(&message, &mut wire).unwrap();
            group.throughput(Throughput::Bytes(wire.len() as u64));

            group.bench_with_input(BenchmarkId::new("encode", name), &message, |b, message| {
                let mut out = Vec::with_capacity(256);
                b.iter(|| {
                    out.clear();
                    protocol
                        .write_message(black_box(message), &mut out)
                        .unwrap();
                    black_box(out.len())
                })
            });

            group.bench_with_input(BenchmarkId::new("decode", name), &wire, |b, wire| {
                let mut decoder = MessageDecoder::new(protocol, Some(32 * 1024));
                b.iter(|| {
                    decoder.push(black_box(wire));
                    black_box(decoder.next_message().unwrap())
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
