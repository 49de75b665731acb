//! Negotiate response JSON: field order, names and omitted fields.
#![allow(clippy::unwrap_used)]

use tidings_protocol::negotiate::{
    AvailableTransport, NegotiateResponse, TransferFormat, TransportType,
};

fn transports() -> Vec<AvailableTransport> {
    vec![
        AvailableTransport {
            transport: TransportType::WebSockets,
            transfer_formats: vec![TransferFormat::Text, TransferFormat::Binary],
        },
        AvailableTransport {
            transport: TransportType::ServerSentEvents,
            transfer_formats: vec![TransferFormat::Text],
        },
        AvailableTransport {
            transport: TransportType::LongPolling,
            transfer_formats: vec![TransferFormat::Text, TransferFormat::Binary],
        },
    ]
}

#[test]
fn serializes_in_net_order() {
    let response = NegotiateResponse {
        use_stateful_reconnect: Some(true),
        negotiate_version: Some(1),
        connection_id: Some("id".into()),
        connection_token: Some("token".into()),
        available_transports: transports(),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&response).unwrap(),
        concat!(
            r#"{"useStatefulReconnect":true,"negotiateVersion":1,"connectionId":"id","connectionToken":"token","#,
            r#""availableTransports":[{"transport":"WebSockets","transferFormats":["Text","Binary"]},"#,
            r#"{"transport":"ServerSentEvents","transferFormats":["Text"]},"#,
            r#"{"transport":"LongPolling","transferFormats":["Text","Binary"]}]}"#
        )
    );
}

#[test]
fn version_zero_has_no_token() {
    let response = NegotiateResponse {
        negotiate_version: Some(0),
        connection_id: Some("id".into()),
        available_transports: transports()[2..].to_vec(),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&response).unwrap(),
        r#"{"negotiateVersion":0,"connectionId":"id","availableTransports":[{"transport":"LongPolling","transferFormats":["Text","Binary"]}]}"#
    );
}

#[test]
fn error_and_redirect_forms() {
    assert_eq!(
        serde_json::to_string(&NegotiateResponse::error("nope")).unwrap(),
        r#"{"error":"nope"}"#
    );
    assert_eq!(
        serde_json::to_string(&NegotiateResponse::redirect(
            "http://x/hub",
            Some("t".into())
        ))
        .unwrap(),
        r#"{"url":"http://x/hub","accessToken":"t"}"#
    );
}

#[test]
fn deserializes_with_unknown_fields() {
    let response: NegotiateResponse = serde_json::from_str(
        r#"{"connectionId":"a","negotiateVersion":1,"connectionToken":"b","extra":1,"availableTransports":[{"transport":"WebSockets","transferFormats":["Text","Binary"]}]}"#,
    )
    .unwrap();
    assert_eq!(response.connection_token.as_deref(), Some("b"));
    assert_eq!(response.available_transports, transports()[..1].to_vec());
}
