//! What a notification says, in words every medium can use: a title, a plain-text body, a
//! one-line short form (SMS), and the facts (severity, key, value, labels, first/last seen,
//! links). Each channel lays these out in its own format.

use chrono::{TimeZone, Utc};
use tellify_core::subscription::{MessageFormat, Trigger};

use crate::wire::Alert;

/// One notification: an alert change, or a digest of several.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The delivery id (the first one's, for a digest): the receiver's idempotency key.
    pub id: String,
    pub trigger: Trigger,
    pub alerts: Vec<Alert>,
    /// In a digest, each alert's own change (empty: every alert's is `trigger`).
    pub triggers: Vec<Trigger>,
    pub digest: bool,
    /// The subscription's `format`, if it chose one; else the channel's default.
    pub format: Option<MessageFormat>,
    /// The subscription's template for the message text, if it has one.
    pub template: Option<String>,
}

pub fn trigger_word(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::Fire => "FIRING",
        Trigger::Resolve => "RESOLVED",
        Trigger::Ack => "ACKNOWLEDGED",
        Trigger::Repeat => "STILL FIRING",
        Trigger::Disable => "RULE DISABLED",
    }
}

/// Epoch ms as `2026-11-25 10:00:00 UTC`.
pub fn time(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

impl Notification {
    /// The change alert `i` of the notification is about.
    pub fn trigger_of(&self, i: usize) -> Trigger {
        self.triggers.get(i).copied().unwrap_or(self.trigger)
    }

    /// The time of the latest change told (a time of the alerts, not a clock read): templates
    /// see it as `now`, the time their `ago` filter counts from.
    pub fn at(&self) -> i64 {
        self.alerts
            .iter()
            .flat_map(|a| [Some(a.last_seen), a.fired_at, a.acked_at, a.resolved_at])
            .flatten()
            .max()
            .unwrap_or_default()
    }

    pub fn first(&self) -> &Alert {
        self.alerts
            .first()
            .expect("a notification has at least one alert")
    }

    pub fn title(&self) -> String {
        if self.digest {
            let firing = self
                .alerts
                .iter()
                .filter(|a| a.status != "resolved")
                .count();
            let n = self.alerts.len();
            let alerts = if n == 1 { "alert" } else { "alerts" };
            return format!("[Tellify digest] {n} {alerts} ({firing} firing)");
        }
        let a = self.first();
        format!("[{}] {}: {}", trigger_word(self.trigger), a.rule, a.summary)
    }

    /// The facts of one alert as (name, value) pairs.
    pub fn facts(alert: &Alert) -> Vec<(String, String)> {
        let mut facts = vec![
            ("Severity".to_owned(), alert.severity.clone()),
            ("Status".to_owned(), alert.status.clone()),
            ("Rule".to_owned(), alert.rule.clone()),
            ("Key".to_owned(), alert.key.clone()),
        ];
        if let Some(v) = alert.value {
            facts.push(("Value".to_owned(), format_value(v)));
        }
        for (k, v) in &alert.labels {
            facts.push((k.clone(), v.clone()));
        }
        facts.push(("First seen".to_owned(), time(alert.first_seen)));
        facts.push(("Last seen".to_owned(), time(alert.last_seen)));
        if alert.count > 1 {
            facts.push(("Count".to_owned(), alert.count.to_string()));
        }
        if let Some(t) = alert.resolved_at {
            facts.push(("Resolved".to_owned(), time(t)));
        }
        if let Some(by) = &alert.acked_by {
            facts.push(("Acknowledged by".to_owned(), by.clone()));
        }
        facts
    }

    /// The message text: the subscription's template if it has one (and it renders), else the
    /// default layout.
    pub fn text(&self) -> String {
        if let Some(t) = &self.template
            && let Some(text) = self.render(t)
        {
            return text;
        }
        self.default_text()
    }

    fn render(&self, template: &str) -> Option<String> {
        let ctx = tellify_core::template::to_value(serde_json::json!({
            "alert": self.first(), "alerts": self.alerts, "trigger": self.trigger.as_str(),
            "title": self.title(), "text": self.default_text(), "digest": self.digest,
            "now": self.at(),
        }));
        tellify_core::template::render_once(template, ctx).ok()
    }

    /// What a chat card shows in place of its own layout: the subscription's template
    /// (rendered), or the plain text or the one line it asked for with `format`. `None`: the
    /// card's own layout. (Email and SMS choose among the same three themselves.)
    pub fn chosen_text(&self) -> Option<String> {
        match self.format {
            Some(MessageFormat::Short) => Some(self.short()),
            _ if self.template.is_some() => Some(self.text()),
            Some(MessageFormat::Text) => Some(self.text()),
            _ => None,
        }
    }

    /// The default plain-text layout.
    pub fn default_text(&self) -> String {
        let mut out = String::new();
        for (i, a) in self.alerts.iter().enumerate() {
            if self.digest {
                out.push_str(&format!(
                    "{}. [{}] {}: {}\n",
                    i + 1,
                    a.status.to_uppercase(),
                    a.rule,
                    a.summary
                ));
            } else {
                out.push_str(&format!("{}\n\n", a.summary));
                if !a.body.is_empty() {
                    out.push_str(&format!("{}\n\n", a.body));
                }
            }
            for (k, v) in Self::facts(a) {
                out.push_str(&format!(
                    "{}{k}: {v}\n",
                    if self.digest { "   " } else { "" }
                ));
            }
            for (name, url) in &a.links {
                out.push_str(&format!(
                    "{}{name}: {url}\n",
                    if self.digest { "   " } else { "" }
                ));
            }
            out.push('\n');
        }
        out
    }

    /// One line for SMS and chat previews, at most 160 characters.
    pub fn short(&self) -> String {
        let line = if let Some(text) = self.template.as_deref().and_then(|t| self.render(t)) {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        } else if self.digest {
            self.title()
        } else {
            let a = self.first();
            let value = a
                .value
                .map(|v| format!(" ({})", format_value(v)))
                .unwrap_or_default();
            format!(
                "{} {} {}: {}{value}",
                trigger_word(self.trigger),
                a.severity.to_uppercase(),
                a.key,
                a.summary
            )
        };
        truncate(&line, 160)
    }
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Cuts text to `max` characters, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Alerts and notifications for the notifiers' unit tests.
#[cfg(test)]
pub mod sample {
    use super::*;

    /// A firing critical alert with a label and a link.
    pub fn alert(key: &str) -> Alert {
        serde_json::from_value(serde_json::json!({
            "id": format!("01J-{key}"), "rule": "disk-full", "owner": "admin", "key": key,
            "status": "firing", "severity": "critical", "summary": format!("{key} at 95%"),
            "body": "", "value": 95.0, "labels": {"site": "berlin"},
            "links": {"Runbook": "https://runbooks.example/disk"}, "source": "disk", "run": null,
            "first_seen": 1_795_600_800_000i64, "fired_at": 1_795_600_800_000i64,
            "last_seen": 1_795_600_860_000i64, "resolved_at": null, "resolve_reason": null,
            "count": 2, "acked_by": null, "acked_at": null,
        }))
        .expect("a valid alert")
    }

    pub fn notification(trigger: Trigger, alerts: Vec<Alert>) -> Notification {
        Notification {
            id: "delivery-1".into(),
            trigger,
            digest: alerts.len() > 1,
            alerts,
            triggers: Vec::new(),
            format: None,
            template: None,
        }
    }
}
