//! `sms` channels: a text message through a Twilio-compatible Messages API.
//!
//! `url` is the full Messages resource (for Twilio,
//! `https://api.twilio.com/2010-04-01/Accounts/{account}/Messages.json`), so any provider or
//! gateway that speaks the same form can stand in. Each recipient in `to` gets its own
//! `POST`, form-encoded as that API takes it (`To`, `From`, `Body`), with HTTP basic auth
//! `account:token`. The body is the notification's one-line short form, at most 160
//! characters: one SMS, readable on a lock screen. The notification is sent only if every
//! recipient's message was; Twilio answers `201 Created` with the message as JSON.

use serde::Deserialize;

use super::channel::{Check, Secret, check_url, deserialize_recipients, required};
use super::{Fanout, Notification, Notifier, NotifyError, send_http};

/// An `sms` channel's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The Messages resource, e.g. Twilio's `…/Accounts/{account}/Messages.json`.
    pub url: String,
    /// The account: the user of HTTP basic auth.
    pub account: String,
    /// The sender's number.
    pub from: String,
    /// The account's token: the password of HTTP basic auth.
    #[serde(default)]
    pub token: Option<Secret>,
    /// The recipients' numbers: a list, or one string with commas.
    #[serde(deserialize_with = "deserialize_recipients")]
    pub to: Vec<String>,
}

impl Check for Settings {
    fn check(&self) -> Result<(), String> {
        required("account", &self.account)?;
        required("from", &self.from)?;
        check_url(&self.url, "url", false)
    }
}

pub struct Sms {
    pub http: reqwest::Client,
    pub settings: Settings,
}

#[async_trait::async_trait]
impl Notifier for Sms {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let Settings {
            url,
            account,
            from,
            token,
            to,
        } = &self.settings;
        let token = token.as_ref().map(Secret::expose);
        let from = from.as_str();
        let body = n.short();
        let mut fanout = Fanout::default();
        for to in to {
            let form = [("To", to.as_str()), ("From", from), ("Body", body.as_str())];
            let req = self.http.post(url).basic_auth(account, token).form(&form);
            // One delivery is a message per recipient: each has a key of its own.
            let sent = send_http(req, &format!("{}:{to}", n.id)).await;
            fanout.record(&format!("to {to}"), sent.map(drop))?;
        }
        fanout.finish()
    }
}
