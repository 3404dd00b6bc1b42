//! `teams` channels: POST a card to a Microsoft Teams webhook (`webhook_url`).
//!
//! Two kinds of webhook exist, told apart by the channel's `card` setting:
//!
//! - `adaptive` (the default): a Power Automate "Workflows" webhook, which takes a message
//!   with one Adaptive Card attachment — the title, the summary, a FactSet of the facts, and an
//!   `Action.OpenUrl` per link. It answers `202 Accepted` (some flows `200`).
//! - `legacy`: an Office 365 connector's incoming webhook, which takes a MessageCard with a
//!   theme colour by severity. Microsoft has retired these connectors, but existing ones still
//!   post. They answer `200` with the body `1`; when throttled they too answer `200`, with
//!   an error text in the body, so such a body is a retryable failure.
//!
//! A digest is one card with a line per alert, its links inline.

use serde::Deserialize;
use serde_json::{Value, json};

use super::channel::{Check, Secret, check_url};
use super::message::truncate;
use super::{Notification, Notifier, NotifyError, send_http};
use crate::wire::Alert;
use tellify_core::alert::Severity;

/// Lines in a digest card; Teams refuses messages over about 28 KB.
const DIGEST_LINES: usize = 50;
/// Buttons on an Adaptive Card; Teams draws no more than this.
const MAX_ACTIONS: usize = 6;

/// A `teams` channel's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The webhook's URL; a secret (it is the credential).
    pub webhook_url: Secret,
    /// Which card the webhook takes.
    #[serde(default)]
    pub card: Card,
}

/// The card layout a Teams webhook takes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Card {
    /// An Adaptive Card, for a Workflows webhook (the default).
    #[default]
    Adaptive,
    /// A MessageCard, for an Office 365 connector.
    Legacy,
}

impl Check for Settings {
    fn check(&self) -> Result<(), String> {
        check_url(self.webhook_url.expose(), "webhook_url", true)
    }
}

pub struct Teams {
    pub http: reqwest::Client,
    pub settings: Settings,
}

/// The Adaptive Card colour of a title: how much attention it needs.
fn colour(n: &Notification) -> &'static str {
    let a = n.first();
    if !n.digest && a.status == "resolved" {
        return "Good";
    }
    match worst(n) {
        Severity::Critical | Severity::Error => "Attention",
        Severity::Warning => "Warning",
        Severity::Info => "Default",
    }
}

/// The MessageCard theme colour (hex without `#`): green once resolved, else by severity.
fn theme(n: &Notification) -> &'static str {
    if !n.digest && n.first().status == "resolved" {
        return "2EB886";
    }
    match worst(n) {
        Severity::Critical => "C50F1F",
        Severity::Error => "E74856",
        Severity::Warning => "FFB900",
        Severity::Info => "0078D7",
    }
}

/// The highest severity among the notification's alerts that are not resolved (or of the
/// first alert, if all are).
fn worst(n: &Notification) -> Severity {
    let open: Vec<&Alert> = n.alerts.iter().filter(|a| a.status != "resolved").collect();
    let alerts = if open.is_empty() {
        vec![n.first()]
    } else {
        open
    };
    alerts
        .iter()
        .filter_map(|a| a.severity.parse::<Severity>().ok())
        .max()
        .unwrap_or(Severity::Info)
}

/// A digest's line for one alert, with its links inline (markdown, which both cards render).
fn digest_line(a: &Alert) -> String {
    let mut line = format!(
        "**{}** {} · {}: {}",
        a.status.to_uppercase(),
        a.rule,
        a.key,
        a.summary
    );
    for (name, url) in &a.links {
        line.push_str(&format!(" [{name}]({url})"));
    }
    line
}

fn digest_lines(n: &Notification) -> Vec<String> {
    let mut lines: Vec<String> = n
        .alerts
        .iter()
        .take(DIGEST_LINES)
        .map(digest_line)
        .collect();
    if n.alerts.len() > DIGEST_LINES {
        lines.push(format!("…and {} more", n.alerts.len() - DIGEST_LINES));
    }
    lines
}

fn summary(a: &Alert) -> String {
    if a.body.is_empty() {
        a.summary.clone()
    } else {
        format!("{}\n\n{}", a.summary, a.body)
    }
}

