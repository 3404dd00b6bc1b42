//! ① Events in: the HTTP ingest endpoint, broker sources, and the writer that stores events.
//!
//! Every source hands events to [`Ingest`], which answers only once they are durably stored.
//! One writer task does all event writes: requests that arrive together are committed in one
//! transaction (group commit), so the cost of making a write durable is shared by everyone
//! waiting, and throughput grows with concurrency instead of collapsing under it. After the
//! commit it hands the stored events to the engine.

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{Instrument, debug, error};

use crate::engine::{Command, EngineHandle};
use crate::metrics::{Metrics, SourceLabel};
pub use crate::owners::Owners;
use crate::store::{EventBatch, NewEvent, Store, StoredEvent, User};

/// Events stored but not yet evaluated that the engine's queue may hold. Past that the writer
/// waits for the engine before storing more: ingest slows to the engine's pace instead of the
/// queue (and the server's memory) growing for as long as events come faster than rules run.
const MAX_ENGINE_LAG: usize = 20_000;

/// The answer to events while the disk is full.
const DISK_FULL: &str =
    "the disk holding Tellify's store is full; nothing was kept, try again once space is freed";

/// A stream of events from outside (a broker topic). HTTP ingest is the endpoint in [`http`];
/// broker sources implement this and run until shutdown.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    fn name(&self) -> &str;
    async fn run(&self, ingest: Ingest, shutdown: tokio::sync::watch::Receiver<bool>)
    -> Result<()>;
}

struct Job {
    batch: EventBatch,
    reply: oneshot::Sender<Result<usize, String>>,
}

/// The door every event comes in by.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Job>,
    owners: Owners,
    /// Tells the writer to store what is queued and stop; its task, for [`Ingest::close`].
    close: Arc<tokio::sync::Notify>,
    writer: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Ingest {
    /// Starts the writer task.
    pub fn start(
        store: Arc<dyn Store>,
        engine: EngineHandle,
        metrics: Arc<Metrics>,
        owners: Owners,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let lag = Arc::new(Semaphore::new(MAX_ENGINE_LAG));
        let close = Arc::new(tokio::sync::Notify::new());
        let writer = tokio::spawn(writer(
            rx,
            close.clone(),
            store,
            engine,
            metrics,
            owners.clone(),
            lag,
        ));
        Self {
            tx,
            owners,
            close,
            writer: Arc::new(std::sync::Mutex::new(Some(writer))),
        }
    }

    /// Stops taking events: what is queued is stored and handed to the engine, later
    /// submissions answer that the server is shutting down. Returns when the writer is done.
    pub async fn close(&self) {
        self.close.notify_one();
        let writer = self
            .writer
            .lock()
            .expect("the writer lock is never poisoned")
            .take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }

    /// Whether `user` may send events to `source` ([`Owners::may_write`]).
    pub fn may_write(&self, user: &User, source: &str) -> bool {
        self.owners.may_write(user, source)
    }

    /// Whether `user` may read events of `source` ([`Owners::may_read`]).
    pub fn may_read(&self, user: &User, source: &str) -> bool {
        self.owners.may_read(user, source)
    }

    /// Stores events durably; returns how many once they are committed.
    pub async fn submit(&self, owner: &str, events: Vec<NewEvent>) -> Result<usize, String> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            batch: EventBatch {
                owner: owner.to_owned(),
                events,
            },
            reply,
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| "the server is shutting down".to_owned())?;
        rx.await
            .map_err(|_| "the server is shutting down".to_owned())?
    }
}

async fn writer(
    mut rx: mpsc::Receiver<Job>,
    close: Arc<tokio::sync::Notify>,
    store: Arc<dyn Store>,
    engine: EngineHandle,
    metrics: Arc<Metrics>,
    owners: Owners,
    lag: Arc<Semaphore>,
) {
    loop {
        let first = tokio::select! {
            job = rx.recv() => job,
            () = close.notified() => {
                // No new submissions; the ones already queued are still received below.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else {
            return;
        };
        let mut jobs = vec![first];
        let mut total = jobs[0].batch.events.len();
        // A group is no larger than the engine's queue may hold (give or take the request that
        // crosses the line), so the lag bound is one on memory too.
        while total < MAX_ENGINE_LAG {
            match rx.try_recv() {
                Ok(job) => {
                    total += job.batch.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // Room in the engine's queue; the engine hands it back once it has evaluated them.
        let want = u32::try_from(total.min(MAX_ENGINE_LAG)).expect("at most MAX_ENGINE_LAG");
        let Ok(permit) = lag.clone().acquire_many_owned(want).await else {
            return;
        };
        // The events move on to the engine uncopied; only the replies stay here.
        let mut replies = Vec::with_capacity(jobs.len());
        let batches: Vec<EventBatch> = jobs
            .into_iter()
            .map(|j| {
                replies.push((j.reply, j.batch.events.len()));
                j.batch
            })
            .collect();
        // While the disk is full the room left is kept for alerts and deliveries: events are
        // refused without trying, until the storage watcher finds space again.
        if store.health().disk_full() {
            for (reply, _) in replies {
                let _ = reply.send(Err(DISK_FULL.to_owned()));
            }
            continue;
        }
        let was_failing = store.health().failure().is_some();
        let span = tracing::debug_span!("ingest", requests = batches.len(), events = total);
        match store.append_events(&batches).instrument(span).await {
            Ok(seqs) => {
                let mut claims = Vec::new();
                for batch in &batches {
                    for e in &batch.events {
                        if owners.claim(&e.source, &batch.owner) {
                            claims.push((e.source.clone(), batch.owner.clone()));
                        }
                    }
                }
                let mut stored = Vec::with_capacity(seqs.len());
                let mut seq_iter = seqs.into_iter();
                for batch in batches {
                    for event in batch.events {
                        metrics
                            .events_ingested
                            .get_or_create(&SourceLabel {
                                source: event.source.clone(),
                            })
                            .inc();
                        if let Some(seq) = seq_iter.next() {
                            stored.push(StoredEvent { seq, event });
                        }
                    }
                }
                engine.send(Command::Events {
                    events: stored,
                    claims,
                    permit: Some(permit),
                });
                for (reply, n) in replies {
                    let _ = reply.send(Ok(n));
                }
            }
            Err(e) => {
                // Said once per spell of failures (the watcher says more), not per request.
                if was_failing {
                    debug!(message = "Failed to store events.", error = %format!("{e:#}"));
                } else {
                    error!(message = "Failed to store events.", error = %format!("{e:#}"));
                }
                for (reply, _) in replies {
                    let _ = reply.send(Err(
                        "the events could not be stored; nothing was kept, try again".to_owned(),
                    ));
                }
            }
        }
    }
}
