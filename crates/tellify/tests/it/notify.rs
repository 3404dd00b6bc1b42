//! Notifications end to end: the outbox, webhook signing, retries, dead letters, crash safety,
//! silences, acknowledgement, repeats, subscriptions' filters, schedules and digests.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::{ADMIN_TOKEN as ADMIN, GATE_ARGS, Server, free_port};
use crate::receiver::Receiver;

fn verify(secret: &str, body: &[u8], header: Option<&str>) {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(header, Some(expected.as_str()), "signature");
}

async fn hook(server: &Server, token: &str, name: &str, receiver: &Receiver, secret: Option<&str>) {
    let mut channel = json!({"kind": "webhook", "url": receiver.url(&format!("/{name}"))});
    if let Some(s) = secret {
        channel["secret"] = json!(s);
    }
    let (status, body) = server
        .put_json(token, &format!("/api/v1/channels/{name}"), &channel)
        .await;
    assert!(status.is_success(), "{status} {body}");
}

async fn subscribe(server: &Server, token: &str, sub: Value) -> String {
    let (status, body) = server.post_json(token, "/api/v1/subscriptions", &sub).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn a_webhook_gets_each_change_once_signed_with_an_idempotency_key() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    hook(&server, ADMIN, "ops", &receiver, Some("s3cret")).await;
    subscribe(
        &server,
        ADMIN,
        json!({"channel": "ops", "rules": ["disk-*"]}),
    )
    .await;
    server.rule(ADMIN, json!({"name": "disk-full", "source": "disk", "when": "event.pct > 90", "group_by": ["host"],
        "severity": "critical", "value": "event.pct", "summary": "{{ event.host }} at {{ event.pct }}%"})).await;
    server
        .rule(
            ADMIN,
            json!({"name": "other", "source": "disk", "when": "true"}),
        )
        .await;

    server
        .send(ADMIN, "disk", "text/plain", "host:a pct:95")
        .await;
    server.settle().await;
    let got = receiver.wait_for(1).await;
    let body = got[0].json();
    assert_eq!(body["version"], 1, "the payload says its version");
    assert_eq!(body["trigger"], "fire");
    assert_eq!(body["alert"]["rule"], "disk-full");
    assert_eq!(body["alert"]["summary"], "a at 95%");
    assert_eq!(body["alert"]["value"], 95.0);
    assert_eq!(body["alert"]["severity"], "critical");
    verify("s3cret", &got[0].body, got[0].header("x-tellify-signature"));
    let sent = server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 1)
        .await;
    assert_eq!(
        got[0].header("idempotency-key"),
        Some(sent[0]["id"].as_str().expect("delivery id"))
    );

    // Folding in more events notifies nothing; resolving does.
    server
        .send(ADMIN, "disk", "text/plain", "host:a pct:96")
        .await;
    server.settle().await;
    receiver.settle_at(&mut server, 1).await;
    server.rule(ADMIN, json!({"name": "disk-full", "source": "disk", "when": "event.pct > 90", "group_by": ["host"],
        "resolve_when": "event.pct < 80", "severity": "critical"})).await;
    server
        .send(ADMIN, "disk", "text/plain", "host:a pct:50")
        .await;
    server.settle().await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].json()["trigger"], "resolve");
    assert_eq!(got[1].json()["alert"]["status"], "resolved");
    receiver.settle_at(&mut server, 2).await;

    // The secret and URL are write-only, and sealed at rest.
    let (_, channel) = server.get(ADMIN, "/api/v1/channels/ops").await;
    assert_eq!(channel["url"], "***");
    assert_eq!(channel["secret"], "***");
    let db = std::fs::read(server.data_dir.path().join("tellify.db")).expect("db");
    let wal = std::fs::read(server.data_dir.path().join("tellify.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("s3cret"),
            "the secret is stored in the clear"
        );
    }
    // A PUT without the secret keeps it: the next signature still verifies.
    let (status, body) = server
        .put_json(ADMIN, "/api/v1/channels/ops", &json!({"url": "***"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server
        .request(Method::POST, ADMIN, "/api/v1/channels/ops/test", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = receiver.wait_for(3).await;
    verify("s3cret", &got[2].body, got[2].header("x-tellify-signature"));
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_retries_with_growing_gaps_then_one_delivery() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    receiver.script(&[(503, None), (503, None), (429, Some(120)), (200, None)]);
    hook(&server, ADMIN, "ops", &receiver, None).await;
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "true", "notify": ["ops"]}),
        )
        .await;
    server.send(ADMIN, "s", "application/json", "{}").await;
    server.settle().await;

    let mut attempts_at = vec![server.now];
    for expected in 1..=3 {
        receiver.wait_for(expected).await;
        let d = server
            .deliveries_until(ADMIN, "", |d| d[0]["attempts"] == expected)
            .await;
        assert_eq!(d[0]["status"], "pending");
        let next = d[0]["next_attempt_at"].as_i64().expect("next");
        let gap = next - server.now;
        attempts_at.push(next);
        match expected {
            1 => assert!(
                (5_600..=8_400).contains(&gap),
                "first retry after 7s ± 20%: {gap}"
            ),
            2 => assert!(
                (11_200..=16_800).contains(&gap),
                "second after 14s ± 20%: {gap}"
            ),
            _ => assert!(gap >= 120_000, "Retry-After 120 is honoured: {gap}"),
        }
        let wait = gap.max(0) + 1;
        server.advance(&format!("{}ms", wait)).await;
    }
    receiver.wait_for(4).await;
    let d = server
        .deliveries_until(ADMIN, "", |d| d[0]["status"] == "sent")
        .await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["attempts"], 4);
    server.advance("1h").await;
    receiver.settle_at(&mut server, 4).await;
    // All four requests carried the same idempotency key.
    let keys: Vec<_> = receiver
        .received()
        .iter()
        .map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    assert!(keys[0].is_some(), "{keys:?}");
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
}

