//! Alerts: their statuses and severities, and the changes the evaluator decides.
//!
//! The evaluator names an alert by (owner, rule, key); the store gives it an id. A
//! [`Change`] is a decision, not yet a fact: the engine makes it one by committing it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
