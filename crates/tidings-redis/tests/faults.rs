//! Redis failures: a real `redis-server` is killed and restarted while one
//! server sends; the other server's clients receive every message once,
//! in order, after the recovery; local clients never notice; what exceeds
//! the outbox bound is counted.

mod support;

use std::{sync::Arc, time::Duration};

use serde_json::json;
use support::broadcast;
use tidings::{LifetimeManager, testing::TestConnection};
use tidings_redis::{RedisBackplane, RedisOptions};

fn options(url: &str, buffer: usize) -> RedisOptions {
    RedisOptions::new(url)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .heartbeat(Duration::from_millis(100), Duration::from_secs(2))
        .command_timeout(Duration::from_secs(1))
        .buffer(buffer, 1 << 20)
}

async fn backplane(url: &str, buffer: usize) -> RedisBackplane {
    let backplane = RedisBackplane::start(options(url, buffer)).expect("backplane");
    assert!(backplane.wait_connected(Duration::from_secs(5)).await);
    backplane
}

/// Waits until `backplane`'s outbox is empty (or a deadline passed).
///
/// A receiver seeing a message does not mean its publisher has seen Redis
/// accept it: under load the publish can time out on the client side after
/// Redis delivered it, and the publisher then keeps it (and sends it again,
/// which receivers drop as a duplicate). Tests that count what the outbox
/// holds wait for it to settle first.
async fn settled(backplane: &RedisBackplane) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let buffered = backplane.stats().buffered;
        if buffered == 0 || tokio::time::Instant::now() >= deadline {
            return buffered;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The numbers `connection` receives until `last` (or a 10 s silence).
async fn numbers_until(connection: &mut TestConnection, last: u64) -> Vec<u64> {
    support::numbers_until(connection, last, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_that_fits_the_buffer() {
    let redis = support::RedisServer::start();
    let one = backplane(&redis.url(), 1000).await;
    let two = backplane(&redis.url(), 1000).await;
    // The whole pair stays bound to the end: dropping its receiver would
    // end the hub on server two.
    let mut pair = support::pair(&one, &two).await;

    for n in 1..=20 {
        broadcast(&pair.sender, n).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    redis.kill();
    for n in 21..=60 {
        broadcast(&pair.sender, n).await;
        // Local delivery goes on while Redis is away.
        let got = pair.local.next().await;
        assert_eq!(got.arguments, [json!(n - 20)]);
    }
    // The loss of the connection is noticed asynchronously (a slow machine
    // may not have done so after forty local sends).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while one.stats().connected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!one.stats().connected);
    assert!(one.stats().buffered > 0, "{:?}", one.stats());
    redis.restart();
    for n in 61..=80 {
        broadcast(&pair.sender, n).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let expected: Vec<u64> = (1..=80).collect();
    assert_eq!(numbers_until(&mut pair.remote, 80).await, expected);
    let rest = numbers_until(&mut pair.local, 80).await;
    assert_eq!(rest, (41..=80).collect::<Vec<_>>());
    assert_eq!(settled(&one).await, 0, "{:?}", one.stats());
    let stats = one.stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert!(two.stats().reconnects >= 1);
    // Nothing more arrives: every message came once.
    assert!(
        pair.remote
            .next_within(Duration::from_millis(200))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_the_buffer_bound_are_dropped_and_counted() {
    let redis = support::RedisServer::start();
    let one = backplane(&redis.url(), 5).await;
    let two = backplane(&redis.url(), 5).await;
    let sender: Arc<dyn LifetimeManager> = one.lifetime_manager("Faults.Hub");
    let receiver: Arc<dyn LifetimeManager> = two.lifetime_manager("Faults.Hub");
    let mut remote = TestConnection::new("remote", None);
    receiver.on_connected(remote.handle()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis.kill();
    for n in 1..=12 {
        broadcast(&sender, n).await;
    }
    assert_eq!(one.stats().dropped, 7);
    assert_eq!(one.stats().buffered, 5);
    redis.restart();
    // The five that fitted arrive after the recovery.
    assert_eq!(numbers_until(&mut remote, 5).await, [1, 2, 3, 4, 5]);
    // Room again in the outbox before the next message.
    assert_eq!(settled(&one).await, 0, "{:?}", one.stats());
    broadcast(&sender, 100).await;
    assert_eq!(numbers_until(&mut remote, 100).await, [100]);
    assert_eq!(one.stats().dropped, 7);
}
