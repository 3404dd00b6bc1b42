//! Secrets round-trip: for every secret-bearing setting of every channel kind, and the SMTP
//! password, a read shows `***`, and an update that sends `***` or leaves the secret out keeps
//! the stored value — checked twice: in the database (the sealed value opens, with the
//! server's key, to the one first given) and where a receiver can see it (the URL a request
//! goes to, the signature, the headers, the routing key, the basic auth, the SMTP login, a
//! broker that takes the message).

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tellify::crypto::SecretBox;

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, unique};
use crate::receiver::{Received, Receiver};
use crate::smtp::SmtpServer;

/// Every secret-bearing setting these tests cover, by kind; checked against the server's own
/// list so a new secret cannot go untested.
const COVERED: &[(&str, &[&str])] = &[
    ("webhook", &["url", "secret", "headers"]),
    ("slack", &["webhook_url"]),
    ("teams", &["webhook_url"]),
    ("pagerduty", &["routing_key"]),
    ("sms", &["token"]),
    ("email", &[]),
    ("nats", &["url"]),
    ("redis", &["url"]),
    ("mqtt", &["url", "password"]),
    ("amqp", &["url"]),
    ("kafka", &["password"]),
];

const ROUTING_KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";

#[test]
fn every_secret_setting_of_every_kind_is_covered() {
    let kinds = tellify::notify::channel::KINDS;
    assert_eq!(kinds.len(), COVERED.len(), "a kind is not covered");
    for kind in kinds {
        let (_, covered) = COVERED
            .iter()
            .find(|(k, _)| *k == kind.name)
            .unwrap_or_else(|| panic!("kind {} is not covered", kind.name));
        let mut secrets: Vec<&str> = kind.secrets.fields.to_vec();
        secrets.extend(kind.secrets.maps);
        secrets.sort();
        let mut covered = covered.to_vec();
        covered.sort();
        assert_eq!(secrets, covered, "the secrets of {}", kind.name);
    }
}

/// The stored settings of a channel with their secrets opened by the server key, read
/// straight from the database; every secret must be sealed there.
async fn stored(server: &Server, name: &str, secrets: &[&str]) -> Map<String, Value> {
    let settings: String = {
        let pool = sqlx::SqlitePool::connect(&format!(
            "sqlite://{}?mode=ro",
            server.data_dir.path().join("tellify.db").display()
        ))
        .await
        .expect("the database opens");
        let row: (String,) = sqlx::query_as("SELECT settings FROM channels WHERE name = ?")
            .bind(name)
            .fetch_one(&pool)
            .await
            .expect("the channel is stored");
        pool.close().await;
        row.0
    };
    let keys = SecretBox::load(server.data_dir.path()).expect("the server key");
    let mut settings: Map<String, Value> = serde_json::from_str(&settings).expect("JSON");
    let open = |v: &mut Value, what: &str| {
        let sealed = v.as_str().unwrap_or_else(|| panic!("{what}: {v}"));
        assert!(SecretBox::is_sealed(sealed), "{what} is sealed at rest");
        *v = Value::String(keys.open(sealed).expect("opens"));
    };
    for &field in secrets {
        match settings.get_mut(field) {
            Some(Value::Object(headers)) => {
                for (k, v) in headers.iter_mut() {
                    open(v, &format!("{field}.{k}"));
                }
            }
            Some(v) => open(v, field),
            None => {}
        }
    }
    settings
}

/// Saves a channel; checks the answer and a later read show every secret as `***`.
async fn put(server: &Server, name: &str, body: &Value, secrets: &[&str]) -> StatusCode {
    let path = format!("/api/v1/channels/{name}");
    let (status, answer) = server.put_json(ADMIN, &path, body).await;
    assert!(status.is_success(), "{name} {body}: {status} {answer}");
    let (_, read) = server.get(ADMIN, &path).await;
    for shown in [&answer, &read] {
        for &field in secrets {
            match &shown[field] {
                Value::Object(headers) => {
                    assert!(!headers.is_empty(), "{shown}");
                    for v in headers.values() {
                        assert_eq!(v, "***", "{field} in {shown}");
                    }
                }
                v => assert_eq!(v, "***", "{field} in {shown}"),
            }
        }
    }
    status
}

