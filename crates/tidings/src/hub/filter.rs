//! Hub filters: code that runs around every invocation of a hub
//! ([`HubFilter`]), and the per-connection [`RateLimiter`] built on it.
//!
//! A filter sees every invocation a client sends, including those of
//! methods that do not exist and those the method's authorization refuses,
//! so that rate limits and audit logs cannot be sidestepped by calling
//! names the hub does not have. `before` runs on the connection's read
//! loop, in order of registration, before anything else looks at the
//! invocation: while it waits, nothing more is read from that client
//! (back-pressure, like a busy method). `after` runs once the Completion has
//! been queued (for a streaming method, once its stream has ended).

use std::{collections::HashMap, time::Instant};

use crate::{BoxFuture, Context, HubError};
use parking_lot::Mutex;

/// One invocation as a filter sees it.
#[derive(Debug)]
pub struct InvocationInfo<'a> {
    pub(crate) cx: &'a Context,
    pub(crate) target: &'a str,
    pub(crate) invocation_id: Option<&'a str>,
    pub(crate) arguments: usize,
}

impl InvocationInfo<'_> {
    /// The calling connection (id, user, claims, query).
    pub fn context(&self) -> &Context {
        self.cx
    }

    /// The method name as the client spelled it (it may not exist).
    pub fn target(&self) -> &str {
        self.target
    }

    /// The invocation id (`None` for an invocation that wants no answer).
    pub fn invocation_id(&self) -> Option<&str> {
        self.invocation_id
    }

    /// How many arguments the invocation carries.
    pub fn argument_count(&self) -> usize {
        self.arguments
    }
}

/// Code run before and after every invocation of a hub
/// ([`HubEndpoint::filter`](crate::HubEndpoint::filter)).
///
/// ```
/// use tidings::{BoxFuture, HubError, HubFilter, InvocationInfo};
///
/// /// Refuses invocations with too many arguments, and logs failures.
/// #[derive(Debug)]
/// struct Guard;
///
/// impl HubFilter for Guard {
///     fn before<'a>(&'a self, call: &'a InvocationInfo<'a>) -> BoxFuture<'a, Result<(), HubError>> {
///         let refused = call.argument_count() > 8;
///         Box::pin(async move {
///             if refused { Err(HubError::new("Too many arguments.")) } else { Ok(()) }
///         })
///     }
///
///     fn after(&self, call: &InvocationInfo<'_>, outcome: Result<(), &str>) {
///         if let Err(error) = outcome {
///             tracing::info!(method = call.target(), error, "invocation failed");
///         }
///     }
/// }
/// ```
pub trait HubFilter: Send + Sync + 'static {
    /// Runs before the invocation is looked up. An error refuses it: the
    /// client gets a Completion with the error's text (as a method failing
    /// with it would), the method does not run, and the connection stays
    /// open. The default lets every invocation through.
    fn before<'a>(
        &'a self,
        invocation: &'a InvocationInfo<'a>,
    ) -> BoxFuture<'a, Result<(), HubError>> {
        let _ = invocation;
        Box::pin(async { Ok(()) })
    }

    /// Runs after the invocation: `Err` carries the error text the client
    /// was sent (a refusal by a filter, an unknown method, a denied
    /// authorization, a failing method). For a streaming method it runs
    /// when the stream has ended, and reports only a refusal before the
    /// stream started.
    fn after(&self, invocation: &InvocationInfo<'_>, outcome: Result<(), &str>) {
        let _ = (invocation, outcome);
    }

    /// Runs when a connection of the hub has ended, to drop any state the
    /// filter keeps for it.
    fn disconnected(&self, cx: &Context) {
        let _ = cx;
    }
}

/// A token bucket per connection: each invocation takes a token; a
/// connection holds at most `burst` tokens and gets `per_second` back each
/// second. An invocation finding the bucket empty is refused with
/// `Rate limit exceeded.` (an `HubException`, so the client sees it) and the
/// connection stays open.
///
/// ```
/// # use tidings::{HubEndpoint, RateLimiter};
/// # struct Chat;
/// # #[tidings::hub] impl Chat { async fn send_message(&self) {} }
/// // 5 calls at once, then 2 per second; only SendMessage is counted.
/// let endpoint = HubEndpoint::new(Chat)
///     .filter(RateLimiter::new(5, 2.0).methods(["SendMessage"]));
/// # let _ = endpoint;
/// ```
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    /// Lower-cased method names the limit applies to; `None`: all.
    methods: Option<Vec<String>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// At most `burst` invocations at once, refilled at `per_second`.
    pub fn new(burst: u32, per_second: f64) -> Self {
        RateLimiter {
            burst: f64::from(burst.max(1)),
            per_second: if per_second.is_finite() {
                per_second.max(0.0)
            } else {
                0.0
            },
            methods: None,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Counts only invocations of these methods (matched
    /// case-insensitively, as method names are).
    pub fn methods<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.methods = Some(
            names
                .into_iter()
                .map(|n| n.as_ref().to_lowercase())
                .collect(),
        );
        self
    }

    /// Takes a token from `connection`'s bucket at `now`.
    fn take(&self, connection: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(connection.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn counts(&self, target: &str) -> bool {
        match &self.methods {
            None => true,
            Some(names) => names.iter().any(|n| n.eq_ignore_ascii_case(target)),
        }
    }
}

impl HubFilter for RateLimiter {
    fn before<'a>(
        &'a self,
        invocation: &'a InvocationInfo<'a>,
    ) -> BoxFuture<'a, Result<(), HubError>> {
        let allowed = !self.counts(invocation.target)
            || self.take(invocation.cx.connection_id(), Instant::now());
        Box::pin(async move {
            if allowed {
                Ok(())
            } else {
                Err(HubError::new("Rate limit exceeded."))
            }
        })
    }

    fn disconnected(&self, cx: &Context) {
        self.buckets.lock().remove(cx.connection_id());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills() {
        let limiter = RateLimiter::new(2, 4.0);
        let t0 = Instant::now();
        assert!(limiter.take("a", t0));
        assert!(limiter.take("a", t0));
        assert!(!limiter.take("a", t0));
        // Another connection has its own bucket.
        assert!(limiter.take("b", t0));
        // A quarter of a second brings one token back at 4 per second.
        let later = t0 + Duration::from_millis(250);
        assert!(limiter.take("a", later));
        assert!(!limiter.take("a", later));
        // Never more than the burst, however long the pause.
        let much_later = later + Duration::from_secs(60);
        assert!(limiter.take("a", much_later));
        assert!(limiter.take("a", much_later));
        assert!(!limiter.take("a", much_later));
    }

    #[test]
    fn counts_only_listed_methods() {
        let limiter = RateLimiter::new(1, 0.0).methods(["SendMessage"]);
        assert!(limiter.counts("sendmessage"));
        assert!(!limiter.counts("Echo"));
    }
}
