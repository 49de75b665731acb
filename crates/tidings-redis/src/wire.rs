//! The backplane's wire format: channel names and the MessagePack payloads
//! published on them, compatible with ASP.NET Core's
//! `Microsoft.AspNetCore.SignalR.StackExchangeRedis`.
//!
//! * Invocation envelope: `[excluded ids, {protocol → framed bytes}]`, or
//!   with a client result `[excluded, frames, invocation id, return channel]`.
//! * Group command: `[id, server, action (1 add, 2 remove), group, connection]`;
//!   its acknowledgement: `[id]`.
//! * Client-result answer: `[protocol, framed Completion]`.
//!
//! One extension, invisible to ASP.NET Core readers (they ignore a third
//! item unless there are four, and anything after the fourth): a trailing
//! map with the publishing server's id (`server`), its publish sequence
//! number (`seq`) and, for a message to several groups, the groups listed
//! before this one (`earlier`), and for a request to close the recipients
//! (whose frames are a Close message) its reason (`close`: a string, or
//! nil without one). Servers use it to skip their own messages
//! (they served their local connections already), to drop a message
//! published twice after a Redis failure, and to give a connection in
//! several of the groups one copy.

use bytes::Bytes;
use rmpv::Value;

/// The channel names of one hub (ASP.NET Core's `RedisChannels`).
#[derive(Debug, Clone)]
pub(crate) struct Channels {
    base: String,
}

impl Channels {
    /// `prefix` is prepended verbatim (StackExchange.Redis's
    /// `ChannelPrefix`), `hub` is the hub's name (.NET: its full type name).
    pub(crate) fn new(prefix: &str, hub: &str) -> Self {
        Channels {
            base: format!("{prefix}{hub}"),
        }
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn all(&self) -> String {
        format!("{}:all", self.base)
    }

    pub(crate) fn connection(&self, id: &str) -> String {
        format!("{}:connection:{id}", self.base)
    }

    pub(crate) fn group(&self, group: &str) -> String {
        format!("{}:group:{group}", self.base)
    }

    pub(crate) fn user(&self, user: &str) -> String {
        format!("{}:user:{user}", self.base)
    }

    pub(crate) fn group_management(&self) -> String {
        format!("{}:internal:groups", self.base)
    }

    pub(crate) fn ack(&self, server: &str) -> String {
        format!("{}:internal:ack:{server}", self.base)
    }

    pub(crate) fn return_results(&self, server: &str) -> String {
        format!("{}:internal:return:{server}", self.base)
    }
}

/// What a received message is for, by the channel it came on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChannelKind {
    All,
    Connection(String),
    Group(String),
    User(String),
    GroupManagement,
    Ack,
    Return,
}

/// The invocation envelope.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Envelope {
    pub excluded: Vec<String>,
    pub json: Option<Bytes>,
    pub msgpack: Option<Bytes>,
    /// A client result: the invocation id and the channel for the answer.
    pub result: Option<(String, String)>,
    /// The publishing server (tidings servers only).
    pub origin: Option<String>,
    /// The publishing server's sequence number of this publish.
    pub seq: Option<u64>,
    /// For a message to several groups: the groups before this one.
    pub earlier: Vec<String>,
    /// A request to close the recipients, with its reason.
    pub close: Option<Option<String>>,
}

/// A payload that is not what its channel carries.
#[derive(Debug, thiserror::Error)]
#[error("malformed backplane message: {0}")]
pub(crate) struct Malformed(&'static str);

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = rmp::encode::write_str(out, s);
}

fn write_array_len(out: &mut Vec<u8>, len: usize) {
    let _ = rmp::encode::write_array_len(out, len as u32);
}