#[tokio::test]
async fn after_the_last_attempt_a_delivery_is_dead_and_the_retry_endpoint_sends_it() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    receiver.always(Some(500));
    hook(&server, ADMIN, "ops", &receiver, None).await;
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "true", "notify": ["ops"]}),
        )
        .await;
    server.send(ADMIN, "s", "application/json", "{}").await;
    server.settle().await;
    for n in 1..=10 {
        receiver.wait_for(n).await;
        server
            .deliveries_until(ADMIN, "", |d| d[0]["attempts"] == n)
            .await;
        // Past the longest gap: 30 minutes at most, plus up to 20% jitter.
        server.advance("37m").await;
    }
    let dead = server
        .deliveries_until(ADMIN, "status=dead", |d| d.len() == 1)
        .await;
    assert_eq!(dead[0]["attempts"], 10);
    assert!(
        dead[0]["last_error"]
            .as_str()
            .expect("error")
            .contains("500")
    );
    receiver.settle_at(&mut server, 10).await;

    receiver.always(None);
    let id = dead[0]["id"].as_str().expect("id");
    let (status, body) = server
        .request(
            Method::POST,
            ADMIN,
            &format!("/api/v1/deliveries/{id}/retry"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    receiver.wait_for(11).await;
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 1)
        .await;
    let (status, _) = server
        .request(
            Method::POST,
            ADMIN,
            &format!("/api/v1/deliveries/{id}/retry"),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "only dead deliveries are retried"
    );

    // A receiver that refuses the request (400) is not retried.
    receiver.always(Some(400));
    server
        .send(ADMIN, "s", "application/json", r#"{"again": true}"#)
        .await;
    let (_, alerts) = server.get(ADMIN, "/api/v1/alerts").await;
    let alert_id = alerts["alerts"][0]["id"].as_str().expect("id").to_owned();
    let (status, _) = server
        .request(
            Method::POST,
            ADMIN,
            &format!("/api/v1/alerts/{alert_id}/resolve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server
        .deliveries_until(ADMIN, "status=dead", |d| {
            d.len() == 1 && d[0]["attempts"] == 1 && d[0]["trigger"] == "resolve"
        })
        .await;
}

#[tokio::test]
async fn deliveries_pending_at_a_sigkill_are_all_delivered_after_restart() {
    // Take a free port and leave it closed: the receiver is down.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Server::start().await;
    let (status, _) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/ops",
            &json!({"kind": "webhook", "url": format!("http://{addr}/hook")}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    server.rule(ADMIN, json!({"name": "m", "source": "s", "when": "true", "group_by": ["n"], "notify": ["ops"]})).await;
    let events: Vec<String> = (0..25).map(|n| json!({"n": n}).to_string()).collect();
    server
        .send(ADMIN, "s", "application/x-ndjson", &events.join("\n"))
        .await;
    server.settle().await;
    server
        .deliveries_until(ADMIN, "", |d| {
            d.len() == 25 && d.iter().all(|x| x["attempts"].as_i64() >= Some(1))
        })
        .await;

    let mut server = server.crash_and_restart();
    let receiver = Receiver::start_on(&addr).await;
    server.advance("10m").await;
    let got = receiver.wait_for(25).await;
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 25)
        .await;
    let mut ns: Vec<i64> = got
        .iter()
        .map(|r| {
            r.json()["alert"]["key"]
                .as_str()
                .expect("key")
                .parse()
                .expect("n")
        })
        .collect();
    ns.sort();
    ns.dedup();
    assert_eq!(ns, (0..25).collect::<Vec<_>>(), "every alert notified");
}

#[tokio::test]
async fn a_silence_mutes_then_releases_ack_stops_repeats_and_disabling_notifies() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    hook(&server, ADMIN, "ops", &receiver, None).await;
    server
        .rule(
            ADMIN,
            json!({"name": "hot", "source": "s", "when": "event.t > 30", "group_by": ["room"],
        "labels": {"site": "berlin"}, "repeat_every": "10m", "notify": ["ops"]}),
        )
        .await;
    let (status, silence) = server.post_json(ADMIN, "/api/v1/silences", &json!({
        "matchers": {"rule": "h*", "labels": {"site": "ber*"}}, "ends_at": "2026-11-25T10:55:00Z", "comment": "maintenance"})).await;
    assert_eq!(status, StatusCode::CREATED, "{silence}");
    assert_eq!(silence["state"], "active");
    server.send(ADMIN, "s", "text/plain", "room:a t:35").await;
    server.settle().await;
    server
        .deliveries_until(ADMIN, "status=silenced", |d| d.len() == 1)
        .await;
    receiver.settle_at(&mut server, 0).await;
    assert_eq!(
        server.alerts(ADMIN, "status=firing").await.len(),
        1,
        "silenced alerts are still tracked"
    );

    // The silence ends at 10:55 (the clock starts at 10:00): the still-firing alert is told.
    server.advance("56m").await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].json()["trigger"], "fire");
    // The clock jumped 56 minutes at once: the first fire and one reminder were silenced (a
    // stalled clock gets one reminder, not one per missed period).
    assert_eq!(
        server.deliveries(ADMIN, "status=silenced").await.len(),
        2,
        "the first fire and one repeat"
    );

    // Repeats come every 10 minutes from when it fired (10:00) until acknowledged.
    server.advance("4m").await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].json()["trigger"], "repeat");
    let id = server.alerts(ADMIN, "status=firing").await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, acked) = server
        .request(
            Method::POST,
            ADMIN,
            &format!("/api/v1/alerts/{id}/ack"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(acked["acked_by"], "admin");
    server.advance("30m").await;
    receiver.settle_at(&mut server, 2).await;

    // Disabling the rule notifies that it was disabled.
    server
        .rule(
            ADMIN,
            json!({"name": "hot", "source": "s", "when": "event.t > 30", "group_by": ["room"],
        "notify": ["ops"], "disabled": true}),
        )
        .await;
    server.settle().await;
    let got = receiver.wait_for(3).await;
    assert_eq!(got[2].json()["trigger"], "disable");
    assert_eq!(got[2].json()["alert"]["resolve_reason"], "rule disabled");
}

#[tokio::test]
async fn subscriptions_filter_by_severity_labels_when_and_schedule() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    let ann = server.user_in_zone("ann", "Europe/Berlin").await;
    hook(&server, &ann, "work", &receiver, None).await;
    hook(&server, &ann, "home", &receiver, None).await;
    // Work: > 90% during weekday working hours in Berlin. Home: >= 97% outside them.
    subscribe(
        &server,
        &ann,
        json!({"channel": "work", "when": "alert.value > 90", "labels": {"fs": "/*"},
        "schedule": {"days": ["mon","tue","wed","thu","fri"], "from": "09:00", "to": "18:00"}}),
    )
    .await;
    subscribe(&server, &ann, json!({"channel": "home", "min_severity": "critical",
        "schedule": [{"days": ["mon","tue","wed","thu","fri"], "from": "18:00", "to": "09:00"}, {"days": ["sat","sun"], "from": "00:00", "to": "24:00"}]})).await;
    server.rule(&ann, json!({"name": "disk", "kind": "threshold", "source": "disk", "when": "event.pct > 90", "group_by": ["fs"],
        "value": "event.pct", "severity": "warning"})).await;
    server.rule(&ann, json!({"name": "disk-critical", "kind": "threshold", "source": "disk", "when": "event.pct >= 97", "group_by": ["fs"],
        "value": "event.pct", "severity": "critical"})).await;

    // Wednesday 10:00 UTC is 11:00 in Berlin: work hours.
    server
        .send(&ann, "disk", "text/plain", "fs:/cad pct:98")
        .await;
    server.settle().await;
    let got = receiver.wait_for(2).await;
    receiver.settle_at(&mut server, 2).await;
    let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["/work", "/work"],
        "both alerts go to work email only"
    );

    // 17:30 UTC is 18:30 in Berlin: evening. Only the critical one goes home.
    server
        .send(&ann, "disk", "text/plain", "fs:/cad pct:50")
        .await;
    server.advance("7h30m").await;
    receiver.wait_for(4).await; // the two resolutions, still inside work hours when they happened
    server
        .send(&ann, "disk", "text/plain", "fs:/lib pct:99")
        .await;
    server.settle().await;
    let got = receiver.wait_for(5).await;
    receiver.settle_at(&mut server, 5).await;
    assert_eq!(got[4].path, "/home");
    assert_eq!(got[4].json()["alert"]["rule"], "disk-critical");
}

