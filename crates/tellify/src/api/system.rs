//! Topics and sources, Tellify's own health, the audit log, and the test clock.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::extract::{Json, NoParams, Path, Query};
use super::{ApiError, ApiResult, AppState, Caller};
use crate::metrics::SeverityLabel;

/// The latest event of every source the caller may read.
#[utoipa::path(get, path = "/api/v1/topics", tag = "events",
    responses((status = 200, description = "source name → its latest event and time", body = ref("#/components/schemas/Topics"))))]
pub async fn list_topics(
    State(state): State<AppState>,
    caller: Caller,
    _: Query<NoParams>,
) -> ApiResult<Json<Value>> {
    let mut out = Map::new();
    for s in state.store.sources().await? {
        if state.ingest.may_read(&caller.user, &s.name) {
            out.insert(
                s.name.clone(),
                json!({ "event": s.last_event, "time": s.last_time }),
            );
        }
    }
    Ok(Json(Value::Object(out)))
}

#[utoipa::path(get, path = "/api/v1/topics/{source}", tag = "events",
    params(("source" = String, Path, description = "source name")),
    responses((status = 200, description = "the source's latest event", body = ref("#/components/schemas/Topic"))))]
pub async fn get_topic(
    State(state): State<AppState>,
    caller: Caller,
    Path(source): Path<String>,
) -> ApiResult<Json<Value>> {
    match state.store.source(&source).await? {
        Some(s) if state.ingest.may_read(&caller.user, &s.name) => Ok(Json(
            json!({ "source": s.name, "event": s.last_event, "time": s.last_time }),
        )),
        _ => Err(ApiError::not_found("source")),
    }
}

/// Sources the caller may read, with owner, visibility and counts.
#[utoipa::path(get, path = "/api/v1/sources", tag = "events",
    responses((status = 200, description = "the sources the caller may read", body = ref("#/components/schemas/SourceList"))))]
pub async fn list_sources(
    State(state): State<AppState>,
    caller: Caller,
    _: Query<NoParams>,
) -> ApiResult<Json<Value>> {
    let sources: Vec<Value> = state
        .store
        .sources()
        .await?
        .into_iter()
        .filter(|s| state.ingest.may_read(&caller.user, &s.name))
        .map(|s| {
            json!({"name": s.name, "kind": "http", "owner": s.owner, "visibility": s.visibility,
                   "events": s.events, "last_time": s.last_time, "state": "up"})
        })
        .collect();
    Ok(Json(json!({ "sources": sources })))
}

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers and takes writes; otherwise `503` saying which part is not.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(failure) = state.store.health().failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "database": "failing",
                "reason": failure.kind.code(),
                "message": failure.kind.message(),
                "since": failure.since,
            })),
        );
    }
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": "ok" })),
        ),
        Err(e) => {
            tracing::warn!(message = "Readiness check failed.", error = %format!("{e:#}"));
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not_ready", "database": "unreachable" })),
            )
        }
    }
}

pub async fn metrics(State(state): State<AppState>, _scraper: super::Scraper) -> impl IntoResponse {
    if let Ok(counts) = state.store.open_counts().await {
        state.metrics.alerts_open.clear();
        for (status, severity, n) in counts {
            if status == "firing" {
                state
                    .metrics
                    .alerts_open
                    .get_or_create(&SeverityLabel { severity })
                    .set(n);
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "users",
    responses((status = 200, description = "who changed what, newest first (the last 1,000)", body = ref("#/components/schemas/AuditList")),
              (status = 403, description = "not an admin")))]
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    _: Query<NoParams>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(
        json!({ "audit": state.store.list_audit(1_000).await? }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advance {
    /// How far to move the clock, e.g. `90s`.
    pub advance: String,
}

/// Moves the fake clock (only mounted when `TELLIFY_FAKE_CLOCK` is set) and runs due timers.
pub async fn advance_clock(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Advance>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let d: tellify_core::rule::Duration = body
        .advance
        .parse()
        .map_err(|m| ApiError::bad_request("bad_request", m))?;
    state.clock.advance(d.millis());
    // Deliveries that came due with the new time go now.
    state.wake.notify_one();
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.engine.send(crate::engine::Command::Tick);
    state.engine.send(crate::engine::Command::Barrier(tx));
    let _ = rx.await;
    Ok(Json(json!({ "now": state.clock.now() })))
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}
