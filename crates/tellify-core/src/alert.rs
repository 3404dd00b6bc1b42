//! Alerts: their statuses and severities, the changes the evaluator decides, and the alert
//! those changes make ([`Alert::apply`]: the one fold, which the engine's commits and dry runs
//! share; the store writes what it made).
//!
//! The evaluator names an alert by (owner, rule, key) and gives it an id. A [`Change`] is a
//! decision, not yet a fact: the engine makes it one by committing what [`Alert::apply`] made.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::subscription::Trigger;

/// The owner of Tellify's own alerts (`tellify.storage.failing`, …). No user can have this
/// name (user names are letters, digits and `._-@`); admins see these alerts and their
/// subscriptions receive them.
pub const SYSTEM_OWNER: &str = "tellify:system";

/// How bad an alert is, from least to most.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    pub const ALL: [Severity; 4] = [
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown severity `{s}` (critical, error, warning, info)"))
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// A threshold's condition holds but has not yet held for `for`.
    Pending,
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Status::Pending, Status::Firing, Status::Resolved]
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown status `{s}` (pending, firing, resolved)"))
    }
}

/// An alert's identity: its id, and the (owner, rule, key) it is the one open alert for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct AlertKey {
    /// Given by the evaluator's id generator when the alert opens.
    pub id: String,
    pub owner: String,
    pub rule: String,
    pub key: String,
}

/// What an alert says: rendered when it opens; its summary again as it folds events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Content {
    pub severity: Severity,
    pub summary: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    pub value: Option<f64>,
    pub labels: BTreeMap<String, String>,
    pub links: BTreeMap<String, String>,
    /// The source of the event that opened it.
    pub source: String,
    /// The pipeline run it belongs to, when its event carried `run`.
    pub run: Option<String>,
}

/// Why an alert was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolveReason {
    /// The condition stopped holding (threshold, count), `resolve_when` held, or a heartbeat came.
    Condition,
    /// No matching event for `resolve_after`.
    Expired,
    /// A script called `ctx.resolve`.
    Script,
    /// The rule was disabled.
    RuleDisabled,
    /// The rule was deleted.
    RuleRemoved,
    /// The rule's kind or keys changed, so its open alerts could never close.
    RuleChanged,
    /// A person resolved it.
    Manual,
}

impl ResolveReason {
    pub fn message(self) -> &'static str {
        match self {
            ResolveReason::Condition => "condition no longer holds",
            ResolveReason::Expired => "no matching event within resolve_after",
            ResolveReason::Script => "resolved by the rule's script",
            ResolveReason::RuleDisabled => "rule disabled",
            ResolveReason::RuleRemoved => "rule removed",
            ResolveReason::RuleChanged => "rule changed",
            ResolveReason::Manual => "resolved by hand",
        }
    }
}

/// One decision of the evaluator about one alert, at time `at` (epoch ms).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A new alert, pending (threshold waiting for `for`) or firing.
    Open {
        alert: AlertKey,
        status: Status,
        at: i64,
        event_time: i64,
        content: Content,
    },
    /// A pending alert has held for `for` and fires now.
    Fire { alert: AlertKey, at: i64 },
    /// Another matching event folded into the open alert: count and last-seen grow, and the
    /// summary, re-rendered with this event and value, replaces the one before.
    Fold {
        alert: AlertKey,
        at: i64,
        event_time: i64,
        value: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<String>,
    },
    /// Still firing and not acknowledged after the rule's `repeat_every`: notify again.
    Repeat { alert: AlertKey, at: i64 },
    /// The alert is over. `summary`: the rule's `resolve_summary`, rendered, when the rule
    /// itself resolved it and has one.
    Resolve {
        alert: AlertKey,
        at: i64,
        reason: ResolveReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<String>,
    },
    /// A pending alert whose condition stopped before `for`: it never fired, so it goes.
    Discard { alert: AlertKey, at: i64 },
}

impl Change {
    pub fn alert(&self) -> &AlertKey {
        match self {
            Change::Open { alert, .. }
            | Change::Fire { alert, .. }
            | Change::Fold { alert, .. }
            | Change::Repeat { alert, .. }
            | Change::Resolve { alert, .. }
            | Change::Discard { alert, .. } => alert,
        }
    }

