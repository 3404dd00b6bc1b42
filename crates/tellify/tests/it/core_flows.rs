//! The issue's end-to-end cases on real producers' payloads.

use serde_json::json;

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, T0, example, fixture, of_rule};

#[tokio::test]
async fn dataos_failed_run_raises_job_and_workflow_alerts_with_links_and_success_resolves_them() {
    let rules = example("dataos.yaml");
    let mut server = Server::start_with(&["--rules", rules.to_str().expect("utf-8 path")]).await;
    let fixture = fixture("dataos/action_lifecycle_events.ndjson");
    let lines: Vec<&str> = fixture.lines().collect();
    let (failing, succeeding) = lines.split_at(4);
    server
        .send(ADMIN, "dataos", "application/x-ndjson", &failing.join("\n"))
        .await;
    server.settle().await;

    let firing = server.alerts(ADMIN, "status=firing").await;
    assert_eq!(
        firing.len(),
        2,
        "one job and one workflow alert: {firing:#?}"
    );
    let job = of_rule(&firing, "dataos-job-failed");
    let workflow = of_rule(&firing, "dataos-workflow-failed");
    assert_eq!(job.len(), 1);
    assert_eq!(workflow.len(), 1);
    assert_eq!(job[0]["key"], "public/wf-tmdc-01/wf-job1");
    assert_eq!(
        job[0]["summary"],
        "DataOS job wf-tmdc-01/wf-job1 failed in public"
    );
    assert_eq!(job[0]["severity"], "error");
    assert_eq!(
        job[0]["links"]["run_details"],
        "https://dataos.example.com/operations/user-kernel/resources/resource-runtime?name=wf-tmdc-01&type=workflow&workspace=public"
    );
    assert_eq!(
        job[0]["links"]["logs"],
        "https://dataos.example.com/hera/app/action/public/wf-tmdc-01/run-history"
    );
    assert_eq!(workflow[0]["key"], "public/wf-tmdc-01/wf-tmdc-01");
    assert_eq!(workflow[0]["labels"]["workflow"], "wf-tmdc-01");
    assert_eq!(workflow[0]["labels"]["owner"], "iamgroot");
    // The sandbox namespace's failure raised nothing.
    assert!(firing.iter().all(|a| a["labels"]["namespace"] == "public"));

    server
        .send(
            ADMIN,
            "dataos",
            "application/x-ndjson",
            &succeeding.join("\n"),
        )
        .await;
    server.settle().await;
    assert!(server.alerts(ADMIN, "status=firing").await.is_empty());
    let resolved = server.alerts(ADMIN, "status=resolved").await;
    assert_eq!(resolved.len(), 2);
    assert!(
        resolved
            .iter()
            .all(|a| a["resolve_reason"] == "condition no longer holds")
    );

    // The history shows each alert's in- and out-time.
    let (_, detail) = server
        .get(
            ADMIN,
            &format!("/api/v1/alerts/{}", job[0]["id"].as_str().expect("id")),
        )
        .await;
    let statuses: Vec<&str> = detail["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, vec!["resolved", "firing"]);
}

#[tokio::test]
async fn more_than_four_distinct_blocks_failing_place_in_one_runtag_fires_once_for_that_runtag() {
    let mut server = Server::start().await;
    server.rules_from(ADMIN, &example("builds.yaml")).await;
    server
        .send(
            ADMIN,
            "builds",
            "text/plain",
            &fixture("keyvalue/builds.txt"),
        )
        .await;
    server.settle().await;
    let alerts = server.alerts(ADMIN, "rule=place-failures-per-run").await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["key"], "r17");
    assert_eq!(alerts[0]["status"], "firing");
    // Sending the same failures again folds into the open alert instead of opening another.
    server
        .send(
            ADMIN,
            "builds",
            "text/plain",
            "project:vr0 block:gc_f place user:x runtag:r17 completed status:fail",
        )
        .await;
    server.settle().await;
    let alerts = server.alerts(ADMIN, "rule=place-failures-per-run").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["count"], 2);
    // r18 (one good block) and the route_opt failure in vr1 never reached the threshold.
    assert!(alerts.iter().all(|a| a["key"] == "r17"));
    // The count slides out of its 6h window and the alert resolves itself.
    server.advance("6h").await;
    let alerts = server.alerts(ADMIN, "rule=place-failures-per-run").await;
    assert_eq!(alerts[0]["status"], "resolved");
}

