//! The bad-input catalogue: what a client can send that a server must
//! survive, sent byte for byte over every transport (WebSockets, Server-Sent
//! Events and Long Polling POST bodies) and both hub protocols where the
//! transport carries them, against a real server.
//!
//! Each row of [`CATALOGUE`] is one input and the answer ASP.NET Core gives
//! to it (a Completion error with its exact text, a Close with an error, a
//! refused handshake, an HTTP status, or nothing at all). For every row and
//! transport the test checks that answer, with and without detailed errors,
//! then that the connection still works (when the answer leaves it open),
//! and that a healthy connection on the same server got its own answer and
//! nothing else. `docs/bad-input.md` is the same table in prose.

#[path = "support/http_client.rs"]
mod http_client;
#[path = "support/raw.rs"]
mod raw;

use std::{net::SocketAddr, time::Duration};

use futures_util::Stream;
use raw::{Incoming, RawConnection, Transport, cancel, encode, invocation, stream_invoke};
use tidings::{ClientStream, HubEndpoint, HubError, HubOptions, hub};
use tidings_protocol::{Close, CompletionResult, HubMessage, Protocol, StreamItem, ToArguments};

/// The hub every row talks to.
struct Probe;

#[hub]
impl Probe {
    async fn echo(&self, text: String) -> String {
        text
    }

    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    /// Answers after `ms` milliseconds: an invocation that stays in flight.
    async fn slow(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    /// One item, then nothing until cancelled: a stream that stays open.
    #[hub(stream)]
    async fn forever(&self) -> impl Stream<Item = u32> + use<> {
        use futures_util::StreamExt as _;
        futures_util::stream::iter([0]).chain(futures_util::stream::pending())
    }

    async fn sum(&self, mut numbers: ClientStream<i64>) -> Result<i64, HubError> {
        let mut total = 0;
        while let Some(n) = numbers.recv().await? {
            total += n;
        }
        Ok(total)
    }
}

const CLOSED: &str = "Connection closed with an error.";
const HANDSHAKE_FAILED: &str = "An unexpected error occurred during connection handshake.";
const BINDING: &str = "InvalidDataException: Error binding arguments. Make sure that the types of the provided values match the types of the hub method being invoked.";
const TOO_LARGE: &str = "InvalidDataException: The maximum message size of 32768B was exceeded. The message size can be configured in AddHubOptions.";

/// An error text as ASP.NET Core builds it: `base`, plus ` detail` when
/// detailed errors are on. A detail ending in `…` is matched as a prefix
/// (its tail is the parser's own description of the fault).
#[derive(Debug, Clone)]
struct Text {
    base: String,
    detail: Option<&'static str>,
}

impl Text {
    fn plain(base: impl Into<String>) -> Text {
        Text {
            base: base.into(),
            detail: None,
        }
    }

    fn detailed(base: impl Into<String>, detail: &'static str) -> Text {
        Text {
            base: base.into(),
            detail: Some(detail),
        }
    }

