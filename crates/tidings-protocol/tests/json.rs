//! JSON hub protocol: golden frames from the protocol description and the official clients' output,
//! and the error cases a server must report.
#![allow(clippy::unwrap_used)]

use tidings_protocol::{
    CancelInvocation, Close, Completion, CompletionResult, DecodeError, Headers, HubMessage,
    Invocation, MessageDecoder, Payload, Protocol, StreamItem,
};

fn decode_all(input: &[u8]) -> Result<Vec<HubMessage>, DecodeError> {
    let mut decoder = MessageDecoder::new(Protocol::Json, None);
    decoder.push(input);
    let mut out = Vec::new();
    while let Some(msg) = decoder.next_message()? {
        out.push(msg);
    }
    assert_eq!(decoder.buffered(), 0, "everything consumed");
    Ok(out)
}

fn decode_one(input: &str) -> Result<HubMessage, DecodeError> {
    let mut all = decode_all(format!("{input}\x1e").as_bytes())?;
    assert_eq!(all.len(), 1);
    Ok(all.remove(0))
}

fn encode(msg: &HubMessage) -> String {
    let mut out = Vec::new();
    Protocol::Json.write_message(msg, &mut out).unwrap();
    assert_eq!(out.last(), Some(&0x1e));
    out.pop();
    String::from_utf8(out).unwrap()
}

fn json(text: &str) -> Payload {
    Payload::from_raw(Protocol::Json, text.as_bytes().to_vec()).unwrap()
}

