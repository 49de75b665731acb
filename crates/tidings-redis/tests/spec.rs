//! The lifetime-manager specification, run against the Redis backplane:
//! several backplanes on one real `redis-server` act as several servers.

mod support;

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tidings::{BoxFuture, LifetimeManager, testing::Backend};
use tidings_redis::{RedisBackplane, RedisOptions};

fn redis() -> &'static support::RedisServer {
    static SERVER: OnceLock<support::RedisServer> = OnceLock::new();
    SERVER.get_or_init(support::RedisServer::start)
}

/// Each call of `servers` is a new cluster under a prefix of its own.
struct RedisBackend {
    url: String,
    backplanes: Mutex<Vec<RedisBackplane>>,
}

impl Backend for RedisBackend {
    fn servers(&self, n: usize) -> BoxFuture<'_, Vec<Arc<dyn LifetimeManager>>> {
        Box::pin(async move {
            let prefix = format!("spec{:08x}.", rand::random::<u32>());
            let mut managers: Vec<Arc<dyn LifetimeManager>> = Vec::new();
            for _ in 0..n {
                let options = RedisOptions::new(&self.url)
                    .channel_prefix(&prefix)
                    .ack_timeout(Duration::from_secs(5));
                let backplane = RedisBackplane::start(options).expect("backplane");
                assert!(backplane.wait_connected(Duration::from_secs(5)).await);
                managers.push(backplane.lifetime_manager("Spec.Hub"));
                self.backplanes.lock().expect("lock").push(backplane);
            }
            managers
        })
    }
}

async fn backend() -> RedisBackend {
    RedisBackend {
        url: redis().url(),
        backplanes: Mutex::new(Vec::new()),
    }
}

tidings::lifetime_manager_spec!(backend());
