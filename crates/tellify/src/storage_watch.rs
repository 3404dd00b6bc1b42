//! Watches whether the store takes writes, and keeps room for the news when it does not.
//!
//! The store's writers report each outcome to its [`StorageHealth`]. When writes fail, this
//! watcher raises the system alert `tellify.storage.failing` (delivered through admins'
//! subscriptions) and tries a small write every second until one succeeds, then resolves it.
//!
//! A full disk would leave no room for that alert or its deliveries, so a **reserve** file of a
//! few MiB is kept in the data directory. When the disk fills, the reserve is released: the
//! engine and the delivery worker can still commit, while ingest refuses new events at once
//! with `503` (it would only eat the room). Once the filesystem has the reserve's size and as
//! much again free, the reserve is laid down anew, a probe write succeeds, and ingest resumes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tellify_core::alert::{Content, Severity};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::engine::{Command, EngineHandle};
use crate::store::Store;
use crate::store::health::{Failure, FailureKind};

/// The system alert of a store that refuses writes.
pub const STORAGE_FAILING: &str = "tellify.storage.failing";

/// How often a failing store is tried again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Disk space set aside for alerts and deliveries when the disk fills.
#[derive(Clone)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    /// A reserve of `bytes` in `dir`; `None` when `bytes` is 0 (turned off).
    pub fn new(dir: &Path, bytes: u64) -> Option<Self> {
        (bytes > 0).then(|| Self {
            path: dir.join("reserve.space"),
            bytes,
        })
    }

    /// Lays the reserve down if it is not there (or was cut short). Blocking.
    pub fn fill(&self) -> std::io::Result<()> {
        use std::io::Write;
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() == self.bytes) {
            return Ok(());
        }
        let written = (|| {
            let mut file = std::fs::File::create(&self.path)?;
            // Real blocks, not a sparse file: the point is to hold the space.
            let chunk = vec![0u8; 1 << 20];
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                file.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            file.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        written
    }

    /// Gives the reserve's space back to the filesystem; returns whether there was one.
    pub fn release(&self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }

    /// Whether the filesystem has room to lay the reserve down and as much again.
    fn room_to_refill(&self) -> bool {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        match rustix::fs::statvfs(dir) {
            Ok(fs) => fs.f_bavail.saturating_mul(fs.f_frsize) >= self.bytes.saturating_mul(2),
            // Unknown: let the refill itself find out.
            Err(_) => true,
        }
    }
}

/// Runs until shutdown: raises and clears `tellify.storage.failing`, releases and refills
/// the reserve, and probes a failing store.
pub async fn run(
    store: Arc<dyn Store>,
    engine: EngineHandle,
    reserve: Option<Arc<Reserve>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = store.health().subscribe();
    // An alert left open by a stop while failing is cleared if all is well now.
    if store.health().failure().is_none() {
        clear(&engine);
    }
    loop {
        let failure = *changes.borrow_and_update();
        match failure {
            None => {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => return,
                }
            }
            Some(failure) => {
                on_failure(&engine, reserve.as_deref(), failure).await;
                // Probe until the store takes writes again.
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(PROBE_EVERY) => {}
                        _ = shutdown.changed() => return,
                    }
                    if recovered(store.as_ref(), reserve.as_deref()).await {
                        break;
                    }
                    // A different kind of failure is news: say it.
                    if let Some(now) = store.health().failure()
                        && now.kind != failure.kind
                    {
                        break;
                    }
                }
                if store.health().failure().is_none() {
                    info!(message = "The store takes writes again.");
                    clear(&engine);
                }
                changes.mark_changed();
            }
        }
    }
}

async fn on_failure(engine: &EngineHandle, reserve: Option<&Reserve>, failure: Failure) {
    warn!(
        message = "The store refuses writes.",
        reason = failure.kind.message()
    );
    if failure.kind == FailureKind::Full
        && let Some(reserve) = reserve
        && reserve.release()
    {
        warn!(
            message = "Disk full: released the reserve so alerts and deliveries can still be written; events are refused until space is back.",
            reserve_bytes = reserve.bytes
        );
    }
    let summary = format!(
        "Tellify cannot write to its store: {}",
        failure.kind.message()
    );
    engine.send(Command::System {
        rule: STORAGE_FAILING,
        key: "store".into(),
        raise: Some(Content {
            severity: Severity::Critical,
            summary,
            body: "Events are refused with 503 until the store takes writes again; events \
                   already accepted are kept. Free space on the data directory's disk (or \
                   fix what the server log names); Tellify resumes by itself."
                .into(),
            labels: [("reason".to_owned(), failure.kind.code().to_owned())].into(),
            source: "tellify".into(),
            ..Content::default()
        }),
    });
}

/// Whether the store takes writes again: for a full disk, once there is room for the reserve
/// and it is laid down again; then a probe write must succeed.
async fn recovered(store: &dyn Store, reserve: Option<&Reserve>) -> bool {
    let health = store.health();
    let Some(failure) = health.failure() else {
        return true;
    };
    if failure.kind == FailureKind::Full
        && let Some(reserve) = reserve
    {
        if !reserve.room_to_refill() {
            return false;
        }
        let path = reserve.path.clone();
        let bytes = reserve.bytes;
        let refilled = tokio::task::spawn_blocking(move || Reserve { path, bytes }.fill()).await;
        if !matches!(refilled, Ok(Ok(()))) {
            return false;
        }
    }
    if store.probe_write().await.is_err() {
        return false;
    }
    health.recovered();
    true
}

fn clear(engine: &EngineHandle) {
    engine.send(Command::System {
        rule: STORAGE_FAILING,
        key: "store".into(),
        raise: None,
    });
}
