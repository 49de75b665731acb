//! A hub as the connection layer's application: its authorization
//! requirement checks every request, its handshake is the opening, and its
//! session runs the connection.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::Stream;
use tidings_protocol::{Protocol, TransportType};

use crate::{
    auth::{Denied, Principal},
    connections::{
        connection::Connection,
        handler::{Application, InboundChunk, Opening},
    },
    hub::{connection::ConnectionHandle, definition::Hub, handler::HubHandler, handshake, session},
};

impl<H: Hub> Application for HubHandler<H> {
    type Opened = Protocol;

    fn authorize(&self, principal: &mut Principal) -> Result<(), Denied> {
        if let Some(provider) = &self.user_ids {
            let user_id = provider(principal);
            principal.set_user_id(user_id);
        }
        match H::authorization() {
            Some(requirement) => self.policies.check(requirement, principal),
            None => Ok(()),
        }
    }

    fn opening_timeout(&self) -> Duration {
        self.shared.options.handshake_timeout
    }

    fn open(&self, received: &[u8], transport: TransportType) -> Opening<Protocol> {
        handshake::open(received, transport, &self.shared.options)
    }

    fn opening_expired(&self) -> Option<Bytes> {
        Some(handshake::expired())
    }

    fn run<S>(
        self: &Arc<Self>,
        connection: Connection,
        inbound: S,
        leftover: Vec<u8>,
        protocol: Protocol,
    ) -> impl Future<Output = ()> + Send + use<H, S>
    where
        S: Stream<Item = InboundChunk> + Unpin + Send + 'static,
    {
        let connection = ConnectionHandle::new(connection, protocol);
        session::run(Arc::clone(self), connection, inbound, leftover)
    }
}
