//! [`HubHandler`]: a hub as an application of the connection layer — its
//! authorization requirement, its handshake as the opening, and its
//! session as the connection's run.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::Stream;
use tidings_protocol::{Protocol, TransportType};

use crate::{
    auth::{Denied, Policies, Principal, UserIdProvider},
    connections::{
        connection::Connection,
        handler::{Application, InboundChunk, Opening},
    },
    hub::{
        connection::ConnectionHandle, context::HubShared, definition::Hub, dispatch::Methods,
        filter::HubFilter, handshake, session,
    },
    shutdown::Shutdown,
};

/// The hub filters of an endpoint, shared with its connections.
pub(crate) type Filters = Arc<[Arc<dyn HubFilter>]>;

/// The state behind a mounted hub, shared by its connections.
pub(crate) struct HubHandler<H: Hub> {
    pub hub: Arc<H>,
    pub methods: Methods<H>,
    pub shared: Arc<HubShared>,
    pub shutdown: Shutdown,
    /// Named authorization policies.
    pub policies: Policies,
    pub user_ids: Option<UserIdProvider>,
    /// Hub filters, in order.
    pub filters: Filters,
}

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
    ) -> impl Future<Output = ()> + Send
    where
        S: Stream<Item = InboundChunk> + Unpin + Send + 'static,
    {
        let connection = ConnectionHandle::new(connection, protocol);
        session::run(Arc::clone(self), connection, inbound, leftover)
    }
}