/// The two updates that must keep the secrets: each sent as `***`, and each left out.
fn updates(create: &Value, secrets: &[&str]) -> [(&'static str, Value); 2] {
    let mut hidden = create.clone();
    let mut omitted = create.clone();
    for &field in secrets {
        if hidden.get(field).is_some() {
            hidden[field] = json!("***");
        }
        omitted.as_object_mut().expect("object").remove(field);
    }
    [("***", hidden), ("left out", omitted)]
}

async fn test_send(server: &Server, name: &str) {
    let (status, body) = server
        .request(
            Method::POST,
            ADMIN,
            &format!("/api/v1/channels/{name}/test"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{name}: {body}");
    assert_eq!(body["sent"], true);
}

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn check_webhook(r: &Received, headers: &[(&str, Option<&str>)]) {
    assert_eq!(r.path, "/hook/k3pt-path", "the stored URL");
    assert_eq!(
        r.header("x-tellify-signature"),
        Some(signature("s1gning-secret", &r.body).as_str()),
        "signed with the stored secret"
    );
    for (name, value) in headers {
        assert_eq!(r.header(name), *value, "header {name}");
    }
}

#[tokio::test]
async fn webhook_url_secret_and_headers_are_kept_by_star_and_by_leaving_them_out() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    let secrets = ["url", "secret", "headers"];
    let create = json!({"kind": "webhook", "url": receiver.url("/hook/k3pt-path"), "secret": "s1gning-secret",
        "headers": {"Authorization": "Bearer t0ken", "X-Team": "ops"}});
    assert_eq!(
        put(&server, "hook", &create, &secrets).await,
        StatusCode::CREATED
    );
    let want = json!({"url": receiver.url("/hook/k3pt-path"), "secret": "s1gning-secret",
        "headers": {"Authorization": "Bearer t0ken", "X-Team": "ops"}});
    let mut sent = 0;
    // `"headers": "***"` is the case that used to drop the headers; twice in a row, since
    // the PUT after it was then refused.
    let [hidden, omitted] = updates(&create, &secrets);
    for (how, body) in [hidden.clone(), hidden, omitted.clone(), omitted] {
        assert_eq!(put(&server, "hook", &body, &secrets).await, StatusCode::OK);
        let kept = stored(&server, "hook", &secrets).await;
        for field in secrets {
            assert_eq!(
                kept[field], want[field],
                "{field} after a PUT with it {how}"
            );
        }
        test_send(&server, "hook").await;
        sent += 1;
        let got = receiver.wait_for(sent).await;
        check_webhook(
            &got[sent - 1],
            &[
                ("authorization", Some("Bearer t0ken")),
                ("x-team", Some("ops")),
            ],
        );
    }

    // Real notifications (the delivery worker's path) carry them too.
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "true", "notify": ["hook"]}),
        )
        .await;
    server.send(ADMIN, "s", "application/json", "{}").await;
    server.settle().await;
    sent += 1;
    let got = receiver.wait_for(sent).await;
    check_webhook(
        &got[sent - 1],
        &[
            ("authorization", Some("Bearer t0ken")),
            ("x-team", Some("ops")),
        ],
    );

    // Per header: `***` keeps that header's stored value (names compare case-insensitively),
    // a new value is taken, a header not sent again is gone.
    let body = json!({"kind": "webhook", "headers": {"authorization": "***", "X-New": "n3w"}});
    put(&server, "hook", &body, &secrets).await;
    let kept = stored(&server, "hook", &secrets).await;
    assert_eq!(
        kept["headers"],
        json!({"authorization": "Bearer t0ken", "X-New": "n3w"})
    );
    assert_eq!(kept["secret"], "s1gning-secret");
    test_send(&server, "hook").await;
    sent += 1;
    let got = receiver.wait_for(sent).await;
    check_webhook(
        &got[sent - 1],
        &[
            ("authorization", Some("Bearer t0ken")),
            ("x-new", Some("n3w")),
            ("x-team", None),
        ],
    );

    // A new value replaces a secret; `null` removes an optional one.
    let body =
        json!({"kind": "webhook", "secret": null, "headers": {"X-New": "***", "X-Other": "o"}});
    put(&server, "hook", &body, &["url", "headers"]).await;
    let kept = stored(&server, "hook", &secrets).await;
    assert!(kept.get("secret").is_none(), "{kept:?}");
    assert_eq!(kept["headers"], json!({"X-New": "n3w", "X-Other": "o"}));
    assert_eq!(kept["url"], want["url"]);
    test_send(&server, "hook").await;
    sent += 1;
    let got = receiver.wait_for(sent).await;
    assert_eq!(got[sent - 1].header("x-tellify-signature"), None);
    assert_eq!(got[sent - 1].header("x-new"), Some("n3w"));
}

