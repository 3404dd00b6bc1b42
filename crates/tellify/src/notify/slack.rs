//! `slack` channels: POST a message to a Slack incoming webhook (`webhook_url`).
//!
//! The message is `{"text": …, "blocks": […]}`. Slack shows `text` in push notifications and
//! where blocks cannot be drawn, so it is the one-line short form; the blocks carry the rest in
//! Block Kit: a header with the title, a section with the summary, sections of facts as
//! fields, a context line with first and last seen, and a button per link. A digest is a
//! header and one section line per alert. Block Kit's limits (50 blocks, 10 fields a section,
//! 25 buttons, text lengths) are kept here, since Slack refuses the whole message otherwise.
//! Slack answers `200 ok`; anything else is an error (`invalid_payload`, `channel_not_found`,
//! …) classified by its status.

use serde::Deserialize;
use serde_json::{Value, json};

use super::channel::{Check, Secret, check_url};
use super::message::{time, truncate};
use super::{Notification, Notifier, NotifyError, send_http};
use crate::wire::Alert;

/// Block Kit's limits.
const MAX_BLOCKS: usize = 50;
const MAX_FIELDS: usize = 10;
const MAX_BUTTONS: usize = 25;
const HEADER_CHARS: usize = 150;
const SECTION_CHARS: usize = 3000;
const FIELD_CHARS: usize = 2000;
const BUTTON_CHARS: usize = 75;

/// A `slack` channel's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The incoming webhook's URL; a secret (it is the credential).
    pub webhook_url: Secret,
}

impl Check for Settings {
    fn check(&self) -> Result<(), String> {
        check_url(self.webhook_url.expose(), "webhook_url", true)
    }
}

pub struct Slack {
    pub http: reqwest::Client,
    pub settings: Settings,
}

/// Escapes the three characters Slack's mrkdwn treats as control characters.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn mrkdwn(text: &str, max: usize) -> Value {
    json!({ "type": "mrkdwn", "text": truncate(text, max) })
}

fn header(title: &str) -> Value {
    json!({
        "type": "header",
        "text": { "type": "plain_text", "text": truncate(title, HEADER_CHARS), "emoji": true },
    })
}

/// The blocks of one alert.
fn alert_blocks(n: &Notification, a: &Alert) -> Vec<Value> {
    let mut blocks = vec![header(&n.title())];
    let mut summary = format!("*{}*", escape(&a.summary));
    if !a.body.is_empty() {
        summary.push('\n');
        summary.push_str(&escape(&a.body));
    }
    blocks.push(json!({ "type": "section", "text": mrkdwn(&summary, SECTION_CHARS) }));
    // First and last seen go in the context line below, not among the fields.
    let fields: Vec<Value> = Notification::facts(a)
        .into_iter()
        .filter(|(name, _)| name != "First seen" && name != "Last seen")
        .map(|(name, value)| {
            mrkdwn(
                &format!("*{}*\n{}", escape(&name), escape(&value)),
                FIELD_CHARS,
            )
        })
        .collect();
    for chunk in fields.chunks(MAX_FIELDS) {
        blocks.push(json!({ "type": "section", "fields": chunk }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [mrkdwn(
            &format!("First seen {} · Last seen {}", time(a.first_seen), time(a.last_seen)),
            SECTION_CHARS,
        )],
    }));
    let buttons: Vec<Value> = a
        .links
        .iter()
        .take(MAX_BUTTONS)
        .map(|(name, url)| {
            json!({
                "type": "button",
                "text": { "type": "plain_text", "text": truncate(name, BUTTON_CHARS) },
                "url": url,
            })
        })
        .collect();
    if !buttons.is_empty() {
        blocks.push(json!({ "type": "actions", "elements": buttons }));
    }
    blocks.truncate(MAX_BLOCKS);
    blocks
}

