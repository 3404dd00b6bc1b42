//! The notification tables in SQLite: channels, subscriptions, silences and the outbox.

use anyhow::Result;
use serde_json::Value;
use sqlx::sqlite::SqliteConnection;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::sqlite::{SqliteStore, json_text};
use super::{
    ChannelRow, Delivery, DeliveryFilter, DeliveryOutcome, NewDelivery, Outbox, SilenceRow,
    SubscriptionRow,
};

/// SQL: the delivery aliased `d` is not waiting for an earlier one to the same alert and
/// channel (UUIDv7 ids sort by creation); deliveries of one digest do not wait for each other.
fn not_waiting(d: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM deliveries AS e
             WHERE e.alert_id = {d}.alert_id AND e.channel_owner = {d}.channel_owner
               AND e.channel = {d}.channel AND e.id < {d}.id
               AND e.status IN ('pending', 'held', 'sending')
               AND (e.digest IS NULL OR {d}.digest IS NULL OR e.digest != {d}.digest))"
    )
}

fn json_col(row: &SqliteRow, col: &str) -> Value {
    serde_json::from_str(row.get::<&str, _>(col)).unwrap_or(Value::Null)
}

/// Writes planned deliveries inside the engine's transaction.
pub(super) async fn insert_deliveries(
    tx: &mut SqliteConnection,
    deliveries: &[NewDelivery],
) -> Result<()> {
    for chunk in deliveries.chunks(500) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO deliveries (id, alert_id, owner, subscription_id, channel_owner, channel, channel_kind,
                 trigger, format, status, next_attempt_at, digest, changed_at, created_at, last_error, snapshot, template) ",
        );
        qb.push_values(chunk, |mut b, d| {
            b.push_bind(&d.id)
                .push_bind(&d.alert_id)
                .push_bind(&d.owner)
                .push_bind(&d.subscription_id)
                .push_bind(&d.channel_owner)
                .push_bind(&d.channel)
                .push_bind(&d.channel_kind)
                .push_bind(d.trigger.as_str())
                .push_bind(&d.format)
                .push_bind(&d.status)
                .push_bind(d.next_attempt_at)
                .push_bind(&d.digest)
                .push_bind(d.changed_at)
                .push_bind(d.changed_at)
                .push_bind(&d.last_error)
                .push_bind(json_text(&d.snapshot))
                .push_bind(&d.template);
        });
        qb.build().execute(&mut *tx).await?;
    }
    Ok(())
}

