//! Promises kept under hostile input: `/metrics` is not public by default (an admin token or a
//! scrape token, which may read nothing else), webhook headers cannot smuggle CR/LF into a
//! request, user-chosen names hold no control characters, and a template loop bomb is
//! stopped by the template fuel without stalling anything.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, encode};
use crate::receiver::Receiver;

/// Checks an error answer: the status and the one error shape with its code.
fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

async fn metrics(server: &Server, token: &str) -> (StatusCode, Value) {
    server.get(token, "/metrics").await
}

#[tokio::test]
async fn metrics_need_an_admin_or_a_scrape_token() {
    let server = Server::start().await;
    let ann = server.user("ann").await;

    let (s, b) = metrics(&server, "").await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, b) = metrics(&server, "tfy_not_a_token").await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, b) = metrics(&server, &ann).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    let (s, b) = metrics(&server, ADMIN).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(
        b.as_str()
            .expect("text")
            .contains("tellify_events_evaluated_total"),
        "{b}"
    );

    // Only admins make scrape tokens; a scope must be one there is.
    let (s, b) = server
        .post_json(&ann, "/api/v1/tokens", &json!({"scope": "metrics"}))
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    let (s, b) = server
        .post_json(ADMIN, "/api/v1/tokens", &json!({"scope": "everything"}))
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");

    // A scrape token, made by an admin for the non-admin `prometheus`.
    let (s, b) = server
        .post_json(ADMIN, "/api/v1/users", &json!({"name": "prometheus"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, made) = server
        .post_json(
            ADMIN,
            "/api/v1/tokens",
            &json!({"user": "prometheus", "name": "scraper", "scope": "metrics"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    assert_eq!(made["scope"], "metrics");
    let scrape = made["token"].as_str().expect("token").to_owned();
    let (s, b) = metrics(&server, &scrape).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.as_str().expect("text").contains("# EOF"), "{b}");

    // It may read nothing else and change nothing.
    for (method, path, body) in [
        (Method::GET, "/api/v1/me", None),
        (Method::GET, "/api/v1/rules", None),
        (Method::GET, "/api/v1/alerts", None),
        (Method::GET, "/api/v1/tokens", None),
        (Method::GET, "/api/v1/stream", None),
        (
            Method::POST,
            "/api/v1/events?source=s",
            Some(("application/json", "{}".to_owned())),
        ),
        (
            Method::PUT,
            "/api/v1/rules/r",
            Some(("application/json", json!({"when": "true"}).to_string())),
        ),
        (
            Method::POST,
            "/api/v1/tokens",
            Some(("application/json", "{}".to_owned())),
        ),
    ] {
        let (s, b) = server.request(method.clone(), &scrape, path, body).await;
        assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
        assert!(
            b["error"]["message"]
                .as_str()
                .expect("message")
                .contains("/metrics"),
            "{method} {path}: {b}"
        );
    }

    // The list shows each token's scope (never the token).
    let (s, list) = server.get(ADMIN, "/api/v1/tokens").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let tokens = list["tokens"].as_array().expect("tokens");
    let scraper = tokens
        .iter()
        .find(|t| t["id"] == made["id"])
        .expect("listed");
    assert_eq!(scraper["scope"], "metrics");
    assert_eq!(scraper["user"], "prometheus");
    assert!(tokens.iter().all(|t| t.get("token").is_none()));
    assert!(
        tokens
            .iter()
            .filter(|t| t["id"] != made["id"])
            .all(|t| t["scope"] == "api"),
        "{list}"
    );

    // Revoked, it reads nothing.
    let id = made["id"].as_str().expect("id");
    let (s, _) = server
        .request(Method::DELETE, ADMIN, &format!("/api/v1/tokens/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = metrics(&server, &scrape).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn metrics_public_opens_metrics_only() {
    let server = Server::start_with(&["--metrics-public"]).await;
    let (s, b) = metrics(&server, "").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.as_str().expect("text").contains("tellify_"), "{b}");
    let (s, b) = server.get("", "/api/v1/rules").await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn the_cli_makes_scrape_tokens() {
    let server = Server::start().await;
    let base = server.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tellify"))
            .args([
                "tokens", "create", "--server", &base, "--token", ADMIN, "--scope", "metrics",
                "--name", "prom",
            ])
            .env_remove("TELLIFY_TOKEN")
            .output()
            .expect("tellify runs")
    })
    .await
    .expect("joins");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("UTF-8");
    let token = token.trim();
    assert!(token.starts_with("tfy_"), "{token}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("metrics"),
        "the scope is said"
    );
    let (s, b) = metrics(&server, token).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = server.get(token, "/api/v1/me").await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn webhook_headers_with_cr_lf_or_bad_names_are_refused_on_save() {
    let server = Server::start().await;
    let receiver = Receiver::start().await;
    let cases = [
        (json!({"X-Api-Key": "k\r\nX-Injected: 1"}), "X-Api-Key"),
        (json!({"X-Api-Key": "k\nX-Injected: 1"}), "X-Api-Key"),
        (json!({"X-Api-Key": "k\r"}), "X-Api-Key"),
        (json!({"X-Api-Key": "k\u{0}"}), "X-Api-Key"),
        (json!({"X-Api-Key": "k\u{7f}"}), "X-Api-Key"),
        (json!({"X-Api-Key\r\nX-Injected": "1"}), "X-Injected"),
        (json!({"X Api Key": "1"}), "X Api Key"),
        (json!({"X-Api-Key:": "1"}), "X-Api-Key:"),
        (json!({"Host": "evil.example"}), "Host"),
        (json!({"Content-Length": "0"}), "Content-Length"),
    ];
    for (headers, names) in cases {
        let body = json!({"kind": "webhook", "url": receiver.url("/h"), "headers": headers});
        let (s, b) = server.put_json(ADMIN, "/api/v1/channels/h", &body).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_channel");
        let message = b["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("headers") && message.contains(names),
            "{headers}: {message}"
        );
        assert!(
            !message.contains("X-Injected: 1"),
            "a secret value is not echoed: {message}"
        );
    }
    let (s, _) = server.get(ADMIN, "/api/v1/channels/h").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing was saved");
    // A good header goes out as given.
    let body =
        json!({"kind": "webhook", "url": receiver.url("/h"), "headers": {"X-Api-Key": "k 1;ü"}});
    let (s, b) = server.put_json(ADMIN, "/api/v1/channels/h", &body).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = server
        .request(Method::POST, ADMIN, "/api/v1/channels/h/test", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let got = receiver.wait_for(1).await;
    assert_eq!(
        got[0].headers.get("x-api-key").map(|v| v.as_bytes()),
        Some("k 1;ü".as_bytes())
    );
}

#[tokio::test]
async fn names_with_control_characters_are_refused_everywhere() {
    let server = Server::start().await;
    let receiver = Receiver::start().await;
    let bad_names = [
        "a\u{0}b",
        "a\nb",
        "a\rb",
        "a\tb",
        "\u{1b}[31mred",
        "a\u{7f}",
        "a\u{202e}b",
        " lead",
        "trail ",
    ];
    for name in bad_names {
        let path = encode(name);
        // A rule, a template and an instance (all are rule documents at /rules/{name}).
        for doc in [
            json!({"name": name, "source": "s", "when": "true"}),
            json!({"name": name, "template": true, "source": "s", "when": "true"}),
            json!({"name": name, "from": "t", "params": {}}),
        ] {
            let (s, b) = server
                .put_json(ADMIN, &format!("/api/v1/rules/{path}"), &doc)
                .await;
            assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_rule");
            assert_eq!(b["error"]["field"], "name", "{name:?}: {b}");
        }
        // The dry run takes rule documents too.
        let (s, b) = server
            .post_json(
                ADMIN,
                "/api/v1/rules/test",
                &json!({"rule": {"name": name, "when": "true"}, "events": []}),
            )
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_rule");
        // A channel.
        let (s, b) = server
            .put_json(
                ADMIN,
                &format!("/api/v1/channels/{path}"),
                &json!({"kind": "webhook", "url": receiver.url("/")}),
            )
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_channel");
        // A user.
        let (s, b) = server
            .post_json(ADMIN, "/api/v1/users", &json!({"name": name}))
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_user");
        // A token's label.
        let (s, b) = server
            .post_json(ADMIN, "/api/v1/tokens", &json!({"name": name}))
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    }
    // Nothing of it was kept.
    let (_, rules) = server.get(ADMIN, "/api/v1/rules").await;
    assert_eq!(rules["rules"], json!([]), "{rules}");
    let (_, channels) = server.get(ADMIN, "/api/v1/channels").await;
    assert_eq!(channels["channels"], json!([]), "{channels}");
    let (_, users) = server.get(ADMIN, "/api/v1/users").await;
    assert_eq!(users["users"].as_array().expect("users").len(), 1);
    // Names of any script with spaces inside are still fine.
    server
        .rule(
            ADMIN,
            json!({"name": "Plattenplatz über 90 % / cad", "source": "s", "when": "true"}),
        )
        .await;
}

/// Ten thousand million iterations: far beyond any fuel.
const LOOP_BOMB: &str =
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";

#[tokio::test]
async fn a_template_loop_bomb_is_saved_but_stopped_by_the_fuel() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    // It parses, so it is accepted on save.
    server
        .rule(
            ADMIN,
            json!({"name": "bomb", "source": "s", "when": "true", "description": "Bomb rule",
                "summary": LOOP_BOMB, "notify": ["hook"]}),
        )
        .await;
    let (s, b) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/hook",
            &json!({"kind": "webhook", "url": receiver.url("/hook")}),
        )
        .await;
    assert!(s.is_success(), "{b}");

    let started = Instant::now();
    server.send(ADMIN, "s", "application/json", "{}").await;
    server.settle().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the engine took {took:?}");
    // Another request answers promptly.
    let started = Instant::now();
    let (s, _) = server.get("", "/healthz").await;
    assert_eq!(s, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(1));

    // The alert still opens, with the summary the rule would have without a template, and
    // the rule says why.
    let alerts = server.alerts(ADMIN, "rule=bomb").await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["summary"], "Bomb rule");
    let (_, rule) = server.get(ADMIN, "/api/v1/rules/bomb").await;
    let error = rule["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("summary") && error.contains("fuel"),
        "the rule shows the template ran out of fuel: {rule}"
    );
    // The notification went out.
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].json()["alert"]["summary"], "Bomb rule");
}

