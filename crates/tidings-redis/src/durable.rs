//! The durability mode ([`RedisOptions::durable`](crate::RedisOptions::durable)):
//! what another server needs to resume a stateful connection whose server
//! died without handing it over (a crash, `kill -9`), kept in Redis for a
//! bounded time.
//!
//! Three things survive the server, under a digest of the connection's
//! secret token (the token itself is never stored):
//!
//! * **the record** (a hash): the connection's id, principal, protocol,
//!   groups, owning server, the next sequence id, the client messages
//!   processed, and a *position* — per publishing server, the last number
//!   of its messages that this connection's server had taken in (a
//!   snapshot when the connection started, raised by every journaled
//!   message's mark);
//! * **the journal** (a stream, entry ids = sequence ids): every numbered
//!   message, recorded before it is written to the socket
//!   (`tidings::Journal`), trimmed as the client acknowledges;
//! * **the publish logs** (one stream per server, trimmed by age): every
//!   message a server publishes, as published — what was sent to the dead
//!   server's connections while nobody received for them.
//!
//! The server that recovers the connection claims it (compare-and-set of
//! the owner), starts receiving for it (a hold, as in a handover), replays
//! the journal under its numbers, then appends what the publish logs hold
//! beyond the position for the connection's targets; what its hold kept
//! beyond that is delivered next, and everything later as usual. The
//! client drops by number what it already had: 0 lost, 0 duplicated.
//!
//! Limits: a single Redis node (the logs and records of a cluster would
//! span shards without a common order); a group change in the last instant
//! before the crash may not be recorded yet; the client messages the dead
//! server processed in its last second (before its next acknowledgement)
//! may be processed again; invocations running on the dead server end
//! without a result.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use bytes::Bytes;
use redis::Value;
use serde_json::json;
use tidings::{
    BoxFuture, ConnectionHandle, Journal, JournalEntry, Protocol, Recovered, SerializedMessage,
};

use crate::{
    RedisOptions,
    handover::Hold,
    link::now_ms,
    manager::HubCore,
    wire::{ChannelKind, Envelope},
};

