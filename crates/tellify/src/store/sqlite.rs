//! The embedded store: SQLite through sqlx, in WAL mode.
//!
//! WAL lets the API read while the ingest writer and the engine write. `synchronous=FULL`
//! makes a commit survive power loss, not only a killed process: a `202` is a promise. Its
//! cost is paid once per group commit (see `sources::ingest`), not once per event.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use tellify_core::alert::{Alert, AlertKey, Content, Status};

use super::health::{FailureKind, StorageHealth};
use crate::auth::TokenScope;

use super::{
    AlertFilter, AlertWrites, AuditEntry, EngineCommit, EngineSnapshot, EngineTx, EventBatch,
    HistoryEntry, HistoryFilter, NewDelivery, NewEvent, OpenAlert, RuleWrite, SourceInfo,
    StatField, Store, StoredEvent, StoredRule, TokenInfo, User,
};

/// Rows per multi-row INSERT: SQLite allows 32,766 bound parameters, events take 5 each.
const EVENT_CHUNK: usize = 1_000;

pub struct SqliteStore {
    pool: SqlitePool,
    /// Taken around the transactions of the steady writers (the ingest writer, the engine, the
    /// delivery worker). SQLite allows one writer at a time and makes the others wait in its
    /// busy handler, which sleeps (1, 2, 5, … up to 100 ms) instead of waking when the lock
    /// frees; queueing here hands the database over as soon as the other commit ends.
    writes: Arc<tokio::sync::Mutex<()>>,
    /// What the writers last found (see [`WriteTx`]).
    health: Arc<StorageHealth>,
}

/// A write transaction on a connection of its own: `BEGIN IMMEDIATE` in the write turn, and
/// on any failure the connection is closed rather than handed back to the pool.
///
/// sqlx's own transactions keep a depth counter beside SQLite's state. After `SQLITE_FULL` or
/// an I/O error SQLite may roll a transaction back by itself; the counter and SQLite then
/// disagree, and the pooled connection later ran each "transaction" as a savepoint of one that
/// never committed, holding the write lock — `202`s were answered for events that were then
/// lost. Here the transaction is plain SQL, and a `WriteTx` dropped before its commit succeeded
/// closes its connection: closing rolls back whatever SQLite still holds, and the pool opens a
/// clean one for the next writer.
pub(super) struct WriteTx {
    conn: PoolConnection<Sqlite>,
    committed: bool,
    /// Dropped after the connection (fields drop in order): the turn is handed on last.
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTx {
    async fn begin(pool: &SqlitePool, turn: tokio::sync::OwnedMutexGuard<()>) -> Result<Self> {
        let mut conn = pool.acquire().await?;
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(Self {
            conn,
            committed: false,
            _turn: turn,
        })
    }

    pub(super) async fn commit(mut self) -> Result<()> {
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

/// Alert ids per query.
const ALERT_CHUNK: usize = 500;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        Self::connect(options).await
    }

    /// Opens from a `sqlite://PATH` URL.
    pub async fn open_url(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("Failed to read the database URL {url}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        Self::connect(options).await
    }

    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Waits for the write turn (see `writes`).
    pub(super) async fn writing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writes.lock().await
    }

    /// Begins a write transaction in the write turn (see [`WriteTx`]).
    pub(super) async fn write(&self) -> Result<WriteTx> {
        let turn = self.writes.clone().lock_owned().await;
        self.health.observe(WriteTx::begin(&self.pool, turn).await)
    }

    /// Runs a whole write and records its outcome for the storage watcher and `/readyz`.
    pub(super) fn observe<T>(&self, result: Result<T>) -> Result<T> {
        self.health.observe(result)
    }

    async fn connect(options: SqliteConnectOptions) -> Result<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .context("Failed to open the SQLite database")?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .context("Failed to migrate the SQLite database")?;
        Ok(Self {
            pool,
            writes: Arc::new(tokio::sync::Mutex::new(())),
            health: Arc::new(StorageHealth::default()),
        })
    }
}

pub(super) fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("JSON values always serialize")
}

