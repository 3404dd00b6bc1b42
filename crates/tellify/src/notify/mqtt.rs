//! `mqtt` channels: publish the alert JSON to a topic with QoS 1 (`qos: 0` for fire and
//! forget); with QoS 1 it counts as sent when the broker acknowledges it.
//!
//! One connection is kept per broker and login ([`super::pool`]). rumqttc's event loop needs
//! polling for as long as the connection lives, so each connection has a task that drives
//! it and hands each publish its outcome: MQTT brokers acknowledge QoS 1 publishes in the
//! order they were sent (MQTT 3.1.1, 4.6), and the event loop sends them in the order they
//! were asked for, so a queue of waiters in that order pairs each with its packet id. The
//! task, and with it the connection, ends when the connection fails (every waiting publish
//! fails, to be retried on a new one) or when the pool drops the last handle.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use serde::Deserialize;
use tokio::sync::oneshot;

use super::channel::{Check, Secret, check_scheme, required};
use super::pool::Pool;
use super::{Notification, Notifier, NotifyError, webhook};

/// An `mqtt` channel's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `mqtt://HOST[:PORT]` or `tcp://…` (port 1883 by default); a secret.
    pub url: Secret,
    /// The topic published to.
    pub topic: String,
    /// 1 (the default): sent when the broker acknowledges it; 0: sent when written.
    #[serde(default)]
    pub qos: Option<u8>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
}

impl Check for Settings {
    fn check(&self) -> Result<(), String> {
        required("topic", &self.topic)?;
        check_scheme(self.url.expose(), &["mqtt://", "tcp://"])?;
        if self.qos.is_some_and(|q| q > 1) {
            return Err("`qos` must be 0 or 1".into());
        }
        Ok(())
    }
}

/// Where and as whom a connection is made: the pool's key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Broker {
    host: String,
    port: u16,
    login: Option<(String, Secret)>,
}

impl Broker {
    fn of(settings: &Settings) -> Result<Self, NotifyError> {
        let url = settings.url.expose();
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| NotifyError::permanent("`url` must be mqtt://HOST:PORT"))?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| NotifyError::permanent("`url` has a bad port"))?,
            ),
            None => (rest, 1883),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            login: settings.username.clone().zip(settings.password.clone()),
        })
    }
}

/// Publishes waiting for the broker, in the order they were sent.
#[derive(Default)]
struct Waiters {
    /// Asked for, not yet written (no packet id yet).
    queued: VecDeque<oneshot::Sender<Result<(), String>>>,
    /// Written with QoS 1, by packet id, waiting for their PUBACK.
    unacked: HashMap<u16, oneshot::Sender<Result<(), String>>>,
}

/// A kept connection: a handle to its event loop's task.
#[derive(Clone)]
pub struct Client {
    client: AsyncClient,
    waiters: Arc<Mutex<Waiters>>,
}

/// MQTT connections by broker and login.
pub type Clients = Arc<Pool<Broker, Client>>;

pub struct Mqtt {
    pub clients: Clients,
    pub settings: Settings,
}

/// Connects and waits for the broker's CONNACK, then leaves the event loop to a task.
async fn connect(broker: &Broker) -> Result<Client, NotifyError> {
    // Each connection its own id: a broker drops a connection whose id another one takes.
    let id = format!("tellify-{}", uuid::Uuid::now_v7().simple());
    let mut options = MqttOptions::new(id, broker.host.clone(), broker.port);
    options.set_keep_alive(Duration::from_secs(10));
    if let Some((user, password)) = &broker.login {
        options.set_credentials(user, password.expose());
    }
    let (client, mut events) = AsyncClient::new(options, 64);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => return Err(NotifyError::retry(format!("MQTT: {e}"))),
        }
    }
    let waiters = Arc::new(Mutex::new(Waiters::default()));
    tokio::spawn(drive(events, waiters.clone()));
    Ok(Client { client, waiters })
}

/// Polls the event loop, settling each publish, until the connection fails or every handle
/// is gone (rumqttc then reports its requests done).
async fn drive(mut events: EventLoop, waiters: Arc<Mutex<Waiters>>) {
    let error = loop {
        let event = events.poll().await;
        let mut w = waiters.lock().expect("mqtt waiters poisoned");
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(waiter) = w.queued.pop_front() {
                    // QoS 0 has no packet id and no acknowledgement: written is sent.
                    if pkid == 0 {
                        let _ = waiter.send(Ok(()));
                    } else {
                        w.unacked.insert(pkid, waiter);
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(waiter) = w.unacked.remove(&ack.pkid) {
                    let _ = waiter.send(Ok(()));
                }
            }
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => break None,
            Err(e) => break Some(e.to_string()),
        }
    };
    let mut w = waiters.lock().expect("mqtt waiters poisoned");
    let error = error.unwrap_or_else(|| "the connection closed".into());
    let w = &mut *w;
    for waiter in w.queued.drain(..).chain(w.unacked.drain().map(|(_, w)| w)) {
        let _ = waiter.send(Err(error.clone()));
    }
}

impl Client {
    async fn publish(&self, topic: &str, qos: QoS, body: String) -> Result<(), NotifyError> {
        let (tx, rx) = oneshot::channel();
        {
            // Queued and asked for under one lock, so the queue's order is the event loop's.
            let mut w = self.waiters.lock().expect("mqtt waiters poisoned");
            self.client
                .try_publish(topic, qos, false, body)
                .map_err(|e| NotifyError::retry(format!("MQTT: {e}")))?;
            w.queued.push_back(tx);
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NotifyError::retry(format!("MQTT: {e}"))),
            Err(_) => Err(NotifyError::retry("MQTT: the connection closed")),
        }
    }
}

#[async_trait::async_trait]
impl Notifier for Mqtt {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let broker = Broker::of(&self.settings)?;
        let qos = match self.settings.qos {
            Some(0) => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let body = webhook::default_body(n).to_string();
        let topic = self.settings.topic.as_str();
        self.clients
            .send(
                &broker,
                || connect(&broker),
                |client: Client| {
                    let body = body.clone();
                    async move { client.publish(topic, qos, body).await }
                },
            )
            .await
    }
}
