//! Broker channels against this machine's NATS, Redis, Mosquitto and RabbitMQ: the alert JSON
//! is read back by a separate consumer.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, free_port, unique};

/// Makes channel `name`, a rule notifying it, and fires the rule.
async fn fire_through(server: &mut Server, name: &str, channel: Value) {
    let (status, body) = server
        .put_json(ADMIN, &format!("/api/v1/channels/{name}"), &channel)
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(body["url"], "***", "the broker URL is a secret");
    server
        .rule(ADMIN, json!({"name": format!("rule-{name}"), "source": "s", "when": "event.hot", "group_by": ["room"],
            "summary": "{{ event.room }} is hot", "notify": [name]}))
        .await;
    server
        .send(
            ADMIN,
            "s",
            "application/json",
            r#"{"hot": true, "room": "r1"}"#,
        )
        .await;
    server.settle().await;
}

fn assert_alert(body: &Value, name: &str) {
    assert_eq!(body["version"], 1, "the payload says its version: {body}");
    assert_eq!(body["trigger"], "fire", "{body}");
    assert_eq!(body["alert"]["rule"], format!("rule-{name}"), "{body}");
    assert_eq!(body["alert"]["summary"], "r1 is hot", "{body}");
}

#[tokio::test]
async fn nats_subject_gets_the_alert() {
    let mut server = Server::start().await;
    let subject = unique("tellify.alerts");
    let consumer = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("NATS is running");
    let mut sub = consumer
        .subscribe(subject.clone())
        .await
        .expect("subscribe");
    consumer.flush().await.expect("flush");
    fire_through(
        &mut server,
        "nats",
        json!({"kind": "nats", "url": "nats://127.0.0.1:4222", "topic": subject}),
    )
    .await;
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message in time")
        .expect("message");
    assert_alert(&serde_json::from_slice(&msg.payload).expect("json"), "nats");
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 1)
        .await;
}

#[tokio::test]
async fn redis_stream_and_pubsub_get_the_alert() {
    let mut server = Server::start().await;
    let stream = unique("tellify:alerts");
    let channel = unique("tellify-alerts");
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("url");
    let mut pubsub = client.get_async_pubsub().await.expect("Redis is running");
    pubsub.subscribe(&channel).await.expect("subscribe");
    fire_through(
        &mut server,
        "stream",
        json!({"kind": "redis", "url": "redis://127.0.0.1:6379", "topic": stream}),
    )
    .await;
    fire_through(&mut server, "pubsub", json!({"kind": "redis", "url": "redis://127.0.0.1:6379", "topic": channel, "mode": "pubsub"})).await;
    let msg = tokio::time::timeout(Duration::from_secs(10), pubsub.on_message().next())
        .await
        .expect("in time")
        .expect("message");
    let payload: String = msg.get_payload().expect("payload");
    assert_alert(&serde_json::from_str(&payload).expect("json"), "pubsub");

    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 2)
        .await;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .expect("xrange");
    assert_eq!(reply.ids.len(), 1, "one entry in the stream");
    let field: String = reply.ids[0].get("alert").expect("an `alert` field");
    assert_alert(&serde_json::from_str(&field).expect("json"), "stream");
    let _: redis::Value = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut con)
        .await
        .expect("del");
}

