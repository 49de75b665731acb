//! Stateful reconnect state of one connection, shared by its session and
//! its WebSocket writer.
//!
//! The numbering itself — [`ReplayBuffer`] (what the writer sent and the
//! client has not acknowledged) and the inbound sequence the session keeps
//! — is `tidings_protocol::resume`, which the Rust client uses too, so that
//! both ends number and de-duplicate by the same code. This module adds
//! what sharing it between two futures of a connection takes: the lock,
//! the wake-up when an Ack makes room (see
//! [`transport::resume`](crate::transport::resume) for what a full buffer
//! means for senders), and the highest client message id processed, which
//! the writer acknowledges once a second when it changed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use tidings_protocol::resume::ReplayBuffer;
use tokio::sync::Notify;

/// The stateful-reconnect state of one connection, shared by its session
/// (which reads Acks and counts client messages) and its writer (which
/// numbers, buffers and replays server messages and sends Acks).
#[derive(Debug)]
pub(crate) struct Resume {
    buffer: Mutex<ReplayBuffer>,
    /// Signalled when an Ack makes room in a full buffer.
    room: Notify,
    /// The highest client message id the session processed.
    received: AtomicU64,
    /// Set by the inbound stream when it switches to a new socket; the
    /// session then starts a fresh decoder and waits for a Sequence.
    reattached: AtomicBool,
    /// Whether the connection moves to another server of the cluster when
    /// this one shuts down (`connections::handover`) instead of ending.
    moves: bool,
}

impl Resume {
    pub(crate) fn new(buffer: ReplayBuffer, received: u64, moves: bool) -> Self {
        Resume {
            buffer: Mutex::new(buffer),
            room: Notify::new(),
            received: AtomicU64::new(received),
            reattached: AtomicBool::new(false),
            moves,
        }
    }

    /// Whether the connection moves to another server when this one shuts
    /// down: its session outlives the shutdown until it is taken.
    pub(crate) fn moves_on_shutdown(&self) -> bool {
        self.moves
    }

    /// The replay buffer. Held only for synchronous bookkeeping, never
    /// across an `.await`.
    pub(crate) fn buffer(&self) -> MutexGuard<'_, ReplayBuffer> {
        self.buffer.lock()
    }

    /// The client acknowledged everything up to `sequence_id`.
    pub(crate) fn ack(&self, sequence_id: u64) {
        if self.buffer().ack(sequence_id) {
            self.room.notify_one();
        }
    }

    /// Completes when an Ack may have made room (a permit is stored if it
    /// happened while nobody waited, so no wake-up is lost).
    pub(crate) async fn room(&self) {
        self.room.notified().await;
    }

    pub(crate) fn set_received(&self, sequence_id: u64) {
        self.received.store(sequence_id, Ordering::Release);
    }

    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    pub(crate) fn mark_reattached(&self) {
        self.reattached.store(true, Ordering::Release);
    }

    pub(crate) fn take_reattached(&self) -> bool {
        self.reattached.swap(false, Ordering::AcqRel)
    }
}
