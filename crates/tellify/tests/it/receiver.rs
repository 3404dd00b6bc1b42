//! A local HTTP receiver for notification tests: records every request and answers with the
//! statuses (and JSON bodies) it is told to, so tests can check real payloads and play a
//! failing receiver or a provider's documented answers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::harness::Server;

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct Inner {
    received: Vec<Received>,
    /// Answers to give, in order; when empty, 200.
    script: VecDeque<Answer>,
    /// Answer every request with this, once the script is empty.
    always: Option<u16>,
    /// The JSON body of unscripted answers (else a short text).
    always_json: Option<Value>,
    /// While true, requests are recorded but not answered (a receiver slow to answer).
    held: tokio::sync::watch::Sender<bool>,
}

/// One scripted answer: a status, a Retry-After in seconds, a JSON body.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    json: Option<Value>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

async fn record(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (answer, mut released) = {
        let mut inner = inner.lock().expect("lock");
        (
            answer(&mut inner, uri, headers, body),
            inner.held.subscribe(),
        )
    };
    // Recorded at once, answered when let go.
    let _ = released.wait_for(|held| !*held).await;
    answer
}

fn answer(inner: &mut Inner, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> Response {
    inner.received.push(Received {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    let answer = inner.script.pop_front().unwrap_or_else(|| Answer {
        status: inner.always.unwrap_or(200),
        retry_after: None,
        json: inner.always_json.clone(),
    });
    let status = StatusCode::from_u16(answer.status).expect("status");
    match (answer.retry_after, answer.json) {
        (_, Some(json)) => {
            let mut resp = (status, axum::Json(json)).into_response();
            if let Some(s) = answer.retry_after {
                resp.headers_mut()
                    .insert("retry-after", s.to_string().parse().expect("header"));
            }
            resp
        }
        (Some(s), None) => (status, [("retry-after", s.to_string())], "scripted").into_response(),
        (None, None) => (
            status,
            if status.is_success() {
                "ok"
            } else {
                "scripted failure"
            },
        )
            .into_response(),
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0").await
    }

    /// Listens on a given address (to come back on the same port after a test stopped it).
    pub async fn start_on(addr: &str) -> Receiver {
        let inner = Arc::new(Mutex::new(Inner {
            received: Vec::new(),
            script: VecDeque::new(),
            always: None,
            always_json: None,
            held: tokio::sync::watch::Sender::new(false),
        }));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().fallback(record).with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests with these statuses (and Retry-After seconds).
    pub fn script(&self, answers: &[(u16, Option<u64>)]) {
        self.inner
            .lock()
            .expect("lock")
            .script
            .extend(answers.iter().map(|&(status, retry_after)| Answer {
                status,
                retry_after,
                json: None,
            }));
    }

    /// Answers the next requests with these statuses and JSON bodies.
    pub fn script_json(&self, answers: &[(u16, Value)]) {
        self.inner
            .lock()
            .expect("lock")
            .script
            .extend(answers.iter().map(|(status, json)| Answer {
                status: *status,
                retry_after: None,
                json: Some(json.clone()),
            }));
    }

    /// Records the next requests but answers none until [`Receiver::release`].
    pub fn hold(&self) {
        self.inner.lock().expect("lock").held.send_replace(true);
    }

    /// Answers the requests held, and the next ones at once.
    pub fn release(&self) {
        self.inner.lock().expect("lock").held.send_replace(false);
    }

    pub fn always(&self, status: Option<u16>) {
        self.inner.lock().expect("lock").always = status;
    }

    /// Answers every unscripted request with this status and JSON body (as a provider does).
    pub fn always_json(&self, status: u16, json: Value) {
        let mut inner = self.inner.lock().expect("lock");
        inner.always = Some(status);
        inner.always_json = Some(json);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().expect("lock").received.clone()
    }

    /// Waits (bounded) until at least `n` requests came; returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..200 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "expected {n} requests, got {}: {:#?}",
            self.received().len(),
            self.received()
        );
    }

    /// Checks that exactly `n` requests came once the server has nothing more to send (see
    /// [`Server::quiesce`]).
    pub async fn settle_at(&self, server: &mut Server, n: usize) -> Vec<Received> {
        server.quiesce().await;
        let got = self.received();
        assert_eq!(got.len(), n, "{got:#?}");
        got
    }
}
