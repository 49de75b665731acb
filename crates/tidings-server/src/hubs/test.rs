//! `/hubs/test`: an interop hub that exercises every target and error path;
//! the end-to-end suites drive it with the official clients.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;
use serde_json::Value;
use tidings::{CancellationToken, ClientStream, ConnectionError, Context, HubError, hub};
use tokio::sync::Notify;

/// The interop hub.
#[derive(Debug, Default)]
pub(crate) struct TestHub {
    /// Streams whose producer is still alive.
    active_streams: Arc<AtomicUsize>,
    /// Client-to-server streams still held by a background task.
    live_uploads: Arc<AtomicUsize>,
    /// Gates that `CountAfterRelease` waits on, by connection id.
    gates: Mutex<HashMap<String, Arc<Notify>>>,
    /// What became of each `Watched` stream, by its key.
    watched: Arc<Mutex<HashMap<String, &'static str>>>,
}

impl TestHub {
    fn gate(&self, connection_id: &str) -> Arc<Notify> {
        let mut gates = self.gates.lock();
        Arc::clone(gates.entry(connection_id.to_owned()).or_default())
    }
}

/// Counts a live stream producer; dropping the producer drops the guard.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Live(Arc::clone(counter))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InvalidOperationException(String);

#[hub]
impl TestHub {
    /// Returns its argument.
    async fn echo(&self, value: Value) -> Value {
        value
    }

    /// Integer addition.
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    /// Fails with an ordinary error: clients see its text only with detailed errors.
    async fn throw(&self, message: String) -> Result<(), HubError> {
        Err(InvalidOperationException(message).into())
    }

    /// Fails with an error of type `type_name`: clients see
    /// `type_name: message` only with detailed errors.
    async fn throw_typed(&self, type_name: String, message: String) -> Result<(), HubError> {
        Err(HubError::internal(&message).with_type_name(type_name))
    }

    /// Fails with a HubException: clients always see its text.
    async fn throw_hub_exception(&self, message: String) -> Result<(), HubError> {
        Err(HubError::new(message))
    }

    /// Panics; the server answers with an error and keeps the connection.
    async fn panic(&self) -> i32 {
        panic!("a hub method panicked on purpose")
    }

    /// Streams `0..count`, one item every `delay_ms` milliseconds.
    #[hub(stream)]
    async fn counter(&self, count: u32, delay_ms: u64) -> impl Stream<Item = u32> + use<> {
        let live = Live::new(&self.active_streams);
        let delay = Duration::from_millis(delay_ms.min(10_000));
        futures_util::stream::unfold((0, live), move |(i, live)| async move {
            if i >= count {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(delay).await;
            }
            Some((i, (i + 1, live)))
        })
    }

