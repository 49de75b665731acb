//! Stateful reconnect bookkeeping (Ack / Sequence) of the client: the numbering of
//! `tidings_protocol::resume` (the server's own), plus when to acknowledge.
//!
//! Only trackable messages (Invocation, StreamItem, Completion, StreamInvocation,
//! CancelInvocation) count. Each direction numbers them 1, 2, 3… for the whole life of the logical
//! connection. After a reconnect each side sends `Sequence(first id it replays)` and replays what
//! the other has not acknowledged; the receiver drops what it has already processed.

use std::time::Duration;

use bytes::Bytes;
use tidings_protocol::{
    HubMessage,
    resume::{InboundSequence, Received, ReplayBuffer},
};
use tokio::time::Instant;

use crate::ConnectionError;

/// How long after receiving a message the Ack is sent (acks are coalesced), as in the JS client.
pub(crate) const ACK_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct MessageBuffer {
    /// Sent messages not acknowledged yet, numbered.
    sent: ReplayBuffer,
    /// The numbering of received messages.
    received: InboundSequence,
    last_acked: u64,
    ack_due: Option<Instant>,
}

impl MessageBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        MessageBuffer {
            sent: ReplayBuffer::new(limit),
            received: InboundSequence::default(),
            last_acked: 0,
            ack_due: None,
        }
    }

    /// Records a trackable message as sent (keeps it for replay).
    pub(crate) fn sent(&mut self, frame: &Bytes) {
        self.sent.push(frame.clone());
    }

    /// Whether unacknowledged messages reached the size limit: new sends wait for an Ack.
    pub(crate) fn is_full(&self) -> bool {
        !self.sent.has_room()
    }

    /// The peer processed everything up to `sequence_id`.
    pub(crate) fn ack(&mut self, sequence_id: u64) {
        self.sent.ack(sequence_id);
    }

    /// Whether a received message should be handled: false while waiting for the peer's Sequence
    /// after a reconnect, and for duplicates replayed by the peer.
    pub(crate) fn should_process(&mut self, message: &HubMessage) -> bool {
        if self.received.awaiting_sequence() {
            return false;
        }
        if !message.is_trackable() {
            return true;
        }
        match self.received.accept() {
            Received::New(_) => {
                self.schedule_ack();
                true
            }
            Received::Duplicate(id) => {
                if id == self.received.latest() {
                    // The peer is replaying what we processed but it never saw acknowledged.
                    self.schedule_ack();
                }
                false
            }
            Received::BeforeSequence => false,
        }
    }

    /// The peer's Sequence: the id of the next message it sends.
    pub(crate) fn sequence(&mut self, sequence_id: u64) -> Result<(), ConnectionError> {
        self.received
            .reset(sequence_id)
            .map_err(|_| ConnectionError::SequenceAhead)
    }

    fn schedule_ack(&mut self) {
        if self.ack_due.is_none() {
            self.ack_due = Some(Instant::now() + ACK_DELAY);
        }
    }

    /// When the next Ack is due, if one is.
    pub(crate) fn ack_due(&self) -> Option<Instant> {
        self.ack_due
    }

    /// The id to acknowledge now, if anything new arrived since the last Ack.
    pub(crate) fn take_ack(&mut self) -> Option<u64> {
        self.ack_due = None;
        let latest = self.received.latest();
        (latest > self.last_acked).then(|| {
            self.last_acked = latest;
            latest
        })
    }

    /// The transport dropped: messages from the new transport are ignored until its Sequence.
    pub(crate) fn disconnected(&mut self) {
        self.received.reattached();
        self.ack_due = None;
        // Re-acknowledge on the new transport: the last Ack may have been lost with the old one.
        self.last_acked = 0;
    }

    /// What to send on a new transport: the Sequence value (the first replayed id, or the next
    /// id if nothing is buffered) and the messages to replay.
    pub(crate) fn replay(&self) -> (u64, impl Iterator<Item = &Bytes>) {
        (self.sent.sequence_id(), self.sent.frames())
    }
}

#[cfg(test)]
mod tests {
    use tidings_protocol::{Completion, HubMessage};

    use super::*;

    fn trackable() -> HubMessage {
        HubMessage::Completion(Completion::void("1"))
    }

    #[test]
    fn acks_release_the_replay_buffer() {
        let mut buffer = MessageBuffer::new(10);
        for frame in [&b"aaaa"[..], b"bbbb", b"cccc"] {
            buffer.sent(&Bytes::copy_from_slice(frame));
        }
        assert!(buffer.is_full());
        buffer.ack(2);
        assert!(!buffer.is_full());
        let (first, frames) = buffer.replay();
        assert_eq!(first, 3);
        assert_eq!(
            frames.cloned().collect::<Vec<_>>(),
            [Bytes::from_static(b"cccc")]
        );
        buffer.ack(3);
        assert_eq!(buffer.replay().0, 4);
    }

    #[test]
    fn replayed_duplicates_are_dropped_after_the_sequence() {
        let mut buffer = MessageBuffer::new(100);
        assert!(buffer.should_process(&trackable()));
        assert!(buffer.should_process(&trackable()));
        assert!(buffer.should_process(&HubMessage::Ping));
        assert_eq!(buffer.take_ack(), Some(2));
        buffer.disconnected();
        assert!(
            !buffer.should_process(&trackable()),
            "nothing before the Sequence"
        );
        assert!(matches!(
            buffer.sequence(4),
            Err(ConnectionError::SequenceAhead)
        ));
        buffer.sequence(2).expect("replay starts at message 2");
        assert!(
            !buffer.should_process(&trackable()),
            "message 2 is a duplicate"
        );
        assert!(buffer.should_process(&trackable()), "message 3 is new");
        assert_eq!(buffer.take_ack(), Some(3));
    }
}
