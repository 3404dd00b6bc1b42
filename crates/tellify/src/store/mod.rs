//! ③ State: everything Tellify must not forget, behind one [`Store`] trait.
//!
//! The store is the only place that remembers. Two writers use it in a fixed way: the ingest
//! writer appends events (the only thing a `202` promises), and the engine commits each
//! batch's alert changes, rule state and checkpoint in one transaction ([`EngineCommit`]), so a
//! crash between them is repaired by replaying events after the checkpoint.
//!
//! `sqlite.rs` is the embedded default. The trait is written so that a PostgreSQL
//! implementation runs the same tests.

pub mod health;
pub mod sqlite;
pub mod sqlite_outbox;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;
use tellify_core::alert::{Change, Severity, Status};
use tellify_core::eval::StateUpdate;

/// A user account.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct User {
    pub name: String,
    pub email: Option<String>,
    /// `admin` or `user`.
    pub role: String,
    pub timezone: String,
    #[serde(skip)]
    pub password_hash: Option<String>,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }
}

/// An API token's public face: never the token itself.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub name: String,
    /// `api` (everything the user may) or `metrics` (only `/metrics`).
    pub scope: crate::auth::TokenScope,
    pub created_at: i64,
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub source: String,
    pub time: i64,
    pub received: i64,
    pub hops: u8,
    pub data: Value,
}

impl NewEvent {
    /// The event as the evaluator takes it (moved, not copied), with its hops and arrival time.
    pub fn into_event(self) -> (tellify_core::event::Event, u8, i64) {
        let event = tellify_core::event::Event {
            source: self.source,
            time: self.time,
            data: self.data,
        };
        (event, self.hops, self.received)
    }
}

/// Events one user sends together.
#[derive(Debug, Clone)]
pub struct EventBatch {
    pub owner: String,
    pub events: Vec<NewEvent>,
}

/// An event as stored, with its place in the log.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub event: NewEvent,
}

/// A source: who owns it, who may read it, and its latest event (topic data).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SourceInfo {
    pub name: String,
    pub owner: String,
    pub visibility: String,
    pub events: i64,
    pub last_time: Option<i64>,
    pub last_event: Option<Value>,
}

/// A rule as stored: its document and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRule {
    pub owner: String,
    pub name: String,
    pub doc: Value,
    /// `api`, or `file:PATH` for rules loaded from `--rules`.
    pub origin: String,
    pub error: Option<String>,
    pub updated_at: i64,
}

/// One entry in an alert's history: a transition and its message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub alert_id: String,
    pub owner: String,
    pub rule: String,
    pub at: i64,
    pub status: String,
    pub message: String,
}

/// Filters of `GET /api/v1/alerts`.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// `None` for admins: every owner.
    pub owner: Option<String>,
    pub status: Option<Status>,
    pub rule: Option<String>,
    pub severity: Option<Severity>,
    pub labels: Vec<(String, String)>,
    pub limit: i64,
    /// Alerts with ids before this one (ids sort by creation time).
    pub before: Option<String>,
}

/// A column alerts may be counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatField {
    Source,
    Run,
    Rule,
    Severity,
    Status,
}

impl StatField {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "source" => Self::Source,
            "run" => Self::Run,
            "rule" => Self::Rule,
            "severity" => Self::Severity,
            "status" => Self::Status,
            _ => return None,
        })
    }

    pub fn column(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Run => "run",
            Self::Rule => "rule",
            Self::Severity => "severity",
            Self::Status => "status",
        }
    }
}

/// Filters of `GET /api/v1/history`.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub owner: Option<String>,
    pub rule: Option<String>,
    pub alert_id: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub limit: i64,
}

/// What the engine restores at start.
#[derive(Debug, Default)]
pub struct EngineSnapshot {
    pub checkpoint: i64,
    pub states: Vec<(String, String, String, Value)>,
    /// Owners whose evaluation lags behind the checkpoint (their time share ran out).
    pub deferred: Vec<(String, tellify_core::eval::Deferred)>,
}

/// An open alert as the engine restores it.
#[derive(Debug, Clone)]
pub struct OpenAlert {
    pub alert: tellify_core::alert::AlertKey,
    pub status: Status,
    pub fired_at: Option<i64>,
    pub acked: bool,
}

