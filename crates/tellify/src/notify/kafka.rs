//! `kafka` channels: produce the alert JSON to a topic, keyed by the alert id (so one alert's
//! changes land on one partition, in order), with `acks=all`: it counts as sent when every
//! in-sync replica has it.
//!
//! `url` is `kafka://host:port[,host:port…]` (plaintext) or `kafkas://…` (TLS, with the
//! system's roots or `ca_file`). `username` and `password` turn on SASL (`sasl_mechanism`
//! `PLAIN` by default, or `SCRAM-SHA-256` / `SCRAM-SHA-512`).
//!
//! A producer keeps connections and metadata, so one is kept per distinct configuration
//! rather than made per send ([`super::pool`]), and dropped after it has been idle a while (so
//! a deleted channel, or one whose broker is gone, does not keep reconnecting). librdkafka
//! reconnects by itself, so a failed send does not drop it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext};
use serde::Deserialize;
use tracing::{debug, warn};

use super::channel::{Check, Secret};
use super::pool::Pool;
use super::{Notification, Notifier, NotifyError, webhook};

/// How long one message may take to be acknowledged before the send fails (and is retried by
/// the outbox). Under the worker's 30-second limit on a send.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(20);

pub const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// A `kafka` channel's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `kafka://host:port[,host:port…]` or `kafkas://…` (TLS); shown on reads, so it may not
    /// carry credentials.
    pub url: String,
    /// The topic produced to.
    pub topic: String,
    /// SASL login (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// `PLAIN` (the default), `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// A PEM file of a CA to trust besides the system's.
    #[serde(default)]
    pub ca_file: Option<String>,
}

impl Check for Settings {
    fn check(&self) -> Result<(), String> {
        let Some((_, servers)) = parse_url(&self.url) else {
            return Err("`url` must start with kafka:// or kafkas://".into());
        };
        if servers.split(',').any(|hp| {
            hp.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return Err("`url` must list brokers as host:port, separated by commas".into());
        }
        // The broker list is shown on reads: credentials go in `username` and `password`.
        if servers.contains('@') {
            return Err(
                "`url` must not carry credentials (it is shown on reads): use `username` and `password`"
                    .into(),
            );
        }
        if self.username.is_some() && self.password.is_none() {
            return Err("a Kafka `username` needs a `password` (SASL)".into());
        }
        if let Some(m) = &self.sasl_mechanism
            && !MECHANISMS.contains(&m.as_str())
        {
            return Err(format!(
                "`sasl_mechanism` must be one of {}",
                MECHANISMS.join(", ")
            ));
        }
        let topic = &self.topic;
        if topic.is_empty()
            || topic.len() > 249
            || !topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err("`topic` must be up to 249 of a-z, A-Z, 0-9, `.`, `_`, `-`".into());
        }
        Ok(())
    }
}

type Producer = FutureProducer<Quiet>;

/// A kept producer and the client errors it has logged.
#[derive(Clone)]
pub struct Client {
    producer: Producer,
    logged_errors: LoggedErrors,
}

/// A producer's librdkafka configuration, as sorted pairs.
type Config = Vec<(&'static str, String)>;

/// Producers by configuration.
pub type Clients = Arc<Pool<Config, Client>>;

pub struct Kafka {
    pub clients: Clients,
    pub settings: Settings,
}

/// The client errors logged for a producer since its last successful send.
type LoggedErrors = Arc<Mutex<HashSet<String>>>;

/// librdkafka reports a broker that is down several times a second, for as long as it is
/// down: its log goes to debug, and each distinct client error is logged once (again only
/// after a send has gone through). The outbox records each failed delivery anyway.
struct Quiet {
    logged_errors: LoggedErrors,
}

impl ClientContext for Quiet {
    fn log(&self, _level: RDKafkaLogLevel, facility: &str, message: &str) {
        debug!(target: "tellify::kafka", facility, message);
    }

    fn error(&self, error: KafkaError, _reason: &str) {
        // The reason names brokers; the error says what kind of failure it is.
        let text = error.to_string();
        let mut logged = self
            .logged_errors
            .lock()
            .expect("kafka error state poisoned");
        if !logged.contains(&text) {
            warn!(
                message = "A Kafka channel's client failed; repeats are not logged.",
                error = text.as_str()
            );
            logged.insert(text);
        }
    }
}

/// A producer for `config`. Making one starts its threads but connects nothing yet.
fn producer(config: &Config) -> Result<Client, NotifyError> {
    let mut client = ClientConfig::new();
    for (k, v) in config {
        client.set(*k, v);
    }
    let logged_errors = LoggedErrors::default();
    let context = Quiet {
        logged_errors: logged_errors.clone(),
    };
    // librdkafka's errors can name brokers: say only what failed.
    let producer: Producer = client.create_with_context(context).map_err(|e| {
        NotifyError::permanent(format!("the Kafka settings were refused: {}", code(&e)))
    })?;
    Ok(Client {
        producer,
        logged_errors,
    })
}

#[async_trait::async_trait]
impl Notifier for Kafka {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let topic = self.settings.topic.as_str();
        let config = client_config(&self.settings)?;
        let Client {
            producer,
            logged_errors,
        } = self
            .clients
            .client(&config, || async { producer(&config) })
            .await?;
        let body = webhook::default_body(n).to_string();
        let key = n.first().id.as_str();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            })
            .insert(Header {
                key: "tellify-delivery-id",
                value: Some(n.id.as_str()),
            });
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(&body)
            .headers(headers);
        match producer.send(record, Timeout::After(MESSAGE_TIMEOUT)).await {
            Ok(_) => {
                logged_errors
                    .lock()
                    .expect("kafka error state poisoned")
                    .clear();
                Ok(())
            }
            Err((e, _)) => Err(classify(&e)),
        }
    }
}

