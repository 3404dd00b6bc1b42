//! Regressions found in review: ordering under concurrency, cross-user access through
//! scripts, state of deleted rules, error shapes.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::harness::{ADMIN_TOKEN as ADMIN, GATE_ARGS, Server, encode};

/// Twenty clients each post twenty events at once, numbered from `first`.
async fn post_concurrently(server: Server, first: u64) -> Server {
    let server = Arc::new(server);
    let tasks: Vec<_> = (0..20)
        .map(|t| {
            let s = server.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    s.send(
                        ADMIN,
                        "in",
                        "application/json",
                        &json!({"n": first + t * 100 + i}).to_string(),
                    )
                    .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    Arc::into_inner(server).expect("sole owner")
}

/// Each of `rules` has one alert per event it saw, each counting that one event: an event
/// evaluated twice would count 2, one skipped would have no alert.
async fn each_counted_once(server: &Server, rules: &[&str], events: usize, when: &str) {
    for rule in rules {
        let of = server.alerts(ADMIN, &format!("rule={rule}")).await;
        assert_eq!(
            of.len(),
            events,
            "{when}: {rule}: events accepted with 202 but never evaluated"
        );
        let twice: Vec<_> = of.iter().filter(|a| a["count"] != 1).collect();
        assert!(
            twice.is_empty(),
            "{when}: {rule}: events evaluated more than once: {twice:#?}"
        );
    }
}

/// Twenty clients each post twenty events at once; a rule opens one alert per event. Every
/// accepted event must be evaluated exactly once, live and after a crash while the engine
/// still had them all ahead of it, which the restart replays from the log.
async fn concurrent_ingest(with_emitting_script: bool) {
    let server = Server::start_with(&GATE_ARGS).await;
    let mut rules = vec!["each"];
    if with_emitting_script {
        // Its emitted events take seqs in between the ingested ones.
        server
            .rule(
                ADMIN,
                json!({"name": "chain", "kind": "script", "source": "in",
                "script": "function handle(event, ctx){ ctx.emit('out', {n: event.n}); }"}),
            )
            .await;
        server
            .rule(
                ADMIN,
                json!({"name": "echo", "source": "out", "when": "true", "group_by": ["n"]}),
            )
            .await;
        rules.push("echo");
    }
    server
        .rule(
            ADMIN,
            json!({"name": "each", "source": "in", "when": "true", "group_by": ["n"]}),
        )
        .await;
    server.gate_rule().await;

    let mut server = post_concurrently(server, 0).await;
    server.settle().await;
    each_counted_once(&server, &rules, 400, "live").await;

    // Again, killed while the engine is still held up before the first of them.
    let gate = server.gate(2_500).await;
    let mut server = post_concurrently(server, 10_000).await;
    assert!(
        Instant::now() < gate,
        "the posts took longer than the gate holds the engine; the kill would not be early"
    );
    server.kill();
    let at_kill = server.engine_position().await;
    let ingested_behind = server.events_behind("in").await;
    assert_eq!(
        ingested_behind, 400,
        "killed before the engine evaluated any of them: {at_kill:?}"
    );
    let mut server = server.restart();
    server.settle().await;
    // The replay evaluates the log after the checkpoint, and the events the script emits
    // for the ingested ones there.
    let emitted = if with_emitting_script {
        ingested_behind
    } else {
        0
    };
    assert_eq!(
        server.replayed_at_start(),
        (at_kill.head - at_kill.checkpoint + emitted) as u64,
        "the restart replayed what the engine had not evaluated: {at_kill:?}"
    );
    each_counted_once(&server, &rules, 800, "after the replay").await;
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

/// A malformed request: method, path, content type, body, then the answer's status, code and
/// what its message must say.
type Malformed<'a> = (
    reqwest::Method,
    &'a str,
    Option<&'a str>,
    &'a str,
    u16,
    &'a str,
    &'a [&'a str],
);

/// Extractor rejections did not use the error shape. Each malformed body is answered with
/// the status and code of its kind and a message that says what is wrong with it, in the one
/// shape `{"error": {"code", "message"}}` (events add the index of the bad one).
#[tokio::test]
async fn malformed_json_bodies_get_the_error_shape() {
    let server = Server::start().await;
    let json = Some("application/json");
    let cases: [Malformed; 9] = [
        // Through the JSON extractor: not JSON, cut short, the wrong shape, no content type.
        (
            reqwest::Method::POST,
            "/api/v1/rules/test",
            json,
            "{not json",
            400,
            "bad_request",
            &[
                "Failed to parse the request body as JSON",
                "line 1 column 2",
            ],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/users",
            json,
            r#"{"name": "ann""#,
            400,
            "bad_request",
            &["Failed to parse the request body as JSON", "EOF"],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/users",
            json,
            r#"{"name": 5}"#,
            400,
            "bad_request",
            &["name: invalid type: integer `5`, expected a string"],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/users",
            None,
            r#"{"name": "ann"}"#,
            415,
            "unsupported_media_type",
            &["Content-Type: application/json"],
        ),
        (
            reqwest::Method::PUT,
            "/api/v1/channels/ops",
            json,
            r#"{"kind": "webhook", "url": "#,
            400,
            "bad_request",
            &["Failed to parse the request body as JSON", "EOF"],
        ),
        // Handlers that parse the body themselves.
        (
            reqwest::Method::PUT,
            "/api/v1/rules/r",
            json,
            "{not json",
            400,
            "invalid_rule",
            &["malformed JSON", "line 1 column 2"],
        ),
        (
            reqwest::Method::PUT,
            "/api/v1/rules/r",
            json,
            "[1]",
            400,
            "invalid_rule",
            &["a rule must be a JSON object"],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/tokens",
            json,
            r#"{"user":"#,
            400,
            "bad_request",
            &["invalid body", "EOF"],
        ),
        (
            reqwest::Method::POST,
            "/api/v1/events?source=s",
            json,
            "{not json",
            400,
            "bad_event",
            &["malformed JSON", "line 1 column 2"],
        ),
    ];
    for (method, path, content_type, body, status, code, says) in cases {
        let mut req = server
            .http
            .request(method.clone(), format!("{}{path}", server.base))
            .bearer_auth(ADMIN)
            .body(body.to_owned());
        if let Some(content_type) = content_type {
            req = req.header("content-type", content_type);
        }
        let resp = req.send().await.expect("the server answers");
        let got = resp.status();
        let text = resp.text().await.expect("a body");
        let case = format!("{method} {path} {body:?}: {got} {text}");
        let answer: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{case}: not JSON ({e})"));
        assert_eq!(got.as_u16(), status, "{case}");
        assert_eq!(answer["error"]["code"], code, "{case}");
        let message = answer["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: no message"));
        for said in says {
            assert!(message.contains(said), "{case}: the message lacks {said:?}");
        }
        let object = answer.as_object().expect("an object");
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            ["error"],
            "{case}: only the error"
        );
    }
    // Nothing malformed was stored.
    let (_, users) = server.get(ADMIN, "/api/v1/users").await;
    assert!(
        users["users"]
            .as_array()
            .expect("users")
            .iter()
            .all(|u| u["name"] != "ann"),
        "{users}"
    );
}
