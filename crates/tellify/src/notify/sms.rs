//! `sms` channels: a text message through a Twilio-compatible Messages API.
//!
//! `url` is the full Messages resource (for Twilio,
//! `https://api.twilio.com/2010-04-01/Accounts/{account}/Messages.json`), so any provider or
//! gateway that speaks the same form can stand in. Each recipient in `to` gets its own
//! `POST`, form-encoded as that API takes it (`To`, `From`, `Body`), with HTTP basic auth
//! `account:token`. The body is the notification's one-line short form, at most 160
//! characters: one SMS, readable on a lock screen. The notification is sent only if every
//! recipient's message was; Twilio answers `201 Created` with the message as JSON.

use serde_json::{Map, Value};

use super::channel::recipients;
use super::{Fanout, Notification, Notifier, NotifyError, send_http, setting};

pub struct Sms {
    pub http: reqwest::Client,
}

#[async_trait::async_trait]
impl Notifier for Sms {
    async fn send(
        &self,
        settings: &Map<String, Value>,
        n: &Notification,
    ) -> Result<(), NotifyError> {
        let url = setting(settings, "url")?;
        let account = setting(settings, "account")?;
        let from = setting(settings, "from")?;
        let token = settings.get("token").and_then(Value::as_str);
        let to = recipients(settings.get("to"))
            .map_err(|e| NotifyError::permanent(format!("`to`: {e}")))?;
        let body = n.short();
        let mut fanout = Fanout::default();
        for to in &to {
            let form = [("To", to.as_str()), ("From", from), ("Body", body.as_str())];
            let req = self.http.post(url).basic_auth(account, token).form(&form);
            // One delivery is a message per recipient: each has a key of its own.
            let sent = send_http(req, &format!("{}:{to}", n.id)).await;
            fanout.record(&format!("to {to}"), sent.map(drop))?;
        }
        fanout.finish()
    }
}