    /// When it was decided (engine time, epoch ms).
    pub fn at(&self) -> i64 {
        match self {
            Change::Open { at, .. }
            | Change::Fire { at, .. }
            | Change::Fold { at, .. }
            | Change::Repeat { at, .. }
            | Change::Resolve { at, .. }
            | Change::Discard { at, .. } => *at,
        }
    }
}

/// An alert: what its changes made of it, as stored and shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: String,
    pub owner: String,
    pub rule: String,
    pub key: String,
    pub status: Status,
    /// What it says: as it opened, with the summary and value of the last event folded in.
    pub content: Content,
    /// When it opened (in-time), epoch ms.
    pub first_seen: i64,
    /// When it started firing (for thresholds, after `for`).
    pub fired_at: Option<i64>,
    pub last_seen: i64,
    /// When it was resolved (out-time).
    pub resolved_at: Option<i64>,
    /// Why, in words ([`ResolveReason::message`]; `superseded` when the store closed it).
    pub resolve_reason: Option<String>,
    /// How many matching events it holds.
    pub count: i64,
    pub acked_by: Option<String>,
    pub acked_at: Option<i64>,
}

/// What a change did to an alert, when it did something.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effect {
    /// The notification the change calls for.
    pub trigger: Option<Trigger>,
    /// The line the alert's history gains: the status it names and its message.
    pub history: Option<(&'static str, String)>,
}

impl Alert {
    /// The alert's identity.
    pub fn alert_key(&self) -> AlertKey {
        AlertKey {
            id: self.id.clone(),
            owner: self.owner.clone(),
            rule: self.rule.clone(),
            key: self.key.clone(),
        }
    }

    /// Applies one change to the alert it names (`None`: there is none, or no longer). Returns
    /// what it did, or `None` when it did nothing: a fire of an alert not pending, a resolve of
    /// one already resolved, any change but an open to no alert.
    pub fn apply(alert: &mut Option<Alert>, change: &Change) -> Option<Effect> {
        match change {
            Change::Open {
                alert: key,
                status,
                at,
                content,
                ..
            } => {
                let opened = Alert::opened(key, *status, *at, content);
                let effect = Effect {
                    trigger: (*status == Status::Firing).then_some(Trigger::Fire),
                    history: Some((status.as_str(), opened.content.summary.clone())),
                };
                *alert = Some(opened);
                Some(effect)
            }
            // A pending alert that never fired leaves no trace.
            Change::Discard { .. } => alert.take().map(|_| Effect::default()),
            Change::Fire { at, .. } => {
                let a = alert.as_mut().filter(|a| a.status == Status::Pending)?;
                a.status = Status::Firing;
                a.fired_at = Some(*at);
                Some(Effect {
                    trigger: Some(Trigger::Fire),
                    history: Some((Status::Firing.as_str(), a.content.summary.clone())),
                })
            }
            Change::Fold {
                at, value, summary, ..
            } => {
                let a = alert.as_mut()?;
                a.count += 1;
                a.last_seen = a.last_seen.max(*at);
                if value.is_some() {
                    a.content.value = *value;
                }
                if let Some(summary) = summary {
                    a.content.summary.clone_from(summary);
                }
                Some(Effect::default())
            }
            // A repeat changes nothing stored; it is there for its notification.
            Change::Repeat { .. } => alert.as_ref().map(|_| Effect {
                trigger: Some(Trigger::Repeat),
                history: None,
            }),
            Change::Resolve {
                at,
                reason,
                summary,
                ..
            } => {
                let a = alert.as_mut().filter(|a| a.status != Status::Resolved)?;
                a.status = Status::Resolved;
                a.resolved_at = Some(*at);
                a.resolve_reason = Some(reason.message().to_owned());
                if let Some(summary) = summary {
                    a.content.summary.clone_from(summary);
                }
                let trigger = if *reason == ResolveReason::RuleDisabled {
                    Trigger::Disable
                } else {
                    Trigger::Resolve
                };
                // The history says what the rule said on resolving, else why it resolved.
                let message = summary.as_deref().unwrap_or(reason.message()).to_owned();
                Some(Effect {
                    trigger: Some(trigger),
                    history: Some((Status::Resolved.as_str(), message)),
                })
            }
        }
    }

