//! Property tests: every message written by one protocol reads back equal, whatever the chunking,
//! and arbitrary input never panics the decoder.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::Value;
use tidings_protocol::{
    CancelInvocation, Close, Completion, CompletionResult, Headers, HubMessage, Invocation,
    MessageDecoder, Payload, Protocol, StreamItem, handshake,
};

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn payload(protocol: Protocol) -> impl Strategy<Value = Payload> {
    value().prop_map(move |v| protocol.encode_value(&v).unwrap())
}

fn headers() -> impl Strategy<Value = Headers> {
    prop::collection::btree_map(".{0,8}", ".{0,8}", 0..3)
}

fn id() -> impl Strategy<Value = String> {
    ".{1,12}"
}

fn invocation(protocol: Protocol, id_required: bool) -> impl Strategy<Value = Invocation> {
    let invocation_id = if id_required {
        id().prop_map(Some).boxed()
    } else {
        prop::option::of(id()).boxed()
    };
    (
        headers(),
        invocation_id,
        ".{0,16}",
        prop::collection::vec(payload(protocol), 0..4),
        prop::collection::vec(id(), 0..3),
    )
        .prop_map(
            |(headers, invocation_id, target, arguments, stream_ids)| Invocation {
                headers,
                invocation_id,
                target,
                arguments,
                stream_ids,
            },
        )
}

fn message(protocol: Protocol) -> impl Strategy<Value = HubMessage> {
    let result = prop_oneof![
        Just(CompletionResult::Void),
        payload(protocol).prop_map(CompletionResult::Value),
        ".*".prop_map(CompletionResult::Error),
    ];
    prop_oneof![
        invocation(protocol, false).prop_map(HubMessage::Invocation),
        invocation(protocol, true).prop_map(HubMessage::StreamInvocation),
        (headers(), id(), payload(protocol)).prop_map(|(headers, invocation_id, item)| {
            HubMessage::StreamItem(StreamItem {
                headers,
                invocation_id,
                item,
            })
        }),
        (headers(), id(), result).prop_map(|(headers, invocation_id, result)| {
            HubMessage::Completion(Completion {
                headers,
                invocation_id,
                result,
            })
        }),
        (headers(), id()).prop_map(|(headers, invocation_id)| {
            HubMessage::CancelInvocation(CancelInvocation {
                headers,
                invocation_id,
            })
        }),
        Just(HubMessage::Ping),
        (prop::option::of(".*"), any::<bool>()).prop_map(|(error, allow_reconnect)| {
            HubMessage::Close(Close {
                error,
                allow_reconnect,
            })
        }),
        any::<u64>().prop_map(|sequence_id| HubMessage::Ack { sequence_id }),
        any::<u64>().prop_map(|sequence_id| HubMessage::Sequence { sequence_id }),
    ]
}

fn protocol_and_messages() -> impl Strategy<Value = (Protocol, Vec<HubMessage>, Vec<usize>)> {
    prop_oneof![Just(Protocol::Json), Just(Protocol::MessagePack)].prop_flat_map(|protocol| {
        (
            Just(protocol),
            prop::collection::vec(message(protocol), 1..6),
            prop::collection::vec(1usize..64, 0..8),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_decode_round_trip((protocol, messages, chunks) in protocol_and_messages()) {
        let mut wire = Vec::new();
        for msg in &messages {
            protocol.write_message(msg, &mut wire).unwrap();
        }
        let mut decoder = MessageDecoder::new(protocol, None);
        let mut got = Vec::new();
        let mut rest = &wire[..];
        for size in chunks.into_iter().chain(std::iter::once(usize::MAX)) {
            let (now, later) = rest.split_at(size.min(rest.len()));
            decoder.push(now);
            rest = later;
            while let Some(msg) = decoder.next_message().unwrap() {
                got.push(msg);
            }
        }
        prop_assert_eq!(decoder.buffered(), 0);
        prop_assert_eq!(got, messages);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256), limit in prop::option::of(0usize..128)) {
        for protocol in [Protocol::Json, Protocol::MessagePack] {
            let mut decoder = MessageDecoder::new(protocol, limit);
            decoder.push(&data);
            for _ in 0..64 {
                match decoder.next_message() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let _ = handshake::parse_request(&data);
        let _ = handshake::parse_response(&data);
    }

    #[test]
    fn mutated_frames_never_panic((protocol, messages, _) in protocol_and_messages(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut wire = Vec::new();
        for msg in &messages {
            protocol.write_message(msg, &mut wire).unwrap();
        }
        for (index, byte) in flips {
            let i = index.index(wire.len());
            wire[i] = byte;
        }
        let mut decoder = MessageDecoder::new(protocol, Some(1 << 20));
        decoder.push(&wire);
        while let Ok(Some(msg)) = decoder.next_message() {
            // Whatever was decoded can be written again.
            let mut out = Vec::new();
            protocol.write_message(&msg, &mut out).unwrap();
        }
    }
}