#[tokio::test]
async fn disk_above_90_held_for_five_minutes_fires_and_dropping_below_resolves() {
    let mut server = Server::start().await;
    server.rules_from(ADMIN, &example("disk.yaml")).await;
    server
        .send(
            ADMIN,
            "disk",
            "text/plain",
            "host:cadfs01 fs:/sarc/cad used_pct:93.5 kind:disk",
        )
        .await;
    server.settle().await;
    let alerts = server.alerts(ADMIN, "rule=disk-usage-high").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["status"], "pending");
    assert_eq!(alerts[0]["key"], "cadfs01//sarc/cad");
    assert_eq!(alerts[0]["value"], 93.5);

    server.advance("4m59s").await;
    assert_eq!(
        server.alerts(ADMIN, "rule=disk-usage-high").await[0]["status"],
        "pending"
    );
    server.advance("1s").await;
    let alerts = server.alerts(ADMIN, "rule=disk-usage-high").await;
    assert_eq!(alerts[0]["status"], "firing");
    assert_eq!(alerts[0]["fired_at"], T0 + 300_000);
    assert_eq!(alerts[0]["summary"], "/sarc/cad on cadfs01 is 93.5% full");

    // Another filesystem below the line changes nothing for this one.
    server
        .send(
            ADMIN,
            "disk",
            "text/plain",
            "host:cadfs01 fs:/sarc/lib used_pct:71.2 kind:disk",
        )
        .await;
    server
        .send(
            ADMIN,
            "disk",
            "text/plain",
            "host:cadfs01 fs:/sarc/cad used_pct:89.9 kind:disk",
        )
        .await;
    server.settle().await;
    let alerts = server.alerts(ADMIN, "rule=disk-usage-high").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["status"], "resolved");
    assert_eq!(alerts[0]["resolved_at"], T0 + 300_000);

    // A blip shorter than `for` never fires and leaves no alert behind.
    server
        .send(
            ADMIN,
            "disk",
            "text/plain",
            "host:cadfs02 fs:/proj/vr0 used_pct:95 kind:disk",
        )
        .await;
    server.advance("1m").await;
    server
        .send(
            ADMIN,
            "disk",
            "text/plain",
            "host:cadfs02 fs:/proj/vr0 used_pct:80 kind:disk",
        )
        .await;
    server.settle().await;
    let alerts = server.alerts(ADMIN, "rule=disk-usage-high").await;
    assert_eq!(
        alerts.len(),
        1,
        "the discarded pending alert is gone: {alerts:#?}"
    );
}

#[tokio::test]
async fn a_heartbeat_that_stops_fires_after_expect_every_and_the_next_one_resolves() {
    let mut server = Server::start().await;
    server.rules_from(ADMIN, &example("heartbeat.yaml")).await;
    server
        .send(
            ADMIN,
            "heartbeats",
            "text/plain",
            &fixture("keyvalue/heartbeats.txt"),
        )
        .await;
    server.advance("50s").await;
    server
        .send(
            ADMIN,
            "heartbeats",
            "text/plain",
            "host:caddashboard alive kind:heartbeat",
        )
        .await;
    server.advance("11s").await;
    // cadlicense's last heartbeat is 61s old; caddashboard's only 11s.
    let alerts = server.alerts(ADMIN, "status=firing").await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["key"], "cadlicense");
    assert_eq!(alerts[0]["first_seen"], T0 + 60_000);
    assert_eq!(
        alerts[0]["summary"],
        "cadlicense sent no heartbeat for a minute"
    );

    server
        .send(
            ADMIN,
            "heartbeats",
            "text/plain",
            "host:cadlicense alive kind:heartbeat",
        )
        .await;
    server.settle().await;
    assert!(server.alerts(ADMIN, "status=firing").await.is_empty());
    assert_eq!(server.alerts(ADMIN, "status=resolved").await.len(), 1);
}

/// Each topic of the DT Gateway sample becomes a source whose latest event is its value.
async fn send_topics(server: &Server, topics: &serde_json::Value) {
    for (name, value) in topics.as_object().expect("topics") {
        server
            .send(ADMIN, name, "application/json", &value.to_string())
            .await;
    }
}

