//! Regressions found in review: ordering under concurrency, cross-user access through
//! scripts, state of deleted rules, error shapes.

use serde_json::json;

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, encode, of_rule};

/// Twenty clients each post twenty events at once; a rule opens one alert per event. Every
/// accepted event must be evaluated exactly once, also after a crash and replay.
async fn concurrent_ingest(with_emitting_script: bool) {
    let server = Server::start().await;
    if with_emitting_script {
        // Its emitted events take seqs in between the ingested ones.
        server
            .rule(
                ADMIN,
                json!({"name": "chain", "kind": "script", "source": "in",
                "script": "function handle(event, ctx){ ctx.emit('out', {n: event.n}); }"}),
            )
            .await;
    }
    server
        .rule(
            ADMIN,
            json!({"name": "each", "source": "in", "when": "true", "group_by": ["n"]}),
        )
        .await;
    let server = std::sync::Arc::new(server);
    let tasks: Vec<_> = (0..20)
        .map(|t| {
            let s = server.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    s.send(
                        ADMIN,
                        "in",
                        "application/json",
                        &json!({"n": t * 100 + i}).to_string(),
                    )
                    .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let mut server = std::sync::Arc::into_inner(server).expect("sole owner");
    server.settle().await;
    let alerts = server.alerts(ADMIN, "").await;
    assert_eq!(
        of_rule(&alerts, "each").len(),
        400,
        "events accepted with 202 but never evaluated"
    );
    let mut server = server.crash_and_restart();
    server.settle().await;
    assert_eq!(
        of_rule(&server.alerts(ADMIN, "").await, "each").len(),
        400,
        "not replayed either"
    );
}

/// Events ingested while the engine commits a script's emitted events were skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_ingested_while_scripts_emit_are_all_evaluated() {
    concurrent_ingest(true).await;
}

/// The control for the test above: no script, the same concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ingest_is_evaluated_exactly_once() {
    concurrent_ingest(false).await;
}

/// ctx.emit writes into another user's private source.
#[tokio::test]
async fn a_script_cannot_emit_into_another_users_source() {
    let mut server = Server::start().await;
    let bob = server.user("bob").await;
    let mallory = server.user("mallory").await;
    server
        .send(&bob, "bobs", "application/json", r#"{"ok": true}"#)
        .await;
    server
        .rule(
            &bob,
            json!({"name": "bad", "source": "bobs", "when": "event.injected"}),
        )
        .await;
    // Direct write is refused...
    let (status, _) = server
        .request(
            reqwest::Method::POST,
            &mallory,
            "/api/v1/events?source=bobs",
            Some(("application/json", r#"{"injected": true}"#.into())),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN);
    // ...but a script may emit there. (Its emit into her own source is the control: the
    // script ran and emitting works.)
    server
        .send(&mallory, "mine", "application/json", "{}")
        .await;
    server
        .rule(
            &mallory,
            json!({"name": "seen", "source": "mine", "when": "event.via == 'script'"}),
        )
        .await;
    server
        .rule(
            &mallory,
            json!({"name": "inject", "kind": "script", "source": "m",
        "script": "function handle(event, ctx){ ctx.emit('mine', {via: 'script'}); ctx.emit('bobs', {injected: true}); }"}),
        )
        .await;
    server.send(&mallory, "m", "application/json", "{}").await;
    server.settle().await;
    let own = server.alerts(&mallory, "status=firing").await;
    assert_eq!(own.len(), 1, "the control: {own:?}");
    assert_eq!(own[0]["rule"], "seen");
    assert!(
        server.alerts(&bob, "").await.is_empty(),
        "mallory's event raised bob's alert"
    );
}

/// A deleted rule's state comes back for a new rule of the same name after a restart.
#[tokio::test]
async fn a_deleted_rules_state_does_not_come_back() {
    let mut server = Server::start().await;
    let hb = json!({"name": "hb", "kind": "absence", "source": "hb", "expect_every": "1m", "group_by": ["host"]});
    server.rule(ADMIN, hb.clone()).await;
    server.send(ADMIN, "hb", "text/plain", "host:old").await;
    server.settle().await;
    let (status, _) = server
        .request(
            reqwest::Method::DELETE,
            ADMIN,
            &format!("/api/v1/rules/{}", encode("hb")),
            None,
        )
        .await;
    assert!(status.is_success());
    server.rule(ADMIN, hb).await;
    let mut server = server.crash_and_restart();
    // The control: a host the new rule does see goes missing and fires.
    server.send(ADMIN, "hb", "text/plain", "host:new").await;
    server.advance("2m").await;
    let alerts = server.alerts(ADMIN, "status=firing").await;
    let keys: Vec<&str> = alerts.iter().filter_map(|a| a["key"].as_str()).collect();
    assert_eq!(
        keys,
        ["new"],
        "the new rule fires only for the host it saw: {alerts:?}"
    );
}

/// `_topic` of a private source reaches another user's script.
#[tokio::test]
async fn topic_data_of_private_sources_does_not_leak_through_scripts() {
    let mut server = Server::start().await;
    let bob = server.user("bob").await;
    let mallory = server.user("mallory").await;
    server
        .send(&bob, "bobs", "application/json", r#"{"secret": "s3cr3t"}"#)
        .await;
    server.rule(&mallory, json!({"name": "spy", "kind": "script", "source": "m",
        "script": "function handle(event, ctx){ ctx.fire({key: 'x', summary: JSON.stringify(_topic)}); }"})).await;
    server.send(&mallory, "m", "application/json", "{}").await;
    server.settle().await;
    let alerts = server.alerts(&mallory, "").await;
    // The control: the script ran and saw her own source.
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let summary = alerts[0]["summary"].as_str().expect("summary");
    assert!(summary.contains("\"m\""), "{summary}");
    assert!(!summary.contains("s3cr3t"), "{summary}");
}

/// Extractor rejections do not use the error shape.
#[tokio::test]
async fn malformed_json_bodies_get_the_error_shape() {
    let server = Server::start().await;
    let (status, body) = server
        .request(
            reqwest::Method::POST,
            ADMIN,
            "/api/v1/rules/test",
            Some(("application/json", "{not json".into())),
        )
        .await;
    assert!(body.get("error").is_some(), "{status} {body}");
}
