//! The MessagePack hub protocol: each message is a MessagePack array prefixed with its length as a
//! VarInt (7 bits per byte, least significant group first, at most 5 bytes).
//!
//! Reading walks the array by hand so that arguments, results and items can be kept as zero-copy
//! slices of the frame: a small skipper finds where each value ends without building it.

use bytes::Bytes;
use rmp::Marker;
use rmp::encode as w;

use crate::{
    CancelInvocation, Close, Completion, CompletionResult, DecodeError, EncodeError, Headers,
    HubMessage, Invocation, Payload, Protocol, StreamItem,
};

/// The largest VarInt prefix, in bytes.
pub(crate) const MAX_LENGTH_PREFIX: usize = 5;

/// The largest body a length prefix may announce.
const MAX_BODY_LEN: usize = 0x7fff_ffff;

/// Reads a VarInt length prefix. `Ok(None)` if more bytes are needed; otherwise the length and the
/// prefix size.
pub(crate) fn read_length_prefix(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut length: u64 = 0;
    for (i, &byte) in buf.iter().take(MAX_LENGTH_PREFIX).enumerate() {
        if i == MAX_LENGTH_PREFIX - 1 && byte > 0x07 {
            // 5 x 7 bits would allow 35 bits; the protocol caps lengths at 2^31 - 1.
            return Err(DecodeError::InvalidLengthPrefix);
        }
        length |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let length = usize::try_from(length).map_err(|_| DecodeError::InvalidLengthPrefix)?;
            return Ok(Some((length, i + 1)));
        }
    }
    Ok(None)
}

/// Appends the VarInt encoding of `length`.
fn write_length_prefix(mut length: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (length & 0x7f) as u8;
        length >>= 7;
        if length == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Why the skipper or the reader stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    Truncated,
    Unexpected(&'static str),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Truncated => f.write_str("the message ended in the middle of a value"),
            ReadError::Unexpected(what) => write!(f, "expected {what}"),
        }
    }
}

impl From<ReadError> for DecodeError {
    fn from(err: ReadError) -> Self {
        DecodeError::MessagePack(err.to_string())
    }
}

/// Returns the offset just past the MessagePack value that starts at `pos`.
///
/// Iterative (a count of values still to skip) rather than recursive, so deeply nested input cannot
/// exhaust the stack.
pub(crate) fn skip_value(buf: &[u8], mut pos: usize) -> Result<usize, ReadError> {
    let mut pending: u64 = 1;
    while pending > 0 {
        pending -= 1;
        let marker = Marker::from_u8(*buf.get(pos).ok_or(ReadError::Truncated)?);
        pos += 1;
        let skip: usize = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                0
            }
            Marker::U8 | Marker::I8 => 1,
            Marker::U16 | Marker::I16 => 2,
            Marker::U32 | Marker::I32 | Marker::F32 => 4,
            Marker::U64 | Marker::I64 | Marker::F64 => 8,
            Marker::FixStr(n) => n.into(),
            Marker::Str8 | Marker::Bin8 => read_uint(buf, &mut pos, 1)? as usize,
            Marker::Str16 | Marker::Bin16 => read_uint(buf, &mut pos, 2)? as usize,
            Marker::Str32 | Marker::Bin32 => read_uint(buf, &mut pos, 4)? as usize,
            Marker::FixArray(n) => {
                pending += u64::from(n);
                0
            }
            Marker::Array16 => {
                pending += read_uint(buf, &mut pos, 2)?;
                0
            }
            Marker::Array32 => {
                pending += read_uint(buf, &mut pos, 4)?;
                0
            }
            Marker::FixMap(n) => {
                pending += 2 * u64::from(n);
                0
            }
            Marker::Map16 => {
                pending += 2 * read_uint(buf, &mut pos, 2)?;
                0
            }
            Marker::Map32 => {
                pending += 2 * read_uint(buf, &mut pos, 4)?;
                0
            }
            // type byte + data
            Marker::FixExt1 => 2,
            Marker::FixExt2 => 3,
            Marker::FixExt4 => 5,
            Marker::FixExt8 => 9,
            Marker::FixExt16 => 17,
            Marker::Ext8 => read_uint(buf, &mut pos, 1)? as usize + 1,
            Marker::Ext16 => read_uint(buf, &mut pos, 2)? as usize + 1,
            Marker::Ext32 => read_uint(buf, &mut pos, 4)? as usize + 1,
            Marker::Reserved => return Err(ReadError::Unexpected("a valid MessagePack marker")),
        };
        pos = pos
            .checked_add(skip)
            .filter(|&end| end <= buf.len())
            .ok_or(ReadError::Truncated)?;
    }
    Ok(pos)
}

