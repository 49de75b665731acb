//! The outbound queue of one connection: bounded, many senders, one
//! receiver (the connection's writer).
//!
//! It does what a bounded `tokio::sync::mpsc` channel does, for two
//! reasons particular to this place:
//!
//! - **Memory.** A tokio channel allocates its first block of 32 slots
//!   when it is created, a kilobyte that every idle connection would carry.
//!   This queue is a `VecDeque` that grows only when messages wait.
//! - **Wake-ups.** On a WebSocket the session and the writer share one
//!   task, and the session's replies to its own client are queued from
//!   inside that task. The task polls the session before the writer (see
//!   [`Turn`]), so the writer takes such a reply in the same poll: waking
//!   the task for it would only make it run once more for nothing. A
//!   sender that runs inside the receiving task's turn therefore does not
//!   wake it; every other sender does.
//!
//! The queue also carries the connection's [`Gate`]s: the futures a
//! connection task watches besides its socket and this queue (its abort
//! token, its timers) fire rarely, yet polling them costs a lock or two on
//! memory that has gone cold between two messages. A gated future is only
//! polled again once it has woken its task, which it notes in a flag kept
//! here, on the cache line the writer touches anyway.

use std::{
    cell::Cell,
    collections::VecDeque,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{Notify, OwnedSemaphorePermit};

/// One entry of a connection's outbound queue.
///
/// Kept to the size of one `Bytes` (32 bytes): every message waiting for a
/// connection, and the room its queue keeps after a burst, costs that
/// much. Entries other than a plain frame are rare and boxed.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame already serialized in the connection's protocol (a message
    /// shared with other connections is a clone of the same `Bytes`).
    Frame(Bytes),
    /// A stream item holding a window place, or the final entry.
    Control(Box<Control>),
}

#[derive(Debug)]
pub(crate) enum Control {
    /// A frame holding a place in a bounded window (a server-to-client
    /// stream's `stream_buffer_capacity`); the place frees up when the
    /// writer takes the frame.
    Windowed {
        frame: Bytes,
        _place: OwnedSemaphorePermit,
    },
    /// The last frame (a Close message, or nothing): write it, then close
    /// the transport.
    Close(Option<Bytes>),
    /// A frame with its mark: where it came from, for a connection's
    /// [`Journal`](crate::connections::journal::Journal) (set only when one
    /// records the connection's messages).
    Marked { frame: Bytes, mark: Bytes },
}

impl Outbound {
    /// A frame with its mark (see [`Control::Marked`]).
    pub(crate) fn marked(frame: Bytes, mark: Bytes) -> Self {
        Outbound::Control(Box::new(Control::Marked { frame, mark }))
    }

    /// The final entry.
    pub(crate) fn close(frame: Option<Bytes>) -> Self {
        Outbound::Control(Box::new(Control::Close(frame)))
    }

    /// The frame of the final entry (`Some(None)`: close without a frame),
    /// or `None` if this is not the final entry.
    pub(crate) fn as_close(&mut self) -> Option<Option<Bytes>> {
        match self {
            Outbound::Control(control) => match &mut **control {
                Control::Close(frame) => Some(frame.take()),
                Control::Windowed { .. } | Control::Marked { .. } => None,
            },
            Outbound::Frame(_) => None,
        }
    }

    /// The bytes to write for this entry; sets `closing` at the final
    /// entry.
    pub(crate) fn into_frame(self, closing: &mut bool) -> Option<Bytes> {
        self.into_marked(closing).map(|(frame, _)| frame)
    }

    /// The bytes to write for this entry and its mark, if it has one; sets
    /// `closing` at the final entry.
    pub(crate) fn into_marked(self, closing: &mut bool) -> Option<(Bytes, Option<Bytes>)> {
        match self {
            Outbound::Frame(bytes) => Some((bytes, None)),
            Outbound::Control(control) => match *control {
                Control::Windowed { frame, .. } => Some((frame, None)),
                Control::Marked { frame, mark } => Some((frame, Some(mark))),
                Control::Close(frame) => {
                    *closing = true;
                    frame.map(|frame| (frame, None))
                }
            },
        }
    }
}

