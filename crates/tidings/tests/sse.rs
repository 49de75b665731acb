//! The plain Server-Sent Events helpers, over a real server (`tidings::serve`)
//! and real HTTP/1.1 and HTTP/2 connections: `Last-Event-ID` resumption of an
//! `EventLog` (no gap, no duplicate, while publishing goes on), the
//! documented behaviour for ids the log no longer holds, numbered streams,
//! keep-alive comments, and shutdown.

#[path = "support/http_client.rs"]
mod http_client;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use axum::{Router, extract::State, routing::get};
use http_client::{Client, Event, Events};
use tidings::sse::{EventLog, LastEventId, ServerSentEvents};
use tokio::net::{TcpListener, TcpStream};

/// A server with `/log` (the log given) and `/count` (ten numbered items,
/// resumable), and its address.
async fn start(log: EventLog<u64>) -> anyhow::Result<SocketAddr> {
    async fn from_log(State(log): State<EventLog<u64>>, last: LastEventId) -> ServerSentEvents {
        log.sse(last).keep_alive(Duration::from_millis(50))
    }
    async fn count(last: LastEventId) -> ServerSentEvents {
        // Item n is n * 100; resuming continues after the client's id.
        let first = last.id().map_or(1, |id| id + 1);
        let items = futures_util::stream::iter((first..=10).map(|n| n * 100));
        ServerSentEvents::numbered_from(first, items).retry(Duration::from_millis(1500))
    }
    async fn unserializable() -> ServerSentEvents {
        // serde_json refuses maps with non-string keys: the middle item
        // is skipped and its id stays unused.
        let items = [vec![], vec![((1, 2), 3)], vec![]]
            .into_iter()
            .map(|pairs| pairs.into_iter().collect::<HashMap<(u8, u8), u8>>());
        ServerSentEvents::new(futures_util::stream::iter(items))
    }
    let app = Router::new()
        .route("/log", get(from_log))
        .route("/count", get(count))
        .route("/unserializable", get(unserializable))
        .with_state(log);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(tidings::serve(listener, app).into_future());
    Ok(addr)
}

async fn h1(addr: SocketAddr) -> anyhow::Result<Client> {
    Client::http1(TcpStream::connect(addr).await?, &format!("http://{addr}")).await
}

async fn h2(addr: SocketAddr) -> anyhow::Result<Client> {
    Client::http2(TcpStream::connect(addr).await?, &format!("http://{addr}")).await
}

async fn subscribe(client: &mut Client, last: Option<&str>) -> anyhow::Result<Events> {
    let headers: Vec<(&str, &str)> = last.map(|id| ("last-event-id", id)).into_iter().collect();
    let response = client.get("/log", &headers).await?;
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    Events::new(response)
}

/// The id and the item of an event published by these tests (item = id).
fn id_and_item(event: &Event) -> anyhow::Result<(u64, u64)> {
    let id = event
        .id
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("event without id: {event:?}"))?
        .parse()?;
    Ok((id, event.data.parse()?))
}

