//! `nats` channels: publish the alert JSON to a subject, flushed before it counts as sent.
//! One client (connection) is kept per URL ([`super::pool`]).

use std::sync::Arc;

use serde::Deserialize;

use super::channel::{Check, Secret, check_scheme, required};
use super::pool::Pool;
use super::{Notification, Notifier, NotifyError, webhook};

/// A `nats` channel's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `nats://` or `tls://`; a secret, since it may carry credentials.
    pub url: Secret,
    /// The subject published to.
    pub topic: String,
}

impl Check for Settings {
    fn check(&self) -> Result<(), String> {
        required("topic", &self.topic)?;
        check_scheme(self.url.expose(), &["nats://", "tls://"])
    }
}

/// NATS clients by URL.
pub type Clients = Arc<Pool<Secret, async_nats::Client>>;

pub struct Nats {
    pub clients: Clients,
    pub settings: Settings,
}

#[async_trait::async_trait]
impl Notifier for Nats {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let url = &self.settings.url;
        let body = webhook::default_body(n).to_string();
        let connect = || async {
            // The error text may name the URL (and its credentials): it is not passed on.
            async_nats::connect(url.expose())
                .await
                .map_err(|_| NotifyError::retry("could not connect to NATS"))
        };
        let publish = |client: async_nats::Client| {
            let (subject, body) = (self.settings.topic.clone(), body.clone());
            async move {
                client
                    .publish(subject, body.into())
                    .await
                    .map_err(|e| NotifyError::retry(format!("NATS publish: {e}")))?;
                client
                    .flush()
                    .await
                    .map_err(|e| NotifyError::retry(format!("NATS flush: {e}")))
            }
        };
        self.clients.send(url, connect, publish).await
    }
}
