//! Test support for [`LifetimeManager`] implementations (feature `testing`).
//!
//! [`TestConnection`] is a connection without a transport: what the manager
//! queues for it can be read back as decoded messages. [`spec`] is the
//! specification every lifetime manager must pass, written once and run
//! against the in-memory manager (in this crate) and against every
//! backplane (in its own crate), in the spirit of ASP.NET Core's shared
//! lifetime-manager specification tests. [`lifetime_manager_spec!`](crate::lifetime_manager_spec)
//! turns it into one `#[tokio::test]` per case:
//!
//! ```ignore
//! tidings::lifetime_manager_spec!(async { tidings::testing::MemoryBackend });
//! ```

use std::{sync::Arc, time::Duration};

use tidings_protocol::{HubMessage, MessageDecoder, Protocol};

use crate::{
    ConnectionHandle, LifetimeManager, MemoryLifetimeManager, Principal,
    connections::{handler::BoxFuture, outbox},
};

/// How long a test waits for a message that must arrive.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection without a transport, for testing lifetime managers.
#[derive(Debug)]
pub struct TestConnection {
    handle: ConnectionHandle,
    rx: outbox::Receiver,
    decoder: MessageDecoder,
}

/// A message a [`TestConnection`] received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The client method.
    pub target: String,
    /// The arguments, as JSON values.
    pub arguments: Vec<serde_json::Value>,
    /// Set for a client result's invocation.
    pub invocation_id: Option<String>,
}

impl TestConnection {
    /// A JSON connection with this id and (optional) user.
    pub fn new(id: &str, user: Option<&str>) -> Self {
        Self::with_protocol(id, user, Protocol::Json)
    }

    /// A connection with this id, user and hub protocol.
    pub fn with_protocol(id: &str, user: Option<&str>, protocol: Protocol) -> Self {
        let principal = user.map(Principal::user).unwrap_or_default();
        let (handle, rx) = ConnectionHandle::unattached(id, principal, protocol, 256);
        TestConnection {
            handle,
            rx,
            decoder: MessageDecoder::new(protocol, None),
        }
    }

    /// The handle to register with a lifetime manager.
    pub fn handle(&self) -> &ConnectionHandle {
        &self.handle
    }

    /// The connection id.
    pub fn id(&self) -> &str {
        self.handle.id()
    }

    /// The next invocation queued for this connection, waiting at most
    /// `wait`; `None` if none came.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.decoder.next_message() {
                Ok(Some(HubMessage::Invocation(invocation))) => {
                    let arguments = invocation
                        .arguments
                        .iter()
                        .map(|p| p.deserialize::<serde_json::Value>().unwrap_or_default())
                        .collect();
                    return Some(Received {
                        target: invocation.target,
                        arguments,
                        invocation_id: invocation.invocation_id,
                    });
                }
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(error) => panic!("undecodable frame: {error}"),
            }
            let item = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()
                .flatten()?;
            let frame = item.into_frame(&mut false);
            if let Some(frame) = frame {
                self.decoder.push(&frame);
            }
        }
    }

    /// The next invocation; panics if none arrives within
    /// [`ARRIVAL_TIMEOUT`].
    pub async fn next(&mut self) -> Received {
        match self.next_within(ARRIVAL_TIMEOUT).await {
            Some(received) => received,
            None => panic!("{}: no message within {ARRIVAL_TIMEOUT:?}", self.id()),
        }
    }
}

/// Lifetime managers that act as the servers of one cluster.
pub trait Backend: Sync {
    /// `n` managers sharing one backend, each acting as one server. Every
    /// call starts a new, empty cluster. An in-memory backend returns the
    /// same manager `n` times: one server.
    fn servers(&self, n: usize) -> BoxFuture<'_, Vec<Arc<dyn LifetimeManager>>>;

