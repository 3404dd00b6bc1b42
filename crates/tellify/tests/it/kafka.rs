//! The `kafka` channel against a real Kafka-protocol broker: noida-db's (PyPI, shipped built),
//! installed by scripts/test and started here per test, on its own port and data directory.
//! A separate rdkafka consumer reads back what Tellify produced.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, free_port, unique};

/// The broker binary: `TELLIFY_TEST_KAFKA_BROKER` (scripts/test sets it to the binary inside
/// the noida-db package), else `noida-db` on the PATH.
fn noida() -> String {
    std::env::var("TELLIFY_TEST_KAFKA_BROKER").unwrap_or_else(|_| "noida-db".to_owned())
}

/// How long a read waits for messages that should be there.
const READ_WAIT: Duration = Duration::from_secs(20);

/// A Kafka-protocol broker on its own port and data directory, killed on drop.
struct Broker {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Broker {
    fn start_on(port: u16) -> Broker {
        let data = tempfile::tempdir().expect("a data directory");
        let child = Command::new(noida())
            .args([
                "start",
                "--only",
                "kafka",
                "--kafka-port",
                &port.to_string(),
            ])
            .arg("--data-dir")
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the Kafka broker runs (scripts/test installs it: pip install noida-db)");
        let broker = Broker {
            child,
            port,
            _data: data,
        };
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return broker;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the Kafka broker did not listen on {port}");
    }

    fn start() -> Broker {
        Broker::start_on(free_port())
    }

    fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    /// Creates `topic` with one partition through the Kafka admin API.
    async fn create_topic(&self, topic: &str) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{}", self.port))
            .create()
            .expect("admin client");
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("the broker answers");
        for result in results {
            result.unwrap_or_else(|(name, e)| panic!("creating topic {name}: {e}"));
        }
    }

    /// Reads the topic's partition 0 from the start until `n` messages came or `wait` passed.
    fn read(&self, topic: &str, n: usize, wait: Duration) -> Vec<Record> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{}", self.port))
            .set(
                "group.id",
                format!("test-{}", uuid::Uuid::now_v7().simple()),
            )
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + wait;
        while out.len() < n && std::time::Instant::now() < deadline {
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = msg.expect("a message, not an error");
            let headers = msg
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
                body: serde_json::from_slice(msg.payload().expect("payload")).expect("json"),
                headers,
            });
        }
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Record {
    key: String,
    body: Value,
    headers: Vec<(String, String)>,
}

