//! The provider channels end to end — Slack, Microsoft Teams, PagerDuty and a Twilio-compatible
//! SMS API — each against a local receiver that checks the provider's documented payload:
//! PagerDuty's request JSON Schema, Block Kit's block types and limits, the Adaptive Card and
//! MessageCard shapes, and Twilio's form encoding with basic auth.

use std::collections::BTreeSet;

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, fixture};
use crate::receiver::{Received, Receiver};

/// A PagerDuty integration key is 32 characters.
const ROUTING_KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";

async fn channel(server: &Server, name: &str, settings: Value) {
    let (status, body) = server
        .put_json(ADMIN, &format!("/api/v1/channels/{name}"), &settings)
        .await;
    assert!(status.is_success(), "channel {name}: {status} {body}");
}

async fn subscribe(server: &Server, sub: Value) {
    let (status, body) = server.post_json(ADMIN, "/api/v1/subscriptions", &sub).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn post(server: &Server, path: &str) -> (StatusCode, Value) {
    server.request(Method::POST, ADMIN, path, None).await
}

/// The Events API v2 request schema, with `format` (the RFC 3339 timestamp) checked too.
fn pagerduty_schema() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(&fixture("pagerduty/events_v2_request.schema.json")).expect("JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("a valid schema")
}

/// Checks a request PagerDuty would be sent against its schema; returns the body.
fn pagerduty_event(schema: &jsonschema::Validator, r: &Received) -> Value {
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    let errors: Vec<String> = schema.iter_errors(&body).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?} in {body:#}");
    body
}

/// PagerDuty's answer when it took an event.
fn accepted() -> Value {
    json!({"status": "success", "message": "Event processed", "dedup_key": "srv01/HTTP"})
}

async fn pagerduty(server: &Server, name: &str, receiver: &Receiver) {
    channel(
        server,
        name,
        json!({"kind": "pagerduty", "routing_key": ROUTING_KEY, "url": receiver.url("/v2/enqueue")}),
    )
    .await;
}

#[tokio::test]
async fn pagerduty_triggers_acknowledges_and_resolves_one_incident_per_alert() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    receiver.always_json(202, accepted());
    let schema = pagerduty_schema();
    pagerduty(&server, "pd", &receiver).await;
    subscribe(
        &server,
        json!({"channel": "pd", "notify_on": ["fire", "resolve", "ack", "disable"]}),
    )
    .await;
    server.rule(ADMIN, json!({"name": "disk-full", "source": "disk", "when": "event.pct > 90", "group_by": ["host"],
        "severity": "error", "value": "event.pct", "summary": "{{ event.host }} at {{ event.pct }}%",
        "labels": {"site": "berlin"}, "links": {"Runbook": "https://runbooks.example/disk"}})).await;

    server
        .send(ADMIN, "disk", "text/plain", "host:db1 pct:95")
        .await;
    server.settle().await;
    let got = receiver.wait_for(1).await;
    let alert = &server.alerts(ADMIN, "status=firing").await[0];
    let id = alert["id"].as_str().expect("id").to_owned();
    let trigger = pagerduty_event(&schema, &got[0]);
    assert_eq!(got[0].path, "/v2/enqueue");
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], id);
    assert_eq!(trigger["client"], "Tellify");
    let payload = &trigger["payload"];
    assert_eq!(payload["severity"], "error");
    assert_eq!(payload["source"], "disk");
    assert_eq!(payload["group"], "disk-full");
    assert_eq!(payload["component"], "db1");
    assert!(
        payload["summary"]
            .as_str()
            .expect("summary")
            .contains("db1 at 95%")
    );
    assert_eq!(payload["timestamp"], "2026-11-25T10:00:00.000Z");
    let details = &payload["custom_details"];
    // The rule's labels, and the group_by fields the alert is keyed by.
    assert_eq!(details["labels"], json!({"host": "db1", "site": "berlin"}));
    assert_eq!(details["labels"], alert["labels"]);
    assert_eq!(details["key"], "db1");
    assert_eq!(details["value"], 95.0);
    assert_eq!(details["rule"], "disk-full");
    assert_eq!(details["count"], 1);
    assert_eq!(
        trigger["links"],
        json!([{"href": "https://runbooks.example/disk", "text": "Runbook"}])
    );

    let (status, body) = post(&server, &format!("/api/v1/alerts/{id}/ack")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = receiver.wait_for(2).await;
    let ack = pagerduty_event(&schema, &got[1]);
    assert_eq!(
        ack,
        json!({"routing_key": ROUTING_KEY, "event_action": "acknowledge", "dedup_key": id, "client": "Tellify"}),
        "acknowledge needs only the key"
    );

    let (status, body) = post(&server, &format!("/api/v1/alerts/{id}/resolve")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = receiver.wait_for(3).await;
    let resolve = pagerduty_event(&schema, &got[2]);
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], id);
    assert!(resolve.get("payload").is_none());
    receiver.settle_at(&mut server, 3).await;

    // Disabling the rule resolves the incidents of its open alerts.
    server
        .send(ADMIN, "disk", "text/plain", "host:db2 pct:99")
        .await;
    server.settle().await;
    let got = receiver.wait_for(4).await;
    let second = pagerduty_event(&schema, &got[3]);
    assert_eq!(second["event_action"], "trigger");
    assert_ne!(second["dedup_key"], id, "a new alert is a new incident");
    server.rule(ADMIN, json!({"name": "disk-full", "source": "disk", "when": "event.pct > 90", "group_by": ["host"],
        "disabled": true})).await;
    server.settle().await;
    let got = receiver.wait_for(5).await;
    let disabled = pagerduty_event(&schema, &got[4]);
    assert_eq!(disabled["event_action"], "resolve");
    assert_eq!(disabled["dedup_key"], second["dedup_key"]);
    receiver.settle_at(&mut server, 5).await;
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 5)
        .await;
}

