//! `redis` channels: add the alert JSON to a stream (`XADD topic * alert JSON`, the default)
//! or publish it on a pub/sub channel (`mode: pubsub`). One multiplexed connection is kept
//! per URL ([`super::pool`]).

use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use serde::Deserialize;

use super::channel::{Check, Secret, check_scheme, required};
use super::pool::Pool;
use super::{Notification, Notifier, NotifyError, webhook};

/// A `redis` channel's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `redis://` or `rediss://`; a secret, since it may carry credentials.
    pub url: Secret,
    /// The stream, or the pub/sub channel.
    pub topic: String,
    #[serde(default)]
    pub mode: Mode,
}

/// How the alert is handed over.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Added to a stream: kept for consumers that read later.
    #[default]
    Stream,
    /// Published: only subscribers listening now get it.
    Pubsub,
}

impl Check for Settings {
    fn check(&self) -> Result<(), String> {
        required("topic", &self.topic)?;
        check_scheme(self.url.expose(), &["redis://", "rediss://"])
    }
}

/// Redis connections by URL.
pub type Clients = Arc<Pool<Secret, MultiplexedConnection>>;

pub struct Redis {
    pub clients: Clients,
    pub settings: Settings,
}

#[async_trait::async_trait]
impl Notifier for Redis {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let Settings { url, topic, mode } = &self.settings;
        let body = webhook::default_body(n).to_string();
        let connect = || async {
            let client = redis::Client::open(url.expose())
                .map_err(|_| NotifyError::permanent("`url` is not a redis:// URL"))?;
            client
                .get_multiplexed_async_connection()
                .await
                .map_err(|_| NotifyError::retry("could not connect to Redis"))
        };
        let command = match mode {
            Mode::Pubsub => redis::cmd("PUBLISH").arg(topic).arg(&body).clone(),
            Mode::Stream => redis::cmd("XADD")
                .arg(topic)
                .arg("*")
                .arg("alert")
                .arg(&body)
                .clone(),
        };
        let run = |mut con: MultiplexedConnection| {
            let command = command.clone();
            async move {
                command
                    .query_async::<redis::Value>(&mut con)
                    .await
                    .map(drop)
                    .map_err(|e| NotifyError::retry(format!("Redis: {e}")))
            }
        };
        self.clients.send(url, connect, run).await
    }
}
