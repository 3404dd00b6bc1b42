//! SIGKILL in the middle of things: timers, windows and accepted events survive.

use std::time::Instant;

use serde_json::json;

use crate::harness::{ADMIN_TOKEN as ADMIN, GATE_ARGS, Position, Server, T0};

#[tokio::test]
async fn killed_mid_for_the_alert_still_fires_at_the_right_time() {
    let mut server = Server::start().await;
    server
        .rule(
            ADMIN,
            json!({
                "name": "hot", "kind": "threshold", "source": "temp", "when": "event.c > 80",
                "for": "5m", "group_by": ["room"]
            }),
        )
        .await;
    server
        .send(ADMIN, "temp", "text/plain", "room:a c:90")
        .await;
    server.advance("2m").await;
    assert_eq!(server.alerts(ADMIN, "").await[0]["status"], "pending");

    let mut server = server.crash_and_restart();
    server.settle().await;
    assert_eq!(server.alerts(ADMIN, "").await[0]["status"], "pending");
    server.advance("2m59s").await;
    assert_eq!(server.alerts(ADMIN, "").await[0]["status"], "pending");
    server.advance("1s").await;
    let alerts = server.alerts(ADMIN, "").await;
    assert_eq!(alerts[0]["status"], "firing");
    assert_eq!(
        alerts[0]["fired_at"],
        T0 + 300_000,
        "fires when `for` ends, as if never killed"
    );
}

#[tokio::test]
async fn killed_mid_window_the_count_is_right_after_restart() {
    let mut server = Server::start().await;
    server.rule(ADMIN, json!({
        "name": "logins-failing", "kind": "count", "source": "auth", "when": "event.result == 'fail'",
        "group_by": ["user"], "threshold": 2, "window": "10m"
    })).await;
    server
        .send(
            ADMIN,
            "auth",
            "text/plain",
            "user:ann result:fail\nuser:ann result:fail",
        )
        .await;
    server.advance("5m").await;
    let mut server = server.crash_and_restart();
    server
        .send(ADMIN, "auth", "text/plain", "user:ann result:fail")
        .await;
    server.settle().await;
    let alerts = server.alerts(ADMIN, "status=firing").await;
    assert_eq!(
        alerts.len(),
        1,
        "three failures within 10 minutes: {alerts:#?}"
    );
    // The first two slide out at T0+10m: the count drops to one and the alert resolves.
    server.advance("5m").await;
    assert_eq!(server.alerts(ADMIN, "").await[0]["status"], "resolved");
}

/// Killed while the engine still had every accepted event ahead of it: the restart replays
/// exactly those from the log, and each is evaluated once.
#[tokio::test]
async fn killed_right_after_accepting_no_event_is_lost() {
    let mut server = Server::start_with(&GATE_ARGS).await;
    server
        .rule(
            ADMIN,
            json!({"name": "all", "source": "firehose", "when": "true"}),
        )
        .await;
    server.gate_rule().await;
    // The engine is busy with the gate while the batches are accepted.
    let gate = server.gate(2_500).await;
    let batches = 20;
    let per_batch = 500;
    for b in 0..batches {
        let body: Vec<String> = (0..per_batch)
            .map(|i| json!({"n": b * per_batch + i}).to_string())
            .collect();
        server
            .send(ADMIN, "firehose", "application/x-ndjson", &body.join("\n"))
            .await;
    }
    assert!(
        Instant::now() < gate,
        "the batches took longer than the gate holds the engine; the kill would not be early"
    );
    server.kill();
    // At the kill every accepted event was in the log and none evaluated.
    let at_kill = server.engine_position().await;
    assert_eq!(
        server.events_behind("firehose").await,
        batches * per_batch,
        "killed before the engine evaluated any: {at_kill:?}"
    );

    let mut server = server.restart();
    server.settle().await;
    assert_eq!(
        server.replayed_at_start(),
        (at_kill.head - at_kill.checkpoint) as u64,
        "the restart replayed the log after the checkpoint: {at_kill:?}"
    );
    let alerts = server.alerts(ADMIN, "rule=all").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0]["count"],
        batches * per_batch,
        "every accepted event evaluated exactly once"
    );
    let (_, topic) = server.get(ADMIN, "/api/v1/topics/firehose").await;
    assert_eq!(topic["event"]["n"], batches * per_batch - 1);
    let after = server.engine_position().await;
    assert_eq!(
        after,
        Position {
            checkpoint: at_kill.head,
            head: at_kill.head
        },
        "the checkpoint reached the log's head and nothing was added"
    );
}