/// Reads a big-endian unsigned integer of `width` bytes at `pos`.
fn read_uint(buf: &[u8], pos: &mut usize, width: usize) -> Result<u64, ReadError> {
    let end = pos.checked_add(width).ok_or(ReadError::Truncated)?;
    let bytes = buf.get(*pos..end).ok_or(ReadError::Truncated)?;
    *pos = end;
    Ok(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// A cursor over one message body.
struct Reader<'a> {
    body: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn marker(&mut self) -> Result<Marker, ReadError> {
        let byte = *self.body.get(self.pos).ok_or(ReadError::Truncated)?;
        self.pos += 1;
        Ok(Marker::from_u8(byte))
    }

    fn peek_nil(&self) -> bool {
        self.body.get(self.pos) == Some(&0xc0)
    }

    fn uint(&mut self, width: usize) -> Result<u64, ReadError> {
        read_uint(self.body, &mut self.pos, width)
    }

    /// Any MessagePack integer (any width, signed or not).
    fn int(&mut self, what: &'static str) -> Result<i128, ReadError> {
        Ok(match self.marker()? {
            Marker::FixPos(n) => n.into(),
            Marker::FixNeg(n) => n.into(),
            Marker::U8 => self.uint(1)?.into(),
            Marker::U16 => self.uint(2)?.into(),
            Marker::U32 => self.uint(4)?.into(),
            Marker::U64 => self.uint(8)?.into(),
            Marker::I8 => (self.uint(1)? as u8 as i8).into(),
            Marker::I16 => (self.uint(2)? as u16 as i16).into(),
            Marker::I32 => (self.uint(4)? as u32 as i32).into(),
            Marker::I64 => (self.uint(8)? as i64).into(),
            _ => return Err(ReadError::Unexpected(what)),
        })
    }

    fn array_len(&mut self, what: &'static str) -> Result<u64, ReadError> {
        match self.marker()? {
            Marker::FixArray(n) => Ok(n.into()),
            Marker::Array16 => self.uint(2),
            Marker::Array32 => self.uint(4),
            _ => Err(ReadError::Unexpected(what)),
        }
    }

    fn map_len(&mut self, what: &'static str) -> Result<u64, ReadError> {
        match self.marker()? {
            Marker::FixMap(n) => Ok(n.into()),
            Marker::Map16 => self.uint(2),
            Marker::Map32 => self.uint(4),
            _ => Err(ReadError::Unexpected(what)),
        }
    }

    /// A string, or `None` for nil.
    fn optional_string(&mut self, what: &'static str) -> Result<Option<String>, ReadError> {
        let len = match self.marker()? {
            Marker::Null => return Ok(None),
            Marker::FixStr(n) => n.into(),
            Marker::Str8 => self.uint(1)?,
            Marker::Str16 => self.uint(2)?,
            Marker::Str32 => self.uint(4)?,
            _ => return Err(ReadError::Unexpected(what)),
        };
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .ok_or(ReadError::Truncated)?;
        let bytes = self.body.get(self.pos..end).ok_or(ReadError::Truncated)?;
        let text = std::str::from_utf8(bytes).map_err(|_| ReadError::Unexpected(what))?;
        self.pos = end;
        Ok(Some(text.to_owned()))
    }

    fn string(&mut self, what: &'static str) -> Result<String, ReadError> {
        self.optional_string(what)?
            .ok_or(ReadError::Unexpected(what))
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, ReadError> {
        match self.marker()? {
            Marker::True => Ok(true),
            Marker::False => Ok(false),
            _ => Err(ReadError::Unexpected(what)),
        }
    }

    fn headers(&mut self) -> Result<Headers, ReadError> {
        let count = self.map_len("a map of headers")?;
        let mut headers = Headers::new();
        for _ in 0..count {
            let key = self.string("a string header name")?;
            let value = self.string("a string header value")?;
            headers.insert(key, value);
        }
        Ok(headers)
    }

    fn payload(&mut self) -> Result<Payload, ReadError> {
        let end = skip_value(self.body, self.pos)?;
        let payload = Payload::new_unchecked(Protocol::MessagePack, self.body.slice(self.pos..end));
        self.pos = end;
        Ok(payload)
    }

    fn payloads(&mut self, what: &'static str) -> Result<Vec<Payload>, ReadError> {
        let count = self.array_len(what)?;
        // The count comes from the network: grow as values are actually found, don't trust it up front.
        let mut items = Vec::with_capacity(count.min(16) as usize);
        for _ in 0..count {
            items.push(self.payload()?);
        }
        Ok(items)
    }

    fn strings(&mut self, what: &'static str) -> Result<Vec<String>, ReadError> {
        let count = self.array_len(what)?;
        let mut items = Vec::with_capacity(count.min(16) as usize);
        for _ in 0..count {
            items.push(self.string(what)?);
        }
        Ok(items)
    }

    fn sequence_id(&mut self) -> Result<u64, ReadError> {
        u64::try_from(self.int("an integer sequence id")?)
            .map_err(|_| ReadError::Unexpected("a non-negative sequence id"))
    }
}

fn require(count: u64, min: u64, name: &'static str) -> Result<(), DecodeError> {
    if count < min {
        Err(DecodeError::MessagePack(format!(
            "Invalid {name} message: expected at least {min} elements, got {count}"
        )))
    } else {
        Ok(())
    }
}

/// Parses one message body (without its length prefix). `Ok(None)` for an unknown message type.
pub(crate) fn parse_message(body: &Bytes) -> Result<Option<HubMessage>, DecodeError> {
    let mut r = Reader { body, pos: 0 };
    let count = r.array_len("a message array")?;
    if count == 0 {
        return Err(DecodeError::MessagePack(
            "Invalid message: the array is empty".into(),
        ));
    }
    let ty = r.int("an integer message type")?;
    let message = match ty {
        1 | 4 => {
            require(count, 5, "invocation")?;
            let headers = r.headers()?;
            let invocation_id = r
                .optional_string("a string or nil invocation id")?
                .filter(|id| !id.is_empty());
            if ty == 4 && invocation_id.is_none() {
                return Err(DecodeError::MissingProperty("invocationId"));
            }
            let target = r.string("a string target")?;
            let arguments = r.payloads("an array of arguments")?;
            // The JavaScript client omits the stream ids when there are none.
            let stream_ids = if count > 5 {
                r.strings("an array of string stream ids")?
            } else {
                Vec::new()
            };
            let invocation = Invocation {
                headers,
                invocation_id,
                target,
                arguments,
                stream_ids,
            };
            if ty == 1 {
                HubMessage::Invocation(invocation)
            } else {
                HubMessage::StreamInvocation(invocation)
            }
        }
        2 => {
            require(count, 4, "stream item")?;
            HubMessage::StreamItem(StreamItem {
                headers: r.headers()?,
                invocation_id: r.string("a string invocation id")?,
                item: r.payload()?,
            })
        }
        3 => {
            require(count, 4, "completion")?;
            let headers = r.headers()?;
            let invocation_id = r.string("a string invocation id")?;
            let result = match r.int("an integer result kind")? {
                1 => {
                    require(count, 5, "completion")?;
                    CompletionResult::Error(r.string("a string error")?)
                }
                2 => CompletionResult::Void,
                3 => {
                    require(count, 5, "completion")?;
                    CompletionResult::Value(r.payload()?)
                }
                _ => return Err(DecodeError::InvalidResultKind),
            };
            HubMessage::Completion(Completion {
                headers,
                invocation_id,
                result,
            })
        }
        5 => {
            require(count, 3, "cancel invocation")?;
            HubMessage::CancelInvocation(CancelInvocation {
                headers: r.headers()?,
                invocation_id: r.string("a string invocation id")?,
            })
        }
        6 => HubMessage::Ping,
        7 => {
            require(count, 2, "close")?;
            let error = r.optional_string("a string or nil error")?;
            let allow_reconnect = if count > 2 && !r.peek_nil() {
                r.bool("a boolean allowReconnect")?
            } else {
                false
            };
            HubMessage::Close(Close {
                error,
                allow_reconnect,
            })
        }
        8 => {
            require(count, 2, "ack")?;
            HubMessage::Ack {
                sequence_id: r.sequence_id()?,
            }
        }
        9 => {
            require(count, 2, "sequence")?;
            HubMessage::Sequence {
                sequence_id: r.sequence_id()?,
            }
        }
        // Unknown types are ignored, as ASP.NET Core and the JavaScript client do.
        _ => return Ok(None),
    };
    Ok(Some(message))
}

/// Appends the VarInt length and the body of `msg`.
pub(crate) fn write_message(msg: &HubMessage, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    // Write the body after room for the longest prefix, then move it down next to the real prefix:
    // one memmove instead of a temporary buffer per message.
    let start = out.len();
    out.resize(start + MAX_LENGTH_PREFIX, 0);
    write_body(msg, out)?;
    let body_len = out.len() - start - MAX_LENGTH_PREFIX;
    if body_len > MAX_BODY_LEN {
        // Every reader rejects a prefix announcing more than 2^31 - 1 bytes.
        return Err(EncodeError::MessagePack(rmp_serde::encode::Error::Syntax(
            "messages over 2GB in size are not supported".into(),
        )));
    }
    let mut prefix = Vec::with_capacity(MAX_LENGTH_PREFIX);
    write_length_prefix(body_len, &mut prefix);
    let body_start = start + prefix.len();
    out[start..body_start].copy_from_slice(&prefix);
    out.copy_within(start + MAX_LENGTH_PREFIX.., body_start);
    out.truncate(body_start + body_len);
    Ok(())
}

fn write_body(msg: &HubMessage, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let ty = msg.message_type();
    match msg {
        HubMessage::Invocation(inv) | HubMessage::StreamInvocation(inv) => {
            // Always 6 elements: the Python client reads the stream ids unconditionally.
            w::write_array_len(out, 6)?;
            w::write_uint(out, ty.into())?;
            write_headers(&inv.headers, out)?;
            match &inv.invocation_id {
                Some(id) => w::write_str(out, id)?,
                None => w::write_nil(out)?,
            }
            w::write_str(out, &inv.target)?;
            w::write_array_len(out, len_u32(inv.arguments.len())?)?;
            for arg in &inv.arguments {
                write_payload(arg, out)?;
            }
            w::write_array_len(out, len_u32(inv.stream_ids.len())?)?;
            for id in &inv.stream_ids {
                w::write_str(out, id)?;
            }
        }
        HubMessage::StreamItem(item) => {
            w::write_array_len(out, 4)?;
            w::write_uint(out, ty.into())?;
            write_headers(&item.headers, out)?;
            w::write_str(out, &item.invocation_id)?;
            write_payload(&item.item, out)?;
        }
        HubMessage::Completion(completion) => {
            let len = if matches!(completion.result, CompletionResult::Void) {
                4
            } else {
                5
            };
            w::write_array_len(out, len)?;
            w::write_uint(out, ty.into())?;
            write_headers(&completion.headers, out)?;
            w::write_str(out, &completion.invocation_id)?;
            match &completion.result {
                CompletionResult::Error(error) => {
                    w::write_uint(out, 1)?;
                    w::write_str(out, error)?;
                }
                CompletionResult::Void => {
                    w::write_uint(out, 2)?;
                }
                CompletionResult::Value(value) => {
                    w::write_uint(out, 3)?;
                    write_payload(value, out)?;
                }
            }
        }
        HubMessage::CancelInvocation(cancel) => {
            w::write_array_len(out, 3)?;
            w::write_uint(out, ty.into())?;
            write_headers(&cancel.headers, out)?;
            w::write_str(out, &cancel.invocation_id)?;
        }
        HubMessage::Ping => {
            w::write_array_len(out, 1)?;
            w::write_uint(out, ty.into())?;
        }
        HubMessage::Close(close) => {
            w::write_array_len(out, 3)?;
            w::write_uint(out, ty.into())?;
            match &close.error {
                Some(error) => w::write_str(out, error)?,
                None => w::write_nil(out)?,
            }
            w::write_bool(out, close.allow_reconnect)?;
        }
        HubMessage::Ack { sequence_id } | HubMessage::Sequence { sequence_id } => {
            w::write_array_len(out, 2)?;
            w::write_uint(out, ty.into())?;
            w::write_uint(out, *sequence_id)?;
        }
    }
    Ok(())
}

fn len_u32(len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| {
        EncodeError::MessagePack(rmp_serde::encode::Error::Syntax(
            "collection too long for MessagePack".into(),
        ))
    })
}

fn write_headers(headers: &Headers, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    w::write_map_len(out, len_u32(headers.len())?)?;
    for (key, value) in headers {
        w::write_str(out, key)?;
        w::write_str(out, value)?;
    }
    Ok(())
}

fn write_payload(payload: &Payload, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if payload.protocol() != Protocol::MessagePack {
        return Err(EncodeError::ProtocolMismatch {
            expected: Protocol::MessagePack,
            found: payload.protocol(),
        });
    }
    out.extend_from_slice(payload.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_round_trips_at_boundaries() {
        for (length, encoded) in [
            (0usize, &[0x00u8][..]),
            (11, &[0x0b]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (5248, &[0x80, 0x29]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (MAX_BODY_LEN, &[0xff, 0xff, 0xff, 0xff, 0x07]),
        ] {
            let mut out = Vec::new();
            write_length_prefix(length, &mut out);
            assert_eq!(out, encoded, "{length}");
            assert_eq!(
                read_length_prefix(encoded).ok().flatten(),
                Some((length, encoded.len()))
            );
            // Any strict prefix of a multi-byte VarInt is incomplete, not an error.
            for cut in 0..encoded.len() {
                assert!(matches!(read_length_prefix(&encoded[..cut]), Ok(None)));
            }
        }
    }

    #[test]
    fn skipper_handles_every_marker_family() {
        let values: &[&[u8]] = &[
            &[0x05],
            &[0xe0],
            &[0xc0],
            &[0xcc, 0x01],
            &[0xcd, 0x01, 0x02],
            &[0xd2, 0, 0, 0, 1],
            &[0xcb, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xca, 0, 0, 0, 0],
            &[0xa2, b'h', b'i'],
            &[0xd9, 0x01, b'x'],
            &[0xc4, 0x02, 1, 2],
            &[0x92, 0x01, 0xa1, b'a'],
            &[0xdc, 0x00, 0x01, 0xc3],
            &[0x81, 0xa1, b'k', 0x90],
            &[0xde, 0x00, 0x01, 0x01, 0x02],
            &[0xd4, 0x01, 0x00],
            &[0xd6, 0xff, 0, 0, 0, 1],
            &[0xc7, 0x01, 0x05, 0xaa],
        ];
        for value in values {
            let mut buf = value.to_vec();
            buf.push(0xc0);
            assert_eq!(skip_value(&buf, 0).ok(), Some(value.len()), "{value:02x?}");
            for cut in 0..value.len() {
                assert!(
                    skip_value(&value[..cut], 0).is_err(),
                    "{value:02x?} cut {cut}"
                );
            }
        }
        assert!(skip_value(&[0xc1], 0).is_err());
    }
}
