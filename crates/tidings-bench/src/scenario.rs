//! What a run does, as exchanged between the coordinating process and its
//! worker processes (JSON lines on the workers' stdin and stdout).

use serde::{Deserialize, Serialize};

use crate::conn::{Endpoint, ServerKind};

/// The scenarios of the load generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scenario {
    /// N connections each invoke `Echo` and await the answer, in a loop.
    Echo,
    /// N listeners, one sender: every message goes to every listener.
    Broadcast,
    /// Listeners in groups of K, one sender per group.
    Group,
    /// Connection storm: connect, handshake, close, as fast as possible.
    Connect,
    /// Hold N idle connections; the server's RSS per connection is read.
    Idle,
    /// A broadcast through the Redis backplane: listeners spread over one
    /// server, then over three (suite only; the suite starts `redis-server`).
    Cluster,
    /// Many connections over a cluster: listeners in groups (spread over
    /// every server), one sender per group on the first server; phases send
    /// either to the groups or one broadcast to everyone (its own
    /// subcommand, not part of the suite).
    #[value(skip)]
    Million,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Echo => "echo",
            Scenario::Broadcast => "broadcast",
            Scenario::Group => "group",
            Scenario::Connect => "connect",
            Scenario::Idle => "idle",
            Scenario::Cluster => "cluster",
            Scenario::Million => "million",
        }
    }

    /// Whether connections are fan-out listeners with senders.
    pub(crate) fn is_fanout(self) -> bool {
        matches!(
            self,
            Scenario::Broadcast | Scenario::Group | Scenario::Cluster | Scenario::Million
        )
    }
}

/// The part of a run one worker process carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    pub endpoint: Endpoint,
    pub scenario: Scenario,
    /// Global index of this worker's first connection.
    pub first: usize,
    /// How many connections (listeners, for fan-out) this worker opens.
    pub count: usize,
    /// Connections of the whole run.
    pub total: usize,
    /// Listeners per group (fan-out); the whole run for a broadcast.
    pub group_size: usize,
    /// How many source addresses (127.0.0.2, …) to spread connections over.
    pub sources: usize,
    /// Bytes of padding in each message.
    pub payload: usize,
    /// Connections opened at once.
    pub connect_concurrency: usize,
    /// How often each connection sends a Ping, in milliseconds.
    #[serde(default = "default_keep_alive_ms")]
    pub keep_alive_ms: u64,
    /// Many-connections run: each group's listeners are spread over this
    /// many servers (consecutive from the group's number); 0 spreads every
    /// group over all of them.
    #[serde(default)]
    pub group_servers: usize,
}

/// The clients' keep-alive interval, as shipped by the official clients.
pub(crate) const DEFAULT_KEEP_ALIVE_MS: u64 = 15_000;

fn default_keep_alive_ms() -> u64 {
    DEFAULT_KEEP_ALIVE_MS
}

impl WorkerSpec {
    pub(crate) fn groups(&self) -> usize {
        self.total.div_ceil(self.group_size.max(1)).max(1)
    }

    /// The group a listener belongs to.
    pub(crate) fn group_of(&self, index: usize) -> usize {
        index / self.group_size.max(1)
    }

    /// The groups whose sender this worker owns: the sender of a group lives
    /// with the group's first listener.
    pub(crate) fn sender_groups(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.groups()).filter(|g| {
            let first = g * self.group_size.max(1);
            first >= self.first && first < self.first + self.count
        })
    }

    /// Which server (an index into the endpoint's servers, the first one
    /// 0) a listener connects to: round robin, or, when each group is held
    /// by a few servers only, round robin over the group's servers.
    pub(crate) fn listener_server(&self, index: usize) -> usize {
        server_of_listener(
            index,
            self.group_size,
            self.endpoint.peers.len() + 1,
            self.group_servers,
        )
    }

    pub(crate) fn group_name(&self, group: usize) -> String {
        match self.scenario {
            Scenario::Broadcast | Scenario::Cluster => "all".to_owned(),
            _ => format!("g{group}"),
        }
    }

    /// The path (and query) a connection upgrades at.
    pub(crate) fn path(&self, role: Role) -> String {
        match (self.endpoint.kind, role) {
            (ServerKind::Tidings, _) => self.endpoint.hub_path.clone(),
            (ServerKind::Raw | ServerKind::RawTws, Role::Listener(g)) => {
                format!("/fanout?group={}", self.group_name(g))
            }
            (ServerKind::Raw | ServerKind::RawTws, Role::Sender(g)) => {
                format!("/fanout?group={}&send=1", self.group_name(g))
            }
            (ServerKind::Raw | ServerKind::RawTws, Role::Echo) => "/echo".to_owned(),
        }
    }
}

/// What one connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Echo,
    Listener(usize),
    Sender(usize),
}

