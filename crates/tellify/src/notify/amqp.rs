//! `amqp` channels: publish the alert JSON to an exchange (default: the default exchange)
//! with the topic as routing key (with the default exchange, the queue name), as a persistent
//! message with publisher confirms: it counts as sent when the broker confirms it.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Map, Value};

use super::{Notification, Notifier, NotifyError, setting, webhook};

pub struct Amqp;

#[async_trait::async_trait]
impl Notifier for Amqp {
    async fn send(
        &self,
        settings: &Map<String, Value>,
        n: &Notification,
    ) -> Result<(), NotifyError> {
        let url = setting(settings, "url")?;
        let topic = setting(settings, "topic")?;
        let exchange = settings
            .get("exchange")
            .and_then(Value::as_str)
            .unwrap_or("");
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|_| NotifyError::retry("could not connect to the AMQP broker"))?;
        let result = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(n.id.clone().into());
            let confirm = channel
                .basic_publish(
                    exchange,
                    topic,
                    BasicPublishOptions::default(),
                    webhook::default_body(n).to_string().as_bytes(),
                    props,
                )
                .await?
                .await?;
            Ok::<_, lapin::Error>(confirm)
        }
        .await;
        let _ = connection.close(200, "done").await;
        match result {
            Ok(confirm) if confirm.is_nack() => {
                Err(NotifyError::retry("the AMQP broker refused the message"))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(NotifyError::retry(format!("AMQP: {e}"))),
        }
    }
}
