//! `POST /api/v1/events`: events over HTTP, as JSON, NDJSON or `key:value` text.
//!
//! A request is all or nothing: every event is parsed and checked before any is stored, and
//! `202` is answered only after the ingest writer has committed them.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tellify_core::event::{self, Format};

use crate::api::extract::{Json, Query};
use crate::api::{ApiError, ApiResult, AppState, Caller};
use crate::metrics::ReasonLabel;
use crate::store::NewEvent;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub source: Option<String>,
    pub format: Option<String>,
}

/// Accepts events; answers `202 {"accepted": N}` once they are durably stored.
#[utoipa::path(post, path = "/api/v1/events", tag = "events",
    params(("source" = Option<String>, Query, description = "source name (default `default`): 1 to 200 of letters, digits and `._-/:`", pattern = r"^[A-Za-z0-9._/:-]{1,200}$"),
           ("format" = Option<String>, Query, description = "json | ndjson | text; default: by Content-Type", pattern = "^(json|ndjson|text)$")),
    request_body(description = "All or nothing: `application/json` (an event or an array of events), `application/x-ndjson` (one event per line) or `text/plain` (one event per line as `key:value` words)",
        content((ref("#/components/schemas/Events") = "application/json"), (String = "application/x-ndjson"), (String = "text/plain"))),
    responses((status = 202, description = "stored: evaluated exactly once from now on", body = ref("#/components/schemas/Accepted")),
              (status = 400, description = "a bad event (`index` says which) or a bad source name: nothing is stored"),
              (status = 403, description = "the source belongs to another user"),
              (status = 415, description = "unsupported content type"),
              (status = 429, description = "more requests per second with this token than the rate limit"),
              (status = 503, description = "the events could not be stored: nothing is stored")))]
pub async fn post_events(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let reject = |reason: &str, error: ApiError| {
        state
            .metrics
            .events_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
        error
    };
    rate_limit(&state, &caller).map_err(|e| reject("rate_limited", e))?;
    let source = query.source.unwrap_or_else(|| "default".to_owned());
    event::validate_source_name(&source)
        .map_err(|m| reject("bad_source", ApiError::bad_request("bad_source", m)))?;
    if !state.ingest.may_write(&caller.user, &source) {
        return Err(reject(
            "forbidden",
            ApiError::forbidden(format!("the source `{source}` belongs to another user")),
        ));
    }
    let format = format_of(query.format.as_deref(), &headers).map_err(|e| reject("format", e))?;
    let bytes = axum::body::to_bytes(body, state.body_limit)
        .await
        .map_err(|_| {
            reject(
                "too_large",
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the body is over the limit of {} bytes", state.body_limit),
                ),
            )
        })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        reject(
            "bad_event",
            ApiError::bad_request("bad_event", format!("the body is not UTF-8: {e}"))
                .with("index", 0),
        )
    })?;
    let objects = event::parse_body(format, text).map_err(|e| {
        reject(
            "bad_event",
            ApiError::bad_request("bad_event", e.message).with("index", e.index),
        )
    })?;
    if objects.is_empty() {
        return Err(reject(
            "bad_event",
            ApiError::bad_request("bad_event", "the body holds no events").with("index", 0),
        ));
    }
    let now = state.clock.now();
    let events = event::into_events(&source, objects, now).map_err(|e| {
        reject(
            "bad_event",
            ApiError::bad_request("bad_event", e.message).with("index", e.index),
        )
    })?;
    let events: Vec<NewEvent> = events
        .into_iter()
        .map(|e| NewEvent {
            source: e.source,
            time: e.time,
            received: now,
            hops: 0,
            data: e.data,
        })
        .collect();
    let accepted = state
        .ingest
        .submit(&caller.user.name, events)
        .await
        .map_err(ApiError::unavailable)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": accepted }))))
}

/// The body format: `?format=` wins, else the Content-Type.
pub(crate) fn format_of(format: Option<&str>, headers: &HeaderMap) -> ApiResult<Format> {
    if let Some(f) = format {
        return match f {
            "json" => Ok(Format::Json),
            "ndjson" => Ok(Format::Ndjson),
            "text" => Ok(Format::Text),
            "datahub" | "alertmanager" | "dataos" => Err(ApiError::bad_request(
                "unsupported_format",
                format!("the `{f}` adapter is not available yet; send json, ndjson or text"),
            )),
            other => Err(ApiError::bad_request(
                "unsupported_format",
                format!("unknown format `{other}`: use json, ndjson or text"),
            )),
        };
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Format::Ndjson),
        "text/plain" => Ok(Format::Text),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type `{content_type}` is not accepted: use application/json, application/x-ndjson or text/plain"
            ),
        )),
    }
}

/// A token bucket per API token: `rate_limit` requests per second, bursts up to twice that.
fn rate_limit(state: &AppState, caller: &Caller) -> ApiResult<()> {
    if state.rate_limit == 0 {
        return Ok(());
    }
    let rate = f64::from(state.rate_limit);
    let now = state.clock.now();
    let mut buckets = state
        .buckets
        .lock()
        .expect("the rate-limit lock is never poisoned");
    let (tokens, last) = buckets
        .entry(caller.token_hash.clone())
        .or_insert((rate * 2.0, now));
    *tokens = (*tokens + (now - *last).max(0) as f64 / 1000.0 * rate).min(rate * 2.0);
    *last = now;
    if *tokens < 1.0 {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} requests per second with this token",
                state.rate_limit
            ),
        ));
    }
    *tokens -= 1.0;
    Ok(())
}
