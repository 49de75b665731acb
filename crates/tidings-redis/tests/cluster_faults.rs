//! A Redis Cluster node fails: the shard holding the `all` channel is
//! killed and restarted while one server broadcasts. The other server's
//! client receives every message once, in order, after the recovery; the
//! sending server's own client never notices.

mod support;

use std::time::Duration;

use support::broadcast;
use tidings::testing::TestConnection;
use tidings_redis::{RedisBackplane, RedisOptions};

async fn backplane(urls: Vec<String>, prefix: &str) -> RedisBackplane {
    let options = RedisOptions::cluster(urls)
        .channel_prefix(prefix)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .heartbeat(Duration::from_millis(100), Duration::from_secs(2))
        .command_timeout(Duration::from_secs(1));
    let backplane = RedisBackplane::start(options).expect("backplane");
    assert!(backplane.wait_connected(Duration::from_secs(10)).await);
    backplane
}

/// The numbers `connection` receives until `last` (or a 15 s silence).
async fn numbers_until(connection: &mut TestConnection, last: u64) -> Vec<u64> {
    support::numbers_until(connection, last, Duration::from_secs(15)).await
}

/// The index of the node that has sharded subscribers of `channel`.
fn owner(urls: &[String], channel: &str) -> usize {
    let counts: Vec<i64> = urls
        .iter()
        .map(|url| {
            support::cluster::pubsub_count(&mut support::cluster::node(url), "SHARDNUMSUB", channel)
        })
        .collect();
    let owners: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] > 0).collect();
    assert_eq!(owners.len(), 1, "{channel} lives on one shard: {counts:?}");
    owners[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restart_loses_nothing_and_keeps_the_order() {
    let mut cluster = support::cluster::RedisCluster::start();
    let urls = cluster.urls();
    let prefix = format!("faults{:08x}.", rand::random::<u32>());
    let one = backplane(urls.clone(), &prefix).await;
    let two = backplane(urls.clone(), &prefix).await;
    // The whole pair stays bound to the end: dropping its receiver would
    // end the hub on server two.
    let mut pair = support::pair(&one, &two).await;

    for n in 1..=10 {
        broadcast(&pair.sender, n).await;
    }
    assert_eq!(
        numbers_until(&mut pair.remote, 10).await,
        (1..=10).collect::<Vec<_>>()
    );

    let shard = owner(&urls, &format!("{prefix}Faults.Hub:all"));
    cluster.kill(shard);
    for n in 11..=30 {
        broadcast(&pair.sender, n).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        one.stats().buffered > 0,
        "while the shard is away, its messages wait in the outbox"
    );
    // Local delivery does not wait for Redis.
    assert_eq!(
        numbers_until(&mut pair.local, 30).await,
        (1..=30).collect::<Vec<_>>()
    );
    cluster.restart(shard);
    for n in 31..=40 {
        broadcast(&pair.sender, n).await;
    }
    assert_eq!(
        numbers_until(&mut pair.remote, 40).await,
        (11..=40).collect::<Vec<_>>(),
        "every message once, in order, after the recovery"
    );
    assert!(
        pair.remote
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing twice"
    );
    let stats = one.stats();
    assert!(stats.connected);
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.buffered, 0);
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert!(two.stats().reconnects >= 1, "{:?}", two.stats());
}
