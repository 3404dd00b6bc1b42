//! Defects found by using the product as its users would (issue 8, item 6): each test here
//! failed on the code before its fix.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, example, fixture, of_rule};
use crate::receiver::Receiver;

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

#[tokio::test]
async fn a_digest_of_one_alert_says_one_alert() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/digest",
            &json!({"kind": "webhook", "url": receiver.url("/digest"), "body": "{{ title }}"}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let (status, body) = server
        .post_json(
            ADMIN,
            "/api/v1/subscriptions",
            &json!({"channel": "digest", "digest": {"every": "1m"}, "notify_on": ["fire"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "s", "when": "true", "group_by": ["n"]}),
        )
        .await;
    server
        .send(ADMIN, "s", "application/json", r#"{"n": 1}"#)
        .await;
    server.advance("2m").await;
    let got = receiver.wait_for(1).await;
    assert_eq!(
        String::from_utf8_lossy(&got[0].body),
        "[Tellify digest] 1 alert (1 firing)"
    );
    server
        .send(ADMIN, "s", "application/json", r#"[{"n": 2}, {"n": 3}]"#)
        .await;
    server.advance("2m").await;
    let got = receiver.wait_for(2).await;
    assert_eq!(
        String::from_utf8_lossy(&got[1].body),
        "[Tellify digest] 2 alerts (2 firing)"
    );
}

#[tokio::test]
async fn tokens_can_be_listed_for_one_user() {
    let server = Server::start().await;
    let ann = server.user("ann").await;
    let _bob = server.user("bob").await;
    let (status, body) = server.get(ADMIN, "/api/v1/tokens?user=ann").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let users: Vec<&str> = body["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["user"].as_str().expect("user"))
        .collect();
    assert_eq!(users, ["ann"], "{body}");
    // A user may name themself, not another user.
    let (status, body) = server.get(&ann, "/api/v1/tokens?user=ann").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tokens"].as_array().map(Vec::len), Some(1), "{body}");
    let (status, body) = server.get(&ann, "/api/v1/tokens?user=bob").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let (status, body) = server.get(ADMIN, "/api/v1/tokens?user=nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn an_alerts_summary_follows_its_value_and_resolving_says_resolve_summary() {
    let mut server = Server::start().await;
    server
        .rule(
            ADMIN,
            json!({"name": "pulse", "kind": "threshold", "source": "watch", "group_by": ["who"],
                   "when": "event.bpm > 120", "value": "event.bpm",
                   "summary": "{{ event.who }}: pulse {{ value }} bpm",
                   "resolve_summary": "{{ event.who }}: pulse back to {{ value }} bpm"}),
        )
        .await;
    for bpm in [130, 140] {
        server
            .send(
                ADMIN,
                "watch",
                "application/json",
                &json!({"who": "ann", "bpm": bpm}).to_string(),
            )
            .await;
        server.advance("1s").await;
    }
    let firing = server.alerts(ADMIN, "status=firing").await;
    assert_eq!(firing.len(), 1, "{firing:#?}");
    assert_eq!(firing[0]["summary"], "ann: pulse 140 bpm");
    assert_eq!(firing[0]["value"], 140.0);
    server
        .send(
            ADMIN,
            "watch",
            "application/json",
            r#"{"who": "ann", "bpm": 80}"#,
        )
        .await;
    server.settle().await;
    let resolved = server.alerts(ADMIN, "status=resolved").await;
    assert_eq!(resolved.len(), 1, "{resolved:#?}");
    assert_eq!(resolved[0]["summary"], "ann: pulse back to 80 bpm");
    let (status, rule) = server.get(ADMIN, "/api/v1/rules/pulse").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        rule["resolve_summary"],
        "{{ event.who }}: pulse back to {{ value }} bpm"
    );
}

#[tokio::test]
async fn the_example_geofence_says_left_when_a_vehicle_leaves() {
    let mut server = Server::start().await;
    server.rules_from(ADMIN, &example("sensors.yaml")).await;
    server
        .send(
            ADMIN,
            "gps",
            "application/json",
            r#"{"vehicle": "v7", "lat": 52.52, "lon": 13.405}"#,
        )
        .await;
    server.advance("1s").await;
    let firing = server
        .alerts(ADMIN, "status=firing&rule=geofence-depot")
        .await;
    assert_eq!(firing[0]["summary"], "v7 entered the depot", "{firing:#?}");
    server
        .send(
            ADMIN,
            "gps",
            "application/json",
            r#"{"vehicle": "v7", "lat": 52.6, "lon": 13.405}"#,
        )
        .await;
    server.settle().await;
    let resolved = server
        .alerts(ADMIN, "status=resolved&rule=geofence-depot")
        .await;
    assert_eq!(resolved[0]["summary"], "v7 left the depot", "{resolved:#?}");
}

#[tokio::test]
async fn templates_with_unknown_filters_are_refused_on_save() {
    let server = Server::start().await;
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/rules/r",
            &json!({"name": "r", "source": "s", "when": "true",
                    "summary": "{{ event.host }}\n{{ event.at | datetme('%H:%M') }}"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_rule", "{body}");
    assert_eq!(body["error"]["field"], "summary", "{body}");
    assert_eq!(body["error"]["line"], 2, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown filter `datetme`")),
        "{body}"
    );
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/rules/r",
            &json!({"name": "r", "source": "s", "when": "true",
                    "labels": {"host": "{{ event.host | shout }}"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "labels.host", "{body}");

    // A webhook body with one would have made every delivery of the channel fail.
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/hook",
            &json!({"kind": "webhook", "url": "http://127.0.0.1:9/x",
                    "body": "{{ alert.summary | nope }}"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`body`") && message.contains("unknown filter `nope`"),
        "{body}"
    );
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/hook",
            &json!({"kind": "webhook", "url": "http://127.0.0.1:9/x",
                    "body": "{{ alert.first_seen | datetime('%H:%M', 'Europe/Berlin') }} {{ alert.first_seen | ago }}"}),
        )
        .await;
    assert!(
        status.is_success(),
        "the time filters exist: {status} {body}"
    );
    let (status, body) = server
        .post_json(
            ADMIN,
            "/api/v1/subscriptions",
            &json!({"channel": "hook", "template": "{{ alert.summary | nope }}"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`template`") && m.contains("unknown filter `nope`")),
        "{body}"
    );
}

#[tokio::test]
async fn the_dataos_failure_says_when_it_failed() {
    let rules = example("dataos.yaml");
    let mut server = Server::start_with(&["--rules", rules.to_str().expect("utf-8 path")]).await;
    let fixture = fixture("dataos/action_lifecycle_events.ndjson");
    let failing: Vec<&str> = fixture.lines().take(4).collect();
    server
        .send(ADMIN, "dataos", "application/x-ndjson", &failing.join("\n"))
        .await;
    server.settle().await;
    let firing = server.alerts(ADMIN, "status=firing").await;
    let job = of_rule(&firing, "dataos-job-failed");
    // The run failed at 2025-11-25 10:10 UTC; the server's clock says 2026-11-25 10:00 UTC.
    assert_eq!(
        job[0]["body"], "wf-tmdc-01/wf-job1 failed at 2025-11-25 10:10 UTC (364 days ago)",
        "{job:#?}"
    );
}

#[tokio::test]
async fn a_bad_schedule_silence_or_rule_field_is_named_in_the_error() {
    let server = Server::start().await;
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/hook",
            &json!({"kind": "webhook", "url": "http://127.0.0.1:9/x"}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let refused = |body: &serde_json::Value| {
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (status, body) = server
        .post_json(
            ADMIN,
            "/api/v1/subscriptions",
            &json!({"channel": "hook", "schedule": {"days": "weekdays", "from": "09:00", "to": "18:00"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_subscription");
    let message = refused(&body);
    assert!(
        message
            .starts_with("`schedule.days`: invalid type: string \"weekdays\", expected a sequence")
            && message.contains(
                r#"expected a window {"days": [mon, tue, …], "from": "HH:MM", "to": "HH:MM"}"#
            )
            && !message.contains("untagged"),
        "{message}"
    );
    let (status, body) = server
        .post_json(
            ADMIN,
            "/api/v1/subscriptions",
            &json!({"channel": "hook", "schedule": [{"from": "9am", "to": "18:00"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        refused(&body).starts_with("`schedule[0].from`: `9am` is not a time of day like 09:00"),
        "{body}"
    );
    let (status, body) = server
        .post_json(
            ADMIN,
            "/api/v1/silences",
            &json!({"matchers": {"rule": ["a", "b"]}, "ends_at": "2026-11-26T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_silence");
    assert!(
        refused(&body).starts_with("`matchers.rule`: invalid type: sequence, expected a string"),
        "{body}"
    );
    let (status, body) = server
        .put_json(
            ADMIN,
            "/api/v1/rules/r",
            &json!({"name": "r", "when": "true", "severity": "urgent"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "severity", "{body}");
    assert!(
        refused(&body).starts_with("`severity`: unknown variant `urgent`"),
        "{body}"
    );
}

fn rules_test(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tellify"))
        .args(["rules", "test"])
        .args(args)
        .output()
        .expect("tellify runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn rules_test_without_source_takes_each_rules_own() {
    let events =
        crate::harness::repo_root().join("crates/tellify/tests/fixtures/keyvalue/builds.txt");
    let events = events.to_str().expect("path");
    let builds = example("builds.yaml");
    let builds = builds.to_str().expect("path");
    let (ok, stdout, stderr) = rules_test(&[builds, "--events", events]);
    assert!(ok, "{stdout}{stderr}");
    let opened: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|c: &serde_json::Value| {
            c["change"] == "open" && c["alert"]["rule"] == "place-failures-per-run"
        })
        .collect();
    assert_eq!(opened.len(), 1, "{stdout}");
    assert_eq!(opened[0]["alert"]["key"], "r17");

    // Naming another source says why nothing matches.
    let (ok, stdout, stderr) = rules_test(&[builds, "--events", events, "--source", "ci"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(" 0 alert changes"), "{stdout}");
    assert!(
        stderr.contains("rule `place-failures-per-run` reads source `builds`, but the events come from `ci` (--source): it sees none of them"),
        "{stderr}"
    );

    // A rule over a pattern of sources cannot guess which one the events are from.
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("glob.yaml");
    std::fs::write(
        &rules,
        "name: any-build\nsource: \"build*\"\nwhen: \"true\"\n",
    )
    .expect("write");
    let (ok, _, stderr) = rules_test(&[rules.to_str().expect("path"), "--events", events]);
    assert!(!ok);
    assert!(
        stderr.contains("rule `any-build` reads the sources matching `build*`: say which one the events come from with --source"),
        "{stderr}"
    );
}