/// The largest batch a transport builds from queued messages (one
/// WebSocket message, one SSE write, one poll response): the bound a
/// [`Receiver::drain`] caller stops at.
pub(crate) const MAX_BATCH: usize = 64 * 1024;

/// Creates a queue that holds at most `capacity` entries.
pub(crate) fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        side: AtomicU8::new(0),
        state: Mutex::new(State {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            senders: 1,
            closed: false,
            killed: false,
            waiting_senders: 0,
            receiver: None,
            receiver_waiting: false,
            taken: 0,
        }),
        room: Notify::new(),
        side_tasks: [AtomicWaker::new(), AtomicWaker::new()],
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

// `repr(C)`: `side` sits next to the lock every `take` touches, so that
// a gate's check costs no cache miss of its own.
#[repr(C)]
struct Shared {
    /// One bit per [`Side`]: a gated future of that side woke its task.
    side: AtomicU8,
    state: Mutex<State>,
    /// Senders waiting for room.
    room: Notify,
    /// The task of each side's gate (they may be two tasks: with Server-Sent
    /// Events and Long Polling the writer is the HTTP response).
    side_tasks: [AtomicWaker; 2],
}

/// A gated future woke: both sides look (a spurious poll of the other side
/// on a rare event costs less than a waker per side).
impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.side.fetch_or(SIDE_ALL, Ordering::Release);
        for task in &self.side_tasks {
            task.wake();
        }
    }
}

struct State {
    queue: VecDeque<Outbound>,
    capacity: usize,
    senders: usize,
    /// The receiver is gone: nothing will be taken any more.
    closed: bool,
    /// The receiver must stop now: it gets the end at once, whatever is
    /// still queued.
    killed: bool,
    /// Senders inside `send` waiting for room (so that taking an entry
    /// only signals `room` when someone listens).
    waiting_senders: usize,
    /// The receiving task's waker, kept (and replaced only if the task
    /// changes) rather than registered anew on every wait: the receiver
    /// holds this lock when it finds the queue empty anyway.
    receiver: Option<Waker>,
    /// The receiver found the queue empty and waits to be woken.
    receiver_waiting: bool,
    /// How many entries the receiver has taken (wrapping): what a
    /// [`Stall`] watches for progress.
    taken: u64,
}

