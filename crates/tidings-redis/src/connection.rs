//! The two shapes of Redis the backplane talks to, behind one type: a
//! single node (one multiplexed RESP3 connection, classic pub/sub) or a
//! Redis Cluster (a connection per node, routed by hash slot, sharded
//! pub/sub).
//!
//! Everything above this module sends commands through [`Connection`]
//! (it is a [`ConnectionLike`]) and asks it how to publish and subscribe;
//! only here do the two modes differ.
//!
//! In a cluster, a channel belongs to the shard that owns its hash slot:
//! `SPUBLISH` reaches only that shard's subscribers instead of being
//! broadcast to every node over the cluster bus, and `SSUBSCRIBE` names
//! channels of one slot per call (the connection routes each call to the
//! slot's owner and moves the subscription when the slot moves).

use std::collections::BTreeMap;

use futures_util::future::try_join_all;
use redis::{
    Cmd, Pipeline, PushInfo, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use tokio::sync::mpsc;

/// Where the backplane connects to.
pub(crate) enum Client {
    Node(redis::Client),
    Cluster(Box<ClusterClient>),
}

impl Client {
    /// A new connection whose pushed messages go to `pushes`.
    pub(crate) async fn connect(
        &self,
        pushes: mpsc::UnboundedSender<PushInfo>,
        timeout: std::time::Duration,
    ) -> RedisResult<Connection> {
        match self {
            Client::Node(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_push_sender(pushes)
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Node)
            }
            Client::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_push_sender(pushes)
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                client
                    .get_async_connection_with_config(config)
                    .await
                    .map(Connection::Cluster)
            }
        }
    }
}

/// A connection to a single node or to a cluster.
#[derive(Clone)]
pub(crate) enum Connection {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Connection {
    /// The command that publishes to a channel: `PUBLISH` on a single
    /// node, `SPUBLISH` (to the channel's shard only) on a cluster.
    pub(crate) fn publish_command(&self) -> &'static str {
        match self {
            Connection::Node(_) => "PUBLISH",
            Connection::Cluster(_) => "SPUBLISH",
        }
    }

    /// Subscribes to `channels` (sharded channels on a cluster).
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Connection::Node(connection) => connection.subscribe(channels).await,
            Connection::Cluster(connection) => {
                // One SSUBSCRIBE may only name channels of one slot.
                try_join_all(by_slot(channels).into_values().map(|group| {
                    let mut connection = connection.clone();
                    async move { connection.ssubscribe(group).await }
                }))
                .await
                .map(drop)
            }
        }
    }

    /// Unsubscribes from `channels`.
    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Connection::Node(connection) => connection.unsubscribe(channels).await,
            Connection::Cluster(connection) => {
                try_join_all(by_slot(channels).into_values().map(|group| {
                    let mut connection = connection.clone();
                    async move { connection.sunsubscribe(group).await }
                }))
                .await
                .map(drop)
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Node(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Node(connection) => connection.req_packed_commands(cmd, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Node(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

fn by_slot(channels: &[String]) -> BTreeMap<u16, Vec<&String>> {
    let mut groups: BTreeMap<u16, Vec<&String>> = BTreeMap::new();
    for channel in channels {
        groups.entry(slot(channel)).or_default().push(channel);
    }
    groups
}

/// The cluster hash slot of a key or channel: CRC16 (XMODEM) of its hash
/// tag — the part between the first `{` and the next `}`, if not empty —
/// or of the whole name, modulo 16384.
pub(crate) fn slot(name: &str) -> u16 {
    let bytes = name.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16(hashed) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::slot;

    #[test]
    fn slots_match_redis_cluster() {
        // Values of CLUSTER KEYSLOT.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        // An empty tag does not count: the whole name is hashed.
        assert_eq!(slot("foo{}{bar}"), slot_of_whole("foo{}{bar}"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
    }

    fn slot_of_whole(name: &str) -> u16 {
        super::crc16(name.as_bytes()) % 16384
    }
}
