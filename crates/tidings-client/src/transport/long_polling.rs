//! The Long Polling transport: `GET`s that the server holds until it has messages, sends by
//! `POST`, and a `DELETE` to end the connection.
//!
//! The first poll must be answered at once with `200` (that is how the server confirms the
//! connection); later polls return messages, an empty `200` after the server's poll timeout
//! (poll again), or `204` once the connection has ended.

use http::{Method, StatusCode};
use tidings_protocol::TransportType;
use tokio::sync::mpsc;
use url::Url;

use super::{
    Link, LinkEnds, TransportEvent,
    http::{Http, error_chain, post_loop, status_error},
};
use crate::TransportError;

/// Sends the first poll; the link is up once it returned `200`.
pub(crate) async fn connect(http: &Http, url: &Url) -> Result<Link, TransportError> {
    let response = http
        .request(Method::GET, url, None, &[], Some(http.timeout), false)
        .await?;
    if response.status() != StatusCode::OK {
        return Err(status_error(response).await);
    }
    // Servers answer the first poll without data, but deliver anything it carries.
    let first = response
        .bytes()
        .await
        .map_err(|e| TransportError::Http(error_chain(&e)))?;
    let http = http.clone();
    let url = url.clone();
    Ok(Link::new(TransportType::LongPolling, move |ends, tasks| {
        let LinkEnds { outgoing, incoming } = ends;
        tasks.spawn(poll_loop(
            http.clone(),
            url.clone(),
            first,
            incoming.clone(),
        ));
        tasks.spawn(post_loop(http, url, outgoing, incoming, true));
    }))
}

async fn poll_loop(
    http: Http,
    url: Url,
    first: bytes::Bytes,
    incoming: mpsc::Sender<TransportEvent>,
) {
    if !first.is_empty() && incoming.send(TransportEvent::Data(first)).await.is_err() {
        return;
    }
    let outcome = loop {
        let response = match http
            .request(Method::GET, &url, None, &[], Some(http.timeout), false)
            .await
        {
            Ok(response) => response,
            Err(e) => break Some(e),
        };
        match response.status() {
            StatusCode::OK => match response.bytes().await {
                Ok(body) if body.is_empty() => {}
                Ok(body) => {
                    if incoming.send(TransportEvent::Data(body)).await.is_err() {
                        return;
                    }
                }
                Err(e) => break Some(TransportError::Http(error_chain(&e))),
            },
            StatusCode::NO_CONTENT => break None,
            _ => break Some(status_error(response).await),
        }
    };
    let _ = incoming.send(TransportEvent::Closed(outcome)).await;
}
