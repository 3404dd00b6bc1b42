//! `amqp` channels: publish the alert JSON to an exchange (default: the default exchange)
//! with the topic as routing key (with the default exchange, the queue name), as a persistent
//! message with publisher confirms: it counts as sent when the broker confirms it.
//!
//! One connection, with one confirming channel, is kept per URL ([`super::pool`]); lapin runs
//! on tokio's executor and reactor rather than starting threads of its own.

use std::sync::Arc;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Deserialize;

use super::channel::{Check, Secret, check_scheme, required};
use super::pool::Pool;
use super::{Notification, Notifier, NotifyError, webhook};

/// An `amqp` channel's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `amqp://` or `amqps://`; a secret, since it may carry credentials.
    pub url: Secret,
    /// The routing key (with the default exchange, the queue).
    pub topic: String,
    /// The exchange (default: the default exchange, `""`).
    #[serde(default)]
    pub exchange: String,
}

impl Check for Settings {
    fn check(&self) -> Result<(), String> {
        required("topic", &self.topic)?;
        check_scheme(self.url.expose(), &["amqp://", "amqps://"])
    }
}

/// A kept connection and its channel in confirm mode.
#[derive(Clone)]
pub struct Client {
    /// Held so the connection lives as long as the pool keeps the client; dropped, it closes.
    _connection: Arc<Connection>,
    channel: Channel,
}

/// AMQP connections by URL.
pub type Clients = Arc<Pool<Secret, Client>>;

pub struct Amqp {
    pub clients: Clients,
    pub settings: Settings,
}

async fn connect(url: &str) -> Result<Client, NotifyError> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    // The error text may name the URL (and its credentials): it is not passed on.
    let connection = Connection::connect(url, properties)
        .await
        .map_err(|_| NotifyError::retry("could not connect to the AMQP broker"))?;
    let channel = async {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, lapin::Error>(channel)
    }
    .await
    .map_err(|e| NotifyError::retry(format!("AMQP: {e}")))?;
    Ok(Client {
        _connection: Arc::new(connection),
        channel,
    })
}

#[async_trait::async_trait]
impl Notifier for Amqp {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let Settings {
            url,
            topic,
            exchange,
        } = &self.settings;
        let body = webhook::default_body(n).to_string();
        let publish = |client: Client| {
            let body = body.clone();
            async move {
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(n.id.clone().into());
                let confirm = async {
                    client
                        .channel
                        .basic_publish(
                            exchange,
                            topic,
                            BasicPublishOptions::default(),
                            body.as_bytes(),
                            props,
                        )
                        .await?
                        .await
                }
                .await
                .map_err(|e| NotifyError::retry(format!("AMQP: {e}")))?;
                if confirm.is_nack() {
                    return Err(NotifyError::retry("the AMQP broker refused the message"));
                }
                Ok(())
            }
        };
        self.clients
            .send(url, || connect(url.expose()), publish)
            .await
    }
}
