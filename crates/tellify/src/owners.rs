//! Who owns each source: the server's shared copy of [`tellify_core::access::Sources`], kept
//! by ingest (the first poster claims a source), read by the API and by the engine (which
//! claims the sources of events that scripts emit).

use std::sync::{Arc, RwLock};

use anyhow::Result;
use tellify_core::access::Sources;

use crate::store::{Store, User};

/// Who owns each source and whether it is public; shared by ingest, the engine and the API.
/// The rules are [`tellify_core::access::Sources`]'s, the same the engine's evaluator asks.
#[derive(Clone, Default)]
pub struct Owners(Arc<RwLock<Sources>>);

impl Owners {
    pub async fn load(store: &dyn Store) -> Result<Self> {
        let mut sources = Sources::default();
        for s in store.sources().await? {
            sources.set(&s.name, &s.owner, s.visibility == "public");
        }
        Ok(Self(Arc::new(RwLock::new(sources))))
    }

    /// Records `owner` for `source` unless it has one; returns whether it was new.
    pub fn claim(&self, source: &str, owner: &str) -> bool {
        self.0
            .write()
            .expect("the owners lock is never poisoned")
            .claim(source, owner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Sources> {
        self.0.read().expect("the owners lock is never poisoned")
    }

    /// Whether `user` may send events to `source` ([`Sources::may_write`]).
    pub fn may_write(&self, user: &User, source: &str) -> bool {
        self.read().may_write(&user.name, user.is_admin(), source)
    }

    /// Whether `user` may read events of `source` ([`Sources::may_read`]).
    pub fn may_read(&self, user: &User, source: &str) -> bool {
        self.read().may_read(&user.name, user.is_admin(), source)
    }
}
