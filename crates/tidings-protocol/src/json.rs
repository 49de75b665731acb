//! The JSON hub protocol: one JSON object per message, terminated by the record separator `0x1E`.
//!
//! Reading parses the whole object before interpreting it, because clients write properties in any
//! order (the JavaScript client writes `type` last). Arguments, results and items are not parsed into
//! values: they stay as slices of the received frame until a handler deserializes them.
//!
//! Most messages are read by a scanner of a strict subset of JSON ([`scan`]), in one pass that
//! also finds the argument list's items; whatever it does not take (escapes in property names,
//! `\u` escapes, deep nesting, and every malformed message) is read by serde_json instead, so
//! what is accepted, and the error for what is not, stay serde_json's.

mod scan;

use std::fmt;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::{
    CancelInvocation, Close, Completion, CompletionResult, DecodeError, EncodeError, Headers,
    HubMessage, Invocation, Payload, Protocol, RECORD_SEPARATOR, StreamItem,
};

/// The properties of a hub message, each kept as the raw (valid) JSON text of its value, borrowed
/// from the frame.
#[derive(Default)]
struct RawFields<'a> {
    ty: Option<&'a str>,
    headers: Option<&'a str>,
    invocation_id: Option<&'a str>,
    target: Option<&'a str>,
    arguments: Option<&'a str>,
    stream_ids: Option<&'a str>,
    item: Option<&'a str>,
    result: Option<&'a str>,
    error: Option<&'a str>,
    allow_reconnect: Option<&'a str>,
    sequence_id: Option<&'a str>,
    /// The items of `arguments`, as byte ranges of the message, when the scanner read them.
    argument_items: Option<Vec<(usize, usize)>>,
}