#[tokio::test]
async fn dt_gateway_multi_statement_condition_over_topics_fires_only_after_its_time_threshold() {
    let mut server = Server::start().await;
    let topics: serde_json::Value =
        serde_json::from_str(&fixture("dt-gateway/topic_data.json")).expect("json");
    send_topics(&server, &topics).await;
    server.rules_from(ADMIN, &example("dt-gateway.yaml")).await;
    server.settle().await;

    // numAppsRunning is 7 > 5: pending until it has held for 60s.
    let too_many = server.alerts(ADMIN, "rule=too-many-apps").await;
    assert_eq!(too_many.len(), 1);
    assert_eq!(too_many[0]["status"], "pending");
    // WordCount is RUNNING: nothing.
    assert!(
        server
            .alerts(ADMIN, "rule=wordcount-not-running")
            .await
            .is_empty()
    );

    server.send(ADMIN, "applications.application_1480063135007_0543", "application/json",
        &json!({"id": "application_1480063135007_0543", "name": "WordCount", "state": "FAILED"}).to_string()).await;
    server.advance("10s").await;
    let wordcount = server.alerts(ADMIN, "rule=wordcount-not-running").await;
    assert_eq!(wordcount.len(), 1);
    assert_eq!(wordcount[0]["status"], "pending");
    server.advance("30s").await;
    // A restart keeps each source's latest event for `_topic`, and the pending timer.
    let mut server = server.crash_and_restart();
    server.advance("20s").await;
    assert_eq!(
        server.alerts(ADMIN, "rule=wordcount-not-running").await[0]["status"],
        "pending"
    );
    let (_, rules) = server.get(ADMIN, "/api/v1/rules").await;
    let rules = rules["rules"].as_array().expect("rules").clone();
    assert!(rules.iter().all(|r| r["status"] == "ok"), "{rules:#?}");
    server.advance("10s").await;
    assert_eq!(
        server.alerts(ADMIN, "rule=wordcount-not-running").await[0]["status"],
        "firing"
    );
    assert_eq!(
        server.alerts(ADMIN, "rule=too-many-apps").await[0]["status"],
        "firing"
    );

    // Back to RUNNING: resolved at the next check.
    server.send(ADMIN, "applications.application_1480063135007_0543", "application/json",
        &json!({"id": "application_1480063135007_0543", "name": "WordCount", "state": "RUNNING"}).to_string()).await;
    server.advance("10s").await;
    assert_eq!(
        server.alerts(ADMIN, "rule=wordcount-not-running").await[0]["status"],
        "resolved"
    );
}

#[tokio::test]
async fn a_script_rule_keeps_state_across_events_and_restarts_and_chains_through_emit() {
    let mut server = Server::start().await;
    server.rule(ADMIN, json!({
        "name": "failures-per-host", "kind": "script", "source": "jobs",
        "script": "function handle(event, ctx) {\n  const n = (ctx.state[event.host] || 0) + 1;\n  ctx.state[event.host] = n;\n  if (n >= 3) {\n    ctx.fire({key: event.host, severity: 'error', summary: event.host + ' failed ' + n + ' times', value: n});\n    ctx.emit('escalations', {host: event.host, failures: n});\n  }\n  if (event.ok) { ctx.state[event.host] = 0; ctx.resolve(event.host); }\n}"
    })).await;
    server.rule(ADMIN, json!({
        "name": "escalated", "source": "escalations", "when": "event.failures >= 3",
        "group_by": ["host"], "severity": "critical", "summary": "{{ event.host }} escalated"
    })).await;
    server
        .send(
            ADMIN,
            "jobs",
            "application/json",
            r#"[{"host":"a"},{"host":"a"},{"host":"b"}]"#,
        )
        .await;
    server.settle().await;
    assert!(server.alerts(ADMIN, "").await.is_empty());

    // The count of two for host a survives a crash.
    let mut server = server.crash_and_restart();
    server
        .send(ADMIN, "jobs", "application/json", r#"{"host":"a"}"#)
        .await;
    server.settle().await;
    let alerts = server.alerts(ADMIN, "status=firing").await;
    let fired = of_rule(&alerts, "failures-per-host");
    assert_eq!(fired.len(), 1, "{alerts:#?}");
    assert_eq!(fired[0]["summary"], "a failed 3 times");
    assert_eq!(fired[0]["value"], 3.0);
    let chained = of_rule(&alerts, "escalated");
    assert_eq!(chained.len(), 1, "the emitted event fired the second rule");
    assert_eq!(chained[0]["key"], "a");
    let (_, topic) = server.get(ADMIN, "/api/v1/topics/escalations").await;
    assert_eq!(topic["event"], json!({"host": "a", "failures": 3}));

    server
        .send(
            ADMIN,
            "jobs",
            "application/json",
            r#"{"host":"a","ok":true}"#,
        )
        .await;
    server.settle().await;
    assert_eq!(
        of_rule(
            &server.alerts(ADMIN, "status=resolved").await,
            "failures-per-host"
        )
        .len(),
        1
    );
}
