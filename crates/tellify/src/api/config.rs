//! `/api/v1/config/smtp` (admin): the server's SMTP settings. The password is write-only and
//! sealed at rest; a PUT with `test_addr` sends a test email first and, if that fails, answers
//! `422` with the SMTP error and saves nothing.

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::extract::{Json, NoParams, Query};
use super::{ApiError, ApiResult, AppState, Caller};
use crate::crypto::SecretBox;
use crate::notify::channel::Secrets;
use crate::notify::email::SmtpSettings;

/// Where the SMTP settings keep secrets: the same write-only rule as channels.
const SMTP_SECRETS: Secrets = Secrets {
    fields: &["password"],
    maps: &[],
};

fn to_map(smtp: &SmtpSettings) -> Map<String, Value> {
    match serde_json::to_value(smtp) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The settings as stored: the password sealed.
pub fn seal_smtp(smtp: &SmtpSettings, keys: &SecretBox) -> Value {
    Value::Object(SMTP_SECRETS.seal(to_map(smtp), keys))
}

/// The settings as used: the password opened.
pub fn open_smtp(v: Value, keys: &SecretBox) -> anyhow::Result<SmtpSettings> {
    let Value::Object(m) = v else {
        anyhow::bail!("the stored SMTP settings are not an object");
    };
    Ok(serde_json::from_value(Value::Object(
        SMTP_SECRETS.open(m, keys)?,
    ))?)
}

fn view(smtp: Option<&SmtpSettings>) -> Value {
    Value::Object(
        smtp.map(|s| SMTP_SECRETS.hide(to_map(s)))
            .unwrap_or_default(),
    )
}

#[utoipa::path(get, path = "/api/v1/config/smtp", tag = "notifications",
    responses((status = 200, description = "the SMTP settings, password shown as `***`", body = ref("#/components/schemas/Smtp")),
              (status = 403, description = "not an admin")))]
pub async fn get_smtp(
    State(state): State<AppState>,
    caller: Caller,
    _: Query<NoParams>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let smtp = state
        .smtp
        .read()
        .map_err(|_| ApiError::unavailable("settings are being changed"))?
        .clone();
    Ok(Json(view(smtp.as_ref())))
}

#[utoipa::path(put, path = "/api/v1/config/smtp", tag = "notifications",
    request_body(content = ref("#/components/schemas/SmtpSettings"), content_type = "application/json"),
    responses((status = 200, description = "saved", body = ref("#/components/schemas/Smtp")),
              (status = 400, description = "invalid (`invalid_smtp`)"),
              (status = 403, description = "not an admin"),
              (status = 415, description = "the body is not `application/json`"),
              (status = 422, description = "the test email failed (`smtp_failed`): nothing saved")))]
pub async fn put_smtp(
    State(state): State<AppState>,
    caller: Caller,
    Json(mut body): Json<Value>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let Value::Object(map) = &mut body else {
        return Err(ApiError::bad_request(
            "invalid_smtp",
            "the settings must be a JSON object",
        ));
    };
    let test_addr = match map.remove("test_addr") {
        Some(Value::String(a)) if !a.is_empty() => Some(a),
        Some(Value::String(_)) | Some(Value::Null) | None => None,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_smtp",
                "`test_addr` must be an email address",
            ));
        }
    };
    let current = state
        .smtp
        .read()
        .map_err(|_| ApiError::unavailable("settings are being changed"))?
        .clone();
    // A password left out or sent as *** keeps the stored one.
    SMTP_SECRETS
        .keep(map, current.as_ref().map(to_map).as_ref())
        .map_err(|m| ApiError::bad_request("invalid_smtp", m))?;
    let smtp: SmtpSettings = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request("invalid_smtp", e.to_string()))?;
    smtp.check()
        .map_err(|m| ApiError::bad_request("invalid_smtp", m))?;
    if let Some(to) = test_addr {
        let text = "This is a test email from Tellify: the SMTP settings work.".to_owned();
        smtp.send(&[to], "Tellify test email", text, None)
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "smtp_failed", e.message)
            })?;
    }
    let now = state.clock.now();
    state
        .outbox
        .put_setting("smtp", &seal_smtp(&smtp, &state.keys), now)
        .await?;
    *state
        .smtp
        .write()
        .map_err(|_| ApiError::unavailable("settings are being changed"))? = Some(smtp.clone());
    state
        .store
        .audit(&caller.user.name, "config.smtp", "smtp", None, now)
        .await?;
    Ok(Json(view(Some(&smtp))))
}
