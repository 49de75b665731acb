//! `MessageDecoder` over arbitrary transport chunking and the maximum message size rule.
#![allow(clippy::unwrap_used)]

use tidings_protocol::{
    Completion, DecodeError, HubMessage, Invocation, MessageDecoder, Protocol, ToArguments,
};

fn sample_messages(protocol: Protocol) -> Vec<HubMessage> {
    vec![
        HubMessage::Ping,
        HubMessage::Invocation(
            Invocation::new(
                "Send",
                ("alice", "hello there").to_arguments(protocol).unwrap(),
            )
            .with_invocation_id("0"),
        ),
        HubMessage::Completion(Completion::value(
            "0",
            protocol.encode_value(&vec![1, 2, 3]).unwrap(),
        )),
        HubMessage::Ack { sequence_id: 3 },
    ]
}

fn wire(protocol: Protocol, messages: &[HubMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for msg in messages {
        protocol.write_message(msg, &mut out).unwrap();
    }
    out
}

fn drain(decoder: &mut MessageDecoder) -> Vec<HubMessage> {
    let mut out = Vec::new();
    while let Some(msg) = decoder.next_message().unwrap() {
        out.push(msg);
    }
    out
}

#[test]
fn several_messages_in_one_push() {
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let messages = sample_messages(protocol);
        let mut decoder = MessageDecoder::new(protocol, Some(32 * 1024));
        decoder.push(&wire(protocol, &messages));
        assert_eq!(drain(&mut decoder), messages);
        assert_eq!(decoder.buffered(), 0);
    }
}

#[test]
fn every_split_point_and_byte_by_byte() {
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let messages = sample_messages(protocol);
        let bytes = wire(protocol, &messages);
        for split in 0..=bytes.len() {
            let mut decoder = MessageDecoder::new(protocol, None);
            decoder.push(&bytes[..split]);
            let mut got = drain(&mut decoder);
            decoder.push(&bytes[split..]);
            got.extend(drain(&mut decoder));
            assert_eq!(got, messages, "{protocol:?} split at {split}");
        }
        let mut decoder = MessageDecoder::new(protocol, None);
        let mut got = Vec::new();
        for byte in &bytes {
            decoder.push(std::slice::from_ref(byte));
            got.extend(drain(&mut decoder));
        }
        assert_eq!(got, messages, "{protocol:?} byte by byte");
    }
}

#[test]
fn incomplete_message_stays_buffered() {
    let mut decoder = MessageDecoder::new(Protocol::Json, None);
    decoder.push(b"{\"type\":6}\x1e{\"type\":");
    assert_eq!(decoder.next_message().unwrap(), Some(HubMessage::Ping));
    assert_eq!(decoder.next_message().unwrap(), None);
    assert_eq!(decoder.buffered(), 8);
    decoder.push(b"6}\x1e");
    assert_eq!(decoder.next_message().unwrap(), Some(HubMessage::Ping));
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn too_large_message_display_matches_net() {
    let err = DecodeError::MessageTooLarge { limit: 32768 };
    assert_eq!(
        err.to_string(),
        "The maximum message size of 32768B was exceeded. The message size can be configured in AddHubOptions."
    );
}

#[test]
fn json_size_limit_counts_the_framed_message() {
    // `{"type":6}` + separator is 11 bytes.
    let mut ok = MessageDecoder::new(Protocol::Json, Some(11));
    ok.push(b"{\"type\":6}\x1e{\"type\":6}\x1e");
    assert_eq!(drain(&mut ok), vec![HubMessage::Ping, HubMessage::Ping]);

    let mut too_small = MessageDecoder::new(Protocol::Json, Some(10));
    too_small.push(b"{\"type\":6}\x1e");
    assert!(matches!(
        too_small.next_message(),
        Err(DecodeError::MessageTooLarge { limit: 10 })
    ));
}

#[test]
fn json_without_separator_beyond_limit_is_rejected_early() {
    let mut decoder = MessageDecoder::new(Protocol::Json, Some(100));
    decoder.push(&[b' '; 100]);
    assert_eq!(decoder.next_message().unwrap(), None);
    decoder.push(b" ");
    assert!(matches!(
        decoder.next_message(),
        Err(DecodeError::MessageTooLarge { limit: 100 })
    ));
}

#[test]
fn msgpack_size_limit_is_checked_from_the_prefix() {
    // Ping is 3 bytes framed.
    let mut ok = MessageDecoder::new(Protocol::MessagePack, Some(3));
    ok.push(&[0x02, 0x91, 0x06]);
    assert_eq!(drain(&mut ok), vec![HubMessage::Ping]);

    // Only the prefix of a huge message has arrived: rejected without waiting for the body.
    let mut decoder = MessageDecoder::new(Protocol::MessagePack, Some(32 * 1024));
    decoder.push(&[0x80, 0x80, 0x04]); // 65536
    assert!(matches!(
        decoder.next_message(),
        Err(DecodeError::MessageTooLarge { limit: 32768 })
    ));
}

#[test]
fn unlimited_accepts_large_messages() {
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let big = "x".repeat(200_000);
        let msg = HubMessage::Invocation(Invocation::new(
            "M",
            (big.as_str(),).to_arguments(protocol).unwrap(),
        ));
        let mut decoder = MessageDecoder::new(protocol, None);
        decoder.push(&wire(protocol, std::slice::from_ref(&msg)));
        assert_eq!(drain(&mut decoder), vec![msg]);
    }
}

#[test]
fn frames_without_parsing_then_parse_frame() {
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let messages = sample_messages(protocol);
        let bytes = wire(protocol, &messages);
        let mut decoder = MessageDecoder::new(protocol, None);
        // Split mid-way: frames come out only when complete.
        let (head, tail) = bytes.split_at(bytes.len() - 3);
        decoder.push(head);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            frames.push(frame);
        }
        assert_eq!(frames.len(), messages.len() - 1, "{protocol}");
        decoder.push(tail);
        frames.push(decoder.next_frame().unwrap().unwrap());
        assert!(decoder.next_frame().unwrap().is_none());
        let parsed: Vec<HubMessage> = frames
            .iter()
            .map(|frame| protocol.parse_frame(frame).unwrap().unwrap())
            .collect();
        assert_eq!(parsed, messages, "{protocol}");
        // Frames carry no separator or length prefix: an Ack is tiny.
        assert!(frames[3].len() < 32, "{protocol}");
    }
}
