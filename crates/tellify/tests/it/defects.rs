//! Defects found by using the product as its users would (issue 8, item 6): each test here
//! failed on the code before its fix.

use serde_json::json;

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, of_rule};

/// The value of one sample line of `/metrics`, if present.
async fn metric(server: &Server, sample: &str) -> Option<String> {
    let (_, text) = server.get(ADMIN, "/metrics").await;
    let text = text.as_str().expect("metrics are text").to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).map(|v| v.trim().to_owned()))
}

#[tokio::test]
async fn alerts_that_fire_from_a_timer_are_counted_as_fired() {
    let mut server = Server::start().await;
    server
        .rule(
            ADMIN,
            json!({"name": "hot", "kind": "threshold", "source": "temp",
                   "when": "event.c > 30", "for": "1m", "group_by": ["room"]}),
        )
        .await;
    server
        .rule(
            ADMIN,
            json!({"name": "hb", "kind": "absence", "source": "hb",
                   "expect_every": "1m", "group_by": ["host"]}),
        )
        .await;
    server
        .send(
            ADMIN,
            "temp",
            "application/json",
            r#"{"room": "a", "c": 35}"#,
        )
        .await;
    server
        .send(ADMIN, "hb", "application/json", r#"{"host": "h1"}"#)
        .await;
    server.settle().await;
    assert_eq!(
        metric(
            &server,
            "tellify_alerts_fired_total{rule=\"hot\",source=\"temp\"}"
        )
        .await,
        None,
        "pending is not fired yet"
    );
    server.advance("2m").await;
    let firing = server.alerts(ADMIN, "status=firing").await;
    assert_eq!(of_rule(&firing, "hot").len(), 1, "{firing:#?}");
    assert_eq!(of_rule(&firing, "hb").len(), 1, "{firing:#?}");
    assert_eq!(
        metric(
            &server,
            "tellify_alerts_fired_total{rule=\"hot\",source=\"temp\"}"
        )
        .await
        .as_deref(),
        Some("1"),
        "a threshold firing after `for` counts"
    );
    assert_eq!(
        metric(
            &server,
            "tellify_alerts_fired_total{rule=\"hb\",source=\"hb\"}"
        )
        .await
        .as_deref(),
        Some("1"),
        "a stopped heartbeat counts, under the rule's source"
    );
}
