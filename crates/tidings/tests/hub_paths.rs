//! A hub mounted by the library ([`Router::nest`] and [`HubPaths`]), served
//! by `tidings::serve`: its negotiate and transport requests are routed
//! whatever the case of their path and with or without a trailing slash,
//! as ASP.NET Core routes them.

#[path = "support/http_client.rs"]
mod http_client;
#[path = "support/raw.rs"]
mod raw;

use std::net::SocketAddr;

use axum::Router;
use http_client::Client;
use raw::{RawConnection, Transport};
use tidings::{HubEndpoint, HubPaths, hub};
use tidings_protocol::Protocol;
use tokio::net::{TcpListener, TcpStream};

struct Echo;

#[hub]
impl Echo {
    async fn echo(&self, text: String) -> String {
        text
    }
}

async fn start(paths: Option<HubPaths>) -> anyhow::Result<SocketAddr> {
    let app = Router::new().nest("/hubs/echo", HubEndpoint::new(Echo).into_router());
    let app = match paths {
        Some(paths) => paths.route(app),
        None => app,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(tidings::serve(listener, app).into_future());
    Ok(addr)
}

async fn negotiate_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut client =
        Client::http1(TcpStream::connect(addr).await?, &format!("http://{addr}")).await?;
    let response = client.send("POST", path, &[], None).await?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn hub_paths_of_any_case_and_with_a_trailing_slash_reach_the_hub() -> anyhow::Result<()> {
    let addr = start(Some(HubPaths::new(["/hubs/echo"]))).await?;
    for path in [
        "/hubs/echo/negotiate",
        "/HUBS/Echo/Negotiate",
        "/hubs/echo/negotiate/",
    ] {
        assert_eq!(negotiate_status(addr, path).await?, 200, "{path}");
    }
    // Negotiate and every transport's requests at the hub's path in other cases.
    for transport in [
        Transport::WebSockets,
        Transport::ServerSentEvents,
        Transport::LongPolling,
    ] {
        RawConnection::connect(addr, "/HUBS/ECHO", transport, Protocol::Json).await?;
    }
    // A WebSocket without negotiation, at the path with a trailing slash.
    RawConnection::connect(addr, "/Hubs/Echo/", Transport::WebSockets, Protocol::Json).await?;
    // Other paths stay unrouted.
    assert_eq!(negotiate_status(addr, "/hubs/echoes/negotiate").await?, 404);
    Ok(())
}

#[tokio::test]
async fn without_hub_paths_the_router_matches_exactly() -> anyhow::Result<()> {
    let addr = start(None).await?;
    assert_eq!(negotiate_status(addr, "/hubs/echo/negotiate").await?, 200);
    assert_eq!(negotiate_status(addr, "/HUBS/Echo/negotiate").await?, 404);
    Ok(())
}
