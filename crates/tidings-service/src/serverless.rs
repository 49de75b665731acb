//! [`ServerlessHub`]: a hub with no Rust code. Its clients connect with
//! any SignalR client as usual; every invocation is posted to the hub's
//! [upstream](crate::upstream) and answered with what the upstream
//! returns, and connects and disconnects are posted as events.
//!
//! The upstream reaches clients back through the REST API
//! ([`crate::rest`]): a backend with nothing but HTTP drives real-time
//! clients.
//!
//! A failing upstream never leaves a client waiting: a timeout, a refused
//! connection or an error status fails the invocation with a Completion
//! error that says so (`HubException: The upstream did not answer within
//! 5s.`), and the connection stays usable.

use std::sync::Arc;

use serde_json::{Map, Value};
use tidings::{
    BoxFuture, Call, ConnectionError, Context, Hub, HubError, MethodDescriptor, MethodFuture,
    MethodKind,
};

use crate::upstream::{Caller, Upstream};

/// A hub whose methods live in an HTTP backend.
#[derive(Debug, Clone)]
pub struct ServerlessHub {
    upstream: Upstream,
}

impl ServerlessHub {
    /// A hub forwarding to `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        ServerlessHub { upstream }
    }

    /// Its upstream.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }
}

/// Every invocation, whatever its name, goes to [`forward`].
static FORWARD: MethodDescriptor<ServerlessHub> = MethodDescriptor {
    name: "*",
    kind: MethodKind::Unary,
    arity: 0,
    stream_params: 0,
    handler: forward,
    authorize: None,
};

impl Hub for ServerlessHub {
    fn methods() -> &'static [MethodDescriptor<Self>] {
        &[]
    }

    fn fallback() -> Option<&'static MethodDescriptor<Self>> {
        Some(&FORWARD)
    }

    fn on_connected(self: Arc<Self>, cx: Context) -> BoxFuture<'static, Result<(), HubError>> {
        Box::pin(async move {
            let caller = caller(&cx);
            // A notification: the connection stands whatever the upstream says.
            if let Err(error) = self
                .upstream
                .post("connections", "connected", &caller, Map::new())
                .await
            {
                tracing::warn!(connection_id = %caller.connection_id, %error, "upstream did not take the connected event");
            }
            Ok(())
        })
    }

    fn on_disconnected(
        self: Arc<Self>,
        cx: Context,
        error: Option<ConnectionError>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let caller = caller(&cx);
            let mut fields = Map::new();
            fields.insert(
                "error".into(),
                error.map_or(Value::Null, |e| Value::from(e.to_string())),
            );
            if let Err(error) = self
                .upstream
                .post("connections", "disconnected", &caller, fields)
                .await
            {
                tracing::warn!(connection_id = %caller.connection_id, %error, "upstream did not take the disconnected event");
            }
        })
    }
}

/// Posts one invocation upstream; its answer is the result.
fn forward(hub: Arc<ServerlessHub>, call: Call) -> MethodFuture {
    Box::pin(async move {
        let arguments = (0..call.argument_count())
            .map(|i| call.arg::<Value>(i))
            .collect::<Result<Vec<Value>, HubError>>()?;
        let caller = caller(call.context());
        let mut fields = Map::new();
        fields.insert("target".into(), Value::from(call.target()));
        fields.insert("arguments".into(), Value::Array(arguments));
        match hub
            .upstream
            .post("messages", call.target(), &caller, fields)
            .await
        {
            Ok(result) => call.output(&result),
            Err(error) => {
                tracing::debug!(target = %call.target(), %error, "upstream call failed");
                Err(HubError::new(error.client_text()))
            }
        }
    })
}

/// The connection as the upstream sees it: id, user, claims (a claim
/// given once is a string, several times an array).
fn caller(cx: &Context) -> Caller {
    let mut claims = Map::new();
    for (kind, value) in cx.user().claims() {
        match claims.get_mut(kind) {
            None => {
                claims.insert(kind.to_owned(), Value::from(value));
            }
            Some(Value::Array(list)) => list.push(Value::from(value)),
            Some(first) => {
                let first = first.take();
                claims.insert(
                    kind.to_owned(),
                    Value::Array(vec![first, Value::from(value)]),
                );
            }
        }
    }
    Caller {
        connection_id: cx.connection_id().to_owned(),
        user_id: cx.user_identifier().map(str::to_owned),
        claims,
    }
}
