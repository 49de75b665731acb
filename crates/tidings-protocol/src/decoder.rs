//! [`MessageDecoder`]: splits one connection's inbound byte stream into hub messages, whatever the
//! transport chunking (several messages per chunk, messages split across chunks).

use bytes::{Bytes, BytesMut};

use crate::{DecodeError, HubMessage, Protocol, RECORD_SEPARATOR, msgpack};

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
        while let Some(frame) = self.next_frame()? {
            if let Some(message) = self.protocol.parse_frame(&frame)? {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    /// The next complete message without parsing it: the JSON text without its record separator,
    /// or the MessagePack body without its length prefix (parse it with
    /// [`Protocol::parse_frame`]). `Ok(None)` if more bytes are needed. The size limit applies as
    /// for [`next_message`](Self::next_message).
    ///
    /// For readers that only look into some messages, e.g. by size, and let the others pass.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, DecodeError> {
        match self.protocol {
            Protocol::Json => self.next_json(),
            Protocol::MessagePack => self.next_msgpack(),
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

    fn next_json(&mut self) -> Result<Option<Bytes>, DecodeError> {
        // memchr compares many bytes per instruction: a byte-by-byte search
        // was ~4 % of the instructions of a JSON echo (scripts/callgrind.sh).
        let Some(found) = memchr::memchr(RECORD_SEPARATOR, &self.buffer[self.scanned..]) else {
            self.scanned = self.buffer.len();
            self.check_size(self.buffer.len())?;
            return Ok(None);
        };
        let end = self.scanned + found;
        self.check_size(end + 1)?;
        let mut frame = self.buffer.split_to(end + 1).freeze();
        frame.truncate(end);
        self.scanned = 0;
        Ok(Some(frame))
    }

    fn next_msgpack(&mut self) -> Result<Option<Bytes>, DecodeError> {
        let Some((length, prefix)) = msgpack::read_length_prefix(&self.buffer)? else {
            return Ok(None);
        };
        self.check_size(prefix.saturating_add(length))?;
        if self.buffer.len() - prefix < length {
            return Ok(None);
        }
        let mut frame = self.buffer.split_to(prefix + length).freeze();
        Ok(Some(frame.split_off(prefix)))
    }
}
