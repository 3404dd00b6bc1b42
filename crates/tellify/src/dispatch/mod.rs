//! ④ Dispatch: which alert changes become which deliveries.
//!
//! For each alert change the engine commits, the dispatcher finds the subscriptions of the
//! alert's owner that want it (rules, severity, labels, `notify_on`, the `when` JavaScript),
//! checks their schedule in the owner's time zone and the silences, and plans one delivery
//! per subscription: pending, held for a digest, or silenced. The engine plans them before
//! its transaction begins (a slow `when` holds no write lock) and writes them in the same
//! transaction as the change, so a notification is never lost nor invented.
//!
//! It lives on the engine thread (its sandbox, for `when`, is single-threaded) and keeps the
//! notification settings in memory, reloaded when they change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Result;
use chrono_tz::Tz;
use serde_json::{Value, json};
use tellify_core::alert::{Alert, SYSTEM_OWNER};
use tellify_core::expr::{Arg, FnId, Limits, Sandbox};
use tellify_core::silence::{Matchers, Silence};
use tellify_core::subscription::{AlertFacts, Subscription, SubscriptionSpec, Trigger};
use tracing::warn;

use crate::store::{NewDelivery, Outbox, Store};

/// One alert change to notify about.
pub struct Transition<'a> {
    pub trigger: Trigger,
    pub alert: &'a Alert,
    pub at: i64,
}

struct Sub {
    id: Option<String>,
    owner: String,
    sub: Arc<Subscription>,
    when: Option<FnId>,
}

struct UserInfo {
    tz: Tz,
    admin: bool,
}

/// A subscription that may want an alert change: its owner, id (none for a rule's `notify:`),
/// spec and compiled `when`.
type Plan = (String, Option<String>, Arc<Subscription>, Option<FnId>);

/// Plans deliveries; see the module documentation.
pub struct Dispatcher {
    limits: Limits,
    subs: Vec<Sub>,
    /// (owner, rule) → the rule's `notify:` list, as subscriptions of its owner.
    rule_notify: HashMap<(String, String), Vec<Arc<Subscription>>>,
    /// (owner, name) → (kind, shared).
    channels: HashMap<(String, String), (String, bool)>,
    silences: Vec<(String, Silence)>,
    users: HashMap<String, UserInfo>,
    /// Subscription id → the open `every` digest period: (key, due).
    digests: HashMap<String, (String, i64)>,
    sandboxes: HashMap<String, Sandbox>,
}

