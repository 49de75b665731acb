//! Helpers shared by the client's end-to-end tests: collecting events from callbacks and client
//! methods, waiting for a server process to listen, reading a hub error.

#![allow(dead_code)] // Each test crate uses its own subset.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use tidings_client::{FromArguments, HubConnection, InvokeError};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
    sync::mpsc,
    time::timeout,
};

pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// A callback that forwards its value to the returned receiver.
pub(crate) fn channel<T: Send + 'static>()
-> (Arc<dyn Fn(T) + Send + Sync>, mpsc::UnboundedReceiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(move |value| drop(tx.send(value))), rx)
}

/// The next value, within [`WAIT`].
pub(crate) async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Result<T> {
    timeout(WAIT, rx.recv())
        .await
        .context("timed out waiting for an event")?
        .context("the event channel closed")
}

/// Registers client method `method` (one argument) and returns what it receives.
pub(crate) fn forward<T>(connection: &HubConnection, method: &str) -> mpsc::UnboundedReceiver<T>
where
    T: Send + 'static,
    (T,): FromArguments,
{
    let (sink, rx) = channel::<T>();
    connection.on(method, move |(value,): (T,)| {
        let sink = Arc::clone(&sink);
        async move { sink(value) }
    });
    rx
}

/// The server's error text of a failed call.
pub(crate) fn hub_error<T: std::fmt::Debug>(result: Result<T, InvokeError>) -> Result<String> {
    match result {
        Err(InvokeError::Hub(text)) => Ok(text),
        other => bail!("expected a hub error, got {other:?}"),
    }
}

/// Reads the child's stdout until it prints `listening on URL`; returns the URL.
pub(crate) async fn listening_url(child: &mut Child, within: Duration) -> Result<String> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    timeout(within, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("listening on ") {
                return Ok(url.trim().to_owned());
            }
        }
        bail!("the server exited before listening")
    })
    .await
    .context("the server did not start")?
}