    fn matches(&self, actual: &str, detailed: bool) -> bool {
        match self.detail.filter(|_| detailed) {
            None => actual == self.base,
            Some(detail) => {
                let Some(rest) = actual
                    .strip_prefix(self.base.as_str())
                    .and_then(|r| r.strip_prefix(' '))
                else {
                    return false;
                };
                match detail.strip_suffix('…') {
                    Some(prefix) => rest.starts_with(prefix),
                    None => rest == detail,
                }
            }
        }
    }
}

/// One message the server must send back.
#[derive(Debug, Clone)]
enum Reply {
    /// A Completion with this result (compared as JSON values).
    Value(String, serde_json::Value),
    /// A Completion without result (a finished stream).
    Void(String),
    /// A Completion with this error.
    Error(String, Text),
    /// A StreamItem of this invocation.
    Item(String),
}

impl Reply {
    fn matches(&self, message: &HubMessage, detailed: bool) -> bool {
        match (self, message) {
            (Reply::Item(id), HubMessage::StreamItem(item)) => &item.invocation_id == id,
            (reply, HubMessage::Completion(completion)) => match (reply, &completion.result) {
                (Reply::Value(id, want), CompletionResult::Value(payload)) => {
                    &completion.invocation_id == id
                        && payload.deserialize::<serde_json::Value>().ok().as_ref() == Some(want)
                }
                (Reply::Void(id), CompletionResult::Void) => &completion.invocation_id == id,
                (Reply::Error(id, text), CompletionResult::Error(error)) => {
                    &completion.invocation_id == id && text.matches(error, detailed)
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// One thing the client does, or waits for.
#[derive(Debug)]
enum Step {
    /// Send these bytes (one WebSocket message or POST body); a POST must be
    /// answered 200.
    Send(Vec<u8>),
    /// Send these bytes; a POST must be answered with this status.
    SendRefused(Vec<u8>, u16),
    /// WebSockets: a Text frame with these (non-UTF-8) bytes.
    RawTextFrame(Vec<u8>),
    /// These messages arrive next, in any order, and nothing else.
    Replies(Vec<Reply>),
}

/// How the connection ends up.
#[derive(Debug)]
enum End {
    /// Still open: a following Echo is answered, and nothing came before it.
    Alive,
    /// The server sends a Close with this error (`allowReconnect: true`)
    /// and ends the transport.
    Close(Text),
    /// The handshake is refused with this error, and the transport ends.
    HandshakeRefused(Text),
    /// The server sends a Close without error (`allowReconnect: true`, what
    /// ASP.NET Core sends when the transport failed), and the WebSocket is
    /// closed with this status code.
    TransportFailed(u16),
}

struct Script {
    /// Whether the client completes a handshake before the steps.
    handshake: bool,
    steps: Vec<Step>,
    end: End,
}

impl Script {
    fn after_handshake(steps: Vec<Step>, end: End) -> Option<Script> {
        Some(Script {
            handshake: true,
            steps,
            end,
        })
    }
}

/// A row: its name and, for a protocol and transport, the script (`None`
/// when the input does not exist there, e.g. invalid UTF-8 in MessagePack
/// framing).
struct Case {
    name: &'static str,
    script: fn(Protocol, Transport) -> anyhow::Result<Option<Script>>,
}

// ---- building inputs -------------------------------------------------------

fn json(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0x1e);
    bytes
}

fn invoke(
    protocol: Protocol,
    id: &str,
    target: &str,
    arguments: impl ToArguments,
) -> anyhow::Result<Vec<u8>> {
    let message = HubMessage::Invocation(invocation(protocol, id, target, arguments)?);
    encode(protocol, &message)
}

fn stream_item<T: serde::Serialize>(
    protocol: Protocol,
    id: &str,
    item: &T,
) -> anyhow::Result<Vec<u8>> {
    let message = HubMessage::StreamItem(StreamItem {
        headers: Default::default(),
        invocation_id: id.to_owned(),
        item: protocol.encode_value(item)?,
    });
    encode(protocol, &message)
}

fn complete(protocol: Protocol, id: &str) -> anyhow::Result<Vec<u8>> {
    encode(
        protocol,
        &HubMessage::Completion(tidings_protocol::Completion::void(id)),
    )
}

/// A MessagePack frame: the VarInt length of `body`, then `body`.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut len = body.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(body);
    out
}

fn id(s: &str) -> String {
    s.to_owned()
}

fn close(detail: &'static str) -> End {
    End::Close(Text::detailed(CLOSED, detail))
}

// ---- the catalogue ---------------------------------------------------------

const CATALOGUE: &[Case] = &[
    Case {
        name: "invalid UTF-8",
        script: |p, _| {
            Ok(match p {
                // Inside a JSON message: the message cannot be read.
                Protocol::Json => Script::after_handshake(
                    vec![Step::Send(
                        b"{\"type\":1,\"invocationId\":\"1\",\"target\":\"Echo\",\"arguments\":[\"\xff\xfe\"]}\x1e"
                            .to_vec(),
                    )],
                    close("InvalidDataException: Error reading JSON."),
                ),
                // Inside a MessagePack string argument: the frame is sound,
                // the argument cannot be bound to a string.
                Protocol::MessagePack => Script::after_handshake(
                    vec![
                        Step::Send(framed(b"\x96\x01\x80\xa1\x31\xa4Echo\x91\xa2\xff\xfe\x90")),
                        Step::Replies(vec![Reply::Error(
                            id("1"),
                            Text::detailed("Failed to invoke 'Echo' due to an error on the server.", BINDING),
                        )]),
                    ],
                    End::Alive,
                ),
            })
        },
    },
    Case {
        name: "invalid UTF-8 in a WebSocket Text frame",
        script: |p, t| {
            Ok(
                (t == Transport::WebSockets && p == Protocol::Json).then(|| Script {
                    handshake: true,
                    steps: vec![Step::RawTextFrame(b"{\"type\":6}\xff\x1e".to_vec())],
                    end: End::TransportFailed(1007),
                }),
            )
        },
    },
    Case {
        name: "invalid JSON",
        script: |p, _| {
            Ok((p == Protocol::Json).then(|| Script {
                handshake: true,
                steps: vec![Step::Send(json("{\"type\":1,\"target\":"))],
                end: close("InvalidDataException: Error reading JSON."),
            }))
        },
    },
    Case {
        name: "a JSON value that is not an object",
        script: |p, _| {
            Ok((p == Protocol::Json).then(|| Script {
                handshake: true,
                steps: vec![Step::Send(json("[1,2]"))],
                end: close("InvalidDataException: …"),
            }))
        },
    },
    Case {
        name: "an empty JSON message",
        script: |p, _| {
            Ok((p == Protocol::Json).then(|| Script {
                handshake: true,
                steps: vec![Step::Send(json(""))],
                end: close("InvalidDataException: …"),
            }))
        },
    },
    Case {
        name: "a message type that is not a number",
        script: |p, _| {
            Ok((p == Protocol::Json).then(|| Script {
                handshake: true,
                steps: vec![Step::Send(json("{\"type\":\"1\"}"))],
                end: close("InvalidDataException: Expected 'type' to be of type Integer."),
            }))
        },
    },
    Case {
        name: "truncated MessagePack (an array shorter than its header)",
        script: |p, _| {
            Ok((p == Protocol::MessagePack).then(|| Script {
                handshake: true,
                steps: vec![Step::Send(framed(b"\x96\x01\x80\xa1\x31"))],
                end: close("InvalidDataException: Error reading MessagePack…"),
            }))
        },
    },
    Case {
        name: "a VarInt length prefix longer than 5 bytes",
        script: |p, _| {
            Ok((p == Protocol::MessagePack).then(|| Script {
                handshake: true,
                steps: vec![Step::Send(b"\xff\xff\xff\xff\xff\x01".to_vec())],
                end: close("InvalidDataException: Messages over 2GB in size are not supported."),
            }))
        },
    },
    Case {
        name: "a VarInt length shorter than the message",
        script: |p, _| {
            if p != Protocol::MessagePack {
                return Ok(None);
            }
            let mut bytes = invoke(p, "1", "Echo", ("x",))?;
            bytes[0] = 3;
            Ok(Script::after_handshake(
                vec![Step::Send(bytes)],
                close("InvalidDataException: Error reading MessagePack…"),
            ))
        },
    },
    Case {
        name: "a VarInt length over the size limit",
        script: |p, _| {
            // 65536 announced; refused before the body arrives.
            Ok((p == Protocol::MessagePack).then(|| Script {
                handshake: true,
                steps: vec![Step::Send(b"\x80\x80\x04".to_vec())],
                end: close(TOO_LARGE),
            }))
        },
    },
    Case {
        name: "a message over the size limit",
        script: |p, _| {
            Ok(Script::after_handshake(
                vec![Step::Send(invoke(
                    p,
                    "1",
                    "Echo",
                    ("x".repeat(40 * 1024),),
                )?)],
                close(TOO_LARGE),
            ))
        },
    },
    Case {
        name: "a WebSocket message over the frame limit",
        script: |_, t| {
            // 1 MiB for the default 32 KiB message limit: the WebSocket
            // library refuses the frame before any hub message is read.
            Ok((t == Transport::WebSockets).then(|| Script {
                handshake: true,
                steps: vec![Step::Send(vec![b' '; 2 << 20])],
                end: End::TransportFailed(1009),
            }))
        },
    },
    Case {
        name: "a POST body over the body limit",
        script: |p, t| {
            if t == Transport::WebSockets {
                return Ok(None);
            }
            // Many small, valid messages: only the body's size is wrong.
            let ping = encode(p, &HubMessage::Ping)?;
            let body = ping.repeat((4 << 20) / ping.len());
            Ok(Script::after_handshake(
                vec![Step::SendRefused(body, 413)],
                End::Alive,
            ))
        },
    },
    Case {
        name: "an unknown message type",
        script: |p, _| {
            let bytes = match p {
                Protocol::Json => json("{\"type\":99,\"invocationId\":\"1\"}"),
                Protocol::MessagePack => framed(b"\x92\x63\x80"),
            };
            Ok(Script::after_handshake(vec![Step::Send(bytes)], End::Alive))
        },
    },
    Case {
        name: "a Completion for an invocation the server never made",
        script: |p, _| {
            let completion = tidings_protocol::Completion::value("s1", p.encode_value(&1)?);
            Ok(Script::after_handshake(
                vec![Step::Send(encode(p, &HubMessage::Completion(completion))?)],
                End::Alive,
            ))
        },
    },
    Case {
        name: "an Invocation before the handshake",
        script: |p, _| {
            let end = match p {
                Protocol::Json => End::HandshakeRefused(Text::detailed(
                    HANDSHAKE_FAILED,
                    "InvalidDataException: Missing required property 'protocol'.",
                )),
                // No record separator ever comes: the handshake times out.
                Protocol::MessagePack => {
                    End::HandshakeRefused(Text::plain("Handshake was canceled."))
                }
            };
            Ok(Some(Script {
                handshake: false,
                steps: vec![Step::Send(invoke(p, "1", "Echo", ("x",))?)],
                end,
            }))
        },
    },
    Case {
        name: "a second handshake",
        script: |p, _| {
            let handshake = format!("{{\"protocol\":\"{}\",\"version\":1}}\u{1e}", p.name());
            Ok(match p {
                // A JSON object without `type`.
                Protocol::Json => Script::after_handshake(
                    vec![Step::Send(handshake.into_bytes())],
                    close("InvalidDataException: Missing required property 'type'."),
                ),
                // `{` is read as a length of 123; once that many bytes have
                // come, they are not a MessagePack array.
                Protocol::MessagePack => {
                    let mut bytes = handshake.into_bytes();
                    bytes.resize(124, 0);
                    Script::after_handshake(
                        vec![Step::Send(bytes)],
                        close("InvalidDataException: Error reading MessagePack…"),
                    )
                }
            })
        },
    },
    Case {
        name: "a StreamItem for an unknown stream",
        script: |p, _| {
            Ok(Script::after_handshake(
                vec![
                    Step::Send(stream_item(p, "ghost", &1)?),
                    Step::Send(complete(p, "ghost")?),
                ],
                End::Alive,
            ))
        },
    },
    Case {
        name: "a CancelInvocation for an unknown invocation",
        script: |p, _| {
            Ok(Script::after_handshake(
                vec![Step::Send(cancel(p, "ghost")?)],
                End::Alive,
            ))
        },
    },
    Case {
        name: "a huge number of stream ids in one invocation",
        script: |p, _| {
            let mut call = invocation(p, "1", "Sum", ())?;
            call.stream_ids = (0..2000).map(|n| format!("u{n}")).collect();
            Ok(Script::after_handshake(
                vec![
                    Step::Send(encode(p, &HubMessage::Invocation(call))?),
                    Step::Replies(vec![Reply::Error(
                        id("1"),
                        Text::plain(
                            "An unexpected error occurred invoking 'Sum' on the server. HubException: Client sent 2000 stream(s), Hub method expects 1.",
                        ),
                    )]),
                ],
                End::Alive,
            ))
        },
    },
    Case {
        name: "a huge number of concurrent server-to-client streams",
        script: |p, _| {
            const COUNT: usize = 300;
            let ids: Vec<String> = (0..COUNT).map(|n| format!("f{n}")).collect();
            let mut start = Vec::new();
            let mut stop = Vec::new();
            for id in &ids {
                start.extend(stream_invoke(p, id, "Forever")?);
                stop.extend(cancel(p, id)?);
            }
            Ok(Script::after_handshake(
                vec![
                    Step::Send(start),
                    Step::Replies(ids.iter().cloned().map(Reply::Item).collect()),
                    Step::Send(stop),
                    Step::Replies(ids.iter().cloned().map(Reply::Void).collect()),
                ],
                End::Alive,
            ))
        },
    },
    Case {
        name: "a huge number of open client-to-server streams",
        script: |p, _| {
            const COUNT: usize = 300;
            let mut open = Vec::new();
            let mut items = Vec::new();
            let mut done = Vec::new();
            for n in 0..COUNT {
                let mut call = invocation(p, &format!("c{n}"), "Sum", ())?;
                call.stream_ids = vec![format!("u{n}")];
                open.extend(encode(p, &HubMessage::Invocation(call))?);
                items.extend(stream_item(p, &format!("u{n}"), &n)?);
                done.extend(complete(p, &format!("u{n}"))?);
            }
            Ok(Script::after_handshake(
                vec![
                    Step::Send(open),
                    Step::Send(items),
                    Step::Send(done),
                    Step::Replies(
                        (0..COUNT)
                            .map(|n| Reply::Value(format!("c{n}"), serde_json::json!(n)))
                            .collect(),
                    ),
                ],
                End::Alive,
            ))
        },
    },
    Case {
        name: "arguments of the wrong types",
        script: |p, _| {
            Ok(Script::after_handshake(
                vec![
                    Step::Send(invoke(p, "1", "Add", ("one", 2))?),
                    Step::Replies(vec![Reply::Error(
                        id("1"),
                        Text::detailed(
                            "Failed to invoke 'Add' due to an error on the server.",
                            BINDING,
                        ),
                    )]),
                ],
                End::Alive,
            ))
        },
    },
    Case {
        name: "the wrong number of arguments",
        script: |p, _| {
            Ok(Script::after_handshake(
                vec![
                    Step::Send(invoke(p, "1", "Add", (1,))?),
                    Step::Replies(vec![Reply::Error(
                        id("1"),
                        Text::detailed(
                            "Failed to invoke 'Add' due to an error on the server.",
                            "InvalidDataException: Invocation provides 1 argument(s) but target expects 2.",
                        ),
                    )]),
                ],
                End::Alive,
            ))
        },
    },
    Case {
        name: "a client stream item of the wrong type",
        script: |p, _| {
            let mut call = invocation(p, "1", "Sum", ())?;
            call.stream_ids = vec![id("u")];
            Ok(Script::after_handshake(
                vec![
                    Step::Send(encode(p, &HubMessage::Invocation(call))?),
                    Step::Send(stream_item(p, "u", &"seven")?),
                    Step::Replies(vec![Reply::Error(
                        id("1"),
                        Text::detailed(
                            "An unexpected error occurred invoking 'Sum' on the server. HubException: Failed to bind Stream message.",
                            "InvalidDataException: …",
                        ),
                    )]),
                ],
                End::Alive,
            ))
        },
    },
    Case {
        name: "an unknown method",
        script: |p, _| {
            Ok(Script::after_handshake(
                vec![
                    Step::Send(invoke(p, "1", "Nope", ())?),
                    Step::Replies(vec![Reply::Error(
                        id("1"),
                        Text::plain(
                            "Failed to invoke 'Nope' due to an error on the server. HubException: Method does not exist.",
                        ),
                    )]),
                ],
                End::Alive,
            ))
        },
    },
    Case {
        name: "a streaming method invoked as a call, and a call as a stream",
        script: |p, _| {
            Ok(Script::after_handshake(
                vec![
                    Step::Send(invoke(p, "1", "Forever", ())?),
                    Step::Send(stream_invoke(p, "2", "Slow")?),
                    Step::Replies(vec![
                        Reply::Error(
                            id("1"),
                            Text::plain(
                                "The client attempted to invoke the streaming 'Forever' method with a non-streaming invocation.",
                            ),
                        ),
                        Reply::Error(
                            id("2"),
                            Text::plain(
                                "The client attempted to invoke the non-streaming 'Slow' method with a streaming invocation.",
                            ),
                        ),
                    ]),
                ],
                End::Alive,
            ))
        },
    },
    Case {
        name: "an invocationId reused while its stream runs",
        script: |p, _| {
            let mut twice = stream_invoke(p, "r", "Forever")?;
            twice.extend(stream_invoke(p, "r", "Forever")?);
            Ok(Script::after_handshake(
                vec![
                    Step::Send(twice),
                    Step::Replies(vec![
                        Reply::Item(id("r")),
                        Reply::Error(id("r"), Text::plain("Invocation ID 'r' is already in use.")),
                    ]),
                    Step::Send(cancel(p, "r")?),
                    Step::Replies(vec![Reply::Void(id("r"))]),
                ],
                End::Alive,
            ))
        },
    },
    Case {
        name: "an invocationId reused while a call runs",
        script: |p, _| {
            // ASP.NET Core tracks only stream ids: both calls are answered.
            let mut twice = invoke(p, "u", "Slow", (100,))?;
            twice.extend(invoke(p, "u", "Slow", (50,))?);
            Ok(Script::after_handshake(
                vec![
                    Step::Send(twice),
                    Step::Replies(vec![
                        Reply::Value(id("u"), serde_json::json!(100)),
                        Reply::Value(id("u"), serde_json::json!(50)),
                    ]),
                ],
                End::Alive,
            ))
        },
    },
    Case {
        name: "a MessagePack handshake over Server-Sent Events",
        script: |p, t| {
            Ok((t == Transport::ServerSentEvents && p == Protocol::Json).then(|| Script {
                handshake: false,
                steps: vec![Step::Send(json("{\"protocol\":\"messagepack\",\"version\":1}"))],
                end: End::HandshakeRefused(Text::plain("Cannot use the 'messagepack' protocol on the current transport. The transport does not support 'Binary' transfer format.")),
            }))
        },
    },
];

// ---- running it ------------------------------------------------------------

/// A server with the probe hub at `/plain` (ASP.NET Core's defaults) and at
/// `/detailed` (detailed errors); both time handshakes out after 300 ms.
async fn start() -> anyhow::Result<SocketAddr> {
    let options = HubOptions::default().handshake_timeout(Duration::from_millis(300));
    let app = axum::Router::new()
        .nest(
            "/plain",
            HubEndpoint::new(Probe)
                .options(options.clone())
                .into_router(),
        )
        .nest(
            "/detailed",
            HubEndpoint::new(Probe)
                .options(options.enable_detailed_errors(true))
                .into_router(),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(tidings::serve(listener, app).into_future());
    Ok(addr)
}

/// Invokes Echo with `text` and expects its answer as the very next message.
async fn probe(connection: &mut RawConnection, text: &str) -> anyhow::Result<()> {
    let status = connection
        .send(invoke(connection.protocol, text, "Echo", (text,))?)
        .await?;
    anyhow::ensure!(status == 200, "probe POST answered {status}");
    let want = Reply::Value(text.to_owned(), serde_json::json!(text));
    match connection.next().await? {
        Incoming::Message(message) if want.matches(&message, false) => Ok(()),
        other => anyhow::bail!("expected the answer to {text:?}, got {other:?}"),
    }
}

/// Runs one script on a new connection to `path`.
async fn run(
    addr: SocketAddr,
    path: &str,
    transport: Transport,
    protocol: Protocol,
    script: Script,
) -> anyhow::Result<()> {
    let detailed = path == "/detailed";
    let mut connection = if script.handshake {
        RawConnection::connect(addr, path, transport, protocol).await?
    } else {
        RawConnection::open(addr, path, transport, protocol).await?
    };
    for step in script.steps {
        match step {
            Step::Send(bytes) => {
                let status = connection.send(bytes).await?;
                anyhow::ensure!(status == 200, "POST answered {status}");
            }
            Step::SendRefused(bytes, want) => {
                let status = connection.send(bytes).await?;
                anyhow::ensure!(status == want, "POST answered {status}, not {want}");
            }
            Step::RawTextFrame(bytes) => connection.send_raw_text_frame(bytes).await?,
            Step::Replies(mut want) => {
                while !want.is_empty() {
                    let message = match connection.next().await? {
                        Incoming::Message(message) => message,
                        Incoming::Ended(how) => {
                            anyhow::bail!("ended ({how}) while {} replies were due", want.len())
                        }
                    };
                    let Some(index) = want.iter().position(|r| r.matches(&message, detailed))
                    else {
                        anyhow::bail!("unexpected {message:?}; still due: {:?}", want.first());
                    };
                    want.swap_remove(index);
                }
            }
        }
    }
    match script.end {
        End::Alive => probe(&mut connection, "still-here").await,
        End::Close(text) => match connection.next().await? {
            Incoming::Message(HubMessage::Close(Close {
                error: Some(error),
                allow_reconnect: true,
            })) if text.matches(&error, detailed) => {
                connection.expect_end().await?;
                Ok(())
            }
            other => anyhow::bail!("expected a Close with {text:?}, got {other:?}"),
        },
        End::HandshakeRefused(text) => match connection.handshake_answer().await? {
            Some(error) if text.matches(&error, detailed) => {
                connection.expect_end().await?;
                Ok(())
            }
            other => anyhow::bail!("expected the handshake error {text:?}, got {other:?}"),
        },
        End::TransportFailed(code) => match connection.next().await? {
            Incoming::Message(HubMessage::Close(Close {
                error: None,
                allow_reconnect: true,
            })) => {
                let how = connection.expect_end().await?;
                anyhow::ensure!(
                    how == format!("close frame Some({code})"),
                    "expected close code {code}: {how}"
                );
                Ok(())
            }
            other => anyhow::bail!("expected a Close without error, got {other:?}"),
        },
    }
}

/// The whole catalogue over one transport and protocol, on both endpoints,
/// with a healthy connection watching.
async fn catalogue(transport: Transport, protocol: Protocol) -> anyhow::Result<()> {
    let addr = start().await?;
    let mut bystander = RawConnection::connect(addr, "/plain", transport, protocol).await?;
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in CATALOGUE {
        for path in ["/plain", "/detailed"] {
            let Some(script) = (case.script)(protocol, transport)? else {
                continue;
            };
            ran += 1;
            let outcome = tokio::time::timeout(
                Duration::from_secs(20),
                run(addr, path, transport, protocol, script),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("hung")));
            if let Err(error) = outcome {
                failures.push(format!("{} ({path}): {error:#}", case.name));
            }
            // The healthy connection got nothing but its own answer.
            let tag = format!("bystander-{ran}");
            if let Err(error) = probe(&mut bystander, &tag).await {
                failures.push(format!("{} ({path}): bystander: {error:#}", case.name));
            }
        }
    }
    // The server still takes new connections.
    let mut fresh = RawConnection::connect(addr, "/plain", transport, protocol).await?;
    probe(&mut fresh, "fresh").await?;
    anyhow::ensure!(
        failures.is_empty(),
        "{transport:?}/{protocol:?}: {} of {ran} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn websockets_json() -> anyhow::Result<()> {
    catalogue(Transport::WebSockets, Protocol::Json).await
}

#[tokio::test]
async fn websockets_messagepack() -> anyhow::Result<()> {
    catalogue(Transport::WebSockets, Protocol::MessagePack).await
}

#[tokio::test]
async fn server_sent_events_json() -> anyhow::Result<()> {
    catalogue(Transport::ServerSentEvents, Protocol::Json).await
}

#[tokio::test]
async fn long_polling_json() -> anyhow::Result<()> {
    catalogue(Transport::LongPolling, Protocol::Json).await
}

#[tokio::test]
async fn long_polling_messagepack() -> anyhow::Result<()> {
    catalogue(Transport::LongPolling, Protocol::MessagePack).await
}