fn channel_row(r: &SqliteRow) -> ChannelRow {
    ChannelRow {
        owner: r.get("owner"),
        name: r.get("name"),
        kind: r.get("kind"),
        settings: json_col(r, "settings"),
        shared: r.get::<i64, _>("shared") != 0,
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

fn subscription_row(r: &SqliteRow) -> SubscriptionRow {
    SubscriptionRow {
        id: r.get("id"),
        owner: r.get("owner"),
        spec: json_col(r, "spec"),
        origin: r.get("origin"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

fn silence_row(r: &SqliteRow) -> SilenceRow {
    SilenceRow {
        id: r.get("id"),
        owner: r.get("owner"),
        matchers: json_col(r, "matchers"),
        starts_at: r.get("starts_at"),
        ends_at: r.get("ends_at"),
        comment: r.get("comment"),
        created_at: r.get("created_at"),
    }
}

fn delivery_row(r: &SqliteRow) -> Delivery {
    Delivery {
        id: r.get("id"),
        alert_id: r.get("alert_id"),
        owner: r.get("owner"),
        subscription_id: r.get("subscription_id"),
        channel_owner: r.get("channel_owner"),
        channel: r.get("channel"),
        channel_kind: r.get("channel_kind"),
        trigger: r.get("trigger"),
        format: r.get("format"),
        status: r.get("status"),
        attempts: r.get("attempts"),
        next_attempt_at: r.get("next_attempt_at"),
        digest: r.get("digest"),
        changed_at: r.get("changed_at"),
        created_at: r.get("created_at"),
        sent_at: r.get("sent_at"),
        last_error: r.get("last_error"),
        snapshot: json_col(r, "snapshot"),
        template: r.get("template"),
    }
}

#[async_trait::async_trait]
impl Outbox for SqliteStore {
    async fn put_channel(&self, c: &ChannelRow) -> Result<bool> {
        let existed = self.get_channel(&c.owner, &c.name).await?.is_some();
        sqlx::query(
            "INSERT INTO channels (owner, name, kind, settings, shared, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (owner, name) DO UPDATE SET kind = excluded.kind, settings = excluded.settings,
                 shared = excluded.shared, updated_at = excluded.updated_at",
        )
        .bind(&c.owner)
        .bind(&c.name)
        .bind(&c.kind)
        .bind(json_text(&c.settings))
        .bind(i64::from(c.shared))
        .bind(c.created_at)
        .bind(c.updated_at)
        .execute(self.pool())
        .await?;
        Ok(!existed)
    }

    async fn get_channel(&self, owner: &str, name: &str) -> Result<Option<ChannelRow>> {
        Ok(
            sqlx::query("SELECT * FROM channels WHERE owner = ? AND name = ?")
                .bind(owner)
                .bind(name)
                .fetch_optional(self.pool())
                .await?
                .as_ref()
                .map(channel_row),
        )
    }

    async fn list_channels(
        &self,
        owner: Option<&str>,
        with_shared: bool,
    ) -> Result<Vec<ChannelRow>> {
        Ok(sqlx::query("SELECT * FROM channels WHERE ?1 IS NULL OR owner = ?1 OR (?2 AND shared) ORDER BY owner, name")
            .bind(owner)
            .bind(with_shared)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(channel_row)
            .collect())
    }

    async fn delete_channel(&self, owner: &str, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM channels WHERE owner = ? AND name = ?")
            .bind(owner)
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_subscription(&self, s: &SubscriptionRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO subscriptions (id, owner, spec, origin, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        )
        .bind(&s.id)
        .bind(&s.owner)
        .bind(json_text(&s.spec))
        .bind(&s.origin)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn get_subscription(&self, id: &str) -> Result<Option<SubscriptionRow>> {
        Ok(sqlx::query("SELECT * FROM subscriptions WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(subscription_row))
    }

    async fn list_subscriptions(&self, owner: Option<&str>) -> Result<Vec<SubscriptionRow>> {
        Ok(
            sqlx::query("SELECT * FROM subscriptions WHERE ?1 IS NULL OR owner = ?1 ORDER BY id")
                .bind(owner)
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(subscription_row)
                .collect(),
        )
    }

    async fn delete_subscription(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM subscriptions WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_silence(&self, s: &SilenceRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO silences (id, owner, matchers, starts_at, ends_at, comment, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(&s.owner)
        .bind(json_text(&s.matchers))
        .bind(s.starts_at)
        .bind(s.ends_at)
        .bind(&s.comment)
        .bind(s.created_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn get_silence(&self, id: &str) -> Result<Option<SilenceRow>> {
        Ok(sqlx::query("SELECT * FROM silences WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(silence_row))
    }

    async fn list_silences(&self, owner: Option<&str>) -> Result<Vec<SilenceRow>> {
        Ok(sqlx::query(
            "SELECT * FROM silences WHERE ?1 IS NULL OR owner = ?1 ORDER BY starts_at DESC",
        )
        .bind(owner)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(silence_row)
        .collect())
    }

    async fn delete_silence(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM silences WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_deliveries(&self, now: i64, limit: i64) -> Result<Vec<Delivery>> {
        let result = self.claim(now, limit).await;
        self.observe(result)
    }

    async fn finish_deliveries(&self, outcomes: &[(Vec<String>, DeliveryOutcome)]) -> Result<()> {
        let result = self.record(outcomes).await;
        self.observe(result)
    }

    async fn reset_sending(&self) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE deliveries SET status = CASE WHEN digest IS NULL THEN 'pending' ELSE 'held' END WHERE status = 'sending'",
        )
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    async fn next_due(&self) -> Result<Option<i64>> {
        Ok(sqlx::query(
            // A waiting row is due when the one it waits for has gone, which is counted itself.
            sqlx::AssertSqlSafe(format!(
                "SELECT MIN(d.next_attempt_at) FROM deliveries AS d
                 WHERE d.status IN ('pending', 'held') AND {}",
                not_waiting("d")
            )),
        )
        .fetch_one(self.pool())
        .await?
        .get(0))
    }

    async fn list_deliveries(&self, f: &DeliveryFilter) -> Result<Vec<Delivery>> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT * FROM deliveries WHERE 1 = 1");
        if let Some(owner) = &f.owner {
            qb.push(" AND owner = ").push_bind(owner);
        }
        if let Some(status) = &f.status {
            qb.push(" AND status = ").push_bind(status);
        }
        if let Some(alert) = &f.alert_id {
            qb.push(" AND alert_id = ").push_bind(alert);
        }
        if let Some(before) = &f.before {
            qb.push(" AND (created_at, id) < (SELECT created_at, id FROM deliveries WHERE id = ")
                .push_bind(before)
                .push(")");
        }
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(f.limit);
        Ok(qb
            .build()
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(delivery_row)
            .collect())
    }

    async fn get_delivery(&self, id: &str) -> Result<Option<Delivery>> {
        Ok(sqlx::query("SELECT * FROM deliveries WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(delivery_row))
    }

    async fn retry_delivery(&self, id: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, digest = NULL WHERE id = ? AND status = 'dead'",
        )
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn held_back(&self, alert_ids: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for ids in alert_ids.chunks(500) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "SELECT DISTINCT s.alert_id FROM deliveries AS s
                 WHERE s.status = 'silenced' AND s.trigger IN ('fire', 'repeat')
                   AND s.created_at >= COALESCE((SELECT MAX(t.created_at) FROM deliveries AS t
                        WHERE t.alert_id = s.alert_id AND t.status = 'sent'), 0)
                   AND s.alert_id IN (",
            );
            let mut list = qb.separated(", ");
            for id in ids {
                list.push_bind(id);
            }
            qb.push(")");
            out.extend(
                qb.build()
                    .fetch_all(self.pool())
                    .await?
                    .iter()
                    .map(|r| r.get::<String, _>(0)),
            );
        }
        Ok(out)
    }

    async fn get_setting(&self, key: &str) -> Result<Option<Value>> {
        Ok(sqlx::query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(self.pool())
            .await?
            .map(|r| serde_json::from_str(r.get::<&str, _>(0)).unwrap_or(Value::Null)))
    }

    async fn put_setting(&self, key: &str, value: &Value, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(json_text(value))
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn held_digests(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT digest, MIN(next_attempt_at) FROM deliveries WHERE status IN ('held', 'sending') AND digest IS NOT NULL GROUP BY digest",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

impl SqliteStore {
    /// Marks the next due deliveries `sending` and returns them.
    async fn claim(&self, now: i64, limit: i64) -> Result<Vec<Delivery>> {
        let mut tx = self.write().await?;
        // A digest is claimed whole, however many alerts it holds, so it goes as one message.
        // A delivery waits while an earlier one for the same alert and channel is still to go
        // (outside its own digest): a retried fire must not arrive after its resolve. Waiting
        // rows are left out before the limit, or a few of them (a resolve behind a fire that
        // retries in ten minutes) would fill every claim and starve the other channels.
        // Only fixed SQL is put together here.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE deliveries AS d SET status = 'sending'
             WHERE d.status IN ('pending', 'held') AND (
                 d.id IN (SELECT f.id FROM deliveries AS f
                          WHERE f.status IN ('pending', 'held') AND f.next_attempt_at <= ?1 AND {f}
                          ORDER BY f.next_attempt_at LIMIT ?2)
                 OR d.digest IN (SELECT f.digest FROM deliveries AS f
                                 WHERE f.status = 'held' AND f.digest IS NOT NULL
                                   AND f.next_attempt_at <= ?1 AND {f}
                                 ORDER BY f.next_attempt_at LIMIT ?2))
               AND {d}
             RETURNING *",
            f = not_waiting("f"),
            d = not_waiting("d"),
        )))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out: Vec<Delivery> = rows.iter().map(delivery_row).collect();
        out.sort_by(|a, b| {
            a.next_attempt_at
                .cmp(&b.next_attempt_at)
                .then(a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// Records a round's outcomes in one write transaction.
    async fn record(&self, outcomes: &[(Vec<String>, DeliveryOutcome)]) -> Result<()> {
        let mut tx = self.write().await?;
        for (ids, outcome) in outcomes {
            for id in ids {
                let q = match outcome {
                DeliveryOutcome::Sent { at } => sqlx::query(
                    "UPDATE deliveries SET status = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?",
                )
                .bind(at),
                DeliveryOutcome::Retry { error, next_attempt_at, counts } => sqlx::query(
                    "UPDATE deliveries SET status = CASE WHEN digest IS NULL THEN 'pending' ELSE 'held' END,
                         next_attempt_at = ?, attempts = attempts + ?, last_error = ? WHERE id = ?",
                )
                .bind(next_attempt_at)
                .bind(i64::from(*counts))
                .bind(error),
                DeliveryOutcome::Dead { error, .. } => sqlx::query(
                    "UPDATE deliveries SET status = 'dead', attempts = attempts + 1, last_error = ? WHERE id = ?",
                )
                .bind(error),
            };
                q.bind(id).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
