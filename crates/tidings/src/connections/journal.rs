//! A stateful connection's journal: its numbered messages recorded outside
//! the process before they are written to the socket, so that another
//! server of the cluster can resume the connection after this one died
//! without a handover (a crash, `kill -9`).
//!
//! Write-ahead is what makes the resumption exact. The client may hold any
//! prefix of what the writer numbered — but never a message the journal
//! lacks, because nothing is written before it is recorded. The server that
//! resumes the connection replays the journal from the oldest message the
//! client has not acknowledged, under the same numbers, and the client
//! drops what it already had by number (the stateful reconnect protocol's
//! own rule). Whatever the dead server never numbered is the resuming
//! server's to deliver: see the hub layer's lifetime managers for how they
//! find it.

use bytes::Bytes;
// The same type as the connection layer's `BoxFuture` (this module sits
// below the seam of `handler.rs`, which names it).
use futures_util::future::BoxFuture;

/// One numbered message, as the writer is about to send it.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// Its sequence id (the stateful reconnect protocol's numbering).
    pub sequence_id: u64,
    /// The frame, in the connection's protocol.
    pub frame: Bytes,
    /// Where it came from, as the application marked it (see
    /// [`Connection::try_send_marked`](crate::connections::Connection::try_send_marked)).
    pub mark: Option<Bytes>,
}

/// Records a stateful connection's numbered messages (see the module docs).
pub trait Journal: Send + Sync {
    /// Records `entries` (consecutive sequence ids); the writer sends them
    /// once this returns. An implementation that cannot record gives up
    /// within a bounded time (the connection is then no longer resumable
    /// after a crash, and says so in its logs) rather than stall the
    /// connection.
    fn append<'a>(&'a self, entries: &'a [JournalEntry]) -> BoxFuture<'a, ()>;

    /// The client has acknowledged everything before `first_unacknowledged`
    /// (those entries may go), and the connection processed `received`
    /// client messages.
    fn progress(&self, first_unacknowledged: u64, received: u64);

    /// The connection ended here (closed, not moved): forget it.
    fn end(&self);
}
