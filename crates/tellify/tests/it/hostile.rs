//! Hostile JavaScript is stopped within its budget and harms no other rule.

use serde_json::json;

use crate::harness::{ADMIN_TOKEN as ADMIN, Server};

#[tokio::test]
async fn infinite_loops_memory_bombs_and_deep_recursion_are_stopped_and_other_rules_keep_firing() {
    let mut server = Server::start().await;
    let bob = server.user("bob").await;
    let hostile = [
        ("spin", "(function(){ while (true) {} })()"),
        (
            "bomb",
            "(function(){ let a = []; while (true) a.push(new Array(100000).fill(1)); })()",
        ),
        (
            "strings",
            "(function(){ let s = 'x'; while (true) s = s + s; })()",
        ),
        ("recurse", "(function f(n){ return f(n + 1) + 1; })(0)"),
        ("throws", "event.missing.field > 1"),
    ];
    for (name, when) in hostile {
        server
            .rule(ADMIN, json!({"name": name, "source": "s", "when": when}))
            .await;
    }
    server
        .rule(
            ADMIN,
            json!({"name": "good-admin", "source": "s", "when": "event.v > 1"}),
        )
        .await;
    server
        .rule(&bob, json!({"name": "good-bob", "when": "event.v > 1"}))
        .await;

    server
        .send(ADMIN, "s", "application/json", r#"{"v": 2}"#)
        .await;
    server
        .send(&bob, "bobs", "application/json", r#"{"v": 2}"#)
        .await;
    server.settle().await;

    let (_, rules) = server.get(ADMIN, "/api/v1/rules").await;
    let rules = rules["rules"].as_array().expect("rules").clone();
    let status = |name: &str| {
        rules
            .iter()
            .find(|r| r["name"] == name)
            .expect("rule")
            .clone()
    };
    assert!(
        status("spin")["error"]
            .as_str()
            .expect("error")
            .contains("CPU budget"),
        "{:?}",
        status("spin")
    );
    assert!(
        status("bomb")["error"]
            .as_str()
            .expect("error")
            .contains("memory limit"),
        "{:?}",
        status("bomb")
    );
    assert!(
        status("strings")["error"]
            .as_str()
            .expect("error")
            .contains("memory limit"),
        "{:?}",
        status("strings")
    );
    assert!(
        status("recurse")["error"]
            .as_str()
            .expect("error")
            .contains("recursion"),
        "{:?}",
        status("recurse")
    );
    assert!(
        status("throws")["error"]
            .as_str()
            .expect("error")
            .contains("TypeError"),
        "{:?}",
        status("throws")
    );
    for name in ["spin", "bomb", "strings", "recurse", "throws"] {
        assert_eq!(status(name)["status"], "error");
    }
    assert_eq!(status("good-admin")["status"], "ok");

    let admin_alerts = server.alerts(ADMIN, "status=firing").await;
    assert!(
        admin_alerts.iter().any(|a| a["rule"] == "good-admin"),
        "{admin_alerts:#?}"
    );
    let bob_alerts = server.alerts(&bob, "status=firing").await;
    assert_eq!(bob_alerts.len(), 1);
    assert_eq!(bob_alerts[0]["rule"], "good-bob");

    // The sandbox was rebuilt after each, and keeps working for the next event. The failed
    // rules rest for a second (their back-off) before they run again.
    server.advance("1s").await;
    server
        .send(ADMIN, "s", "application/json", r#"{"v": 3}"#)
        .await;
    server.settle().await;
    let good = server.alerts(ADMIN, "rule=good-admin").await;
    assert_eq!(good[0]["count"], 2);

    let (_, metrics) = server.get(ADMIN, "/metrics").await;
    let metrics = metrics.as_str().expect("text").to_owned();
    assert!(
        metrics.contains("tellify_rule_errors_total{rule=\"spin\"} 2"),
        "{metrics}"
    );
}
