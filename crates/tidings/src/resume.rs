//! Stateful reconnect bookkeeping (Ack / Sequence messages), shared by the
//! session and the WebSocket writer of one stateful connection.
//!
//! Both directions number their *trackable* messages (Invocation,
//! StreamItem, Completion, StreamInvocation, CancelInvocation) 1, 2, 3… for
//! the life of the logical connection:
//!
//! * **Outbound** ([`ReplayBuffer`]): the writer numbers every trackable
//!   frame as it takes it off the outbound queue and keeps it until the
//!   client acknowledges it. The buffer is bounded in bytes: when it holds
//!   `stateful_reconnect_buffer_size` bytes or more, the writer stops taking
//!   messages off the queue until an Ack frees room (see
//!   [`transport::resume`](crate::transport::resume) for what that means for
//!   senders). After a new socket attaches, the writer sends
//!   `Sequence(first buffered id)` and then every buffered frame.
//! * **Inbound** ([`InboundSequence`]): the session counts the client's
//!   trackable messages, drops the ones it has already processed when the
//!   client replays them after a reconnect, and publishes the highest id it
//!   processed; the writer acknowledges it once a second when it changed.
//!
//! The numbering rules follow the shipped clients (`MessageBuffer` in the
//! TypeScript and .NET clients), so that each side's replay is de-duplicated
//! by the other exactly.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use tokio::sync::Notify;

/// The text clients and servers use when a peer announces a sequence id
/// beyond what was sent.
pub(crate) const SEQUENCE_TOO_LARGE: &str =
    "Sequence ID greater than amount of messages we've received.";

/// Sent trackable frames the client has not acknowledged yet, oldest first.
#[derive(Debug)]
pub(crate) struct ReplayBuffer {
    limit: usize,
    frames: VecDeque<Bytes>,
    /// Id of `frames[0]` (or of the next frame, when empty).
    first_id: u64,
    bytes: usize,
}

impl ReplayBuffer {
    /// An empty buffer that has room while it holds fewer than `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        ReplayBuffer {
            limit,
            frames: VecDeque::new(),
            first_id: 1,
            bytes: 0,
        }
    }

    /// Whether another frame may be added. The frame that crosses the limit
    /// is accepted, so a single frame larger than the limit still goes out.
    pub(crate) fn has_room(&self) -> bool {
        self.bytes < self.limit
    }

    /// Numbers `frame` and keeps it; returns its sequence id.
    pub(crate) fn push(&mut self, frame: Bytes) -> u64 {
        self.bytes += frame.len();
        self.frames.push_back(frame);
        self.next_id() - 1
    }

    /// Drops every frame with an id up to `sequence_id`. Returns whether the
    /// buffer went from full to having room.
    pub(crate) fn ack(&mut self, sequence_id: u64) -> bool {
        let was_full = !self.has_room();
        while self.first_id <= sequence_id {
            let Some(frame) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= frame.len();
            self.first_id += 1;
        }
        was_full && self.has_room()
    }

    /// The id the next pushed frame gets.
    fn next_id(&self) -> u64 {
        self.first_id + self.frames.len() as u64
    }

    /// The value of the Sequence message that precedes a replay: the id of
    /// the first replayed frame, or the next id when nothing is buffered.
    pub(crate) fn sequence_id(&self) -> u64 {
        self.first_id
    }

    /// The frames to replay after a reconnect, oldest first.
    pub(crate) fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter()
    }

    /// Bytes currently held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The receiving side of the numbering: which client messages are new.
#[derive(Debug)]
pub(crate) struct InboundSequence {
    /// The id the next trackable message gets.
    next: u64,
    /// The highest id processed so far.
    latest: u64,
    /// After a reconnect, trackable messages are ignored until the client's
    /// Sequence says where its replay starts.
    awaiting_sequence: bool,
}

impl Default for InboundSequence {
    fn default() -> Self {
        InboundSequence {
            next: 1,
            latest: 0,
            awaiting_sequence: false,
        }
    }
}

impl InboundSequence {
    /// Counts one trackable message; `false` means it was processed before
    /// (a replayed duplicate) and must be dropped.
    pub(crate) fn accept(&mut self) -> bool {
        if self.awaiting_sequence {
            return false;
        }
        let id = self.next;
        self.next += 1;
        if id <= self.latest {
            return false;
        }
        self.latest = id;
        true
    }

    /// Applies the client's Sequence message: its next message has id
    /// `sequence_id`. A value beyond what was received is a protocol error.
    pub(crate) fn reset(&mut self, sequence_id: u64) -> Result<(), &'static str> {
        if sequence_id > self.next {
            return Err(SEQUENCE_TOO_LARGE);
        }
        self.next = sequence_id;
        self.awaiting_sequence = false;
        Ok(())
    }

    /// A new socket took over: wait for the client's Sequence.
    pub(crate) fn reattached(&mut self) {
        self.awaiting_sequence = true;
    }

    /// The highest id processed (what an Ack acknowledges).
    pub(crate) fn latest(&self) -> u64 {
        self.latest
    }
}

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
}