    /// Whether what one server sends to different targets arrives in the
    /// order sent. A sharded backend (a Redis Cluster, whose channels live
    /// on different nodes) orders each channel only: the specification
    /// then lets one more fence go round before it looks at what arrived,
    /// rather than assume that a message to a group and the fence after it
    /// (a message to all) arrive in order.
    fn ordered_across_targets(&self) -> bool {
        true
    }
}

/// The in-memory lifetime manager as a [`Backend`]: one server.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryBackend;

impl Backend for MemoryBackend {
    fn servers(&self, n: usize) -> BoxFuture<'_, Vec<Arc<dyn LifetimeManager>>> {
        let manager: Arc<dyn LifetimeManager> = Arc::new(MemoryLifetimeManager::new());
        Box::pin(async move { vec![manager; n] })
    }
}

/// Generates one `#[tokio::test]` per case of [`spec`]. The argument is a
/// future resolving to the [`Backend`] to test; it is awaited in each test.
#[macro_export]
macro_rules! lifetime_manager_spec {
    ($backend:expr) => {
        $crate::__lifetime_manager_spec_cases!(
            $backend;
            all_reaches_every_connection_once,
            all_except_skips_the_excluded,
            connection_targets,
            group_membership_across_servers,
            several_groups_deliver_one_copy,
            users_across_servers,
            a_departed_connection_receives_nothing,
            group_changes_of_unknown_connections_are_ignored,
            client_results_across_servers,
            client_result_failures,
            presence_across_servers,
            close_requests_and_existence_across_servers,
            concurrent_sends_all_arrive,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __lifetime_manager_spec_cases {
    ($backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $backend.await;
                $crate::testing::spec::$case(&backend).await;
            }
        )*
    };
}

/// The lifetime-manager specification: one `async fn` per case, each
/// taking the [`Backend`] under test.
///
/// Negative assertions ("nothing else arrived") use a fence rather than a
/// sleep: after the messages under test, the same server sends `Fence(n)`
/// to everyone, and each connection's messages up to the fence are
/// compared. Messages from one server reach a connection in the order they
/// were sent, on every backend, so whatever did not arrive before the fence
/// was not delivered.
pub mod spec {
    use serde_json::{Value, json};
    use tidings_protocol::{Completion, Payload};

    use super::*;
    use crate::{ClientInvocation, InvokeError, Member, SerializedMessage, Target};

    async fn send(server: &Arc<dyn LifetimeManager>, target: Target, method: &str, arg: Value) {
        server
            .send(
                &target,
                Arc::new(SerializedMessage::invocation(method.to_owned(), (arg,))),
            )
            .await
            .expect("send");
    }

    /// Sends `Fence(n)` to everyone from `server` and returns, for each
    /// connection, what it received before the fence (method, argument) —
    /// before a second fence where the backend orders per target only.
    async fn fence(
        backend: &dyn Backend,
        server: &Arc<dyn LifetimeManager>,
        connections: &mut [&mut TestConnection],
    ) -> Vec<Vec<(String, Value)>> {
        let mut all = fence_once(server, connections).await;
        if !backend.ordered_across_targets() {
            append(&mut all, fence_once(server, connections).await);
        }
        all
    }

    async fn fence_once(
        server: &Arc<dyn LifetimeManager>,
        connections: &mut [&mut TestConnection],
    ) -> Vec<Vec<(String, Value)>> {
        static FENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = FENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        send(server, Target::All, "Fence", json!(n)).await;
        let mut all = Vec::new();
        for connection in connections.iter_mut() {
            let mut got = Vec::new();
            loop {
                let received = connection.next().await;
                if received.target == "Fence" {
                    if received.arguments == [json!(n)] {
                        break;
                    }
                    // An earlier fence that was not waited for by this connection.
                    continue;
                }
                let arg = received.arguments.into_iter().next().unwrap_or_default();
                got.push((received.target, arg));
            }
            all.push(got);
        }
        all
    }

    /// [`fence`] from each of `servers` in turn (each sent messages under
    /// test): per connection, everything received before the last fence.
    async fn fences(
        backend: &dyn Backend,
        servers: &[&Arc<dyn LifetimeManager>],
        connections: &mut [&mut TestConnection],
    ) -> Vec<Vec<(String, Value)>> {
        let mut all = vec![Vec::new(); connections.len()];
        for server in servers {
            append(&mut all, fence(backend, server, connections).await);
        }
        all
    }

    /// Adds to each connection's messages in `all` those in `more`.
    fn append(all: &mut [Vec<(String, Value)>], more: Vec<Vec<(String, Value)>>) {
        for (seen, more) in all.iter_mut().zip(more) {
            seen.extend(more);
        }
    }

    fn got(method: &str, arg: Value) -> (String, Value) {
        (method.to_owned(), arg)
    }

    async fn connect(
        server: &Arc<dyn LifetimeManager>,
        id: &str,
        user: Option<&str>,
    ) -> TestConnection {
        let connection = TestConnection::new(id, user);
        server.on_connected(connection.handle()).await;
        connection
    }

    fn id(prefix: &str) -> String {
        format!("{prefix}-{}", crate::connections::routes::new_id())
    }

    /// `All` from one server reaches every connection of every server once.
    pub async fn all_reaches_every_connection_once(backend: &dyn Backend) {
        let s = backend.servers(3).await;
        let mut a = connect(&s[0], &id("a"), None).await;
        let mut b = connect(&s[1], &id("b"), None).await;
        let mut c = connect(&s[2], &id("c"), None).await;
        send(&s[0], Target::All, "M", json!(1)).await;
        send(&s[2], Target::All, "M", json!(2)).await;
        let seen = fences(backend, &[&s[0], &s[2]], &mut [&mut a, &mut b, &mut c]).await;
        for (i, messages) in seen.iter().enumerate() {
            let mut numbers: Vec<_> = messages.iter().map(|(_, v)| v.clone()).collect();
            numbers.sort_by_key(|v| v.as_i64());
            assert_eq!(
                numbers,
                [json!(1), json!(2)],
                "connection {i}: {messages:?}"
            );
        }
    }

    /// Sends from many tasks of one server at once all reach a connection
    /// of another server, each once (a backend that numbers its publishes
    /// must queue them in number order).
    pub async fn concurrent_sends_all_arrive(backend: &dyn Backend) {
        const TASKS: i64 = 8;
        // Under the test connection's queue bound (256): nothing is read until the fence.
        const EACH: i64 = 25;
        let s = backend.servers(2).await;
        let mut b = connect(&s[1], &id("b"), None).await;
        let mut senders = tokio::task::JoinSet::new();
        for task in 0..TASKS {
            let server = Arc::clone(&s[0]);
            senders.spawn(async move {
                for i in 0..EACH {
                    send(&server, Target::All, "M", json!(task * EACH + i)).await;
                }
            });
        }
        while let Some(done) = senders.join_next().await {
            done.expect("a sending task failed");
        }
        let seen = fence(backend, &s[0], &mut [&mut b]).await;
        let mut numbers: Vec<i64> = seen[0].iter().filter_map(|(_, v)| v.as_i64()).collect();
        numbers.sort_unstable();
        let expected: Vec<i64> = (0..TASKS * EACH).collect();
        assert_eq!(
            numbers,
            expected,
            "lost or duplicated among {} received",
            seen[0].len()
        );
    }

    /// `AllExcept` skips exactly the listed connections, wherever they are.
    pub async fn all_except_skips_the_excluded(backend: &dyn Backend) {
        let s = backend.servers(3).await;
        let mut a = connect(&s[0], &id("a"), None).await;
        let mut b = connect(&s[1], &id("b"), None).await;
        let mut c = connect(&s[2], &id("c"), None).await;
        let excluded = vec![b.id().to_owned(), a.id().to_owned()];
        send(&s[0], Target::AllExcept(excluded), "M", json!("x")).await;
        let seen = fence(backend, &s[0], &mut [&mut a, &mut b, &mut c]).await;
        assert_eq!(seen[0], []);
        assert_eq!(seen[1], []);
        assert_eq!(seen[2], [got("M", json!("x"))]);
    }

    /// `Connection` and `Connections` reach their connections on any
    /// server, once each, and ignore unknown ids.
    pub async fn connection_targets(backend: &dyn Backend) {
        let s = backend.servers(3).await;
        let mut a = connect(&s[0], &id("a"), None).await;
        let mut b = connect(&s[1], &id("b"), None).await;
        let mut c = connect(&s[2], &id("c"), None).await;
        send(
            &s[0],
            Target::Connection(c.id().to_owned()),
            "One",
            json!(1),
        )
        .await;
        send(
            &s[0],
            Target::Connection(a.id().to_owned()),
            "One",
            json!(2),
        )
        .await;
        send(&s[0], Target::Connection(id("nobody")), "One", json!(3)).await;
        let ids = vec![
            a.id().to_owned(),
            c.id().to_owned(),
            c.id().to_owned(),
            id("nobody"),
        ];
        send(&s[0], Target::Connections(ids), "Many", json!(4)).await;
        let seen = fence(backend, &s[0], &mut [&mut a, &mut b, &mut c]).await;
        assert_eq!(seen[0], [got("One", json!(2)), got("Many", json!(4))]);
        assert_eq!(seen[1], []);
        assert_eq!(seen[2], [got("One", json!(1)), got("Many", json!(4))]);
    }

    /// Any server adds and removes connections of any server to and from a
    /// group; `Group` and `GroupExcept` reach the members.
    pub async fn group_membership_across_servers(backend: &dyn Backend) {
        let s = backend.servers(3).await;
        let mut a = connect(&s[0], &id("a"), None).await;
        let mut b = connect(&s[1], &id("b"), None).await;
        let mut c = connect(&s[2], &id("c"), None).await;
        s[0].add_to_group(a.id(), "g").await.expect("local add");
        s[0].add_to_group(b.id(), "g").await.expect("remote add");
        // Adding twice changes nothing.
        s[1].add_to_group(b.id(), "g").await.expect("again");
        send(&s[2], Target::Group("g".into()), "G", json!(1)).await;
        let except = Target::GroupExcept("g".into(), vec![a.id().to_owned()]);
        send(&s[2], except, "G", json!(2)).await;
        let seen = fence(backend, &s[2], &mut [&mut a, &mut b, &mut c]).await;
        assert_eq!(seen[0], [got("G", json!(1))]);
        assert_eq!(seen[1], [got("G", json!(1)), got("G", json!(2))]);
        assert_eq!(seen[2], []);

        s[2].remove_from_group(b.id(), "g")
            .await
            .expect("remote remove");
        s[0].remove_from_group(a.id(), "g")
            .await
            .expect("local remove");
        s[1].add_to_group(c.id(), "g").await.expect("remote add");
        send(&s[1], Target::Group("g".into()), "G", json!(3)).await;
        let seen = fence(backend, &s[1], &mut [&mut a, &mut b, &mut c]).await;
        assert_eq!(seen[0], []);
        assert_eq!(seen[1], []);
        assert_eq!(seen[2], [got("G", json!(3))]);
    }

    /// `Groups` reaches a connection in several of the groups once.
    pub async fn several_groups_deliver_one_copy(backend: &dyn Backend) {
        let s = backend.servers(2).await;
        let mut a = connect(&s[0], &id("a"), None).await;
        let mut b = connect(&s[1], &id("b"), None).await;
        let mut c = connect(&s[1], &id("c"), None).await;
        for (connection, group) in [(&a, "g1"), (&a, "g2"), (&b, "g2"), (&b, "g1"), (&c, "g3")] {
            s[0].add_to_group(connection.id(), group)
                .await
                .expect("add");
        }
        let groups = vec!["g1".to_owned(), "g2".to_owned(), "empty".to_owned()];
        send(&s[1], Target::Groups(groups.clone()), "G", json!(1)).await;
        send(&s[0], Target::Groups(groups), "G", json!(2)).await;
        let seen = fences(backend, &[&s[1], &s[0]], &mut [&mut a, &mut b, &mut c]).await;
        for messages in &seen[..2] {
            let mut numbers: Vec<_> = messages.iter().map(|(_, v)| v.clone()).collect();
            numbers.sort_by_key(|v| v.as_i64());
            assert_eq!(numbers, [json!(1), json!(2)], "{messages:?}");
        }
        assert_eq!(seen[2], []);
    }

    /// `User` and `Users` reach every connection of the users, on every
    /// server.
    pub async fn users_across_servers(backend: &dyn Backend) {
        let s = backend.servers(3).await;
        let ann = id("ann");
        let bob = id("bob");
        let mut a = connect(&s[0], &id("a"), Some(&ann)).await;
        let mut b = connect(&s[1], &id("b"), Some(&ann)).await;
        let mut c = connect(&s[2], &id("c"), Some(&bob)).await;
        let mut d = connect(&s[2], &id("d"), None).await;
        send(&s[2], Target::User(ann.clone()), "U", json!(1)).await;
        let users = vec![ann.clone(), bob.clone(), ann.clone(), id("nobody")];
        send(&s[2], Target::Users(users), "U", json!(2)).await;
        let seen = fence(backend, &s[2], &mut [&mut a, &mut b, &mut c, &mut d]).await;
        assert_eq!(seen[0], [got("U", json!(1)), got("U", json!(2))]);
        assert_eq!(seen[1], [got("U", json!(1)), got("U", json!(2))]);
        assert_eq!(seen[2], [got("U", json!(2))]);
        assert_eq!(seen[3], []);
    }

    /// After `on_disconnected` a connection is in no group, belongs to no
    /// user, and receives nothing; the others carry on.
    pub async fn a_departed_connection_receives_nothing(backend: &dyn Backend) {
        let s = backend.servers(2).await;
        let ann = id("ann");
        let mut a = connect(&s[1], &id("a"), Some(&ann)).await;
        let mut b = connect(&s[1], &id("b"), None).await;
        let mut c = connect(&s[0], &id("c"), None).await;
        s[0].add_to_group(a.id(), "g").await.expect("add");
        s[0].add_to_group(b.id(), "g").await.expect("add");
        s[1].on_disconnected(a.handle()).await;
        send(&s[0], Target::Group("g".into()), "G", json!(1)).await;
        send(&s[0], Target::User(ann.clone()), "U", json!(2)).await;
        send(&s[0], Target::Connection(a.id().to_owned()), "C", json!(3)).await;
        let seen = fence(backend, &s[0], &mut [&mut b, &mut c]).await;
        assert_eq!(seen[0], [got("G", json!(1))]);
        assert_eq!(seen[1], []);
        assert!(a.next_within(Duration::from_millis(50)).await.is_none());

        assert_eq!(
            s[0].connections_of_user(&ann).await.expect("presence"),
            [""; 0]
        );
        let members = s[0].group_members("g").await.expect("presence");
        assert_eq!(members, [Member::new(b.id(), None)]);
        assert!(
            s[0].groups_of_connection(a.id())
                .await
                .expect("presence")
                .is_empty()
        );
    }

    /// Adding or removing an id no server knows does nothing, at once.
    pub async fn group_changes_of_unknown_connections_are_ignored(backend: &dyn Backend) {
        let s = backend.servers(2).await;
        let mut a = connect(&s[0], &id("a"), None).await;
        let nobody = id("nobody");
        let quick = Duration::from_secs(2);
        tokio::time::timeout(quick, s[1].add_to_group(&nobody, "g"))
            .await
            .expect("answered at once")
            .expect("ignored");
        tokio::time::timeout(quick, s[1].remove_from_group(&nobody, "g"))
            .await
            .expect("answered at once")
            .expect("ignored");
        send(&s[1], Target::Group("g".into()), "G", json!(1)).await;
        let seen = fence(backend, &s[1], &mut [&mut a]).await;
        assert_eq!(seen[0], []);
    }

    /// Asks `connection` (via `asker`) in a task, as a hub method would.
    fn ask(
        asker: &Arc<dyn LifetimeManager>,
        connection: &str,
        question: &str,
    ) -> tokio::task::JoinHandle<Result<Payload, InvokeError>> {
        let asker = Arc::clone(asker);
        let connection = connection.to_owned();
        let invocation = ClientInvocation::new("Ask", (question.to_owned(),));
        tokio::spawn(async move { asker.invoke_connection(&connection, invocation).await })
    }

    /// A client result asked on one server of a connection on another
    /// reaches the connection with an invocation id, and its answer reaches
    /// the caller; a connection cannot answer what another was asked.
    pub async fn client_results_across_servers(backend: &dyn Backend) {
        let s = backend.servers(2).await;
        let mut a = connect(&s[0], &id("a"), None).await;
        let mut b = connect(&s[1], &id("b"), None).await;
        let asking = ask(&s[0], b.id(), "q");
        let invocation = b.next().await;
        assert_eq!(invocation.target, "Ask");
        assert_eq!(invocation.arguments, [json!("q")]);
        let invocation_id = invocation.invocation_id.expect("an invocation id");
        let answer = |value: &str| {
            Completion::value(
                invocation_id.clone(),
                Payload::from_raw(Protocol::Json, value.to_owned()).expect("json"),
            )
        };
        // Another connection's answer for the id is ignored.
        s[0].set_connection_result(a.id(), answer("1")).await;
        s[1].set_connection_result(b.id(), answer("42")).await;
        let result = asking.await.expect("task").expect("answered");
        assert_eq!(result.deserialize::<i32>().expect("int"), 42);

        // The other way round, answered with an error.
        let asking = ask(&s[1], a.id(), "r");
        let invocation = a.next().await;
        let invocation_id = invocation.invocation_id.expect("an invocation id");
        s[0].set_connection_result(a.id(), Completion::error(invocation_id, "nope"))
            .await;
        let error = asking.await.expect("task").expect_err("an error");
        assert!(
            matches!(error, InvokeError::Client(ref text) if text == "nope"),
            "{error:?}"
        );
    }

    /// Unknown connections and connections that leave before answering
    /// fail the call clearly.
    pub async fn client_result_failures(backend: &dyn Backend) {
        let s = backend.servers(2).await;
        let b = connect(&s[1], &id("b"), None).await;
        let mut c = connect(&s[1], &id("c"), None).await;
        let nobody = id("nobody");
        let error = ask(&s[0], &nobody, "q")
            .await
            .expect("task")
            .expect_err("unknown");
        assert!(
            matches!(error, InvokeError::UnknownConnection(ref id) if *id == nobody),
            "{error:?}"
        );

        let asking = ask(&s[0], c.id(), "q");
        c.next().await;
        s[1].on_disconnected(c.handle()).await;
        let error = asking.await.expect("task").expect_err("disconnected");
        assert!(
            matches!(error, InvokeError::Disconnected(ref id) if id == c.id()),
            "{error:?}"
        );
        drop(b);
    }

    /// Presence answers for every server and follows joins, leaves and
    /// departures.
    pub async fn presence_across_servers(backend: &dyn Backend) {
        let s = backend.servers(3).await;
        let ann = id("ann");
        let bob = id("bob");
        let a = connect(&s[0], &id("a"), Some(&ann)).await;
        let b = connect(&s[1], &id("b"), Some(&ann)).await;
        let c = connect(&s[2], &id("c"), Some(&bob)).await;
        let d = connect(&s[2], &id("d"), None).await;
        let base = s[1].online_user_count().await.expect("count");
        s[0].add_to_group(a.id(), "room").await.expect("add");
        s[0].add_to_group(c.id(), "room").await.expect("add");
        s[0].add_to_group(d.id(), "room").await.expect("add");
        s[2].add_to_group(c.id(), "other").await.expect("add");

        for server in &s {
            let mut ids = server.connections_of_user(&ann).await.expect("user");
            ids.sort();
            let mut want = vec![a.id().to_owned(), b.id().to_owned()];
            want.sort();
            assert_eq!(ids, want);
            let mut members = server.group_members("room").await.expect("group");
            members.sort();
            let mut want = vec![
                Member::new(a.id(), Some(ann.clone())),
                Member::new(c.id(), Some(bob.clone())),
                Member::new(d.id(), None),
            ];
            want.sort();
            assert_eq!(members, want);
            let mut groups = server.groups_of_connection(c.id()).await.expect("groups");
            groups.sort();
            assert_eq!(groups, ["other", "room"]);
            assert!(
                server
                    .group_members("nothing")
                    .await
                    .expect("empty")
                    .is_empty()
            );
        }
        // The servers' counts agree. On one in-memory server the count
        // is all that server's users; on a cluster, every server's.
        for server in &s {
            assert_eq!(server.online_user_count().await.expect("count"), base);
        }

        s[1].remove_from_group(a.id(), "room")
            .await
            .expect("remove");
        s[2].on_disconnected(c.handle()).await;
        s[1].on_disconnected(b.handle()).await;
        let members = s[1].group_members("room").await.expect("group");
        assert_eq!(members, [Member::new(d.id(), None)]);
        assert_eq!(
            s[2].connections_of_user(&ann).await.expect("user"),
            [a.id().to_owned()]
        );
        assert!(
            s[0].connections_of_user(&bob)
                .await
                .expect("user")
                .is_empty()
        );
        assert_eq!(s[0].online_user_count().await.expect("count"), base - 1);
    }

    /// Waits until `connection` is closed; its reason, if closed by a
    /// close request.
    async fn closed(connection: &TestConnection) -> Option<Option<String>> {
        let deadline = tokio::time::Instant::now() + ARRIVAL_TIMEOUT;
        while !connection.handle().is_aborted() {
            if tokio::time::Instant::now() > deadline {
                panic!("{}: not closed within {ARRIVAL_TIMEOUT:?}", connection.id());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match connection.handle().abort_reason() {
            Some(crate::connections::connection::AbortReason::Closed(reason)) => Some(reason),
            _ => None,
        }
    }

    /// Whether a connection exists is known on every server; a close
    /// request reaches its targets on any server, with its reason, and no
    /// one else.
    pub async fn close_requests_and_existence_across_servers(backend: &dyn Backend) {
        let s = backend.servers(3).await;
        let a = connect(&s[0], &id("a"), None).await;
        let b = connect(&s[1], &id("b"), None).await;
        let c = connect(&s[2], &id("c"), None).await;
        for server in &s {
            for connection in [&a, &b, &c] {
                assert!(
                    server
                        .connection_exists(connection.id())
                        .await
                        .expect("exists")
                );
            }
            assert!(!server.connection_exists("nobody").await.expect("exists"));
        }
        let close =
            |reason: Option<&str>| Arc::new(SerializedMessage::close(reason.map(str::to_owned)));
        s[0].send(&Target::Connection(b.id().to_owned()), close(Some("bye")))
            .await
            .expect("close");
        assert_eq!(closed(&b).await, Some(Some("bye".to_owned())));
        s[1].on_disconnected(b.handle()).await;
        s[2].send(&Target::AllExcept(vec![a.id().to_owned()]), close(None))
            .await
            .expect("close");
        assert_eq!(closed(&c).await, Some(None));
        // The same server's fence arrives after the close would have.
        let mut a = a;
        let before = fence(backend, &s[2], &mut [&mut a]).await;
        assert_eq!(before, [Vec::<(String, Value)>::new()]);
        assert!(!a.handle().is_aborted());
        s[2].on_disconnected(c.handle()).await;
        for server in &s {
            assert!(!server.connection_exists(b.id()).await.expect("exists"));
        }
    }
}

#[cfg(test)]
mod tests {
    crate::lifetime_manager_spec!(async { super::MemoryBackend });
}