/// Reads events until (and including) `last`, asserting that ids run
/// consecutively from `first` and that each carries its own item.
async fn expect_run(events: &mut Events, first: u64, last: u64) -> anyhow::Result<()> {
    for expected in first..=last {
        let event = events
            .next()
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended before event {expected}"))?;
        let (id, item) = id_and_item(&event)?;
        anyhow::ensure!(
            id == expected && item == expected,
            "expected event {expected}, got id {id} item {item}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn resuming_while_events_are_published_has_no_gap_and_no_duplicate() -> anyhow::Result<()> {
    const TOTAL: u64 = 400;
    let log = EventLog::<u64>::new(1_000);
    let addr = start(log.clone()).await?;

    // Over HTTP/1.1 and HTTP/2 alike: each subscriber reads part of the
    // stream, disconnects, and resumes from the last id it saw while the
    // publisher keeps going, so the history/live hand-over is exercised.
    let publisher = {
        let log = log.clone();
        tokio::spawn(async move {
            for n in 1..=TOTAL {
                assert_eq!(log.publish(&n).ok(), Some(n));
                if n % 2 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let mut readers = Vec::new();
    for (index, use_h2) in [false, true, false, true].into_iter().enumerate() {
        readers.push(tokio::spawn(async move {
            let connect = || async {
                if use_h2 {
                    h2(addr).await
                } else {
                    h1(addr).await
                }
            };
            let mut client = connect().await?;
            // Resume from scratch: every retained event, 1 first.
            let mut events = subscribe(&mut client, Some("0")).await?;
            let cut = 20 + 37 * index as u64;
            expect_run(&mut events, 1, cut).await?;
            drop(events);
            drop(client);
            let mut client = connect().await?;
            let mut events = subscribe(&mut client, Some(&cut.to_string())).await?;
            expect_run(&mut events, cut + 1, TOTAL).await?;
            anyhow::Ok(())
        }));
    }
    publisher.await?;
    for reader in readers {
        reader.await??;
    }
    Ok(())
}

#[tokio::test]
async fn ids_the_log_no_longer_holds_resume_from_the_oldest_retained() -> anyhow::Result<()> {
    let log = EventLog::<u64>::new(5);
    let addr = start(log.clone()).await?;
    for n in 1..=20 {
        log.publish(&n)?;
    }
    assert_eq!(log.last_id(), Some(20));
    let mut client = h2(addr).await?;
    // Too old, from the future (another run of the server), not a number:
    // all five retained events (16..=20), then live ones.
    let mut streams = Vec::new();
    for last in ["3", "999", "not-a-number"] {
        streams.push(subscribe(&mut client, Some(last)).await?);
    }
    // The latest id: nothing retained is owed, only live events.
    let mut caught_up = subscribe(&mut client, Some("20")).await?;
    // A retained id: the events after it.
    let mut middle = subscribe(&mut client, Some("17")).await?;
    // No header: live only.
    let mut fresh = subscribe(&mut client, None).await?;
    for events in &mut streams {
        expect_run(events, 16, 20).await?;
    }
    expect_run(&mut middle, 18, 20).await?;
    while log.subscribers() < 6 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log.publish(&21)?;
    for events in streams
        .iter_mut()
        .chain([&mut caught_up, &mut middle, &mut fresh])
    {
        expect_run(events, 21, 21).await?;
    }
    Ok(())
}

#[tokio::test]
async fn closing_the_log_ends_responses_after_what_was_published() -> anyhow::Result<()> {
    let log = EventLog::<u64>::new(16);
    let addr = start(log.clone()).await?;
    let mut client = h1(addr).await?;
    let mut events = subscribe(&mut client, None).await?;
    while log.subscribers() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log.publish(&1)?;
    log.publish(&2)?;
    log.close();
    assert!(matches!(
        log.publish(&3),
        Err(tidings::sse::PublishError::Closed)
    ));
    expect_run(&mut events, 1, 2).await?;
    assert_eq!(events.next().await?, None, "the response ends");
    // A later reconnection is answered with what it is owed, then ends.
    let mut client = h1(addr).await?;
    let mut late = subscribe(&mut client, Some("1")).await?;
    expect_run(&mut late, 2, 2).await?;
    assert_eq!(late.next().await?, None);
    Ok(())
}

#[tokio::test]
async fn a_quiet_stream_sends_keep_alive_comments() -> anyhow::Result<()> {
    let log = EventLog::<u64>::new(4);
    let addr = start(log.clone()).await?;
    let mut client = h2(addr).await?;
    let mut events = subscribe(&mut client, None).await?;
    // Nothing is published for a while: comments arrive (50 ms period).
    tokio::time::sleep(Duration::from_millis(300)).await;
    log.publish(&1)?;
    expect_run(&mut events, 1, 1).await?;
    assert!(
        events.comments >= 3,
        "opening comment plus keep-alives, saw {}",
        events.comments
    );
    Ok(())
}

#[tokio::test]
async fn a_numbered_stream_resumes_after_last_event_id() -> anyhow::Result<()> {
    let addr = start(EventLog::new(1)).await?;
    let mut client = h1(addr).await?;

    let mut all = Events::new(client.get("/count", &[]).await?)?;
    let mut seen = Vec::new();
    while let Some(event) = all.next().await? {
        seen.push((event.id.unwrap_or_default(), event.data));
    }
    let expected: Vec<(String, String)> = (1..=10)
        .map(|n: u64| (n.to_string(), (n * 100).to_string()))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(all.retry, Some(1500), "the retry field comes first");

    let mut client = h2(addr).await?;
    let mut resumed = Events::new(client.get("/count", &[("last-event-id", "7")]).await?)?;
    let mut seen = Vec::new();
    while let Some(event) = resumed.next().await? {
        seen.push((event.id.unwrap_or_default(), event.data));
    }
    assert_eq!(seen, expected[7..].to_vec());
    Ok(())
}

#[tokio::test]
async fn an_item_that_cannot_be_serialized_is_skipped_and_keeps_its_id() -> anyhow::Result<()> {
    let addr = start(EventLog::new(1)).await?;
    let mut client = h1(addr).await?;
    let mut events = Events::new(client.get("/unserializable", &[]).await?)?;
    let mut seen = Vec::new();
    while let Some(event) = events.next().await? {
        seen.push((event.id.unwrap_or_default(), event.data));
    }
    let expected = [("1", "{}"), ("3", "{}")].map(|(id, data)| (id.to_owned(), data.to_owned()));
    assert_eq!(seen, expected);

    let log = EventLog::<HashMap<(u8, u8), u8>>::new(4);
    let refused = log.publish(&HashMap::from([((1, 2), 3)]));
    assert!(matches!(
        refused,
        Err(tidings::sse::PublishError::Serialize(_))
    ));
    assert_eq!(
        log.publish(&HashMap::new())?,
        1,
        "a refused item takes no id"
    );
    Ok(())
}

#[tokio::test]
async fn responses_are_event_streams_that_proxies_do_not_buffer() -> anyhow::Result<()> {
    let addr = start(EventLog::new(1)).await?;
    for mut client in [h1(addr).await?, h2(addr).await?] {
        let response = client.get("/log", &[]).await?;
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");
        assert!(headers.get("connection").is_none());
    }
    Ok(())
}

#[tokio::test]
async fn graceful_shutdown_waits_for_open_streams_to_end() -> anyhow::Result<()> {
    let log = EventLog::<u64>::new(4);
    let app = Router::new()
        .route(
            "/log",
            get(|State(log): State<EventLog<u64>>, last: LastEventId| async move { log.sse(last) }),
        )
        .with_state(log.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tidings::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .into_future(),
    );
    let mut client = h2(addr).await?;
    let mut events = subscribe(&mut client, None).await?;
    let _ = stop_tx.send(());
    // The open stream keeps the server running…
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!server.is_finished(), "the server waits for the stream");
    assert!(
        TcpStream::connect(addr).await.is_err() || h1(addr).await.is_err(),
        "no new connections once shutdown started"
    );
    log.publish(&1)?;
    expect_run(&mut events, 1, 1).await?;
    // …until the stream ends.
    log.close();
    assert_eq!(events.next().await?, None);
    tokio::time::timeout(Duration::from_secs(5), server).await???;
    Ok(())
}
