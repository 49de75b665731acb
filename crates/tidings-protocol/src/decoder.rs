//! [`MessageDecoder`]: splits one connection's inbound byte stream into hub messages, whatever the
//! transport chunking (several messages per chunk, messages split across chunks).

use bytes::BytesMut;

use crate::{DecodeError, HubMessage, Protocol, RECORD_SEPARATOR, json, msgpack};

/// Incremental decoder for one connection's inbound byte stream, after the handshake.
///
/// Push transport bytes with [`push`](Self::push), then call [`next_message`](Self::next_message)
/// until it returns `Ok(None)`. Messages of unknown types are skipped.
///
/// The size limit applies to each framed message, separator or length prefix included, like
/// ASP.NET Core's `MaximumReceiveMessageSize`: a JSON message is rejected as soon as more than `limit`
/// bytes are buffered without a separator, a MessagePack message as soon as its length prefix announces
/// more than `limit` bytes. After any error the stream is unusable and the connection should be closed.
#[derive(Debug)]
pub struct MessageDecoder {
    protocol: Protocol,
    max_message_size: Option<usize>,
    buffer: BytesMut,
    /// JSON: how far the buffer has already been searched for a separator.
    scanned: usize,
}

impl MessageDecoder {
    /// A decoder for `protocol`; `max_message_size` of `None` means unlimited.
    pub fn new(protocol: Protocol, max_message_size: Option<usize>) -> Self {
        MessageDecoder {
            protocol,
            max_message_size,
            buffer: BytesMut::new(),
            scanned: 0,
        }
    }

    /// The protocol this decoder reads.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Appends bytes received from the transport.
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next complete message, or `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<HubMessage>, DecodeError> {
        loop {
            let parsed = match self.protocol {
                Protocol::Json => self.next_json()?,
                Protocol::MessagePack => self.next_msgpack()?,
            };
            match parsed {
                Frame::Incomplete => return Ok(None),
                Frame::Message(message) => return Ok(Some(message)),
                Frame::Skipped => continue,
            }
        }
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    fn check_size(&self, framed_len: usize) -> Result<(), DecodeError> {
        match self.max_message_size {
            Some(limit) if framed_len > limit => Err(DecodeError::MessageTooLarge { limit }),
            _ => Ok(()),
        }
    }

    fn next_json(&mut self) -> Result<Frame, DecodeError> {
        let Some(found) = self.buffer[self.scanned..]
            .iter()
            .position(|&b| b == RECORD_SEPARATOR)
        else {
            self.scanned = self.buffer.len();
            self.check_size(self.buffer.len())?;
            return Ok(Frame::Incomplete);
        };
        let end = self.scanned + found;
        self.check_size(end + 1)?;
        let mut frame = self.buffer.split_to(end + 1).freeze();
        frame.truncate(end);
        self.scanned = 0;
        Ok(json::parse_message(&frame)?.map_or(Frame::Skipped, Frame::Message))
    }

    fn next_msgpack(&mut self) -> Result<Frame, DecodeError> {
        let Some((length, prefix)) = msgpack::read_length_prefix(&self.buffer)? else {
            return Ok(Frame::Incomplete);
        };
        self.check_size(prefix.saturating_add(length))?;
        if self.buffer.len() - prefix < length {
            return Ok(Frame::Incomplete);
        }
        let mut frame = self.buffer.split_to(prefix + length).freeze();
        let body = frame.split_off(prefix);
        Ok(msgpack::parse_message(&body)?.map_or(Frame::Skipped, Frame::Message))
    }
}

enum Frame {
    Incomplete,
    Message(HubMessage),
    Skipped,
}
