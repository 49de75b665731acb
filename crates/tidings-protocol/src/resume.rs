//! Stateful reconnect numbering (Ack / Sequence), the same on both ends of a
//! connection: the server and the Rust client use these types, so their
//! replays de-duplicate each other exactly.
//!
//! Each direction numbers its *trackable* messages
//! ([`HubMessage::is_trackable`](crate::HubMessage::is_trackable):
//! Invocation, StreamItem, Completion, StreamInvocation, CancelInvocation)
//! 1, 2, 3… for the life of the logical connection:
//!
//! * The sender keeps what it sent in a [`ReplayBuffer`] until the peer
//!   acknowledges it (`Ack(id)` covers every id up to `id`). After a new
//!   transport attaches it sends `Sequence(first buffered id)` and then every
//!   buffered frame.
//! * The receiver counts what arrives with an [`InboundSequence`]: after a
//!   reconnect it ignores trackable messages until the peer's Sequence, and
//!   then drops the replayed ones it has processed already.
//!
//! The rules follow the shipped clients' `MessageBuffer` (TypeScript, .NET).
//! No timers and no I/O here: when to acknowledge, and what to do while the
//! buffer is full, is each end's own policy.

use std::collections::VecDeque;

use bytes::Bytes;

/// A peer's Sequence message named an id beyond what was received from it.
/// The text is the one the official clients and servers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", SequenceAhead::MESSAGE)]
pub struct SequenceAhead;

impl SequenceAhead {
    /// The error's text, also the error of the Close message that ends the
    /// connection over it.
    pub const MESSAGE: &'static str = "Sequence ID greater than amount of messages we've received.";
}

/// Sent trackable frames the peer has not acknowledged yet, oldest first,
/// bounded in bytes.
#[derive(Debug)]
pub struct ReplayBuffer {
    limit: usize,
    frames: VecDeque<Bytes>,
    /// Id of `frames[0]` (or of the next frame, when empty).
    first_id: u64,
    bytes: usize,
}

impl ReplayBuffer {
    /// An empty buffer that has room while it holds fewer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ReplayBuffer {
            limit,
            frames: VecDeque::new(),
            first_id: 1,
            bytes: 0,
        }
    }

    /// A buffer that continues another one's numbering: `frames` were
    /// numbered from `first_id` on and are still unacknowledged (a
    /// connection moving to another server carries them along).
    pub fn resume_at(limit: usize, first_id: u64, frames: impl IntoIterator<Item = Bytes>) -> Self {
        let mut buffer = ReplayBuffer {
            limit,
            frames: VecDeque::new(),
            first_id,
            bytes: 0,
        };
        for frame in frames {
            buffer.push(frame);
        }
        buffer
    }

    /// Whether another frame may be added. The frame that crosses the limit
    /// is accepted, so a single frame larger than the limit still goes out.
    pub fn has_room(&self) -> bool {
        self.bytes < self.limit
    }

    /// Numbers `frame` and keeps it; returns its sequence id.
    pub fn push(&mut self, frame: Bytes) -> u64 {
        self.bytes += frame.len();
        self.frames.push_back(frame);
        self.first_id + self.frames.len() as u64 - 1
    }

    /// Drops every frame with an id up to `sequence_id` (acks are
    /// cumulative; an old one changes nothing). Returns whether the buffer
    /// went from full to having room.
    pub fn ack(&mut self, sequence_id: u64) -> bool {
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

    /// The value of the Sequence message that precedes a replay: the id of
    /// the first replayed frame, or the next id when nothing is buffered.
    pub fn sequence_id(&self) -> u64 {
        self.first_id
    }

    /// The frames to replay after a reconnect, oldest first.
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter()
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// What [`InboundSequence::accept`] made of a trackable message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Not seen before: process it. Its id.
    New(u64),
    /// Replayed by the peer and processed already: drop it. Its id.
    Duplicate(u64),
    /// Arrived on a new transport before the peer's Sequence: drop it.
    BeforeSequence,
}

impl Received {
    /// Whether the message is to be processed.
    pub fn is_new(self) -> bool {
        matches!(self, Received::New(_))
    }
}

/// The receiving side of the numbering: which of the peer's trackable
/// messages are new.
#[derive(Debug)]
pub struct InboundSequence {
    /// The id the next trackable message gets.
    next: u64,
    /// The highest id processed so far.
    latest: u64,
    /// After a reconnect, trackable messages are ignored until the peer's
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
    /// The numbering of a peer whose messages up to `latest` were processed
    /// elsewhere (a connection that moved to another server): the peer's
    /// next transport starts with a Sequence, and replays up to `latest`
    /// are dropped.
    pub fn resume_after(latest: u64) -> Self {
        InboundSequence {
            next: latest + 1,
            latest,
            awaiting_sequence: true,
        }
    }

