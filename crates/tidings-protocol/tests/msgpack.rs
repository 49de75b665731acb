//! MessagePack hub protocol: the golden frames of the protocol description byte for byte, the
//! layouts clients send (5-element invocations, 2-element close, wide integers) and malformed input.
#![allow(clippy::unwrap_used)]

use serde::{Deserialize, Serialize};
use tidings_protocol::{
    Close, Completion, CompletionResult, DecodeError, Headers, HubMessage, Invocation,
    MessageDecoder, Payload, Protocol, StreamItem,
};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn encode(msg: &HubMessage) -> Vec<u8> {
    let mut out = Vec::new();
    Protocol::MessagePack.write_message(msg, &mut out).unwrap();
    out
}

fn decode_all(input: &[u8]) -> Result<Vec<HubMessage>, DecodeError> {
    let mut decoder = MessageDecoder::new(Protocol::MessagePack, None);
    decoder.push(input);
    let mut out = Vec::new();
    while let Some(msg) = decoder.next_message()? {
        out.push(msg);
    }
    Ok(out)
}

fn mp<T: Serialize>(value: T) -> Payload {
    Protocol::MessagePack.encode_value(&value).unwrap()
}

/// Frames the body with a VarInt prefix (bodies here are < 128 bytes).
fn frame(body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut out = vec![body.len() as u8];
    out.extend_from_slice(body);
    out
}

fn golden() -> Vec<(HubMessage, &'static str)> {
    vec![
        (
            HubMessage::Invocation(Invocation::new("Message", vec![mp("hi")])),
            "11 96 01 80 c0 a7 4d 65 73 73 61 67 65 91 a2 68 69 90",
        ),
        (
            HubMessage::Completion(Completion::value("0", mp("hi"))),
            "09 95 03 80 a1 30 03 a2 68 69",
        ),
        (
            HubMessage::Completion(Completion::void("0")),
            "06 94 03 80 a1 30 02",
        ),
        (
            HubMessage::StreamItem(StreamItem {
                headers: Headers::new(),
                invocation_id: "1".into(),
                item: mp("a"),
            }),
            "07 94 02 80 a1 31 a1 61",
        ),
        (HubMessage::Close(Close::default()), "04 93 07 c0 c2"),
        (HubMessage::Ping, "02 91 06"),
        (HubMessage::Ack { sequence_id: 5 }, "03 92 08 05"),
    ]
}

#[test]
fn writes_golden_frames() {
    for (msg, bytes) in golden() {
        assert_eq!(encode(&msg), hex(bytes), "{msg:?}");
    }
}

#[test]
fn reads_golden_frames_one_chunk() {
    let (messages, frames): (Vec<_>, Vec<_>) = golden().into_iter().unzip();
    let all: Vec<u8> = frames.iter().flat_map(|f| hex(f)).collect();
    assert_eq!(decode_all(&all).unwrap(), messages);
}

#[test]
fn reads_ts_client_layouts() {
    // TS client: 5-element invocation without stream ids, `[7, nil]` close.
    let body = hex("95 01 80 a1 30 a4 45 63 68 6f 91 a2 68 69");
    let msgs = decode_all(&[frame(&body), frame(&hex("92 07 c0"))].concat()).unwrap();
    assert_eq!(
        msgs,
        vec![
            HubMessage::Invocation(Invocation::new("Echo", vec![mp("hi")]).with_invocation_id("0")),
            HubMessage::Close(Close::default()),
        ]
    );
}

#[test]
fn reads_integers_of_any_width() {
    // type as uint8, int16, uint64; result kind as int32; sequence id as uint32.
    let frames = [
        hex("91 cc 06"),
        hex("91 d1 00 06"),
        hex("91 cf 00 00 00 00 00 00 00 06"),
        hex("94 03 80 a1 30 d2 00 00 00 02"),
        hex("92 09 ce 00 01 00 00"),
    ];
    let input: Vec<u8> = frames.iter().flat_map(|f| frame(f)).collect();
    assert_eq!(
        decode_all(&input).unwrap(),
        vec![
            HubMessage::Ping,
            HubMessage::Ping,
            HubMessage::Ping,
            HubMessage::Completion(Completion::void("0")),
            HubMessage::Sequence { sequence_id: 65536 },
        ]
    );
}