/// A digest of a connection's token: the keys name it, never the token.
pub(crate) fn token_digest(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn record_key(options: &RedisOptions, token: &str) -> String {
    format!(
        "{}tidings:durable:{}",
        options.channel_prefix,
        token_digest(token)
    )
}

fn journal_key(options: &RedisOptions, token: &str) -> String {
    format!(
        "{}tidings:journal:{}",
        options.channel_prefix,
        token_digest(token)
    )
}

/// The publish log of server `origin`.
pub(crate) fn log_key(options: &RedisOptions, origin: &str) -> String {
    format!("{}tidings:log:{origin}", options.channel_prefix)
}

/// The servers that keep a publish log, scored by their last publish (ms).
pub(crate) fn logs_key(options: &RedisOptions) -> String {
    format!("{}tidings:logs", options.channel_prefix)
}

/// The mark of a message published by `origin` under number `seq`.
pub(crate) fn mark(origin: &str, seq: u64) -> Bytes {
    Bytes::from(format!("{origin} {seq}"))
}

fn parse_mark(mark: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(mark).ok()?;
    let (origin, seq) = text.rsplit_once(' ')?;
    Some((origin, seq.parse().ok()?))
}

/// A stateful connection's journal in Redis (see the module docs).
pub(crate) struct RedisJournal {
    core: Arc<HubCore>,
    /// Itself, for the writes its synchronous calls spawn.
    me: std::sync::Weak<RedisJournal>,
    /// The connection id.
    id: String,
    /// How long its keys live without renewal (ms).
    retention: i64,
    record: String,
    journal: String,
    /// Sends one pipeline at a time, in order; the record is created by
    /// the first.
    writes: tokio::sync::Mutex<Writes>,
    /// The last progress reported and the last one recorded.
    progress: parking_lot::Mutex<Progress>,
}

struct Writes {
    /// The commands that create the record, until they were sent.
    create: Option<redis::Pipeline>,
}

#[derive(Default)]
struct Progress {
    recorded: (u64, u64),
    /// When the keys' time to live was last renewed (ms; 0: never).
    renewed_at: u64,
    /// Whether the journal's stream, created by the first append, has
    /// been given its time to live.
    journal_expires: bool,
}

impl Progress {
    /// Whether the keys' time to live is due for renewal (a third of the
    /// retention after the last), noting it renewed if so: renewing on
    /// every write would double the commands per message.
    fn renew(&mut self, now: u64, retention: u64) -> bool {
        if self.renewed_at != 0 && now.saturating_sub(self.renewed_at) < retention / 3 {
            return false;
        }
        self.renewed_at = now;
        true
    }
}

impl RedisJournal {
    /// A journal for `connection`, whose record starts with this server's
    /// position now (the connection is not registered yet: nothing has
    /// reached it).
    pub(crate) fn new(
        core: &Arc<HubCore>,
        connection: &ConnectionHandle,
        token: &str,
        groups: &[String],
    ) -> Arc<Self> {
        let options = &core.link.options;
        let record = record_key(options, token);
        let journal = journal_key(options, token);
        let retention = retention_ms(options);
        let (own, seen) = core.link.position();
        let principal = connection.principal();
        let claims: Vec<(&str, &str)> = principal.claims().collect();
        let expires = principal.expires_at().and_then(|at| {
            at.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| u64::try_from(d.as_millis()).ok())
        });
        let mut fields: Vec<(String, String)> = vec![
            ("hub".into(), core.channels.base().to_owned()),
            ("id".into(), connection.id().to_owned()),
            ("owner".into(), core.link.server_id.clone()),
            (
                "principal".into(),
                json!({
                    "user": connection.user_id(),
                    "claims": claims,
                    "expires": expires,
                })
                .to_string(),
            ),
            ("protocol".into(), connection.protocol().name().to_owned()),
            ("groups".into(), json!(groups).to_string()),
            ("since".into(), now_ms().to_string()),
            ("next".into(), "1".into()),
            ("received".into(), "0".into()),
            (format!("p:{}", core.link.server_id), own.to_string()),
        ];
        for (origin, lanes) in seen {
            if let Some(seq) = lanes.values().max() {
                fields.push((format!("p:{origin}"), seq.to_string()));
            }
        }
        let mut create = redis::pipe();
        create.del(&[&record, &journal]).ignore();
        create.hset_multiple(&record, &fields).ignore();
        create.pexpire(&record, retention).ignore();
        let this = Arc::new_cyclic(|me| RedisJournal {
            core: Arc::clone(core),
            me: me.clone(),
            id: connection.id().to_owned(),
            retention,
            record,
            journal,
            writes: tokio::sync::Mutex::new(Writes {
                create: Some(create),
            }),
            progress: parking_lot::Mutex::new(Progress::default()),
        });
        core.journals
            .lock()
            .insert(connection.id().to_owned(), Arc::downgrade(&this));
        this
    }

    /// Sends `pipe` after the earlier ones (and the record's creation).
    async fn send(&self, pipe: redis::Pipeline) {
        let mut writes = self.writes.lock().await;
        let Some(mut connection) = self.core.link.connection() else {
            tracing::warn!(record = %self.record, "Redis is away: a stateful connection's messages are not recorded");
            return;
        };
        let timeout = self.core.link.options.command_timeout;
        if let Some(create) = &writes.create {
            match tokio::time::timeout(timeout, create.exec_async(&mut connection)).await {
                Ok(Ok(())) => writes.create = None,
                _ => {
                    tracing::warn!("a stateful connection's record could not be created");
                    return;
                }
            }
        }
        match tokio::time::timeout(timeout, pipe.exec_async(&mut connection)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "a stateful connection's messages could not be recorded");
            }
            Err(_) => tracing::warn!("recording a stateful connection's messages timed out"),
        }
    }

    /// Renews the time to live of its keys in `pipe`.
    fn expire(&self, pipe: &mut redis::Pipeline) {
        pipe.pexpire(&self.journal, self.retention).ignore();
        pipe.pexpire(&self.record, self.retention).ignore();
    }

    /// Records the connection's groups (after a change).
    pub(crate) fn set_groups(self: &Arc<Self>, groups: Vec<String>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut pipe = redis::pipe();
            pipe.hset(&this.record, "groups", json!(groups).to_string())
                .ignore();
            this.send(pipe).await;
        });
    }
}

impl Drop for RedisJournal {
    fn drop(&mut self) {
        // Forgotten when the connection's writer lets it go (the
        // connection ended, or moved to another server), unless a newer
        // journal of the same connection took its place.
        let mut journals = self.core.journals.lock();
        if journals
            .get(&self.id)
            .is_some_and(|entry| std::ptr::eq(entry.as_ptr(), self))
        {
            journals.remove(&self.id);
        }
    }
}