#[tokio::test]
async fn mqtt_topic_gets_the_alert() {
    let mut server = Server::start().await;
    let topic = unique("tellify/alerts");
    let mut options = rumqttc::MqttOptions::new(unique("consumer"), "127.0.0.1", 1883);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    client
        .subscribe(&topic, rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    // Wait for the subscription to be acknowledged before publishing.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("Mosquitto answers")
        {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("Mosquitto is running: {e}"),
        }
    }
    fire_through(
        &mut server,
        "mqtt",
        json!({"kind": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": topic}),
    )
    .await;
    let body = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("a message in time")
        {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => break p.payload,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_alert(&serde_json::from_slice(&body).expect("json"), "mqtt");

    // More notifications go over the kept connection, each sent once the broker has it
    // (QoS 1), or once written (QoS 0).
    for _ in 0..3 {
        test_send(&server, "mqtt").await;
    }
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/mqtt",
            &json!({"kind": "mqtt", "url": "***", "topic": topic, "qos": 0}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    test_send(&server, "mqtt").await;
    let mut tests = 0;
    while tests < 4 {
        match tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("the test messages in time")
        {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                let body: Value = serde_json::from_slice(&p.payload).expect("json");
                assert_eq!(body["alert"]["rule"], "tellify-test", "{body}");
                tests += 1;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn amqp_queue_gets_the_alert() {
    let mut server = Server::start().await;
    let queue = unique("tellify.alerts");
    let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ is running");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            &queue,
            lapin::options::QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("declare");
    fire_through(
        &mut server,
        "amqp",
        json!({"kind": "amqp", "url": url, "topic": queue}),
    )
    .await;
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 1)
        .await;
    let message = channel
        .basic_get(&queue, lapin::options::BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("a message in the queue");
    assert_alert(
        &serde_json::from_slice(&message.delivery.data).expect("json"),
        "amqp",
    );
    assert_eq!(
        message
            .delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/json")
    );

    // More notifications go over the kept connection, each confirmed by the broker.
    for _ in 0..3 {
        test_send(&server, "amqp").await;
    }
    for _ in 0..3 {
        let message = channel
            .basic_get(&queue, lapin::options::BasicGetOptions { no_ack: true })
            .await
            .expect("get")
            .expect("each test message in the queue");
        let body: Value = serde_json::from_slice(&message.delivery.data).expect("json");
        assert_eq!(body["alert"]["rule"], "tellify-test", "{body}");
    }
    let _ = connection.close(200, "done").await;
}

#[tokio::test]
async fn a_broker_that_is_down_is_retried() {
    let mut server = Server::start().await;
    let port = free_port();
    fire_through(
        &mut server,
        "down",
        json!({"kind": "nats", "url": format!("nats://127.0.0.1:{port}"), "topic": "x"}),
    )
    .await;
    let d = server
        .deliveries_until(ADMIN, "status=pending", |d| {
            d.len() == 1 && d[0]["attempts"] == 1
        })
        .await;
    let error = d[0]["last_error"].as_str().expect("error");
    assert!(error.contains("could not connect"), "{error}");
    assert!(
        !error.contains(&port.to_string()),
        "the URL (maybe with credentials) is not in the error"
    );
}

/// Sends a channel's test notification, which must go through.
async fn test_send(server: &Server, channel: &str) {
    let (status, body) = server
        .request(
            reqwest::Method::POST,
            ADMIN,
            &format!("/api/v1/channels/{channel}/test"),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
}

/// The Redis connections of user `user`, as `CLIENT LIST` shows them: their ids.
async fn redis_connections(con: &mut redis::aio::MultiplexedConnection, user: &str) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(con)
        .await
        .expect("client list");
    list.lines()
        .filter(|l| l.split(' ').any(|f| f == format!("user={user}")))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

/// A broker channel keeps its connection: several notifications, through the delivery worker
/// and the channel test, go over one Redis connection (seen from Redis: the channel logs in
/// as a user of its own). When Redis drops it, the next notification connects again and goes
/// through.
#[tokio::test]
async fn a_redis_channel_keeps_one_connection_and_makes_a_new_one_when_dropped() {
    let mut server = Server::start().await;
    let user = unique("tellify-pool");
    let stream = unique("tellify:pool");
    let admin = redis::Client::open("redis://127.0.0.1:6379").expect("url");
    let mut con = admin
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running");
    let _: redis::Value = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">pool-pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut con)
        .await
        .expect("acl setuser");
    let url = format!("redis://{user}:pool-pw@127.0.0.1:6379");
    fire_through(
        &mut server,
        "kept",
        json!({"kind": "redis", "url": url, "topic": stream}),
    )
    .await;
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 1)
        .await;
    for _ in 0..3 {
        test_send(&server, "kept").await;
    }
    let first = redis_connections(&mut con, &user).await;
    assert_eq!(
        first.len(),
        1,
        "four notifications, one connection: {first:?}"
    );
    let xlen = redis::cmd("XLEN").arg(&stream).clone();
    let sent: usize = xlen.query_async(&mut con).await.expect("xlen");
    assert_eq!(sent, 4);

    // Redis drops the connection: the next notification reconnects, once, and is sent.
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(&user)
        .query_async(&mut con)
        .await
        .expect("client kill");
    assert!(redis_connections(&mut con, &user).await.is_empty());
    test_send(&server, "kept").await;
    let second = redis_connections(&mut con, &user).await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first, "a new connection");
    let sent: usize = xlen.query_async(&mut con).await.expect("xlen");
    assert_eq!(sent, 5);

    let _: redis::Value = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut con)
        .await
        .expect("acl deluser");
    let _: redis::Value = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut con)
        .await
        .expect("del");
}
