//! The endpoint's registries of tokens: negotiated connections waiting for
//! their transport, and the live WebSocket connections (whose tokens get
//! ASP.NET Core's answers at the wrong door rather than a 404).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use crate::{
    auth::Principal,
    connections::{access::Slot, transport::http::Inbound},
};

/// The tokens of live WebSocket connections, to answer a request that
/// presents one at the wrong door as ASP.NET Core does: a POST gets `405`,
/// a DELETE or a poll `400`, a second socket `409` (not the `404` of an
/// unknown token). Kept as keyed hashes: a few bytes per connection and no
/// second copy of a secret. A collision could only give a forged token one
/// of those answers instead of `404`.
#[derive(Default)]
pub(crate) struct LiveTokens {
    pub(crate) keys: RandomState,
    pub(crate) live: Mutex<HashSet<u64>>,
}

impl LiveTokens {
    /// Marks `token` live until the returned guard is dropped.
    pub(crate) fn hold(self: &Arc<Self>, token: &str) -> LiveToken {
        let key = self.keys.hash_one(token);
        self.lock().insert(key);
        LiveToken {
            tokens: Arc::clone(self),
            key,
        }
    }

    pub(crate) fn contains(&self, token: &str) -> bool {
        self.lock().contains(&self.keys.hash_one(token))
    }

    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, HashSet<u64>> {
        self.live.lock()
    }
}

/// A live WebSocket connection's entry in [`LiveTokens`], owned by its task.
pub(crate) struct LiveToken {
    pub(crate) tokens: Arc<LiveTokens>,
    pub(crate) key: u64,
}

impl Drop for LiveToken {
    fn drop(&mut self) {
        self.tokens.lock().remove(&self.key);
    }
}

/// A negotiated connection waiting for its transport.
pub(crate) struct PendingConnection {
    pub(crate) id: Arc<str>,
    pub(crate) created: Instant,
    /// Stateful reconnect was asked for and allowed at negotiation.
    pub(crate) stateful: bool,
    /// Its place under the connection limits, handed to the transport.
    pub(crate) slot: Option<Slot>,
    /// Who negotiated it: the user of its HTTP transport's requests.
    pub(crate) principal: Principal,
    /// What was posted before the HTTP transport started.
    pub(crate) inbound: Option<Inbound>,
}

/// Negotiated connections whose transport has not arrived yet. They expire
/// after `disconnect_timeout`; `order` lets expiry run in O(expired).
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) by_token: HashMap<String, PendingConnection>,
    pub(crate) order: VecDeque<(Instant, String)>,
}

impl Pending {
    pub(crate) fn expire(&mut self, timeout: Duration) {
        let now = Instant::now();
        while let Some((created, _)) = self.order.front() {
            if now.duration_since(*created) < timeout {
                break;
            }
            if let Some((created, token)) = self.order.pop_front()
                && self
                    .by_token
                    .get(&token)
                    .is_some_and(|p| p.created == created)
            {
                self.by_token.remove(&token);
            }
        }
    }
}
