//! Bad input gets a clear 4xx with the error shape, and nothing of it is stored.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN as ADMIN, Server};

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn post(
    server: &Server,
    source: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, Value) {
    server
        .request(
            Method::POST,
            ADMIN,
            &format!("/api/v1/events?source={source}"),
            Some((content_type, body.to_owned())),
        )
        .await
}

#[tokio::test]
async fn bad_events_are_refused_whole_with_the_error_shape() {
    let mut server = Server::start_with(&["--body-limit", "2000"]).await;

    let (s, b) = post(&server, "bad", "application/json", r#"{"a": 1"#).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_event");

    let (s, b) = post(
        &server,
        "bad",
        "application/x-ndjson",
        "{\"a\":1}\n{\"a\":2}\n{\"a\":\n{\"a\":4}",
    )
    .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_event");
    assert_eq!(b["error"]["index"], 2);

    let (s, b) = post(
        &server,
        "bad",
        "application/json",
        r#"[{"a":1},{"time":"yesterday"}]"#,
    )
    .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_event");
    assert_eq!(b["error"]["index"], 1);

    let (s, b) = post(&server, "bad", "text/plain", "a:1\nb:\"unterminated").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_event");
    assert_eq!(b["error"]["index"], 1);

    let (s, b) = post(&server, "bad", "application/xml", "<a/>").await;
    assert_error(
        s,
        &b,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    let big = format!("[{}]", vec![r#"{"x":"0123456789"}"#; 200].join(","));
    let (s, b) = post(&server, "bad", "application/json", &big).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "too_large");

    let (s, b) = post(&server, "bad source!", "application/json", "{}").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_source");

    let (s, b) = server
        .request(
            Method::POST,
            "tfy_wrong",
            "/api/v1/events",
            Some(("application/json", "{}".into())),
        )
        .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");

    // None of it was kept.
    server.settle().await;
    let (_, topics) = server.get(ADMIN, "/api/v1/topics").await;
    assert_eq!(topics, json!({}), "nothing stored");
    let (_, metrics) = server.get(ADMIN, "/metrics").await;
    assert!(
        metrics
            .as_str()
            .expect("text")
            .contains("tellify_events_rejected_total{reason=\"bad_event\"} 4")
    );
}

#[tokio::test]
async fn accepted_formats_become_the_same_events() {
    let mut server = Server::start().await;
    let answer = server
        .send(
            ADMIN,
            "kv",
            "text/plain; charset=utf-8",
            "host:cadfs01 used_pct:93.5 msg:\"almost full\" alive",
        )
        .await;
    assert_eq!(answer, json!({"accepted": 1}));
    server
        .send(
            ADMIN,
            "nd",
            "application/x-ndjson",
            "{\"a\":1}\n\n{\"a\":2}\n",
        )
        .await;
    server
        .send(
            ADMIN,
            "arr",
            "application/json",
            r#"[{"a":1},{"a":2,"time":"2026-11-25T09:00:00Z"}]"#,
        )
        .await;
    server.settle().await;
    let (_, kv) = server.get(ADMIN, "/api/v1/topics/kv").await;
    assert_eq!(
        kv["event"],
        json!({"host": "cadfs01", "used_pct": 93.5, "msg": "almost full", "words": ["alive"]})
    );
    let (_, arr) = server.get(ADMIN, "/api/v1/topics/arr").await;
    assert_eq!(arr["time"], 1_795_597_200_000_i64, "the event's own time");
    let (status, _) = server.get(ADMIN, "/api/v1/topics/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_rules_are_refused_with_where_and_why() {
    let server = Server::start().await;
    let put = |rule: Value| {
        let name = rule["name"].as_str().unwrap_or("r").to_owned();
        let server = &server;
        async move {
            server
                .put_json(ADMIN, &format!("/api/v1/rules/{name}"), &rule)
                .await
        }
    };
    let (s, b) = put(json!({"name": "r", "whn": "true"})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_rule");
    assert!(
        b["error"]["message"]
            .as_str()
            .expect("message")
            .contains("whn")
    );

    let (s, b) = put(json!({"name": "r", "when": "event.a >\n&& 3"})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_rule");
    assert_eq!(b["error"]["field"], "when");
    assert_eq!(b["error"]["line"], 2, "{b}");
    assert!(b["error"]["column"].is_number());

    let (s, b) = put(json!({"name": "r", "summary": "{{ event.host "})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_rule");
    assert_eq!(b["error"]["field"], "summary");
    assert_eq!(b["error"]["line"], 1);

    let (s, b) = put(json!({"name": "r", "kind": "count", "window": "1m"})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_rule");
    assert_eq!(b["error"]["field"], "threshold");

    server.rule(ADMIN, json!({
        "name": "tpl", "template": true, "when": "event.v > {{ params.limit }}",
        "params": {"type": "object", "required": ["limit"], "properties": {"limit": {"type": "number", "maximum": 100}}}
    })).await;
    let (s, b) = put(json!({"name": "inst", "from": "tpl", "params": {"limit": "high"}})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_params");
    assert_eq!(b["error"]["failures"][0]["path"], "/limit", "{b}");
    let (s, b) = put(json!({"name": "inst", "from": "tpl", "params": {}})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_params");
    let (s, _) = put(json!({"name": "inst", "from": "tpl", "params": {"limit": 90}})).await;
    assert_eq!(s, StatusCode::CREATED);

    let (_, rules) = server.get(ADMIN, "/api/v1/rules").await;
    let names: Vec<&str> = rules["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        vec!["inst", "tpl"],
        "only the valid rules were stored"
    );
    let (_, templates) = server.get(ADMIN, "/api/v1/templates").await;
    assert_eq!(
        templates["templates"][0]["params"]["required"],
        json!(["limit"])
    );
}
