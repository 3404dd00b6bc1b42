//! The HTTP API around the store: `/api/v1/…`, health, metrics and the OpenAPI document, with
//! the reference page that renders it (`crate::web`).
//!
//! [`router`] builds the whole application without a socket, so tests and `app::run` share it.
//! Every handler takes a [`Caller`] (the authenticated user) and answers another user's
//! object with `404`, exactly as for a missing one: existence is not leaked.

pub mod alerts;
pub mod channels;
pub mod config;
pub mod deliveries;
pub mod error;
pub mod events;
pub mod extract;
pub mod openapi;
pub mod rules;
pub mod silences;
pub mod subscriptions;
pub mod system;
pub mod users;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tellify_core::alert::Alert;
use tellify_core::expr::Limits;
use tokio::sync::broadcast;

use crate::auth::{TokenScope, hash_token};
use crate::clock::Clock;
use crate::engine::EngineHandle;
use crate::metrics::Metrics;
use crate::sources::Ingest;
use crate::store::{Store, User};
pub use error::{ApiError, ApiResult};

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub outbox: Arc<dyn crate::store::Outbox>,
    /// Seals channel secrets.
    pub keys: crate::crypto::SecretBox,
    /// Wakes the delivery worker.
    pub wake: Arc<tokio::sync::Notify>,
    /// The server's SMTP settings, password opened.
    pub smtp: crate::notify::email::SharedSmtp,
    /// Sends channel tests.
    pub senders: Arc<crate::notify::Senders>,
    /// Every channel's circuit breaker, shown on channel reads.
    pub breakers: Arc<crate::notify::Breakers>,
    pub engine: EngineHandle,
    pub ingest: Ingest,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub alerts: broadcast::Sender<Alert>,
    pub limits: Limits,
    pub body_limit: usize,
    /// Requests per second per token on event ingest; 0 turns the limit off.
    pub rate_limit: u32,
    pub buckets: Arc<Mutex<HashMap<String, (f64, i64)>>>,
    /// Whether the test clock endpoint is mounted (`TELLIFY_FAKE_CLOCK`).
    pub fake_clock: bool,
    /// Becomes `true` once a stopping server accepts no new connection: live streams end so
    /// the stop can drain.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Bumped whenever a token is revoked: live streams check that theirs still stands.
    pub revocations: Arc<tokio::sync::watch::Sender<u64>>,
    /// `--metrics-public`: `/metrics` answers without a token.
    pub metrics_public: bool,
}

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    pub token_hash: String,
}

impl Caller {
    /// The owner filter for list queries: admins see everything.
    pub fn scope(&self) -> Option<String> {
        (!self.user.is_admin()).then(|| self.user.name.clone())
    }

    /// Whether the caller may see an object owned by `owner`.
    pub fn sees(&self, owner: &str) -> bool {
        self.user.is_admin() || self.user.name == owner
    }

    /// The owner a request acts for: the caller, or for admins the `owner` they name.
    /// An empty `owner` (`?owner=`) is no owner.
    pub fn acting_for(&self, owner: Option<&str>) -> ApiResult<String> {
        match owner.filter(|o| !o.is_empty()) {
            None => Ok(self.user.name.clone()),
            Some(o) if o == self.user.name => Ok(o.to_owned()),
            Some(o) if self.user.is_admin() => Ok(o.to_owned()),
            Some(_) => Err(ApiError::forbidden("only admins act for other users")),
        }
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        if self.user.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs the admin role"))
        }
    }
}

/// The user and scope of the request's bearer token; `401` without a known one.
async fn authenticate(
    parts: &Parts,
    state: &AppState,
) -> Result<(User, TokenScope, String), ApiError> {
    let token = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let token_hash = hash_token(token);
    let (user, scope) = state
        .store
        .user_by_token(&token_hash)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    Ok((user, scope, token_hash))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (user, scope, token_hash) = authenticate(parts, state).await?;
        if scope != TokenScope::Api {
            return Err(ApiError::forbidden("this token may only read /metrics"));
        }
        Ok(Caller { user, token_hash })
    }
}

/// Who may read `/metrics`, which names every user's rules and sources: an admin's token or
/// a token made with `"scope": "metrics"`; anyone when the server runs with
/// `--metrics-public`.
pub struct Scraper;