#[tokio::test]
async fn a_one_minute_digest_gangs_twenty_alerts_into_one_message() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    hook(&server, ADMIN, "digest", &receiver, None).await;
    subscribe(
        &server,
        ADMIN,
        json!({"channel": "digest", "digest": {"every": "1m"}, "notify_on": ["fire"]}),
    )
    .await;
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "true", "group_by": ["n"]}),
        )
        .await;
    for n in 0..20 {
        server
            .send(ADMIN, "s", "application/json", &json!({"n": n}).to_string())
            .await;
        server.advance("2s").await;
    }
    receiver.settle_at(&mut server, 0).await;
    server
        .deliveries_until(ADMIN, "status=held", |d| d.len() == 20)
        .await;
    server.advance("30s").await;
    let got = receiver.wait_for(1).await;
    receiver.settle_at(&mut server, 1).await;
    let body = got[0].json();
    assert_eq!(body["digest"], true);
    let keys: Vec<&str> = body["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| a["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys.len(), 20, "{keys:?}");
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 20)
        .await;

    // A digest larger than the worker's claim (64) still goes as one message.
    let events: Vec<String> = (100..200).map(|n| json!({"n": n}).to_string()).collect();
    server
        .send(ADMIN, "s", "application/x-ndjson", &events.join("\n"))
        .await;
    server.settle().await;
    server
        .deliveries_until(ADMIN, "status=held", |d| d.len() == 100)
        .await;
    server.advance("1m").await;
    let got = receiver.wait_for(2).await;
    receiver.settle_at(&mut server, 2).await;
    assert_eq!(
        got[1].json()["alerts"].as_array().expect("alerts").len(),
        100
    );
}

