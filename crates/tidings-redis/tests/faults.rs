//! Redis failures: a real `redis-server` is killed and restarted while one
//! server sends; the other server's clients receive every message once,
//! in order, after the recovery; local clients never notice; what exceeds
//! the outbox bound is dropped by the drop policy and counted; the
//! backplane is back promptly once Redis is; a server that has just started
//! already waits for the others to re-subscribe before it flushes.

mod support;

use std::{sync::Arc, time::Duration};

use serde_json::json;
use support::broadcast;
use tidings::{LifetimeManager, Metrics, testing::TestConnection};
use tidings_redis::{DropPolicy, RedisBackplane, RedisOptions};

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

/// Stops Redis under a sender with an outbox of five messages, broadcasts
/// 1..=12, restarts Redis: returns what the other server's client received
/// and the sender's drop count then, as the stats and the metrics tell it.
async fn overflow(policy: DropPolicy) -> (Vec<u64>, u64, String) {
    let redis = support::RedisServer::start();
    let metrics = Metrics::new();
    let one = RedisBackplane::start(
        options(&redis.url(), 5)
            .drop_policy(policy)
            .metrics(metrics.backplane().clone()),
    )
    .expect("backplane");
    assert!(one.wait_connected(Duration::from_secs(5)).await);
    let two = backplane(&redis.url(), 5).await;
    let sender: Arc<dyn LifetimeManager> = one.lifetime_manager("Faults.Hub");
    let receiver: Arc<dyn LifetimeManager> = two.lifetime_manager("Faults.Hub");
    let mut remote = TestConnection::new("remote", None);
    receiver.on_connected(remote.handle()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis.kill();
    // Down before sending: no batch is in flight, so the outcome does not
    // depend on when the publisher notices the loss.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while one.stats().connected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!one.stats().connected);
    for n in 1..=12 {
        broadcast(&sender, n).await;
    }
    assert_eq!(one.stats().dropped, 7);
    assert_eq!(one.stats().buffered, 5);
    redis.restart();
    let arrived = numbers_until(&mut remote, 12).await;
    // Room again in the outbox before the next message, which arrives and
    // drops nothing.
    assert_eq!(settled(&one).await, 0, "{:?}", one.stats());
    broadcast(&sender, 100).await;
    assert_eq!(numbers_until(&mut remote, 100).await, [100]);
    (arrived, one.stats().dropped, metrics.render())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_buffer_bound_drop_newest_keeps_the_first_and_counts_the_rest() {
    let (arrived, dropped, metrics) = overflow(DropPolicy::DropNewest).await;
    assert_eq!(arrived, [1, 2, 3, 4, 5]);
    assert_eq!(dropped, 7);
    assert!(
        metrics
            .lines()
            .any(|l| l == "tidings_backplane_messages_dropped_total 7"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_buffer_bound_drop_oldest_keeps_the_last_and_counts_the_rest() {
    let (arrived, dropped, metrics) = overflow(DropPolicy::DropOldest).await;
    assert_eq!(arrived, [8, 9, 10, 11, 12]);
    assert_eq!(dropped, 7);
    assert!(
        metrics
            .lines()
            .any(|l| l == "tidings_backplane_messages_dropped_total 7"),
        "{metrics}"
    );
}

#[test]
fn the_default_drop_policy_keeps_the_freshest() {
    assert_eq!(DropPolicy::default(), DropPolicy::DropOldest);
}

/// After an outage long enough for the reconnect backoff to have grown to
/// seconds, the backplane still publishes within a second of Redis
/// accepting connections again: while Redis cannot be reached, attempts
/// follow the probe interval, not the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backplane_is_back_within_a_second_of_redis() {
    let redis = support::RedisServer::start();
    let start = |url: String| async move {
        // The default backoff (100 ms doubling up to 5 s) and probe.
        let options = options(&url, 1000)
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5));
        let backplane = RedisBackplane::start(options).expect("backplane");
        assert!(backplane.wait_connected(Duration::from_secs(5)).await);
        backplane
    };
    let one = start(redis.url()).await;
    let two = start(redis.url()).await;
    let mut pair = support::pair(&one, &two).await;

    redis.kill();
    broadcast(&pair.sender, 1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!one.stats().connected && !two.stats().connected);
    let down_since = one.stats().since.expect("since");
    redis.restart();
    // restart() returns once Redis answers.
    let back = tokio::time::Instant::now();
    assert_eq!(numbers_until(&mut pair.remote, 1).await, [1]);
    let took = back.elapsed();
    assert!(took < Duration::from_secs(1), "the backplane took {took:?}");
    let stats = one.stats();
    assert!(stats.connected);
    assert!(stats.since.expect("since") > down_since, "{stats:?}");
}

/// A TCP proxy in front of Redis that can be shut (every connection through
/// it dropped, new ones refused) and opened again: one server loses Redis
/// for longer than the other.
struct Gate {
    url: String,
    open: Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Gate {
    async fn start(target: std::net::SocketAddr) -> Gate {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("redis://{}", listener.local_addr().expect("address"));
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (is_open, generations) = (Arc::clone(&open), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue;
                }
                let mut shut = generations.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = shut.changed() => {}
                    }
                });
            }
        });
        Gate {
            url,
            open,
            generation,
        }
    }

    fn shut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_younger_than_one_heartbeat_waits_for_the_others_after_an_outage() {
    let redis = support::RedisServer::start();
    let address = redis
        .url()
        .trim_start_matches("redis://")
        .parse()
        .expect("a host:port URL");
    let gate = Gate::start(address).await;
    // A heartbeat far longer than the test: whatever the servers know of
    // each other, they learnt from the first beat.
    let slow = |url: &str| {
        options(url, 1000)
            .heartbeat(Duration::from_secs(60), Duration::from_secs(120))
            .resubscribe_grace(Duration::from_secs(10))
    };
    // Server two is up first; server one, the sender, starts after it and
    // learns of it from its first beat, not one period later.
    let two = RedisBackplane::start(slow(&gate.url)).expect("backplane");
    assert!(two.wait_connected(Duration::from_secs(5)).await);
    let one = RedisBackplane::start(slow(&redis.url())).expect("backplane");
    assert!(one.wait_connected(Duration::from_secs(5)).await);
    let mut pair = support::pair(&one, &two).await;
    broadcast(&pair.sender, 1).await;
    assert_eq!(numbers_until(&mut pair.remote, 1).await, [1]);

    // Redis goes away for both; when it is back, server two stays cut off
    // a while longer, so it has not re-subscribed when server one could
    // flush what it buffered.
    gate.shut();
    redis.kill();
    for n in 2..=10 {
        broadcast(&pair.sender, n).await;
    }
    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !one.stats().connected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(one.stats().connected, "{:?}", one.stats());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gate.open();

    // Server one waited for server two to register again: nothing of the
    // outage is lost on the way.
    assert_eq!(
        numbers_until(&mut pair.remote, 10).await,
        (2..=10).collect::<Vec<_>>()
    );
}