impl Envelope {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            32 + self.json.as_ref().map_or(0, |b| b.len())
                + self.msgpack.as_ref().map_or(0, |b| b.len()),
        );
        let has_ext = self.origin.is_some()
            || self.seq.is_some()
            || !self.earlier.is_empty()
            || self.close.is_some();
        let len = match (&self.result, has_ext) {
            (None, false) => 2,
            (None, true) => 3,
            (Some(_), false) => 4,
            (Some(_), true) => 5,
        };
        write_array_len(&mut out, len);
        write_array_len(&mut out, self.excluded.len());
        for id in &self.excluded {
            write_str(&mut out, id);
        }
        let frames: Vec<(&str, &Bytes)> = [("json", &self.json), ("messagepack", &self.msgpack)]
            .into_iter()
            .filter_map(|(name, bytes)| bytes.as_ref().map(|b| (name, b)))
            .collect();
        let _ = rmp::encode::write_map_len(&mut out, frames.len() as u32);
        for (name, bytes) in frames {
            write_str(&mut out, name);
            let _ = rmp::encode::write_bin(&mut out, bytes);
        }
        if let Some((id, channel)) = &self.result {
            write_str(&mut out, id);
            write_str(&mut out, channel);
        }
        if has_ext {
            let entries = usize::from(self.origin.is_some())
                + usize::from(self.seq.is_some())
                + usize::from(!self.earlier.is_empty())
                + usize::from(self.close.is_some());
            let _ = rmp::encode::write_map_len(&mut out, entries as u32);
            if let Some(origin) = &self.origin {
                write_str(&mut out, "server");
                write_str(&mut out, origin);
            }
            if let Some(seq) = self.seq {
                write_str(&mut out, "seq");
                let _ = rmp::encode::write_uint(&mut out, seq);
            }
            if !self.earlier.is_empty() {
                write_str(&mut out, "earlier");
                write_array_len(&mut out, self.earlier.len());
                for group in &self.earlier {
                    write_str(&mut out, group);
                }
            }
            if let Some(reason) = &self.close {
                write_str(&mut out, "close");
                match reason {
                    Some(reason) => write_str(&mut out, reason),
                    None => {
                        let _ = rmp::encode::write_nil(&mut out);
                    }
                }
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        let items = read_array(bytes)?;
        if items.len() < 2 {
            return Err(Malformed("an invocation has at least two items"));
        }
        let mut envelope = Envelope {
            excluded: strings(&items[0]).ok_or(Malformed("excluded ids"))?,
            ..Default::default()
        };
        let Value::Map(frames) = &items[1] else {
            return Err(Malformed("the frames are not a map"));
        };
        for (name, bytes) in frames {
            let bytes = match bytes {
                Value::Binary(b) => Bytes::copy_from_slice(b),
                _ => return Err(Malformed("a frame is not binary")),
            };
            match name.as_str() {
                Some("json") => envelope.json = Some(bytes),
                Some("messagepack") => envelope.msgpack = Some(bytes),
                // Protocols this server does not speak (e.g. blazorpack).
                _ => {}
            }
        }
        let ext = if items.len() > 3 {
            let id = items[2].as_str().ok_or(Malformed("invocation id"))?;
            let channel = items[3].as_str().ok_or(Malformed("return channel"))?;
            envelope.result = Some((id.to_owned(), channel.to_owned()));
            items.get(4)
        } else {
            items.get(2)
        };
        if let Some(Value::Map(ext)) = ext {
            for (key, value) in ext {
                match key.as_str() {
                    Some("server") => envelope.origin = value.as_str().map(str::to_owned),
                    Some("seq") => envelope.seq = value.as_u64(),
                    Some("earlier") => envelope.earlier = strings(value).unwrap_or_default(),
                    Some("close") => envelope.close = Some(value.as_str().map(str::to_owned)),
                    _ => {}
                }
            }
        }
        Ok(envelope)
    }
}

/// Adding or removing a connection that lives on another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupAction {
    Add = 1,
    Remove = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupCommand {
    pub id: i32,
    pub server: String,
    pub action: GroupAction,
    pub group: String,
    pub connection_id: String,
}

impl GroupCommand {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        write_array_len(&mut out, 5);
        let _ = rmp::encode::write_sint(&mut out, i64::from(self.id));
        write_str(&mut out, &self.server);
        let _ = rmp::encode::write_uint(&mut out, self.action as u64);
        write_str(&mut out, &self.group);
        write_str(&mut out, &self.connection_id);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        let items = read_array(bytes)?;
        let [id, server, action, group, connection_id, ..] = items.as_slice() else {
            return Err(Malformed("a group command has five items"));
        };
        let action = match action.as_u64() {
            Some(1) => GroupAction::Add,
            Some(2) => GroupAction::Remove,
            _ => return Err(Malformed("unknown group action")),
        };
        let text = |v: &Value, what| v.as_str().map(str::to_owned).ok_or(Malformed(what));
        Ok(GroupCommand {
            id: id
                .as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or(Malformed("command id"))?,
            server: text(server, "server name")?,
            action,
            group: text(group, "group name")?,
            connection_id: text(connection_id, "connection id")?,
        })
    }
}

pub(crate) fn encode_ack(id: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    write_array_len(&mut out, 1);
    let _ = rmp::encode::write_sint(&mut out, i64::from(id));
    out
}

pub(crate) fn decode_ack(bytes: &[u8]) -> Result<i32, Malformed> {
    let items = read_array(bytes)?;
    items
        .first()
        .and_then(Value::as_i64)
        .and_then(|i| i32::try_from(i).ok())
        .ok_or(Malformed("an ack holds its command id"))
}

/// A client's answer to a client result, framed in its protocol.
pub(crate) fn encode_completion(protocol: &str, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 24);
    write_array_len(&mut out, 2);
    write_str(&mut out, protocol);
    let _ = rmp::encode::write_bin(&mut out, frame);
    out
}

pub(crate) fn decode_completion(bytes: &[u8]) -> Result<(String, Vec<u8>), Malformed> {
    let items = read_array(bytes)?;
    match items.as_slice() {
        [Value::String(protocol), Value::Binary(frame), ..] => Ok((
            protocol
                .as_str()
                .ok_or(Malformed("protocol name"))?
                .to_owned(),
            frame.clone(),
        )),
        _ => Err(Malformed("a completion is [protocol, bytes]")),
    }
}