#[tokio::test]
async fn a_loop_bomb_in_a_message_template_falls_back_or_fails_visibly() {
    let mut server = Server::start().await;
    let receiver = Receiver::start().await;
    // A subscription's message template (Slack shows it as the text): the default text goes.
    let (s, b) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/slack",
            &json!({"kind": "slack", "webhook_url": receiver.url("/slack")}),
        )
        .await;
    assert!(s.is_success(), "{b}");
    let (s, b) = server
        .post_json(
            ADMIN,
            "/api/v1/subscriptions",
            &json!({"channel": "slack", "rules": ["hot"], "template": LOOP_BOMB}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "accepted on save: {b}");
    // A webhook body template: it cannot be sent as asked, so the delivery fails for good
    // and says why, rather than going out in another shape.
    let (s, b) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/hook",
            &json!({"kind": "webhook", "url": receiver.url("/hook"), "body": LOOP_BOMB}),
        )
        .await;
    assert!(s.is_success(), "accepted on save: {b}");
    server
        .rule(
            ADMIN,
            json!({"name": "hot", "source": "s", "when": "event.t > 30", "summary": "it is {{ event.t }} degrees",
                "notify": ["hook"]}),
        )
        .await;

    let started = Instant::now();
    server
        .send(ADMIN, "s", "application/json", r#"{"t": 40}"#)
        .await;
    server.settle().await;
    let got = receiver.wait_for(1).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(got[0].path, "/slack");
    let slack = got[0].json();
    assert!(
        slack.to_string().contains("it is 40 degrees"),
        "the default text: {slack}"
    );
    let dead = server
        .deliveries_until(ADMIN, "status=dead", |d| d.len() == 1)
        .await;
    let error = dead[0]["last_error"].as_str().expect("error");
    assert!(error.contains("fuel"), "{error}");
    assert_eq!(
        server.deliveries(ADMIN, "status=sent").await.len(),
        1,
        "the Slack message was sent"
    );
    receiver.settle_at(&mut server, 1).await;
}
