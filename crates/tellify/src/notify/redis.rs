//! `redis` channels: add the alert JSON to a stream (`XADD topic * alert JSON`, the default)
//! or publish it on a pub/sub channel (`mode: pubsub`).

use serde_json::{Map, Value};

use super::{Notification, Notifier, NotifyError, setting, webhook};

pub struct Redis;

#[async_trait::async_trait]
impl Notifier for Redis {
    async fn send(
        &self,
        settings: &Map<String, Value>,
        n: &Notification,
    ) -> Result<(), NotifyError> {
        let url = setting(settings, "url")?;
        let topic = setting(settings, "topic")?;
        let client = redis::Client::open(url)
            .map_err(|_| NotifyError::permanent("`url` is not a redis:// URL"))?;
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|_| NotifyError::retry("could not connect to Redis"))?;
        let body = webhook::default_body(n).to_string();
        let result: redis::RedisResult<redis::Value> =
            match settings.get("mode").and_then(Value::as_str) {
                Some("pubsub") => {
                    redis::cmd("PUBLISH")
                        .arg(topic)
                        .arg(&body)
                        .query_async(&mut con)
                        .await
                }
                _ => {
                    redis::cmd("XADD")
                        .arg(topic)
                        .arg("*")
                        .arg("alert")
                        .arg(&body)
                        .query_async(&mut con)
                        .await
                }
            };
        result
            .map(|_| ())
            .map_err(|e| NotifyError::retry(format!("Redis: {e}")))
    }
}
