#![no_main]
//! The inbound side of the Server-Sent Events and Long Polling transports: POST bodies, in order,
//! form one byte stream that starts with the handshake (`handshake::accept`, the server's decision)
//! and goes on with hub messages (`MessageDecoder`). The outcome — handshake answer, messages,
//! whether the stream failed — must not depend on how the bytes were split into bodies. The
//! outbound side: every answer the server would send back over Server-Sent Events (the handshake
//! response, then the messages as JSON) survives `sse::write_event` and a client's event parser.
//!
//! Input: one control byte (bit 0: the transport carries binary data, i.e. Long Polling rather than
//! Server-Sent Events; bit 1: detailed errors; bits 2-7: a size limit, 0 = none), then bodies, each
//! a length byte and that many bytes.

use tidings_protocol::{
    HubMessage, MessageDecoder, Protocol,
    handshake::{self, HandshakeOutcome, HandshakePolicy},
    sse,
};

#[derive(Debug, PartialEq)]
struct Outcome {
    handshake: HandshakeOutcome,
    messages: Vec<HubMessage>,
    failed: bool,
}

fn run(bodies: &[&[u8]], policy: &HandshakePolicy<'_>) -> Outcome {
    let mut buf = Vec::new();
    let mut rest = bodies.iter();
    let handshake = loop {
        let Some(body) = rest.next() else {
            break HandshakeOutcome::Pending;
        };
        buf.extend_from_slice(body);
        match handshake::accept(&buf, policy) {
            HandshakeOutcome::Pending => continue,
            outcome => break outcome,
        }
    };
    let mut outcome = Outcome {
        handshake,
        messages: Vec::new(),
        failed: false,
    };
    let HandshakeOutcome::Accepted { protocol, used, .. } = outcome.handshake else {
        return outcome;
    };
    assert!(used <= buf.len());
    if let Some(limit) = policy.max_message_size {
        assert!(used <= limit, "handshake of {used} bytes over the limit {limit}");
    }
    let mut decoder = MessageDecoder::new(protocol, policy.max_message_size);
    decoder.push(&buf[used..]);
    let mut next = rest.next();
    loop {
        match decoder.next_message() {
            Ok(Some(message)) => outcome.messages.push(message),
            Err(_) => {
                outcome.failed = true;
                break;
            }
            Ok(None) => match next {
                Some(body) => {
                    decoder.push(body);
                    next = rest.next();
                }
                None => break,
            },
        }
    }
    outcome
}

/// What an `EventSource` (or the .NET client) makes of an event stream: the `data` of each event,
/// lines joined with `\n`. Lines end at CRLF, LF or a lone CR.
fn read_events(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    let mut rest = stream;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .expect("every line is terminated");
        let line = &rest[..end];
        let skip = if rest[end..].starts_with(b"\r\n") { 2 } else { 1 };
        rest = &rest[end + skip..];
        if line.is_empty() {
            if let Some(mut data) = data.take() {
                data.pop();
                events.push(data);
            }
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        assert_eq!(field, b"data", "only data fields are written");
        // Each data line adds its value and a LF; the last LF goes at dispatch.
        let data = data.get_or_insert_with(Vec::new);
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    assert!(data.is_none(), "an event without its blank line");
    events
}

fn sse_round_trip(payload: &[u8]) {
    let mut stream = Vec::new();
    sse::write_event(payload, &mut stream);
    assert_eq!(read_events(&stream), [payload.to_vec()]);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let supported = [Protocol::Json, Protocol::MessagePack];
    let policy = HandshakePolicy {
        supported: &supported,
        max_message_size: match control >> 2 {
            0 => None,
            n => Some(usize::from(n) * 8),
        },
        binary_allowed: control & 1 != 0,
        detailed_errors: control & 2 != 0,
    };
    let mut bodies: Vec<&[u8]> = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        bodies.push(&tail[..len]);
        rest = &tail[len..];
    }
    let chunked = run(&bodies, &policy);
    let whole_stream = bodies.concat();
    let whole = run(&[&whole_stream], &policy);
    assert_eq!(chunked, whole);

    // Server-Sent Events carry JSON only: the answers as they would be written.
    if policy.binary_allowed {
        return;
    }
    let mut answer = Vec::new();
    match &chunked.handshake {
        HandshakeOutcome::Pending => return,
        HandshakeOutcome::Refused(error) => handshake::write_response(Some(error), &mut answer),
        _ => handshake::write_response(None, &mut answer),
    }
    sse_round_trip(&answer);
    for message in &chunked.messages {
        let mut frame = Vec::new();
        // Payloads keep the client's bytes, white space inside arrays and objects included; a
        // raw CR there cannot travel in an event (EventSource ends lines at a lone CR). The
        // server's own JSON never has one: hub methods re-serialize what they send.
        if Protocol::Json.write_message(message, &mut frame).is_ok() && !frame.contains(&b'\r') {
            sse_round_trip(&frame);
        }
    }
});