impl State {
    /// The receiver's waker if it waits, which it then no longer does.
    fn wake_receiver(&mut self) -> Option<Waker> {
        if !std::mem::take(&mut self.receiver_waiting) {
            return None;
        }
        self.receiver.clone()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Identifies the queue (by its address, which stays put while it
    /// lives).
    fn key(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    /// Queues `entry` under `state`'s lock, then wakes the receiver if it
    /// waits and this is not its own turn.
    fn push(self: &Arc<Self>, mut state: MutexGuard<'_, State>, entry: Outbound) {
        state.queue.push_back(entry);
        let wake = if TURN.with(Cell::get) == self.key() {
            None
        } else {
            state.wake_receiver()
        };
        drop(state);
        if let Some(waker) = wake {
            waker.wake();
        }
    }
}

thread_local! {
    /// The queue whose receiving task is being polled on this thread.
    static TURN: Cell<usize> = const { Cell::new(0) };
}

/// Marks the poll of the task that owns a queue's receiver, for as long
/// as it lives. Only valid if the receiver is polled after everything that
/// may send during the turn.
pub(crate) struct Turn {
    previous: usize,
}

/// Names a queue for [`Turn::enter`].
#[derive(Clone, Copy)]
pub(crate) struct TurnKey(usize);

impl Turn {
    pub(crate) fn enter(key: TurnKey) -> Turn {
        Turn {
            previous: TURN.with(|turn| turn.replace(key.0)),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        TURN.with(|turn| turn.set(self.previous));
    }
}

/// Why `try_send` did not queue an entry; the entry comes back.
pub(crate) enum TrySendError {
    Full(Outbound),
    Closed,
}

/// The sending side; cloning it adds a sender.
pub(crate) struct Sender {
    shared: Arc<Shared>,
}

impl Sender {
    /// Queues `entry` if there is room, without waiting.
    pub(crate) fn try_send(&self, entry: Outbound) -> Result<(), TrySendError> {
        let state = self.shared.lock();
        if state.closed {
            return Err(TrySendError::Closed);
        }
        if state.queue.len() >= state.capacity {
            return Err(TrySendError::Full(entry));
        }
        self.shared.push(state, entry);
        Ok(())
    }

    /// How many entries wait.
    pub(crate) fn len(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// A gate for the session's futures.
    pub(crate) fn session_gate(&self) -> Gate {
        Gate::new(&self.shared, Side::Session)
    }

    /// Makes the receiver see the end at once, dropping what is queued
    /// (a slow consumer's writer stops without writing its backlog). It
    /// wakes the receiver even inside its own turn: no poll is owed to it.
    pub(crate) fn kill(&self) {
        let wake = {
            let mut state = self.shared.lock();
            state.killed = true;
            state.wake_receiver()
        };
        if let Some(waker) = wake {
            waker.wake();
        }
    }

    /// Queues `entry`, waiting for room; gives it back if the receiver is
    /// gone. Cancel-safe: dropped while waiting, nothing was queued.
    pub(crate) async fn send(&self, entry: Outbound) -> Result<(), Outbound> {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            // Listening before looking, so that room made in between is
            // not missed.
            room.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if state.closed {
                    return Err(entry);
                }
                if state.queue.len() < state.capacity {
                    self.shared.push(state, entry);
                    return Ok(());
                }
                state.waiting_senders += 1;
            }
            let _waiting = Waiting(&self.shared);
            // Then look again: another waiting sender may have taken the
            // room first.
            room.await;
        }
    }
}

/// Counts a sender as waiting until it stops (or its future is dropped).
struct Waiting<'a>(&'a Arc<Shared>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting_senders -= 1;
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let wake = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            // The receiver sees the end once the queue is empty.
            (state.senders == 0)
                .then(|| state.wake_receiver())
                .flatten()
        };
        if let Some(waker) = wake {
            waker.wake();
        }
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// The receiving side: the connection's writer.
pub(crate) struct Receiver {
    shared: Arc<Shared>,
}

/// `try_recv` found nothing: the queue is empty (or ended).
#[derive(Debug)]
pub(crate) struct Empty;

impl Receiver {
    /// A gate for the writer's futures.
    pub(crate) fn gate(&self) -> Gate {
        Gate::new(&self.shared, Side::Writer)
    }

    /// A watch on this queue's progress, for a task other than the
    /// receiver's (see [`Stall`]).
    pub(crate) fn stall(&self) -> Stall {
        Stall {
            shared: Arc::clone(&self.shared),
            taken: 0,
            since: None,
        }
    }

    /// The key of this queue's turns.
    pub(crate) fn turn_key(&self) -> TurnKey {
        TurnKey(self.shared.key())
    }

    /// The next entry; `None` once every sender is gone and the queue is
    /// empty. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        self.take_or_wait(Some(cx))
            .map_or(Poll::Pending, Poll::Ready)
    }

    /// The next entry if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<Outbound, Empty> {
        match self.take_or_wait(None) {
            Some(Some(entry)) => Ok(entry),
            _ => Err(Empty),
        }
    }

    /// The one drain of the queue, shared by the writers of every
    /// transport (WebSocket, stateful WebSocket, Server-Sent Events, Long
    /// Polling): hands `emit` the bytes of `first`, then of each entry
    /// already queued, in order, without waiting. It stops after the final
    /// entry, after an entry for which `emit` answered `false` (a full batch
    /// or replay buffer), or when nothing more is queued. `emit` is told
    /// whether the bytes are the final entry's (the Close message). Returns
    /// whether the final entry was reached.
    ///
    /// Each transport only decides how the bytes it is handed are framed
    /// (one WebSocket message, SSE events, a poll response), so batching,
    /// the end of the queue and the window places of stream items are
    /// handled the same way on all of them.
    pub(crate) fn drain(
        &mut self,
        first: Outbound,
        mut emit: impl FnMut(Bytes, bool) -> bool,
    ) -> bool {
        self.drain_marked(first, |frame, _, last| emit(frame, last))
    }

