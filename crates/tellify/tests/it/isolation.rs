//! A user sees and changes only their own rules, alerts and sources.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{ADMIN_TOKEN as ADMIN, Server};

#[tokio::test]
async fn user_b_cannot_read_change_or_test_user_a_rules_or_alerts() {
    let mut server = Server::start().await;
    let ann = server.user("ann").await;
    let bob = server.user("bob").await;
    server
        .rule(
            &ann,
            json!({"name": "ann-rule", "source": "ann-src", "when": "event.v > 1"}),
        )
        .await;
    server
        .send(&ann, "ann-src", "application/json", r#"{"v": 5}"#)
        .await;
    server.settle().await;
    let alerts = server.alerts(&ann, "").await;
    assert_eq!(alerts.len(), 1);
    let id = alerts[0]["id"].as_str().expect("id").to_owned();

    let not_found = |(status, body): (StatusCode, serde_json::Value)| {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
    };
    not_found(server.get(&bob, "/api/v1/rules/ann-rule").await);
    not_found(server.get(&bob, "/api/v1/rules/ann-rule?owner=ann").await);
    not_found(
        server
            .request(
                Method::DELETE,
                &bob,
                "/api/v1/rules/ann-rule?owner=ann",
                None,
            )
            .await,
    );
    not_found(
        server
            .request(
                Method::POST,
                &bob,
                "/api/v1/rules/ann-rule/test?owner=ann",
                Some(("application/json", "{}".into())),
            )
            .await,
    );
    not_found(server.get(&bob, &format!("/api/v1/alerts/{id}")).await);
    not_found(
        server
            .request(
                Method::POST,
                &bob,
                &format!("/api/v1/alerts/{id}/ack"),
                None,
            )
            .await,
    );
    not_found(
        server
            .request(
                Method::POST,
                &bob,
                &format!("/api/v1/alerts/{id}/resolve"),
                None,
            )
            .await,
    );
    not_found(server.get(&bob, "/api/v1/topics/ann-src").await);

    let (status, _) = server
        .put_json(
            &bob,
            "/api/v1/rules/ann-rule?owner=ann",
            &json!({"when": "false"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .request(
            Method::POST,
            &bob,
            "/api/v1/events?source=ann-src",
            Some(("application/json", "{}".into())),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "bob may not write to ann's source"
    );
    // Bob's rule on ann's private source is refused, for events and for _topic alike.
    let (status, body) = server
        .put_json(&bob, "/api/v1/rules/peek", &json!({"source": "ann-src"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server
        .put_json(
            &bob,
            "/api/v1/rules/peek",
            &json!({"kind": "threshold", "when": "_topic['ann-src'].v > 1"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    assert!(server.alerts(&bob, "").await.is_empty());
    let (_, rules) = server.get(&bob, "/api/v1/rules").await;
    assert_eq!(rules["rules"], json!([]));
    let (_, topics) = server.get(&bob, "/api/v1/topics").await;
    assert_eq!(topics, json!({}));
    let (status, _) = server.get(&bob, "/api/v1/users").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A rule of bob's without a source does not see ann's events.
    server
        .rule(&bob, json!({"name": "bob-all", "when": "true"}))
        .await;
    server
        .send(&ann, "ann-src", "application/json", r#"{"v": 6}"#)
        .await;
    server.settle().await;
    assert!(server.alerts(&bob, "").await.is_empty());

    // Ann still can do everything; the admin sees both.
    let (status, acked) = server
        .request(
            Method::POST,
            &ann,
            &format!("/api/v1/alerts/{id}/ack"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(acked["acked_by"], "ann");
    assert_eq!(server.alerts(ADMIN, "").await.len(), 1);
}

#[tokio::test]
async fn a_person_resolves_an_alert_and_the_next_match_opens_a_new_one() {
    let mut server = Server::start().await;
    server
        .rule(
            ADMIN,
            json!({"name": "m", "source": "x", "when": "event.bad"}),
        )
        .await;
    server
        .send(ADMIN, "x", "application/json", r#"{"bad": true}"#)
        .await;
    server.settle().await;
    let id = server.alerts(ADMIN, "").await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, resolved) = server
        .request(
            Method::POST,
            ADMIN,
            &format!("/api/v1/alerts/{id}/resolve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["resolve_reason"], "resolved by hand");
    server
        .send(ADMIN, "x", "application/json", r#"{"bad": true}"#)
        .await;
    server.settle().await;
    let alerts = server.alerts(ADMIN, "").await;
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0]["status"], "firing");
    assert_ne!(alerts[0]["id"], id);
}
