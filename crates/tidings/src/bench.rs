//! Entry points for the criterion benchmarks (`benches/hub.rs`): the hot
//! paths of the server without sockets, reached through the same internal
//! functions the transports use. Not a public API: hidden, and free to change.

use std::sync::Arc;

use bytes::Bytes;
use tidings_protocol::{HubMessage, MessageDecoder, Protocol};

use crate::{
    ConnectionHandle, Context, HubOptions, LifetimeManager, MemoryLifetimeManager, Principal,
    auth::Policies,
    connections::outbox,
    hub::{
        context::HubShared,
        definition::Hub,
        dispatch::{self, Methods, Prepared},
        message::encode,
    },
};

/// A connection without a transport: its queue is drained by [`Outlet`].
pub fn connection(id: &str, protocol: Protocol, capacity: usize) -> (ConnectionHandle, Outlet) {
    let (handle, rx) = ConnectionHandle::unattached(id, Principal::anonymous(), protocol, capacity);
    (handle, Outlet { rx })
}

/// The receiving end of a benchmark connection's queue.
#[derive(Debug)]
pub struct Outlet {
    rx: outbox::Receiver,
}

impl Outlet {
    /// Takes everything queued and resolves each entry to the frame a
    /// writer would send, as the WebSocket writer does. Returns the bytes.
    pub fn drain(&mut self) -> usize {
        let mut total = 0;
        while let Ok(item) = self.rx.try_recv() {
            let mut closing = false;
            total += item.into_frame(&mut closing).map_or(0, |f| f.len());
        }
        total
    }
}

/// One hub with one connection: decodes an invocation frame, dispatches it
/// through the method table and encodes the completion, as a session does.
pub struct Dispatcher<H: Hub> {
    hub: Arc<H>,
    methods: Methods<H>,
    cx: Context,
    decoder: MessageDecoder,
    outlet: Outlet,
}

impl<H: Hub> std::fmt::Debug for Dispatcher<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl<H: Hub> Dispatcher<H> {
    pub fn new(hub: H, protocol: Protocol) -> Self {
        let (connection, outlet) = connection("bench", protocol, 16);
        let shared = Arc::new(HubShared {
            name: Arc::from("bench"),
            metrics: None,
            lifetime: Arc::new(MemoryLifetimeManager::new()) as Arc<dyn LifetimeManager>,
            options: HubOptions::default(),
        });
        Dispatcher {
            hub: Arc::new(hub),
            methods: Methods::new(),
            cx: Context::new(connection, shared),
            decoder: MessageDecoder::new(protocol, Some(32 * 1024)),
            outlet,
        }
    }

    /// Handles one framed invocation; returns the encoded answer.
    pub async fn invoke(&mut self, frame: &[u8]) -> Option<Bytes> {
        self.decoder.push(frame);
        let Ok(Some(HubMessage::Invocation(invocation))) = self.decoder.next_message() else {
            return None;
        };
        let policies = Policies::default();
        let Prepared::Run(method) = dispatch::prepare(
            &self.methods,
            &invocation,
            false,
            false,
            (self.cx.user(), &policies),
        ) else {
            return None;
        };
        let hub = Arc::clone(&self.hub);
        let reply =
            dispatch::run_unary(hub, method, self.cx.clone(), invocation, Vec::new()).await?;
        let _ = self.outlet.drain();
        Some(encode(self.cx.protocol(), &reply))
    }
}
