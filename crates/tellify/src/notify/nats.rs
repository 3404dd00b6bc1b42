//! `nats` channels: publish the alert JSON to a subject, flushed before it counts as sent.

use serde_json::{Map, Value};

use super::{Notification, Notifier, NotifyError, setting, webhook};

pub struct Nats;

#[async_trait::async_trait]
impl Notifier for Nats {
    async fn send(
        &self,
        settings: &Map<String, Value>,
        n: &Notification,
    ) -> Result<(), NotifyError> {
        let url = setting(settings, "url")?;
        let subject = setting(settings, "topic")?.to_owned();
        // The error text may name the URL (and its credentials): it is not passed on.
        let client = async_nats::connect(url)
            .await
            .map_err(|_| NotifyError::retry("could not connect to NATS"))?;
        let body = webhook::default_body(n).to_string();
        client
            .publish(subject, body.into())
            .await
            .map_err(|e| NotifyError::retry(format!("NATS publish: {e}")))?;
        client
            .flush()
            .await
            .map_err(|e| NotifyError::retry(format!("NATS flush: {e}")))?;
        Ok(())
    }
}
