//! Time helpers shared by the connection and hub layers.

use std::time::Duration;

use tokio::time::Instant;

/// A time that never comes: the deadline of a timer that is not armed.
pub(crate) fn far_future() -> Instant {
    // About thirty years: an unarmed timer that never fires.
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}
