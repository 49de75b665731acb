//! A hub as the connection layer's application: its authorization
//! requirement checks every request, its handshake is the opening, and its
//! session runs the connection.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::Stream;
use serde_json::{Value, json};
use tidings_protocol::{Protocol, TransferFormat, TransportType};

use crate::{
    auth::{Denied, Principal},
    connections::{
        connection::Connection,
        frozen::Frozen,
        handler::{Accepted, Application, BoxFuture, InboundChunk, Opening},
        journal::Journal,
    },
    hub::{
        connection::ConnectionHandle,
        definition::Hub,
        handler::HubHandler,
        handshake,
        lifetime::Target,
        message::SerializedMessage,
        session::{self, Start},
    },
};

/// The groups listed in a handover's offer or state.
fn groups(value: &Value) -> Vec<String> {
    value["groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The hub's part of a connection's state when it moves to another server
/// (read back by `reopen` and `run_adopted`).
fn moving_state(protocol: Protocol, groups: &[String], position: Value) -> Value {
    json!({
        "protocol": protocol.name(),
        "groups": groups,
        "position": position,
    })
}

/// The hub protocol of a connection, from how its WebSocket frames
/// messages (the handshake chose one from the other).
fn protocol_of(connection: &Connection) -> Protocol {
    match connection.transfer_format() {
        TransferFormat::Text => Protocol::Json,
        TransferFormat::Binary => Protocol::MessagePack,
    }
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
    ) -> impl Future<Output = ()> + Send + use<H, S>
    where
        S: Stream<Item = InboundChunk> + Unpin + Send + 'static,
    {
        let connection = ConnectionHandle::new(connection, protocol);
        session::run(
            Arc::clone(self),
            connection,
            inbound,
            Start::Opened(leftover),
        )
    }

    fn hands_over(&self) -> bool {
        self.shared.lifetime.handover().is_some()
    }

    fn offer<'a>(&'a self, connection: &'a Connection) -> BoxFuture<'a, Option<Value>> {
        Box::pin(async move {
            let handover = self.shared.lifetime.handover()?;
            Some(json!({ "groups": handover.local_groups(connection.id()) }))
        })
    }

    fn freeze<'a>(&'a self, connection: &'a Connection) -> BoxFuture<'a, Option<Value>> {
        Box::pin(async move {
            let handover = self.shared.lifetime.handover()?;
            let protocol = protocol_of(connection);
            let handle = ConnectionHandle::new(connection.clone(), protocol);
            let groups = handover.local_groups(connection.id());
            let position = handover.freeze(&handle).await?;
            Some(moving_state(protocol, &groups, position))
        })
    }

    fn forward<'a>(&'a self, connection: &'a Connection, frame: Bytes) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let message = match protocol_of(connection) {
                Protocol::Json => SerializedMessage::from_frames(Some(frame), None),
                Protocol::MessagePack => SerializedMessage::from_frames(None, Some(frame)),
            };
            let target = Target::Connection(connection.id().to_owned());
            if let Err(error) = self.shared.lifetime.send(&target, Arc::new(message)).await {
                tracing::debug!(%error, "a message of a moved connection was not forwarded");
            }
        })
    }

    fn hold<'a>(
        &'a self,
        id: &'a str,
        user_id: Option<&'a str>,
        offer: &'a Value,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Some(handover) = self.shared.lifetime.handover() else {
                return false;
            };
            handover.hold(id, user_id, &groups(offer)).await
        })
    }

    fn unhold(&self, id: &str) {
        if let Some(handover) = self.shared.lifetime.handover() {
            handover.unhold(id);
        }
    }

    fn reopen(&self, frozen: &Value) -> Option<Accepted<Protocol>> {
        let protocol = Protocol::from_name(frozen["protocol"].as_str()?)?;
        Some(handshake::accepted(protocol, 2, &self.shared.options))
    }

    fn journal(&self, connection: &Connection, token: &str) -> Option<Arc<dyn Journal>> {
        let handover = self.shared.lifetime.handover()?;
        let handle = ConnectionHandle::new(connection.clone(), protocol_of(connection));
        handover.journal(&handle, token)
    }

    fn recover<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<Frozen>> {
        Box::pin(async move {
            let recovered = self.shared.lifetime.handover()?.recover(token).await?;
            tracing::debug!(connection_id = %recovered.id, "connection recovered from its journal");
            Some(Frozen::recovered(
                recovered.id,
                (recovered.user_id, recovered.claims, recovered.expires_at_ms),
                recovered.first_id,
                &recovered.frames,
                recovered.received,
                moving_state(recovered.protocol, &recovered.groups, recovered.position),
            ))
        })
    }

    fn run_adopted<S>(
        self: &Arc<Self>,
        connection: Connection,
        inbound: S,
        protocol: Protocol,
        frozen: Value,
    ) -> impl Future<Output = ()> + Send
    where
        S: Stream<Item = InboundChunk> + Unpin + Send + 'static,
    {
        let handler = Arc::clone(self);
        async move {
            let connection = ConnectionHandle::new(connection, protocol);
            if let Some(handover) = handler.shared.lifetime.handover() {
                handover
                    .release(&connection, &groups(&frozen), &frozen["position"])
                    .await;
            }
            session::run(handler, connection, inbound, Start::Adopted).await;
        }
    }
}
