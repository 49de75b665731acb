#![no_main]
//! The negotiate request's URL query: `query_pairs` against a reference decoder written
//! differently, re-encoding every pair and decoding it again, and `NegotiateRequest::from_query`
//! against the raw `negotiateVersion` value.

use tidings_protocol::negotiate::{NegotiateRequest, query_pairs, query_value};

/// `application/x-www-form-urlencoded` decoding, byte by byte from the front.
fn reference_decode(s: &str) -> String {
    let mut out = Vec::new();
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            if let [high, low, after @ ..] = tail {
                if let (Some(high), Some(low)) =
                    ((*high as char).to_digit(16), (*low as char).to_digit(16))
                {
                    out.push((high * 16 + low) as u8);
                    rest = after;
                    continue;
                }
            }
        }
        out.push(if b == b'+' { b' ' } else { b });
        rest = tail;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes everything but unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    let pairs: Vec<(String, String)> = query_pairs(&query).collect();

    let expected: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (reference_decode(key), reference_decode(value))
        })
        .collect();
    assert_eq!(pairs, expected, "query {query:?}");

    let encoded: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect();
    let again: Vec<(String, String)> = query_pairs(&encoded.join("&")).collect();
    assert_eq!(again, pairs, "re-encoded {encoded:?}");

    let raw = query_value(&query, "negotiateVersion");
    match NegotiateRequest::from_query(Some(&query)) {
        Ok(request) => {
            let expected = match raw.as_deref().map(|v| v.trim().parse::<i32>()) {
                None => 0,
                Some(Ok(v)) if v >= 0 => v.min(1) as u32,
                Some(other) => panic!("accepted version {other:?}"),
            };
            assert_eq!(request.version, expected);
        }
        Err(error) => {
            assert!(raw.is_some(), "refused without a version: {error}");
            assert!(error.to_string().starts_with("The client requested"));
        }
    }
});
