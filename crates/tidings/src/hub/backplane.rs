//! [`Backplane`]: what a scale-out adapter gives a server, in one value.

use std::sync::Arc;

use crate::{Cluster, LifetimeManager, MemoryLifetimeManager};

/// Everything several servers need to act as one: a [`LifetimeManager`] per
/// hub (delivery and membership across servers) and, when the servers
/// forward each other's requests, the [`Cluster`] that locates them.
///
/// Given once to [`ServerBuilder::backplane`](crate::ServerBuilder::backplane),
/// it configures every hub of the server both ways, so a server cannot end
/// up sharing messages through the backplane while refusing the requests
/// of connections negotiated elsewhere (which would silently require sticky
/// sessions). `tidings_redis::RedisBackplane` implements it.
pub trait Backplane: Send + Sync + 'static {
    /// The lifetime manager of the hub named `hub`. Every server of the
    /// cluster asks for the same hub under the same name.
    fn lifetime_manager(&self, hub: &str) -> Arc<dyn LifetimeManager>;

    /// Request forwarding between the servers (no sticky sessions), or
    /// `None` for a backplane of a single server.
    fn cluster(self: Arc<Self>) -> Option<Arc<dyn Cluster>>;
}

/// The default backplane: one server, each hub with its own
/// [`MemoryLifetimeManager`], nothing forwarded.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryBackplane;

impl Backplane for MemoryBackplane {
    fn lifetime_manager(&self, _hub: &str) -> Arc<dyn LifetimeManager> {
        Arc::new(MemoryLifetimeManager::new())
    }

    fn cluster(self: Arc<Self>) -> Option<Arc<dyn Cluster>> {
        None
    }
}
