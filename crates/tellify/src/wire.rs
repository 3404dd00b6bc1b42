//! What Tellify says about an alert to the outside: the JSON of `/api/v1/alerts…`, the live
//! stream, a delivery's snapshot and the alert in webhook and broker payloads, made from the
//! core's [`tellify_core::alert::Alert`]. A leaf: it depends on the core alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tellify_core::alert;

/// An alert as shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    pub id: String,
    pub rule: String,
    pub owner: String,
    pub key: String,
    pub status: String,
    pub severity: String,
    pub summary: String,
    pub body: String,
    pub value: Option<f64>,
    pub labels: BTreeMap<String, String>,
    pub links: BTreeMap<String, String>,
    pub source: String,
    pub run: Option<String>,
    /// When it opened (in-time), epoch ms.
    pub first_seen: i64,
    /// When it started firing (for thresholds, after `for`).
    pub fired_at: Option<i64>,
    pub last_seen: i64,
    /// When it was resolved (out-time).
    pub resolved_at: Option<i64>,
    pub resolve_reason: Option<String>,
    pub count: i64,
    pub acked_by: Option<String>,
    pub acked_at: Option<i64>,
}

impl From<&alert::Alert> for Alert {
    fn from(a: &alert::Alert) -> Self {
        Alert {
            id: a.id.clone(),
            rule: a.rule.clone(),
            owner: a.owner.clone(),
            key: a.key.clone(),
            status: a.status.as_str().to_owned(),
            severity: a.content.severity.as_str().to_owned(),
            summary: a.content.summary.clone(),
            body: a.content.body.clone(),
            value: a.content.value,
            labels: a.content.labels.clone(),
            links: a.content.links.clone(),
            source: a.content.source.clone(),
            run: a.content.run.clone(),
            first_seen: a.first_seen,
            fired_at: a.fired_at,
            last_seen: a.last_seen,
            resolved_at: a.resolved_at,
            resolve_reason: a.resolve_reason.clone(),
            count: a.count,
            acked_by: a.acked_by.clone(),
            acked_at: a.acked_at,
        }
    }
}

impl From<alert::Alert> for Alert {
    fn from(a: alert::Alert) -> Self {
        Alert::from(&a)
    }
}
