//! ⑤ Notify: the delivery worker and one notifier per channel kind.
//!
//! The worker takes due deliveries from the outbox, sends each through its channel's
//! [`Notifier`], and records the outcome: sent; retried later with exponential backoff and
//! jitter (honouring `Retry-After`); or dead after the last attempt. A circuit breaker per
//! channel stops hammering a receiver that keeps failing. Deliveries are sent at least once:
//! a crash between sending and recording leaves them `sending`, and they go again at start.

pub mod amqp;
pub mod breaker;
pub mod channel;
pub mod email;
pub mod kafka;
pub mod message;
pub mod mqtt;
pub mod nats;
pub mod pagerduty;
pub mod pool;
pub mod redis;
pub mod slack;
pub mod sms;
pub mod teams;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use rand::Rng;
use serde_json::{Map, Value};
use tellify_core::subscription::Trigger;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::crypto::SecretBox;
use crate::metrics::{DeliveryLabel, Metrics};
use crate::store::{ChannelRow, Delivery, DeliveryOutcome, Outbox};
use crate::wire::Alert;
pub use breaker::Breakers;
pub use message::Notification;

/// Why a send failed, and whether trying again can help.
#[derive(Debug, Clone)]
pub struct NotifyError {
    pub message: String,
    pub retryable: bool,
    pub retry_after: Option<Duration>,
}

impl NotifyError {
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    /// Classifies an HTTP answer: 429 and 5xx (and 408) are worth retrying, other 4xx not.
    pub fn from_status(
        status: reqwest::StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &str,
    ) -> Self {
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let retryable =
            status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
        Self {
            message: format!("{status}: {}", message::truncate(body.trim(), 300)),
            retryable,
            retry_after,
        }
    }

    /// A transport failure (refused, reset, timed out): the receiver may be back soon.
    pub fn from_reqwest(e: &reqwest::Error) -> Self {
        // reqwest's message names the URL, which may hold a secret (a webhook URL): drop it.
        if e.is_builder() {
            // A request that cannot be built (say, a header name that is not one) never will be.
            return Self::permanent("the request could not be built from the channel's settings");
        }
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "the request failed"
        };
        Self::retry(kind)
    }
}

/// Sends notifications through one channel: made by its kind's settings struct
/// ([`channel::Settings::notifier`]).
#[async_trait::async_trait]
pub trait Notifier: Send + Sync {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError>;
}

/// What notifiers send with, shared by all: the HTTP client, the server's SMTP settings, and
/// the clients kept per connection configuration ([`pool`]).
#[derive(Default)]
pub struct Senders {
    pub http: reqwest::Client,
    pub smtp: email::SharedSmtp,
    pub smtp_transports: email::Transports,
    pub nats: nats::Clients,
    pub redis: redis::Clients,
    pub mqtt: mqtt::Clients,
    pub amqp: amqp::Clients,
    pub kafka: kafka::Clients,
}

impl Senders {
    pub fn new(http: reqwest::Client, smtp: email::SharedSmtp) -> Self {
        Self {
            http,
            smtp,
            ..Self::default()
        }
    }

    /// Drops the kept clients that have been idle too long ([`pool::IDLE`]).
    pub fn sweep(&self) {
        self.smtp_transports.sweep();
        self.nats.sweep();
        self.redis.sweep();
        self.mqtt.sweep();
        self.amqp.sweep();
        self.kafka.sweep();
    }

    /// The notifier of a channel of `kind` with `settings` as stored (secrets opened).
    pub fn notifier(
        &self,
        kind: &str,
        settings: &Map<String, Value>,
    ) -> Result<Box<dyn Notifier>, NotifyError> {
        let parsed = channel::Settings::parse(kind, settings).map_err(|e| {
            NotifyError::permanent(format!("the channel's settings are invalid: {e}"))
        })?;
        Ok(parsed.notifier(self))
    }
}

/// Sends one request of a notification with Tellify's user agent and an idempotency key, and
/// turns a transport failure or a non-2xx answer into an error that says whether to retry.
pub async fn send_http(
    req: reqwest::RequestBuilder,
    idempotency_key: &str,
) -> Result<reqwest::Response, NotifyError> {
    let resp = req
        .header("Idempotency-Key", idempotency_key)
        .header(
            reqwest::header::USER_AGENT,
            concat!("Tellify/", env!("CARGO_PKG_VERSION")),
        )
        .send()
        .await
        .map_err(|e| NotifyError::from_reqwest(&e))?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = resp.text().await.unwrap_or_default();
    Err(NotifyError::from_status(status, &headers, &text))
}