fn user_row(row: &SqliteRow) -> User {
    User {
        name: row.get("name"),
        email: row.get("email"),
        role: row.get("role"),
        timezone: row.get("timezone"),
        password_hash: row.get("password_hash"),
    }
}

fn alert_row(row: &SqliteRow) -> Alert {
    let map = |col: &str| -> BTreeMap<String, String> {
        serde_json::from_str(row.get::<&str, _>(col)).unwrap_or_default()
    };
    Alert {
        id: row.get("id"),
        rule: row.get("rule"),
        owner: row.get("owner"),
        key: row.get("key"),
        // Written from these enums only: an unknown word would be a database edited by hand.
        status: row
            .get::<&str, _>("status")
            .parse()
            .unwrap_or(Status::Resolved),
        content: Content {
            severity: row.get::<&str, _>("severity").parse().unwrap_or_default(),
            summary: row.get("summary"),
            body: row.get("body"),
            value: row.get("value"),
            labels: map("labels"),
            links: map("links"),
            source: row.get("source"),
            run: row.get("run"),
        },
        first_seen: row.get("first_seen"),
        fired_at: row.get("fired_at"),
        last_seen: row.get("last_seen"),
        resolved_at: row.get("resolved_at"),
        resolve_reason: row.get("resolve_reason"),
        count: row.get("count"),
        acked_by: row.get("acked_by"),
        acked_at: row.get("acked_at"),
    }
}

fn source_row(row: &SqliteRow) -> SourceInfo {
    SourceInfo {
        name: row.get("name"),
        owner: row.get("owner"),
        visibility: row.get("visibility"),
        events: row.get("events"),
        last_time: row.get("last_time"),
        last_event: row
            .get::<Option<&str>, _>("last_event")
            .and_then(|s| serde_json::from_str(s).ok()),
    }
}

fn rule_row(row: &SqliteRow) -> StoredRule {
    StoredRule {
        owner: row.get("owner"),
        name: row.get("name"),
        doc: serde_json::from_str(row.get::<&str, _>("doc")).unwrap_or(Value::Null),
        origin: row.get("origin"),
        error: row.get("error"),
        updated_at: row.get("updated_at"),
    }
}

/// Appends events to the log inside `tx` and returns their seqs.
async fn insert_events(tx: &mut SqliteConnection, events: &[NewEvent]) -> Result<Vec<i64>> {
    let mut seqs = Vec::with_capacity(events.len());
    for chunk in events.chunks(EVENT_CHUNK) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO events (source, time, received, hops, data) ");
        qb.push_values(chunk, |mut b, e| {
            b.push_bind(&e.source)
                .push_bind(e.time)
                .push_bind(e.received)
                .push_bind(i64::from(e.hops))
                .push_bind(json_text(&e.data));
        });
        qb.push(" RETURNING seq");
        let rows = qb.build().fetch_all(&mut *tx).await?;
        seqs.extend(rows.iter().map(|r| r.get::<i64, _>(0)));
    }
    Ok(seqs)
}

