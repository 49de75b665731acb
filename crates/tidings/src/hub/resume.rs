//! The hub messages of stateful reconnect (Sequence, Ack) for the
//! connection layer, which numbers, buffers and replays the connection's
//! frames but does not define what it writes or reads to do so.

use bytes::Bytes;
use tidings_protocol::{HubMessage, MessageDecoder, Protocol};

use crate::{
    connections::handler::{AckReader, ResumeFraming},
    hub::message::encode,
};

/// Frames up to this size are parsed to find Acks (an Ack is about 30
/// bytes in JSON, under 12 in MessagePack); larger ones pass unparsed.
const SNIFF_LIMIT: usize = 64;

/// Sequence and Ack messages in one hub protocol.
pub(crate) struct HubResumeFraming {
    protocol: Protocol,
    max_message_size: Option<usize>,
}

impl HubResumeFraming {
    pub(crate) fn new(protocol: Protocol, max_message_size: Option<usize>) -> Self {
        HubResumeFraming {
            protocol,
            max_message_size,
        }
    }
}

impl ResumeFraming for HubResumeFraming {
    fn sequence(&self, sequence_id: u64) -> Bytes {
        encode(self.protocol, &HubMessage::Sequence { sequence_id })
    }

    fn ack(&self, sequence_id: u64) -> Bytes {
        encode(self.protocol, &HubMessage::Ack { sequence_id })
    }

    fn ack_reader(&self) -> Box<dyn AckReader> {
        Box::new(HubAckReader {
            protocol: self.protocol,
            decoder: Some(MessageDecoder::new(self.protocol, self.max_message_size)),
        })
    }
}

/// Splits a socket's bytes into hub messages to find Acks.
struct HubAckReader {
    protocol: Protocol,
    /// `None` after unreadable input (the session reports it).
    decoder: Option<MessageDecoder>,
}

impl AckReader for HubAckReader {
    fn read(&mut self, bytes: &[u8], ack: &mut dyn FnMut(u64)) {
        let Some(decoder) = &mut self.decoder else {
            return;
        };
        decoder.push(bytes);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) if frame.len() <= SNIFF_LIMIT => {
                    if let Ok(Some(HubMessage::Ack { sequence_id })) =
                        self.protocol.parse_frame(&frame)
                    {
                        ack(sequence_id);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    self.decoder = None;
                    return;
                }
            }
        }
    }
}