impl<'a> RawFields<'a> {
    /// The slot of a property name (`None`: a property hub messages do not have).
    fn slot(&mut self, name: &str) -> Option<&mut Option<&'a str>> {
        // Property names are case-sensitive, as in ASP.NET Core.
        Some(match name {
            "type" => &mut self.ty,
            "headers" => &mut self.headers,
            "invocationId" => &mut self.invocation_id,
            "target" => &mut self.target,
            "arguments" => &mut self.arguments,
            "streamIds" => &mut self.stream_ids,
            "item" => &mut self.item,
            "result" => &mut self.result,
            "error" => &mut self.error,
            "allowReconnect" => &mut self.allow_reconnect,
            "sequenceId" => &mut self.sequence_id,
            _ => return None,
        })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawFields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FieldsVisitor<'a> {
            type Value = RawFields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFields<'a>, A::Error> {
                let mut fields = RawFields::default();
                // Names with escapes are rare: a key is taken as an owned string.
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    // A repeated property overrides the earlier one, like a streaming JSON reader.
                    match fields.slot(&key) {
                        Some(slot) => *slot = Some(map.next_value::<&'a RawValue>()?.get()),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(FieldsVisitor(std::marker::PhantomData))
    }
}

/// Parses one message (`frame` excludes the record separator). `Ok(None)` for an unknown `type`.
pub(crate) fn parse_message(frame: &Bytes) -> Result<Option<HubMessage>, DecodeError> {
    let text = std::str::from_utf8(frame)?;
    let mut fields = match scan::fields(text) {
        Some(fields) => fields,
        None => serde_json::from_str(text)?,
    };
    let ctx = Ctx { text, frame };

    let ty = match fields.ty {
        None => return Err(DecodeError::MissingProperty("type")),
        // The message types are single digits.
        Some(raw) if raw.len() == 1 && raw.as_bytes()[0].is_ascii_digit() => {
            i64::from(raw.as_bytes()[0] - b'0')
        }
        Some(raw) => {
            serde_json::from_str::<i64>(raw).map_err(|_| DecodeError::InvalidProperty {
                name: "type",
                expected: "Integer",
            })?
        }
    };

    let message = match ty {
        1 | 4 => {
            let invocation_id =
                optional_string(fields.invocation_id, "invocationId")?.filter(|id| !id.is_empty());
            if ty == 4 && invocation_id.is_none() {
                return Err(DecodeError::MissingProperty("invocationId"));
            }
            let target = required_string(fields.target, "target")?;
            let arguments = match fields.arguments {
                None => return Err(DecodeError::MissingProperty("arguments")),
                Some(raw) => match fields.argument_items.take() {
                    Some(items) => items
                        .into_iter()
                        .map(|(start, end)| {
                            Payload::new_unchecked(Protocol::Json, frame.slice(start..end))
                        })
                        .collect(),
                    None => ctx.arguments(raw)?,
                },
            };
            let stream_ids = match fields.stream_ids {
                None => Vec::new(),
                Some(raw) => serde_json::from_str::<Option<Vec<String>>>(raw)
                    .map_err(|_| DecodeError::InvalidProperty {
                        name: "streamIds",
                        expected: "Array of String",
                    })?
                    .unwrap_or_default(),
            };
            let invocation = Invocation {
                headers: headers(fields.headers)?,
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
        2 => HubMessage::StreamItem(StreamItem {
            headers: headers(fields.headers)?,
            invocation_id: required_string(fields.invocation_id, "invocationId")?,
            item: match fields.item {
                None => return Err(DecodeError::MissingProperty("item")),
                Some(raw) => ctx.payload(raw),
            },
        }),
        3 => {
            let error = optional_string(fields.error, "error")?;
            let result = match (error, fields.result) {
                // A result of `null` next to a real error is what some clients (Python) send.
                (Some(_), Some(raw)) if raw != "null" => {
                    return Err(DecodeError::ResultAndError);
                }
                (Some(error), _) => CompletionResult::Error(error),
                (None, Some(raw)) => CompletionResult::Value(ctx.payload(raw)),
                (None, None) => CompletionResult::Void,
            };
            HubMessage::Completion(Completion {
                headers: headers(fields.headers)?,
                invocation_id: required_string(fields.invocation_id, "invocationId")?,
                result,
            })
        }
        5 => HubMessage::CancelInvocation(CancelInvocation {
            headers: headers(fields.headers)?,
            invocation_id: required_string(fields.invocation_id, "invocationId")?,
        }),
        6 => HubMessage::Ping,
        7 => HubMessage::Close(Close {
            error: optional_string(fields.error, "error")?,
            allow_reconnect: match fields.allow_reconnect {
                None => false,
                Some(raw) => serde_json::from_str::<Option<bool>>(raw)
                    .map_err(|_| DecodeError::InvalidProperty {
                        name: "allowReconnect",
                        expected: "Boolean",
                    })?
                    .unwrap_or(false),
            },
        }),
        8 => HubMessage::Ack {
            sequence_id: sequence_id(fields.sequence_id)?,
        },
        9 => HubMessage::Sequence {
            sequence_id: sequence_id(fields.sequence_id)?,
        },
        // Unknown types are ignored, as ASP.NET Core and the JavaScript client do.
        _ => return Ok(None),
    };
    Ok(Some(message))
}

/// The frame a message was parsed from, to turn borrowed raw values into zero-copy payloads.
struct Ctx<'a> {
    text: &'a str,
    frame: &'a Bytes,
}

impl Ctx<'_> {
    fn payload(&self, value: &str) -> Payload {
        // `value` is a sub-slice of `text` (serde_json borrows raw values from the input), so its
        // offset is the distance between the two start addresses.
        let start = value.as_ptr() as usize - self.text.as_ptr() as usize;
        let bytes = self.frame.slice(start..start + value.len());
        Payload::new_unchecked(Protocol::Json, bytes)
    }

    fn arguments(&self, raw: &str) -> Result<Vec<Payload>, DecodeError> {
        let items: Vec<&RawValue> =
            serde_json::from_str(raw).map_err(|_| DecodeError::InvalidProperty {
                name: "arguments",
                expected: "Array",
            })?;
        Ok(items
            .into_iter()
            .map(|item| self.payload(item.get()))
            .collect())
    }
}

fn required_string(raw: Option<&str>, name: &'static str) -> Result<String, DecodeError> {
    optional_string(raw, name)?.ok_or(DecodeError::MissingProperty(name))
}

/// A string property where `null` counts as absent.
fn optional_string(raw: Option<&str>, name: &'static str) -> Result<Option<String>, DecodeError> {
    match raw {
        None => Ok(None),
        // A valid JSON string without escapes is its text between the quotes.
        Some(raw) if raw.len() >= 2 && raw.starts_with('"') && !raw.contains('\\') => {
            Ok(Some(raw[1..raw.len() - 1].to_owned()))
        }
        Some(raw) => {
            serde_json::from_str::<Option<String>>(raw).map_err(|_| DecodeError::InvalidProperty {
                name,
                expected: "String",
            })
        }
    }
}

fn headers(raw: Option<&str>) -> Result<Headers, DecodeError> {
    match raw {
        None => Ok(Headers::new()),
        Some(raw) => serde_json::from_str::<Option<Headers>>(raw)
            .map(Option::unwrap_or_default)
            .map_err(|_| DecodeError::InvalidProperty {
                name: "headers",
                expected: "Object with String values",
            }),
    }
}

fn sequence_id(raw: Option<&str>) -> Result<u64, DecodeError> {
    match raw {
        None => Err(DecodeError::MissingProperty("sequenceId")),
        Some(raw) => serde_json::from_str::<u64>(raw).map_err(|_| DecodeError::InvalidProperty {
            name: "sequenceId",
            expected: "Integer",
        }),
    }
}

/// Appends `msg` as JSON plus the record separator, in the property order ASP.NET Core writes.
pub(crate) fn write_message(msg: &HubMessage, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.extend_from_slice(b"{\"type\":");
    out.extend_from_slice(msg.message_type().to_string().as_bytes());
    match msg {
        HubMessage::Invocation(inv) | HubMessage::StreamInvocation(inv) => {
            write_headers(&inv.headers, out)?;
            if let Some(id) = &inv.invocation_id {
                write_string_property("invocationId", id, out)?;
            }
            write_string_property("target", &inv.target, out)?;
            out.extend_from_slice(b",\"arguments\":[");
            for (i, arg) in inv.arguments.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_payload(arg, out)?;
            }
            out.push(b']');
            if !inv.stream_ids.is_empty() {
                out.extend_from_slice(b",\"streamIds\":");
                serde_json::to_writer(&mut *out, &inv.stream_ids)?;
            }
        }
        HubMessage::StreamItem(item) => {
            write_headers(&item.headers, out)?;
            write_string_property("invocationId", &item.invocation_id, out)?;
            out.extend_from_slice(b",\"item\":");
            write_payload(&item.item, out)?;
        }
        HubMessage::Completion(completion) => {
            write_headers(&completion.headers, out)?;
            write_string_property("invocationId", &completion.invocation_id, out)?;
            match &completion.result {
                CompletionResult::Void => {}
                CompletionResult::Value(value) => {
                    out.extend_from_slice(b",\"result\":");
                    write_payload(value, out)?;
                }
                CompletionResult::Error(error) => write_string_property("error", error, out)?,
            }
        }
        HubMessage::CancelInvocation(cancel) => {
            write_headers(&cancel.headers, out)?;
            write_string_property("invocationId", &cancel.invocation_id, out)?;
        }
        HubMessage::Ping => {}
        HubMessage::Close(close) => {
            if let Some(error) = &close.error {
                write_string_property("error", error, out)?;
            }
            if close.allow_reconnect {
                out.extend_from_slice(b",\"allowReconnect\":true");
            }
        }
        HubMessage::Ack { sequence_id } | HubMessage::Sequence { sequence_id } => {
            out.extend_from_slice(b",\"sequenceId\":");
            out.extend_from_slice(sequence_id.to_string().as_bytes());
        }
    }
    out.push(b'}');
    out.push(RECORD_SEPARATOR);
    Ok(())
}

fn write_headers(headers: &Headers, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if !headers.is_empty() {
        out.extend_from_slice(b",\"headers\":");
        serde_json::to_writer(&mut *out, headers)?;
    }
    Ok(())
}

fn write_string_property(name: &str, value: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    serde_json::to_writer(&mut *out, value)?;
    Ok(())
}

fn write_payload(payload: &Payload, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if payload.protocol() != Protocol::Json {
        return Err(EncodeError::ProtocolMismatch {
            expected: Protocol::Json,
            found: payload.protocol(),
        });
    }
    out.extend_from_slice(payload.as_bytes());
    Ok(())
}