fn retention_ms(options: &RedisOptions) -> i64 {
    i64::try_from(options.durable.unwrap_or_default().as_millis()).unwrap_or(i64::MAX)
}

impl Journal for RedisJournal {
    fn append<'a>(&'a self, entries: &'a [JournalEntry]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(last) = entries.last() else {
                return;
            };
            let mut pipe = redis::pipe();
            let mut position: BTreeMap<&str, u64> = BTreeMap::new();
            for entry in entries {
                let mut xadd = redis::cmd("XADD");
                xadd.arg(&self.journal)
                    .arg(format!("{}-0", entry.sequence_id))
                    .arg("f")
                    .arg(entry.frame.as_ref());
                if let Some(mark) = &entry.mark {
                    xadd.arg("m").arg(mark.as_ref());
                    if let Some((origin, seq)) = parse_mark(mark) {
                        let at = position.entry(origin).or_default();
                        *at = (*at).max(seq);
                    }
                }
                pipe.add_command(xadd).ignore();
            }
            let mut fields: Vec<(String, String)> = position
                .into_iter()
                .map(|(origin, seq)| (format!("p:{origin}"), seq.to_string()))
                .collect();
            fields.push(("next".into(), (last.sequence_id + 1).to_string()));
            pipe.hset_multiple(&self.record, &fields).ignore();
            let renew = {
                let mut progress = self.progress.lock();
                let first = !std::mem::replace(&mut progress.journal_expires, true);
                progress.renew(now_ms(), self.retention.unsigned_abs()) || first
            };
            if renew {
                self.expire(&mut pipe);
            }
            self.send(pipe).await;
        })
    }

    fn progress(&self, first_unacknowledged: u64, received: u64) {
        let renew = {
            let mut progress = self.progress.lock();
            let renew = progress.renew(now_ms(), self.retention.unsigned_abs());
            // Unchanged, and the keys' time to live not due: nothing to do.
            if progress.recorded == (first_unacknowledged, received) && !renew {
                return;
            }
            progress.recorded = (first_unacknowledged, received);
            renew
        };
        let Some(this) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("XTRIM")
                .arg(&this.journal)
                .arg("MINID")
                .arg(format!("{first_unacknowledged}-0"))
                .ignore();
            pipe.hset(&this.record, "received", received).ignore();
            if renew {
                this.expire(&mut pipe);
            }
            this.send(pipe).await;
        });
    }

    fn end(&self) {
        // (It leaves the hub's table when dropped.)
        let Some(this) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            // Only this server's record: a connection that moved on has a
            // new owner, whose record this must not delete.
            let script = redis::Script::new(
                "if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then \
                 return redis.call('DEL', KEYS[1], KEYS[2]) end return 0",
            );
            let mut invocation = script.prepare_invoke();
            invocation
                .key(&this.record)
                .key(&this.journal)
                .arg(&this.core.link.server_id);
            let _writes = this.writes.lock().await;
            if let Some(mut connection) = this.core.link.connection() {
                let _ = tokio::time::timeout(
                    this.core.link.options.command_timeout,
                    invocation.invoke_async::<Value>(&mut connection),
                )
                .await;
            }
        });
    }
}

/// A record's fields.
type Fields = HashMap<String, Vec<u8>>;

fn text<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields.get(name).and_then(|v| std::str::from_utf8(v).ok())
}

fn number(fields: &Fields, name: &str) -> Option<u64> {
    text(fields, name)?.parse().ok()
}

/// A message the publish logs hold for the recovered connection.
struct Missed {
    at: u64,
    origin: String,
    seq: u64,
    frame: Bytes,
}

impl HubCore {
    /// Records the groups of local connection `id` in its journal's
    /// record, if it has one.
    pub(crate) fn journal_groups(&self, id: &str) {
        let journal = self
            .journals
            .lock()
            .get(id)
            .and_then(std::sync::Weak::upgrade);
        if let Some(journal) = journal {
            journal.set_groups(self.local.groups_of(id));
        }
    }