#[tokio::test]
async fn pagerduty_refusals_are_dead_at_once_and_rate_limits_are_retried() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    receiver.always_json(202, accepted());
    let schema = pagerduty_schema();
    pagerduty(&server, "pd", &receiver).await;
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "true", "group_by": ["n"], "notify": ["pd"],
        "severity": "critical"}),
        )
        .await;

    // 400: the event is invalid, and sending it again cannot help.
    receiver.script_json(&[(
        400,
        json!({"status": "invalid event", "message": "Event object is invalid", "errors": ["Length of 'routing_key' is incorrect"]}),
    )]);
    server
        .send(ADMIN, "s", "application/json", r#"{"n": "a"}"#)
        .await;
    server.settle().await;
    let dead = server
        .deliveries_until(ADMIN, "status=dead", |d| d.len() == 1)
        .await;
    assert_eq!(dead[0]["attempts"], 1);
    let error = dead[0]["last_error"].as_str().expect("error");
    assert!(
        error.contains("400") && error.contains("invalid event"),
        "{error}"
    );
    receiver.settle_at(&mut server, 1).await;

    // 429: rate limited; the retry gets through.
    receiver.script_json(&[(429, json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly.  Please retry later."}))]);
    server
        .send(ADMIN, "s", "application/json", r#"{"n": "b"}"#)
        .await;
    server.settle().await;
    receiver.wait_for(2).await;
    let pending = server
        .deliveries_until(ADMIN, "status=pending", |d| {
            d.len() == 1 && d[0]["attempts"] == 1
        })
        .await;
    assert!(
        pending[0]["last_error"]
            .as_str()
            .expect("error")
            .contains("429")
    );
    server.advance("1m").await;
    let got = receiver.wait_for(3).await;
    let sent = server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 1)
        .await;
    assert_eq!(sent[0]["attempts"], 2);
    assert_eq!(sent[0]["id"], pending[0]["id"]);
    for r in &got {
        let event = pagerduty_event(&schema, r);
        assert_eq!(event["event_action"], "trigger");
        assert_eq!(event["payload"]["severity"], "critical");
    }
    assert_eq!(
        got[1].json(),
        got[2].json(),
        "the retry sends the same event"
    );
    receiver.settle_at(&mut server, 3).await;
}

#[tokio::test]
async fn a_pagerduty_digest_is_one_event_per_alert() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    receiver.always_json(202, accepted());
    let schema = pagerduty_schema();
    pagerduty(&server, "pd", &receiver).await;
    subscribe(
        &server,
        json!({"channel": "pd", "digest": {"every": "1m"}, "notify_on": ["fire"]}),
    )
    .await;
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "true", "group_by": ["n"], "severity": "info"}),
        )
        .await;
    for n in ["a", "b", "c"] {
        server
            .send(ADMIN, "s", "application/json", &json!({"n": n}).to_string())
            .await;
    }
    server.settle().await;
    server
        .deliveries_until(ADMIN, "status=held", |d| d.len() == 3)
        .await;
    server.advance("1m").await;
    let got = receiver.wait_for(3).await;
    receiver.settle_at(&mut server, 3).await;
    let ids: BTreeSet<String> = server
        .alerts(ADMIN, "")
        .await
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_owned())
        .collect();
    let keys: BTreeSet<String> = got
        .iter()
        .map(|r| {
            let e = pagerduty_event(&schema, r);
            assert_eq!(e["event_action"], "trigger");
            assert_eq!(e["payload"]["severity"], "info");
            e["dedup_key"].as_str().expect("key").to_owned()
        })
        .collect();
    assert_eq!(keys, ids, "one event per alert, keyed by its id");
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 3)
        .await;
}

