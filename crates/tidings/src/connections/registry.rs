//! [`Registry`]: live connections by token, each entry owned by a
//! [`Registered`] guard.
//!
//! The endpoint looks connections up by the token a request presents; the
//! connection's task decides when the entry goes, by dropping its guard.
//! Transports therefore never call back into the endpoint to remove what
//! they registered, and an entry cannot outlive its connection by a
//! forgotten call on some early return.

use std::{collections::HashMap, sync::Arc};

use parking_lot::{Mutex, MutexGuard};

/// A map from token to a live connection's entry, shared by an endpoint
/// and the guards of its entries.
pub(crate) struct Registry<V> {
    inner: Arc<Mutex<Entries<V>>>,
}

struct Entries<V> {
    map: HashMap<String, (u64, V)>,
    /// Tells apart two entries registered under one token in turn, so that
    /// an old guard never removes its successor.
    next_generation: u64,
}

impl<V> Default for Registry<V> {
    fn default() -> Self {
        Registry {
            inner: Arc::new(Mutex::new(Entries {
                map: HashMap::new(),
                next_generation: 0,
            })),
        }
    }
}

impl<V> Clone for Registry<V> {
    fn clone(&self) -> Self {
        Registry {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> std::fmt::Debug for Registry<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("entries", &self.lock().map.len())
            .finish()
    }
}

impl<V: Clone> Registry<V> {
    /// Registers `value` under `token` (replacing an older entry) until the
    /// returned guard is dropped.
    #[must_use = "the entry is removed when the guard is dropped"]
    pub(crate) fn insert(&self, token: String, value: V) -> Registered<V> {
        let mut entries = self.lock();
        let generation = entries.next_generation;
        entries.next_generation += 1;
        entries.map.insert(token.clone(), (generation, value));
        Registered {
            registry: self.clone(),
            token,
            generation,
        }
    }

    /// The entry registered under `token`.
    pub(crate) fn get(&self, token: &str) -> Option<V> {
        self.lock().map.get(token).map(|(_, value)| value.clone())
    }
}

impl<V> Registry<V> {
    fn lock(&self) -> MutexGuard<'_, Entries<V>> {
        self.inner.lock()
    }
}

/// An entry of a [`Registry`]: removed when this is dropped, if it is still
/// the entry under its token.
pub(crate) struct Registered<V> {
    registry: Registry<V>,
    token: String,
    generation: u64,
}

impl<V> std::fmt::Debug for Registered<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: not shown.
        f.debug_struct("Registered")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl<V> Drop for Registered<V> {
    fn drop(&mut self) {
        let mut entries = self.registry.lock();
        if entries
            .map
            .get(&self.token)
            .is_some_and(|(generation, _)| *generation == self.generation)
        {
            entries.map.remove(&self.token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_guard_removes_the_entry() {
        let registry = Registry::default();
        let guard = registry.insert("a".to_owned(), 1);
        assert_eq!(registry.get("a"), Some(1));
        drop(guard);
        assert_eq!(registry.get("a"), None);
    }

    #[test]
    fn an_old_guard_leaves_its_successor_alone() {
        let registry = Registry::default();
        let old = registry.insert("a".to_owned(), 1);
        let new = registry.insert("a".to_owned(), 2);
        drop(old);
        assert_eq!(registry.get("a"), Some(2));
        drop(new);
        assert_eq!(registry.get("a"), None);
    }
}
