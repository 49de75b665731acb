//! [`Shutdown`]: graceful shutdown of every connection of one or more hubs.

use std::time::Duration;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Closes every connection gracefully and waits for them to finish.
///
/// Give the same `Shutdown` to every [`HubEndpoint`](crate::HubEndpoint) of
/// a server, then call [`shutdown`](Self::shutdown) when the process is
/// asked to stop. Each connection is sent a Close message with
/// `allowReconnect: true` (so clients with automatic reconnect come back to
/// another instance), its hooks run, and its transport closes.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A new, untriggered shutdown.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Starts closing every connection and waits up to `drain` for them to
    /// end. Returns `true` if all ended in time. New connections are refused
    /// from the moment this is called.
    pub async fn shutdown(&self, drain: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Number of connections still running.
    pub fn active_connections(&self) -> usize {
        self.tracker.len()
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }
}