impl Record {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn kafka_rule(server: &Server, channel: &str) {
    server
        .rule(ADMIN, json!({"name": format!("rule-{channel}"), "source": "s", "when": "event.hot", "group_by": ["room"],
            "summary": "{{ event.room }} is hot", "resolve_when": "!event.hot", "notify": [channel]}))
        .await;
}

async fn send_hot(server: &mut Server, hot: bool) {
    server
        .send(
            ADMIN,
            "s",
            "application/json",
            &json!({"hot": hot, "room": "r1"}).to_string(),
        )
        .await;
    server.settle().await;
}

#[tokio::test]
async fn kafka_topic_gets_each_change_keyed_by_alert() {
    let broker = Broker::start();
    let topic = unique("tellify.alerts");
    broker.create_topic(&topic).await;
    let mut server = Server::start().await;
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/kafka",
            &json!({"kind": "kafka", "url": broker.url(), "topic": topic}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(body["url"], broker.url(), "the broker list is not a secret");
    kafka_rule(&server, "kafka").await;
    send_hot(&mut server, true).await;
    send_hot(&mut server, false).await;

    let records = broker.read(&topic, 2, READ_WAIT);
    assert_eq!(records.len(), 2, "a fire and a resolve");
    let (fire, resolve) = (&records[0], &records[1]);
    assert_eq!(fire.body["version"], 1, "{}", fire.body);
    assert_eq!(fire.body["trigger"], "fire", "{}", fire.body);
    assert_eq!(resolve.body["trigger"], "resolve", "{}", resolve.body);
    assert_eq!(fire.body["alert"]["rule"], "rule-kafka");
    assert_eq!(fire.body["alert"]["summary"], "r1 is hot");
    let alert_id = fire.body["alert"]["id"].as_str().expect("alert id");
    assert_eq!(
        fire.key, alert_id,
        "keyed by the alert, so its changes stay in order"
    );
    assert_eq!(resolve.key, alert_id);
    assert_eq!(fire.header("content-type"), Some("application/json"));
    let sent = server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 2)
        .await;
    let ids: Vec<&str> = sent.iter().filter_map(|d| d["id"].as_str()).collect();
    let header = fire
        .header("tellify-delivery-id")
        .expect("delivery id header");
    assert!(ids.contains(&header), "{header} in {ids:?}");

    // A channel test goes through the same producer.
    let (status, body) = server
        .post_json(ADMIN, "/api/v1/channels/kafka/test", &json!({}))
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(broker.read(&topic, 3, READ_WAIT).len(), 3);
    server.terminate();
}

/// The first failed attempt: librdkafka holds a message for its 20-second timeout first.
async fn wait_for_attempt(server: &Server) -> Vec<Value> {
    for _ in 0..160 {
        let d = server.deliveries(ADMIN, "status=pending").await;
        if d.len() == 1 && d[0]["attempts"] == 1 {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no failed attempt within 40 s");
}

#[tokio::test]
async fn kafka_broker_down_is_retried_until_it_is_back() {
    let port = free_port();
    let topic = unique("tellify.down");
    let mut server = Server::start().await;
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/kdown",
            &json!({"kind": "kafka", "url": format!("kafka://127.0.0.1:{port}"), "topic": topic}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    kafka_rule(&server, "kdown").await;
    send_hot(&mut server, true).await;
    // librdkafka gives up on the message after its timeout; the outbox keeps it.
    let d = wait_for_attempt(&server).await;
    let error = d[0]["last_error"].as_str().expect("error");
    assert!(error.starts_with("Kafka: "), "{error}");
    assert!(!error.contains(&port.to_string()), "{error}");

    let broker = Broker::start_on(port);
    broker.create_topic(&topic).await;
    server.advance("60s").await;
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 1)
        .await;
    // Delivered: the one message is there. Once: no second one comes within a few seconds.
    let records = broker.read(&topic, 2, Duration::from_secs(3));
    assert_eq!(records.len(), 1, "delivered once");
    assert_eq!(records[0].body["trigger"], "fire");
    server.terminate();
}

#[tokio::test]
async fn kafka_settings_are_checked() {
    let server = Server::start().await;
    for (settings, error) in [
        (
            json!({"kind": "kafka", "url": "http://x:9092", "topic": "t"}),
            "kafka://",
        ),
        (
            json!({"kind": "kafka", "url": "kafka://x", "topic": "t"}),
            "host:port",
        ),
        (
            json!({"kind": "kafka", "url": "kafka://x:9092", "topic": "a b"}),
            "`topic`",
        ),
        (
            json!({"kind": "kafka", "url": "kafka://x:9092", "topic": "t", "username": "u"}),
            "`password`",
        ),
        (
            json!({"kind": "kafka", "url": "kafka://x:9092", "topic": "t", "username": "u", "password": "p", "sasl_mechanism": "GSSAPI"}),
            "SCRAM-SHA-256",
        ),
        (json!({"kind": "kafka", "url": "kafka://x:9092"}), "`topic`"),
    ] {
        let (status, body) = server
            .put_json(ADMIN, "/api/v1/channels/k", &settings)
            .await;
        assert_eq!(status, 400, "{settings} → {body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(error), "{settings} → {message}");
    }
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/k",
            &json!({"kind": "kafka", "url": "kafkas://a:9093,b:9093", "topic": "t",
                "username": "svc", "password": "hunter2", "sasl_mechanism": "SCRAM-SHA-512"}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(body["password"], "***");
    assert_eq!(body["username"], "svc");
}
