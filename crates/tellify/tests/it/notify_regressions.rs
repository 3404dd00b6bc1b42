//! Regressions found in review of the notification pipeline: each asserts what the contract asks.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, free_port};
use crate::receiver::Receiver;

async fn hook(server: &Server, name: &str, receiver: &Receiver, extra: Value) {
    let mut channel = json!({"kind": "webhook", "url": receiver.url(&format!("/{name}"))});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            channel[k] = v;
        }
    }
    let (status, body) = server
        .put_json(ADMIN, &format!("/api/v1/channels/{name}"), &channel)
        .await;
    assert!(status.is_success(), "{status} {body}");
}

/// Silences the alerts of `rule` until `ends_at` (RFC 3339).
async fn silence(server: &Server, rule: &str, ends_at: &str) {
    let (status, body) = server
        .post_json(
            ADMIN,
            "/api/v1/silences",
            &json!({"matchers": {"rule": rule}, "ends_at": ends_at}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A rule `m` on source `s`: `host` down fires, up again resolves; notifies `ops`.
fn up_down_rule() -> Value {
    json!({"name": "m", "source": "s", "when": "event.up == false", "resolve_when": "event.up == true",
        "group_by": ["host"], "notify": ["ops"]})
}

fn triggers(r: &Receiver) -> Vec<String> {
    r.received()
        .iter()
        .map(|x| x.json()["trigger"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test]
async fn a_restart_sends_no_extra_repeat() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    hook(&server, "ops", &receiver, json!({})).await;
    server
        .rule(ADMIN, json!({"name": "hot", "source": "s", "when": "true", "repeat_every": "10m", "notify": ["ops"]}))
        .await;
    server.send(ADMIN, "s", "application/json", "{}").await;
    server.settle().await;
    for _ in 0..3 {
        server.advance("10m").await;
    }
    server.advance("1m").await;
    receiver.wait_for(4).await;
    receiver.settle_at(&mut server, 4).await;
    server.terminate();
    let mut server = server.restart();
    server.settle().await;
    receiver.settle_at(&mut server, 4).await;
    assert_eq!(
        triggers(&receiver),
        vec!["fire", "repeat", "repeat", "repeat"],
        "a restart at 10:31 re-sent the 10:30 repeat"
    );
}

#[tokio::test]
async fn a_silence_that_ends_while_down_still_releases() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    hook(&server, "ops", &receiver, json!({})).await;
    server
        .rule(
            ADMIN,
            json!({"name": "hot", "source": "s", "when": "true", "notify": ["ops"]}),
        )
        .await;
    silence(&server, "hot", "2026-11-25T10:30:00Z").await;
    server.send(ADMIN, "s", "application/json", "{}").await;
    server.settle().await;
    server
        .deliveries_until(ADMIN, "status=silenced", |d| d.len() == 1)
        .await;
    server.terminate();
    server.now += 60 * 60_000;
    let mut server = server.restart();
    server.settle().await;
    server.advance("1s").await;
    receiver.wait_for(1).await;
    receiver.settle_at(&mut server, 1).await;
    assert_eq!(
        triggers(&receiver),
        vec!["fire"],
        "the silence ended at 10:30 while the server was down"
    );
}

/// A rule made from a template with `notify:` tells its channel of the fire and, after a
/// person resolves it (with or without a restart in between), of the resolve.
async fn instance_notifies(restart: bool) {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    hook(&server, "ops", &receiver, json!({})).await;
    server.rule(ADMIN, json!({
        "name": "tpl", "template": true, "source": "s", "when": "event.v > {{ params.limit }}",
        "notify": ["ops"],
        "params": {"type": "object", "required": ["limit"], "properties": {"limit": {"type": "number"}}}
    })).await;
    server
        .rule(
            ADMIN,
            json!({"name": "inst", "from": "tpl", "params": {"limit": 5}}),
        )
        .await;
    server
        .send(ADMIN, "s", "application/json", r#"{"v": 10}"#)
        .await;
    server.settle().await;
    receiver.wait_for(1).await;
    if restart {
        server.terminate();
        server = server.restart();
    }
    let id = server.alerts(ADMIN, "status=firing").await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, _) = server
        .post_json(ADMIN, &format!("/api/v1/alerts/{id}/resolve"), &json!({}))
        .await;
    assert!(status.is_success(), "{status}");
    server.settle().await;
    receiver.wait_for(2).await;
    receiver.settle_at(&mut server, 2).await;
    assert_eq!(
        triggers(&receiver),
        vec!["fire", "resolve"],
        "restart: {restart}"
    );
}

#[tokio::test]
async fn a_template_instances_notify_list_survives_a_restart() {
    instance_notifies(true).await;
}

#[tokio::test]
async fn a_resolve_is_not_overtaken_by_a_retried_fire() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    receiver.script(&[(503, None)]);
    hook(&server, "ops", &receiver, json!({})).await;
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "event.up == false",
            "resolve_when": "event.up == true", "notify": ["ops"]}),
        )
        .await;
    server
        .send(ADMIN, "s", "application/json", r#"{"up": false}"#)
        .await;
    server.settle().await;
    receiver.wait_for(1).await;
    server.advance("2s").await;
    server
        .send(ADMIN, "s", "application/json", r#"{"up": true}"#)
        .await;
    server.settle().await;
    // The resolve waits for the fire before it on this channel…
    receiver.settle_at(&mut server, 1).await;
    server.advance("1m").await;
    receiver.wait_for(3).await;
    // …then goes after it: fire (refused), fire (retried), resolve.
    receiver.settle_at(&mut server, 3).await;
    assert_eq!(triggers(&receiver), vec!["fire", "fire", "resolve"]);
}

#[tokio::test]
async fn a_put_without_headers_keeps_the_secret_headers() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    hook(
        &server,
        "ops",
        &receiver,
        json!({"headers": {"Authorization": "Bearer t0ken"}}),
    )
    .await;
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/ops",
            &json!({"kind": "webhook", "url": "***"}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "true", "notify": ["ops"]}),
        )
        .await;
    server.send(ADMIN, "s", "application/json", "{}").await;
    server.settle().await;
    let got = receiver.wait_for(1).await;
    assert_eq!(
        got[0].header("authorization"),
        Some("Bearer t0ken"),
        "the kept secret header"
    );
}