    /// Streams 0, 1, … every 50 ms until cancelled. The method records
    /// `started` under `key`; when its cancellation token fires (cancel,
    /// disconnect, shutdown) it records `cancelled` and sends the caller
    /// `StreamCancelled(key)`. `GetWatched(key)` reads the record.
    #[hub(stream)]
    async fn watched(
        &self,
        cx: &Context,
        key: String,
        cancel: CancellationToken,
    ) -> impl Stream<Item = u32> + use<> {
        let record = Arc::clone(&self.watched);
        let set = move |key: &str, state| {
            record.lock().insert(key.to_owned(), state);
        };
        set(&key, "started");
        let hub = cx.hub_context();
        let caller = cx.connection_id().to_owned();
        tokio::spawn(async move {
            cancel.cancelled().await;
            set(&key, "cancelled");
            let _ = hub
                .clients()
                .client(caller)
                .send("StreamCancelled", (key,))
                .await;
        });
        futures_util::stream::unfold(0u32, |i| async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some((i, i + 1))
        })
    }

    /// What became of the `Watched` stream `key`: `started`, `cancelled`,
    /// or nothing.
    async fn get_watched(&self, key: String) -> Option<String> {
        let record = self.watched.lock();
        record.get(&key).map(|state| (*state).to_owned())
    }

    /// Streams `0..count`, then fails with `message`.
    #[hub(stream)]
    async fn counter_then_fail(
        &self,
        count: u32,
        message: String,
    ) -> impl Stream<Item = Result<u32, HubError>> + use<> {
        futures_util::stream::iter(
            (0..count)
                .map(Ok)
                .chain(std::iter::once(Err(HubError::new(message)))),
        )
    }

    /// The total of a client-to-server stream of numbers.
    async fn sum(&self, mut numbers: ClientStream<f64>) -> Result<f64, HubError> {
        let mut total = 0.0;
        while let Some(n) = numbers.recv().await? {
            total += n;
        }
        Ok(total)
    }

    /// Streams back every item of a client-to-server stream as it arrives.
    #[hub(stream)]
    async fn echo_stream(&self, items: ClientStream<Value>) -> ClientStream<Value> {
        items
    }

    /// Two client-to-server streams in one invocation: the items of each,
    /// joined, with `separator` between the two. Both are read at once: a
    /// method that read one to its end first could wait forever while the
    /// client's items for the other fill its buffer.
    async fn concat_streams(
        &self,
        first: ClientStream<String>,
        separator: String,
        second: ClientStream<String>,
    ) -> Result<String, HubError> {
        async fn join(items: ClientStream<String>) -> Result<String, HubError> {
            let items: Vec<String> = items
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            Ok(items.concat())
        }
        let (first, second) = futures_util::join!(join(first), join(second));
        Ok(format!("{}{separator}{}", first?, second?))
    }

    /// Counts a client-to-server stream, but reads nothing before another
    /// connection calls `Release` with this connection's id: meanwhile the
    /// stream's buffer fills and the server stops reading this client.
    async fn count_after_release(
        &self,
        cx: &Context,
        mut items: ClientStream<Value>,
    ) -> Result<usize, HubError> {
        let gate = self.gate(cx.connection_id());
        gate.notified().await;
        self.gates.lock().remove(cx.connection_id());
        let mut count = 0;
        while items.recv().await?.is_some() {
            count += 1;
        }
        Ok(count)
    }

    /// Lets the `CountAfterRelease` of connection `connection_id` read.
    async fn release(&self, connection_id: String) {
        self.gate(&connection_id).notify_one();
    }

    /// Hands a client-to-server stream to a background task and returns at
    /// once. The server closes the stream when this invocation ends, so the
    /// task ends even though the client never completes it.
    async fn keep_upload(&self, mut items: ClientStream<Value>) {
        let live = Live::new(&self.live_uploads);
        tokio::spawn(async move {
            let _live = live;
            while let Ok(Some(_)) = items.recv().await {}
        });
    }

    /// How many streams handed over by `KeepUpload` are still open.
    async fn get_live_uploads(&self) -> usize {
        self.live_uploads.load(Ordering::SeqCst)
    }

    /// Invokes the caller's client method `method` with `arg` and returns
    /// what the client returned. A failure is passed on with `?`, which
    /// reports it as ASP.NET Core would (the client's own error text is
    /// shown; other failures only with detailed errors).
    async fn ask_caller(
        &self,
        cx: &Context,
        method: String,
        arg: Value,
    ) -> Result<Value, HubError> {
        Ok(cx.clients().caller().invoke(&method, (arg,)).await?)
    }

    /// Like `AskCaller`, waiting at most `timeout_ms`; any failure is
    /// reported with its text.
    async fn ask_caller_within(
        &self,
        cx: &Context,
        method: String,
        arg: Value,
        timeout_ms: u64,
    ) -> Result<Value, HubError> {
        cx.clients()
            .caller()
            .invoke(&method, (arg,))
            .timeout(Duration::from_millis(timeout_ms))
            .await
            .map_err(|error| HubError::new(error.to_string()))
    }

    /// Asks the caller for a number (`i64`); any failure is reported with
    /// its text.
    async fn ask_caller_for_number(&self, cx: &Context, method: String) -> Result<i64, HubError> {
        cx.clients()
            .caller()
            .invoke(&method, ())
            .await
            .map_err(|error| HubError::new(error.to_string()))
    }

    /// Invokes `method` on connection `connection_id` and returns its
    /// answer; any failure is reported with its text.
    async fn ask_client(
        &self,
        cx: &Context,
        connection_id: String,
        method: String,
        arg: Value,
    ) -> Result<Value, HubError> {
        cx.clients()
            .client(connection_id)
            .invoke(&method, (arg,))
            .await
            .map_err(|error| HubError::new(error.to_string()))
    }

    /// Returns at once; a background task asks connection `connection_id`
    /// through the hub context, then tells the caller the outcome with
    /// `BackgroundAnswer(true, result)` or `BackgroundAnswer(false, error)`.
    async fn ask_client_in_background(
        &self,
        cx: &Context,
        connection_id: String,
        method: String,
        arg: Value,
    ) {
        let hub = cx.hub_context();
        let caller = cx.connection_id().to_owned();
        tokio::spawn(async move {
            let answer = hub
                .clients()
                .client(connection_id)
                .invoke::<Value, _>(&method, (arg,))
                .await;
            let outcome = match answer {
                Ok(value) => (true, value),
                Err(error) => (false, Value::String(error.to_string())),
            };
            let _ = hub
                .clients()
                .client(caller)
                .send("BackgroundAnswer", outcome)
                .await;
        });
    }

    /// How many stream producers are alive (a cancelled stream's producer
    /// must be gone).
    async fn get_active_streams(&self) -> usize {
        self.active_streams.load(Ordering::SeqCst)
    }

    /// Returns `value` after `ms` milliseconds.
    async fn delay(&self, ms: u64, value: Value) -> Value {
        tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
        value
    }

    /// A method without a result.
    async fn nothing(&self) {}

    /// The transport of the caller: `WebSockets`, `ServerSentEvents` or `LongPolling`.
    async fn get_transport(&self, cx: &Context) -> String {
        cx.transport().name().to_owned()
    }

    async fn get_connection_id(&self, cx: &Context) -> String {
        cx.connection_id().to_owned()
    }

    async fn get_user_identifier(&self, cx: &Context) -> Option<String> {
        cx.user_identifier().map(str::to_owned)
    }

    async fn get_claim(&self, cx: &Context, kind: String) -> Option<String> {
        cx.user().claim(&kind).map(str::to_owned)
    }

    async fn get_query(&self, cx: &Context, key: String) -> Option<String> {
        cx.query(&key).map(str::to_owned)
    }

    async fn get_header(&self, cx: &Context, name: String) -> Option<String> {
        cx.headers()
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Closes the caller's connection from the server.
    async fn abort(&self, cx: &Context) {
        cx.abort();
    }

    async fn join_group(&self, cx: &Context, group: String) -> Result<(), HubError> {
        cx.groups().add(cx.connection_id(), &group).await?;
        Ok(())
    }

    async fn leave_group(&self, cx: &Context, group: String) -> Result<(), HubError> {
        cx.groups().remove(cx.connection_id(), &group).await?;
        Ok(())
    }

    /// Adds another connection (by id) to a group.
    async fn add_to_group(
        &self,
        cx: &Context,
        connection_id: String,
        group: String,
    ) -> Result<(), HubError> {
        cx.groups().add(&connection_id, &group).await?;
        Ok(())
    }

    async fn send_to_group(
        &self,
        cx: &Context,
        group: String,
        message: Value,
    ) -> Result<(), HubError> {
        cx.clients()
            .group(group)
            .send("GroupMessage", (message,))
            .await?;
        Ok(())
    }

    async fn send_to_groups(
        &self,
        cx: &Context,
        groups: Vec<String>,
        message: Value,
    ) -> Result<(), HubError> {
        cx.clients()
            .groups(groups)
            .send("GroupMessage", (message,))
            .await?;
        Ok(())
    }

    async fn send_to_group_except(
        &self,
        cx: &Context,
        group: String,
        excluded: Vec<String>,
        message: Value,
    ) -> Result<(), HubError> {
        cx.clients()
            .group_except(group, excluded)
            .send("GroupMessage", (message,))
            .await?;
        Ok(())
    }

    async fn send_to_others_in_group(
        &self,
        cx: &Context,
        group: String,
        message: Value,
    ) -> Result<(), HubError> {
        cx.clients()
            .others_in_group(group)
            .send("GroupMessage", (message,))
            .await?;
        Ok(())
    }

    async fn send_to_user(
        &self,
        cx: &Context,
        user: String,
        message: Value,
    ) -> Result<(), HubError> {
        cx.clients()
            .user(user)
            .send("UserMessage", (message,))
            .await?;
        Ok(())
    }

    async fn send_to_users(
        &self,
        cx: &Context,
        users: Vec<String>,
        message: Value,
    ) -> Result<(), HubError> {
        cx.clients()
            .users(users)
            .send("UserMessage", (message,))
            .await?;
        Ok(())
    }

    async fn send_to_connection(
        &self,
        cx: &Context,
        connection_id: String,
        message: Value,
    ) -> Result<(), HubError> {
        cx.clients()
            .client(connection_id)
            .send("DirectMessage", (message,))
            .await?;
        Ok(())
    }

    async fn send_to_connections(
        &self,
        cx: &Context,
        ids: Vec<String>,
        message: Value,
    ) -> Result<(), HubError> {
        cx.clients()
            .clients(ids)
            .send("DirectMessage", (message,))
            .await?;
        Ok(())
    }

    async fn send_to_caller(&self, cx: &Context, message: Value) -> Result<(), HubError> {
        cx.clients()
            .caller()
            .send("DirectMessage", (message,))
            .await?;
        Ok(())
    }

    async fn broadcast(&self, cx: &Context, message: Value) -> Result<(), HubError> {
        cx.clients().all().send("Broadcast", (message,)).await?;
        Ok(())
    }

    async fn broadcast_others(&self, cx: &Context, message: Value) -> Result<(), HubError> {
        cx.clients().others().send("Broadcast", (message,)).await?;
        Ok(())
    }

    async fn broadcast_all_except(
        &self,
        cx: &Context,
        excluded: Vec<String>,
        message: Value,
    ) -> Result<(), HubError> {
        cx.clients()
            .all_except(excluded)
            .send("Broadcast", (message,))
            .await?;
        Ok(())
    }

    /// Removes another connection (by id) from a group.
    async fn remove_from_group(
        &self,
        cx: &Context,
        connection_id: String,
        group: String,
    ) -> Result<(), HubError> {
        cx.groups().remove(&connection_id, &group).await?;
        Ok(())
    }

    /// Streams `count` client results: connection `connectionId`'s
    /// `method(i)` for i = 0, 1, …; a failed call streams its error text.
    #[hub(stream)]
    async fn ask_client_stream(
        &self,
        cx: &Context,
        connection_id: String,
        method: String,
        count: u32,
    ) -> impl Stream<Item = Value> + use<> {
        let hub = cx.hub_context();
        futures_util::stream::unfold(0, move |i| {
            let (hub, id, method) = (hub.clone(), connection_id.clone(), method.clone());
            async move {
                if i >= count {
                    return None;
                }
                let answer = hub
                    .clients()
                    .client(id)
                    .invoke::<Value, _>(&method, (i,))
                    .await;
                Some((
                    answer.unwrap_or_else(|e| Value::String(e.to_string())),
                    i + 1,
                ))
            }
        })
    }

    /// Sends every item of a client-to-server stream to connection
    /// `connectionId` as `Relayed(item)`; returns how many it relayed.
    async fn relay_stream(
        &self,
        cx: &Context,
        connection_id: String,
        mut items: ClientStream<Value>,
    ) -> Result<usize, HubError> {
        let mut relayed = 0;
        while let Some(item) = items.recv().await? {
            cx.clients()
                .client(connection_id.clone())
                .send("Relayed", (item,))
                .await?;
            relayed += 1;
        }
        Ok(relayed)
    }

    /// Presence across every server: `{connectionsOfUser, groupMembers,
    /// usersInGroup, groupsOfConnection, onlineUsers}` for the given user,
    /// group and connection.
    async fn get_presence(
        &self,
        cx: &Context,
        user: String,
        group: String,
        connection_id: String,
    ) -> Result<Value, HubError> {
        let presence = cx.presence();
        let members: Vec<Value> = presence
            .group_members(&group)
            .await?
            .into_iter()
            .map(|m| serde_json::json!({"connectionId": m.connection_id, "userId": m.user_id}))
            .collect();
        Ok(serde_json::json!({
            "connectionsOfUser": presence.connections_of_user(&user).await?,
            "groupMembers": members,
            "usersInGroup": presence.users_in_group(&group).await?,
            "groupsOfConnection": presence.groups_of_connection(&connection_id).await?,
            "onlineUsers": presence.online_user_count().await?,
        }))
    }

    /// Joins the `observers` group, which hears about every disconnection.
    async fn observe(&self, cx: &Context) -> Result<(), HubError> {
        cx.groups().add(cx.connection_id(), "observers").await?;
        Ok(())
    }

    /// Observers receive `ClientDisconnected(connectionId, error)`.
    #[on_disconnected]
    async fn disconnected(&self, cx: &Context, error: Option<ConnectionError>) {
        let error = error.map(|e| e.to_string());
        let _ = cx
            .clients()
            .group("observers")
            .send("ClientDisconnected", (cx.connection_id().to_owned(), error))
            .await;
    }
}