impl Dispatcher {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            subs: Vec::new(),
            rule_notify: HashMap::new(),
            channels: HashMap::new(),
            silences: Vec::new(),
            users: HashMap::new(),
            digests: HashMap::new(),
            sandboxes: HashMap::new(),
        }
    }

    /// Reads subscriptions, channels, silences and users again.
    pub async fn reload(&mut self, store: &dyn Store, outbox: &dyn Outbox) -> Result<()> {
        self.users = store
            .list_users()
            .await?
            .into_iter()
            .map(|u| {
                let tz = u.timezone.parse().unwrap_or(chrono_tz::UTC);
                (
                    u.name.clone(),
                    UserInfo {
                        tz,
                        admin: u.is_admin(),
                    },
                )
            })
            .collect();
        self.channels = outbox
            .list_channels(None, false)
            .await?
            .into_iter()
            .map(|c| ((c.owner, c.name), (c.kind, c.shared)))
            .collect();
        self.silences = outbox
            .list_silences(None)
            .await?
            .into_iter()
            .filter_map(|s| {
                let matchers: Matchers = serde_json::from_value(s.matchers).ok()?;
                Silence::new(&s.owner, &matchers, s.starts_at, s.ends_at)
                    .ok()
                    .map(|x| (s.id, x))
            })
            .collect();
        self.sandboxes.clear();
        let mut subs = Vec::new();
        for row in outbox.list_subscriptions(None).await? {
            let Ok(spec) = serde_json::from_value::<SubscriptionSpec>(row.spec) else {
                warn!(message = "A stored subscription no longer parses; skipped.", id = %row.id);
                continue;
            };
            match self.compile(&row.owner, spec) {
                Ok((sub, when)) => subs.push(Sub {
                    id: Some(row.id),
                    owner: row.owner,
                    sub: Arc::new(sub),
                    when,
                }),
                Err(e) => {
                    warn!(message = "A stored subscription no longer loads; skipped.", id = %row.id, error = %e)
                }
            }
        }
        self.subs = subs;
        for (key, due) in outbox.held_digests().await? {
            if let Some((sub, _)) = key.split_once('@') {
                self.digests.insert(sub.to_owned(), (key.clone(), due));
            }
        }
        Ok(())
    }

    fn compile(
        &mut self,
        owner: &str,
        spec: SubscriptionSpec,
    ) -> Result<(Subscription, Option<FnId>), String> {
        let when = spec.when.clone();
        let sub = Subscription::new(spec)?;
        let when = match when {
            Some(src) => {
                let sandbox = match self.sandboxes.entry(owner.to_owned()) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(Sandbox::new(self.limits).map_err(|e| e.to_string())?)
                    }
                };
                Some(
                    sandbox
                        .compile_expr(&src, &["alert"])
                        .map_err(|e| format!("`when`: {e}"))?,
                )
            }
            None => None,
        };
        Ok((sub, when))
    }

    /// Checks a subscription as the API saves it.
    pub fn check(limits: Limits, spec: &SubscriptionSpec) -> Result<(), String> {
        Subscription::new(spec.clone())?;
        if let Some(src) = &spec.when {
            let mut sandbox = Sandbox::new(limits).map_err(|e| e.to_string())?;
            sandbox
                .compile_expr(src, &["alert"])
                .map_err(|e| format!("`when`: {e}"))?;
        }
        Ok(())
    }

    /// Records a rule's `notify:` list (empty to forget it).
    pub fn set_rule_notify(&mut self, owner: &str, rule: &str, channels: &[String]) {
        let key = (owner.to_owned(), rule.to_owned());
        // A rule's `notify:` list is a subscription of its owner to that rule, to each channel.
        let subs: Vec<Arc<Subscription>> = channels
            .iter()
            .filter_map(|channel| {
                Subscription::new(SubscriptionSpec {
                    channel: channel.clone(),
                    rules: vec![],
                    min_severity: None,
                    labels: BTreeMap::new(),
                    when: None,
                    schedule: None,
                    digest: None,
                    notify_on: vec![
                        Trigger::Fire,
                        Trigger::Resolve,
                        Trigger::Disable,
                        Trigger::Repeat,
                    ],
                    format: None,
                    template: None,
                })
                .ok()
                .map(Arc::new)
            })
            .collect();
        if subs.is_empty() {
            self.rule_notify.remove(&key);
        } else {
            self.rule_notify.insert(key, subs);
        }
    }

    /// The channel a subscription of `owner` names: their own, else a shared one.
    fn channel(&self, owner: &str, name: &str) -> Option<(String, String)> {
        if let Some((kind, _)) = self.channels.get(&(owner.to_owned(), name.to_owned())) {
            return Some((owner.to_owned(), kind.clone()));
        }
        self.channels
            .iter()
            .find(|((_, n), (_, shared))| n == name && *shared)
            .map(|((o, _), (kind, _))| (o.clone(), kind.clone()))
    }

    pub fn silenced(&self, alert: &Alert, at: i64) -> bool {
        self.silences.iter().any(|(_, s)| {
            let admin = self.users.get(&s.owner).is_some_and(|u| u.admin);
            s.mutes(
                admin,
                &alert.owner,
                &alert.rule,
                &alert.key,
                &alert.content.labels,
                at,
            )
        })
    }

    /// The next time a silence ends, after `now`.
    pub fn next_silence_end(&self, now: i64) -> Option<i64> {
        self.silences
            .iter()
            .map(|(_, s)| s.ends_at)
            .filter(|t| *t > now)
            .min()
    }

    /// Whether a silence ending in (`from`, `to`] muted `alert` then, and nothing mutes it at `to`.
    pub fn released(&self, alert: &Alert, from: i64, to: i64) -> bool {
        let ended = self.silences.iter().any(|(_, s)| {
            let admin = self.users.get(&s.owner).is_some_and(|u| u.admin);
            s.ends_at > from
                && s.ends_at <= to
                && s.mutes(
                    admin,
                    &alert.owner,
                    &alert.rule,
                    &alert.key,
                    &alert.content.labels,
                    s.ends_at - 1,
                )
        });
        ended && !self.silenced(alert, to)
    }

    /// Plans the deliveries for some alert changes.
    /// `told` are the channels already told that an alert fired: a resolve to them is sent even
    /// during a silence, so a receiver (PagerDuty) does not keep an incident open.
    pub fn plan(
        &mut self,
        transitions: &[Transition<'_>],
        now: i64,
        told: &crate::store::Told,
    ) -> Vec<NewDelivery> {
        let mut out = Vec::new();
        for t in transitions {
            let alert = t.alert;
            let facts = AlertFacts {
                rule: &alert.rule,
                severity: alert.content.severity,
                labels: &alert.content.labels,
            };
            let snapshot =
                serde_json::to_value(crate::wire::Alert::from(alert)).unwrap_or(Value::Null);
            let silenced = self.silenced(alert, t.at);
            // Tellify's own alerts go to every admin's subscriptions that want them.
            let system = alert.owner == SYSTEM_OWNER;
            // The rule's `notify:` subscriptions, then the subscriptions of the owner (or, for
            // a system alert, of the admins), each with its owner (shared handles: planning
            // below needs `self` mutably).
            let mut plans: Vec<Plan> = self
                .rule_notify
                .get(&(alert.owner.clone(), alert.rule.clone()))
                .into_iter()
                .flatten()
                .map(|s| (alert.owner.clone(), None, s.clone(), None))
                .collect();
            plans.extend(
                self.subs
                    .iter()
                    .filter(|s| {
                        s.owner == alert.owner
                            || (system && self.users.get(&s.owner).is_some_and(|u| u.admin))
                    })
                    .map(|s| (s.owner.clone(), s.id.clone(), s.sub.clone(), s.when)),
            );
            for (sub_owner, sub_id, sub, when) in plans {
                // A disabled rule is news to anyone told about resolutions.
                let wants = sub.matches(&facts, t.trigger)
                    || (t.trigger == Trigger::Disable && sub.matches(&facts, Trigger::Resolve));
                // Schedules are in the time zone of the subscription's owner.
                let tz = self.users.get(&sub_owner).map_or(chrono_tz::UTC, |u| u.tz);
                if !wants || !sub.awake(t.at, tz) {
                    continue;
                }
                if let Some(f) = when {
                    let Some(sandbox) = self.sandboxes.get_mut(&sub_owner) else {
                        continue;
                    };
                    match sandbox.call_bool(f, &[Arg::Json(&snapshot)]) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            warn!(message = "A subscription's `when` failed; not notified.", subscription = ?sub_id, error = %e);
                            continue;
                        }
                    }
                }
                let mut delivery = NewDelivery {
                    id: uuid::Uuid::now_v7().to_string(),
                    alert_id: alert.id.clone(),
                    owner: sub_owner.clone(),
                    subscription_id: sub_id.clone(),
                    channel_owner: sub_owner.clone(),
                    channel: sub.spec.channel.clone(),
                    channel_kind: String::new(),
                    trigger: t.trigger,
                    format: sub
                        .spec
                        .format
                        .map(|f| json!(f).as_str().unwrap_or_default().to_owned()),
                    status: "pending".into(),
                    next_attempt_at: now,
                    digest: None,
                    changed_at: t.at,
                    last_error: None,
                    snapshot: snapshot.clone(),
                    template: sub.spec.template.clone(),
                };
                match self.channel(&sub_owner, &sub.spec.channel) {
                    Some((owner, kind)) => {
                        delivery.channel_owner = owner;
                        delivery.channel_kind = kind;
                    }
                    None => {
                        // Visible in the dead deliveries rather than silently dropped.
                        delivery.status = "dead".into();
                        delivery.last_error =
                            Some(format!("there is no channel named `{}`", sub.spec.channel));
                        out.push(delivery);
                        continue;
                    }
                }
                let closes_what_was_told = matches!(t.trigger, Trigger::Resolve | Trigger::Disable)
                    && told.contains(&(
                        alert.id.clone(),
                        delivery.channel_owner.clone(),
                        delivery.channel.clone(),
                    ));
                if silenced && !closes_what_was_told {
                    delivery.status = "silenced".into();
                } else if let (Some(id), Some(_)) = (&sub_id, &sub.spec.digest) {
                    let (key, due) = self.digest_slot(id, &sub, t.at, tz);
                    delivery.status = "held".into();
                    delivery.digest = Some(key);
                    delivery.next_attempt_at = due;
                }
                out.push(delivery);
            }
        }
        out
    }

    /// The digest a change at `at` joins: the open `every` period, or the next `at` time.
    fn digest_slot(&mut self, sub_id: &str, sub: &Subscription, at: i64, tz: Tz) -> (String, i64) {
        if sub.spec.digest.as_ref().is_some_and(|d| d.every.is_some())
            && let Some((key, due)) = self.digests.get(sub_id)
            && *due > at
        {
            return (key.clone(), *due);
        }
        let due = sub.digest_due(at, None, tz).unwrap_or(at);
        let key = format!("{sub_id}@{due}");
        self.digests.insert(sub_id.to_owned(), (key.clone(), due));
        (key, due)
    }
}