    /// Counts one trackable message.
    pub fn accept(&mut self) -> Received {
        if self.awaiting_sequence {
            return Received::BeforeSequence;
        }
        let id = self.next;
        self.next += 1;
        if id <= self.latest {
            return Received::Duplicate(id);
        }
        self.latest = id;
        Received::New(id)
    }

    /// Applies the peer's Sequence message: its next message has id
    /// `sequence_id`. A value beyond what was received is a protocol error.
    pub fn reset(&mut self, sequence_id: u64) -> Result<(), SequenceAhead> {
        if sequence_id > self.next {
            return Err(SequenceAhead);
        }
        self.next = sequence_id;
        self.awaiting_sequence = false;
        Ok(())
    }

    /// A new transport took over: wait for the peer's Sequence.
    pub fn reattached(&mut self) {
        self.awaiting_sequence = true;
    }

    /// Whether a new transport is waiting for the peer's Sequence.
    pub fn awaiting_sequence(&self) -> bool {
        self.awaiting_sequence
    }

    /// The highest id processed (what an Ack acknowledges).
    pub fn latest(&self) -> u64 {
        self.latest
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
        assert_eq!(inbound.accept(), Received::New(1));
        assert_eq!(inbound.accept(), Received::New(2));
        assert_eq!(inbound.accept(), Received::New(3));
        assert_eq!(inbound.latest(), 3);
        // The connection drops; the peer had only our ack for 1, so it
        // replays 2 and 3 and then sends 4.
        inbound.reattached();
        assert!(inbound.awaiting_sequence());
        assert_eq!(inbound.accept(), Received::BeforeSequence);
        inbound.reset(2).expect("2 is not beyond what was received");
        assert_eq!(inbound.accept(), Received::Duplicate(2));
        assert_eq!(inbound.accept(), Received::Duplicate(3));
        assert_eq!(inbound.accept(), Received::New(4));
        assert_eq!(inbound.latest(), 4);
    }

    #[test]
    fn inbound_sequence_with_nothing_to_replay() {
        let mut inbound = InboundSequence::default();
        assert!(inbound.accept().is_new());
        inbound.reattached();
        inbound.reset(2).expect("next expected id");
        assert!(inbound.accept().is_new());
        assert_eq!(inbound.latest(), 2);
    }

    #[test]
    fn inbound_sequence_beyond_what_was_received_is_an_error() {
        let mut inbound = InboundSequence::default();
        assert!(inbound.accept().is_new());
        assert_eq!(inbound.reset(3), Err(SequenceAhead));
        assert_eq!(
            SequenceAhead.to_string(),
            "Sequence ID greater than amount of messages we've received."
        );
        assert!(inbound.reset(2).is_ok());
    }

    #[test]
    fn both_sides_agree_across_a_drop() {
        // One side sends 1..=6; the other processed 1..=4 and acked 1..=2;
        // 5 and 6 were lost in flight.
        let mut sender = ReplayBuffer::new(10_000);
        let mut receiver = InboundSequence::default();
        for i in 1..=6u8 {
            sender.push(Bytes::from(vec![i]));
        }
        for _ in 1..=4 {
            assert!(receiver.accept().is_new());
        }
        sender.ack(2);
        // Reconnect: Sequence(3), then 3, 4, 5, 6.
        receiver.reattached();
        receiver
            .reset(sender.sequence_id())
            .expect("valid sequence");
        let delivered: Vec<u8> = sender
            .frames()
            .filter(|_| receiver.accept().is_new())
            .map(|f| f[0])
            .collect();
        assert_eq!(delivered, vec![5, 6], "every message exactly once");
    }

    #[test]
    fn a_buffer_carried_to_another_server_continues_its_numbering() {
        let mut first = ReplayBuffer::new(100);
        for n in 0..5u8 {
            first.push(Bytes::from(vec![n]));
        }
        first.ack(2);
        let mut moved = ReplayBuffer::resume_at(100, first.sequence_id(), first.frames().cloned());
        assert_eq!(moved.sequence_id(), 3);
        assert_eq!(moved.bytes(), 3);
        assert_eq!(moved.push(Bytes::from_static(b"x")), 6);
        moved.ack(4);
        let left: Vec<u8> = moved.frames().map(|f| f[0]).collect();
        assert_eq!(left, vec![4, b'x']);
    }

    #[test]
    fn a_peer_numbering_carried_over_drops_what_was_processed() {
        let mut inbound = InboundSequence::resume_after(7);
        assert!(inbound.awaiting_sequence());
        assert_eq!(inbound.accept(), Received::BeforeSequence);
        // The peer replays from 6: 6 and 7 were processed on the first server.
        inbound
            .reset(6)
            .expect("a Sequence within what was received");
        assert_eq!(inbound.accept(), Received::Duplicate(6));
        assert_eq!(inbound.accept(), Received::Duplicate(7));
        assert_eq!(inbound.accept(), Received::New(8));
        assert_eq!(inbound.latest(), 8);
        assert_eq!(
            InboundSequence::resume_after(7).reset(9),
            Err(SequenceAhead)
        );
    }
}
