//! [`ConnectionEndpoint`]: a [`ConnectionHandler`] and the connection
//! layer's settings, mounted in an axum router (ASP.NET Core's
//! `MapConnectionHandler<T>`).

use std::sync::Arc;

use axum::Router;

use crate::{
    auth::Authenticator,
    connections::{
        access::ConnectionLimits,
        cluster::Cluster,
        handler::{ConnectionHandler, Raw},
        options::ConnectionOptions,
        routes::Setup,
    },
    metrics::Metrics,
    shutdown::Shutdown,
};

/// A raw connection handler ready to be mounted in an axum [`Router`]:
/// negotiate, WebSockets, Server-Sent Events and Long Polling, with
/// authentication, connection limits, allowed origins and clustering, and
/// bytes in and out for the handler.
///
/// ```no_run
/// # use tidings::connections::{Connection, ConnectionEndpoint, ConnectionHandler, Inbound};
/// # struct Echo;
/// # impl ConnectionHandler for Echo {
/// #     async fn on_connected(&self, _: Connection, _: Inbound) {}
/// # }
/// let app: axum::Router = axum::Router::new().nest("/echo", ConnectionEndpoint::new(Echo).into_router());
/// # let _ = app;
/// ```
pub struct ConnectionEndpoint<T: ConnectionHandler> {
    handler: T,
    setup: Setup,
}

impl<T: ConnectionHandler> std::fmt::Debug for ConnectionEndpoint<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionEndpoint")
            .field("handler", &std::any::type_name::<T>())
            .field("options", &self.setup.options)
            .finish_non_exhaustive()
    }
}

impl<T: ConnectionHandler> ConnectionEndpoint<T> {
    /// An endpoint for `handler` with default options: every transport,
    /// anonymous connections, no limits.
    pub fn new(handler: T) -> Self {
        ConnectionEndpoint {
            handler,
            setup: Setup::default(),
        }
    }

    /// Replaces the options.
    pub fn options(mut self, options: ConnectionOptions) -> Self {
        self.setup.options = options;
        self
    }

    /// Authenticates negotiate and transport requests; the handler sees
    /// the principal as [`Connection::principal`](crate::connections::Connection::principal).
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.setup.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Counts this endpoint's connections under `limits`.
    pub fn connection_limits(mut self, limits: &ConnectionLimits) -> Self {
        self.setup.limits = Some(limits.clone());
        self
    }

    /// Browser origins allowed besides the server's own (see
    /// [`HubEndpoint::allowed_origins`](crate::HubEndpoint::allowed_origins)).
    pub fn allowed_origins<S: AsRef<str>>(mut self, origins: impl IntoIterator<Item = S>) -> Self {
        self.setup.allow_origins(origins);
        self
    }

    /// Whether cross-origin requests may carry credentials (on by default).
    pub fn cors_credentials(mut self, allow: bool) -> Self {
        self.setup.cors_credentials(allow);
        self
    }

    /// Forwards requests for connections of other servers of a cluster
    /// (see [`Cluster`]).
    pub fn cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.setup.cluster = Some(cluster);
        self
    }

    /// Ties the endpoint's connections to a shared [`Shutdown`].
    pub fn shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.setup.shutdown = shutdown.clone();
        self
    }

    /// Counts the endpoint's connections and bytes in `metrics`, labelled
    /// with `name` (as a hub's are with the hub's name).
    pub fn metrics(mut self, metrics: &Metrics, name: &str) -> Self {
        self.setup.metrics = Some(metrics.hub(name));
        self
    }

    /// The routes of this endpoint, to be nested at its path: `POST
    /// /negotiate` and the transport endpoint.
    pub fn into_router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.setup.into_router(Arc::new(Raw(self.handler)))
    }
}
