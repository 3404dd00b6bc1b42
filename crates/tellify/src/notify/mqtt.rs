//! `mqtt` channels: publish the alert JSON to a topic with QoS 1 (`qos: 0` for fire and
//! forget); with QoS 1 it counts as sent when the broker acknowledges it.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Map, Value};

use super::{Notification, Notifier, NotifyError, setting, webhook};

pub struct Mqtt;

#[async_trait::async_trait]
impl Notifier for Mqtt {
    async fn send(
        &self,
        settings: &Map<String, Value>,
        n: &Notification,
    ) -> Result<(), NotifyError> {
        let url = setting(settings, "url")?;
        let topic = setting(settings, "topic")?;
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| NotifyError::permanent("`url` must be mqtt://HOST:PORT"))?;
        let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| NotifyError::permanent("`url` has a bad port"))?,
            ),
            None => (rest.trim_end_matches('/'), 1883),
        };
        let id = format!("tellify-{}", &n.id[n.id.len().saturating_sub(12)..]);
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(Duration::from_secs(10));
        if let (Some(u), Some(p)) = (
            settings.get("username").and_then(Value::as_str),
            settings.get("password").and_then(Value::as_str),
        ) {
            options.set_credentials(u, p);
        }
        let qos = match settings.get("qos").and_then(Value::as_u64) {
            Some(0) => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let (client, mut events) = AsyncClient::new(options, 10);
        client
            .publish(topic, qos, false, webhook::default_body(n).to_string())
            .await
            .map_err(|e| NotifyError::retry(format!("MQTT: {e}")))?;
        // Drive the connection until the broker has the message.
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => break,
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                    break;
                }
                Ok(_) => {}
                Err(e) => return Err(NotifyError::retry(format!("MQTT: {e}"))),
            }
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
        Ok(())
    }
}
