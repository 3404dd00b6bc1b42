//! `pagerduty` channels: PagerDuty Events API v2 (`POST /v2/enqueue`).
//!
//! PagerDuty keeps incidents of its own, so Tellify drives their life rather than posting
//! messages: an alert's id is the `dedup_key`, a firing alert (and each repeat) `trigger`s the
//! incident, an acknowledgement `acknowledge`s it, and a resolve (or the rule being disabled)
//! `resolve`s it. A trigger carries the `payload` — summary, source, severity mapped to
//! PagerDuty's four levels (Tellify has the same four), first seen as `timestamp`, the rule as
//! `group`, the key as `component` — and the alert's links; `custom_details` repeat the labels,
//! key, value, count, rule and links, which PagerDuty shows and Event Orchestration can route
//! on. Acknowledge and resolve need only the routing key and `dedup_key`.
//!
//! PagerDuty has no digest: a digest is sent as one event per alert, and is sent only if all
//! are. PagerDuty answers `202` when it took the event, `400` when it refuses it (a retry
//! cannot help), and `429` or `5xx` when a retry later can.

use std::collections::BTreeMap;

use chrono::{SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tellify_core::alert::Severity;
use tellify_core::subscription::Trigger;

use super::channel::{Check, Secret, check_url};
use super::message::truncate;
use super::{Fanout, Notification, Notifier, NotifyError, send_http};
use crate::wire::Alert;

/// Where events go unless the channel says otherwise.
pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// A `pagerduty` channel's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The integration key of an Events API v2 integration (32 characters).
    pub routing_key: Secret,
    /// Where events go (default: [`DEFAULT_URL`]), say a proxy; shown on reads.
    #[serde(default)]
    pub url: Option<String>,
}

impl Check for Settings {
    fn check(&self) -> Result<(), String> {
        // PagerDuty refuses any other key with a 400: say so now, not in a dead delivery.
        if self.routing_key.expose().chars().count() != 32 {
            return Err("`routing_key` must be the 32 characters of an integration key".into());
        }
        if let Some(url) = &self.url {
            check_url(url, "url", false)?;
        }
        Ok(())
    }
}

pub struct PagerDuty {
    pub http: reqwest::Client,
    pub settings: Settings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Trigger,
    Acknowledge,
    Resolve,
}

impl Action {
    /// What a change to `alert` does to its incident. An alert already resolved resolves it
    /// whatever the trigger.
    pub fn of(trigger: Trigger, alert: &Alert) -> Action {
        if alert.status == "resolved" {
            return Action::Resolve;
        }
        match trigger {
            Trigger::Fire | Trigger::Repeat => Action::Trigger,
            Trigger::Ack => Action::Acknowledge,
            Trigger::Resolve | Trigger::Disable => Action::Resolve,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Event<'a> {
    routing_key: &'a str,
    event_action: Action,
    dedup_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Payload<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    links: Vec<Link<'a>>,
    client: &'static str,
}

#[derive(Debug, Serialize)]
struct Payload<'a> {
    summary: String,
    source: &'a str,
    severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<&'a str>,
    group: &'a str,
    custom_details: Value,
}

#[derive(Debug, Serialize)]
struct Link<'a> {
    href: &'a str,
    text: &'a str,
}

/// PagerDuty's severity for Tellify's (the same four levels; anything else is a warning,
/// Tellify's default).
fn severity(s: &str) -> &'static str {
    s.parse::<Severity>().unwrap_or_default().as_str()
}

fn rfc3339(ms: i64) -> Option<String> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The event for one alert.
pub fn event<'a>(routing_key: &'a str, trigger: Trigger, a: &'a Alert) -> Event<'a> {
    let action = Action::of(trigger, a);
    if action != Action::Trigger {
        return Event {
            routing_key,
            event_action: action,
            dedup_key: &a.id,
            payload: None,
            links: Vec::new(),
            client: "Tellify",
        };
    }
    // PagerDuty's summary is the incident's title: it must not be empty.
    let what = match (a.summary.is_empty(), a.key.is_empty()) {
        (false, _) => a.summary.as_str(),
        (true, false) => a.key.as_str(),
        (true, true) => "firing",
    };
    let links: &BTreeMap<String, String> = &a.links;
    Event {
        routing_key,
        event_action: action,
        dedup_key: &a.id,
        payload: Some(Payload {
            summary: truncate(&format!("{}: {what}", a.rule), 1024),
            source: if a.source.is_empty() {
                "tellify"
            } else {
                &a.source
            },
            severity: severity(&a.severity),
            timestamp: rfc3339(a.first_seen),
            component: Some(a.key.as_str()).filter(|k| !k.is_empty()),
            group: &a.rule,
            custom_details: json!({
                "rule": a.rule,
                "key": a.key,
                "value": a.value,
                "count": a.count,
                "labels": a.labels,
                "links": links,
                "status": a.status,
                "body": a.body,
            }),
        }),
        links: links
            .iter()
            .map(|(text, href)| Link { href, text })
            .collect(),
        client: "Tellify",
    }
}

#[async_trait::async_trait]
impl Notifier for PagerDuty {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let routing_key = self.settings.routing_key.expose();
        let url = self
            .settings
            .url
            .as_deref()
            .filter(|u| !u.is_empty())
            .unwrap_or(DEFAULT_URL);
        let mut fanout = Fanout::default();
        for (i, a) in n.alerts.iter().enumerate() {
            let body = event(routing_key, n.trigger_of(i), a);
            // One delivery may be several events: each has a key of its own.
            let key = if n.digest {
                format!("{}:{}", n.id, a.id)
            } else {
                n.id.clone()
            };
            let sent = send_http(self.http.post(url).json(&body), &key).await;
            fanout.record(&format!("alert {}", a.id), sent.map(drop))?;
        }
        fanout.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::sample;

    const KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";

    #[test]
    fn each_change_maps_to_an_event_action() {
        let mut a = sample::alert("a");
        assert_eq!(Action::of(Trigger::Fire, &a), Action::Trigger);
        assert_eq!(Action::of(Trigger::Repeat, &a), Action::Trigger);
        assert_eq!(Action::of(Trigger::Ack, &a), Action::Acknowledge);
        assert_eq!(Action::of(Trigger::Resolve, &a), Action::Resolve);
        a.status = "resolved".into();
        assert_eq!(Action::of(Trigger::Disable, &a), Action::Resolve);
        assert_eq!(
            Action::of(Trigger::Fire, &a),
            Action::Resolve,
            "a digest's resolved alert"
        );
    }

    #[test]
    fn a_trigger_carries_the_payload_and_the_others_only_the_key() {
        let mut a = sample::alert("a");
        a.summary = "x".repeat(2000);
        a.source = String::new();
        let e = serde_json::to_value(event(KEY, Trigger::Fire, &a)).expect("json");
        assert_eq!(e["dedup_key"], "01J-a");
        assert_eq!(
            e["payload"]["summary"].as_str().map(|s| s.chars().count()),
            Some(1024)
        );
        assert_eq!(e["payload"]["source"], "tellify");
        assert_eq!(e["payload"]["timestamp"], "2026-11-25T10:00:00.000Z");
        assert_eq!(e["payload"]["custom_details"]["labels"]["site"], "berlin");
        assert_eq!(e["links"][0]["href"], "https://runbooks.example/disk");
        let e = serde_json::to_value(event(KEY, Trigger::Ack, &a)).expect("json");
        assert_eq!(
            e,
            json!({"routing_key": KEY, "event_action": "acknowledge", "dedup_key": "01J-a", "client": "Tellify"})
        );
    }
}
