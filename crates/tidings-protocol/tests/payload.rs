//! `Payload` and `ToArguments` behaviour.
#![allow(clippy::unwrap_used)]

use serde::{Deserialize, Serialize};
use tidings_protocol::{EncodeError, Payload, PayloadError, Protocol, ToArguments};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: Option<String>,
}

fn count(args: impl ToArguments, protocol: Protocol) -> usize {
    args.to_arguments(protocol).unwrap().len()
}

#[test]
fn tuples_up_to_eight_and_lists() {
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        assert!(().to_arguments(protocol).unwrap().is_empty());
        assert_eq!(("a",).to_arguments(protocol).unwrap().len(), 1);
        let args = (
            1u8,
            -2i64,
            3.5f64,
            "s",
            true,
            None::<i32>,
            vec![1, 2],
            Point { x: 1, y: None },
        )
            .to_arguments(protocol)
            .unwrap();
        assert_eq!(args.len(), 8);
        assert_eq!(args[1].deserialize::<i64>().unwrap(), -2);
        assert_eq!(args[2].deserialize::<f64>().unwrap(), 3.5);
        assert_eq!(args[3].deserialize::<String>().unwrap(), "s");
        assert!(args[5].is_null());
        assert_eq!(
            args[7].deserialize::<Point>().unwrap(),
            Point { x: 1, y: None }
        );

        let list = vec!["a", "b"].to_arguments(protocol).unwrap();
        assert_eq!(list.len(), 2);
        let slice: &[i32] = &[1, 2, 3];
        assert_eq!(slice.to_arguments(protocol).unwrap().len(), 3);
        assert_eq!([1, 2].to_arguments(protocol).unwrap().len(), 2);
        let pair = (String::from("a"), 1);
        assert_eq!(count(&pair, protocol), 2, "references forward");
        assert_eq!(count(pair, protocol), 2);
        assert_eq!(
            list.to_arguments(protocol).unwrap(),
            list,
            "raw payload lists pass through"
        );
    }
}

#[test]
fn raw_payloads_of_another_protocol_are_rejected() {
    let raw = vec![Payload::null(Protocol::Json)];
    assert!(matches!(
        raw.to_arguments(Protocol::MessagePack),
        Err(EncodeError::ProtocolMismatch {
            expected: Protocol::MessagePack,
            found: Protocol::Json
        })
    ));
}

#[test]
fn encode_value_json_is_compact() {
    let p = Protocol::Json
        .encode_value(&Point {
            x: 1,
            y: Some("é".into()),
        })
        .unwrap();
    assert_eq!(p.as_bytes(), "{\"x\":1,\"y\":\"é\"}".as_bytes());
    assert_eq!(p.protocol(), Protocol::Json);
}

#[test]
fn deserialize_mismatch_is_an_error() {
    let p = Protocol::Json.encode_value("text").unwrap();
    assert!(matches!(p.deserialize::<i32>(), Err(PayloadError::Json(_))));
    let p = Protocol::MessagePack.encode_value("text").unwrap();
    assert!(matches!(
        p.deserialize::<i32>(),
        Err(PayloadError::MessagePack(_))
    ));
}

#[test]
fn from_raw_validates_exactly_one_value() {
    assert!(Payload::from_raw(Protocol::Json, &b"[1,2]"[..]).is_ok());
    assert!(Payload::from_raw(Protocol::Json, &b"[1,2"[..]).is_err());
    assert!(Payload::from_raw(Protocol::Json, &b"1 2"[..]).is_err());
    assert!(Payload::from_raw(Protocol::Json, &b" 1"[..]).is_err());
    assert!(Payload::from_raw(Protocol::Json, &b"\xff"[..]).is_err());
    assert!(Payload::from_raw(Protocol::MessagePack, &[0x92u8, 0x01, 0x02][..]).is_ok());
    assert!(Payload::from_raw(Protocol::MessagePack, &[0x92u8, 0x01][..]).is_err());
    assert!(Payload::from_raw(Protocol::MessagePack, &[0x01u8, 0x02][..]).is_err());
    assert!(Payload::from_raw(Protocol::MessagePack, &[][..]).is_err());
}

#[test]
fn protocol_names() {
    assert_eq!(Protocol::from_name("JSON"), Some(Protocol::Json));
    assert_eq!(
        Protocol::from_name("MessagePack"),
        Some(Protocol::MessagePack)
    );
    assert_eq!(Protocol::from_name("blazorpack"), None);
    assert_eq!(Protocol::Json.name(), "json");
    assert_eq!(Protocol::MessagePack.name(), "messagepack");
    assert_eq!(
        Protocol::MessagePack.transfer_format(),
        tidings_protocol::TransferFormat::Binary
    );
}
