//! Handshake request and response parsing.
#![allow(clippy::unwrap_used)]

use tidings_protocol::HandshakeError;
use tidings_protocol::handshake::{self, HandshakeRequest, HandshakeResponse};

#[test]
fn parses_requests_of_all_clients() {
    for (input, protocol, version) in [
        (&b"{\"protocol\":\"json\",\"version\":1}\x1e"[..], "json", 1),
        (
            b"{\"protocol\":\"messagepack\",\"version\":2}\x1e",
            "messagepack",
            2,
        ),
        (
            b"{\"version\":0, \"protocol\":\"json\", \"minorVersion\": 0}\x1e",
            "json",
            0,
        ),
    ] {
        let (req, used) = handshake::parse_request(input).unwrap().unwrap();
        assert_eq!(
            req,
            HandshakeRequest {
                protocol: protocol.into(),
                version
            }
        );
        assert_eq!(used, input.len());
    }
}

#[test]
fn handshake_followed_by_messages_reports_consumed_bytes() {
    let input = b"{\"protocol\":\"json\",\"version\":1}\x1e{\"type\":6}\x1e";
    let (_, used) = handshake::parse_request(input).unwrap().unwrap();
    assert_eq!(&input[used..], b"{\"type\":6}\x1e");
}

#[test]
fn incomplete_request_is_none() {
    assert!(handshake::parse_request(b"").unwrap().is_none());
    assert!(
        handshake::parse_request(b"{\"protocol\":\"json\"")
            .unwrap()
            .is_none()
    );
}

#[test]
fn invalid_requests_give_useful_errors() {
    let cases: [(&[u8], &str); 8] = [
        (
            b"{\"version\":1}\x1e",
            "Missing required property 'protocol'.",
        ),
        (
            b"{\"protocol\":\"json\"}\x1e",
            "Missing required property 'version'.",
        ),
        (
            b"{\"protocol\":1,\"version\":1}\x1e",
            "Expected 'protocol' to be of type String.",
        ),
        (
            b"{\"protocol\":\"json\",\"version\":\"1\"}\x1e",
            "Expected 'version' to be of type Integer.",
        ),
        (
            b"{\"protocol\":\"json\",\"version\":-1}\x1e",
            "Expected 'version' to be of type Integer.",
        ),
        (
            b"{\"protocol\":\"json\",\"version\":1.5}\x1e",
            "Expected 'version' to be of type Integer.",
        ),
        (
            b"[]\x1e",
            "Unexpected JSON Token Type 'StartArray'. Expected a JSON Object.",
        ),
        (
            b"42\x1e",
            "Unexpected JSON Token Type 'Number'. Expected a JSON Object.",
        ),
    ];
    for (input, message) in cases {
        let err = handshake::parse_request(input).unwrap_err();
        assert_eq!(err.to_string(), message);
    }
    assert!(matches!(
        handshake::parse_request(b"{not json}\x1e"),
        Err(HandshakeError::Json(_))
    ));
    assert!(matches!(
        handshake::parse_request(b"\xff\x1e"),
        Err(HandshakeError::InvalidUtf8(_))
    ));
    assert!(handshake::parse_request(b"\x1e").is_err());
}

#[test]
fn writes_responses() {
    let mut out = Vec::new();
    handshake::write_response(None, &mut out);
    assert_eq!(out, b"{}\x1e");
    out.clear();
    handshake::write_response(Some("The protocol 'x\"' is not supported."), &mut out);
    assert_eq!(
        out,
        b"{\"error\":\"The protocol 'x\\\"' is not supported.\"}\x1e"
    );
}

#[test]
fn parses_responses_and_rejects_hub_messages() {
    let (resp, used) = handshake::parse_response(b"{}\x1e{\"type\":6}\x1e")
        .unwrap()
        .unwrap();
    assert_eq!(resp, HandshakeResponse { error: None });
    assert_eq!(used, 3);
    let (resp, _) = handshake::parse_response(b"{\"error\":\"nope\"}\x1e")
        .unwrap()
        .unwrap();
    assert_eq!(resp.error.as_deref(), Some("nope"));
    let err = handshake::parse_response(b"{\"type\":6}\x1e").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Expected a handshake response from the server."
    );
    assert!(handshake::parse_response(b"{}").unwrap().is_none());
}

#[test]
fn request_round_trip() {
    let req = HandshakeRequest {
        protocol: "messagepack".into(),
        version: 1,
    };
    let mut out = Vec::new();
    handshake::write_request(&req, &mut out);
    assert_eq!(out, b"{\"protocol\":\"messagepack\",\"version\":1}\x1e");
    assert_eq!(handshake::parse_request(&out).unwrap().unwrap().0, req);
}
