//! Typed client contracts (`#[tidings::client]`) seen from a raw WebSocket
//! client: the wire names, the arguments (borrowed and owned), group and
//! caller-relative targets, a hub context, and a typed client result.

use std::{collections::VecDeque, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tidings::{Context, HubEndpoint, HubError, hub};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Serialize)]
struct Notice {
    level: u8,
    text: String,
}

/// What the hub may call on its clients.
#[tidings::client]
trait RoomClient {
    /// A message for everyone.
    fn receive_message(user: &str, text: &str);
    fn user_joined(name: &str);
    /// Owned arguments: serialized lazily.
    fn notice(notice: Notice, count: u32);
    #[client(name = "tick")]
    fn clock(seconds: u64);
    fn confirm(question: &str) -> bool;
}

struct Rooms;

#[hub(client = RoomClient)]
impl Rooms {
    async fn send_message(&self, cx: &Context, user: String, text: String) -> Result<(), HubError> {
        cx.clients().all().receive_message(&user, &text).await?;
        Ok(())
    }

    async fn join(&self, cx: &Context, room: String) -> Result<(), HubError> {
        cx.groups().add(cx.connection_id(), &room).await?;
        cx.clients()
            .group(room)
            .user_joined(cx.connection_id())
            .await?;
        Ok(())
    }

    async fn warn_others(&self, cx: &Context, text: String) -> Result<(), HubError> {
        let notice = Notice { level: 2, text };
        cx.clients().others().notice(notice, 1).await?;
        Ok(())
    }

    async fn ask(&self, cx: &Context) -> Result<bool, HubError> {
        Ok(cx.clients().caller().confirm("Sure?").await?)
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A JSON-protocol client that reads one hub message at a time (several
/// may share a WebSocket message).
struct Client {
    socket: Socket,
    pending: VecDeque<String>,
}

impl Client {
    async fn connect(url: &str) -> anyhow::Result<Client> {
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        let mut client = Client {
            socket,
            pending: VecDeque::new(),
        };
        client
            .socket
            .send(Message::text("{\"protocol\":\"json\",\"version\":1}\u{1e}"))
            .await?;
        assert_eq!(client.next().await?, "{}\u{1e}");
        Ok(client)
    }

    /// The next hub message other than a ping, with its record separator.
    async fn next(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(record) = self.pending.pop_front() {
                if record != "{\"type\":6}\u{1e}" {
                    return Ok(record);
                }
                continue;
            }
            let message = tokio::time::timeout(Duration::from_secs(5), self.socket.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("socket closed"))??;
            if let Message::Text(text) = message {
                self.pending
                    .extend(text.as_str().split_inclusive('\u{1e}').map(str::to_owned));
            }
        }
    }

    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.socket.send(Message::text(text)).await?;
        Ok(())
    }

    async fn call(&mut self, id: &str, target: &str, args: &str) -> anyhow::Result<()> {
        self.send(&format!(
            "{{\"type\":1,\"invocationId\":\"{id}\",\"target\":\"{target}\",\"arguments\":{args}}}\u{1e}"
        ))
        .await
    }
}

fn invocation(target: &str, args: &str) -> String {
    format!("{{\"type\":1,\"target\":\"{target}\",\"arguments\":{args}}}\u{1e}")
}

fn completion(id: &str) -> String {
    format!("{{\"type\":3,\"invocationId\":\"{id}\",\"result\":null}}\u{1e}")
}

#[tokio::test]
async fn typed_contract_methods_reach_their_targets() -> anyhow::Result<()> {
    let endpoint = HubEndpoint::new(Rooms);
    let context = endpoint.context();
    let app: axum::Router = axum::Router::new().nest("/hub", endpoint.into_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/hub", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut a = Client::connect(&url).await?;
    let mut b = Client::connect(&url).await?;

    // all(): borrowed arguments, the PascalCase wire name.
    a.call("1", "SendMessage", "[\"ann\",\"hi \\\"there\\\"\"]")
        .await?;
    let expected = invocation("ReceiveMessage", "[\"ann\",\"hi \\\"there\\\"\"]");
    assert_eq!(a.next().await?, expected);
    assert_eq!(a.next().await?, completion("1"));
    assert_eq!(b.next().await?, expected);

    // others(): owned arguments, a struct; the caller gets only its completion.
    a.call("2", "WarnOthers", "[\"careful\"]").await?;
    assert_eq!(a.next().await?, completion("2"));
    assert_eq!(
        b.next().await?,
        invocation("Notice", "[{\"level\":2,\"text\":\"careful\"},1]")
    );

    // group(): only members.
    b.call("3", "Join", "[\"lobby\"]").await?;
    let joined = b.next().await?;
    assert!(
        joined.starts_with("{\"type\":1,\"target\":\"UserJoined\",\"arguments\":[\""),
        "{joined}"
    );
    assert_eq!(b.next().await?, completion("3"));

    // A hub context, and a name set with #[client(name)].
    context.clients().group("lobby").clock(42).await?;
    assert_eq!(b.next().await?, invocation("tick", "[42]"));

    // caller(): a typed client result.
    a.call("4", "Ask", "[]").await?;
    let question = a.next().await?;
    assert_eq!(
        question,
        "{\"type\":1,\"invocationId\":\"s1\",\"target\":\"Confirm\",\"arguments\":[\"Sure?\"]}\u{1e}"
    );
    a.send("{\"type\":3,\"invocationId\":\"s1\",\"result\":true}\u{1e}")
        .await?;
    assert_eq!(
        a.next().await?,
        "{\"type\":3,\"invocationId\":\"4\",\"result\":true}\u{1e}"
    );

    // Nothing else reached the group-less connection.
    context
        .clients()
        .all()
        .receive_message("server", "bye")
        .await?;
    assert_eq!(
        a.next().await?,
        invocation("ReceiveMessage", "[\"server\",\"bye\"]")
    );
    Ok(())
}

#[test]
fn the_schema_lists_server_and_client_methods() {
    use tidings::schema::{Describe, Describer, HubSchema};

    /// Describes a type by its Rust name.
    struct Names;
    impl Describer for Names {
        type Type = &'static str;
    }
    impl<T: ?Sized> Describe<T> for Names {
        fn describe() -> &'static str {
            std::any::type_name::<T>()
        }
    }

    assert_eq!(<Rooms as HubSchema<Names>>::NAME, "Rooms");
    let server = <Rooms as HubSchema<Names>>::server_methods();
    let names: Vec<_> = server.iter().map(|m| m.name).collect();
    assert_eq!(names, ["SendMessage", "Join", "WarnOthers", "Ask"]);
    assert_eq!(server[0].params[1].name, "text");
    assert_eq!(server[0].params[1].ty, "alloc::string::String");
    assert_eq!(server[0].returns, None);
    assert_eq!(server[3].returns, Some("bool"));

    let client = <Rooms as HubSchema<Names>>::client_methods();
    let names: Vec<_> = client.iter().map(|m| (m.rust_name, m.name)).collect();
    assert_eq!(
        names,
        [
            ("receive_message", "ReceiveMessage"),
            ("user_joined", "UserJoined"),
            ("notice", "Notice"),
            ("clock", "tick"),
            ("confirm", "Confirm"),
        ]
    );
    // References are described by their referent.
    assert_eq!(client[0].params[0].ty, "str");
    assert_eq!(client[0].docs, [" A message for everyone."]);
    assert_eq!(client[4].returns, Some("bool"));
}
