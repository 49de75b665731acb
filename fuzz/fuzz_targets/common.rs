//! Shared driver for the decoder targets: decode arbitrary bytes pushed in two chunks, check that
//! every decoded message survives a write/read round trip, and read every payload as a dynamic value.

use tidings_protocol::{CompletionResult, HubMessage, MessageDecoder, Payload, Protocol};

pub fn decode(protocol: Protocol, data: &[u8]) {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    // The first byte chooses where the input is split and whether a size limit applies.
    let split = usize::from(control) % (data.len() + 1);
    let limit = (control & 0x80 != 0).then_some(usize::from(control) * 4);
    let mut decoder = MessageDecoder::new(protocol, limit);
    decoder.push(&data[..split]);
    let mut messages = Vec::new();
    if drain(&mut decoder, &mut messages) {
        decoder.push(&data[split..]);
        drain(&mut decoder, &mut messages);
    }
    for message in messages {
        let mut wire = Vec::new();
        protocol
            .write_message(&message, &mut wire)
            .expect("a decoded message can be written");
        let mut again = MessageDecoder::new(protocol, None);
        again.push(&wire);
        let reread = again
            .next_message()
            .expect("a written message can be read")
            .expect("a written message is complete");
        assert_eq!(reread, message);
        assert_eq!(again.buffered(), 0);
        for payload in payloads(&message) {
            read_payload(payload);
        }
    }
}

/// Returns false once the decoder failed (the connection would be closed).
fn drain(decoder: &mut MessageDecoder, out: &mut Vec<HubMessage>) -> bool {
    loop {
        match decoder.next_message() {
            Ok(Some(message)) => out.push(message),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fn payloads(message: &HubMessage) -> Vec<&Payload> {
    match message {
        HubMessage::Invocation(inv) | HubMessage::StreamInvocation(inv) => {
            inv.arguments.iter().collect()
        }
        HubMessage::StreamItem(item) => vec![&item.item],
        HubMessage::Completion(c) => match &c.result {
            CompletionResult::Value(value) => vec![value],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn read_payload(payload: &Payload) {
    let _ = payload.deserialize::<serde_json::Value>();
    let _ = payload.deserialize::<rmpv::Value>();
    let _ = payload.deserialize::<String>();
    let _ = payload.deserialize::<Vec<i64>>();
}
