//! Automatic reconnect: the [`RetryPolicy`] that decides whether and when to try again, and the
//! default policy of the official clients (0, 2, 10 and 30 seconds, then give up).

use std::time::Duration;

use crate::ConnectionError;

/// What a [`RetryPolicy`] knows when it decides about the next attempt.
#[derive(Debug)]
#[non_exhaustive]
pub struct RetryContext<'a> {
    /// How many reconnect attempts failed so far in this reconnect sequence (0 before the first).
    pub previous_retry_count: u32,
    /// Time since the connection was lost.
    pub elapsed: Duration,
    /// Why the connection was lost, or why the last attempt failed.
    pub retry_reason: &'a ConnectionError,
}

/// Decides how long to wait before the next reconnect attempt; `None` stops reconnecting and
/// closes the connection.
///
/// Closures `Fn(&RetryContext) -> Option<Duration>` are policies:
///
/// ```
/// use std::time::Duration;
/// use tidings_client::{HubConnectionBuilder, RetryContext};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let connection = HubConnectionBuilder::new("http://127.0.0.1:5000/hubs/chat")
///     .with_retry_policy(|cx: &RetryContext<'_>| {
///         // Retry every second for a minute.
///         (cx.elapsed < Duration::from_secs(60)).then_some(Duration::from_secs(1))
///     })
///     .build()?;
/// # drop(connection);
/// # Ok(())
/// # }
/// ```
pub trait RetryPolicy: Send + Sync + 'static {
    /// The delay before the next attempt, or `None` to give up.
    fn next_retry_delay(&self, context: &RetryContext<'_>) -> Option<Duration>;
}

impl<F> RetryPolicy for F
where
    F: Fn(&RetryContext<'_>) -> Option<Duration> + Send + Sync + 'static,
{
    fn next_retry_delay(&self, context: &RetryContext<'_>) -> Option<Duration> {
        self(context)
    }
}

/// A fixed list of delays: attempt `n` waits `delays[n]`; after the last one, give up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultRetryPolicy {
    delays: Vec<Duration>,
}

impl DefaultRetryPolicy {
    /// The delays of the JavaScript and .NET clients: 0, 2, 10 and 30 seconds.
    pub fn new() -> Self {
        Self::with_delays([0, 2, 10, 30].map(Duration::from_secs))
    }

    /// Custom delays, one per attempt.
    pub fn with_delays(delays: impl IntoIterator<Item = Duration>) -> Self {
        DefaultRetryPolicy {
            delays: delays.into_iter().collect(),
        }
    }

    /// The delays, in attempt order.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }
}

impl Default for DefaultRetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy for DefaultRetryPolicy {
    fn next_retry_delay(&self, context: &RetryContext<'_>) -> Option<Duration> {
        usize::try_from(context.previous_retry_count)
            .ok()
            .and_then(|n| self.delays.get(n).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_delays_match_the_official_clients_then_stop() {
        let policy = DefaultRetryPolicy::new();
        let reason = ConnectionError::TransportClosed;
        let delay = |n| {
            policy.next_retry_delay(&RetryContext {
                previous_retry_count: n,
                elapsed: Duration::ZERO,
                retry_reason: &reason,
            })
        };
        assert_eq!(delay(0), Some(Duration::ZERO));
        assert_eq!(delay(1), Some(Duration::from_secs(2)));
        assert_eq!(delay(2), Some(Duration::from_secs(10)));
        assert_eq!(delay(3), Some(Duration::from_secs(30)));
        assert_eq!(delay(4), None);
    }
}