/// One engine batch, committed atomically.
#[derive(Debug, Default, Clone)]
pub struct EngineCommit {
    /// The last event seq this batch evaluated.
    pub checkpoint: Option<i64>,
    pub changes: Vec<Change>,
    pub states: Vec<StateUpdate>,
    /// Rules whose error status changed: (owner, rule, error).
    pub rule_status: Vec<(String, String, Option<String>)>,
    /// Events emitted by scripts (owned by the rule's owner), stored with the batch that made them.
    pub emitted: Vec<EventBatch>,
    /// Rule documents to write with this batch (a rule saved through the engine).
    pub rules: Vec<RuleWrite>,
    /// Acknowledgements by people.
    pub acks: Vec<Ack>,
    /// Firing alerts to notify again, with when (a silence over them ended).
    pub renotify: Vec<(String, i64)>,
    /// Owners deferred or caught up by this batch (`None`: caught up), with where they are.
    pub deferrals: Vec<(String, Option<tellify_core::eval::Deferred>)>,
}

/// A person acknowledged an alert.
#[derive(Debug, Clone)]
pub struct Ack {
    pub alert: tellify_core::alert::AlertKey,
    pub by: String,
    pub at: i64,
}

/// (alert id, channel owner, channel) that were told an alert fired.
pub type Told = std::collections::HashSet<(String, String, String)>;

/// What an engine batch does to alert rows, as the fold ([`tellify_core::alert::Alert::apply`])
/// made them before the transaction opened: the store writes these, it decides nothing.
#[derive(Debug, Default, Clone)]
pub struct AlertWrites {
    /// Alerts the batch opened (and kept), as they are after it.
    pub insert: Vec<tellify_core::alert::Alert>,
    /// Alerts there before that the batch changed, as they are after it.
    pub update: Vec<tellify_core::alert::Alert>,
    /// Alerts there before that the batch discarded: they go with their history.
    pub delete: Vec<String>,
    /// The history lines of kept alerts, in the order of the changes.
    pub history: Vec<HistoryEntry>,
}

/// One engine batch inside one store transaction: apply the batch, add the deliveries it
/// causes, then finish. Dropping it without `finish` rolls everything back. Everything that
/// decides (the fold, the dispatcher's JavaScript) has run before it begins: it holds the
/// write turn only to write.
#[async_trait::async_trait]
pub trait EngineTx: Send {
    /// Writes the batch, with the alert rows the fold made of it.
    async fn apply(&mut self, commit: &EngineCommit, alerts: &AlertWrites) -> Result<()>;
    async fn add_deliveries(&mut self, deliveries: &[NewDelivery]) -> Result<()>;
    /// Of these alerts, the (alert id, channel owner, channel) that were sent a fire or repeat.
    async fn told_of_fire(&mut self, alert_ids: &[String]) -> Result<Told>;
    async fn finish(self: Box<Self>) -> Result<()>;
}

/// A rule write carried by an engine commit.
#[derive(Debug, Clone)]
pub enum RuleWrite {
    Put {
        owner: String,
        name: String,
        doc: Value,
        origin: String,
        at: i64,
    },
    Delete {
        owner: String,
        name: String,
    },
}

/// An audit log entry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub detail: Option<String>,
}

