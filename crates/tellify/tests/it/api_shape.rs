//! Every answer is in the one error shape, including those axum makes before a handler runs
//! (`405`, `413`, query/path/JSON rejections), and every input is checked (`?cursor=`, unknown
//! parameters).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN as ADMIN, Server};

/// Asserts `{"error":{"code": code, "message": non-empty}}`.
fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], json!(code), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "a message for people: {body}");
}

#[tokio::test]
async fn an_unsupported_method_answers_405_in_the_error_shape_with_allow() {
    let server = Server::start().await;
    for (method, path) in [
        (Method::PATCH, "/api/v1/rules/x"),
        (Method::DELETE, "/api/v1/alerts"),
        (Method::PUT, "/api/v1/events"),
        (Method::POST, "/api/v1/me"),
    ] {
        let resp = server
            .http
            .request(method.clone(), format!("{}{path}", server.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("the server answers");
        let status = resp.status();
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let body: Value = resp.json().await.expect("a JSON body");
        assert_error(
            status,
            &body,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let allow = allow.unwrap_or_else(|| panic!("{method} {path}: an Allow header"));
        assert!(!allow.contains(method.as_str()), "{method} {path}: {allow}");
        assert!(
            allow.contains("GET") || allow.contains("POST"),
            "{method} {path}: {allow}"
        );
        // The message tells people what the endpoint answers, as the header does.
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(
            message.ends_with(&format!("it answers {allow}")),
            "{method} {path}: {message}"
        );
    }
}

/// `/api/v1/rules/test` is the dry run of an unsaved rule (a `POST`), so no rule may be named
/// `test`: it could never be read or deleted. Saving one says why.
#[tokio::test]
async fn a_rule_named_test_is_refused_with_the_reason() {
    let server = Server::start().await;
    let rule = json!({"name": "test", "source": "s", "when": "event.v > 1"});
    let (status, body) = server.put_json(ADMIN, "/api/v1/rules/test", &rule).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    // A rule file or dry run with a rule named `test` is refused, with the reason.
    let (status, body) = server
        .post_json(
            ADMIN,
            "/api/v1/rules/test",
            &json!({"rule": rule, "events": [{"v": 2}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_rule", "{body}");
    assert_eq!(body["error"]["field"], "name", "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(message.contains("reserved"), "{message}");
    // The dry run still answers there.
    let (status, body) = server
        .post_json(
            ADMIN,
            "/api/v1/rules/test",
            &json!({"rule": {"name": "try", "source": "s", "when": "event.v > 1"}, "events": [{"v": 2}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_body_over_the_limit_answers_413_in_the_error_shape_everywhere() {
    let server = Server::start_with(&["--body-limit", "1024"]).await;
    let big = "x".repeat(4096);
    let rule_body = json!({"name": "r", "description": big}).to_string();
    for (method, path, content_type) in [
        (Method::PUT, "/api/v1/rules/r", "application/json"),
        (Method::POST, "/api/v1/tokens", "application/json"),
        (Method::POST, "/api/v1/users", "application/json"),
        (Method::PUT, "/api/v1/channels/c", "application/json"),
        (Method::POST, "/api/v1/subscriptions", "application/json"),
        (Method::POST, "/api/v1/rules/test", "application/json"),
        (Method::POST, "/api/v1/rules/r/test", "application/json"),
        (Method::POST, "/api/v1/events", "application/json"),
    ] {
        let (status, body) = server
            .request(
                method.clone(),
                ADMIN,
                path,
                Some((content_type, rule_body.clone())),
            )
            .await;
        if path == "/api/v1/rules/r/test" {
            // No such rule yet: the rule is looked up before the body is read.
            assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
            continue;
        }
        assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
        let _ = (method, path);
    }
}

#[tokio::test]
async fn a_cursor_that_the_server_did_not_give_is_refused_on_every_list() {
    let server = Server::start().await;
    for path in [
        "/api/v1/alerts?cursor=garbage",
        "/api/v1/alerts?cursor=",
        "/api/v1/history?cursor=garbage",
        "/api/v1/deliveries?cursor=garbage",
        "/api/v1/deliveries?cursor=sub_01a23442",
        "/api/v1/audit?cursor=garbage",
        "/api/v1/rules?cursor=garbage",
        "/api/v1/channels?cursor=garbage",
        "/api/v1/subscriptions?cursor=garbage",
        "/api/v1/silences?cursor=garbage",
        "/api/v1/tokens?cursor=garbage",
        "/api/v1/users?cursor=garbage",
        "/api/v1/sources?cursor=garbage",
        "/api/v1/templates?cursor=garbage",
        "/api/v1/topics?cursor=garbage",
    ] {
        let (status, body) = server.get(ADMIN, path).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("cursor"),
            "{path}: {body}"
        );
    }
    // A cursor the server gave pages on: three alerts, each with a delivery.
    let (status, channel) = server
        .put_json(
            ADMIN,
            "/api/v1/channels/nowhere",
            &json!({"kind": "webhook", "url": format!("http://127.0.0.1:{}/", crate::harness::free_port())}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{channel}");
    let (status, sub) = server
        .post_json(
            ADMIN,
            "/api/v1/subscriptions",
            &json!({"channel": "nowhere"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    for i in 0..3 {
        server
            .rule(
                ADMIN,
                json!({"name": format!("r{i}"), "source": "s", "when": "event.v > 0"}),
            )
            .await;
    }
    server
        .send(ADMIN, "s", "application/json", r#"{"v": 1}"#)
        .await;
    let mut server = server;
    server.settle().await;
    let (status, page) = server.get(ADMIN, "/api/v1/alerts?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["alerts"].as_array().map(Vec::len), Some(2), "{page}");
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (status, next) = server
        .get(ADMIN, &format!("/api/v1/alerts?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["alerts"].as_array().map(Vec::len), Some(1), "{next}");
    assert_ne!(next["alerts"][0]["id"], page["alerts"][0]["id"]);
    assert_ne!(next["alerts"][0]["id"], page["alerts"][1]["id"]);
    assert_eq!(next["next_cursor"], Value::Null, "{next}");

    let (status, page) = server.get(ADMIN, "/api/v1/deliveries?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        page["deliveries"].as_array().map(Vec::len),
        Some(2),
        "{page}"
    );
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (status, next) = server
        .get(
            ADMIN,
            &format!("/api/v1/deliveries?limit=2&cursor={cursor}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let ids: Vec<&Value> = page["deliveries"]
        .as_array()
        .into_iter()
        .chain(next["deliveries"].as_array())
        .flatten()
        .map(|d| &d["id"])
        .collect();
    assert_eq!(ids.len(), 3, "every delivery once: {page} {next}");
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    assert_eq!(next["next_cursor"], Value::Null, "{next}");
}

#[tokio::test]
async fn rejections_of_query_path_and_body_answer_in_the_error_shape() {
    let server = Server::start().await;
    // Query strings that do not parse into the parameters' types.
    for path in [
        "/api/v1/deliveries?limit=many",
        "/api/v1/history?limit=-",
        "/api/v1/alerts?limit=ten",
        "/api/v1/rules?owner=a&owner=b",
    ] {
        let (status, body) = server.get(ADMIN, path).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    // A path segment that is not UTF-8.
    let (status, body) = server.get(ADMIN, "/api/v1/rules/%FF").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    // JSON bodies: missing content type, malformed, wrong shape.
    let (status, body) = server
        .request(
            Method::POST,
            ADMIN,
            "/api/v1/users",
            Some(("text/plain", r#"{"name":"x"}"#.into())),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let (status, body) = server
        .request(Method::POST, ADMIN, "/api/v1/users", None)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let (status, body) = server
        .request(
            Method::POST,
            ADMIN,
            "/api/v1/silences",
            Some(("application/json", "{".into())),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = server
        .post_json(ADMIN, "/api/v1/users", &json!({"name": 5}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    // A token with a body that is not JSON; none at all is fine.
    let (status, body) = server
        .request(
            Method::POST,
            ADMIN,
            "/api/v1/tokens",
            Some(("application/x-www-form-urlencoded", "name=x".into())),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let (status, body) = server
        .request(Method::POST, ADMIN, "/api/v1/tokens", None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // No such endpoint.
    let (status, body) = server.get(ADMIN, "/api/v1/nothing-here").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}