/// The blocks of a digest: the title, then one line per alert (as many as Slack allows).
fn digest_blocks(n: &Notification) -> Vec<Value> {
    let mut blocks = vec![header(&n.title())];
    // Room for the header and a closing "more" line.
    let room = MAX_BLOCKS - 2;
    for a in n.alerts.iter().take(room) {
        let mut line = format!(
            "*{}* {} · `{}`: {}",
            escape(&a.status.to_uppercase()),
            escape(&a.rule),
            escape(&a.key),
            escape(&a.summary)
        );
        for (name, url) in &a.links {
            line.push_str(&format!(" <{}|{}>", escape(url), escape(name)));
        }
        blocks.push(json!({ "type": "section", "text": mrkdwn(&line, SECTION_CHARS) }));
    }
    if n.alerts.len() > room {
        blocks.push(json!({
            "type": "context",
            "elements": [mrkdwn(&format!("…and {} more", n.alerts.len() - room), SECTION_CHARS)],
        }));
    }
    blocks
}

/// The message Slack is sent.
pub fn message(n: &Notification) -> Value {
    let blocks = if let Some(text) = n.chosen_text() {
        vec![
            header(&n.title()),
            json!({ "type": "section", "text": mrkdwn(&escape(&text), SECTION_CHARS) }),
        ]
    } else if n.digest {
        digest_blocks(n)
    } else {
        alert_blocks(n, n.first())
    };
    json!({ "text": n.short(), "blocks": blocks })
}

#[async_trait::async_trait]
impl Notifier for Slack {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let url = self.settings.webhook_url.expose();
        send_http(self.http.post(url).json(&message(n)), &n.id).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tellify_core::subscription::Trigger;

    use super::*;
    use crate::notify::message::sample;

    #[test]
    fn a_subscription_template_replaces_the_blocks_layout() {
        let mut n = sample::notification(Trigger::Fire, vec![sample::alert("a")]);
        n.template = Some("Disk on {{ alert.key }} <now>".into());
        let m = message(&n);
        let blocks = m["blocks"].as_array().expect("blocks");
        assert_eq!(blocks.len(), 2, "{m}");
        assert_eq!(blocks[1]["text"]["text"], "Disk on a &lt;now&gt;");
        assert_eq!(m["text"], "Disk on a <now>");
    }

    #[test]
    fn facts_are_split_into_sections_of_at_most_ten_fields() {
        let mut a = sample::alert("a");
        for i in 0..15 {
            a.labels.insert(format!("label{i:02}"), format!("v{i}"));
        }
        let facts = Notification::facts(&a).len() - 2; // less first and last seen
        let m = message(&sample::notification(Trigger::Fire, vec![a]));
        let sections: Vec<&Value> = m["blocks"]
            .as_array()
            .expect("blocks")
            .iter()
            .filter_map(|b| b.get("fields"))
            .collect();
        assert!(sections.len() >= 2);
        assert!(
            sections
                .iter()
                .all(|f| f.as_array().expect("fields").len() <= MAX_FIELDS)
        );
        let total: usize = sections
            .iter()
            .map(|f| f.as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(total, facts, "every fact is shown");
        assert_eq!(m["blocks"][0]["type"], "header");
    }

    #[test]
    fn a_large_digest_stays_within_fifty_blocks_and_says_how_many_more() {
        let alerts: Vec<Alert> = (0..60).map(|i| sample::alert(&format!("h{i}"))).collect();
        let m = message(&sample::notification(Trigger::Fire, alerts));
        let blocks = m["blocks"].as_array().expect("blocks");
        assert_eq!(blocks.len(), MAX_BLOCKS);
        assert_eq!(blocks[49]["elements"][0]["text"], "…and 12 more");
        assert!(
            blocks[1]["text"]["text"]
                .as_str()
                .expect("line")
                .contains("h0 at 95%")
        );
    }

    #[test]
    fn mrkdwn_control_characters_are_escaped() {
        let mut a = sample::alert("a");
        a.summary = "<!channel> & co".into();
        let m = message(&sample::notification(Trigger::Fire, vec![a]));
        assert_eq!(
            m["blocks"][1]["text"]["text"],
            "*&lt;!channel&gt; &amp; co*"
        );
    }
}