/// Everything Tellify persists. One implementation per database.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    // Users and tokens.
    async fn user_count(&self) -> Result<i64>;
    async fn create_user(&self, user: &User, now: i64) -> Result<bool>;
    async fn get_user(&self, name: &str) -> Result<Option<User>>;
    async fn list_users(&self) -> Result<Vec<User>>;
    async fn create_token(
        &self,
        user: &str,
        name: &str,
        hash: &str,
        scope: crate::auth::TokenScope,
        now: i64,
    ) -> Result<TokenInfo>;
    /// The user a token hash belongs to, and what the token may do.
    async fn user_by_token(&self, hash: &str) -> Result<Option<(User, crate::auth::TokenScope)>>;
    async fn list_tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>>;
    async fn delete_token(&self, id: &str, user: Option<&str>) -> Result<bool>;

    // Events and sources.
    /// Appends the batches' events in one durable transaction, in order, and updates each
    /// source's topic data; a source seen for the first time is claimed by its batch's owner.
    /// Returns the events' seqs in order.
    async fn append_events(&self, batches: &[EventBatch]) -> Result<Vec<i64>>;
    /// Counts of open alerts by status and severity, for `/metrics`.
    async fn open_counts(&self) -> Result<Vec<(String, String, i64)>>;
    async fn events_after(&self, seq: i64, limit: i64) -> Result<Vec<StoredEvent>>;
    async fn sources(&self) -> Result<Vec<SourceInfo>>;
    async fn source(&self, name: &str) -> Result<Option<SourceInfo>>;
    /// Removes events received before `before` that the engine has evaluated.
    async fn prune_events(&self, before: i64) -> Result<u64>;
    /// Removes alerts resolved before `before`, with their history.
    async fn prune_alerts(&self, before: i64) -> Result<u64>;

    // Rules.
    async fn list_rules(&self, owner: Option<&str>) -> Result<Vec<StoredRule>>;
    async fn get_rule(&self, owner: &str, name: &str) -> Result<Option<StoredRule>>;

    // The engine.
    async fn load_engine(&self) -> Result<EngineSnapshot>;
    /// The open alerts after `after` (by owner, rule, key), `limit` at a time: only which they
    /// are and what repeats need. Read in pages because a whole read of many alerts at once
    /// left its peak in the allocators (SQLite's copies of every row, then the list).
    async fn open_alerts(
        &self,
        after: Option<&tellify_core::alert::AlertKey>,
        limit: i64,
    ) -> Result<Vec<OpenAlert>>;
    /// These alerts, as stored (the engine folds a batch's changes into them).
    async fn alerts_by_id(&self, ids: &[String]) -> Result<Vec<tellify_core::alert::Alert>>;
    /// Of these alerts, the (alert id, channel owner, channel) that were sent a fire or repeat,
    /// read before an engine batch's transaction; [`EngineTx::told_of_fire`] checks it inside.
    async fn told_of_fire(&self, alert_ids: &[String]) -> Result<Told>;
    /// Starts an engine batch's transaction.
    async fn begin_engine(&self) -> Result<Box<dyn EngineTx>>;

    // Alerts.
    async fn list_alerts(&self, filter: &AlertFilter) -> Result<Vec<tellify_core::alert::Alert>>;
    async fn get_alert(&self, id: &str) -> Result<Option<tellify_core::alert::Alert>>;
    async fn history(&self, filter: &HistoryFilter) -> Result<Vec<HistoryEntry>>;
    /// Alert counts grouped by some of `source`, `run`, `rule`, `severity`, `status`.
    async fn alert_stats(
        &self,
        owner: Option<&str>,
        group_by: &[StatField],
    ) -> Result<Vec<(Vec<Option<String>>, i64)>>;

    // Audit.
    async fn audit(
        &self,
        actor: &str,
        action: &str,
        object: &str,
        detail: Option<&str>,
        at: i64,
    ) -> Result<()>;
    async fn list_audit(&self, limit: i64) -> Result<Vec<AuditEntry>>;

    /// Whether the database answers.
    async fn ping(&self) -> Result<()>;

    /// What the writers last found: failing (and why) or taking writes.
    fn health(&self) -> &health::StorageHealth;

    /// Tries the smallest durable write, in the write turn like every writer; its outcome
    /// goes to [`Store::health`]. The storage watcher calls it while the store is failing.
    async fn probe_write(&self) -> Result<()>;
}

/// A notification to send, as the dispatcher plans it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewDelivery {
    pub id: String,
    pub alert_id: String,
    /// The subscription's owner.
    pub owner: String,
    pub subscription_id: Option<String>,
    pub channel_owner: String,
    pub channel: String,
    pub channel_kind: String,
    pub trigger: tellify_core::subscription::Trigger,
    pub format: Option<String>,
    /// pending, held (a digest), silenced, or dead (e.g. its channel does not exist).
    pub status: String,
    pub next_attempt_at: i64,
    pub digest: Option<String>,
    /// When the alert changed (for latency).
    pub changed_at: i64,
    pub last_error: Option<String>,
    /// The alert as of the change.
    pub snapshot: Value,
    /// The subscription's message template, if it has one.
    pub template: Option<String>,
}

/// A delivery as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: String,
    pub alert_id: String,
    pub owner: String,
    pub subscription_id: Option<String>,
    pub channel_owner: String,
    pub channel: String,
    pub channel_kind: String,
    pub trigger: String,
    pub format: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub digest: Option<String>,
    pub changed_at: i64,
    pub created_at: i64,
    pub sent_at: Option<i64>,
    pub last_error: Option<String>,
    #[serde(skip)]
    pub snapshot: Value,
    #[serde(skip)]
    pub template: Option<String>,
}