/// One measured phase over the connections a worker holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    Echo {
        duration_ms: u64,
        warmup_ms: u64,
        /// Each connection stops after this many echoes (or at the end of
        /// the phase, whichever comes first), and the phase ends when all
        /// have: a fixed amount of work, for instruction counts.
        #[serde(default)]
        per_connection: Option<u64>,
    },
    Fanout {
        /// Messages per second, all senders together.
        rate: f64,
        duration_ms: u64,
        /// How long to wait for late deliveries after the last send.
        drain_ms: u64,
        /// Only the first group's sender sends, to everyone (`Clients.All`
        /// but itself) instead of to its group: every listener gets every
        /// message.
        #[serde(default)]
        broadcast: bool,
    },
    Connect {
        duration_ms: u64,
        concurrency: usize,
    },
    /// Nothing to do: the connections are held while the server is measured.
    Hold,
    /// The connections stay idle (keep-alives only) for this long.
    Wait { duration_ms: u64 },
}

/// The server index of listener `index` (see [`WorkerSpec::listener_server`]);
/// a group's sender goes to its group's first server, `group % servers`.
pub(crate) fn server_of_listener(
    index: usize,
    group_size: usize,
    servers: usize,
    group_servers: usize,
) -> usize {
    let servers = servers.max(1);
    if group_servers == 0 || group_servers >= servers {
        return index % servers;
    }
    let group = index / group_size.max(1);
    (group + index % group_servers) % servers
}

impl Phase {
    /// Messages sender `sender` (of `senders`) sends in a fan-out phase:
    /// the phase's messages (at least one) shared out as evenly as they
    /// go, the remainder to senders spread over the range (their send
    /// times are offset by their number, so the rate stays even). Every
    /// listener knows from it how many to expect.
    pub(crate) fn messages_of(rate: f64, duration_ms: u64, senders: usize, sender: usize) -> u64 {
        // (Callers pass 1 sender for a broadcast phase: one sends them all.)
        let senders = senders.max(1) as u64;
        let total = ((rate * duration_ms as f64 / 1000.0).round() as u64).max(1);
        let (each, rest) = (total / senders, total % senders);
        let sender = sender as u64;
        each + ((sender + 1) * rest / senders - sender * rest / senders)
    }
}

/// A command to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Command {
    Run {
        id: u32,
        phase: Phase,
        /// When the phase starts, in microseconds since the Unix epoch (the
        /// same clock in every process of the machine).
        start_unix_us: u64,
    },
    Stop,
}

/// A line from a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Event {
    Connecting {
        done: usize,
    },
    Ready {
        connected: usize,
        failed: usize,
        first_error: Option<String>,
    },
    Progress {
        ops: u64,
        errors: u64,
    },
    Result(PhaseResult),
}

/// What one worker measured in one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PhaseResult {
    /// Completed operations: echoes, deliveries, or connects.
    pub ops: u64,
    pub errors: u64,
    /// Fan-out: messages sent by this worker's senders.
    pub sent: u64,
    /// Fan-out: deliveries this worker's listeners should get.
    pub expected: u64,
    /// Fan-out: deliveries of an earlier phase that arrived during this one.
    pub late: u64,
    /// Connections still open at the end of the phase.
    pub alive: usize,
    pub first_error: Option<String>,
    /// Latencies (base64 of an HdrHistogram V2 in microseconds).
    pub histogram: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_shared_out_evenly_and_all_sent() {
        for (rate, duration_ms, senders) in [
            (1000.0, 10_000, 1000),
            (100.0, 10_000, 5000),
            (7.0, 1000, 3),
        ] {
            let counts: Vec<u64> = (0..senders)
                .map(|g| Phase::messages_of(rate, duration_ms, senders, g))
                .collect();
            let total = (rate * duration_ms as f64 / 1000.0).round() as u64;
            assert_eq!(counts.iter().sum::<u64>(), total);
            let (min, max) = (counts.iter().min(), counts.iter().max());
            assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1));
        }
        // The remainder goes to senders spread over the range, not the first ones.
        let some: Vec<usize> = (0..10)
            .filter(|&g| Phase::messages_of(2.0, 1000, 10, g) > 0)
            .collect();
        assert_eq!(some, [4, 9]);
        // A broadcast phase sends at least one.
        assert_eq!(Phase::messages_of(0.1, 1000, 1, 0), 1);
    }

    #[test]
    fn a_group_is_held_by_its_servers_only() {
        let (group_size, servers) = (100, 5);
        for group in 0..20 {
            let mut held: Vec<usize> = (group * group_size..(group + 1) * group_size)
                .map(|i| server_of_listener(i, group_size, servers, 2))
                .collect();
            held.sort_unstable();
            held.dedup();
            let mut wanted = vec![group % servers, (group + 1) % servers];
            wanted.sort_unstable();
            assert_eq!(held, wanted);
        }
        // 0 (or as many as there are): round robin over all.
        assert_eq!(server_of_listener(7, 100, 5, 0), 2);
        assert_eq!(server_of_listener(7, 100, 5, 5), 2);
    }
}