#[tokio::test]
async fn slack_gets_a_fallback_text_and_block_kit_blocks() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    channel(
        &server,
        "slack",
        json!({"kind": "slack", "webhook_url": receiver.url("/services/T0/B0/x")}),
    )
    .await;
    channel(
        &server,
        "slack-digest",
        json!({"kind": "slack", "webhook_url": receiver.url("/services/T0/B1/y")}),
    )
    .await;
    subscribe(
        &server,
        json!({"channel": "slack-digest", "digest": {"every": "1m"}, "notify_on": ["fire"]}),
    )
    .await;
    // Nine labels: with severity, status, rule, key and value, more facts than one section holds.
    let labels: serde_json::Map<String, Value> = (1..=9)
        .map(|i| (format!("label{i}"), json!(format!("v{i}"))))
        .collect();
    server.rule(ADMIN, json!({"name": "disk-full", "source": "disk", "when": "event.pct > 90", "group_by": ["host"],
        "severity": "critical", "value": "event.pct", "summary": "{{ event.host }} at {{ event.pct }}% & rising",
        "labels": labels, "notify": ["slack"],
        "links": {"Runbook": "https://runbooks.example/disk", "Dashboard": "https://grafana.example/d/disk"}})).await;

    server
        .send(
            ADMIN,
            "disk",
            "text/plain",
            "host:db1 pct:95\nhost:db2 pct:97",
        )
        .await;
    server.settle().await;
    let got = receiver.wait_for(2).await;
    let mut hosts = Vec::new();
    for r in &got {
        assert_eq!(r.path, "/services/T0/B0/x");
        let body = r.json();
        let text = body["text"].as_str().expect("text");
        assert!(!text.is_empty() && !text.contains('\n'), "{text}");
        let blocks = body["blocks"].as_array().expect("blocks");
        assert!(blocks.len() <= 50);
        for b in blocks {
            let kind = b["type"].as_str().expect("type");
            assert!(
                ["header", "section", "context", "actions", "divider"].contains(&kind),
                "{b}"
            );
        }
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert!(
            blocks[0]["text"]["text"]
                .as_str()
                .expect("title")
                .contains("disk-full")
        );
        let host = if text.contains("db1") { "db1" } else { "db2" };
        hosts.push(host);
        let summary = blocks
            .iter()
            .find(|b| b["type"] == "section" && b["text"]["type"] == "mrkdwn")
            .expect("a summary section");
        let pct = if host == "db1" { 95 } else { 97 };
        assert!(
            summary["text"]["text"]
                .as_str()
                .expect("mrkdwn")
                .contains(&format!("{host} at {pct}% &amp; rising")),
            "{summary}"
        );
        let fields: Vec<&Value> = blocks
            .iter()
            .filter_map(|b| b.get("fields"))
            .flat_map(|f| {
                let f = f.as_array().expect("fields");
                assert!(f.len() <= 10, "at most ten fields a section");
                f
            })
            .collect();
        let texts: Vec<&str> = fields
            .iter()
            .map(|f| {
                assert_eq!(f["type"], "mrkdwn");
                f["text"].as_str().expect("field")
            })
            .collect();
        assert!(texts.contains(&"*Severity*\ncritical"), "{texts:?}");
        assert!(texts.contains(&format!("*Key*\n{host}").as_str()));
        assert!(texts.contains(&"*label9*\nv9"));
        assert!(texts.len() > 10, "every fact, over several sections");
        let context = blocks
            .iter()
            .find(|b| b["type"] == "context")
            .expect("context");
        let seen = context["elements"][0]["text"].as_str().expect("context");
        assert!(
            seen.contains("First seen 2026-11-25 10:00:00 UTC"),
            "{seen}"
        );
        let actions = blocks
            .iter()
            .find(|b| b["type"] == "actions")
            .expect("actions");
        let urls: BTreeSet<&str> = actions["elements"]
            .as_array()
            .expect("buttons")
            .iter()
            .map(|e| {
                assert_eq!(e["type"], "button");
                assert_eq!(e["text"]["type"], "plain_text");
                e["url"].as_str().expect("a button has a url")
            })
            .collect();
        assert_eq!(
            urls,
            BTreeSet::from([
                "https://runbooks.example/disk",
                "https://grafana.example/d/disk"
            ])
        );
    }
    hosts.sort();
    assert_eq!(hosts, ["db1", "db2"], "one message per alert");

    // The digest: a header, then one section line per alert.
    server.advance("1m").await;
    let got = receiver.wait_for(3).await;
    assert_eq!(got[2].path, "/services/T0/B1/y");
    let body = got[2].json();
    let blocks = body["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 3, "{body:#}");
    assert_eq!(blocks[0]["type"], "header");
    let lines: Vec<&str> = blocks[1..]
        .iter()
        .map(|b| {
            assert_eq!(b["type"], "section");
            b["text"]["text"].as_str().expect("line")
        })
        .collect();
    assert!(lines.iter().any(|l| l.contains("db1 at 95%")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("db2 at 97%")), "{lines:?}");
    receiver.settle_at(&mut server, 3).await;
}

#[tokio::test]
async fn teams_gets_an_adaptive_card_or_with_card_legacy_a_message_card() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    // Workflows webhooks answer 202 Accepted.
    receiver.always(Some(202));
    channel(
        &server,
        "teams",
        json!({"kind": "teams", "webhook_url": receiver.url("/workflows/adaptive")}),
    )
    .await;
    channel(&server, "teams-legacy", json!({"kind": "teams", "card": "legacy", "webhook_url": receiver.url("/webhookb2/legacy")})).await;
    server.rule(ADMIN, json!({"name": "disk-full", "source": "disk", "when": "event.pct > 90", "group_by": ["host"],
        "severity": "warning", "value": "event.pct", "summary": "{{ event.host }} at {{ event.pct }}%",
        "labels": {"site": "berlin"}, "links": {"Runbook": "https://runbooks.example/disk"},
        "notify": ["teams", "teams-legacy"]})).await;
    server
        .send(ADMIN, "disk", "text/plain", "host:db1 pct:95")
        .await;
    server.settle().await;
    let got = receiver.wait_for(2).await;
    receiver.settle_at(&mut server, 2).await;
    let find = |path: &str| {
        got.iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("nothing posted to {path}"))
            .json()
    };

    let message = find("/workflows/adaptive");
    assert_eq!(message["type"], "message");
    let attachments = message["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 1);
    assert_eq!(
        attachments[0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert!(attachments[0]["contentUrl"].is_null());
    let card = &attachments[0]["content"];
    assert_eq!(
        card["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4");
    let body = card["body"].as_array().expect("body");
    assert_eq!(body[0]["type"], "TextBlock");
    assert_eq!(body[0]["weight"], "Bolder");
    assert_eq!(body[0]["size"], "Medium");
    assert_eq!(body[0]["wrap"], true);
    assert!(
        body[0]["text"]
            .as_str()
            .expect("title")
            .contains("disk-full")
    );
    assert_eq!(body[1]["type"], "TextBlock");
    assert!(
        body[1]["text"]
            .as_str()
            .expect("summary")
            .contains("db1 at 95%")
    );
    let facts = body
        .iter()
        .find(|b| b["type"] == "FactSet")
        .expect("a FactSet")["facts"]
        .as_array()
        .expect("facts");
    for fact in [
        json!({"title": "Severity", "value": "warning"}),
        json!({"title": "Key", "value": "db1"}),
        json!({"title": "Value", "value": "95"}),
        json!({"title": "site", "value": "berlin"}),
    ] {
        assert!(facts.contains(&fact), "{fact} in {facts:?}");
    }
    assert_eq!(
        card["actions"],
        json!([{"type": "Action.OpenUrl", "title": "Runbook", "url": "https://runbooks.example/disk"}])
    );

    let legacy = find("/webhookb2/legacy");
    assert_eq!(legacy["@type"], "MessageCard");
    assert_eq!(legacy["@context"], "https://schema.org/extensions");
    assert!(!legacy["summary"].as_str().expect("summary").is_empty());
    assert_eq!(legacy["themeColor"], "FFB900", "amber for a warning");
    assert!(
        legacy["title"]
            .as_str()
            .expect("title")
            .contains("disk-full")
    );
    let section = &legacy["sections"][0];
    assert_eq!(section["activityTitle"], "db1 at 95%");
    assert_eq!(section["markdown"], true);
    let facts = section["facts"].as_array().expect("facts");
    assert!(facts.contains(&json!({"name": "site", "value": "berlin"})));
    assert!(facts.contains(&json!({"name": "Severity", "value": "warning"})));
    assert_eq!(
        legacy["potentialAction"],
        json!([{"@type": "OpenUri", "name": "Runbook",
            "targets": [{"os": "default", "uri": "https://runbooks.example/disk"}]}])
    );
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 2)
        .await;
}

/// A form-encoded body as its (name, value) pairs, in order.
fn form(r: &Received) -> Vec<(String, String)> {
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    form_urlencoded::parse(&r.body).into_owned().collect()
}

/// The `user:password` of a basic `Authorization` header.
fn basic_auth(r: &Received) -> String {
    let header = r.header("authorization").expect("an Authorization header");
    let encoded = header.strip_prefix("Basic ").expect("basic auth");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    String::from_utf8(decoded).expect("UTF-8")
}

#[tokio::test]
async fn sms_posts_one_form_encoded_message_per_recipient_with_basic_auth() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    // Twilio answers 201 with the message resource.
    receiver.always_json(
        201,
        json!({"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"}),
    );
    let path = "/2010-04-01/Accounts/AC0123/Messages.json";
    channel(
        &server,
        "sms",
        json!({"kind": "sms", "url": receiver.url(path), "account": "AC0123", "token": "t0ken",
            "from": "+15550001111", "to": ["+15550002222", "+15550003333"]}),
    )
    .await;
    let (_, shown) = server.get(ADMIN, "/api/v1/channels/sms").await;
    assert_eq!(shown["token"], "***", "the token is write-only");
    server.rule(ADMIN, json!({"name": "disk-full", "source": "disk", "when": "event.pct > 90", "group_by": ["host"],
        "severity": "critical", "value": "event.pct", "notify": ["sms"],
        "summary": "{{ event.host }} is almost full: writes will fail, builds will stop, and the nightly \
            backups will not run until someone frees space or grows the volume; see the runbook for the steps"})).await;

    server
        .send(ADMIN, "disk", "text/plain", "host:db1 pct:95")
        .await;
    server.settle().await;
    let got = receiver.wait_for(2).await;
    receiver.settle_at(&mut server, 2).await;
    let mut to = BTreeSet::new();
    for r in &got {
        assert_eq!(r.path, path);
        assert_eq!(basic_auth(r), "AC0123:t0ken");
        let fields = form(r);
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["To", "From", "Body"]);
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .expect("field")
        };
        assert_eq!(get("From"), "+15550001111");
        to.insert(get("To"));
        let text = get("Body");
        assert!(
            text.chars().count() <= 160,
            "{} chars",
            text.chars().count()
        );
        assert!(!text.contains('\n'));
        assert!(text.contains("db1"), "the alert key: {text}");
        assert!(text.starts_with("FIRING CRITICAL db1"), "{text}");
    }
    assert_eq!(
        to,
        BTreeSet::from(["+15550002222".to_owned(), "+15550003333".to_owned()]),
        "one message per recipient"
    );
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 1)
        .await;

    // A recipient the provider refuses fails the delivery for good, naming them; the other
    // recipient still got the message.
    receiver.script_json(&[
        (201, json!({"sid": "SM1", "status": "queued"})),
        (
            400,
            json!({"code": 21211, "message": "The 'To' number +15550003333 is not a valid phone number.", "status": 400}),
        ),
    ]);
    server
        .send(ADMIN, "disk", "text/plain", "host:db2 pct:99")
        .await;
    server.settle().await;
    let got = receiver.wait_for(4).await;
    assert!(form(&got[2]).contains(&("To".into(), "+15550002222".into())));
    let dead = server
        .deliveries_until(ADMIN, "status=dead", |d| d.len() == 1)
        .await;
    assert_eq!(dead[0]["attempts"], 1);
    let error = dead[0]["last_error"].as_str().expect("error");
    assert!(
        error.contains("+15550003333") && error.contains("400"),
        "{error}"
    );
}