/// Keeps each source's latest event (the topic data) and claims new sources for `owner`.
async fn update_sources(tx: &mut SqliteConnection, owner: &str, events: &[NewEvent]) -> Result<()> {
    let mut latest: HashMap<&str, (&NewEvent, i64)> = HashMap::new();
    for e in events {
        let entry = latest.entry(e.source.as_str()).or_insert((e, 0));
        entry.0 = e;
        entry.1 += 1;
    }
    for (source, (event, n)) in latest {
        sqlx::query(
            "INSERT INTO sources (name, owner, last_event, last_time, events) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET last_event = excluded.last_event,
                 last_time = excluded.last_time, events = sources.events + excluded.events",
        )
        .bind(source)
        .bind(owner)
        .bind(json_text(&event.data))
        .bind(event.time)
        .bind(n)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Writes the alert rows of a batch as the fold made them ([`AlertWrites`]), then their history.
async fn write_alerts(tx: &mut SqliteConnection, writes: &AlertWrites) -> Result<()> {
    // Changed alerts first, new ones last: an alert that closes before another opens for its
    // (owner, rule, key) leaves room for it under the one-open-alert index.
    for a in &writes.update {
        // What a change can alter; the rest is fixed when the alert opens.
        sqlx::query(
            "UPDATE alerts SET status = ?, summary = ?, value = ?, fired_at = ?, last_seen = ?,
                 resolved_at = ?, resolve_reason = ?, count = ?, acked_by = ?, acked_at = ?
             WHERE id = ?",
        )
        .bind(a.status.as_str())
        .bind(&a.content.summary)
        .bind(a.content.value)
        .bind(a.fired_at)
        .bind(a.last_seen)
        .bind(a.resolved_at)
        .bind(&a.resolve_reason)
        .bind(a.count)
        .bind(&a.acked_by)
        .bind(a.acked_at)
        .bind(&a.id)
        .execute(&mut *tx)
        .await?;
    }
    for id in &writes.delete {
        sqlx::query("DELETE FROM alert_history WHERE alert_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM alerts WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    for a in &writes.insert {
        // The evaluator never opens twice; if the store disagrees (an alert resolved by hand
        // racing a new event), the older one is closed rather than the batch lost.
        sqlx::query(
            "UPDATE alerts SET status = 'resolved', resolved_at = ?, resolve_reason = 'superseded'
             WHERE owner = ? AND rule = ? AND key = ? AND status != 'resolved'",
        )
        .bind(a.first_seen)
        .bind(&a.owner)
        .bind(&a.rule)
        .bind(&a.key)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO alerts (id, owner, rule, key, status, severity, summary, body, value, labels,
                 links, source, run, first_seen, fired_at, last_seen, resolved_at, resolve_reason,
                 count, acked_by, acked_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&a.id)
        .bind(&a.owner)
        .bind(&a.rule)
        .bind(&a.key)
        .bind(a.status.as_str())
        .bind(a.content.severity.as_str())
        .bind(&a.content.summary)
        .bind(&a.content.body)
        .bind(a.content.value)
        .bind(json_text(&a.content.labels))
        .bind(json_text(&a.content.links))
        .bind(&a.content.source)
        .bind(&a.content.run)
        .bind(a.first_seen)
        .bind(a.fired_at)
        .bind(a.last_seen)
        .bind(a.resolved_at)
        .bind(&a.resolve_reason)
        .bind(a.count)
        .bind(&a.acked_by)
        .bind(a.acked_at)
        .execute(&mut *tx)
        .await?;
    }
    for h in &writes.history {
        sqlx::query("INSERT INTO alert_history (alert_id, owner, rule, at, status, message) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&h.alert_id)
            .bind(&h.owner)
            .bind(&h.rule)
            .bind(h.at)
            .bind(&h.status)
            .bind(&h.message)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// One engine batch in one SQLite transaction ([`WriteTx`]: unfinished, it closes its
/// connection before the write turn is handed on). Every step's failure is reported to the
/// store's health.
pub struct SqliteEngineTx {
    tx: WriteTx,
    health: Arc<StorageHealth>,
}

impl SqliteEngineTx {
    fn failed<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            self.health.failed(FailureKind::of(e));
        }
        result
    }
}

#[async_trait::async_trait]
impl EngineTx for SqliteEngineTx {
    async fn apply(&mut self, commit: &EngineCommit, alerts: &AlertWrites) -> Result<()> {
        let result = apply_batch(&mut self.tx, commit, alerts).await;
        self.failed(result)
    }

    async fn told_of_fire(&mut self, alert_ids: &[String]) -> Result<super::Told> {
        let result = told_of_fire(&mut self.tx, alert_ids).await;
        self.failed(result)
    }

    async fn add_deliveries(&mut self, deliveries: &[NewDelivery]) -> Result<()> {
        let result = crate::store::sqlite_outbox::insert_deliveries(&mut self.tx, deliveries).await;
        self.failed(result)
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        let health = self.health.clone();
        health.observe(self.tx.commit().await)
    }
}

/// Writes an engine batch inside its transaction.
async fn apply_batch(
    tx: &mut SqliteConnection,
    commit: &EngineCommit,
    alerts: &AlertWrites,
) -> Result<()> {
    {
        for write in &commit.rules {
            match write {
                RuleWrite::Put {
                    owner,
                    name,
                    doc,
                    origin,
                    at,
                } => {
                    sqlx::query(
                        "INSERT INTO rules (owner, name, doc, origin, updated_at) VALUES (?, ?, ?, ?, ?)
                         ON CONFLICT (owner, name) DO UPDATE SET doc = excluded.doc, origin = excluded.origin,
                             error = NULL, updated_at = excluded.updated_at",
                    )
                    .bind(owner)
                    .bind(name)
                    .bind(json_text(doc))
                    .bind(origin)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
                RuleWrite::Delete { owner, name } => {
                    sqlx::query("DELETE FROM rules WHERE owner = ? AND name = ?")
                        .bind(owner)
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                    // A new rule of the same name must not inherit the old one's memory.
                    sqlx::query("DELETE FROM rule_state WHERE owner = ? AND rule = ?")
                        .bind(owner)
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        write_alerts(tx, alerts).await?;
        for update in &commit.states {
            match &update.state {
                Some(state) => {
                    sqlx::query(
                        "INSERT INTO rule_state (owner, rule, key, state) VALUES (?, ?, ?, ?)
                         ON CONFLICT (owner, rule, key) DO UPDATE SET state = excluded.state",
                    )
                    .bind(&update.owner)
                    .bind(&update.rule)
                    .bind(&update.key)
                    .bind(json_text(state))
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM rule_state WHERE owner = ? AND rule = ? AND key = ?")
                        .bind(&update.owner)
                        .bind(&update.rule)
                        .bind(&update.key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        for (owner, rule, error) in &commit.rule_status {
            sqlx::query("UPDATE rules SET error = ? WHERE owner = ? AND name = ?")
                .bind(error)
                .bind(owner)
                .bind(rule)
                .execute(&mut *tx)
                .await?;
        }
        for batch in &commit.emitted {
            insert_events(tx, &batch.events).await?;
            update_sources(tx, &batch.owner, &batch.events).await?;
        }
        if let Some(checkpoint) = commit.checkpoint {
            sqlx::query("UPDATE engine SET checkpoint = MAX(checkpoint, ?) WHERE id = 1")
                .bind(checkpoint)
                .execute(&mut *tx)
                .await?;
        }
        write_deferrals(tx, &commit.deferrals).await?;
        Ok(())
    }
}

/// These alerts, a few hundred per query (one query per alert made large batches costly).
async fn alerts_by_id(db: &mut SqliteConnection, ids: &[String]) -> Result<Vec<Alert>> {
    let mut alerts = Vec::with_capacity(ids.len());
    for ids in ids.chunks(ALERT_CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM alerts WHERE id IN (");
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(id);
        }
        qb.push(")");
        alerts.extend(qb.build().fetch_all(&mut *db).await?.iter().map(alert_row));
    }
    Ok(alerts)
}

/// Of these alerts, the (alert id, channel owner, channel) that were sent a fire or repeat.
async fn told_of_fire(tx: &mut SqliteConnection, alert_ids: &[String]) -> Result<super::Told> {
    {
        let mut told = super::Told::new();
        for ids in alert_ids.chunks(ALERT_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                // Sent, or still to go (a fire retrying when a silence began): either way the
                // receiver hears of the fire, so it must hear of the resolve.
                "SELECT DISTINCT alert_id, channel_owner, channel FROM deliveries
                 WHERE status IN ('sent', 'sending', 'pending', 'held')
                   AND trigger IN ('fire', 'repeat') AND alert_id IN (",
            );
            let mut list = qb.separated(", ");
            for id in ids {
                list.push_bind(id);
            }
            qb.push(")");
            for r in qb.build().fetch_all(&mut *tx).await? {
                told.insert((r.get(0), r.get(1), r.get(2)));
            }
        }
        Ok(told)
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?
            .get(0))
    }

    async fn create_user(&self, user: &User, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO users (name, email, role, timezone, password_hash, created_at) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&user.name)
        .bind(&user.email)
        .bind(&user.role)
        .bind(&user.timezone)
        .bind(&user.password_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_user(&self, name: &str) -> Result<Option<User>> {
        Ok(sqlx::query("SELECT * FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_row))
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        Ok(sqlx::query("SELECT * FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_row)
            .collect())
    }

    async fn create_token(
        &self,
        user: &str,
        name: &str,
        hash: &str,
        scope: TokenScope,
        now: i64,
    ) -> Result<TokenInfo> {
        let id = format!("tok_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(
            "INSERT INTO tokens (id, user_name, name, hash, scope, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(user)
        .bind(name)
        .bind(hash)
        .bind(scope.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(TokenInfo {
            id,
            user: user.to_owned(),
            name: name.to_owned(),
            scope,
            created_at: now,
        })
    }

    async fn user_by_token(&self, hash: &str) -> Result<Option<(User, TokenScope)>> {
        Ok(sqlx::query(
            "SELECT users.*, tokens.scope AS token_scope FROM tokens JOIN users ON users.name = tokens.user_name WHERE tokens.hash = ?",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(|r| (user_row(r), TokenScope::from_stored(r.get("token_scope")))))
    }

    async fn list_tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT id, user_name, name, scope, created_at FROM tokens WHERE ?1 IS NULL OR user_name = ?1 ORDER BY id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| TokenInfo {
                id: r.get("id"),
                user: r.get("user_name"),
                name: r.get("name"),
                scope: TokenScope::from_stored(r.get("scope")),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    async fn delete_token(&self, id: &str, user: Option<&str>) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM tokens WHERE id = ?1 AND (?2 IS NULL OR user_name = ?2)")
                .bind(id)
                .bind(user)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn append_events(&self, batches: &[EventBatch]) -> Result<Vec<i64>> {
        let mut tx = self.write().await?;
        let written = async {
            let mut seqs = Vec::new();
            for batch in batches {
                seqs.extend(insert_events(&mut tx, &batch.events).await?);
                update_sources(&mut tx, &batch.owner, &batch.events).await?;
            }
            tx.commit().await?;
            Ok(seqs)
        };
        self.observe(written.await)
    }

    async fn open_counts(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT status, severity, COUNT(*) FROM alerts WHERE status != 'resolved' GROUP BY status, severity",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn events_after(&self, seq: i64, limit: i64) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    seq: r.get("seq"),
                    event: NewEvent {
                        source: r.get("source"),
                        time: r.get("time"),
                        received: r.get("received"),
                        hops: u8::try_from(r.get::<i64, _>("hops")).unwrap_or(u8::MAX),
                        data: serde_json::from_str(r.get::<&str, _>("data"))
                            .context("Failed to read a stored event")?,
                    },
                })
            })
            .collect()
    }

    async fn sources(&self) -> Result<Vec<SourceInfo>> {
        Ok(sqlx::query("SELECT * FROM sources ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(source_row)
            .collect())
    }

    async fn source(&self, name: &str) -> Result<Option<SourceInfo>> {
        Ok(sqlx::query("SELECT * FROM sources WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(source_row))
    }

    async fn prune_events(&self, before: i64) -> Result<u64> {
        // In the write turn like every writer, not in SQLite's busy handler.
        let _writing = self.writing().await;
        let done = sqlx::query(
            "DELETE FROM events WHERE received < ? AND seq <= (SELECT checkpoint FROM engine WHERE id = 1)
                 AND seq <= (SELECT COALESCE(MIN(position), seq) FROM engine_owner_positions)",
        )
        .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn prune_alerts(&self, before: i64) -> Result<u64> {
        let mut tx = self.write().await?;
        // With the alert go its history and its finished deliveries (each holds a copy of the
        // alert); a delivery still to go stays until it has gone.
        for table in [
            "DELETE FROM alert_history WHERE alert_id IN
                 (SELECT id FROM alerts WHERE status = 'resolved' AND resolved_at < ?)",
            "DELETE FROM deliveries WHERE status IN ('sent', 'dead', 'silenced') AND alert_id IN
                 (SELECT id FROM alerts WHERE status = 'resolved' AND resolved_at < ?)",
        ] {
            sqlx::query(table).bind(before).execute(&mut *tx).await?;
        }
        let done = sqlx::query("DELETE FROM alerts WHERE status = 'resolved' AND resolved_at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn list_rules(&self, owner: Option<&str>) -> Result<Vec<StoredRule>> {
        Ok(
            sqlx::query("SELECT * FROM rules WHERE ?1 IS NULL OR owner = ?1 ORDER BY owner, name")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(rule_row)
                .collect(),
        )
    }

    async fn get_rule(&self, owner: &str, name: &str) -> Result<Option<StoredRule>> {
        Ok(
            sqlx::query("SELECT * FROM rules WHERE owner = ? AND name = ?")
                .bind(owner)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
                .as_ref()
                .map(rule_row),
        )
    }

    async fn load_engine(&self) -> Result<EngineSnapshot> {
        let checkpoint: i64 = sqlx::query("SELECT checkpoint FROM engine WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .get(0);
        let states = sqlx::query("SELECT owner, rule, key, state FROM rule_state")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                (
                    r.get("owner"),
                    r.get("rule"),
                    r.get("key"),
                    serde_json::from_str(r.get::<&str, _>("state")).unwrap_or(Value::Null),
                )
            })
            .collect();
        let deferred = load_deferrals(&self.pool).await?;
        Ok(EngineSnapshot {
            checkpoint,
            states,
            deferred,
        })
    }

    async fn open_alerts(&self, after: Option<&AlertKey>, limit: i64) -> Result<Vec<OpenAlert>> {
        // Keyset pages over the partial index of open alerts (owner, rule, key).
        let (owner, rule, key) = after.map_or(("", "", ""), |a| {
            (a.owner.as_str(), a.rule.as_str(), a.key.as_str())
        });
        let rows = sqlx::query(
            "SELECT id, owner, rule, key, status, fired_at, acked_at FROM alerts \
             WHERE status != 'resolved' AND (owner, rule, key) > (?, ?, ?) \
             ORDER BY owner, rule, key LIMIT ?",
        )
        .bind(owner)
        .bind(rule)
        .bind(key)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| OpenAlert {
                alert: AlertKey {
                    id: r.get("id"),
                    owner: r.get("owner"),
                    rule: r.get("rule"),
                    key: r.get("key"),
                },
                status: r.get::<&str, _>("status").parse().unwrap_or(Status::Firing),
                fired_at: r.get("fired_at"),
                acked: r.get::<Option<i64>, _>("acked_at").is_some(),
            })
            .collect())
    }

    async fn alerts_by_id(&self, ids: &[String]) -> Result<Vec<Alert>> {
        if ids.is_empty() {
            // Most engine commits name no stored alert: no connection for them.
            return Ok(Vec::new());
        }
        let mut db = self.pool.acquire().await?;
        alerts_by_id(&mut db, ids).await
    }

    async fn told_of_fire(&self, alert_ids: &[String]) -> Result<super::Told> {
        let mut db = self.pool.acquire().await?;
        told_of_fire(&mut db, alert_ids).await
    }

    async fn begin_engine(&self) -> Result<Box<dyn EngineTx>> {
        Ok(Box::new(SqliteEngineTx {
            tx: self.write().await?,
            health: self.health.clone(),
        }))
    }

    async fn list_alerts(&self, filter: &AlertFilter) -> Result<Vec<Alert>> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM alerts WHERE 1 = 1");
        if let Some(owner) = &filter.owner {
            qb.push(" AND owner = ").push_bind(owner);
        }
        if let Some(status) = filter.status {
            qb.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(rule) = &filter.rule {
            qb.push(" AND rule = ").push_bind(rule);
        }
        if let Some(severity) = filter.severity {
            qb.push(" AND severity = ").push_bind(severity.as_str());
        }
        for (k, v) in &filter.labels {
            qb.push(" AND json_extract(labels, ")
                .push_bind(format!("$.\"{}\"", k.replace('"', "")))
                .push(") = ")
                .push_bind(v);
        }
        if let Some(before) = &filter.before {
            qb.push(" AND id < ").push_bind(before);
        }
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(filter.limit);
        Ok(qb
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(alert_row)
            .collect())
    }

    async fn get_alert(&self, id: &str) -> Result<Option<Alert>> {
        Ok(sqlx::query("SELECT * FROM alerts WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(alert_row))
    }

    async fn history(&self, filter: &HistoryFilter) -> Result<Vec<HistoryEntry>> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT * FROM alert_history WHERE 1 = 1");
        if let Some(owner) = &filter.owner {
            qb.push(" AND owner = ").push_bind(owner);
        }
        if let Some(rule) = &filter.rule {
            qb.push(" AND rule = ").push_bind(rule);
        }
        if let Some(id) = &filter.alert_id {
            qb.push(" AND alert_id = ").push_bind(id);
        }
        if let Some(from) = filter.from {
            qb.push(" AND at >= ").push_bind(from);
        }
        if let Some(to) = filter.to {
            qb.push(" AND at < ").push_bind(to);
        }
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(filter.limit);
        let rows = qb.build().fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| HistoryEntry {
                alert_id: r.get("alert_id"),
                owner: r.get("owner"),
                rule: r.get("rule"),
                at: r.get("at"),
                status: r.get("status"),
                message: r.get("message"),
            })
            .collect())
    }

    async fn alert_stats(
        &self,
        owner: Option<&str>,
        group_by: &[StatField],
    ) -> Result<Vec<(Vec<Option<String>>, i64)>> {
        // Column names come from the closed StatField enum, never from the request.
        let columns: Vec<&str> = group_by.iter().map(|f| f.column()).collect();
        let select = if columns.is_empty() {
            String::new()
        } else {
            format!("{}, ", columns.join(", "))
        };
        let group = if columns.is_empty() {
            String::new()
        } else {
            format!(" GROUP BY {}", columns.join(", "))
        };
        let sql = format!(
            "SELECT {select}COUNT(*) AS n FROM alerts WHERE ?1 IS NULL OR owner = ?1{group} ORDER BY n DESC"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let keys = (0..columns.len())
                    .map(|i| r.get::<Option<String>, _>(i))
                    .collect();
                (keys, r.get::<i64, _>("n"))
            })
            .collect())
    }

    async fn audit(
        &self,
        actor: &str,
        action: &str,
        object: &str,
        detail: Option<&str>,
        at: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO audit (at, actor, action, object, detail) VALUES (?, ?, ?, ?, ?)")
            .bind(at)
            .bind(actor)
            .bind(action)
            .bind(object)
            .bind(detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_audit(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit ORDER BY id DESC LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                at: r.get("at"),
                actor: r.get("actor"),
                action: r.get("action"),
                object: r.get("object"),
                detail: r.get("detail"),
            })
            .collect())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn health(&self) -> &StorageHealth {
        &self.health
    }

    async fn probe_write(&self) -> Result<()> {
        let mut tx = self.write().await?;
        let written = async {
            // Rewrites a row with itself: a real page written and synced, nothing changed.
            sqlx::query("UPDATE engine SET checkpoint = checkpoint WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        };
        self.observe(written.await)
    }
}

/// Writes where deferred owners are (see `engine_owner_positions`); `None` removes the owner.
async fn write_deferrals(
    tx: &mut SqliteConnection,
    deferrals: &[(String, Option<tellify_core::eval::Deferred>)],
) -> Result<()> {
    for (owner, deferred) in deferrals {
        match deferred {
            Some(d) => {
                let (partial_seq, partial_rules) = match &d.partial {
                    Some((seq, rules)) => (Some(*seq), Some(serde_json::to_string(rules)?)),
                    None => (None, None),
                };
                sqlx::query(
                    "INSERT INTO engine_owner_positions (owner, position, partial_seq, partial_rules)
                     VALUES (?, ?, ?, ?)
                     ON CONFLICT (owner) DO UPDATE SET position = excluded.position,
                         partial_seq = excluded.partial_seq, partial_rules = excluded.partial_rules",
                )
                .bind(owner)
                .bind(d.position)
                .bind(partial_seq)
                .bind(partial_rules)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM engine_owner_positions WHERE owner = ?")
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    Ok(())
}

/// The deferred owners and where each is.
async fn load_deferrals(
    pool: &sqlx::SqlitePool,
) -> Result<Vec<(String, tellify_core::eval::Deferred)>> {
    let rows = sqlx::query(
        "SELECT owner, position, partial_seq, partial_rules FROM engine_owner_positions ORDER BY owner",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let partial = match (
                r.get::<Option<i64>, _>("partial_seq"),
                r.get::<Option<&str>, _>("partial_rules"),
            ) {
                (Some(seq), Some(rules)) => Some((
                    seq,
                    serde_json::from_str(rules).context("Failed to read a deferred owner")?,
                )),
                _ => None,
            };
            Ok((
                r.get("owner"),
                tellify_core::eval::Deferred {
                    position: r.get("position"),
                    partial,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::store::Outbox;

    /// A restart reads open alerts in pages; every open one comes back once, none resolved,
    /// whatever the keys (a key equal across rules, a rule name that prefixes another).
    #[tokio::test]
    async fn open_alerts_come_back_page_by_page_each_once() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("t.db"))
            .await
            .expect("open");
        let mut expected = HashSet::new();
        let mut tx = store.pool().begin().await.expect("tx");
        for i in 0..2_345 {
            let owner = ["alice", "bob"][i % 2];
            let rule = ["r", "r2", "rule"][i % 3];
            let key = format!("k{}", i % 400);
            let status = match i % 5 {
                0 => "resolved",
                1 => "pending",
                _ => "firing",
            };
            let inserted = sqlx::query(
                "INSERT OR IGNORE INTO alerts (id, owner, rule, key, status, severity, summary, \
                 first_seen, last_seen, acked_at) VALUES (?, ?, ?, ?, ?, 'warning', '', 0, 0, ?)",
            )
            .bind(format!("a{i:05}"))
            .bind(owner)
            .bind(rule)
            .bind(&key)
            .bind(status)
            .bind((i % 7 == 0).then_some(5_i64))
            .execute(&mut *tx)
            .await
            .expect("insert")
            .rows_affected();
            if inserted == 1 && status != "resolved" {
                expected.insert(format!("a{i:05}"));
            }
        }
        tx.commit().await.expect("commit");
        assert!(expected.len() > 900, "{}", expected.len());

        let mut seen = HashSet::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = store.open_alerts(after.as_ref(), 100).await.expect("page");
            pages += 1;
            for open in &page {
                assert!(
                    seen.insert(open.alert.id.clone()),
                    "{} twice",
                    open.alert.id
                );
            }
            let full = page.len() == 100;
            after = page.into_iter().last().map(|o| o.alert);
            if !full {
                break;
            }
        }
        assert_eq!(seen, expected);
        assert!(pages >= 10, "{pages} pages");
    }

    async fn delivery(store: &SqliteStore, id: &str, alert: &str, channel: &str, due: i64) {
        sqlx::query(
            "INSERT INTO deliveries (id, alert_id, owner, channel_owner, channel, channel_kind, \
             trigger, status, next_attempt_at, changed_at, created_at, snapshot) \
             VALUES (?, ?, 'alice', 'alice', ?, 'webhook', 'fire', 'pending', ?, 0, 0, '{}')",
        )
        .bind(id)
        .bind(alert)
        .bind(channel)
        .bind(due)
        .execute(store.pool())
        .await
        .expect("insert");
    }

    /// A resolve due now but waiting behind its fire (retrying later) neither fills the claim
    /// nor makes the worker spin: another channel's due delivery goes, and the next due time
    /// is that of a delivery that can go.
    #[tokio::test]
    async fn deliveries_waiting_behind_a_retry_do_not_starve_others() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("t.db"))
            .await
            .expect("open");
        delivery(&store, "d1-fire", "a1", "pd", 600_000).await;
        for i in 0..3 {
            // Later ids than the fire, due at once: they wait for it.
            delivery(&store, &format!("d2-resolve-{i}"), "a1", "pd", 0).await;
        }
        delivery(&store, "d3-other", "a2", "slack", 5).await;
        assert_eq!(store.next_due().await.expect("next due"), Some(5));
        let claimed = store.claim_deliveries(10, 1).await.expect("claim");
        let ids: Vec<&str> = claimed.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["d3-other"]);
        assert_eq!(store.next_due().await.expect("next due"), Some(600_000));
        assert!(
            store
                .claim_deliveries(10, 10)
                .await
                .expect("claim")
                .is_empty()
        );
    }
}
