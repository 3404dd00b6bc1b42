//! Whether the store takes writes, as its writers last found.
//!
//! Every write transaction reports its outcome here. A failure (a full disk, an I/O error, a
//! lock that never came) makes the store *failing* until a later write succeeds: `/readyz`
//! says so, the storage watcher raises the system alert `tellify.storage.failing`, and while the
//! disk is full ingest refuses at once instead of spending the room kept for alerts.

use std::sync::Mutex;

use tokio::sync::watch;

/// What kind of refusal the store met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No room left on the device (`SQLITE_FULL`).
    Full,
    /// The operating system failed a read or write (`SQLITE_IOERR`).
    Io,
    /// Another writer held the database past the busy timeout.
    Locked,
    /// The database or its directory is read-only.
    ReadOnly,
    /// Anything else the database refused.
    Other,
}

impl FailureKind {
    /// Says what happened in words an operator acts on; never carries a path or a value.
    pub fn message(self) -> &'static str {
        match self {
            FailureKind::Full => "the disk holding the database is full",
            FailureKind::Io => "the database's disk failed a read or write",
            FailureKind::Locked => "the database stayed locked by another writer",
            FailureKind::ReadOnly => "the database is read-only",
            FailureKind::Other => "the database refused a write",
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            FailureKind::Full => "disk_full",
            FailureKind::Io => "io_error",
            FailureKind::Locked => "locked",
            FailureKind::ReadOnly => "read_only",
            FailureKind::Other => "write_failed",
        }
    }

    /// Classifies an error from a write: the SQLite result code where there is one.
    pub fn of(error: &anyhow::Error) -> FailureKind {
        for cause in error.chain() {
            if let Some(sqlx::Error::Database(db)) = cause.downcast_ref::<sqlx::Error>() {
                return db
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .map_or(FailureKind::Other, |code| {
                        FailureKind::of_sqlite(code & 0xff)
                    });
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                return if io.raw_os_error() == Some(28) {
                    FailureKind::Full
                } else {
                    FailureKind::Io
                };
            }
        }
        FailureKind::Other
    }

    /// From a primary SQLite result code.
    fn of_sqlite(code: i32) -> FailureKind {
        match code {
            13 => FailureKind::Full,         // SQLITE_FULL
            10 | 14 => FailureKind::Io,      // SQLITE_IOERR, SQLITE_CANTOPEN
            5 | 6 => FailureKind::Locked,    // SQLITE_BUSY, SQLITE_LOCKED
            8 | 23 => FailureKind::ReadOnly, // SQLITE_READONLY, SQLITE_AUTH
            _ => FailureKind::Other,
        }
    }
}

/// The store is failing since `since` (the first failure of this spell, epoch ms by the wall
/// clock), for the reason of its latest failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub since: i64,
}

/// Shared by the store's writers, the watcher and `/readyz`.
pub struct StorageHealth {
    state: watch::Sender<Option<Failure>>,
    /// Serialises updates so `since` keeps the start of a spell.
    update: Mutex<()>,
}

impl Default for StorageHealth {
    fn default() -> Self {
        Self {
            state: watch::Sender::new(None),
            update: Mutex::new(()),
        }
    }
}

impl StorageHealth {
    /// Records the outcome of a write and passes it on.
    pub fn observe<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(FailureKind::of(e)),
        }
        result
    }

    pub fn failed(&self, kind: FailureKind) {
        let _one = self
            .update
            .lock()
            .expect("the health lock is never poisoned");
        let since = self
            .state
            .borrow()
            .map_or_else(|| chrono::Utc::now().timestamp_millis(), |f| f.since);
        self.state.send_if_modified(|state| {
            let next = Some(Failure { kind, since });
            let changed = *state != next;
            *state = next;
            changed
        });
    }

    /// A write succeeded. That ends a spell of failures, except a full disk's: a write that
    /// fits in the room released for alerts says nothing of whether events fit again, so only
    /// the storage watcher ends that one ([`StorageHealth::recovered`]).
    pub fn succeeded(&self) {
        if self
            .state
            .borrow()
            .is_none_or(|f| f.kind == FailureKind::Full)
        {
            return;
        }
        let _one = self
            .update
            .lock()
            .expect("the health lock is never poisoned");
        self.state
            .send_if_modified(|state| state.take_if(|f| f.kind != FailureKind::Full).is_some());
    }

    /// The store takes writes again, whatever failed.
    pub fn recovered(&self) {
        let _one = self
            .update
            .lock()
            .expect("the health lock is never poisoned");
        self.state.send_if_modified(|state| state.take().is_some());
    }

    /// The current failure, if the store is failing.
    pub fn failure(&self) -> Option<Failure> {
        *self.state.borrow()
    }

    /// Whether writes that can wait (events from outside) should be refused without trying:
    /// the disk is full, and what room is left is kept for alerts and deliveries.
    pub fn disk_full(&self) -> bool {
        self.failure().is_some_and(|f| f.kind == FailureKind::Full)
    }

    /// Follows the state's changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<Failure>> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spell_keeps_its_start_and_ends_with_a_success() {
        let health = StorageHealth::default();
        assert_eq!(health.failure(), None);
        health.failed(FailureKind::Full);
        let first = health.failure().expect("failing");
        health.failed(FailureKind::Locked);
        let second = health.failure().expect("still failing");
        assert_eq!(second.since, first.since, "one spell");
        assert_eq!(second.kind, FailureKind::Locked);
        assert!(!health.disk_full());
        health.succeeded();
        assert_eq!(health.failure(), None);
    }

    #[test]
    fn only_recovery_ends_a_full_disk() {
        let health = StorageHealth::default();
        health.failed(FailureKind::Full);
        health.succeeded();
        assert!(
            health.disk_full(),
            "a write into the reserve proves nothing"
        );
        health.recovered();
        assert_eq!(health.failure(), None);
    }

    #[test]
    fn io_errors_for_a_full_disk_count_as_full() {
        let e = anyhow::Error::from(std::io::Error::from_raw_os_error(28));
        assert_eq!(FailureKind::of(&e), FailureKind::Full);
        let e = anyhow::Error::from(std::io::Error::from_raw_os_error(5));
        assert_eq!(FailureKind::of(&e), FailureKind::Io);
        assert_eq!(FailureKind::of_sqlite(13), FailureKind::Full);
        assert_eq!(FailureKind::of_sqlite(5), FailureKind::Locked);
    }
}
