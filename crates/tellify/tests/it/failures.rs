//! Failure paths: a locked database, rate limits, a polite stop, rules disabled and deleted.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{ADMIN_TOKEN as ADMIN, GATE_ARGS, Position, Server};
use crate::receiver::Receiver;

#[tokio::test]
async fn a_locked_database_delays_ingest_and_loses_nothing() {
    let mut server = Server::start().await;
    server
        .rule(ADMIN, json!({"name": "all", "source": "s", "when": "true"}))
        .await;
    // Another process holds the write lock.
    let mut other = server.lock_database().await;
    let post = server.post_in_background("s", r#"{"n": 1}"#);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !post.is_finished(),
        "no 202 while the events cannot be stored"
    );
    sqlx::query("COMMIT")
        .execute(&mut other)
        .await
        .expect("unlock");
    assert_eq!(
        post.await.expect("joined").expect("answered"),
        StatusCode::ACCEPTED
    );
    server.settle().await;
    assert_eq!(server.alerts(ADMIN, "").await[0]["count"], 1);
}

#[tokio::test]
async fn the_rate_limit_answers_429_per_token() {
    let server = Server::start_with(&["--rate-limit", "2"]).await;
    let bob = server.user("bob").await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, body) = server
            .request(
                Method::POST,
                ADMIN,
                "/api/v1/events?source=s",
                Some(("application/json", "{}".into())),
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"]["code"], "rate_limited");
        }
        statuses.push(status.as_u16());
    }
    // The clock does not move: a burst of twice the rate, then refusals.
    assert_eq!(statuses, vec![202, 202, 202, 202, 429, 429]);
    let (status, _) = server
        .request(
            Method::POST,
            &bob,
            "/api/v1/events?source=b",
            Some(("application/json", "{}".into())),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "another token has its own bucket"
    );
}

