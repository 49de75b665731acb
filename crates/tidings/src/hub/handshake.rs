//! The hub handshake as a connection's opening: the client names its hub
//! protocol, the server answers, and the protocol decides how the
//! transport frames messages, what it sends when idle (a Ping) and whether
//! the connection may resume (protocol version 2).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tidings_protocol::{
    HubMessage, Protocol, TransferFormat, TransportType, handshake, handshake::HandshakeOutcome,
};

use crate::{
    connections::handler::{Accepted, Opening},
    hub::{message::encode, options::HubOptions, resume::HubResumeFraming},
};

/// The complete handshake answer frame for an accepted (`None`) or
/// refused handshake.
pub(crate) fn response(error: Option<&str>) -> Bytes {
    let mut out = Vec::with_capacity(32);
    handshake::write_response(error, &mut out);
    Bytes::from(out)
}

/// Decides a hub connection's opening from the bytes received so far.
pub(crate) fn open(
    received: &[u8],
    transport: TransportType,
    options: &HubOptions,
) -> Opening<Protocol> {
    if received.is_empty() {
        return Opening::Pending;
    }
    let policy = handshake::HandshakePolicy {
        supported: &options.supported_protocols,
        max_message_size: options.maximum_receive_message_size,
        // Server-Sent Events carry text only.
        binary_allowed: transport != TransportType::ServerSentEvents,
        detailed_errors: options.enable_detailed_errors,
    };
    match handshake::accept(received, &policy) {
        HandshakeOutcome::Accepted {
            protocol,
            version,
            used,
        } => Opening::Accept(Accepted {
            consumed: used,
            reply: Some(response(None)),
            ..accepted(protocol, version, options)
        }),
        HandshakeOutcome::Refused(error) => {
            tracing::debug!(%error, "handshake refused");
            Opening::Refuse(Some(response(Some(&error))))
        }
        // `HandshakeOutcome` may grow; anything else means "not yet".
        _ => Opening::Pending,
    }
}

/// The opening of a connection that speaks `protocol` at `version` (no
/// reply: set by the caller that answers a handshake).
pub(crate) fn accepted(
    protocol: Protocol,
    version: u32,
    options: &HubOptions,
) -> Accepted<Protocol> {
    Accepted {
        consumed: 0,
        reply: None,
        format: match protocol {
            Protocol::Json => TransferFormat::Text,
            Protocol::MessagePack => TransferFormat::Binary,
        },
        keep_alive: Some((options.keep_alive_interval, ping(protocol))),
        // Version 2 asks for stateful reconnect.
        resumable: version >= 2,
        resume: (version >= 2).then(|| {
            Arc::new(HubResumeFraming::new(
                protocol,
                options.maximum_receive_message_size,
            )) as _
        }),
        opened: protocol,
    }
}

/// The answer to a handshake that did not complete in time.
pub(crate) fn expired() -> Bytes {
    response(Some(handshake::HANDSHAKE_CANCELED))
}

/// The keep-alive Ping of `protocol`, shared by every connection of the
/// protocol rather than one copy each.
fn ping(protocol: Protocol) -> Bytes {
    static PINGS: OnceLock<[Bytes; 2]> = OnceLock::new();
    let [json, msgpack] = PINGS.get_or_init(|| {
        [Protocol::Json, Protocol::MessagePack].map(|p| encode(p, &HubMessage::Ping))
    });
    match protocol {
        Protocol::Json => json.clone(),
        Protocol::MessagePack => msgpack.clone(),
    }
}
