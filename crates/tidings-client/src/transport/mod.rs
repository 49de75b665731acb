//! Transports: each one turns a connect URL into a [`Link`] — a channel of outgoing frames and a
//! channel of incoming bytes — served by tasks the link owns (dropping the link aborts them).
//!
//! The connection task only ever talks to a `Link`, so WebSockets, Server-Sent Events and Long
//! Polling look the same to it. Incoming chunks may hold several messages or parts of one; the
//! hub protocol decoder reassembles them.

pub(crate) mod http;
pub(crate) mod long_polling;
pub(crate) mod sse;
pub(crate) mod websocket;

use std::time::Duration;

use bytes::Bytes;
use tidings_protocol::TransportType;
use tokio::{sync::mpsc, task::JoinSet};

use crate::TransportError;

/// How many outgoing frames may wait for a transport before the connection task waits.
const OUTGOING_CAPACITY: usize = 64;
/// How many incoming chunks may wait for the connection task before the transport stops reading.
const INCOMING_CAPACITY: usize = 64;

/// What a transport reports to the connection task.
#[derive(Debug)]
pub(crate) enum TransportEvent {
    /// Bytes from the server.
    Data(Bytes),
    /// The transport ended: cleanly (`None`) or with an error. Nothing follows.
    Closed(Option<TransportError>),
}

/// An established transport.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) transport: TransportType,
    outgoing: Option<mpsc::Sender<Bytes>>,
    incoming: mpsc::Receiver<TransportEvent>,
    /// The transport's I/O tasks; dropping the link aborts them.
    _tasks: JoinSet<()>,
}

/// The task side of a link, given to the transport's I/O tasks.
pub(crate) struct LinkEnds {
    pub(crate) outgoing: mpsc::Receiver<Bytes>,
    pub(crate) incoming: mpsc::Sender<TransportEvent>,
}

impl Link {
    /// A link and the ends its tasks use; `spawn` starts the tasks.
    pub(crate) fn new(
        transport: TransportType,
        spawn: impl FnOnce(LinkEnds, &mut JoinSet<()>),
    ) -> Link {
        let (out_tx, out_rx) = mpsc::channel(OUTGOING_CAPACITY);
        let (in_tx, in_rx) = mpsc::channel(INCOMING_CAPACITY);
        let mut tasks = JoinSet::new();
        spawn(
            LinkEnds {
                outgoing: out_rx,
                incoming: in_tx,
            },
            &mut tasks,
        );
        Link {
            transport,
            outgoing: Some(out_tx),
            incoming: in_rx,
            _tasks: tasks,
        }
    }

    /// Queues one frame (one or more whole messages). False if the transport has ended.
    pub(crate) async fn send(&self, frame: Bytes) -> bool {
        match &self.outgoing {
            Some(tx) => tx.send(frame).await.is_ok(),
            None => false,
        }
    }

    /// The next event; a transport whose tasks are gone reports a clean close.
    pub(crate) async fn recv(&mut self) -> TransportEvent {
        self.incoming
            .recv()
            .await
            .unwrap_or(TransportEvent::Closed(None))
    }

    /// Ends the transport politely (WebSocket close handshake, Long Polling DELETE) and waits up to
    /// `timeout` for it to finish; then its tasks are aborted.
    pub(crate) async fn close(mut self, timeout: Duration) {
        self.outgoing = None;
        let _ = tokio::time::timeout(timeout, async {
            while let TransportEvent::Data(_) = self.recv().await {}
        })
        .await;
    }
}