/// A PUT replaces the channel; a secret left out keeps its stored value, but a plain setting
/// left out is not kept: the PUT is refused, naming it, and the stored channel stays as it was.
#[tokio::test]
async fn a_put_missing_a_required_plain_setting_is_refused() {
    let server = Server::start().await;
    let (s, b) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/bus",
            &json!({"kind": "nats", "url": "nats://u:p@127.0.0.1:4222", "topic": "alerts"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = server
        .put_json(ADMIN, "/api/v1/channels/bus", &json!({"kind": "nats"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["error"]["code"], "invalid_channel", "{b}");
    let message = b["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains("`topic`"),
        "names the missing setting: {message}"
    );
    let (_, got) = server.get(ADMIN, "/api/v1/channels/bus").await;
    assert_eq!(
        got["topic"], "alerts",
        "the stored channel is unchanged: {got}"
    );
    // The control: leaving out only the secret keeps it, and the PUT goes through.
    let (s, b) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/bus",
            &json!({"kind": "nats", "topic": "other"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["topic"], "other", "{b}");
    assert_eq!(b["url"], "***", "the secret kept: {b}");
}

#[tokio::test]
async fn a_refused_rule_save_does_not_reroute() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    hook(&server, "a", &receiver, json!({})).await;
    hook(&server, "b", &receiver, json!({})).await;
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "true", "notify": ["a"]}),
        )
        .await;
    let (s, b) = server
        .put_json(
            ADMIN,
            "/api/v1/rules/m",
            &json!({"name": "m", "source": "s", "when": "event.x >", "notify": ["b"]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    server.send(ADMIN, "s", "application/json", "{}").await;
    server.settle().await;
    let got = receiver.wait_for(1).await;
    let paths: Vec<_> = got.iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        vec!["/a"],
        "the refused save changed where the rule notifies"
    );
}

#[tokio::test]
async fn a_silence_over_an_already_notified_alert_does_not_renotify() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    hook(&server, "ops", &receiver, json!({})).await;
    server
        .rule(
            ADMIN,
            json!({"name": "hot", "source": "s", "when": "true", "notify": ["ops"]}),
        )
        .await;
    server.send(ADMIN, "s", "application/json", "{}").await;
    server.settle().await;
    receiver.wait_for(1).await;
    server.advance("1m").await;
    silence(&server, "hot", "2026-11-25T10:30:00Z").await;
    server.advance("40m").await;
    receiver.settle_at(&mut server, 1).await;
    assert_eq!(
        triggers(&receiver),
        vec!["fire"],
        "nothing was held back, yet the silence's end re-sent `fire`"
    );
}

#[tokio::test]
async fn a_template_instances_notify_list_without_a_restart() {
    instance_notifies(false).await;
}

#[tokio::test]
async fn a_pagerduty_digest_starting_with_an_ack_still_triggers_new_alerts() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    receiver.always_json(
        202,
        json!({"status": "success", "message": "Event processed"}),
    );
    let (s, b) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/pd",
            &json!({"kind": "pagerduty",
        "routing_key": "R0UT1NGKEY0123456789abcdefABCDEF", "url": receiver.url("/enqueue")}),
        )
        .await;
    assert!(s.is_success(), "{s} {b}");
    server
        .rule(
            ADMIN,
            json!({"name": "hot", "source": "s", "when": "true", "group_by": ["h"]}),
        )
        .await;
    let (s, b) = server
        .post_json(
            ADMIN,
            "/api/v1/subscriptions",
            &json!({"channel": "pd",
        "notify_on": ["fire", "ack"], "digest": {"every": "1m"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    server
        .send(ADMIN, "s", "application/json", r#"{"h": "a"}"#)
        .await;
    server.settle().await;
    server.advance("61s").await;
    receiver.wait_for(1).await;
    let a = server.alerts(ADMIN, "status=firing").await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (s, _) = server
        .post_json(ADMIN, &format!("/api/v1/alerts/{a}/ack"), &json!({}))
        .await;
    assert!(s.is_success());
    server.advance("10s").await;
    server
        .send(ADMIN, "s", "application/json", r#"{"h": "b"}"#)
        .await;
    server.settle().await;
    server.advance("2m").await;
    let got = receiver.wait_for(3).await;
    let actions: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let j = r.json();
            (
                j["dedup_key"].as_str().unwrap_or("").to_owned(),
                j["event_action"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let b_actions: Vec<&str> = actions
        .iter()
        .filter(|(k, _)| *k != a)
        .map(|(_, x)| x.as_str())
        .collect();
    assert_eq!(
        b_actions,
        vec!["trigger"],
        "alert b's first and only event: {actions:?}"
    );
}

#[tokio::test]
async fn a_resolve_during_a_silence_reaches_channels_told_of_the_fire() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    hook(&server, "ops", &receiver, json!({})).await;
    server.rule(ADMIN, up_down_rule()).await;
    // a fires before the silence and is delivered.
    server
        .send(
            ADMIN,
            "s",
            "application/json",
            r#"{"host": "a", "up": false}"#,
        )
        .await;
    server.settle().await;
    receiver.wait_for(1).await;
    silence(&server, "m", "2026-11-25T12:00:00Z").await;
    // b fires during the silence: muted.
    server
        .send(
            ADMIN,
            "s",
            "application/json",
            r#"{"host": "b", "up": false}"#,
        )
        .await;
    server.settle().await;
    // Both recover during the silence: a's resolve goes (ops knew it fired), b's does not.
    server
        .send(
            ADMIN,
            "s",
            "application/json",
            r#"[{"host": "a", "up": true}, {"host": "b", "up": true}]"#,
        )
        .await;
    server.settle().await;
    receiver.wait_for(2).await;
    receiver.settle_at(&mut server, 2).await;
    let got: Vec<(String, String)> = receiver
        .received()
        .iter()
        .map(|r| {
            (
                r.json()["trigger"].as_str().unwrap_or("?").to_owned(),
                r.json()["alert"]["key"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("fire".to_owned(), "a".to_owned()),
            ("resolve".to_owned(), "a".to_owned())
        ]
    );
    assert_eq!(
        server.deliveries(ADMIN, "status=silenced").await.len(),
        2,
        "b's fire and resolve"
    );
}

#[tokio::test]
async fn a_resolve_during_a_silence_follows_a_fire_that_is_still_retrying() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    // The receiver is down: the fire is accepted, not yet sent.
    let down = format!("http://127.0.0.1:{}/ops", free_port());
    hook(&server, "ops", &receiver, json!({"url": down})).await;
    server.rule(ADMIN, up_down_rule()).await;
    server
        .send(
            ADMIN,
            "s",
            "application/json",
            r#"{"host": "a", "up": false}"#,
        )
        .await;
    server.settle().await;
    server
        .deliveries_until(ADMIN, "status=pending", |d| {
            d.first().is_some_and(|d| d["attempts"] == 1)
        })
        .await;
    silence(&server, "m", "2026-11-25T12:00:00Z").await;
    server
        .send(
            ADMIN,
            "s",
            "application/json",
            r#"{"host": "a", "up": true}"#,
        )
        .await;
    server.settle().await;
    // The fire will reach the receiver when it is back, so the resolve must follow it.
    let pending = server
        .deliveries_until(ADMIN, "status=pending", |d| d.len() == 2)
        .await;
    let mut triggers: Vec<&str> = pending
        .iter()
        .filter_map(|d| d["trigger"].as_str())
        .collect();
    triggers.sort();
    assert_eq!(triggers, ["fire", "resolve"]);
    assert!(server.deliveries(ADMIN, "status=silenced").await.is_empty());
}