/// The outcome of a notification that takes several requests (one per recipient, or one per
/// alert where the receiver knows no digest), sent in order: it is sent only if every request
/// was.
///
/// A retryable failure stops the rest: the receiver is down or limiting us, and the whole
/// notification goes again later (so the requests that did pass are repeated: at least once).
/// A refusal does not stop the rest, so that one bad recipient or event does not silence the
/// others; the notification then fails for good, naming what was refused.
#[derive(Debug, Default)]
pub struct Fanout {
    refused: Vec<String>,
}

impl Fanout {
    /// Records how the request for `what` went; a retryable failure comes back at once.
    pub fn record(&mut self, what: &str, sent: Result<(), NotifyError>) -> Result<(), NotifyError> {
        match sent {
            Ok(()) => Ok(()),
            Err(e) if e.retryable => Err(NotifyError {
                message: format!("{what}: {}", e.message),
                ..e
            }),
            Err(e) => {
                self.refused.push(format!("{what}: {}", e.message));
                Ok(())
            }
        }
    }

    pub fn finish(self) -> Result<(), NotifyError> {
        if self.refused.is_empty() {
            Ok(())
        } else {
            Err(NotifyError::permanent(self.refused.join("; ")))
        }
    }
}

/// Retry policy of the outbox.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Attempts before a delivery is dead.
    pub max_attempts: i64,
    /// The first retry's delay; each next one doubles, with ±20% jitter.
    pub base: Duration,
    pub max_delay: Duration,
    /// Consecutive failures of a channel that open its breaker, and for how long.
    pub breaker_failures: u32,
    pub breaker_open: Duration,
}

impl Default for Policy {
    /// Ten attempts over about an hour: 7s, 14s, … doubling.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base: Duration::from_secs(7),
            max_delay: Duration::from_secs(30 * 60),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// Channel breakers that open as this policy says.
    pub fn breakers(&self) -> Breakers {
        Breakers::new(self.breaker_failures, self.breaker_open)
    }

    /// The delay before attempt `attempts + 1`, after `attempts` failures.
    pub fn backoff(&self, attempts: i64, retry_after: Option<Duration>) -> Duration {
        let exp = u32::try_from(attempts.clamp(1, 30) - 1).unwrap_or(0);
        let raw = self
            .base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.max_delay);
        let jitter = rand::rng().random_range(0.8..1.2);
        let delay = raw.mul_f64(jitter);
        // A receiver may ask for any wait; past the longest backoff it is not honoured (and a
        // huge one would overflow the next attempt's time).
        retry_after.map_or(delay, |r| delay.max(r.min(self.max_delay)))
    }
}

/// The delivery worker.
pub struct Worker {
    pub outbox: Arc<dyn Outbox>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub keys: SecretBox,
    pub senders: Arc<Senders>,
    pub breakers: Arc<Breakers>,
    pub policy: Policy,
    pub wake: Arc<Notify>,
}

