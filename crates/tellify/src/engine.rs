//! ② The engine: rules applied to stored events and to the clock; alert changes committed.
//!
//! One thread owns the [`Evaluator`] (QuickJS runtimes are single-threaded, and one owner of
//! all rule state needs no locks). Everything that changes rules or alerts reaches it as a
//! [`Command`] on one channel, so changes apply in one order. After each batch it commits the
//! alert changes, rule state and its checkpoint (the last event seq evaluated) in one store
//! transaction. At start it restores that state and replays the events after the checkpoint:
//! an event accepted before a crash is evaluated exactly once.
//!
//! **Fairness.** Each rule owner has a share of engine time (`--js-owner-cpu-ms` per second).
//! An owner who has used it up is deferred: the checkpoint moves on for everyone else, and the
//! owner's own position (the last event all their rules evaluated, and which rules have run on
//! the next one) is committed with each batch in `engine_owner_positions`. Between batches the
//! engine gives each deferred owner with time left a turn of at most one burst at their backlog,
//! read back from the log in order, until they reach the checkpoint. So after a crash neither
//! other owners' events are evaluated again nor the deferred owner's skipped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use tellify_core::alert::{
    Alert, AlertKey, Change, Content, Effect, ResolveReason, SYSTEM_OWNER, Status,
};
use tellify_core::eval::{Evaluator, OwnerBudget, Resumed};
use tellify_core::expr::Limits;
use tellify_core::rule::{self, RuleDoc, RuleError, RuleSpec};
use tellify_core::subscription::Trigger;
use tokio::sync::{broadcast, oneshot};
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::dispatch::{Dispatcher, Transition};
use crate::metrics::{Metrics, RuleLabel, RuleSourceLabel};
use crate::owners::Owners;
use crate::store::{
    Ack, AlertWrites, EngineCommit, EventBatch, HistoryEntry, NewEvent, Outbox, RuleWrite, Store,
    StoredEvent, StoredRule,
};

/// Events read per replay step at start.
const REPLAY_CHUNK: i64 = 5_000;
/// Open alerts read per page at a restart.
const RESTORE_PAGE: i64 = 5_000;
/// Events evaluated before a commit, when commands queue up.
const MAX_BATCH_EVENTS: usize = 20_000;
/// Events read at a time when a deferred owner catches up.
const RESUME_CHUNK: i64 = 500;
/// How often the engine looks whether a deferred owner has time again, when idle.
const RESUME_POLL: Duration = Duration::from_millis(10);

/// What the engine is asked to do.
pub enum Command {
    /// Events stored by the ingest writer; `claims` are sources first seen in them.
    Events {
        events: Vec<StoredEvent>,
        claims: Vec<(String, String)>,
        /// The ingest writer's room in this queue, handed back once the events are evaluated.
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// Saves a rule document (a rule, template or instance) for `owner`.
    PutRule {
        owner: String,
        doc: RuleDoc,
        origin: String,
        reply: oneshot::Sender<Result<(), RuleError>>,
    },
    DeleteRule {
        owner: String,
        name: String,
        reply: oneshot::Sender<bool>,
    },
    /// A person resolves an alert.
    Resolve {
        alert: AlertKey,
        reply: oneshot::Sender<bool>,
    },
    /// A person acknowledges an alert; answers the alert after, or `None` if it is not open.
    Ack {
        alert: AlertKey,
        by: String,
        reply: oneshot::Sender<Option<Alert>>,
    },
    /// Channels, subscriptions, silences or users changed: the dispatcher reloads them.
    NotifySettingsChanged(oneshot::Sender<()>),
    SetAdmin {
        user: String,
        admin: bool,
    },
    /// Raises (`raise` holds what it says) or clears one of Tellify's own alerts, owned by
    /// [`SYSTEM_OWNER`] and delivered through admins' subscriptions.
    System {
        rule: &'static str,
        key: String,
        raise: Option<Content>,
    },
    /// The clock moved (tests): check timers now.
    Tick,
    /// Answers once everything sent before it is evaluated and committed.
    Barrier(oneshot::Sender<()>),
    Shutdown,
}

/// Owners whose evaluation is deferred because their share of engine time ran out.
pub type Throttled = Arc<RwLock<HashSet<String>>>;

/// A cheap handle for sending commands to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    throttled: Throttled,
    /// The newest seq sent for evaluation: the engine's owner share makes way for the events
    /// after the one it evaluates only when there are some.
    log_head: Arc<AtomicI64>,
}

impl EngineHandle {
    /// Whether `owner`'s rules are deferred now (status `throttled` in the rules API).
    pub fn is_throttled(&self, owner: &str) -> bool {
        self.throttled
            .read()
            .map(|set| set.contains(owner))
            .unwrap_or(false)
    }

    pub fn send(&self, command: Command) {
        if let Command::Events { events, .. } = &command
            && let Some(last) = events.iter().map(|e| e.seq).max()
        {
            self.log_head.fetch_max(last, Ordering::Release);
        }
        // The engine only stops at shutdown; a command sent after that has nothing to do.
        let _ = self.tx.send(command);
    }

    pub async fn put_rule(&self, owner: &str, doc: RuleDoc, origin: &str) -> Result<(), RuleError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::PutRule {
            owner: owner.to_owned(),
            doc,
            origin: origin.to_owned(),
            reply,
        });
        rx.await
            .unwrap_or_else(|_| Err(RuleError::new(None, "the engine is shutting down")))
    }

    pub async fn delete_rule(&self, owner: &str, name: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        self.send(Command::DeleteRule {
            owner: owner.to_owned(),
            name: name.to_owned(),
            reply,
        });
        rx.await.unwrap_or(false)
    }

    pub async fn ack(&self, alert: AlertKey, by: &str) -> Option<Alert> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Ack {
            alert,
            by: by.to_owned(),
            reply,
        });
        rx.await.ok().flatten()
    }

    /// Reloads notification settings; returns once the dispatcher has them.
    pub async fn notify_settings_changed(&self) {
        let (reply, rx) = oneshot::channel();
        self.send(Command::NotifySettingsChanged(reply));
        let _ = rx.await;
    }

    pub async fn resolve(&self, alert: AlertKey) -> bool {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Resolve { alert, reply });
        rx.await.unwrap_or(false)
    }
}