    /// [`drain`](Self::drain), handing each frame's mark over too.
    pub(crate) fn drain_marked(
        &mut self,
        first: Outbound,
        mut emit: impl FnMut(Bytes, Option<Bytes>, bool) -> bool,
    ) -> bool {
        let mut item = first;
        loop {
            let mut closing = false;
            let more = match item.into_marked(&mut closing) {
                Some((frame, mark)) => emit(frame, mark, closing),
                None => true,
            };
            if closing {
                return true;
            }
            if !more {
                return false;
            }
            match self.try_recv() {
                Ok(next) => item = next,
                Err(Empty) => return false,
            }
        }
    }

    /// `Some(Some(entry))`, `Some(None)` at the end, `None` if empty; then,
    /// with a `cx`, the receiver waits (under the same lock, so no entry
    /// queued in between goes unnoticed).
    fn take_or_wait(&self, cx: Option<&Context<'_>>) -> Option<Option<Outbound>> {
        let mut state = self.shared.lock();
        if state.killed {
            return Some(None);
        }
        match state.queue.pop_front() {
            Some(entry) => {
                state.taken = state.taken.wrapping_add(1);
                // Busy: no sender needs to wake it until it waits again.
                state.receiver_waiting = false;
                let signal = state.waiting_senders > 0;
                if state.queue.is_empty() && state.queue.capacity() > SHRINK_ABOVE {
                    // A burst is over: give its memory back.
                    state.queue.shrink_to(SHRINK_ABOVE);
                }
                drop(state);
                if signal {
                    self.shared.room.notify_one();
                }
                Some(Some(entry))
            }
            None if state.senders == 0 => Some(None),
            None => {
                if let Some(cx) = cx {
                    if !state
                        .receiver
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        state.receiver = Some(cx.waker().clone());
                    }
                    state.receiver_waiting = true;
                }
                None
            }
        }
    }
}

/// The time half of the slow-consumer rule, for writers that cannot time
/// their own writes (an SSE response the HTTP server stops polling when the
/// client does not read, Long Polling between polls): entries wait and the
/// receiver takes none. Checked now and then by the connection's task; it
/// holds the queue's memory, not a sender (the queue still ends when the
/// senders are gone).
pub(crate) struct Stall {
    shared: Arc<Shared>,
    taken: u64,
    /// Since when entries have waited with none taken.
    since: Option<tokio::time::Instant>,
}

impl Stall {
    /// Whether, as of `now`, entries have waited for `limit` or more with
    /// none taken since the first check that saw them waiting.
    pub(crate) fn check(&mut self, now: tokio::time::Instant, limit: std::time::Duration) -> bool {
        let (waiting, taken) = {
            let state = self.shared.lock();
            (!state.queue.is_empty(), state.taken)
        };
        if !waiting || taken != self.taken || self.since.is_none() {
            self.taken = taken;
            self.since = waiting.then_some(now);
            return false;
        }
        self.since
            .is_some_and(|since| now.duration_since(since) >= limit)
    }
}

/// The two parts of a connection that may gate futures.
#[derive(Clone, Copy, Debug)]
enum Side {
    /// The session, which reads the transport.
    Session = 0,
    /// The writer, which drains this queue.
    Writer = 1,
}

const SIDE_ALL: u8 = 0b11;

/// Lets a connection task poll its rarely-firing futures (an abort token,
/// timers) only after one of them woke it, instead of on every poll of a
/// busy task.
///
/// The futures are polled with the queue's own waker, which notes the wake
/// in the queue and then wakes the task that last opened the gate. A future
/// the caller changed in a way that needs a poll (a timer reset) is polled
/// again after [`arm`](Gate::arm).
pub(crate) struct Gate {
    shared: Arc<Shared>,
    side: Side,
    /// The task waker of the last opening; a poll from another task opens
    /// the gate too (and registers it).
    task: Option<Waker>,
    armed: bool,
}

impl Gate {
    fn new(shared: &Arc<Shared>, side: Side) -> Gate {
        Gate {
            shared: Arc::clone(shared),
            side,
            task: None,
            armed: true,
        }
    }

    /// The next [`open`](Gate::open) opens the gate.
    pub(crate) fn arm(&mut self) {
        self.armed = true;
    }