    /// A person acknowledges the alert: once, and only while it is open.
    pub fn acknowledge(&mut self, by: &str, at: i64) -> Option<Effect> {
        if self.status == Status::Resolved || self.acked_at.is_some() {
            return None;
        }
        self.acked_by = Some(by.to_owned());
        self.acked_at = Some(at);
        Some(Effect {
            trigger: Some(Trigger::Ack),
            history: Some(("acked", format!("acknowledged by {by}"))),
        })
    }

    fn opened(key: &AlertKey, status: Status, at: i64, content: &Content) -> Alert {
        Alert {
            id: key.id.clone(),
            owner: key.owner.clone(),
            rule: key.rule.clone(),
            key: key.key.clone(),
            status,
            content: content.clone(),
            first_seen: at,
            fired_at: (status == Status::Firing).then_some(at),
            last_seen: at,
            resolved_at: None,
            resolve_reason: None,
            count: 1,
            acked_by: None,
            acked_at: None,
        }
    }
}

/// Reads an alert's number from a JavaScript result: numbers, numeric strings and booleans.
pub fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AlertKey {
        AlertKey {
            id: "a1".into(),
            owner: "ann".into(),
            rule: "disk".into(),
            key: "h1".into(),
        }
    }

    fn content() -> Content {
        Content {
            severity: Severity::Critical,
            summary: "h1 at 91%".into(),
            body: "full".into(),
            value: Some(91.0),
            labels: [("site".to_owned(), "berlin".to_owned())].into(),
            links: BTreeMap::new(),
            source: "disk".into(),
            run: Some("r1".into()),
        }
    }

    fn open(status: Status) -> Option<Alert> {
        let mut alert = None;
        let effect = Alert::apply(
            &mut alert,
            &Change::Open {
                alert: key(),
                status,
                at: 1_000,
                event_time: 900,
                content: content(),
            },
        );
        let fires = (status == Status::Firing).then_some(Trigger::Fire);
        assert_eq!(
            effect,
            Some(Effect {
                trigger: fires,
                history: Some((status.as_str(), "h1 at 91%".to_owned())),
            })
        );
        alert
    }

    #[test]
    fn open_makes_the_alert_from_its_content() {
        let a = open(Status::Firing).expect("opened");
        assert_eq!((a.id.as_str(), a.owner.as_str()), ("a1", "ann"));
        assert_eq!((a.rule.as_str(), a.key.as_str()), ("disk", "h1"));
        assert_eq!((a.status, a.count), (Status::Firing, 1));
        assert_eq!(a.content, content());
        assert_eq!(
            (a.first_seen, a.last_seen, a.fired_at),
            (1_000, 1_000, Some(1_000))
        );
        assert_eq!((a.resolved_at, a.resolve_reason.as_deref()), (None, None));
        assert_eq!((a.acked_by.as_deref(), a.acked_at), (None, None));
        assert_eq!(a.alert_key(), key());
        let pending = open(Status::Pending).expect("opened");
        assert_eq!((pending.status, pending.fired_at), (Status::Pending, None));
    }

    #[test]
    fn fire_fires_a_pending_alert_only() {
        let mut alert = open(Status::Pending);
        let fire = Change::Fire {
            alert: key(),
            at: 2_000,
        };
        assert_eq!(
            Alert::apply(&mut alert, &fire),
            Some(Effect {
                trigger: Some(Trigger::Fire),
                history: Some(("firing", "h1 at 91%".to_owned())),
            })
        );
        let a = alert.clone().expect("open");
        assert_eq!((a.status, a.fired_at), (Status::Firing, Some(2_000)));
        // Firing already: nothing more.
        assert_eq!(Alert::apply(&mut alert, &fire), None);
        assert_eq!(alert.expect("open"), a);
        assert_eq!(Alert::apply(&mut None, &fire), None);
    }

    #[test]
    fn fold_counts_and_takes_the_new_value_and_re_rendered_summary() {
        let mut alert = open(Status::Firing);
        let fold = |at, value, summary: Option<&str>| Change::Fold {
            alert: key(),
            at,
            event_time: at,
            value,
            summary: summary.map(str::to_owned),
        };
        let effect = Alert::apply(&mut alert, &fold(3_000, Some(95.0), Some("h1 at 95%")));
        assert_eq!(effect, Some(Effect::default()));
        // No value and no summary keep the last ones; last-seen never goes back.
        Alert::apply(&mut alert, &fold(2_500, None, None));
        let a = alert.expect("open");
        assert_eq!(a.count, 3);
        assert_eq!((a.last_seen, a.first_seen), (3_000, 1_000));
        assert_eq!(
            (a.content.value, a.content.summary.as_str()),
            (Some(95.0), "h1 at 95%")
        );
        assert_eq!(a.status, Status::Firing);
    }

    #[test]
    fn repeat_notifies_and_changes_nothing() {
        let mut alert = open(Status::Firing);
        let before = alert.clone();
        let repeat = Change::Repeat {
            alert: key(),
            at: 5_000,
        };
        assert_eq!(
            Alert::apply(&mut alert, &repeat),
            Some(Effect {
                trigger: Some(Trigger::Repeat),
                history: None,
            })
        );
        assert_eq!(alert, before);
        assert_eq!(Alert::apply(&mut None, &repeat), None);
    }

    #[test]
    fn resolve_closes_once_with_the_resolve_summary_or_the_reason() {
        let resolve = |reason, summary: Option<&str>| Change::Resolve {
            alert: key(),
            at: 9_000,
            reason,
            summary: summary.map(str::to_owned),
        };
        let mut alert = open(Status::Firing);
        assert_eq!(
            Alert::apply(
                &mut alert,
                &resolve(ResolveReason::Condition, Some("h1 back at 40%"))
            ),
            Some(Effect {
                trigger: Some(Trigger::Resolve),
                history: Some(("resolved", "h1 back at 40%".to_owned())),
            })
        );
        let a = alert.clone().expect("open");
        assert_eq!((a.status, a.resolved_at), (Status::Resolved, Some(9_000)));
        assert_eq!(
            a.resolve_reason.as_deref(),
            Some("condition no longer holds")
        );
        assert_eq!(a.content.summary, "h1 back at 40%");
        // Resolved already: nothing more.
        assert_eq!(
            Alert::apply(&mut alert, &resolve(ResolveReason::Manual, None)),
            None
        );
        assert_eq!(alert.expect("open"), a);

        // Without a resolve_summary the summary stays and the history gives the reason; a
        // disabled rule tells subscribers so.
        let mut alert = open(Status::Firing);
        assert_eq!(
            Alert::apply(&mut alert, &resolve(ResolveReason::RuleDisabled, None)),
            Some(Effect {
                trigger: Some(Trigger::Disable),
                history: Some(("resolved", "rule disabled".to_owned())),
            })
        );
        assert_eq!(alert.expect("open").content.summary, "h1 at 91%");
    }

    #[test]
    fn discard_removes_the_alert() {
        let discard = Change::Discard {
            alert: key(),
            at: 1_500,
        };
        let mut alert = open(Status::Pending);
        assert_eq!(Alert::apply(&mut alert, &discard), Some(Effect::default()));
        assert_eq!(alert, None);
        assert_eq!(Alert::apply(&mut alert, &discard), None);
    }

    #[test]
    fn acknowledge_once_and_only_while_open() {
        let mut a = open(Status::Firing).expect("opened");
        assert_eq!(
            a.acknowledge("bob", 4_000),
            Some(Effect {
                trigger: Some(Trigger::Ack),
                history: Some(("acked", "acknowledged by bob".to_owned())),
            })
        );
        assert_eq!(
            (a.acked_by.as_deref(), a.acked_at),
            (Some("bob"), Some(4_000))
        );
        assert_eq!(a.acknowledge("eve", 5_000), None);
        assert_eq!(a.acked_by.as_deref(), Some("bob"));
        let mut resolved = Some(open(Status::Firing).expect("opened"));
        Alert::apply(
            &mut resolved,
            &Change::Resolve {
                alert: key(),
                at: 6_000,
                reason: ResolveReason::Manual,
                summary: None,
            },
        );
        assert_eq!(resolved.expect("kept").acknowledge("bob", 7_000), None);
    }
}