#[tokio::test]
async fn the_test_endpoint_sends_through_every_kind_and_reports_a_failing_receiver() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    let schema = pagerduty_schema();
    let kinds = [
        (
            "slack",
            json!({"kind": "slack", "webhook_url": receiver.url("/slack")}),
        ),
        (
            "teams",
            json!({"kind": "teams", "webhook_url": receiver.url("/teams")}),
        ),
        (
            "pagerduty",
            json!({"kind": "pagerduty", "routing_key": ROUTING_KEY, "url": receiver.url("/pagerduty")}),
        ),
        (
            "sms",
            json!({"kind": "sms", "url": receiver.url("/sms"), "account": "AC1", "token": "t",
                "from": "+15550001111", "to": "+15550002222"}),
        ),
    ];
    for (name, settings) in &kinds {
        channel(&server, name, settings.clone()).await;
    }
    for (i, (name, _)) in kinds.iter().enumerate() {
        let (status, body) = post(&server, &format!("/api/v1/channels/{name}/test")).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(body["sent"], true);
        let got = receiver.wait_for(i + 1).await;
        let r = &got[i];
        assert_eq!(r.path, format!("/{name}"));
        match *name {
            "slack" => assert!(r.json()["blocks"].is_array()),
            "teams" => assert_eq!(r.json()["type"], "message"),
            "pagerduty" => {
                let event = pagerduty_event(&schema, r);
                assert_eq!(event["event_action"], "trigger");
                assert_eq!(event["payload"]["severity"], "info");
            }
            _ => assert!(
                form(r)
                    .iter()
                    .any(|(k, v)| k == "Body" && v.contains("Test"))
            ),
        }
    }
    receiver.settle_at(&mut server, kinds.len()).await;

    receiver.always(Some(500));
    for (name, _) in &kinds {
        let (status, body) = post(&server, &format!("/api/v1/channels/{name}/test")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{name}: {body}");
        assert_eq!(body["error"]["code"], "delivery_failed", "{name}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains("500"),
            "{name}: {body}"
        );
    }
}