impl FromRequestParts<AppState> for Scraper {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.metrics_public {
            return Ok(Scraper);
        }
        match authenticate(parts, state).await? {
            (_, TokenScope::Metrics, _) => Ok(Scraper),
            (user, TokenScope::Api, _) if user.is_admin() => Ok(Scraper),
            _ => Err(ApiError::forbidden(
                "/metrics needs an admin token or a token made with \"scope\": \"metrics\"",
            )),
        }
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let body_limit = state.body_limit;
    let mut api = Router::new()
        .route("/events", post(events::post_events))
        .route("/topics", get(system::list_topics))
        .route("/topics/{source}", get(system::get_topic))
        .route("/sources", get(system::list_sources))
        .route("/rules", get(rules::list_rules))
        // The dry run of an unsaved rule: no rule may be named `test`.
        .route("/rules/test", post(rules::test_unsaved))
        .route(
            "/rules/{name}",
            get(rules::get_rule)
                .put(rules::put_rule)
                .delete(rules::delete_rule),
        )
        .route("/rules/{name}/test", post(rules::test_rule))
        .route("/templates", get(rules::list_templates))
        .route("/alerts", get(alerts::list_alerts))
        .route("/alerts/{id}", get(alerts::get_alert))
        .route("/alerts/{id}/ack", post(alerts::ack_alert))
        .route("/alerts/{id}/resolve", post(alerts::resolve_alert))
        .route("/history", get(alerts::history))
        .route("/stream", get(alerts::stream))
        .route("/stats/alerts", get(alerts::stats))
        .route("/users", get(users::list_users).post(users::create_user))
        .route("/users/{name}", get(users::get_user))
        .route("/me", get(users::me))
        .route("/tokens", get(users::list_tokens).post(users::create_token))
        .route("/tokens/{id}", axum::routing::delete(users::delete_token))
        .route("/audit", get(system::audit))
        .route("/channels", get(channels::list_channels))
        .route(
            "/channels/{name}",
            get(channels::get_channel)
                .put(channels::put_channel)
                .delete(channels::delete_channel),
        )
        .route("/channels/{name}/test", post(channels::test_channel))
        .route(
            "/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/subscriptions/{id}",
            get(subscriptions::get)
                .put(subscriptions::update)
                .delete(subscriptions::delete),
        )
        .route("/silences", get(silences::list).post(silences::create))
        .route(
            "/silences/{id}",
            get(silences::get).delete(silences::expire),
        )
        .route("/config/smtp", get(config::get_smtp).put(config::put_smtp))
        .route("/deliveries", get(deliveries::list))
        .route("/deliveries/{id}", get(deliveries::get))
        .route("/deliveries/{id}/retry", post(deliveries::retry))
        .route("/openapi.json", get(openapi::document));
    if state.fake_clock {
        api = api.route("/_test/clock", post(system::advance_clock));
    }
    let app =
        Router::new()
            .nest("/api/v1", api)
            .route("/healthz", get(system::healthz))
            .route("/readyz", get(system::readyz))
            .route("/metrics", get(system::metrics))
            .route("/", get(crate::web::root))
            .route(crate::web::DOCS, get(crate::web::page))
            .route("/api/docs/reference.js", get(crate::web::script))
            .route("/api/docs/reference.css", get(crate::web::style))
            .fallback(system::not_found)
            .layer(DefaultBodyLimit::max(body_limit))
            // Answers that are failures are logged where they are made (internal errors with their
            // cause, storage trouble once per spell); logging each 5xx again here flooded the log
            // while a full disk refused thousands of events a second.
            .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ))
            .with_state(state);
    // Outside the routes: a route's `405` gets its `Allow` header after the route's own
    // layers have run, and the message names what the endpoint answers.
    Router::new()
        .fallback_service(app)
        .layer(axum::middleware::map_response(error_shape))
}

/// Answers that axum makes itself — `405` (with its `Allow` header), `413` from the body limit,
/// and any other rejection in plain text or with no body — are put in the one error shape.
/// Handlers' own errors are JSON already and pass through untouched.
async fn error_shape(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            ApiError::new(
                status,
                "method_not_allowed",
                format!("this endpoint does not answer this method; it answers {allow}"),
            )
        }
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(status, "unsupported_media_type", text),
        StatusCode::NOT_FOUND => ApiError::new(status, "not_found", "no such endpoint"),
        s if s.is_server_error() => ApiError::internal(anyhow::anyhow!(
            "a {s} answered without the error shape: {text}"
        )),
        s => ApiError::new(
            s,
            "bad_request",
            if text.is_empty() {
                s.canonical_reason().unwrap_or("bad request").to_owned()
            } else {
                text
            },
        ),
    };
    let shaped = error.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let (new_parts, body) = shaped.into_parts();
    parts.headers.extend(new_parts.headers);
    Response::from_parts(parts, body)
}