#[tokio::test]
async fn notification_settings_are_validated_and_private() {
    let server = Server::start().await;
    let bob = server.user("bob").await;
    let server = &server;
    let bad = |b: Value| async move { server.put_json(ADMIN, "/api/v1/channels/x", &b).await };
    let (s, b) = bad(json!({"kind": "webhook"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["error"]["code"], "invalid_channel");
    let (s, _) = bad(json!({"kind": "pigeon", "url": "https://x"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = bad(json!({"kind": "webhook", "url": "https://x", "colour": "red"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, b) = server
        .post_json(ADMIN, "/api/v1/subscriptions", &json!({"channel": "nope"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, _) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/ops",
            &json!({"kind": "webhook", "url": "https://example.invalid/x"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = server
        .post_json(
            ADMIN,
            "/api/v1/subscriptions",
            &json!({"channel": "ops", "when": "alert.value >"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = server
        .post_json(
            ADMIN,
            "/api/v1/subscriptions",
            &json!({"channel": "ops", "schedule": {"from": "9", "to": "18:00"}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = server
        .post_json(
            ADMIN,
            "/api/v1/silences",
            &json!({"matchers": {}, "ends_at": "2026-11-25T11:00:00Z"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let id = {
        let (_, b) = server
            .post_json(ADMIN, "/api/v1/subscriptions", &json!({"channel": "ops"}))
            .await;
        b["id"].as_str().expect("id").to_owned()
    };
    // Bob sees none of it, and cannot subscribe to the admin's private channel.
    let (s, _) = server.get(&bob, "/api/v1/channels/ops").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = server
        .get(&bob, &format!("/api/v1/subscriptions/{id}"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = server
        .post_json(&bob, "/api/v1/subscriptions", &json!({"channel": "ops"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = server
        .put_json(
            &bob,
            "/api/v1/channels/mine",
            &json!({"kind": "webhook", "url": "https://x", "shared": true}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only admins share channels");
    // A shared channel is usable by everyone.
    let (s, _) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/pager",
            &json!({"kind": "webhook", "url": "https://x", "shared": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = server
        .post_json(&bob, "/api/v1/subscriptions", &json!({"channel": "pager"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, channels) = server.get(&bob, "/api/v1/channels").await;
    assert_eq!(channels["channels"].as_array().expect("list").len(), 1);
    assert_eq!(channels["channels"][0]["url"], "***");
}

#[tokio::test]
async fn a_digest_at_six_holds_overnight_alerts_until_six_local() {
    // 2026-11-25T21:30:00Z is 22:30 in Berlin (CET, UTC+1).
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-25T21:30:00Z")
        .expect("time")
        .timestamp_millis();
    let mut server = Server::start_at(start, &[]).await;
    let receiver = Receiver::start().await;
    let ann = server.user_in_zone("ann", "Europe/Berlin").await;
    hook(&server, &ann, "morning", &receiver, None).await;
    subscribe(
        &server,
        &ann,
        json!({"channel": "morning", "digest": {"at": ["06:00"]}, "notify_on": ["fire"]}),
    )
    .await;
    server
        .rule(
            &ann,
            json!({"name": "m", "source": "s", "when": "true", "group_by": ["n"]}),
        )
        .await;
    for n in 0..3 {
        server
            .send(&ann, "s", "application/json", &json!({"n": n}).to_string())
            .await;
        server.advance("2h").await; // 22:30, 00:30, 02:30 local
    }
    // 04:30 local now; 05:59 local is 04:59 UTC.
    server.advance("1h29m").await;
    receiver.settle_at(&mut server, 0).await;
    let held = server.deliveries(&ann, "status=held").await;
    assert_eq!(held.len(), 3);
    let due = chrono::DateTime::parse_from_rfc3339("2026-11-26T05:00:00Z")
        .expect("time")
        .timestamp_millis();
    assert!(
        held.iter().all(|d| d["next_attempt_at"] == due),
        "06:00 Berlin is 05:00 UTC: {held:#?}"
    );
    server.advance("1m").await;
    let got = receiver.wait_for(1).await;
    receiver.settle_at(&mut server, 1).await;
    assert_eq!(got[0].json()["alerts"].as_array().expect("alerts").len(), 3);
}

#[tokio::test]
async fn a_dry_run_says_which_notifications_would_go_and_sends_none() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    hook(&server, ADMIN, "ops", &receiver, None).await;
    hook(&server, ADMIN, "quiet", &receiver, None).await;
    subscribe(
        &server,
        ADMIN,
        json!({"channel": "quiet", "rules": ["disk"], "min_severity": "critical"}),
    )
    .await;
    let (status, _) = server
        .post_json(
            ADMIN,
            "/api/v1/silences",
            &json!({"matchers": {"key": "muted-*"}, "ends_at": "2026-11-25T12:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let rule = json!({"name": "disk", "source": "disk", "when": "event.pct > 90", "resolve_when": "event.pct < 80",
        "key": "{{ event.host }}", "severity": "critical", "notify": ["ops"]});
    let events =
        json!([{"host": "a", "pct": 95}, {"host": "muted-b", "pct": 96}, {"host": "a", "pct": 50}]);
    let (status, body) = server
        .post_json(
            ADMIN,
            "/api/v1/rules/test",
            &json!({"rule": rule, "events": events, "source": "disk"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let plan: Vec<(String, String, String, String)> = body["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .map(|n| {
            let s = |f: &str| n[f].as_str().unwrap_or_default().to_owned();
            (s("trigger"), s("alert_key"), s("channel"), s("status"))
        })
        .collect();
    let expect = |t: &str, k: &str, c: &str, st: &str| {
        (t.to_owned(), k.to_owned(), c.to_owned(), st.to_owned())
    };
    assert_eq!(
        plan,
        vec![
            expect("fire", "a", "ops", "pending"),
            expect("fire", "a", "quiet", "pending"),
            expect("fire", "muted-b", "ops", "silenced"),
            expect("fire", "muted-b", "quiet", "silenced"),
            expect("resolve", "a", "ops", "pending"),
            expect("resolve", "a", "quiet", "pending"),
        ],
        "{body}"
    );
    receiver.settle_at(&mut server, 0).await;
    assert!(
        server.deliveries(ADMIN, "").await.is_empty(),
        "a dry run stores nothing"
    );
}

#[tokio::test]
async fn a_subscription_template_writes_the_message() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/phone",
            &json!({"kind": "sms", "url": receiver.url("/Messages.json"),
            "account": "AC1", "token": "t", "from": "+15550001", "to": "+15550002"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .post_json(ADMIN, "/api/v1/subscriptions", &json!({"channel": "phone", "template": "{{ alert.key }} {{ trigger }}d at {{ alert.value }}%"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .post_json(
            ADMIN,
            "/api/v1/subscriptions",
            &json!({"channel": "phone", "template": "{{ alert.key "}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("template"),
        "{body}"
    );
    server.rule(ADMIN, json!({"name": "disk", "source": "disk", "when": "event.pct > 90", "key": "{{ event.host }}", "value": "event.pct"})).await;
    server
        .send(ADMIN, "disk", "text/plain", "host:cad01 pct:95")
        .await;
    server.settle().await;
    let got = receiver.wait_for(1).await;
    let form = String::from_utf8_lossy(&got[0].body).to_string();
    assert!(form.contains("Body=cad01+fired+at+95.0%25"), "{form}");
}

/// Issue 8: a subscription's `when` runs while the engine plans deliveries, which once was
/// inside its write transaction, so a slow one held SQLite's write lock (and the writers'
/// turn) and every `202` waited for it. Planning now happens before the transaction opens:
/// an event sent while a `when` spins is accepted at once, and the spinning alert's
/// notification is still written with it.
#[tokio::test]
async fn a_slow_subscription_when_does_not_hold_up_ingest() {
    // A `when` may spin for seconds without being stopped; the owner share is off.
    let mut server = Server::start_with(&GATE_ARGS).await;
    let receiver = Receiver::start().await;
    hook(&server, ADMIN, "ops", &receiver, None).await;
    // The alert's value is the wall-clock time (epoch ms) its `when` spins until.
    subscribe(
        &server,
        ADMIN,
        json!({"channel": "ops", "rules": ["slow"],
            "when": "while (Date.now() < alert.value) {} true"}),
    )
    .await;
    server
        .rule(
            ADMIN,
            json!({"name": "slow", "source": "slow", "when": "true", "value": "event.until"}),
        )
        .await;

    let spin = Duration::from_millis(1_500);
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        + spin;
    let spun = Instant::now() + spin;
    server
        .send(
            ADMIN,
            "slow",
            "application/json",
            &json!({ "until": until.as_millis() as u64 }).to_string(),
        )
        .await;
    // Well inside the spin: the engine took the event at once and is running the `when`.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server
        .send(ADMIN, "other", "application/json", r#"{"n": 1}"#)
        .await;
    let answered = Instant::now();
    assert!(
        answered + Duration::from_millis(300) < spun,
        "the event waited for the `when`: answered {:?} before it ended",
        spun.saturating_duration_since(answered)
    );
    // The alert's batch has not committed yet: the 202 came while the `when` still ran.
    assert!(server.alerts(ADMIN, "rule=slow").await.is_empty());

    server.settle().await;
    let alerts = server.alerts(ADMIN, "rule=slow").await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["status"], "firing");
    let got = receiver.wait_for(1).await;
    assert_eq!(got.len(), 1, "the notification is written with its alert");
}
