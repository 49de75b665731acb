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

mod query {
    use tidings_protocol::{
        NegotiateError,
        negotiate::{NegotiateRequest, query_pairs, query_value},
    };

    fn pairs(query: &str) -> Vec<(String, String)> {
        query_pairs(query).collect()
    }

    fn pair(key: &str, value: &str) -> (String, String) {
        (key.to_owned(), value.to_owned())
    }

    #[test]
    fn decodes_pairs() {
        assert_eq!(
            pairs("a=1&access_token=x%2By+z&&empty&bad=%zz&end=%4&=v&k=a=b"),
            [
                pair("a", "1"),
                pair("access_token", "x+y z"),
                pair("empty", ""),
                pair("bad", "%zz"),
                pair("end", "%4"),
                pair("", "v"),
                pair("k", "a=b"),
            ]
        );
        // Escaped UTF-8, and bytes that are not UTF-8.
        assert_eq!(pairs("n=%C3%A9%e9"), [pair("n", "é\u{fffd}")]);
    }

    /// Regression: the server's earlier query decoder turned a `%` followed by a sign and one hex
    /// digit into a byte, because the standard integer parser accepts a leading `+`.
    #[test]
    fn a_percent_sign_before_a_plus_sign_is_not_an_escape() {
        assert_eq!(pairs("a=%+1"), [pair("a", "% 1")]);
        assert_eq!(pairs("a=%-1"), [pair("a", "%-1")]);
    }

    #[test]
    fn keys_match_case_insensitively() {
        assert_eq!(query_value("ID=x&id=y", "id").as_deref(), Some("x"));
        assert_eq!(query_value("idx=1", "id"), None);
    }

    #[test]
    fn negotiate_version_as_aspnet_core_reads_it() {
        let version = |q: &str| NegotiateRequest::from_query(Some(q)).map(|r| r.version);
        assert_eq!(
            NegotiateRequest::from_query(None),
            Ok(NegotiateRequest::default())
        );
        assert_eq!(version("negotiateVersion=0"), Ok(0));
        assert_eq!(version("NegotiateVersion=1"), Ok(1));
        assert_eq!(version("negotiateVersion=%2B5"), Ok(1));
        assert_eq!(version("negotiateVersion=+1+"), Ok(1));
        assert_eq!(
            version("negotiateVersion=2147483648"),
            Err(NegotiateError::InvalidVersion("2147483648".into()))
        );
        assert_eq!(
            version("negotiateVersion=-1"),
            Err(NegotiateError::UnsupportedVersion(-1))
        );
        assert_eq!(
            version("negotiateVersion=").map_err(|e| e.to_string()),
            Err("The client requested an invalid protocol version ''".to_owned())
        );
        assert_eq!(
            version("negotiateVersion=-3").map_err(|e| e.to_string()),
            Err(
                "The client requested version '-3', but the server does not support this version."
                    .to_owned()
            )
        );
    }

    #[test]
    fn stateful_reconnect_is_a_boolean() {
        let stateful =
            |q: &str| NegotiateRequest::from_query(Some(q)).map(|r| r.stateful_reconnect);
        assert_eq!(
            stateful("negotiateVersion=1&useStatefulReconnect=true"),
            Ok(true)
        );
        assert_eq!(stateful("usestatefulreconnect=%20TRUE"), Ok(true));
        assert_eq!(stateful("useStatefulReconnect=1"), Ok(false));
        assert_eq!(stateful("useStatefulReconnect"), Ok(false));
    }
}