/// A channel whose receiver is down trips its circuit breaker, and the channel's read and
/// `/metrics` show it: open until when, after how many failures; closed again once the
/// receiver is back and a send goes through.
#[tokio::test]
async fn a_channel_read_and_metrics_show_its_circuit_breaker() {
    let mut server = Server::start().await;
    let port = crate::harness::free_port();
    channel(
        &server,
        "flaky",
        json!({"kind": "webhook", "url": format!("http://127.0.0.1:{port}/hook")}),
    )
    .await;
    let (_, read) = server.get(ADMIN, "/api/v1/channels/flaky").await;
    assert_eq!(read["circuit"], json!({"state": "closed", "failures": 0}));

    // Five alerts, five failed sends (nothing listens): the fifth opens the breaker.
    server
        .rule(
            ADMIN,
            json!({"name": "hot", "source": "s", "when": "event.hot", "group_by": ["room"],
            "summary": "{{ event.room }} is hot", "notify": ["flaky"]}),
        )
        .await;
    for room in 1..=5 {
        let event = format!(r#"{{"hot": true, "room": "r{room}"}}"#);
        server.send(ADMIN, "s", "application/json", &event).await;
    }
    server.settle().await;
    server
        .deliveries_until(ADMIN, "status=pending", |d| {
            d.len() == 5 && d.iter().all(|d| d["attempts"] == 1)
        })
        .await;
    let (status, read) = server.get(ADMIN, "/api/v1/channels/flaky").await;
    assert_eq!(status, StatusCode::OK);
    let circuit = &read["circuit"];
    assert_eq!(circuit["state"], "open", "{read}");
    assert_eq!(circuit["failures"], 5, "{read}");
    let until = circuit["until"].as_i64().expect("until");
    assert!(
        until > server.now && until <= server.now + 60_000,
        "open for a minute from the last failure: {until} (now {})",
        server.now
    );
    let (_, list) = server.get(ADMIN, "/api/v1/channels").await;
    let listed = list["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["name"] == "flaky")
        .expect("listed");
    assert_eq!(listed["circuit"], read["circuit"]);
    wait_for_metric(
        &server,
        "tellify_channel_circuit_state{owner=\"admin\",channel=\"flaky\"} 2",
    )
    .await;

    // The receiver comes back; once the breaker lets the next send try, it goes through and
    // the breaker closes.
    let receiver = Receiver::start_on(&format!("127.0.0.1:{port}")).await;
    server.advance("61s").await;
    receiver.wait_for(5).await;
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 5)
        .await;
    let (_, read) = server.get(ADMIN, "/api/v1/channels/flaky").await;
    assert_eq!(read["circuit"], json!({"state": "closed", "failures": 0}));
    wait_for_metric(
        &server,
        "tellify_channel_circuit_state{owner=\"admin\",channel=\"flaky\"} 0",
    )
    .await;
}

/// Waits until `/metrics` has `line` (the worker refreshes breaker gauges about every second).
async fn wait_for_metric(server: &Server, line: &str) {
    for _ in 0..100 {
        let (_, metrics) = server.get(ADMIN, "/metrics").await;
        if metrics
            .as_str()
            .is_some_and(|m| m.lines().any(|l| l == line))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, metrics) = server.get(ADMIN, "/metrics").await;
    panic!("no `{line}` in {}", metrics.as_str().unwrap_or_default());
}