impl Resume {
    pub(crate) fn new(buffer_size: usize) -> Self {
        Resume {
            buffer: Mutex::new(ReplayBuffer::new(buffer_size)),
            room: Notify::new(),
            received: AtomicU64::new(0),
            reattached: AtomicBool::new(false),
        }
    }

    /// The replay buffer. Held only for synchronous bookkeeping, never
    /// across an `.await`.
    pub(crate) fn buffer(&self) -> MutexGuard<'_, ReplayBuffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn numbers_from_one_and_drops_acked_frames() {
        let mut buffer = ReplayBuffer::new(100);
        assert_eq!(buffer.sequence_id(), 1);
        assert_eq!(buffer.push(frame(10)), 1);
        assert_eq!(buffer.push(frame(10)), 2);
        assert_eq!(buffer.push(frame(10)), 3);
        assert_eq!(buffer.sequence_id(), 1);
        buffer.ack(2);
        assert_eq!(buffer.sequence_id(), 3);
        assert_eq!(buffer.frames().count(), 1);
        assert_eq!(buffer.bytes(), 10);
        // Acks are cumulative; an old or repeated one changes nothing.
        buffer.ack(1);
        assert_eq!(buffer.sequence_id(), 3);
        // An ack beyond what was sent drops everything, and numbering goes on.
        buffer.ack(99);
        assert_eq!(buffer.frames().count(), 0);
        assert_eq!(buffer.sequence_id(), 4);
        assert_eq!(buffer.push(frame(1)), 4);
    }

    #[test]
    fn bounded_in_bytes_with_one_frame_of_overshoot() {
        let mut buffer = ReplayBuffer::new(25);
        buffer.push(frame(10));
        buffer.push(frame(10));
        assert!(buffer.has_room());
        // The frame that crosses the limit is taken...
        buffer.push(frame(10));
        // ...and then the buffer is full until an ack.
        assert!(!buffer.has_room());
        assert!(!buffer.ack(0));
        assert!(buffer.ack(1), "room after the first frame is acked");
        assert!(buffer.has_room());
        assert!(!buffer.ack(2), "it had room already");
    }

    #[test]
    fn a_frame_larger_than_the_limit_still_goes_out() {
        let mut buffer = ReplayBuffer::new(5);
        assert!(buffer.has_room());
        assert_eq!(buffer.push(frame(50)), 1);
        assert!(!buffer.has_room());
        assert!(buffer.ack(1));
    }

    #[test]
    fn replay_frames_are_the_unacked_ones_in_order() {
        let mut buffer = ReplayBuffer::new(1000);
        for i in 0..5u8 {
            buffer.push(Bytes::from(vec![i]));
        }
        buffer.ack(2);
        let replay: Vec<u8> = buffer.frames().map(|f| f[0]).collect();
        assert_eq!(replay, vec![2, 3, 4]);
        assert_eq!(buffer.sequence_id(), 3);
    }

    #[test]
    fn inbound_counts_and_drops_replayed_duplicates() {
        let mut inbound = InboundSequence::default();
        assert!(inbound.accept()); // 1
        assert!(inbound.accept()); // 2
        assert!(inbound.accept()); // 3
        assert_eq!(inbound.latest(), 3);
        // The connection drops; the client had only our ack for 1, so it
        // replays 2 and 3 and then sends 4.
        inbound.reattached();
        assert!(!inbound.accept(), "nothing counts before the Sequence");
        inbound.reset(2).expect("2 is not beyond what was received");
        assert!(!inbound.accept(), "2 again");
        assert!(!inbound.accept(), "3 again");
        assert!(inbound.accept(), "4 is new");
        assert_eq!(inbound.latest(), 4);
    }

    #[test]
    fn inbound_sequence_with_nothing_to_replay() {
        let mut inbound = InboundSequence::default();
        assert!(inbound.accept());
        inbound.reattached();
        inbound.reset(2).expect("next expected id");
        assert!(inbound.accept());
        assert_eq!(inbound.latest(), 2);
    }

    #[test]
    fn inbound_sequence_beyond_what_was_received_is_an_error() {
        let mut inbound = InboundSequence::default();
        assert!(inbound.accept());
        assert_eq!(inbound.reset(3), Err(SEQUENCE_TOO_LARGE));
        assert!(inbound.reset(2).is_ok());
    }

    #[test]
    fn both_sides_agree_across_a_drop() {
        // The server sends 1..=6; the client processed 1..=4 and acked 1..=2;
        // 5 and 6 were lost in flight.
        let mut server = ReplayBuffer::new(10_000);
        let mut client = InboundSequence::default();
        for i in 1..=6u8 {
            server.push(Bytes::from(vec![i]));
        }
        for _ in 1..=4 {
            assert!(client.accept());
        }
        server.ack(2);
        // Reconnect: Sequence(3), then 3, 4, 5, 6.
        client.reattached();
        client.reset(server.sequence_id()).expect("valid sequence");
        let delivered: Vec<u8> = server
            .frames()
            .filter(|_| client.accept())
            .map(|f| f[0])
            .collect();
        assert_eq!(delivered, vec![5, 6], "every message exactly once");
    }
}