/// What the engine needs from the rest of the server.
pub struct EngineParts {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub alerts: broadcast::Sender<Alert>,
    pub limits: Limits,
    /// Each owner's share of engine time; `None`: no limit.
    pub owner_budget: Option<OwnerBudget>,
    /// Who owns each source, shared with ingest.
    pub owners: Owners,
    pub outbox: Arc<dyn Outbox>,
    /// Wakes the delivery worker when a commit planned deliveries.
    pub wake: Arc<tokio::sync::Notify>,
}

/// Starts the engine thread; it has restored its state and replayed the log when this returns.
pub async fn start(parts: EngineParts) -> Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    let throttled = Throttled::default();
    let shown = throttled.clone();
    let log_head = Arc::new(AtomicI64::new(0));
    let head = log_head.clone();
    let thread = std::thread::Builder::new()
        .name("tellify-engine".into())
        .spawn(move || {
            // Inside the runtime's context: database handles dropped on this thread (a failed
            // transaction) hand their connection back through it.
            let _context = runtime.enter();
            let mut evaluator =
                Evaluator::with_ids(parts.limits, Box::new(|| uuid::Uuid::now_v7().to_string()));
            if let Some(budget) = parts.owner_budget {
                // Engine time, as the CPU budget of each call measures it: monotonic wall time
                // of this thread's work.
                let origin = Instant::now();
                evaluator.set_owner_budget(
                    budget,
                    Box::new(move || {
                        u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
                    }),
                    Box::new(move |seq| head.load(Ordering::Acquire) > seq),
                );
            }
            let mut engine = Engine {
                evaluator,
                throttled: shown,
                barriers: Vec::new(),
                dispatch: Dispatcher::new(parts.limits),
                parts,
                runtime,
                checkpoint: 0,
                silences_checked: 0,
                system: HashMap::new(),
            };
            match engine.restore() {
                Ok(()) => {
                    let _ = ready_tx.send(Ok(()));
                    // Without its engine the server would keep accepting events that nothing
                    // evaluates. Everything is recoverable from the store, so a bug here stops
                    // the process for its supervisor to restart, rather than leave a zombie.
                    let run =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run(rx)));
                    if run.is_err() {
                        error!(
                            message =
                                "The engine failed; stopping so a restart recovers from the store."
                        );
                        std::process::exit(70);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .context("Failed to start the engine thread")?;
    ready_rx
        .await
        .context("The engine thread stopped while starting")??;
    Ok((
        EngineHandle {
            tx,
            throttled,
            log_head,
        },
        thread,
    ))
}

struct Engine {
    evaluator: Evaluator,
    /// The deferred owners, as the rules API shows them.
    throttled: Throttled,
    /// Barriers waiting for deferred owners to reach the checkpoint they were sent at.
    barriers: Vec<(i64, oneshot::Sender<()>)>,
    dispatch: Dispatcher,
    parts: EngineParts,
    runtime: tokio::runtime::Handle,
    checkpoint: i64,
    /// Silences that ended up to this time have released their alerts.
    silences_checked: i64,
    /// Tellify's own open alerts, by (rule, key): they have no rule for the evaluator to hold.
    system: HashMap<(String, String), AlertKey>,
}

/// Turns a stored rule document into the rule to evaluate: instances are made from their
/// template (the owner's own, else an admin's shared one); templates are not evaluated.
pub fn resolve_doc(
    doc: &RuleDoc,
    owner: &str,
    templates: &dyn Fn(&str, &str) -> Option<rule::Template>,
) -> Result<Option<RuleSpec>, RuleError> {
    match doc {
        RuleDoc::Rule(spec) => Ok(Some((**spec).clone())),
        RuleDoc::Template(_) => Ok(None),
        RuleDoc::Instance(instance) => {
            let template = templates(owner, &instance.from).ok_or_else(|| {
                RuleError::new(
                    Some("from"),
                    format!("there is no template named `{}`", instance.from),
                )
            })?;
            rule::instantiate(&template, instance)
                .map(Some)
                .map_err(|e| match e {
                    rule::InstanceError::Rule(e) => e,
                    rule::InstanceError::InvalidParams(failures) => RuleError {
                        failures,
                        ..RuleError::new(
                            Some("params"),
                            "params do not match the template's schema",
                        )
                    },
                })
        }
    }
}

impl Engine {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    fn restore(&mut self) -> Result<()> {
        let store = self.parts.store.clone();
        let now = self.parts.clock.now();
        for user in self.block_on(store.list_users())? {
            self.evaluator.access.set_admin(&user.name, user.is_admin());
        }
        for source in self.block_on(store.sources())? {
            self.evaluator.access.set_source(
                &source.name,
                &source.owner,
                source.visibility == "public",
            );
            // `_topic` conditions read the latest event of each source right after a restart.
            if let Some(event) = &source.last_event {
                self.evaluator.set_topic(&source.name, event);
            }
        }
        let rules = self.block_on(store.list_rules(None))?;
        let templates = template_table(&rules, &self.evaluator.access);
        let mut failed = Vec::new();
        for stored in &rules {
            let loaded = rule::parse_doc(stored.doc.clone())
                .and_then(|doc| {
                    resolve_doc(&doc, &stored.owner, &|o, n| {
                        lookup_template(&templates, o, n)
                    })
                })
                .and_then(|spec| match spec {
                    Some(spec) => {
                        // Instances too: their notify list comes from the template.
                        let notify = spec.notify.clone();
                        self.evaluator.upsert(&stored.owner, spec, now)?;
                        if let Some(error) = &stored.error {
                            self.evaluator
                                .restore_error(&stored.owner, &stored.name, error);
                        }
                        self.dispatch
                            .set_rule_notify(&stored.owner, &stored.name, &notify);
                        Ok(())
                    }
                    None => Ok(()),
                });
            if let Err(e) = loaded {
                warn!(message = "A stored rule no longer loads.", owner = %stored.owner, rule = %stored.name, error = %e);
                failed.push((
                    stored.owner.clone(),
                    stored.name.clone(),
                    Some(e.to_string()),
                ));
            }
        }
        // Loading rules may have decided things (expected heartbeat keys); they are superseded
        // by the saved state restored next.
        self.evaluator.drain();
        self.evaluator.take_dirty();
        let snapshot = self.block_on(store.load_engine())?;
        let mut after = None;
        let mut open_alerts = 0;
        loop {
            let page = self.block_on(store.open_alerts(after.as_ref(), RESTORE_PAGE))?;
            for open in &page {
                if open.alert.owner == SYSTEM_OWNER {
                    let slot = (open.alert.rule.clone(), open.alert.key.clone());
                    self.system.insert(slot, open.alert.clone());
                    continue;
                }
                self.evaluator.restore_open(
                    &open.alert,
                    open.status,
                    open.fired_at,
                    open.acked,
                    now,
                );
            }
            open_alerts += page.len();
            let full = page.len() as i64 == RESTORE_PAGE;
            after = page.into_iter().last().map(|open| open.alert);
            if !full {
                break;
            }
        }
        let outbox = self.parts.outbox.clone();
        self.runtime
            .block_on(self.dispatch.reload(store.as_ref(), outbox.as_ref()))?;
        // Silences that ended since the last look (even while stopped) release their alerts.
        self.silences_checked = self
            .block_on(self.parts.outbox.get_setting("silences_checked"))?
            .and_then(|v| v.as_i64())
            // Never recorded: every ended silence is looked at; only alerts still held back
            // (a silenced notification newer than any sent) are told.
            .unwrap_or(0);
        for (owner, rule, key, state) in &snapshot.states {
            self.evaluator.restore_state(owner, rule, key, state, now);
        }
        self.evaluator.take_dirty();
        self.checkpoint = snapshot.checkpoint;
        // Owners deferred before the restart catch up from where they were; the replay below
        // evaluates the events after the checkpoint for everyone else.
        for (owner, deferred) in &snapshot.deferred {
            self.evaluator.restore_deferral(owner, deferred);
        }
        self.evaluator.take_deferrals();
        self.show_throttled();
        if !failed.is_empty() {
            self.commit(EngineCommit {
                rule_status: failed,
                ..Default::default()
            });
        }
        let replayed = self.catch_up();
        info!(
            message = "Engine restored.",
            rules = rules.len(),
            open_alerts,
            replayed_events = replayed,
            checkpoint = self.checkpoint
        );
        Ok(())
    }

    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        loop {
            let now = self.parts.clock.now();
            let mut wait = Duration::from_millis(
                self.evaluator
                    .next_deadline()
                    .map_or(1_000, |d| (d - now).clamp(0, 1_000)) as u64,
            );
            if !self.evaluator.deferred_owners().is_empty() {
                // With nothing new in the log, deferred owners catch up at once; otherwise they
                // wait for their share to refill.
                let poll = if self.evaluator.backlog() {
                    RESUME_POLL
                } else {
                    Duration::ZERO
                };
                wait = wait.min(poll);
            }
            let first = match rx.recv_timeout(wait) {
                Ok(c) => Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut events = Vec::new();
            let mut permits = Vec::new();
            let mut next = first;
            // Events that queued up are evaluated together and committed once.
            while let Some(command) = next.take() {
                match command {
                    Command::Events {
                        events: batch,
                        claims,
                        permit,
                    } => {
                        for (source, owner) in claims {
                            self.evaluator.access.set_source_if_new(&source, &owner);
                        }
                        events.extend(batch.into_iter().filter(|e| e.seq > self.checkpoint));
                        permits.extend(permit);
                        if events.len() < MAX_BATCH_EVENTS {
                            next = rx.try_recv().ok();
                        }
                    }
                    Command::Shutdown => {
                        if !events.is_empty() {
                            self.evaluate(std::mem::take(&mut events));
                        }
                        return;
                    }
                    other => {
                        if !events.is_empty() {
                            self.evaluate(std::mem::take(&mut events));
                            permits.clear();
                        }
                        self.handle(other);
                    }
                }
            }
            if !events.is_empty() {
                self.evaluate(events);
            }
            drop(permits);
            self.evaluator.advance(self.parts.clock.now());
            self.commit_pending(None, Vec::new());
            self.release_silences();
            self.catch_up_deferred();
        }
    }

    /// Gives each deferred owner with time left, or every one when nothing new waits in the log,
    /// one turn at their backlog: events after their position up to the checkpoint, in order,
    /// until new events wait and their time runs out (a turn lasts at most the budget's burst
    /// plus one rule's run while others wait), each turn committed with the owner's new
    /// position. An owner who reaches the checkpoint takes part in every event again.
    fn catch_up_deferred(&mut self) {
        for (owner, mut position) in self.evaluator.deferred_owners() {
            if !self.evaluator.may_catch_up(&owner) {
                continue;
            }
            self.evaluator.begin_turn();
            let mut out_of_time = false;
            while !out_of_time {
                let events = match self
                    .block_on(self.parts.store.events_after(position, RESUME_CHUNK))
                {
                    Ok(events) => events,
                    Err(e) => {
                        error!(message = "Failed to read the event log for a deferred owner; trying again.", %owner, error = %format!("{e:#}"));
                        // The run loop comes back at once while nothing new waits: not in a
                        // tight loop of failing reads.
                        std::thread::sleep(Duration::from_secs(1));
                        return;
                    }
                };
                let backlog: Vec<StoredEvent> = events
                    .into_iter()
                    .filter(|e| e.seq <= self.checkpoint)
                    .collect();
                if backlog.is_empty() {
                    self.evaluator.undefer(&owner);
                    info!(message = "Owner caught up; no longer throttled.", %owner);
                    break;
                }
                for stored in backlog {
                    let (event, hops, received) = stored.event.into_event();
                    match self
                        .evaluator
                        .resume(&owner, stored.seq, &event, hops, received)
                    {
                        Resumed::Done => position = stored.seq,
                        Resumed::Paused => {
                            out_of_time = true;
                            break;
                        }
                        Resumed::NotDeferred => return,
                    }
                }
                let committed = self.commit_pending(None, Vec::new());
                if committed.emitted {
                    self.catch_up();
                }
            }
            // Commits the owner's leaving the deferred set.
            self.commit_pending(None, Vec::new());
        }
        self.answer_barriers();
    }

    /// Answers the barriers whose events every deferred owner has now evaluated.
    fn answer_barriers(&mut self) {
        if self.barriers.is_empty() {
            return;
        }
        let behind = self
            .evaluator
            .deferred_owners()
            .iter()
            .map(|(_, position)| *position)
            .min();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.barriers)
            .into_iter()
            .partition(|(target, _)| behind.is_none_or(|p| p >= *target));
        self.barriers = waiting;
        for (_, reply) in done {
            let _ = reply.send(());
        }
    }

    /// Publishes the deferred owners for the rules API.
    fn show_throttled(&self) {
        let now: HashSet<String> = self
            .evaluator
            .deferred_owners()
            .into_iter()
            .map(|(owner, _)| owner)
            .collect();
        if let Ok(mut shown) = self.throttled.write()
            && *shown != now
        {
            for owner in now.difference(&shown) {
                info!(message = "Owner out of engine time; their events wait (throttled).", %owner);
            }
            *shown = now;
        }
    }

    /// When silences have ended since the last look, notifies the firing alerts they held back.
    fn release_silences(&mut self) {
        let now = self.parts.clock.now();
        let Some(end) = self.dispatch.next_silence_end(self.silences_checked) else {
            self.silences_checked = now;
            return;
        };
        if end > now {
            return;
        }
        let filter = crate::store::AlertFilter {
            status: Some(Status::Firing),
            limit: i64::MAX,
            ..Default::default()
        };
        let firing = match self.block_on(self.parts.store.list_alerts(&filter)) {
            Ok(a) => a,
            Err(e) => {
                error!(message = "Failed to read firing alerts for an ended silence; trying again.", error = %format!("{e:#}"));
                return;
            }
        };
        let candidates: Vec<String> = firing
            .iter()
            .filter(|a| self.dispatch.released(a, self.silences_checked, now))
            .map(|a| a.id.clone())
            .collect();
        // Only what a silence actually held back: an alert notified before the silence and
        // quiet since is not told again.
        let held = match self.block_on(self.parts.outbox.held_back(&candidates)) {
            Ok(h) => h,
            Err(e) => {
                error!(message = "Failed to read silenced deliveries; trying again.", error = %format!("{e:#}"));
                return;
            }
        };
        let renotify: Vec<(String, i64)> = held.into_iter().map(|id| (id, now)).collect();
        self.silences_checked = now;
        if !renotify.is_empty() {
            self.commit(EngineCommit {
                renotify,
                ..Default::default()
            });
        }
        // Remembered, so a silence that ends while the server is down is released at start.
        if let Err(e) = self.block_on(self.parts.outbox.put_setting(
            "silences_checked",
            &serde_json::json!(now),
            now,
        )) {
            warn!(message = "Failed to record released silences.", error = %format!("{e:#}"));
        }
    }

    fn handle(&mut self, command: Command) {
        let now = self.parts.clock.now();
        match command {
            Command::PutRule {
                owner,
                doc,
                origin,
                reply,
            } => {
                let result = self.put_rule(&owner, doc, &origin, now);
                let _ = reply.send(result);
            }
            Command::DeleteRule { owner, name, reply } => {
                let existed = self
                    .block_on(self.parts.store.get_rule(&owner, &name))
                    .ok()
                    .flatten()
                    .is_some();
                if existed {
                    self.evaluator.remove(&owner, &name, now);
                    self.commit_pending(
                        None,
                        vec![RuleWrite::Delete {
                            owner: owner.clone(),
                            name: name.clone(),
                        }],
                    );
                    self.dispatch.set_rule_notify(&owner, &name, &[]);
                }
                let _ = reply.send(existed);
            }
            Command::Resolve { alert, reply } if alert.owner == SYSTEM_OWNER => {
                let _ = reply.send(self.clear_system(&alert, ResolveReason::Manual, now));
            }
            Command::Resolve { alert, reply } => {
                let done = self.evaluator.resolve_by_hand(&alert, now);
                self.commit_pending(None, Vec::new());
                let _ = reply.send(done);
            }
            Command::SetAdmin { user, admin } => self.evaluator.access.set_admin(&user, admin),
            Command::Ack { alert, by, reply } => {
                let open = if alert.owner == SYSTEM_OWNER {
                    self.system_slot(&alert).is_some()
                } else {
                    self.evaluator.is_open(&alert)
                };
                if !open {
                    let _ = reply.send(None);
                    return;
                }
                self.evaluator.acknowledge(&alert);
                let committed = self.commit_with(
                    None,
                    Vec::new(),
                    vec![Ack {
                        alert: alert.clone(),
                        by,
                        at: now,
                    }],
                );
                let _ = reply.send(committed.alerts.into_iter().find(|a| a.id == alert.id));
            }
            Command::NotifySettingsChanged(reply) => {
                let (store, outbox) = (self.parts.store.clone(), self.parts.outbox.clone());
                if let Err(e) = self
                    .runtime
                    .block_on(self.dispatch.reload(store.as_ref(), outbox.as_ref()))
                {
                    error!(message = "Failed to reload notification settings.", error = %format!("{e:#}"));
                }
                let _ = reply.send(());
            }
            Command::System { rule, key, raise } => match raise {
                Some(content) => self.raise_system(rule, key, content, now),
                None => {
                    let open = self.system.get(&(rule.to_owned(), key)).cloned();
                    if let Some(alert) = open {
                        self.clear_system(&alert, ResolveReason::Condition, now);
                    }
                }
            },
            Command::Tick => self.evaluator.advance(now),
            Command::Barrier(reply) => {
                self.evaluator.advance(now);
                self.commit_pending(None, Vec::new());
                self.release_silences();
                // Everything sent before it includes deferred owners' events: it is answered
                // once they have caught up that far.
                self.barriers.push((self.checkpoint, reply));
                self.answer_barriers();
            }
            Command::Events { .. } | Command::Shutdown => {}
        }
    }

    /// Opens a system alert unless one is open for (rule, key).
    fn raise_system(&mut self, rule: &str, key: String, content: Content, now: i64) {
        let slot = (rule.to_owned(), key);
        if self.system.contains_key(&slot) {
            return;
        }
        let alert = AlertKey {
            id: uuid::Uuid::now_v7().to_string(),
            owner: SYSTEM_OWNER.to_owned(),
            rule: slot.0.clone(),
            key: slot.1.clone(),
        };
        warn!(message = "System alert raised.", rule = %alert.rule, key = %alert.key, summary = %content.summary);
        self.system.insert(slot, alert.clone());
        self.commit_system(Change::Open {
            alert,
            status: Status::Firing,
            at: now,
            event_time: now,
            content,
        });
    }

    /// The system alert a person (or a watcher) refers to, if it is that very open alert.
    fn system_slot(&self, alert: &AlertKey) -> Option<(String, String)> {
        let slot = (alert.rule.clone(), alert.key.clone());
        self.system
            .get(&slot)
            .is_some_and(|open| open.id == alert.id)
            .then_some(slot)
    }

    /// Resolves an open system alert; returns whether it was open.
    fn clear_system(&mut self, alert: &AlertKey, reason: ResolveReason, now: i64) -> bool {
        let Some(slot) = self.system_slot(alert) else {
            return false;
        };
        self.system.remove(&slot);
        info!(message = "System alert resolved.", rule = %alert.rule, key = %alert.key);
        self.commit_system(Change::Resolve {
            alert: alert.clone(),
            at: now,
            reason,
            summary: None,
        });
        true
    }

    fn commit_system(&mut self, change: Change) {
        let committed = self.commit(EngineCommit {
            changes: vec![change],
            ..EngineCommit::default()
        });
        for alert in committed.alerts {
            let _ = self.parts.alerts.send(alert);
        }
    }

    fn put_rule(
        &mut self,
        owner: &str,
        doc: RuleDoc,
        origin: &str,
        now: i64,
    ) -> Result<(), RuleError> {
        // Only an instance needs the templates; reading every rule for each save would make
        // loading many rules quadratic.
        let rules = match &doc {
            RuleDoc::Instance(_) => self.block_on(self.parts.store.list_rules(None)).map_err(
                |e| {
                    error!(message = "Failed to read the templates.", error = %format!("{e:#}"));
                    RuleError::new(None, "the rule could not be saved; try again")
                },
            )?,
            _ => Vec::new(),
        };
        let templates = template_table(&rules, &self.evaluator.access);
        let spec = resolve_doc(&doc, owner, &|o, n| lookup_template(&templates, o, n))?;
        let name = doc.name().to_owned();
        match spec {
            Some(spec) => {
                check_topic_access(&self.evaluator, owner, &spec)?;
                let notify = spec.notify.clone();
                self.evaluator.upsert(owner, spec, now)?;
                // Only once the rule is accepted, and before the commit: disabling a rule
                // notifies its `notify:` channels.
                self.dispatch.set_rule_notify(owner, &name, &notify);
            }
            // A rule may be replaced by a template of the same name: the rule goes.
            None => {
                self.evaluator.remove(owner, &name, now);
                self.dispatch.set_rule_notify(owner, &name, &[]);
            }
        }
        self.commit_pending(
            None,
            vec![RuleWrite::Put {
                owner: owner.to_owned(),
                name,
                doc: doc.to_json(),
                origin: origin.to_owned(),
                at: now,
            }],
        );
        Ok(())
    }

    /// Evaluates events strictly in the log's order. A batch from the channel is the fast path
    /// when it continues exactly after the checkpoint; when it does not (a script's emitted
    /// events took seqs in between) or when a commit emitted events, the engine reads the log
    /// from the store instead, so no event is skipped or evaluated twice.
    fn evaluate(&mut self, events: Vec<StoredEvent>) {
        let mut pending: Vec<StoredEvent> = events
            .into_iter()
            .filter(|e| e.seq > self.checkpoint)
            .collect();
        pending.sort_by_key(|e| e.seq);
        while !pending.is_empty() {
            let next = self.checkpoint + 1;
            let contiguous = pending
                .iter()
                .enumerate()
                .take_while(|(i, e)| e.seq == next + *i as i64)
                .count();
            let emitted = if contiguous == 0 {
                self.catch_up();
                false
            } else {
                let rest = pending.split_off(contiguous);
                self.evaluate_chunk(std::mem::replace(&mut pending, rest))
            };
            if emitted {
                self.catch_up();
            }
            pending.retain(|e| e.seq > self.checkpoint);
        }
    }

    /// Evaluates everything in the log after the checkpoint. Returns how many events.
    fn catch_up(&mut self) -> usize {
        let mut total = 0;
        let mut delay = Duration::from_millis(50);
        loop {
            match self.block_on(self.parts.store.events_after(self.checkpoint, REPLAY_CHUNK)) {
                Ok(events) if events.is_empty() => return total,
                Ok(events) => {
                    total += events.len();
                    self.evaluate_chunk(events);
                }
                Err(e) => {
                    error!(message = "Failed to read the event log; retrying.", error = %format!("{e:#}"));
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Evaluates events that follow the checkpoint in order and commits them as one batch.
    /// Returns whether the batch's scripts emitted events (now in the log, after it).
    fn evaluate_chunk(&mut self, events: Vec<StoredEvent>) -> bool {
        let last = events.last().map(|e| e.seq);
        let count = events.len() as u64;
        let _span = tracing::debug_span!(
            "evaluate",
            first_seq = events.first().map(|e| e.seq),
            last_seq = last,
            events = count
        )
        .entered();
        // The batch is ours: each event moves into the evaluator's form without a copy.
        for stored in events {
            let (event, hops, received) = stored.event.into_event();
            self.evaluator
                .on_logged_event(stored.seq, &event, hops, received);
        }
        let committed = self.commit_pending(last, Vec::new());
        self.parts.metrics.events_evaluated.inc_by(count);
        committed.emitted
    }

    /// Commits what the evaluator decided, with the checkpoint and rule writes given.
    fn commit_pending(&mut self, checkpoint: Option<i64>, rules: Vec<RuleWrite>) -> Committed {
        self.commit_with(checkpoint, rules, Vec::new())
    }

    /// Commits what the evaluator decided, with the checkpoint, rule writes and acks given.
    fn commit_with(
        &mut self,
        checkpoint: Option<i64>,
        rules: Vec<RuleWrite>,
        acks: Vec<Ack>,
    ) -> Committed {
        let outcome = self.evaluator.drain();
        let states = self.evaluator.take_dirty();
        let deferrals = self.evaluator.take_deferrals();
        let metrics = self.parts.metrics.clone();
        metrics.rule_evaluations.inc_by(outcome.evaluations);
        for failure in &outcome.failures {
            metrics
                .rule_errors
                .get_or_create(&RuleLabel {
                    rule: failure.rule.clone(),
                })
                .inc();
        }
        let now = self.parts.clock.now();
        let mut emitted: Vec<EventBatch> = Vec::new();
        for (owner, e, hops) in outcome.emitted {
            // A source first seen here belongs to the owner of the rule that emitted it.
            if self.evaluator.access.set_source_if_new(&e.source, &owner) {
                self.parts.owners.claim(&e.source, &owner);
            }
            let event = NewEvent {
                source: e.source,
                time: e.time,
                received: now,
                hops,
                data: e.data,
            };
            match emitted.last_mut() {
                Some(batch) if batch.owner == owner => batch.events.push(event),
                _ => emitted.push(EventBatch {
                    owner,
                    events: vec![event],
                }),
            }
        }
        if outcome.changes.is_empty()
            && states.is_empty()
            && outcome.status.is_empty()
            && emitted.is_empty()
            && rules.is_empty()
            && acks.is_empty()
            && deferrals.is_empty()
            && checkpoint.is_none_or(|c| c <= self.checkpoint)
        {
            return Committed::default();
        }
        let deferrals_changed = !deferrals.is_empty();
        for (owner, rule, error) in &outcome.status {
            match error {
                Some(error) => {
                    warn!(message = "Rule failed; marked `error`.", %owner, %rule, %error)
                }
                None => info!(message = "Rule healthy again.", %owner, %rule),
            }
        }
        let committed = self.commit(EngineCommit {
            checkpoint,
            changes: outcome.changes,
            states,
            rule_status: outcome.status,
            emitted,
            rules,
            acks,
            renotify: Vec::new(),
            deferrals,
        });
        if deferrals_changed {
            self.show_throttled();
        }
        if let Some(c) = checkpoint {
            self.checkpoint = self.checkpoint.max(c);
        }
        for alert in &committed.alerts {
            tracing::debug!(message = "Alert changed.", alert_id = %alert.id, rule = %alert.rule, key = %alert.key, status = %alert.status);
            // Nobody listening is fine: the stream is for whoever is connected now.
            let _ = self.parts.alerts.send(alert.clone());
        }
        committed
    }

    /// Commits, retrying while the database refuses (locked, full, gone): the engine must not
    /// move past a batch it could not record. The deliveries the batch causes are planned
    /// before its transaction begins and written in it (see `try_commit`).
    fn commit(&mut self, commit: EngineCommit) -> Committed {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.try_commit(&commit) {
                Ok(done) => {
                    self.count_fired(&commit.changes, &done.alerts);
                    return done;
                }
                Err(e) => {
                    error!(message = "Failed to commit an engine batch; retrying.", error = %format!("{e:#}"));
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Counts every alert a committed batch made fire, whatever caused it: an event, a `for`
    /// that ran out on a timer (`Fire`), a heartbeat that stopped, a system condition.
    fn count_fired(&self, changes: &[Change], alerts: &[Alert]) {
        for change in changes {
            let (alert, source) = match change {
                Change::Open {
                    alert,
                    status: Status::Firing,
                    content,
                    ..
                } => (alert, content.source.clone()),
                // Fired later than it opened: its source is the committed alert's.
                Change::Fire { alert, .. } => (
                    alert,
                    alerts
                        .iter()
                        .find(|a| a.id == alert.id)
                        .map(|a| a.content.source.clone())
                        .unwrap_or_default(),
                ),
                _ => continue,
            };
            self.parts
                .metrics
                .alerts_fired
                .get_or_create(&RuleSourceLabel {
                    rule: alert.rule.clone(),
                    source,
                })
                .inc();
        }
    }

    /// Folds the batch into its alerts and plans its deliveries (running subscriptions' `when`
    /// JavaScript) before the write turn is taken; the transaction then only writes, the
    /// deliveries with the changes that cause them.
    fn try_commit(&mut self, commit: &EngineCommit) -> Result<Committed> {
        let store = self.parts.store.clone();
        loop {
            let before = self.block_on(store.alerts_by_id(&stored_ids(commit)))?;
            let folded = Folded::of(commit, before);
            let transitions = folded.transitions();
            // Only a silenced resolve needs to know who heard of the fire (see `Dispatcher::plan`).
            let closing: Vec<String> = transitions
                .iter()
                .filter(|t| {
                    matches!(t.trigger, Trigger::Resolve | Trigger::Disable)
                        && self.dispatch.silenced(t.alert, t.at)
                })
                .map(|t| t.alert.id.clone())
                .collect();
            let told = if closing.is_empty() {
                crate::store::Told::new()
            } else {
                self.block_on(store.told_of_fire(&closing))?
            };
            let deliveries = self
                .dispatch
                .plan(&transitions, self.parts.clock.now(), &told);
            let mut tx = self.block_on(store.begin_engine())?;
            // The delivery worker (or a retry by hand) may have moved one of those deliveries
            // since: then plan again with what holds in the transaction's snapshot.
            if !closing.is_empty() && self.block_on(tx.told_of_fire(&closing))? != told {
                continue;
            }
            self.block_on(tx.apply(commit, &folded.writes))?;
            if !deliveries.is_empty() {
                self.block_on(tx.add_deliveries(&deliveries))?;
            }
            self.block_on(tx.finish())?;
            if deliveries
                .iter()
                .any(|d| d.status == "pending" || d.status == "held")
            {
                self.parts.wake.notify_one();
            }
            return Ok(Committed {
                alerts: folded.changed(),
                emitted: !commit.emitted.is_empty(),
            });
        }
    }
}

/// What a commit changed: the alerts after it (for the live stream), and whether it stored
/// events emitted by scripts (which the engine then reads from the log).
#[derive(Debug, Default)]
pub struct Committed {
    pub alerts: Vec<Alert>,
    pub emitted: bool,
}

/// The stored alerts a batch names: all but those it opens.
fn stored_ids(commit: &EngineCommit) -> Vec<String> {
    let opened: HashSet<&str> = commit
        .changes
        .iter()
        .filter(|c| matches!(c, Change::Open { .. }))
        .map(|c| c.alert().id.as_str())
        .collect();
    let mut ids: Vec<String> = commit
        .changes
        .iter()
        .map(|c| c.alert().id.as_str())
        .chain(commit.acks.iter().map(|a| a.alert.id.as_str()))
        .chain(commit.renotify.iter().map(|(id, _)| id.as_str()))
        .filter(|id| !opened.contains(id))
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// A batch folded into its alerts ([`Alert::apply`]), before anything is written.
struct Folded {
    /// Every alert the batch names, as it is after it (`None`: discarded, or not there).
    after: HashMap<String, Option<Alert>>,
    /// The notifications the batch calls for, in order: trigger, alert id, when.
    triggers: Vec<(Trigger, String, i64)>,
    /// The alerts it changed.
    touched: HashSet<String>,
    writes: AlertWrites,
}

impl Folded {
    fn of(commit: &EngineCommit, before: Vec<Alert>) -> Folded {
        let stored: HashMap<String, Alert> =
            before.into_iter().map(|a| (a.id.clone(), a)).collect();
        let mut after: HashMap<String, Option<Alert>> = stored
            .iter()
            .map(|(id, a)| (id.clone(), Some(a.clone())))
            .collect();
        let mut triggers = Vec::new();
        let mut touched = HashSet::new();
        let mut history = Vec::new();
        let mut took = |key: &AlertKey, at: i64, effect: Effect| {
            touched.insert(key.id.clone());
            if let Some(trigger) = effect.trigger {
                triggers.push((trigger, key.id.clone(), at));
            }
            if let Some((status, message)) = effect.history {
                history.push(HistoryEntry {
                    alert_id: key.id.clone(),
                    owner: key.owner.clone(),
                    rule: key.rule.clone(),
                    at,
                    status: status.to_owned(),
                    message,
                });
            }
        };
        for change in &commit.changes {
            let key = change.alert();
            let alert = after.entry(key.id.clone()).or_default();
            if let Some(effect) = Alert::apply(alert, change) {
                took(key, change.at(), effect);
            }
        }
        for ack in &commit.acks {
            let acked = after
                .get_mut(&ack.alert.id)
                .and_then(Option::as_mut)
                .and_then(|a| a.acknowledge(&ack.by, ack.at));
            if let Some(effect) = acked {
                took(&ack.alert, ack.at, effect);
            }
        }
        for (id, at) in &commit.renotify {
            touched.insert(id.clone());
            if after
                .get(id)
                .is_some_and(|a| a.as_ref().is_some_and(|a| a.status == Status::Firing))
            {
                triggers.push((Trigger::Fire, id.clone(), *at));
            }
        }
        let mut writes = AlertWrites::default();
        for (id, alert) in &after {
            match (stored.get(id), alert) {
                (None, Some(a)) => writes.insert.push(a.clone()),
                (Some(was), Some(a)) if was != a => writes.update.push(a.clone()),
                (Some(_), None) => writes.delete.push(id.clone()),
                _ => {}
            }
        }
        writes.insert.sort_by(|a, b| a.id.cmp(&b.id));
        writes.update.sort_by(|a, b| a.id.cmp(&b.id));
        writes.delete.sort();
        // A line of an alert that is gone would outlive it.
        history.retain(|h| after.get(&h.alert_id).is_some_and(Option::is_some));
        writes.history = history;
        Folded {
            after,
            triggers,
            touched,
            writes,
        }
    }

    /// The alert `id` is after the batch.
    fn alert(&self, id: &str) -> Option<&Alert> {
        self.after.get(id).and_then(Option::as_ref)
    }

    /// The notifiable changes, each with its alert as it is after the batch.
    fn transitions(&self) -> Vec<Transition<'_>> {
        self.triggers
            .iter()
            .filter_map(|(trigger, id, at)| {
                self.alert(id).map(|alert| Transition {
                    trigger: *trigger,
                    alert,
                    at: *at,
                })
            })
            .collect()
    }

    /// The alerts the batch changed and kept, as they are after it, by id.
    fn changed(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self
            .touched
            .iter()
            .filter_map(|id| self.alert(id).cloned())
            .collect();
        alerts.sort_by(|a, b| a.id.cmp(&b.id));
        alerts
    }
}

/// A rule may read `_topic['X']` and events of `source` only where its owner may read X.
fn check_topic_access(
    evaluator: &Evaluator,
    owner: &str,
    spec: &RuleSpec,
) -> Result<(), RuleError> {
    if let Some(source) = &spec.source
        && !source.contains(['*', '?', '[', '{'])
        && !evaluator.access.can_read(owner, source)
    {
        return Err(RuleError::new(
            Some("source"),
            format!("you may not read the source `{source}`"),
        ));
    }
    for (field, src) in spec.scripts() {
        for topic in tellify_core::index::topic_references(src) {
            if !evaluator.access.can_read(owner, &topic) {
                return Err(RuleError::new(
                    Some(field),
                    format!("you may not read the source `{topic}` through _topic"),
                ));
            }
        }
    }
    Ok(())
}

/// Templates by (owner, name), each with whether its owner is an admin (shared templates).
type TemplateTable = HashMap<(String, String), (rule::Template, bool)>;

fn template_table(rules: &[StoredRule], access: &tellify_core::access::Access) -> TemplateTable {
    rules
        .iter()
        .filter_map(|r| match rule::parse_doc(r.doc.clone()) {
            Ok(RuleDoc::Template(t)) => Some((
                (r.owner.clone(), r.name.clone()),
                (t, access.is_admin(&r.owner)),
            )),
            _ => None,
        })
        .collect()
}

/// The owner's own template by that name, else an admin's (admins' templates are shared).
fn lookup_template(table: &TemplateTable, owner: &str, name: &str) -> Option<rule::Template> {
    table
        .get(&(owner.to_owned(), name.to_owned()))
        .or_else(|| {
            table
                .iter()
                .find(|((_, n), (_, shared))| n == name && *shared)
                .map(|(_, t)| t)
        })
        .map(|(t, _)| t.clone())
}

/// The JSON documents of stored rules, keyed by name, for `rules export`.
pub fn docs(rules: &[StoredRule]) -> Vec<Value> {
    rules.iter().map(|r| r.doc.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> AlertKey {
        AlertKey {
            id: id.into(),
            owner: "ann".into(),
            rule: "disk".into(),
            key: format!("host-{id}"),
        }
    }

    fn open(id: &str, status: Status, at: i64) -> Change {
        Change::Open {
            alert: key(id),
            status,
            at,
            event_time: at,
            content: Content {
                summary: format!("{id} opened"),
                ..Content::default()
            },
        }
    }

    /// `id` as stored after opening at `at` with `status`.
    fn stored(id: &str, status: Status, at: i64) -> Alert {
        let mut alert = None;
        Alert::apply(&mut alert, &open(id, status, at));
        alert.expect("opened")
    }

    #[test]
    fn a_batch_writes_each_alert_once_as_its_changes_leave_it() {
        let commit = EngineCommit {
            changes: vec![
                // Opened, folded and resolved in one batch: one insert, as it ends.
                open("a", Status::Firing, 10),
                Change::Fold {
                    alert: key("a"),
                    at: 11,
                    event_time: 11,
                    value: Some(5.0),
                    summary: Some("a at 5".into()),
                },
                Change::Resolve {
                    alert: key("a"),
                    at: 12,
                    reason: ResolveReason::Condition,
                    summary: None,
                },
                // Stored pending and discarded: deleted, no history.
                Change::Discard {
                    alert: key("p"),
                    at: 13,
                },
                // Opened and discarded in one batch: nothing written.
                open("q", Status::Pending, 14),
                Change::Discard {
                    alert: key("q"),
                    at: 15,
                },
                // Repeated: notified, not written.
                Change::Repeat {
                    alert: key("r"),
                    at: 16,
                },
            ],
            acks: vec![Ack {
                alert: key("k"),
                by: "bob".into(),
                at: 17,
            }],
            renotify: vec![("k".into(), 18), ("p".into(), 18)],
            ..EngineCommit::default()
        };
        assert_eq!(stored_ids(&commit), ["k", "p", "r"]);
        let before = vec![
            stored("p", Status::Pending, 1),
            stored("r", Status::Firing, 2),
            stored("k", Status::Firing, 3),
        ];
        let folded = Folded::of(&commit, before);

        let writes = &folded.writes;
        assert_eq!(writes.insert.len(), 1);
        let a = &writes.insert[0];
        assert_eq!(
            (a.id.as_str(), a.status, a.count),
            ("a", Status::Resolved, 2)
        );
        assert_eq!(
            (a.content.summary.as_str(), a.content.value),
            ("a at 5", Some(5.0))
        );
        assert_eq!(writes.delete, ["p"]);
        assert_eq!(writes.update.len(), 1);
        let k = &writes.update[0];
        assert_eq!((k.id.as_str(), k.acked_by.as_deref()), ("k", Some("bob")));
        let history: Vec<(&str, &str, &str)> = writes
            .history
            .iter()
            .map(|h| (h.alert_id.as_str(), h.status.as_str(), h.message.as_str()))
            .collect();
        assert_eq!(
            history,
            [
                ("a", "firing", "a opened"),
                ("a", "resolved", "condition no longer holds"),
                ("k", "acked", "acknowledged by bob"),
            ]
        );

        let told: Vec<(Trigger, &str, i64)> = folded
            .transitions()
            .iter()
            .map(|t| (t.trigger, t.alert.id.as_str(), t.at))
            .collect();
        assert_eq!(
            told,
            [
                (Trigger::Fire, "a", 10),
                (Trigger::Resolve, "a", 12),
                (Trigger::Repeat, "r", 16),
                (Trigger::Ack, "k", 17),
                (Trigger::Fire, "k", 18),
            ]
        );
        let changed: Vec<String> = folded.changed().into_iter().map(|a| a.id).collect();
        assert_eq!(changed, ["a", "k", "r"]);
    }
}