/// SIGTERM while the engine still has accepted events ahead of it and a notification is being
/// sent: the stop evaluates and commits everything accepted, waits for the notification in
/// flight and records it, says so in the log, and exits 0; a start after it has nothing to
/// replay or resend. (That requests in flight are answered is drain.rs's.)
#[tokio::test]
async fn sigterm_stops_gracefully_and_keeps_everything() {
    let mut server = Server::start_with(&GATE_ARGS).await;
    let receiver = Receiver::start().await;
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/ops",
            &json!({"kind": "webhook", "url": receiver.url("/ops")}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "true", "group_by": ["n"], "notify": ["ops"]}),
        )
        .await;
    server.gate_rule().await;
    // A notification in flight: the receiver has it and does not answer yet.
    receiver.hold();
    server
        .send(ADMIN, "s", "application/json", r#"{"n": 0}"#)
        .await;
    server.settle().await;
    receiver.wait_for(1).await;
    server
        .deliveries_until(ADMIN, "status=sending", |d| d.len() == 1)
        .await;
    // Events accepted while the engine is held up: not evaluated when the signal comes.
    let gate = server.gate(1_500).await;
    let body: String = (1..=50).map(|n| format!("{}\n", json!({"n": n}))).collect();
    server.send(ADMIN, "s", "application/x-ndjson", &body).await;
    let at_signal = server.engine_position().await;
    assert!(
        Instant::now() < gate,
        "the events took longer than the gate holds the engine"
    );
    assert!(
        at_signal.checkpoint < at_signal.head,
        "accepted events wait for the engine: {at_signal:?}"
    );
    server.signal_term();

    // The engine works off what it accepted before the process ends...
    let started = Instant::now();
    loop {
        let now = server.engine_position().await;
        if now.checkpoint == now.head {
            break;
        }
        assert!(
            server.exited_within(Duration::ZERO).await.is_none(),
            "stopped before evaluating what it accepted: {now:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the engine never caught up: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and then waits for the notification in flight. (Were it not to, it would exit
    // within this bound with the delivery left `sending`; a correct stop waits for the
    // release, so the bound costs a passing run its length once.)
    assert!(
        server
            .exited_within(Duration::from_millis(500))
            .await
            .is_none(),
        "the stop waits for the delivery being sent"
    );
    receiver.release();
    let status = server
        .exited_within(Duration::from_secs(20))
        .await
        .expect("stops once drained");
    assert!(status.success(), "exit status {status:?}");

    // The data as the stop left it (a start resets deliveries left `sending`).
    let at_exit = server.engine_position().await;
    assert_eq!(
        at_exit,
        Position {
            checkpoint: at_signal.head,
            head: at_signal.head
        },
        "everything accepted was evaluated and committed, nothing more logged"
    );
    let mut db = server.database().await;
    let statuses: Vec<(i64, String)> = sqlx::query_as(
        "SELECT CAST(a.key AS INTEGER), d.status
         FROM deliveries d JOIN alerts a ON a.id = d.alert_id ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .expect("deliveries");
    assert_eq!(statuses.len(), 51, "one per alert: {statuses:?}");
    assert_eq!(
        statuses[0],
        (0, "sent".to_owned()),
        "the one in flight at the signal was recorded"
    );
    // The ones planned during the stop (from events accepted before it) went out in it.
    assert!(
        statuses.iter().all(|(_, s)| s == "sent"),
        "all sent before the process ended: {statuses:?}"
    );
    drop(db);
    // The log says it drained: the stop began, ended, and cut nothing off.
    let mut log = server.log();
    for _ in 0..250 {
        if log.contains("Stopped.") {
            break;
        }
        // The reader of the server's stderr may not have the last lines yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
        log = server.log();
    }
    let stopping = log.find("Shutting down.").expect("the stop is logged");
    let stopped = log.find("Stopped.").expect("the end of the stop is logged");
    assert!(stopping < stopped, "{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && !l.contains("manual test clock"))
        .collect();
    assert!(warnings.is_empty(), "nothing was cut off: {warnings:#?}");

    // A start has nothing to replay or resend, and everything is there.
    let mut server = server.restart();
    assert_eq!(server.replayed_at_start(), 0, "nothing left to replay");
    server.settle().await;
    let alerts = server.alerts(ADMIN, "rule=m").await;
    assert_eq!(alerts.len(), 51);
    assert!(alerts.iter().all(|a| a["count"] == 1), "{alerts:#?}");
    let sent = server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 51)
        .await;
    assert_eq!(sent.len(), 51);
    // The one sent before the stop was not sent again.
    receiver.settle_at(&mut server, 51).await;
}

#[tokio::test]
async fn disabling_or_deleting_a_rule_resolves_its_alerts() {
    let mut server = Server::start().await;
    for name in ["keep", "off", "gone"] {
        server
            .rule(ADMIN, json!({"name": name, "source": "s", "when": "true"}))
            .await;
    }
    server.send(ADMIN, "s", "application/json", "{}").await;
    server.settle().await;
    assert_eq!(server.alerts(ADMIN, "status=firing").await.len(), 3);

    server
        .rule(
            ADMIN,
            json!({"name": "off", "source": "s", "when": "true", "disabled": true}),
        )
        .await;
    let (status, _) = server
        .request(Method::DELETE, ADMIN, "/api/v1/rules/gone", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .request(Method::DELETE, ADMIN, "/api/v1/rules/gone", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.settle().await;

    let resolved = server.alerts(ADMIN, "status=resolved").await;
    let reason = |rule: &str| {
        resolved
            .iter()
            .find(|a| a["rule"] == rule)
            .map(|a| a["resolve_reason"].clone())
    };
    assert_eq!(reason("off"), Some(json!("rule disabled")));
    assert_eq!(reason("gone"), Some(json!("rule removed")));
    let (_, off) = server.get(ADMIN, "/api/v1/rules/off").await;
    assert_eq!(off["status"], "disabled");

    server.send(ADMIN, "s", "application/json", "{}").await;
    server.settle().await;
    let firing = server.alerts(ADMIN, "status=firing").await;
    assert_eq!(firing.len(), 1, "only the enabled rule still fires");
    assert_eq!(firing[0]["rule"], "keep");
    assert_eq!(firing[0]["count"], 2);
}

#[tokio::test]
async fn resolved_alerts_are_kept_for_the_history_retention_then_pruned() {
    let mut server = Server::start_with(&["--history-retention", "30d"]).await;
    let receiver = crate::receiver::Receiver::start().await;
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/ops",
            &json!({"kind": "webhook", "url": receiver.url("/ops")}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "true", "group_by": ["k"], "notify": ["ops"]}),
        )
        .await;
    server
        .send(
            ADMIN,
            "s",
            "application/json",
            r#"[{"k": "old"}, {"k": "open"}]"#,
        )
        .await;
    server.settle().await;
    let old = server
        .alerts(ADMIN, "")
        .await
        .into_iter()
        .find(|a| a["key"] == "old")
        .expect("alert");
    let id = old["id"].as_str().expect("id").to_owned();
    let (status, _) = server
        .request(
            Method::POST,
            ADMIN,
            &format!("/api/v1/alerts/{id}/resolve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Two fires and a resolve, sent.
    server
        .deliveries_until(ADMIN, "status=sent", |d| d.len() == 3)
        .await;

    server.advance("29d").await;
    let server = server.restart();
    assert_eq!(
        server.alerts(ADMIN, "").await.len(),
        2,
        "29 days: still kept"
    );
    let mut server = server;
    server.advance("2d").await;
    let server = server.restart();
    let left = server.alerts(ADMIN, "").await;
    assert_eq!(
        left.len(),
        1,
        "the resolved alert is gone, the open one stays: {left:#?}"
    );
    assert_eq!(left[0]["key"], "open");
    let (status, _) = server.get(ADMIN, &format!("/api/v1/alerts/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, history) = server.get(ADMIN, "/api/v1/history?rule=m").await;
    assert!(
        history["history"]
            .as_array()
            .expect("history")
            .iter()
            .all(|h| h["alert_id"] != id.as_str())
    );
    // Its deliveries (each a copy of the alert) went with it.
    let kept = server.deliveries(ADMIN, "").await;
    assert_eq!(kept.len(), 1, "{kept:#?}");
    assert_eq!(kept[0]["alert_id"], left[0]["id"]);
}