    /// The waker to poll the gated futures with, if one of them woke the
    /// task since the gate was last open (or it was armed, or this is
    /// another task); `None`: none of them can be ready.
    pub(crate) fn open(&mut self, cx: &Context<'_>) -> Option<Waker> {
        let bit = 1 << self.side as u8;
        let same_task = self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if same_task && !self.armed && self.shared.side.load(Ordering::Acquire) & bit == 0 {
            return None;
        }
        self.armed = false;
        // Cleared before the futures are polled: a wake from now on is
        // seen by the next opening.
        self.shared.side.fetch_and(!bit, Ordering::AcqRel);
        self.shared.side_tasks[self.side as usize].register(cx.waker());
        if !same_task {
            self.task = Some(cx.waker().clone());
        }
        Some(Waker::from(Arc::clone(&self.shared)))
    }

    /// Polls `future`, gated alone (see [`open`](Gate::open)).
    pub(crate) fn poll<F: Future + ?Sized>(
        &mut self,
        future: std::pin::Pin<&mut F>,
        cx: &Context<'_>,
    ) -> Poll<F::Output> {
        match self.open(cx) {
            Some(waker) => future.poll(&mut Context::from_waker(&waker)),
            None => Poll::Pending,
        }
    }
}

/// Room kept for entries once the queue runs empty.
const SHRINK_ABOVE: usize = 16;

impl Drop for Receiver {
    fn drop(&mut self) {
        let drained = {
            let mut state = self.shared.lock();
            state.closed = true;
            std::mem::take(&mut state.queue)
        };
        // Outside the lock: dropping an entry may release a window place.
        drop(drained);
        self.shared.room.notify_waiters();
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &'static str) -> Outbound {
        Outbound::Frame(Bytes::from_static(text.as_bytes()))
    }

    fn text(entry: Outbound) -> Vec<u8> {
        let mut closing = false;
        entry.into_frame(&mut closing).unwrap_or_default().to_vec()
    }

    /// What one drain hands its transport, and whether it reached the end.
    fn drained(rx: &mut Receiver, first: Outbound, room: usize) -> (Vec<String>, bool) {
        let mut seen = Vec::new();
        let closing = rx.drain(first, |frame, last| {
            let text = String::from_utf8_lossy(&frame).into_owned();
            seen.push(if last { format!("{text}!") } else { text });
            seen.len() < room
        });
        (seen, closing)
    }

    #[test]
    fn a_drain_takes_what_is_queued_up_to_the_final_entry() {
        let (tx, mut rx) = channel(8);
        for entry in [
            frame("b"),
            frame("c"),
            Outbound::close(Some(Bytes::from_static(b"z"))),
        ] {
            assert!(tx.try_send(entry).is_ok());
        }
        assert!(tx.try_send(frame("after")).is_ok());
        let (seen, closing) = drained(&mut rx, frame("a"), usize::MAX);
        assert_eq!(seen, ["a", "b", "c", "z!"]);
        assert!(closing);
    }

    #[test]
    fn a_drain_stops_where_its_transport_says_and_leaves_the_rest() {
        let (tx, mut rx) = channel(8);
        for entry in [frame("b"), frame("c")] {
            assert!(tx.try_send(entry).is_ok());
        }
        let (seen, closing) = drained(&mut rx, frame("a"), 2);
        assert_eq!(seen, ["a", "b"]);
        assert!(!closing);
        // Nothing queued after the first: one entry, not the end.
        let (seen, closing) = drained(&mut rx, frame("x"), usize::MAX);
        assert_eq!(seen, ["x", "c"]);
        assert!(!closing);
        let (seen, closing) = drained(&mut rx, Outbound::close(None), usize::MAX);
        assert!(seen.is_empty());
        assert!(closing);
    }