fn read_array(mut bytes: &[u8]) -> Result<Vec<Value>, Malformed> {
    match rmpv::decode::read_value(&mut bytes) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(_) => Err(Malformed("not an array")),
        Err(_) => Err(Malformed("not MessagePack")),
    }
}

fn strings(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aspnet_core_broadcast_envelope() {
        // PUBLISH FunctionalTests.TestHub:all [ [], {"json": bin, "messagepack": bin} ]
        let json = Bytes::from_static(b"{\"type\":1,\"target\":\"M\",\"arguments\":[1]}\x1e");
        let msgpack = Bytes::from_static(b"\x09\x96\x01\x80\xc0\xa1M\x91\x01\x90");
        let envelope = Envelope {
            json: Some(json.clone()),
            msgpack: Some(msgpack.clone()),
            ..Default::default()
        };
        let bytes = envelope.encode();
        let mut expected = vec![0x92, 0x90, 0x82, 0xa4];
        expected.extend_from_slice(b"json");
        expected.extend_from_slice(&[0xc4, json.len() as u8]);
        expected.extend_from_slice(&json);
        expected.extend_from_slice(&[0xab]);
        expected.extend_from_slice(b"messagepack");
        expected.extend_from_slice(&[0xc4, msgpack.len() as u8]);
        expected.extend_from_slice(&msgpack);
        assert_eq!(bytes, expected);
        assert_eq!(Envelope::decode(&bytes).expect("decodes"), envelope);
    }

    #[test]
    fn close_requests_round_trip_with_and_without_reason() {
        for reason in [Some("maintenance".to_owned()), None] {
            let envelope = Envelope {
                excluded: vec!["a".into()],
                json: Some(Bytes::from_static(b"{\"type\":7}\x1e")),
                origin: Some("s1".into()),
                close: Some(reason),
                ..Default::default()
            };
            let decoded = Envelope::decode(&envelope.encode()).expect("decodes");
            assert_eq!(decoded, envelope);
        }
    }

    #[test]
    fn extension_and_client_result_items_round_trip() {
        let envelope = Envelope {
            excluded: vec!["a".into(), "b".into()],
            json: Some(Bytes::from_static(b"{}\x1e")),
            msgpack: None,
            result: Some(("id22".into(), "H:internal:return:s1".into())),
            origin: Some("s1".into()),
            seq: Some(7),
            earlier: vec!["g1".into()],
            close: None,
        };
        let decoded = Envelope::decode(&envelope.encode()).expect("decodes");
        assert_eq!(decoded, envelope);
        // Without a result, the extension is the third item.
        let plain = Envelope {
            result: None,
            ..envelope
        };
        let bytes = plain.encode();
        assert_eq!(bytes[0], 0x93);
        assert_eq!(Envelope::decode(&bytes).expect("decodes"), plain);
    }

    #[test]
    fn unknown_protocols_and_trailing_items_are_ignored() {
        // [ nil, {"blazorpack": bin}, "id", "chan", "extra" ]
        let mut bytes = vec![0x95, 0xc0, 0x81, 0xaa];
        bytes.extend_from_slice(b"blazorpack");
        bytes.extend_from_slice(&[0xc4, 0x01, 0x00, 0xa2]);
        bytes.extend_from_slice(b"id");
        bytes.extend_from_slice(&[0xa4]);
        bytes.extend_from_slice(b"chan");
        bytes.extend_from_slice(&[0xa5]);
        bytes.extend_from_slice(b"extra");
        let decoded = Envelope::decode(&bytes).expect("decodes");
        assert!(decoded.json.is_none() && decoded.msgpack.is_none());
        assert_eq!(decoded.result, Some(("id".into(), "chan".into())));
        assert!(Envelope::decode(&[0x91, 0x90]).is_err());
        assert!(Envelope::decode(b"garbage").is_err());
    }

    #[test]
    fn group_commands_acks_and_completions() {
        let command = GroupCommand {
            id: 7,
            server: "host_0123".into(),
            action: GroupAction::Add,
            group: "room".into(),
            connection_id: "Qx".into(),
        };
        let bytes = command.encode();
        // [7, "host_0123", 1, "room", "Qx"]
        let mut expected = vec![0x95, 0x07, 0xa9];
        expected.extend_from_slice(b"host_0123");
        expected.extend_from_slice(&[0x01, 0xa4]);
        expected.extend_from_slice(b"room");
        expected.extend_from_slice(&[0xa2]);
        expected.extend_from_slice(b"Qx");
        assert_eq!(bytes, expected);
        assert_eq!(GroupCommand::decode(&bytes).expect("decodes"), command);
        assert_eq!(encode_ack(7), [0x91, 0x07]);
        assert_eq!(decode_ack(&[0x91, 0xd2, 0, 0, 1, 0]).expect("int32"), 256);
        let completion = encode_completion("json", b"{}\x1e");
        assert_eq!(
            decode_completion(&completion).expect("decodes"),
            ("json".to_owned(), b"{}\x1e".to_vec())
        );
        assert!(GroupCommand::decode(&[0x93, 1, 2, 3]).is_err());
    }
}