impl Worker {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        match self.outbox.reset_sending().await {
            Ok(0) => {}
            Ok(n) => info!(
                message = "Deliveries interrupted by a stop go again.",
                deliveries = n
            ),
            Err(e) => {
                warn!(message = "Failed to reset interrupted deliveries.", error = %format!("{e:#}"))
            }
        }
        // Once told to stop (after the engine has stopped), the worker sends what is due and
        // then returns: the last alerts before a stop go out, and nothing stays `sending`.
        let mut stopping = false;
        loop {
            let now = self.clock.now();
            // Breakers half-open as time passes, not only when a send changes them; idle
            // clients close even if their kind sends nothing more.
            self.breakers.publish(&self.metrics, now);
            self.senders.sweep();
            let claimed = match self.outbox.claim_deliveries(now, 64).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(message = "Failed to read due deliveries.", error = %format!("{e:#}"));
                    Vec::new()
                }
            };
            if !claimed.is_empty() {
                self.send_all(claimed).await;
                continue;
            }
            if stopping {
                return;
            }
            // Sleep until the next is due (at most a second: the clock may be a test's), or
            // until the engine or a retry request says there is work.
            let wait = match self.outbox.next_due().await {
                Ok(Some(due)) => (due - self.clock.now()).clamp(0, 1_000),
                _ => 1_000,
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => stopping = true,
            }
        }
    }

    /// Sends claimed deliveries: digests grouped into one message, the rest one by one, in
    /// parallel across channels.
    async fn send_all(&self, claimed: Vec<Delivery>) {
        let mut groups: Vec<Vec<Delivery>> = Vec::new();
        let mut by_digest: HashMap<String, usize> = HashMap::new();
        for d in claimed {
            match d.digest.clone() {
                Some(key) => match by_digest.get(&key) {
                    Some(&i) => groups[i].push(d),
                    None => {
                        by_digest.insert(key, groups.len());
                        groups.push(vec![d]);
                    }
                },
                None => groups.push(vec![d]),
            }
        }
        let now = self.clock.now();
        // Every outcome of this round is recorded in one transaction: one commit (and one turn
        // at the database) per round instead of one per delivery.
        let mut outcomes: Vec<(Vec<String>, DeliveryOutcome)> = Vec::with_capacity(groups.len());
        // Each channel of the round is read once.
        let mut channels: HashMap<(String, String), Result<Option<ChannelRow>, ()>> =
            HashMap::new();
        for group in &groups {
            let key = (group[0].channel_owner.clone(), group[0].channel.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = channels.entry(key) {
                let (owner, name) = slot.key();
                let row = self.outbox.get_channel(owner, name).await.map_err(|_| ());
                slot.insert(row);
            }
        }
        let channels = &channels;
        let mut sends = Vec::new();
        for group in groups {
            let first = &group[0];
            let channel = (first.channel_owner.clone(), first.channel.clone());
            if let Some(open_until) = self.breakers.open_until(&channel, now) {
                // The channel is failing: wait for the breaker without spending an attempt.
                let ids: Vec<String> = group.iter().map(|d| d.id.clone()).collect();
                let outcome = DeliveryOutcome::Retry {
                    error: "circuit breaker open: the channel keeps failing".into(),
                    next_attempt_at: open_until,
                    counts: false,
                };
                self.count(&outcome, &group);
                outcomes.push((ids, outcome));
                continue;
            }
            sends.push(async move {
                let row = channels.get(&channel).cloned().unwrap_or(Err(()));
                let result = self.send_group(row, &group).await;
                (channel, group, result)
            });
        }
        for (channel, group, result) in futures::future::join_all(sends).await {
            let now = self.clock.now();
            let ids: Vec<String> = group.iter().map(|d| d.id.clone()).collect();
            let attempts = group.iter().map(|d| d.attempts).max().unwrap_or(0) + 1;
            let outcome = match result {
                Ok(()) => {
                    self.breakers.succeeded(&channel);
                    DeliveryOutcome::Sent { at: now }
                }
                Err(e) => {
                    // Only failures of the receiver count against it, not refusals of one message.
                    if e.retryable {
                        self.breakers.failed(&channel, now);
                    }
                    if e.retryable && attempts < self.policy.max_attempts {
                        let delay = self.policy.backoff(attempts, e.retry_after);
                        DeliveryOutcome::Retry {
                            error: e.message,
                            next_attempt_at: now + delay.as_millis() as i64,
                            counts: true,
                        }
                    } else {
                        DeliveryOutcome::Dead {
                            error: e.message,
                            at: now,
                        }
                    }
                }
            };
            self.count(&outcome, &group);
            outcomes.push((ids, outcome));
        }
        // A failed write (a full disk, a lock) is tried again until it succeeds: the round's
        // deliveries stay `sending` meanwhile, and given up they would wait for a restart.
        // Each write is its own transaction on a fresh connection after a failure, so a retry
        // starts clean. (A process stopped meanwhile sends them again: at least once.)
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.outbox.finish_deliveries(&outcomes).await {
                Ok(()) => break,
                Err(e) => {
                    if attempt == 1 {
                        warn!(message = "Failed to record delivery outcomes; retrying until the store takes them.", error = %format!("{e:#}"));
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Counts a round's outcome for one message in the metrics.
    fn count(&self, outcome: &DeliveryOutcome, group: &[Delivery]) {
        let status = match outcome {
            DeliveryOutcome::Sent { at } => {
                for d in group {
                    self.metrics
                        .delivery_seconds
                        .observe((at - d.changed_at).max(0) as f64 / 1000.0);
                }
                "sent"
            }
            DeliveryOutcome::Retry { counts: true, .. } => "retry",
            DeliveryOutcome::Retry { .. } => "deferred",
            DeliveryOutcome::Dead { .. } => "dead",
        };
        if let Some(d) = group.first() {
            self.metrics
                .deliveries
                .get_or_create(&DeliveryLabel {
                    channel_kind: d.channel_kind.clone(),
                    status: status.into(),
                })
                .inc_by(group.len() as u64);
        }
    }

    async fn send_group(
        &self,
        channel: Result<Option<ChannelRow>, ()>,
        group: &[Delivery],
    ) -> Result<(), NotifyError> {
        let first = &group[0];
        let channel = channel
            .map_err(|_| NotifyError::retry("the channel could not be read"))?
            .ok_or_else(|| {
                NotifyError::permanent(format!("the channel `{}` no longer exists", first.channel))
            })?;
        if channel::kind(&channel.kind).is_none() {
            return Err(NotifyError::permanent(format!(
                "`{}` channels cannot send in this version",
                channel.kind
            )));
        }
        let settings = match channel.settings {
            Value::Object(m) => channel::open(&channel.kind, m, &self.keys).map_err(|_| {
                NotifyError::permanent("the channel's secrets do not open with this server's key")
            })?,
            _ => return Err(NotifyError::permanent("the channel's settings are damaged")),
        };
        let alerts: Vec<Alert> = group
            .iter()
            .filter_map(|d| serde_json::from_value(d.snapshot.clone()).ok())
            .collect();
        if alerts.is_empty() {
            return Err(NotifyError::permanent(
                "the delivery's alert snapshot is damaged",
            ));
        }
        let parse = |t: &str| match t {
            "resolve" => Trigger::Resolve,
            "ack" => Trigger::Ack,
            "repeat" => Trigger::Repeat,
            "disable" => Trigger::Disable,
            _ => Trigger::Fire,
        };
        let trigger = parse(&first.trigger);
        // Alerts whose snapshot failed to read were dropped above; keep triggers in step.
        let triggers: Vec<Trigger> = group
            .iter()
            .filter(|d| serde_json::from_value::<Alert>(d.snapshot.clone()).is_ok())
            .map(|d| parse(&d.trigger))
            .collect();
        let n = Notification {
            id: first.id.clone(),
            trigger,
            alerts,
            digest: first.digest.is_some(),
            triggers,
            format: first
                .format
                .as_deref()
                .and_then(|f| serde_json::from_value(Value::String(f.to_owned())).ok()),
            template: first.template.clone(),
        };
        let notifier = self.senders.notifier(&channel.kind, &settings)?;
        send_in_time(notifier.as_ref(), &n).await
    }
}

/// The longest one send may take, whoever sends (the worker, a channel test): a receiver that
/// accepts a connection and then never answers fails it, to be retried.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `n`, failing (retryably) after [`SEND_TIMEOUT`].
pub async fn send_in_time(notifier: &dyn Notifier, n: &Notification) -> Result<(), NotifyError> {
    match tokio::time::timeout(SEND_TIMEOUT, notifier.send(n)).await {
        Ok(result) => result,
        Err(_) => Err(NotifyError::retry(format!(
            "timed out after {} s",
            SEND_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        let p = Policy::default();
        for attempts in 1..=9 {
            let d = p.backoff(attempts, None).as_secs_f64();
            let raw = (7.0 * 2f64.powi(attempts as i32 - 1)).min(1800.0);
            assert!(d >= raw * 0.8 && d <= raw * 1.2, "attempt {attempts}: {d}s");
        }
        assert!(p.backoff(1, Some(Duration::from_secs(120))) >= Duration::from_secs(120));
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(u64::MAX))),
            p.max_delay
        );
        // Nine gaps between ten attempts: about an hour.
        let total: f64 = (1..=9).map(|a| (7.0 * 2f64.powi(a - 1)).min(1800.0)).sum();
        assert!((3000.0..4500.0).contains(&total), "{total}");
    }
}
