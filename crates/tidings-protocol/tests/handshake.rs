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

mod accept {
    use tidings_protocol::{
        Protocol,
        handshake::{HANDSHAKE_CANCELED, HandshakeOutcome, HandshakePolicy, accept},
    };

    const BOTH: [Protocol; 2] = [Protocol::Json, Protocol::MessagePack];

    fn policy(limit: Option<usize>) -> HandshakePolicy<'static> {
        HandshakePolicy {
            supported: &BOTH,
            max_message_size: limit,
            binary_allowed: true,
            detailed_errors: true,
        }
    }

    fn refused(text: &str) -> HandshakeOutcome {
        HandshakeOutcome::Refused(text.to_owned())
    }

    #[test]
    fn accepts_and_reports_what_follows() {
        let buf = b"{\"protocol\":\"MessagePack\",\"version\":2}\x1e\x02\x91\x06";
        assert_eq!(
            accept(buf, &policy(None)),
            HandshakeOutcome::Accepted {
                protocol: Protocol::MessagePack,
                version: 2,
                used: buf.len() - 3,
            }
        );
        assert_eq!(
            accept(b"{\"protocol\":\"json\"", &policy(None)),
            HandshakeOutcome::Pending
        );
    }

    #[test]
    fn refusals_use_aspnet_core_texts() {
        let p = policy(None);
        assert_eq!(
            accept(b"{\"protocol\":\"foo\",\"version\":1}\x1e", &p),
            refused("The protocol 'foo' is not supported.")
        );
        assert_eq!(
            accept(b"{\"protocol\":\"json\",\"version\":3}\x1e", &p),
            refused("The server does not support version 3 of the 'json' protocol.")
        );
        assert_eq!(
            accept(b"{\"type\":1}\x1e", &p),
            refused(
                "An unexpected error occurred during connection handshake. InvalidDataException: Missing required property 'protocol'."
            )
        );
        let plain = HandshakePolicy {
            detailed_errors: false,
            ..p
        };
        assert_eq!(
            accept(b"[]\x1e", &plain),
            refused("An unexpected error occurred during connection handshake.")
        );
        let sse = HandshakePolicy {
            binary_allowed: false,
            ..p
        };
        assert_eq!(
            accept(b"{\"protocol\":\"messagepack\",\"version\":1}\x1e", &sse),
            refused(
                "Cannot use the 'messagepack' protocol on the current transport. The transport does not support 'Binary' transfer format."
            )
        );
        let json_only = HandshakePolicy {
            supported: &[Protocol::Json],
            ..p
        };
        assert_eq!(
            accept(
                b"{\"protocol\":\"messagepack\",\"version\":1}\x1e",
                &json_only
            ),
            refused("The protocol 'messagepack' is not supported.")
        );
    }

    /// Only the first `limit` bytes count, as in ASP.NET Core: a request that does not end within
    /// them is canceled, even when a (malformed) one ends later. Parsing the whole buffer instead
    /// made the answer depend on how the bytes were split into transport chunks.
    #[test]
    fn the_size_limit_applies_before_parsing() {
        let p = policy(Some(16));
        let long = b"{\"protocol\":\"json\",\"version\":1}\x1e";
        assert_eq!(accept(long, &p), refused(HANDSHAKE_CANCELED));
        assert_eq!(accept(&long[..10], &p), HandshakeOutcome::Pending);
        let malformed_late = b"{\"protocol\":\"json\",,,,,,,,}\x1e";
        assert_eq!(accept(malformed_late, &p), refused(HANDSHAKE_CANCELED));
        // Within the limit, followed by more than the limit of messages.
        let mut buf = b"{\"protocol\":\"json\",\"version\":1}\x1e".to_vec();
        buf.extend_from_slice(&[b' '; 100]);
        assert!(matches!(
            accept(&buf, &policy(Some(32))),
            HandshakeOutcome::Accepted { used: 32, .. }
        ));
    }
}