#[test]
fn reads_ts10_invocation_with_type_last() {
    let msg =
        decode_one(r#"{"target":"Echo","arguments":["hi"],"invocationId":"0","type":1}"#).unwrap();
    let HubMessage::Invocation(inv) = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(inv.target, "Echo");
    assert_eq!(inv.invocation_id.as_deref(), Some("0"));
    assert_eq!(inv.arguments.len(), 1);
    assert_eq!(inv.arguments[0].as_bytes(), br#""hi""#);
    assert_eq!(inv.arguments[0].deserialize::<String>().unwrap(), "hi");
    assert!(inv.stream_ids.is_empty());
    assert!(inv.headers.is_empty());
}

#[test]
fn reads_arguments_before_target_with_whitespace_and_unknown_properties() {
    let msg = decode_one(
        r#" { "arguments" : [ 1 , {"a": [1, 2]} , null ] , "extra": {"deep": [1,{"x":2}]}, "target":"M", "type": 1 } "#,
    )
    .unwrap();
    let HubMessage::Invocation(inv) = msg else {
        panic!("{msg:?}")
    };
    let raw: Vec<&[u8]> = inv.arguments.iter().map(Payload::as_bytes).collect();
    assert_eq!(raw, vec![&b"1"[..], br#"{"a": [1, 2]}"#, b"null"]);
    assert_eq!(inv.invocation_id, None);
}

#[test]
fn empty_invocation_id_is_non_blocking() {
    let HubMessage::Invocation(inv) =
        decode_one(r#"{"type":1,"invocationId":"","target":"M","arguments":[]}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!(inv.invocation_id, None);
    let HubMessage::Invocation(inv) =
        decode_one(r#"{"type":1,"invocationId":null,"target":"M","arguments":[]}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!(inv.invocation_id, None);
}

#[test]
fn reads_stream_invocation_with_stream_ids_and_headers() {
    let msg = decode_one(
        r#"{"type":4,"invocationId":"1","target":"StreamingConcat","arguments":[],"streamIds":["0"],"headers":{"traceparent":"00-ab"}}"#,
    )
    .unwrap();
    let HubMessage::StreamInvocation(inv) = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(inv.stream_ids, vec!["0".to_string()]);
    assert_eq!(
        inv.headers.get("traceparent").map(String::as_str),
        Some("00-ab")
    );
}

#[test]
fn reads_completions_like_net_and_python() {
    let cases: &[(&str, CompletionResult)] = &[
        (
            r#"{"type":3,"invocationId":"s1","result":10}"#,
            CompletionResult::Value(json("10")),
        ),
        (
            r#"{"type":3,"invocationId":"s1","result":null}"#,
            CompletionResult::Value(json("null")),
        ),
        (r#"{"type":3,"invocationId":"s1"}"#, CompletionResult::Void),
        (
            r#"{"error":"Error: from callback","invocationId":"s1","type":3}"#,
            CompletionResult::Error("Error: from callback".into()),
        ),
        // Python sends both keys with null values.
        (
            r#"{"type":3,"invocationId":"s1","result":null,"error":null}"#,
            CompletionResult::Value(json("null")),
        ),
        (
            r#"{"type":3,"invocationId":"s1","error":null}"#,
            CompletionResult::Void,
        ),
        (
            r#"{"type":3,"invocationId":"s1","result":null,"error":"x"}"#,
            CompletionResult::Error("x".into()),
        ),
    ];
    for (input, expected) in cases {
        let HubMessage::Completion(c) = decode_one(input).unwrap() else {
            panic!("{input}")
        };
        assert_eq!(c.invocation_id, "s1");
        assert_eq!(&c.result, expected, "{input}");
    }
}

#[test]
fn result_and_error_together_is_an_error() {
    let err = decode_one(r#"{"type":3,"invocationId":"1","result":1,"error":"x"}"#).unwrap_err();
    assert!(matches!(err, DecodeError::ResultAndError));
    assert_eq!(
        err.to_string(),
        "The 'error' and 'result' properties are mutually exclusive."
    );
}

#[test]
fn missing_type_is_an_error() {
    let err = decode_one(r#"{"target":"M","arguments":[]}"#).unwrap_err();
    assert_eq!(err.to_string(), "Missing required property 'type'.");
}

#[test]
fn missing_required_properties() {
    let cases = [
        (r#"{"type":1,"arguments":[]}"#, "target"),
        (r#"{"type":1,"target":"M"}"#, "arguments"),
        (r#"{"type":4,"target":"M","arguments":[]}"#, "invocationId"),
        (r#"{"type":2,"invocationId":"1"}"#, "item"),
        (r#"{"type":2,"item":1}"#, "invocationId"),
        (r#"{"type":3}"#, "invocationId"),
        (r#"{"type":5}"#, "invocationId"),
        (r#"{"type":8}"#, "sequenceId"),
        (r#"{"type":9}"#, "sequenceId"),
    ];
    for (input, property) in cases {
        let err = decode_one(input).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Missing required property '{property}'."),
            "{input}"
        );
    }
}

#[test]
fn wrong_property_types_are_errors() {
    for input in [
        r#"{"type":"1","target":"M","arguments":[]}"#,
        r#"{"type":1.5}"#,
        r#"{"type":1,"target":5,"arguments":[]}"#,
        r#"{"type":1,"target":"M","arguments":{}}"#,
        r#"{"type":1,"target":"M","arguments":[],"headers":{"a":1}}"#,
        r#"{"type":1,"target":"M","arguments":[],"streamIds":[1]}"#,
        r#"{"type":7,"allowReconnect":"yes"}"#,
        r#"{"type":8,"sequenceId":-1}"#,
    ] {
        let err = decode_one(input).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidProperty { .. }),
            "{input}: {err:?}"
        );
    }
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    for input in [
        &b"\x1e"[..],
        b"{\x1e",
        b"[1,2]\x1e",
        b"null\x1e",
        b"{\"type\":1,}\x1e",
        b"{\"type\":6} trailing\x1e",
        b"{\"type\":6,\"target\":\"\xff\"}\x1e",
        b"\xc3\x28\x1e",
    ] {
        assert!(decode_all(input).is_err(), "{input:?}");
    }
    let err = decode_all(b"{\"type\":6,\"x\":\"\xff\"}\x1e").unwrap_err();
    assert!(matches!(err, DecodeError::InvalidUtf8(_)), "{err:?}");
}

#[test]
fn unknown_types_are_skipped() {
    let msgs = decode_all(b"{\"type\":42,\"foo\":1}\x1e{\"type\":6}\x1e{\"type\":0}\x1e").unwrap();
    assert_eq!(msgs, vec![HubMessage::Ping]);
}

#[test]
fn reads_ping_close_ack_sequence_cancel_stream_item() {
    let msgs = decode_all(
        concat!(
            "{\"type\":6}\x1e",
            "{\"type\":7}\x1e",
            "{\"type\":7,\"error\":\"boom\",\"allowReconnect\":true}\x1e",
            "{\"type\":8,\"sequenceId\":5}\x1e",
            "{\"type\":9,\"sequenceId\":1}\x1e",
            "{\"type\":5,\"invocationId\":\"2\"}\x1e",
            "{\"type\":2,\"invocationId\":\"0\",\"item\":\"Hello \"}\x1e",
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        msgs,
        vec![
            HubMessage::Ping,
            HubMessage::Close(Close::default()),
            HubMessage::Close(Close {
                error: Some("boom".into()),
                allow_reconnect: true
            }),
            HubMessage::Ack { sequence_id: 5 },
            HubMessage::Sequence { sequence_id: 1 },
            HubMessage::CancelInvocation(CancelInvocation {
                headers: Headers::new(),
                invocation_id: "2".into()
            }),
            HubMessage::StreamItem(StreamItem {
                headers: Headers::new(),
                invocation_id: "0".into(),
                item: json("\"Hello \"")
            }),
        ]
    );
}

#[test]
fn writes_server_messages_like_net() {
    let inv = Invocation::new("Message", vec![json("\"m\"")]);
    assert_eq!(
        encode(&HubMessage::Invocation(inv.clone())),
        r#"{"type":1,"target":"Message","arguments":["m"]}"#
    );
    let mut with_all = inv.with_invocation_id("s1");
    with_all.headers.insert("a".into(), "b\"c".into());
    with_all.stream_ids = vec!["0".into()];
    assert_eq!(
        encode(&HubMessage::Invocation(with_all)),
        r#"{"type":1,"headers":{"a":"b\"c"},"invocationId":"s1","target":"Message","arguments":["m"],"streamIds":["0"]}"#
    );
    assert_eq!(
        encode(&HubMessage::Completion(Completion::value(
            "0",
            json("\"hi\"")
        ))),
        r#"{"type":3,"invocationId":"0","result":"hi"}"#
    );
    assert_eq!(
        encode(&HubMessage::Completion(Completion::value(
            "1",
            Payload::null(Protocol::Json)
        ))),
        r#"{"type":3,"invocationId":"1","result":null}"#
    );
    assert_eq!(
        encode(&HubMessage::Completion(Completion::void("2"))),
        r#"{"type":3,"invocationId":"2"}"#
    );
    assert_eq!(
        encode(&HubMessage::Completion(Completion::error("2", "bad"))),
        r#"{"type":3,"invocationId":"2","error":"bad"}"#
    );
    assert_eq!(
        encode(&HubMessage::StreamItem(StreamItem {
            headers: Headers::new(),
            invocation_id: "2".into(),
            item: Payload::null(Protocol::Json)
        })),
        r#"{"type":2,"invocationId":"2","item":null}"#
    );
    assert_eq!(encode(&HubMessage::Ping), r#"{"type":6}"#);
    assert_eq!(
        encode(&HubMessage::Close(Close::default())),
        r#"{"type":7}"#
    );
    assert_eq!(
        encode(&HubMessage::Close(Close {
            error: Some("Connection closed with an error.".into()),
            allow_reconnect: true
        })),
        r#"{"type":7,"error":"Connection closed with an error.","allowReconnect":true}"#
    );
    assert_eq!(
        encode(&HubMessage::Ack { sequence_id: 7 }),
        r#"{"type":8,"sequenceId":7}"#
    );
    assert_eq!(
        encode(&HubMessage::Sequence { sequence_id: 1 }),
        r#"{"type":9,"sequenceId":1}"#
    );
    assert_eq!(
        encode(&HubMessage::CancelInvocation(CancelInvocation {
            headers: Headers::new(),
            invocation_id: "3".into()
        })),
        r#"{"type":5,"invocationId":"3"}"#
    );
}

#[test]
fn writing_a_msgpack_payload_into_json_fails_and_leaves_output_intact() {
    let mut out = b"prefix".to_vec();
    let inv = Invocation::new("M", vec![Payload::null(Protocol::MessagePack)]);
    let err = Protocol::Json
        .write_message(&HubMessage::Invocation(inv), &mut out)
        .unwrap_err();
    assert!(matches!(
        err,
        tidings_protocol::EncodeError::ProtocolMismatch { .. }
    ));
    assert_eq!(out, b"prefix");
}

#[test]
fn payloads_share_the_frame() {
    let HubMessage::Invocation(inv) =
        decode_one(r#"{"type":1,"target":"M","arguments":["a\u0041",[1,2]]}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!(inv.arguments[0].deserialize::<String>().unwrap(), "aA");
    assert_eq!(
        inv.arguments[1].deserialize::<Vec<u8>>().unwrap(),
        vec![1, 2]
    );
    // Written back verbatim.
    assert_eq!(
        encode(&HubMessage::Invocation(inv)),
        r#"{"type":1,"target":"M","arguments":["a\u0041",[1,2]]}"#
    );
}