/// How one send went.
#[derive(Debug, Clone)]
pub enum DeliveryOutcome {
    Sent {
        at: i64,
    },
    /// Try again at `next_attempt_at`; `counts` is false when no attempt was made (breaker open).
    Retry {
        error: String,
        next_attempt_at: i64,
        counts: bool,
    },
    Dead {
        error: String,
        at: i64,
    },
}

/// A channel as stored: its settings JSON with secret fields sealed.
#[derive(Debug, Clone)]
pub struct ChannelRow {
    pub owner: String,
    pub name: String,
    pub kind: String,
    pub settings: Value,
    pub shared: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A subscription as stored.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionRow {
    pub id: String,
    pub owner: String,
    pub spec: Value,
    pub origin: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A silence as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SilenceRow {
    pub id: String,
    /// Who created it.
    pub owner: String,
    pub matchers: Value,
    pub starts_at: i64,
    pub ends_at: i64,
    pub comment: String,
    pub created_at: i64,
}

/// Filters of `GET /api/v1/deliveries`.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub owner: Option<String>,
    pub status: Option<String>,
    pub alert_id: Option<String>,
    pub limit: i64,
    /// The page after this delivery (newest first).
    pub before: Option<String>,
}

/// Notifications: channels, subscriptions, silences and the delivery outbox.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync {
    /// Saves a channel; returns whether it was new.
    async fn put_channel(&self, channel: &ChannelRow) -> Result<bool>;
    async fn get_channel(&self, owner: &str, name: &str) -> Result<Option<ChannelRow>>;
    /// The channels of `owner` (all with `None`), with shared ones when `with_shared`.
    async fn list_channels(
        &self,
        owner: Option<&str>,
        with_shared: bool,
    ) -> Result<Vec<ChannelRow>>;
    async fn delete_channel(&self, owner: &str, name: &str) -> Result<bool>;

    async fn put_subscription(&self, sub: &SubscriptionRow) -> Result<()>;
    async fn get_subscription(&self, id: &str) -> Result<Option<SubscriptionRow>>;
    async fn list_subscriptions(&self, owner: Option<&str>) -> Result<Vec<SubscriptionRow>>;
    async fn delete_subscription(&self, id: &str) -> Result<bool>;

    async fn put_silence(&self, silence: &SilenceRow) -> Result<()>;
    async fn get_silence(&self, id: &str) -> Result<Option<SilenceRow>>;
    async fn list_silences(&self, owner: Option<&str>) -> Result<Vec<SilenceRow>>;
    async fn delete_silence(&self, id: &str) -> Result<bool>;

    /// Takes due deliveries (pending, or held digests whose time came) and marks them sending.
    async fn claim_deliveries(&self, now: i64, limit: i64) -> Result<Vec<Delivery>>;
    /// Records how sends went: each entry's deliveries share its outcome. One transaction.
    async fn finish_deliveries(&self, outcomes: &[(Vec<String>, DeliveryOutcome)]) -> Result<()>;
    /// Deliveries left `sending` by a crash go back to pending (at-least-once).
    async fn reset_sending(&self) -> Result<u64>;
    /// When the next pending or held delivery is due.
    async fn next_due(&self) -> Result<Option<i64>>;
    async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>>;
    async fn get_delivery(&self, id: &str) -> Result<Option<Delivery>>;
    /// A dead delivery is tried again from its first attempt.
    async fn retry_delivery(&self, id: &str, now: i64) -> Result<bool>;
    /// Open digest periods: digest key → due time, for the dispatcher after a restart.
    async fn held_digests(&self) -> Result<Vec<(String, i64)>>;

    /// Of these alerts, those whose last fire or repeat notification was silenced (a silenced
    /// delivery newer than any sent one): what a silence held back.
    async fn held_back(&self, alert_ids: &[String]) -> Result<Vec<String>>;

    /// A server-wide setting (such as `smtp`).
    async fn get_setting(&self, key: &str) -> Result<Option<Value>>;
    async fn put_setting(&self, key: &str, value: &Value, now: i64) -> Result<()>;
}
