//! [`Served`]: what the transports of one endpoint share — the application
//! they carry, the connection settings and the server's shutdown.

use std::sync::Arc;

use crate::{connections::options::ConnectionOptions, shutdown::Shutdown};

/// The application an endpoint serves, with its settings.
pub(crate) struct Served<C> {
    pub app: Arc<C>,
    pub options: ConnectionOptions,
    pub shutdown: Shutdown,
}