#[test]
fn reads_stream_invocation_with_headers_and_streams() {
    let body = hex("96 04 81 a1 6b a1 76 a1 32 a6 53 74 72 65 61 6d 92 01 c0 91 a1 30");
    let msgs = decode_all(&frame(&body)).unwrap();
    let HubMessage::StreamInvocation(inv) = &msgs[0] else {
        panic!("{msgs:?}")
    };
    assert_eq!(inv.headers.get("k").map(String::as_str), Some("v"));
    assert_eq!(inv.invocation_id.as_deref(), Some("2"));
    assert_eq!(inv.target, "Stream");
    assert_eq!(
        inv.arguments,
        vec![mp(1), Payload::null(Protocol::MessagePack)]
    );
    assert_eq!(inv.stream_ids, vec!["0".to_string()]);
}

#[test]
fn reads_error_completion_and_close_with_reconnect() {
    let msgs = decode_all(
        &[
            frame(&hex("95 03 80 a1 30 01 a3 62 61 64")),
            frame(&hex("93 07 a1 65 c3")),
        ]
        .concat(),
    )
    .unwrap();
    assert_eq!(
        msgs,
        vec![
            HubMessage::Completion(Completion::error("0", "bad")),
            HubMessage::Close(Close {
                error: Some("e".into()),
                allow_reconnect: true
            }),
        ]
    );
}

#[test]
fn writes_invocation_with_six_elements_and_close_with_three() {
    let bytes = encode(&HubMessage::Invocation(
        Invocation::new("M", vec![]).with_invocation_id("s1"),
    ));
    assert_eq!(bytes, hex("0a 96 01 80 a2 73 31 a1 4d 90 90"));
    let bytes = encode(&HubMessage::Close(Close {
        error: Some("x".into()),
        allow_reconnect: true,
    }));
    assert_eq!(bytes, hex("05 93 07 a1 78 c3"));
    let bytes = encode(&HubMessage::Completion(Completion::error("0", "x")));
    assert_eq!(bytes, hex("08 95 03 80 a1 30 01 a1 78"));
}

#[test]
fn writes_long_messages_with_multi_byte_prefix() {
    let long = "x".repeat(5237);
    let bytes = encode(&HubMessage::Invocation(Invocation::new(
        "M",
        vec![mp(&long)],
    )));
    // body: 96 01 80 c0 a1 4d 91 da 14 75 <5237 bytes> 90 = 5248 bytes → prefix 80 29.
    assert_eq!(&bytes[..2], &[0x80, 0x29]);
    assert_eq!(bytes.len(), 2 + 5248);
    let msgs = decode_all(&bytes).unwrap();
    let HubMessage::Invocation(inv) = &msgs[0] else {
        panic!()
    };
    assert_eq!(inv.arguments[0].deserialize::<String>().unwrap(), long);
}

#[test]
fn unknown_types_are_skipped() {
    let input = [
        frame(&hex("93 63 01 02")),
        frame(&hex("91 00")),
        frame(&hex("91 06")),
    ]
    .concat();
    assert_eq!(decode_all(&input).unwrap(), vec![HubMessage::Ping]);
}

#[test]
fn malformed_messages_are_errors_not_panics() {
    let cases: Vec<Vec<u8>> = vec![
        frame(&[]),                                         // empty body
        frame(&hex("90")),                                  // empty array
        frame(&hex("81 01 02")),                            // not an array
        frame(&hex("91 a1 31")),                            // type is a string
        frame(&hex("94 01 80 c0 a1")),                      // too few elements, truncated
        frame(&hex("95 01 c0 c0 a1 4d 90")),                // headers nil
        frame(&hex("95 01 80 c0 a1 4d 91")),                // arguments truncated
        frame(&hex("95 01 80 c0 a1 4d 91 dd ff ff ff ff")), // huge array header, no data
        frame(&hex("95 01 80 c0 a1 4d 91 db ff ff ff ff")), // huge string header, no data
        frame(&hex("95 01 80 c0 a2 ff fe 90")),             // invalid UTF-8 target
        frame(&hex("95 03 80 a1 30 07 c0")),                // bad result kind
        frame(&hex("94 03 80 a1 30 03")),                   // kind 3 without result
        frame(&hex("95 04 80 c0 a1 4d 90")),                // stream invocation without id
        frame(&hex("92 08 ff")),                            // negative sequence id
        frame(&hex("92 08 c1")),                            // reserved marker
        frame(&hex("95 01 80 c0 a1 4d 91 c1")),             // reserved marker in an argument
        frame(&hex("93 07 c0 a1 31")),                      // allowReconnect not a bool
    ];
    for input in cases {
        assert!(decode_all(&input).is_err(), "{input:02x?}");
    }
    let err = decode_all(&frame(&hex("95 03 80 a1 30 07 c0"))).unwrap_err();
    assert_eq!(err.to_string(), "Invalid invocation result kind.");
}