    /// Recovers the stateful connection of `token` for this server (see
    /// the module docs): claims it, holds it, and reads what it is owed.
    pub(crate) async fn recover(self: &Arc<Self>, token: &str) -> Option<Recovered> {
        let options = &self.link.options;
        options.durable?;
        let mut connection = self.link.connection()?;
        let timeout = options.command_timeout;
        let record = record_key(options, token);
        let fields: Fields = tokio::time::timeout(
            timeout,
            redis::cmd("HGETALL")
                .arg(&record)
                .query_async(&mut connection),
        )
        .await
        .ok()?
        .ok()?;
        if text(&fields, "hub") != Some(self.channels.base()) {
            return None;
        }
        let owner = text(&fields, "owner")?.to_owned();
        if owner == self.link.server_id {
            return None;
        }
        // One server recovers it: the first to replace the owner.
        let claim = redis::Script::new(
            "if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then \
             redis.call('HSET', KEYS[1], 'owner', ARGV[2]) return 1 end return 0",
        );
        let mut invocation = claim.prepare_invoke();
        invocation
            .key(&record)
            .arg(&owner)
            .arg(&self.link.server_id);
        let claimed: i64 = tokio::time::timeout(timeout, invocation.invoke_async(&mut connection))
            .await
            .ok()?
            .ok()?;
        if claimed != 1 {
            return None;
        }
        let id = text(&fields, "id")?.to_owned();
        let principal: serde_json::Value =
            serde_json::from_str(text(&fields, "principal")?).ok()?;
        let user_id = principal["user"].as_str().map(str::to_owned);
        let claims: Vec<(String, String)> =
            serde_json::from_value(principal["claims"].clone()).ok()?;
        let protocol = Protocol::from_name(text(&fields, "protocol")?)?;
        let groups: Vec<String> = serde_json::from_str(text(&fields, "groups")?).ok()?;
        let since = number(&fields, "since")?;
        let next = number(&fields, "next")?;
        let received = number(&fields, "received").unwrap_or(0);
        let mut position: HashMap<String, u64> = fields
            .iter()
            .filter_map(|(name, value)| {
                let origin = name.strip_prefix("p:")?;
                let seq = std::str::from_utf8(value).ok()?.parse().ok()?;
                Some((origin.to_owned(), seq))
            })
            .collect();

        // Receiving for it from now on: whatever the logs do not hold yet
        // is kept aside.
        let handover: &dyn tidings::Handover =
            &crate::RedisLifetimeManager::from_core(Arc::clone(self));
        if !handover.hold(&id, user_id.as_deref(), &groups).await {
            return None;
        }
        let read = async {
            let journal = self.read_journal(&mut connection, token, next).await?;
            let missed = self
                .read_logs(
                    &mut connection,
                    (&id, user_id.as_deref(), &groups),
                    since,
                    &position,
                    protocol,
                )
                .await?;
            Some((journal, missed))
        };
        let Some(((first_id, mut frames), missed)) =
            tokio::time::timeout(timeout * 4, read).await.ok().flatten()
        else {
            handover.unhold(&id);
            tracing::warn!(connection_id = %id, "a recorded connection could not be read back");
            return None;
        };
        let replayed = frames.len();
        for message in &missed {
            frames.push(message.frame.clone());
            let at = position.entry(message.origin.clone()).or_default();
            *at = (*at).max(message.seq);
        }
        tracing::debug!(connection_id = %id, replayed, missed = missed.len(), "connection recovered");
        let origins: serde_json::Map<String, serde_json::Value> = position
            .into_iter()
            .map(|(origin, seq)| (origin, json!({ "0": seq })))
            .collect();
        Some(Recovered {
            id,
            user_id,
            claims,
            expires_at_ms: principal["expires"].as_u64(),
            protocol,
            groups,
            first_id,
            frames,
            received,
            position: json!({ "server": "", "own": 0, "origins": origins }),
        })
    }

    /// The journal's frames and the sequence id of the first; `next` when
    /// it is empty. `None` if it has a hole.
    async fn read_journal(
        &self,
        connection: &mut crate::connection::Connection,
        token: &str,
        next: u64,
    ) -> Option<(u64, Vec<Bytes>)> {
        let key = journal_key(&self.link.options, token);
        let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(connection)
            .await
            .ok()?;
        let mut first = None;
        let mut frames = Vec::with_capacity(entries.len());
        for (entry_id, fields) in entries {
            let sequence_id: u64 = entry_id.split('-').next()?.parse().ok()?;
            let expected = *first.get_or_insert(sequence_id) + frames.len() as u64;
            if sequence_id != expected {
                return None;
            }
            frames.push(Bytes::from(fields.get("f")?.clone()));
        }
        Some((first.unwrap_or(next), frames))
    }

