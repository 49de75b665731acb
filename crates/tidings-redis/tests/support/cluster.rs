//! A real three-master Redis Cluster for tests: three `redis-server`
//! processes in cluster mode on free ports, joined by `redis-cli --cluster
//! create`, gone when the test process ends.

use std::{
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

/// The cluster; its nodes are killed when it is dropped (or when the test
/// process ends: each node's wrapper shell kills it when stdin closes, and
/// forgets its configuration unless told `keep` first).
#[derive(Debug)]
pub(crate) struct RedisCluster {
    ports: Vec<u16>,
    nodes: Vec<(Child, ChildStdin)>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts three masters (no replicas, no persistence) and waits until
    /// every node reports `cluster_state:ok`.
    pub(crate) fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tidings-redis-cluster-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster's node files");
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let port = free_cluster_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let nodes = ports.iter().map(|&port| start_node(port, &dir)).collect();
        let cluster = RedisCluster { ports, nodes, dir };
        for &port in &cluster.ports {
            wait_for(port, "PONG", &["PING"]);
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap_or_else(|error| {
                panic!(
                    "redis-cli is needed to create the test Redis Cluster \
                     (Debian: the redis-tools package, which redis-server brings): {error}"
                )
            });
        assert!(created.success(), "redis-cli --cluster create failed");
        for &port in &cluster.ports {
            wait_for(port, "cluster_state:ok", &["CLUSTER", "INFO"]);
        }
        cluster
    }

    /// Kills node `index` at once (SIGKILL), keeping its cluster
    /// configuration for [`restart`](Self::restart).
    pub(crate) fn kill(&mut self, index: usize) {
        use std::io::Write;
        let (wrapper, stdin) = &mut self.nodes[index];
        let _ = stdin.write_all(b"keep\n");
        let _ = stdin.flush();
        let _ = wrapper.wait();
    }

    /// Starts node `index` again on its port, with its configuration: it
    /// rejoins the cluster with its slots (and no data).
    pub(crate) fn restart(&mut self, index: usize) {
        let port = self.ports[index];
        self.nodes[index] = start_node(port, &self.dir);
        wait_for(port, "PONG", &["PING"]);
        for &port in &self.ports {
            wait_for(port, "cluster_state:ok", &["CLUSTER", "INFO"]);
        }
    }

    /// The seed URLs of every node.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

/// A port that is free, and whose cluster bus port (10000 higher) is
/// free too; ports the kernel hands out are often too high for that.
fn free_cluster_port() -> u16 {
    use std::net::TcpListener;
    loop {
        let port = 20_000 + rand::random::<u16>() % 25_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

fn start_node(port: u16, dir: &std::path::Path) -> (Child, ChildStdin) {
    let script = format!(
        "redis-server --port {port} --bind 127.0.0.1 --cluster-enabled yes \
         --cluster-config-file nodes-{port}.conf --dir '{dir}' --save '' --appendonly no \
         --loglevel warning >/dev/null & pid=$!; echo $pid; read cmd; kill -9 $pid; \
         wait $pid 2>/dev/null; [ \"$cmd\" = keep ] && exit 0; \
         rm -f '{dir}/nodes-{port}.conf'; rmdir '{dir}' 2>/dev/null",
        dir = dir.display()
    );
    let (wrapper, stdin, _pid) = super::spawn_wrapped(&script);
    (wrapper, stdin)
}

/// Waits until `redis-cli -p port <command>` prints `expected`.
fn wait_for(port: u16, expected: &str, command: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(command)
            .output()
            .unwrap_or_else(|error| {
                panic!(
                    "redis-cli is needed to drive the test Redis Cluster \
                     (Debian: the redis-tools package, which redis-server brings): {error}"
                )
            });
        if String::from_utf8_lossy(&output.stdout).contains(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Redis node {port}: no {expected:?} from {command:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (mut wrapper, stdin) in self.nodes.drain(..) {
            drop(stdin);
            let _ = wrapper.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain connection to one node, for asking it about its own state.
pub(crate) fn node(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|client| client.get_connection())
        .expect("a connection to a cluster node")
}

/// `PUBSUB <subcommand> <channel>`'s count for one channel on one node.
pub(crate) fn pubsub_count(
    connection: &mut redis::Connection,
    subcommand: &str,
    channel: &str,
) -> i64 {
    let reply: Vec<redis::Value> = redis::cmd("PUBSUB")
        .arg(subcommand)
        .arg(channel)
        .query(connection)
        .expect("PUBSUB");
    match reply.get(1) {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("unexpected PUBSUB {subcommand} reply: {other:?}"),
    }
}

/// The hash slot of `name`, as the cluster computes it (`CLUSTER KEYSLOT`).
pub(crate) fn keyslot(connection: &mut redis::Connection, name: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(name)
        .query(connection)
        .expect("CLUSTER KEYSLOT")
}