/// Splits a channel's `url` into whether it asks for TLS and its broker list
/// (`kafkas://a:9093,b:9093/` → `(true, "a:9093,b:9093")`); `None` for another scheme.
pub fn parse_url(url: &str) -> Option<(bool, &str)> {
    let (tls, rest) = match url.strip_prefix("kafkas://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("kafka://")?),
    };
    Some((tls, rest.trim_end_matches('/')))
}

/// The librdkafka configuration for a channel's settings, as sorted pairs (the cache key).
fn client_config(settings: &Settings) -> Result<Config, NotifyError> {
    let (tls, servers) = parse_url(&settings.url)
        .ok_or_else(|| NotifyError::permanent("`url` must start with kafka:// or kafkas://"))?;
    let login = settings.username.as_ref().zip(settings.password.as_ref());
    let protocol = match (tls, login.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    let mut config = vec![
        ("bootstrap.servers", servers.to_owned()),
        ("security.protocol", protocol.to_owned()),
        ("acks", "all".to_owned()),
        (
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        ),
        ("client.id", "tellify".to_owned()),
    ];
    if let Some(ca) = &settings.ca_file {
        config.push(("ssl.ca.location", ca.clone()));
    }
    if let Some((username, password)) = login {
        config.push((
            "sasl.mechanism",
            settings
                .sasl_mechanism
                .clone()
                .unwrap_or_else(|| "PLAIN".to_owned()),
        ));
        config.push(("sasl.username", username.clone()));
        config.push(("sasl.password", password.expose().to_owned()));
    }
    config.sort();
    Ok(config)
}

/// Only the error's code is passed on: the message can name brokers.
fn code(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(c) => format!("{c:?}"),
        None => "invalid configuration".to_owned(),
    }
}

/// Refusals a retry cannot change are permanent; everything else (a broker down, a leader
/// moving, a timeout, a failed login, as with SMTP) is retried by the outbox.
fn classify(e: &KafkaError) -> NotifyError {
    use RDKafkaErrorCode as C;
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(
            C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidTopic
                | C::InvalidRecord
                | C::UnsupportedForMessageFormat
        )
    );
    let message = match e.rdkafka_error_code() {
        Some(C::MessageTimedOut) => format!(
            "Kafka: no broker took the message within {} s (MessageTimedOut)",
            MESSAGE_TIMEOUT.as_secs()
        ),
        _ => format!("Kafka: {}", code(e)),
    };
    if permanent {
        NotifyError::permanent(message)
    } else {
        NotifyError::retry(message)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{Value, json};

    use super::*;

    fn parse(settings: Value) -> Settings {
        serde_json::from_value(settings).expect("settings")
    }

    fn config(settings: Value) -> HashMap<&'static str, String> {
        client_config(&parse(settings))
            .expect("config")
            .into_iter()
            .collect()
    }

    #[test]
    fn scheme_and_credentials_choose_the_security_protocol() {
        let plain = config(json!({"url": "kafka://a:9092,b:9092/", "topic": "t"}));
        assert_eq!(plain["bootstrap.servers"], "a:9092,b:9092");
        assert_eq!(plain["security.protocol"], "plaintext");
        assert_eq!(plain["acks"], "all");
        assert!(!plain.contains_key("sasl.username"));

        let tls = config(json!({"url": "kafkas://a:9093", "topic": "t", "ca_file": "/ca.pem"}));
        assert_eq!(tls["security.protocol"], "ssl");
        assert_eq!(tls["ssl.ca.location"], "/ca.pem");

        let sasl = config(json!({"url": "kafkas://a:9093", "topic": "t",
            "username": "svc", "password": "pw"}));
        assert_eq!(sasl["security.protocol"], "sasl_ssl");
        assert_eq!(sasl["sasl.mechanism"], "PLAIN");
        assert_eq!(sasl["sasl.username"], "svc");
        assert_eq!(sasl["sasl.password"], "pw");

        let scram = config(json!({"url": "kafka://a:9092", "topic": "t",
            "username": "svc", "password": "pw", "sasl_mechanism": "SCRAM-SHA-512"}));
        assert_eq!(scram["security.protocol"], "sasl_plaintext");
        assert_eq!(scram["sasl.mechanism"], "SCRAM-SHA-512");
    }

    #[test]
    fn librdkafka_accepts_every_configuration_the_api_allows() {
        for settings in [
            json!({"url": "kafka://a:9092", "topic": "t"}),
            json!({"url": "kafkas://a:9093", "topic": "t"}),
            json!({"url": "kafkas://a:9093", "topic": "t", "username": "u", "password": "p",
                "sasl_mechanism": "SCRAM-SHA-256"}),
            json!({"url": "kafka://a:9092", "topic": "t", "username": "u", "password": "p"}),
        ] {
            let config = client_config(&parse(settings.clone())).expect("config");
            assert!(producer(&config).is_ok(), "{settings}");
        }
    }

    #[test]
    fn refusals_a_retry_cannot_change_are_permanent() {
        let refused = KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert!(!classify(&refused).retryable);
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let e = classify(&timed_out);
        assert!(e.retryable);
        assert!(e.message.contains("within 20 s"), "{}", e.message);
    }
}
