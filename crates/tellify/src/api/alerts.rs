//! `/api/v1/alerts…`, `/api/v1/history`, `/api/v1/stream` and alert statistics.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tellify_core::alert::{Alert, Status};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use super::extract::{Json, Path, Query};
use super::{ApiError, ApiResult, AppState, Caller};
use crate::store::{AlertFilter, HistoryFilter, StatField};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;

fn limit(requested: Option<i64>) -> ApiResult<i64> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "bad_request",
            format!("`limit` must be 1 to {MAX_LIMIT}"),
        )),
    }
}

/// `GET /api/v1/alerts?status=&rule=&severity=&label.K=V&limit=&cursor=`
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts",
    params(("status" = Option<String>, Query, description = "pending | firing | resolved", pattern = "^(pending|firing|resolved)$"),
           ("rule" = Option<String>, Query, description = "rule name"),
           ("severity" = Option<String>, Query, description = "critical | error | warning | info", pattern = "^(critical|error|warning|info)$"),
           ("owner" = Option<String>, Query, description = "admins: this user's alerts (default: all)"),
           ("limit" = Option<i64>, Query, description = "page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000),
           ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page", pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32})$")),
    responses((status = 200, description = "newest first; also `?label.NAME=VALUE` filters", body = ref("#/components/schemas/AlertList")),
              (status = 403, description = "`owner` names another user and the caller is not an admin")))]
pub async fn list_alerts(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let mut filter = AlertFilter {
        owner: caller.scope(),
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (k, v) in query {
        match k.as_str() {
            "status" => {
                filter.status = Some(
                    v.parse()
                        .map_err(|m| ApiError::bad_request("bad_request", m))?,
                )
            }
            "severity" => {
                filter.severity = Some(
                    v.parse()
                        .map_err(|m| ApiError::bad_request("bad_request", m))?,
                )
            }
            "rule" => filter.rule = Some(v),
            "owner" => filter.owner = Some(caller.acting_for(Some(&v))?),
            "limit" => {
                filter.limit = limit(Some(v.parse().map_err(|_| {
                    ApiError::bad_request("bad_request", "`limit` must be a number")
                })?))?
            }
            "cursor" => {
                // A cursor is the id of the last alert of the previous page.
                let id = uuid::Uuid::try_parse(&v).map_err(|_| {
                    ApiError::bad_request(
                        "bad_request",
                        "`cursor` is not one this server gave: pass `next_cursor` of the previous page",
                    )
                })?;
                filter.before = Some(id.hyphenated().to_string())
            }
            other => match other.strip_prefix("label.") {
                Some(label) if !label.is_empty() => filter.labels.push((label.to_owned(), v)),
                _ => {
                    return Err(ApiError::bad_request(
                        "bad_request",
                        format!("unknown filter `{other}`"),
                    ));
                }
            },
        }
    }
    let alerts: Vec<crate::wire::Alert> = state
        .store
        .list_alerts(&filter)
        .await?
        .into_iter()
        .map(crate::wire::Alert::from)
        .collect();
    let next_cursor = (alerts.len() as i64 == filter.limit)
        .then(|| alerts.last().map(|a| a.id.clone()))
        .flatten();
    Ok(Json(
        json!({ "alerts": alerts, "next_cursor": next_cursor }),
    ))
}

async fn visible(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Alert> {
    match state.store.get_alert(id).await? {
        Some(a) if caller.sees(&a.owner) => Ok(a),
        _ => Err(ApiError::not_found("alert")),
    }
}

/// One alert with its history.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, description = "the alert, its history and its deliveries", body = ref("#/components/schemas/AlertDetail"))))]
pub async fn get_alert(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let alert = visible(&state, &caller, &id).await?;
    let history = state
        .store
        .history(&HistoryFilter {
            alert_id: Some(id),
            limit: MAX_LIMIT,
            ..Default::default()
        })
        .await?;
    let deliveries = state
        .outbox
        .list_deliveries(&crate::store::DeliveryFilter {
            alert_id: Some(alert.id.clone()),
            limit: MAX_LIMIT,
            ..Default::default()
        })
        .await?;
    let mut out = serde_json::to_value(crate::wire::Alert::from(alert))
        .map_err(|e| ApiError::internal(e.into()))?;
    out["history"] = json!(history);
    out["deliveries"] = json!(deliveries);
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "alerts",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, description = "acknowledged (again: no change)", body = crate::wire::Alert),
              (status = 409, description = "already resolved")))]
pub async fn ack_alert(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<crate::wire::Alert>> {
    let alert = visible(&state, &caller, &id).await?;
    if alert.status == Status::Resolved {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "conflict",
            "the alert is already resolved",
        ));
    }
    if let Some(acked) = state.engine.ack(alert.alert_key(), &caller.user.name).await {
        return Ok(Json(acked.into()));
    }
    // Acknowledged before (acks are idempotent), or resolved meanwhile.
    let alert = visible(&state, &caller, &id).await?;
    if alert.status == Status::Resolved {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "conflict",
            "the alert is already resolved",
        ));
    }
    Ok(Json(alert.into()))
}

#[utoipa::path(post, path = "/api/v1/alerts/{id}/resolve", tag = "alerts",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, description = "resolved by hand", body = crate::wire::Alert),
              (status = 409, description = "already resolved")))]