    /// What the publish logs hold for the connection `(id, user, groups)`
    /// beyond `position`, published since `since` (ms), in its protocol,
    /// oldest first.
    async fn read_logs(
        &self,
        connection: &mut crate::connection::Connection,
        (id, user, groups): (&str, Option<&str>, &[String]),
        since: u64,
        position: &HashMap<String, u64>,
        protocol: Protocol,
    ) -> Option<Vec<Missed>> {
        let options = &self.link.options;
        // Whom a logged message reaches: as a hold decides for what arrives live.
        let held = Hold::new(user.map(str::to_owned), groups.to_vec());
        let mut kinds: HashMap<String, ChannelKind> = HashMap::new();
        kinds.insert(self.channels.all(), ChannelKind::All);
        kinds.insert(
            self.channels.connection(id),
            ChannelKind::Connection(id.to_owned()),
        );
        if let Some(user) = user {
            kinds.insert(self.channels.user(user), ChannelKind::User(user.to_owned()));
        }
        for group in groups {
            kinds.insert(
                self.channels.group(group),
                ChannelKind::Group(group.clone()),
            );
        }
        let origins: Vec<String> = redis::cmd("ZRANGE")
            .arg(logs_key(options))
            .arg(since.saturating_sub(retention_ms(options).unsigned_abs()))
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(connection)
            .await
            .ok()?;
        let mut missed = Vec::new();
        for origin in origins {
            let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
                .arg(log_key(options, &origin))
                .arg(since)
                .arg("+")
                .query_async(connection)
                .await
                .ok()?;
            let last = position.get(&origin).copied().unwrap_or(0);
            for (entry_id, fields) in entries {
                let at: u64 = entry_id
                    .split('-')
                    .next()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let (Some(channel), Some(payload)) = (fields.get("c"), fields.get("p")) else {
                    continue;
                };
                let Some(kind) = std::str::from_utf8(channel).ok().and_then(|c| kinds.get(c))
                else {
                    continue;
                };
                let Ok(envelope) = Envelope::decode(payload) else {
                    continue;
                };
                let Some(seq) = envelope.seq else {
                    continue;
                };
                if seq <= last || envelope.close.is_some() || !held.receives(id, kind, &envelope) {
                    continue;
                }
                let message = SerializedMessage::from_frames(envelope.json, envelope.msgpack);
                let Some(frame) = message.frame(protocol) else {
                    continue;
                };
                missed.push(Missed {
                    at,
                    origin: origin.clone(),
                    seq,
                    frame,
                });
            }
        }
        missed.sort_by(|a, b| (a.at, &a.origin, a.seq).cmp(&(b.at, &b.origin, b.seq)));
        Some(missed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_to_live_is_renewed_at_first_then_every_third_of_the_retention() {
        let mut progress = Progress::default();
        assert!(progress.renew(1_000, 60_000), "the first write sets it");
        assert!(!progress.renew(1_001, 60_000));
        assert!(!progress.renew(20_999, 60_000));
        assert!(progress.renew(21_000, 60_000));
        assert!(!progress.renew(21_500, 60_000));
    }

    #[test]
    fn a_mark_names_its_publisher_and_number() {
        let marked = mark("server-a", 42);
        assert_eq!(parse_mark(&marked), Some(("server-a", 42)));
        assert_eq!(parse_mark(b"no-number"), None);
    }

    #[test]
    fn a_group_message_reaches_a_member_once() {
        let held = Hold::new(None, vec!["a".to_owned(), "b".to_owned()]);
        let envelope = Envelope {
            earlier: vec!["a".to_owned()],
            ..Default::default()
        };
        // Sent to a, then b: the member of both got it through a.
        assert!(!held.receives("c1", &ChannelKind::Group("b".into()), &envelope));
        assert!(held.receives("c1", &ChannelKind::Group("a".into()), &Envelope::default()));
        let excluded = Envelope {
            excluded: vec!["c1".to_owned()],
            ..Default::default()
        };
        assert!(!held.receives("c1", &ChannelKind::All, &excluded));
        assert!(held.receives("c2", &ChannelKind::All, &excluded));
    }
}
