//! A graceful stop drains: on SIGTERM the server stops accepting, finishes the requests in
//! flight and then its tasks; live streams end at once. Revoking a token ends its streams.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{ADMIN_TOKEN as ADMIN, Server};

/// Reads a live stream until it ends; `None` if it is still open after `limit`.
async fn ends_within(mut resp: reqwest::Response, limit: Duration) -> Option<String> {
    let mut seen = String::new();
    let read = async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(limit, read).await.ok().map(|()| seen)
}

async fn open_stream(server: &Server, token: &str) -> reqwest::Response {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/stream", server.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(resp.status(), StatusCode::OK);
    resp
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_and_refuses_new_ones() {
    let server = Server::start().await;
    server
        .rule(ADMIN, json!({"name": "all", "source": "s", "when": "true"}))
        .await;
    let stream = open_stream(&server, ADMIN).await;
    // Another process holds the write lock, so the next event is in flight until it lets go.
    let mut other = server.lock_database().await;
    let post = server.post_in_background("s", r#"{"n": 1}"#);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!post.is_finished(), "the event waits for the lock");

    let mut server = server;
    server.signal_term();
    // The live stream ends at once rather than holding the stop up.
    assert!(
        ends_within(stream, Duration::from_secs(5)).await.is_some(),
        "the stream ends on SIGTERM"
    );
    // New connections are refused while the request in flight is still being served.
    let fresh = reqwest::Client::new()
        .get(format!("{}/healthz", server.base))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(fresh.is_err(), "no new requests during a stop: {fresh:?}");
    assert!(
        server
            .exited_within(Duration::from_millis(700))
            .await
            .is_none(),
        "the stop waits for the request in flight"
    );
    sqlx::query("COMMIT")
        .execute(&mut other)
        .await
        .expect("unlock");
    drop(other);
    let answered = post.await.expect("joined");
    assert_eq!(
        answered.expect("answered, not dropped"),
        StatusCode::ACCEPTED
    );
    let status = server
        .exited_within(Duration::from_secs(20))
        .await
        .expect("stops once drained");
    assert!(status.success(), "{status:?}");

    // The event it accepted was evaluated before the stop.
    let server = server.restart();
    let alerts = server.alerts(ADMIN, "rule=all").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["count"], 1);
}

#[tokio::test]
async fn a_stuck_request_is_cut_off_after_the_shutdown_timeout() {
    let mut server = Server::start_with(&["--shutdown-timeout", "1s"]).await;
    let _lock = server.lock_database().await;
    let post = server.post_in_background("s", r#"{"n": 1}"#);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal_term();
    let started = std::time::Instant::now();
    let status = server
        .exited_within(Duration::from_secs(15))
        .await
        .expect("stops after the timeout");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for the request first: {:?}",
        started.elapsed()
    );
    // Cut off, or told that nothing was stored: never a 202 for an event the stop dropped.
    let answer = post.await.expect("joined");
    assert!(
        answer.is_err() || answer.as_ref().is_ok_and(|s| s.is_server_error()),
        "the stuck request was never answered 202: {answer:?}"
    );
}

#[tokio::test]
async fn revoking_a_token_ends_the_streams_opened_with_it() {
    let server = Server::start().await;
    let (status, made) = server
        .post_json(ADMIN, "/api/v1/tokens", &json!({"name": "dashboard"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let token = made["token"].as_str().expect("token").to_owned();
    let id = made["id"].as_str().expect("id").to_owned();
    let revoked = open_stream(&server, &token).await;
    let kept = open_stream(&server, ADMIN).await;

    let (status, body) = server
        .request(Method::DELETE, ADMIN, &format!("/api/v1/tokens/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(
        ends_within(revoked, Duration::from_secs(5)).await.is_some(),
        "the revoked token's stream ends"
    );
    // The control: the stream of a token still standing goes on and gets the next change.
    server
        .rule(ADMIN, json!({"name": "all", "source": "s", "when": "true"}))
        .await;
    server.send(ADMIN, "s", "application/json", "{}").await;
    let mut kept = kept;
    let next = tokio::time::timeout(Duration::from_secs(5), kept.chunk())
        .await
        .expect("the other stream is still open")
        .expect("reads")
        .expect("a chunk, not the end");
    assert!(String::from_utf8_lossy(&next).contains("alert"));
}