pub async fn resolve_alert(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<crate::wire::Alert>> {
    let alert = visible(&state, &caller, &id).await?;
    if alert.status == Status::Resolved || !state.engine.resolve(alert.alert_key()).await {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "conflict",
            "the alert is already resolved",
        ));
    }
    state
        .store
        .audit(
            &caller.user.name,
            "alert.resolve",
            &id,
            None,
            state.clock.now(),
        )
        .await?;
    Ok(Json(visible(&state, &caller, &id).await?.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub rule: Option<String>,
    /// Epoch ms or RFC 3339.
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<i64>,
}

/// A point in time as a query parameter, for the OpenAPI document: epoch milliseconds or
/// RFC 3339.
pub struct Moment;

impl utoipa::PartialSchema for Moment {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(EARLIEST))
                    .maximum(Some(LATEST)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
            )
            .into()
    }
}

impl utoipa::ToSchema for Moment {}

/// 0001-01-01 and 9999-12-31T23:59:59.999Z, the range of RFC 3339, in epoch ms.
const EARLIEST: i64 = -62_135_596_800_000;
const LATEST: i64 = 253_402_300_799_999;

fn time_param(name: &str, v: Option<String>) -> ApiResult<Option<i64>> {
    let Some(v) = v else { return Ok(None) };
    if let Ok(ms) = v.parse::<i64>() {
        if !(EARLIEST..=LATEST).contains(&ms) {
            return Err(ApiError::bad_request(
                "bad_request",
                format!("`{name}` is out of range: years 1 to 9999"),
            ));
        }
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(&v)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::bad_request(
                "bad_request",
                format!("`{name}` must be epoch ms or RFC 3339"),
            )
        })
}

/// Transitions (in/out times and messages), newest first.
#[utoipa::path(get, path = "/api/v1/history", tag = "alerts",
    params(("rule" = Option<String>, Query, description = "rule name"),
           ("from" = inline(Option<Moment>), Query, description = "epoch ms or RFC 3339"),
           ("to" = inline(Option<Moment>), Query, description = "epoch ms or RFC 3339"),
           ("limit" = Option<i64>, Query, description = "at most this many, 1 to 1000 (default 100)", minimum = 1, maximum = 1000)),
    responses((status = 200, description = "transitions (in/out times and messages), newest first", body = ref("#/components/schemas/HistoryList"))))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<Value>> {
    let filter = HistoryFilter {
        owner: caller.scope(),
        rule: q.rule,
        alert_id: None,
        from: time_param("from", q.from)?,
        to: time_param("to", q.to)?,
        limit: limit(q.limit)?,
    };
    Ok(Json(
        json!({ "history": state.store.history(&filter).await? }),
    ))
}

/// Server-Sent Events: every alert change the caller may see, as `event: alert`.
#[utoipa::path(get, path = "/api/v1/stream", tag = "alerts",
    responses((status = 200, description = "Server-Sent Events: `event: alert` with the alert as JSON for every change the caller may see; `event: lagged` when the reader fell behind and should reload", content_type = "text/event-stream", body = String)))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let mut alerts = BroadcastStream::new(state.alerts.subscribe());
    let mut shutdown = state.shutdown.clone();
    let mut revocations = state.revocations.subscribe();
    let store = state.store.clone();
    // Ends when the server stops (so a stop drains instead of waiting on open streams) and
    // when the token it was opened with is revoked.
    let events = async_stream::stream! {
        loop {
            tokio::select! {
                item = alerts.next() => match item {
                    Some(Ok(alert)) if caller.sees(&alert.owner) => {
                        let data = serde_json::to_string(&crate::wire::Alert::from(&alert)).unwrap_or_default();
                        yield Ok(SseEvent::default().event("alert").id(alert.id.clone()).data(data));
                    }
                    Some(Ok(_)) => {}
                    // A slow reader missed changes: tell it to reload rather than silently skip.
                    Some(Err(_)) => yield Ok(SseEvent::default().event("lagged").data("{}")),
                    None => break,
                },
                _ = stopping(&mut shutdown) => break,
                changed = revocations.changed() => {
                    let standing = matches!(store.user_by_token(&caller.token_hash).await, Ok(Some(_)));
                    if changed.is_err() || !standing {
                        break;
                    }
                }
            }
        }
    };
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// Waits until the server stops.
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    pub group_by: Option<String>,
}

/// Alert counts, e.g. per source and pipeline run: `?group_by=source,run`.
#[utoipa::path(get, path = "/api/v1/stats/alerts", tag = "alerts",
    params(("group_by" = Option<String>, Query, description = "comma-separated: source, run, rule, severity, status", pattern = r"^\s*((source|run|rule|severity|status)\s*(,\s*(source|run|rule|severity|status)\s*)*)?$")),
    responses((status = 200, description = "counts per group", body = ref("#/components/schemas/AlertStats"))))]
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<StatsQuery>,
) -> ApiResult<Json<Value>> {
    let fields = q
        .group_by
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            StatField::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_request",
                    format!("cannot group by `{s}`: use source, run, rule, severity, status"),
                )
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let rows = state
        .store
        .alert_stats(caller.scope().as_deref(), &fields)
        .await?;
    let groups: Vec<Value> = rows
        .into_iter()
        .map(|(keys, n)| {
            let mut g = serde_json::Map::new();
            for (f, k) in fields.iter().zip(keys) {
                g.insert(f.column().to_owned(), json!(k));
            }
            g.insert("alerts".into(), json!(n));
            Value::Object(g)
        })
        .collect();
    Ok(Json(json!({ "groups": groups })))
}