/// A message with one Adaptive Card, for a Workflows webhook.
pub fn adaptive(n: &Notification) -> Value {
    let mut body = vec![json!({
        "type": "TextBlock", "text": truncate(&n.title(), 300), "weight": "Bolder",
        "size": "Medium", "color": colour(n), "wrap": true,
    })];
    let mut actions = Vec::new();
    if let Some(text) = n.chosen_text() {
        body.push(json!({ "type": "TextBlock", "text": text, "wrap": true }));
    } else if n.digest {
        for line in digest_lines(n) {
            body.push(json!({ "type": "TextBlock", "text": line, "wrap": true }));
        }
    } else {
        let a = n.first();
        body.push(json!({ "type": "TextBlock", "text": summary(a), "wrap": true }));
        let facts: Vec<Value> = Notification::facts(a)
            .into_iter()
            .map(|(title, value)| json!({ "title": title, "value": value }))
            .collect();
        body.push(json!({ "type": "FactSet", "facts": facts }));
        actions = a
            .links
            .iter()
            .take(MAX_ACTIONS)
            .map(|(name, url)| json!({ "type": "Action.OpenUrl", "title": name, "url": url }))
            .collect();
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
                "actions": actions,
                "msteams": { "width": "Full" },
            },
        }],
    })
}

/// A MessageCard, for an Office 365 connector.
pub fn legacy(n: &Notification) -> Value {
    let (section, links) = if let Some(text) = n.chosen_text() {
        (json!({ "text": text, "markdown": false }), Vec::new())
    } else if n.digest {
        let section = json!({
            "activityTitle": n.title(),
            "text": digest_lines(n).join("\n\n"),
            "markdown": true,
        });
        (section, Vec::new())
    } else {
        let a = n.first();
        let facts: Vec<Value> = Notification::facts(a)
            .into_iter()
            .map(|(name, value)| json!({ "name": name, "value": value }))
            .collect();
        let section = json!({
            "activityTitle": a.summary,
            "activitySubtitle": format!("{} · {}", a.rule, a.key),
            "text": a.body,
            "facts": facts,
            "markdown": true,
        });
        (section, a.links.iter().collect())
    };
    let actions: Vec<Value> = links
        .into_iter()
        .map(|(name, url)| {
            json!({
                "@type": "OpenUri", "name": name,
                "targets": [{ "os": "default", "uri": url }],
            })
        })
        .collect();
    json!({
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": n.short(),
        "themeColor": theme(n),
        "title": n.title(),
        "sections": [section],
        "potentialAction": actions,
    })
}

#[async_trait::async_trait]
impl Notifier for Teams {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let url = self.settings.webhook_url.expose();
        let is_legacy = self.settings.card == Card::Legacy;
        let body = if is_legacy { legacy(n) } else { adaptive(n) };
        let resp = send_http(self.http.post(url).json(&body), &n.id).await?;
        if is_legacy {
            // A connector says "1" when it posted; a throttled one answers 200 all the same,
            // with "Webhook message delivery failed with error: … HTTP error 429 …".
            let text = resp.text().await.unwrap_or_default();
            if text.contains("delivery failed") {
                return Err(NotifyError::retry(truncate(text.trim(), 300)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tellify_core::subscription::Trigger;

    use super::*;
    use crate::notify::message::sample;

    #[test]
    fn the_legacy_theme_colour_follows_severity_and_resolution() {
        let mut a = sample::alert("a");
        let card = |a: &Alert| legacy(&sample::notification(Trigger::Fire, vec![a.clone()]));
        assert_eq!(card(&a)["themeColor"], "C50F1F");
        a.severity = "warning".into();
        assert_eq!(card(&a)["themeColor"], "FFB900");
        a.status = "resolved".into();
        assert_eq!(card(&a)["themeColor"], "2EB886");
    }

    #[test]
    fn a_subscription_template_or_format_replaces_the_card_layout() {
        let mut n = sample::notification(Trigger::Fire, vec![sample::alert("a")]);
        n.template = Some("Disk on {{ alert.key }}!".into());
        let body = adaptive(&n)["attachments"][0]["content"]["body"].clone();
        assert_eq!(body[1]["text"], "Disk on a!");
        assert_eq!(body.as_array().expect("body").len(), 2, "no facts: {body}");
        assert_eq!(legacy(&n)["sections"][0]["text"], "Disk on a!");
        n.template = None;
        n.format = Some(tellify_core::subscription::MessageFormat::Short);
        assert_eq!(
            adaptive(&n)["attachments"][0]["content"]["body"][1]["text"],
            n.short()
        );
    }

    #[test]
    fn a_digest_card_has_a_line_per_alert() {
        let alerts = vec![sample::alert("a"), sample::alert("b")];
        let m = adaptive(&sample::notification(Trigger::Fire, alerts));
        let body = m["attachments"][0]["content"]["body"]
            .as_array()
            .expect("body");
        assert_eq!(body.len(), 3);
        assert!(body[2]["text"].as_str().expect("line").contains("b at 95%"));
        assert!(
            body[2]["text"]
                .as_str()
                .expect("line")
                .contains("](https://runbooks.example/disk)")
        );
    }
}
