//! [`Served`]: what the transports of one endpoint share — the application
//! they carry, the connection settings and the server's shutdown.

use std::sync::Arc;

use crate::{connections::options::ConnectionOptions, shutdown::Shutdown};

/// The application an endpoint serves, with its settings.
pub(crate) struct Served<C> {
    pub app: Arc<C>,
    pub options: ConnectionOptions,
    pub shutdown: Shutdown,
    /// Whether stateful connections move to another server of the cluster
    /// when this one shuts down (a cluster, and an application that can).
    pub hands_over: bool,
}
