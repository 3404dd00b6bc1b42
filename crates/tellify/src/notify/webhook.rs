//! `webhook` channels: POST the alert JSON (or a body template) to a URL, signed with
//! `X-Tellify-Signature: sha256=HEX` (HMAC-SHA256 of the body with the channel's secret) and
//! carrying `Idempotency-Key: <delivery id>` so a receiver can drop a repeat.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::channel::{Check, Secret, check_headers, check_url};
use super::{Notification, Notifier, NotifyError, send_http};

/// A `webhook` channel's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the body is posted (http or https). A secret: it may carry a token.
    pub url: Secret,
    /// Signs the body: `X-Tellify-Signature: sha256=HEX`.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Headers sent with each request; their values are secrets (shown as `***`).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// A template of the body; the default body is the alert JSON.
    #[serde(default)]
    pub body: Option<String>,
}

impl Check for Settings {
    fn check(&self) -> Result<(), String> {
        check_url(self.url.expose(), "url", true)?;
        check_headers(&self.headers)?;
        if let Some(body) = &self.body {
            tellify_core::template::Templates::compile([("body".to_owned(), body.as_str())])
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

pub struct Webhook {
    pub http: reqwest::Client,
    pub settings: Settings,
}

/// The version of the JSON that webhooks send by default and broker channels always send
/// (`"version"` in it). It goes up when a field is removed or changes meaning, not when one is
/// added, so a receiver can refuse a shape it does not know.
pub const PAYLOAD_VERSION: u32 = 1;

/// The default body: the payload version, the trigger and the alert (or, for a digest, the
/// alerts).
pub fn default_body(n: &Notification) -> Value {
    if n.digest {
        let alerts: Vec<Value> = n
            .alerts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
                v["trigger"] = json!(n.trigger_of(i).as_str());
                v
            })
            .collect();
        json!({ "version": PAYLOAD_VERSION, "trigger": n.trigger.as_str(), "digest": true, "alerts": alerts })
    } else {
        json!({ "version": PAYLOAD_VERSION, "trigger": n.trigger.as_str(), "alert": n.first() })
    }
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait::async_trait]
impl Notifier for Webhook {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let settings = &self.settings;
        let (body, content_type) = match settings.body.as_deref() {
            Some(template) => {
                let ctx = tellify_core::template::to_value(json!({
                    "trigger": n.trigger.as_str(), "alert": n.first(), "alerts": n.alerts,
                    "title": n.title(), "text": n.text(), "digest": n.digest,
                    "now": n.at(),
                }));
                let rendered = tellify_core::template::render_once(template, ctx)
                    .map_err(NotifyError::permanent)?;
                let kind = if serde_json::from_str::<Value>(&rendered).is_ok() {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                };
                (rendered, kind)
            }
            None => (default_body(n).to_string(), "application/json"),
        };
        let mut req = self
            .http
            .post(settings.url.expose())
            .header(reqwest::header::CONTENT_TYPE, content_type);
        if let Some(secret) = &settings.secret {
            req = req.header(
                "X-Tellify-Signature",
                sign(secret.expose(), body.as_bytes()),
            );
        }
        for (name, value) in &settings.headers {
            req = req.header(name.as_str(), value.expose());
        }
        send_http(req.body(body), &n.id).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