#[test]
fn deeply_nested_argument_does_not_overflow_the_stack() {
    let depth = 200_000;
    let mut body = hex("95 01 80 c0 a1 4d 91");
    body.extend(std::iter::repeat_n(0x91u8, depth));
    body.push(0xc0);
    let mut input = Vec::new();
    let mut len = body.len();
    while len >= 0x80 {
        input.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    input.push(len as u8);
    input.extend_from_slice(&body);
    let msgs = decode_all(&input).unwrap();
    let HubMessage::Invocation(inv) = &msgs[0] else {
        panic!()
    };
    // Deserializing it hits the serde depth limit instead of the stack.
    assert!(inv.arguments[0].deserialize::<rmpv::Value>().is_err());
}

#[test]
fn bad_varints() {
    // 5th byte > 7.
    let err = decode_all(&hex("ff ff ff ff 08")).unwrap_err();
    assert!(matches!(err, DecodeError::InvalidLengthPrefix));
    assert_eq!(
        err.to_string(),
        "Messages over 2GB in size are not supported."
    );
    assert!(decode_all(&hex("80 80 80 80 80")).is_err());
    // The largest allowed prefix is fine, just incomplete.
    assert_eq!(decode_all(&hex("ff ff ff ff 07")).unwrap(), vec![]);
    // Incomplete prefix: wait.
    assert_eq!(decode_all(&hex("ff ff")).unwrap(), vec![]);
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Complex {
    #[serde(rename = "String")]
    string: String,
    #[serde(rename = "IntArray")]
    int_array: Vec<i32>,
    #[serde(rename = "Double")]
    double: f64,
    #[serde(rename = "Flag")]
    flag: Option<bool>,
}

#[test]
fn values_are_written_as_named_maps() {
    let payload = mp(Complex {
        string: "s".into(),
        int_array: vec![1],
        double: 1.5,
        flag: None,
    });
    let value: rmpv::Value = payload.deserialize().unwrap();
    let map = value.as_map().expect("a map, not an array");
    let keys: Vec<&str> = map.iter().map(|(k, _)| k.as_str().unwrap()).collect();
    assert_eq!(keys, ["String", "IntArray", "Double", "Flag"]);
}

#[test]
fn reads_values_as_the_js_client_writes_them() {
    // {"Double": 2 (int, as JS writes whole numbers), "IntArray": [uint8 1, int16 -2, uint32 3],
    //  "String": "x", "Extra": 1} with keys in another order.
    let bytes = hex(
        "85 a6 44 6f 75 62 6c 65 02 a8 49 6e 74 41 72 72 61 79 93 cc 01 d1 ff fe ce 00 00 00 03 \
         a6 53 74 72 69 6e 67 a1 78 a5 45 78 74 72 61 01 a4 46 6c 61 67 c0",
    );
    let payload = Payload::from_raw(Protocol::MessagePack, bytes).unwrap();
    let value: Complex = payload.deserialize().unwrap();
    assert_eq!(
        value,
        Complex {
            string: "x".into(),
            int_array: vec![1, -2, 3],
            double: 2.0,
            flag: None
        }
    );
    // float64 into f64 and into f32.
    let f = Payload::from_raw(Protocol::MessagePack, hex("cb 3f f8 00 00 00 00 00 00")).unwrap();
    assert_eq!(f.deserialize::<f64>().unwrap(), 1.5);
    assert_eq!(f.deserialize::<f32>().unwrap(), 1.5);
    // An int too wide for the target is a payload error, not a panic.
    let big = Payload::from_raw(Protocol::MessagePack, hex("cd 01 00")).unwrap();
    assert!(big.deserialize::<u8>().is_err());
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Color {
    Red,
    Green,
}

#[test]
fn enums_as_names() {
    let payload = mp(Color::Green);
    assert_eq!(payload.as_bytes(), &hex("a5 47 72 65 65 6e")[..]);
    assert_eq!(payload.deserialize::<Color>().unwrap(), Color::Green);
}

#[test]
fn completion_results_round_trip() {
    for result in [
        CompletionResult::Void,
        CompletionResult::Value(Payload::null(Protocol::MessagePack)),
        CompletionResult::Value(mp(vec![1, 2, 3])),
        CompletionResult::Error("e".into()),
    ] {
        let msg = HubMessage::Completion(Completion {
            headers: Headers::from([("a".into(), "b".into())]),
            invocation_id: "9".into(),
            result,
        });
        assert_eq!(decode_all(&encode(&msg)).unwrap(), vec![msg]);
    }
}