    #[tokio::test]
    async fn a_kill_ends_the_queue_at_once_and_wakes_the_receiver() {
        let (tx, mut rx) = channel(4);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await.map(text);
            let after = rx.recv().await.is_none();
            (first, after, rx)
        });
        tokio::task::yield_now().await;
        assert!(tx.try_send(frame("a")).is_ok());
        tokio::task::yield_now().await;
        assert!(tx.try_send(frame("backlog")).is_ok());
        tx.kill();
        let (first, after, mut rx) = waiting.await.expect("the receiver ran");
        // "a" may or may not have been taken before the kill; the backlog
        // never is.
        assert!(first.is_none() || first.as_deref() == Some(&b"a"[..]));
        assert!(after, "the queue ended");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn entries_arrive_in_order_up_to_the_bound() {
        let (tx, mut rx) = channel(2);
        assert!(tx.try_send(frame("a")).is_ok());
        assert!(tx.try_send(frame("b")).is_ok());
        assert!(matches!(
            tx.try_send(frame("c")),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(text(rx.recv().await.expect("an entry")), b"a");
        assert!(tx.try_send(frame("c")).is_ok());
        assert_eq!(text(rx.try_recv().expect("an entry")), b"b");
        assert_eq!(text(rx.try_recv().expect("an entry")), b"c");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_waiting_sender_goes_on_when_room_is_made() {
        let (tx, mut rx) = channel(1);
        tx.try_send(frame("a")).ok();
        let sender = tokio::spawn(async move {
            let sent = tx.send(frame("b")).await.is_ok();
            (sent, tx)
        });
        tokio::task::yield_now().await;
        assert_eq!(text(rx.recv().await.expect("an entry")), b"a");
        let (sent, _tx) = sender.await.expect("the sender task");
        assert!(sent);
        assert_eq!(text(rx.recv().await.expect("an entry")), b"b");
    }

    #[tokio::test]
    async fn the_end_comes_after_the_last_sender_and_the_last_entry() {
        let (tx, mut rx) = channel(4);
        let second = tx.clone();
        tx.try_send(frame("a")).ok();
        drop(tx);
        second.try_send(frame("b")).ok();
        drop(second);
        assert_eq!(text(rx.recv().await.expect("an entry")), b"a");
        assert_eq!(text(rx.recv().await.expect("an entry")), b"b");
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn senders_learn_that_the_receiver_is_gone() {
        let (tx, rx) = channel(1);
        tx.try_send(frame("a")).ok();
        let waiting = tokio::spawn(async move { tx.send(frame("b")).await.is_err() });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(waiting.await.expect("the sender task"));
    }

    #[tokio::test]
    async fn a_send_outside_the_turn_wakes_the_receiver() {
        let (tx, mut rx) = channel(4);
        let receiver = tokio::spawn(async move { rx.recv().await.map(text) });
        tokio::task::yield_now().await;
        tx.try_send(frame("a")).ok();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), receiver).await;
        assert_eq!(
            got.expect("in time").expect("the receiver task"),
            Some(b"a".to_vec())
        );
    }

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Count {
        fn waker() -> (Arc<Count>, Waker) {
            let count = Arc::new(Count(Default::default()));
            (Arc::clone(&count), Waker::from(count))
        }

        fn get(&self) -> usize {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn a_send_inside_the_turn_does_not_wake_the_receiver() {
        let (count, waker) = Count::waker();
        let mut cx = Context::from_waker(&waker);
        let (tx, mut rx) = channel(4);
        assert!(rx.poll_recv(&mut cx).is_pending());
        {
            let _turn = Turn::enter(rx.turn_key());
            tx.try_send(frame("a")).ok();
        }
        assert_eq!(count.get(), 0);
        assert!(rx.poll_recv(&mut cx).is_ready());
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.try_send(frame("b")).ok();
        assert_eq!(count.get(), 1);
    }

    #[test]
    fn a_gate_opens_only_after_its_futures_woke_the_task() {
        let (task, waker) = Count::waker();
        let cx = Context::from_waker(&waker);
        let (tx, _rx) = channel(4);
        let mut gate = tx.session_gate();
        // The first look goes through; the future keeps the gate's waker.
        let gated = gate.open(&cx).expect("open at first");
        assert!(gate.open(&cx).is_none(), "nothing woke it");
        gated.wake_by_ref();
        assert_eq!(task.get(), 1, "the task is woken");
        assert!(gate.open(&cx).is_some(), "open after the wake");
        assert!(gate.open(&cx).is_none());
        gate.arm();
        assert!(gate.open(&cx).is_some(), "open when armed");
        // Another task's poll goes through (and registers that task).
        let (other, other_waker) = Count::waker();
        assert!(gate.open(&Context::from_waker(&other_waker)).is_some());
        gated.wake_by_ref();
        assert_eq!(other.get(), 1);
        assert_eq!(task.get(), 1);
    }
}
