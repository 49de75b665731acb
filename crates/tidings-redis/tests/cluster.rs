//! The backplane on a real three-master Redis Cluster: the lifetime-manager
//! specification with several backplanes on one cluster, and checks, on
//! the nodes themselves, that channel messages travel by sharded pub/sub.

mod support;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use support::cluster::{keyslot, node, pubsub_count as count};
use tidings::{
    BoxFuture, LifetimeManager, SerializedMessage, Target,
    testing::{Backend, TestConnection},
};
use tidings_redis::{RedisBackplane, RedisOptions};

fn cluster() -> &'static support::cluster::RedisCluster {
    static CLUSTER: OnceLock<support::cluster::RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(support::cluster::RedisCluster::start)
}

fn options(prefix: &str) -> RedisOptions {
    RedisOptions::cluster(cluster().urls())
        .channel_prefix(prefix)
        .ack_timeout(Duration::from_secs(5))
}

async fn connect(prefix: &str) -> RedisBackplane {
    let backplane = RedisBackplane::start(options(prefix)).expect("backplane");
    assert!(
        backplane.wait_connected(Duration::from_secs(10)).await,
        "the backplane did not connect to the cluster"
    );
    backplane
}

/// Each call of `servers` is a new set of servers under a prefix of its own.
struct ClusterBackend {
    backplanes: Mutex<Vec<RedisBackplane>>,
}

impl Backend for ClusterBackend {
    fn servers(&self, n: usize) -> BoxFuture<'_, Vec<Arc<dyn LifetimeManager>>> {
        Box::pin(async move {
            let prefix = format!("spec{:08x}.", rand::random::<u32>());
            let mut managers: Vec<Arc<dyn LifetimeManager>> = Vec::new();
            for _ in 0..n {
                let backplane = connect(&prefix).await;
                managers.push(backplane.lifetime_manager("Spec.Hub"));
                self.backplanes.lock().expect("lock").push(backplane);
            }
            managers
        })
    }

    // Each channel lives on the node of its hash slot: a group's messages
    // and the messages to all travel through different nodes.
    fn ordered_across_targets(&self) -> bool {
        false
    }
}

async fn backend() -> ClusterBackend {
    cluster();
    ClusterBackend {
        backplanes: Mutex::new(Vec::new()),
    }
}

tidings::lifetime_manager_spec!(backend());

/// Which third of the slots (as `redis-cli --cluster create` splits them
/// over three masters) holds `slot`.
fn third_of(slot: u16) -> u16 {
    match slot {
        0..=5460 => 0,
        5461..=10922 => 1,
        _ => 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_messages_travel_by_sharded_pub_sub_spread_over_the_shards() {
    let prefix = format!("shard{:08x}.", rand::random::<u32>());
    let hub = "Shard.Hub";
    // One group in each third of the slots: `redis-cli --cluster create`
    // gives each of the three masters one third.
    let mut asked = node(&cluster().urls()[0]);
    let mut slot = |name: &str| keyslot(&mut asked, name);
    let mut groups: Vec<String> = Vec::new();
    for third in 0..3u16 {
        let group = (0u32..)
            .map(|i| format!("room{i}"))
            .find(|g| third_of(slot(&format!("{prefix}{hub}:group:{g}"))) == third)
            .expect("a group name");
        groups.push(group);
    }
    let one = connect(&prefix).await;
    let two = connect(&prefix).await;
    let sender: Arc<dyn LifetimeManager> = one.lifetime_manager(hub);
    let receiver: Arc<dyn LifetimeManager> = two.lifetime_manager(hub);
    let mut member = TestConnection::new("member", Some("alice"));
    receiver.on_connected(member.handle()).await;
    for group in &groups {
        // Added through the other server: the command and its
        // acknowledgement travel over sharded channels too.
        sender
            .add_to_group("member", group)
            .await
            .expect("group add through the other server");
    }
    for (n, group) in groups.iter().enumerate() {
        let message = SerializedMessage::invocation("Room", (n,));
        sender
            .send(&Target::Group(group.clone()), Arc::new(message))
            .await
            .expect("send");
    }
    let message = SerializedMessage::invocation("Everyone", ());
    sender
        .send(&Target::All, Arc::new(message))
        .await
        .expect("send");
    // Each arrives once; messages of different shards travel over
    // different connections, so their relative order is not asserted.
    let mut received = Vec::new();
    for _ in 0..=groups.len() {
        let message = member.next().await;
        received.push(format!("{}{:?}", message.target, message.arguments));
    }
    received.sort();
    assert_eq!(
        received,
        [
            "Everyone[]",
            "Room[Number(0)]",
            "Room[Number(1)]",
            "Room[Number(2)]"
        ]
    );
    assert!(
        member
            .next_within(Duration::from_millis(200))
            .await
            .is_none(),
        "nothing twice"
    );

    let urls = cluster().urls();
    let mut nodes: Vec<redis::Connection> = urls.iter().map(|u| node(u)).collect();
    let mut owners = HashSet::new();
    for group in &groups {
        let channel = format!("{prefix}{hub}:group:{group}");
        let shard: Vec<i64> = nodes
            .iter_mut()
            .map(|c| count(c, "SHARDNUMSUB", &channel))
            .collect();
        let classic: Vec<i64> = nodes
            .iter_mut()
            .map(|c| count(c, "NUMSUB", &channel))
            .collect();
        assert_eq!(
            shard.iter().sum::<i64>(),
            1,
            "{channel}: one sharded subscriber (the member's server), on its shard only: {shard:?}"
        );
        assert_eq!(classic, [0, 0, 0], "{channel}: no classic subscriber");
        owners.insert(shard.iter().position(|&n| n == 1));
    }
    assert_eq!(owners.len(), 3, "the group channels live on three shards");
    // Both servers listen to `all`, on its shard.
    let all = format!("{prefix}{hub}:all");
    let shard: i64 = nodes
        .iter_mut()
        .map(|c| count(c, "SHARDNUMSUB", &all))
        .sum();
    assert_eq!(shard, 2);
    // Nothing of this application uses classic pub/sub on any node.
    for connection in &mut nodes {
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(format!("{prefix}*"))
            .query(connection)
            .expect("PUBSUB CHANNELS");
        assert!(channels.is_empty(), "classic channels: {channels:?}");
    }
    // Presence works across the shards' keys.
    let members = sender.group_members(&groups[0]).await.expect("presence");
    assert_eq!(members.len(), 1);
    assert_eq!(
        sender.connections_of_user("alice").await.expect("presence"),
        ["member"]
    );
}