#[tokio::test]
async fn a_star_with_nothing_stored_to_keep_is_refused() {
    let server = Server::start().await;
    let receiver = Receiver::start().await;
    let refused = [
        ("w1", json!({"kind": "webhook", "url": "***"})),
        (
            "w2",
            json!({"kind": "webhook", "url": receiver.url("/"), "headers": "***"}),
        ),
        (
            "w3",
            json!({"kind": "webhook", "url": receiver.url("/"), "headers": {"X-Key": "***"}}),
        ),
        (
            "w4",
            json!({"kind": "webhook", "url": receiver.url("/"), "secret": "***"}),
        ),
        ("s1", json!({"kind": "slack", "webhook_url": "***"})),
        ("p1", json!({"kind": "pagerduty", "routing_key": "***"})),
        (
            "k1",
            json!({"kind": "kafka", "url": "kafka://127.0.0.1:9092", "topic": "t", "username": "u", "password": "***"}),
        ),
    ];
    for (name, body) in &refused {
        let (status, answer) = server
            .put_json(ADMIN, &format!("/api/v1/channels/{name}"), body)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_channel", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .expect("message")
                .contains("nothing is stored"),
            "{answer}"
        );
        let (status, _) = server.get(ADMIN, &format!("/api/v1/channels/{name}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "nothing was saved");
    }
    // A channel that changes kind keeps nothing of the old kind's secrets.
    let hook = json!({"kind": "webhook", "url": receiver.url("/x")});
    put(&server, "c", &hook, &["url"]).await;
    let (status, answer) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/c",
            &json!({"kind": "slack", "webhook_url": "***"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}

fn basic_auth(r: &Received) -> String {
    let header = r.header("authorization").expect("an Authorization header");
    let encoded = header.strip_prefix("Basic ").expect("basic auth");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    String::from_utf8(decoded).expect("UTF-8")
}

#[tokio::test]
async fn slack_teams_pagerduty_and_sms_secrets_are_kept() {
    let server = Server::start().await;
    let receiver = Receiver::start().await;
    let cases = [
        (
            "slack",
            json!({"kind": "slack", "webhook_url": receiver.url("/slack/T000/B000/XXXX")}),
            &["webhook_url"][..],
        ),
        (
            "teams",
            json!({"kind": "teams", "webhook_url": receiver.url("/teams/workflow-sig")}),
            &["webhook_url"][..],
        ),
        (
            "pagerduty",
            json!({"kind": "pagerduty", "routing_key": ROUTING_KEY, "url": receiver.url("/pd")}),
            &["routing_key"][..],
        ),
        (
            "sms",
            json!({"kind": "sms", "url": receiver.url("/sms"), "account": "AC1", "token": "sms-t0ken",
                "from": "+15550001111", "to": "+15550002222"}),
            &["token"][..],
        ),
    ];
    let mut sent = 0;
    for (name, create, secrets) in &cases {
        put(&server, name, create, secrets).await;
        for (how, body) in updates(create, secrets) {
            put(&server, name, &body, secrets).await;
            let kept = stored(&server, name, secrets).await;
            for &field in *secrets {
                assert_eq!(kept[field], create[field], "{name}.{field} sent {how}");
            }
            test_send(&server, name).await;
            sent += 1;
            let r = &receiver.wait_for(sent).await[sent - 1];
            match *name {
                "slack" => assert_eq!(r.path, "/slack/T000/B000/XXXX", "{how}"),
                "teams" => assert_eq!(r.path, "/teams/workflow-sig", "{how}"),
                "pagerduty" => assert_eq!(r.json()["routing_key"], ROUTING_KEY, "{how}"),
                _ => assert_eq!(basic_auth(r), "AC1:sms-t0ken", "{how}"),
            }
        }
    }
}

#[tokio::test]
async fn broker_urls_and_passwords_are_kept() {
    let server = Server::start().await;
    let amqp = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let cases = [
        (
            "nats",
            json!({"kind": "nats", "url": "nats://127.0.0.1:4222", "topic": unique("tellify.secrets")}),
            &["url"][..],
        ),
        (
            "redis",
            json!({"kind": "redis", "url": "redis://127.0.0.1:6379", "topic": unique("tellify:secrets")}),
            &["url"][..],
        ),
        (
            "mqtt",
            json!({"kind": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": unique("tellify/secrets"),
                "username": "tellify", "password": "mqtt-pa55"}),
            &["url", "password"][..],
        ),
        (
            "amqp",
            json!({"kind": "amqp", "url": amqp, "topic": unique("tellify-secrets")}),
            &["url"][..],
        ),
        // No Kafka broker here: what is stored is what librdkafka would be given.
        (
            "kafka",
            json!({"kind": "kafka", "url": "kafka://127.0.0.1:9092", "topic": "alerts",
                "username": "tellify", "password": "kafka-pa55", "sasl_mechanism": "SCRAM-SHA-256"}),
            &["password"][..],
        ),
    ];
    for (name, create, secrets) in &cases {
        put(&server, name, create, secrets).await;
        for (how, body) in updates(create, secrets) {
            put(&server, name, &body, secrets).await;
            let kept = stored(&server, name, secrets).await;
            for &field in *secrets {
                assert_eq!(kept[field], create[field], "{name}.{field} sent {how}");
            }
            // Every other setting is as sent: nothing else was dropped on the way.
            for (field, value) in create.as_object().expect("object") {
                if field != "kind" {
                    assert_eq!(&kept[field], value, "{name}.{field} sent {how}");
                }
            }
            if *name != "kafka" {
                // The broker takes the message only with the stored URL (AMQP's holds the login).
                test_send(&server, name).await;
            }
        }
    }
}

fn smtp_settings(smtp: &SmtpServer) -> Value {
    json!({"host": "127.0.0.1", "port": smtp.port, "from_addr": "alerts@tellify.test",
           "encryption": "starttls", "auth": "password", "username": "mailer", "password": "smtp-pa55",
           "ca_file": smtp.ca.to_str().expect("path"), "test_addr": "ops@tellify.test"})
}

async fn stored_smtp_password(server: &Server) -> String {
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=ro",
        server.data_dir.path().join("tellify.db").display()
    ))
    .await
    .expect("the database opens");
    let (value,): (String,) = sqlx::query_as("SELECT value FROM settings WHERE key = 'smtp'")
        .fetch_one(&pool)
        .await
        .expect("stored");
    pool.close().await;
    let value: Value = serde_json::from_str(&value).expect("JSON");
    let sealed = value["password"].as_str().expect("a password");
    assert!(SecretBox::is_sealed(sealed), "sealed at rest");
    SecretBox::load(server.data_dir.path())
        .expect("key")
        .open(sealed)
        .expect("opens")
}

#[tokio::test]
async fn the_smtp_password_is_kept_by_star_and_by_leaving_it_out() {
    let smtp = SmtpServer::start("mailer", "smtp-pa55");
    let server = Server::start().await;
    let create = smtp_settings(&smtp);
    let mut sent = 0;
    let [hidden, omitted] = updates(&create, &["password"]);
    for (how, body) in [("given", create.clone()), hidden, omitted] {
        // Each PUT sends a test email, which logs in with the password it would keep.
        let (status, answer) = server.put_json(ADMIN, "/api/v1/config/smtp", &body).await;
        assert_eq!(status, StatusCode::OK, "password {how}: {answer}");
        assert_eq!(answer["password"], "***");
        let (_, read) = server.get(ADMIN, "/api/v1/config/smtp").await;
        assert_eq!(read["password"], "***");
        sent += 1;
        smtp.wait_for(sent).await;
        assert_eq!(stored_smtp_password(&server).await, "smtp-pa55", "{how}");
    }
    // `***` with no password stored is refused rather than saved as the password `***`.
    let fresh = Server::start().await;
    let mut body = smtp_settings(&smtp);
    body["password"] = json!("***");
    let (status, answer) = fresh.put_json(ADMIN, "/api/v1/config/smtp", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_smtp");
}
