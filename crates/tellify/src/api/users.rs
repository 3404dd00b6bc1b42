//! `/api/v1/users`, `/api/v1/me` and `/api/v1/tokens`: accounts and their API tokens.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Bytes, Json, NoParams, Path, Query};
use super::{ApiError, ApiResult, AppState, Caller};
use crate::auth::{TokenScope, hash_token, new_token};
use crate::store::User;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1 to 64 letters, digits and `._-@`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    #[schema(pattern = "@")]
    pub email: Option<String>,
    /// `admin` or `user` (default).
    #[schema(schema_with = role_schema)]
    pub role: Option<String>,
    /// IANA time zone (default `UTC`).
    #[schema(schema_with = timezone_schema)]
    pub timezone: Option<String>,
    /// Web password (write-only), at least 8 characters.
    #[schema(min_length = 8)]
    pub password: Option<String>,
}

fn one_of_or_null(values: Vec<String>) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let mut values: Vec<serde_json::Value> = values.into_iter().map(Value::String).collect();
    values.push(Value::Null);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(values))
        .build()
}

fn role_schema() -> utoipa::openapi::schema::Object {
    one_of_or_null(vec!["admin".into(), "user".into()])
}

fn timezone_schema() -> utoipa::openapi::schema::Object {
    one_of_or_null(
        chrono_tz::TZ_VARIANTS
            .iter()
            .map(|tz| tz.name().to_owned())
            .collect(),
    )
}

/// Hashes a web password with argon2id.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("Failed to hash a password: {e}"))
}

/// Checks and builds a user; shared by the API and `tellify users add`.
pub fn build_user(new: NewUser) -> Result<User, String> {
    let name_ok = tellify_core::rule::check_name(&new.name, 64).is_ok()
        && new
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if !name_ok {
        return Err("`name` must be 1 to 64 characters of letters, digits and `._-@`".into());
    }
    let role = new.role.unwrap_or_else(|| "user".into());
    if role != "admin" && role != "user" {
        return Err("`role` must be `admin` or `user`".into());
    }
    let timezone = new.timezone.unwrap_or_else(|| "UTC".into());
    timezone.parse::<chrono_tz::Tz>().map_err(|_| {
        format!("`timezone` `{timezone}` is not an IANA time zone (e.g. Europe/Berlin)")
    })?;
    if let Some(email) = &new.email
        && !email.contains('@')
    {
        return Err("`email` is not an email address".into());
    }
    let password_hash = match new.password {
        Some(p) if p.len() < 8 => return Err("`password` must have at least 8 characters".into()),
        Some(p) => Some(hash_password(&p).map_err(|e| e.to_string())?),
        None => None,
    };
    Ok(User {
        name: new.name,
        email: new.email,
        role,
        timezone,
        password_hash,
    })
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, description = "every user", body = ref("#/components/schemas/UserList")),
              (status = 403, description = "not an admin")))]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
    _: Query<NoParams>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(json!({ "users": state.store.list_users().await? })))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, description = "created", body = User),
              (status = 400, description = "an invalid user (`invalid_user`)"),
              (status = 403, description = "not an admin"),
              (status = 409, description = "the name is taken"),
              (status = 415, description = "the body is not `application/json`")))]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    caller.require_admin()?;
    // Hashing a password takes a while: off the async workers.
    let user = tokio::task::spawn_blocking(move || build_user(new))
        .await
        .map_err(|e| ApiError::internal(e.into()))?
        .map_err(|m| ApiError::bad_request("invalid_user", m))?;
    let now = state.clock.now();
    if !state.store.create_user(&user, now).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("the user `{}` exists", user.name),
        ));
    }
    state.engine.send(crate::engine::Command::SetAdmin {
        user: user.name.clone(),
        admin: user.is_admin(),
    });
    state
        .store
        .audit(&caller.user.name, "user.create", &user.name, None, now)
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, description = "the user", body = User)))]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    if !caller.sees(&name) {
        return Err(ApiError::not_found("user"));
    }
    state
        .store
        .get_user(&name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("user"))
}

#[utoipa::path(get, path = "/api/v1/me", tag = "users", responses((status = 200, description = "the caller", body = User)))]
pub async fn me(caller: Caller) -> Json<User> {
    Json(caller.user)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A label for the token.
    pub name: Option<String>,
    /// Admins: create the token for this user.
    pub user: Option<String>,
    /// `api` (default: everything the user may) or `metrics` (admins only: a token that may
    /// only read `/metrics`, for a Prometheus scraper).
    pub scope: Option<TokenScope>,
}

/// Creates a token; the answer is the only time the token is shown.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "users",
    request_body(content = Option<NewToken>, description = "optional: no body makes a token for the caller", content_type = "application/json"),
    responses((status = 201, description = "the token, shown this once", body = ref("#/components/schemas/NewTokenAnswer")),
              (status = 403, description = "`user` names another user and the caller is not an admin"),
              (status = 404, description = "no such user"),
              (status = 415, description = "a body that is not `application/json`")))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    Bytes(body): Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    // The body is optional: none (or `null`) creates a token for the caller.
    let body: NewToken = if body.iter().all(u8::is_ascii_whitespace) {
        NewToken::default()
    } else {
        let json = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            // As axum's `Json` takes them.
            .is_some_and(|m| {
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, sent with `Content-Type: application/json`",
            ));
        }
        let bad = |e: serde_json::Error| {
            ApiError::bad_request("bad_request", format!("invalid body: {e}"))
        };
        match serde_json::from_slice::<Value>(&body).map_err(bad)? {
            Value::Null => NewToken::default(),
            // Not an array, which serde would take for a struct.
            v @ Value::Object(_) => serde_json::from_value(v).map_err(bad)?,
            _ => {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "the body must be a JSON object: {name?, user?}",
                ));
            }
        }
    };
    let user = caller.acting_for(body.user.as_deref())?;
    let name = body.name.unwrap_or_default();
    if !name.is_empty() {
        tellify_core::rule::check_name(&name, 100)
            .map_err(|m| ApiError::bad_request("bad_request", format!("`name`: {m}")))?;
    }
    let scope = body.scope.unwrap_or_default();
    // /metrics names every user's rules and sources: only admins hand out its tokens.
    if scope == TokenScope::Metrics {
        caller.require_admin()?;
    }
    if state.store.get_user(&user).await?.is_none() {
        return Err(ApiError::not_found("user"));
    }
    let token = new_token();
    let now = state.clock.now();
    let info = state
        .store
        .create_token(&user, &name, &hash_token(&token), scope, now)
        .await?;
    state
        .store
        .audit(
            &caller.user.name,
            "token.create",
            &info.id,
            Some(&user),
            now,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": info.id, "token": token, "user": user, "scope": info.scope })),
    ))
}

/// `GET /api/v1/tokens?user=NAME`: one user's tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFilter {
    pub user: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "users",
    params(("user" = Option<String>, Query, description = "only this user's tokens (another user's: admins only)")),
    responses((status = 200, description = "the caller's tokens (admins: all, or those of `user`), never their values", body = ref("#/components/schemas/TokenList")),
              (status = 403, description = "`user` names another user and the caller is not an admin"),
              (status = 404, description = "no such user")))]
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<TokenFilter>,
) -> ApiResult<Json<Value>> {
    let user = match filter.user.as_deref().filter(|u| !u.is_empty()) {
        // Without a filter: the caller's own tokens, or every token for an admin.
        None => caller.scope(),
        Some(named) => {
            let user = caller.acting_for(Some(named))?;
            if state.store.get_user(&user).await?.is_none() {
                return Err(ApiError::not_found("user"));
            }
            Some(user)
        }
    };
    Ok(Json(
        json!({ "tokens": state.store.list_tokens(user.as_deref()).await? }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "users",
    params(("id" = String, Path, description = "token id")),
    responses((status = 204, description = "revoked")))]
pub async fn delete_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !state
        .store
        .delete_token(&id, caller.scope().as_deref())
        .await?
    {
        return Err(ApiError::not_found("token"));
    }
    // Streams opened with the token end now, not at their next request.
    state.revocations.send_modify(|n| *n += 1);
    state
        .store
        .audit(
            &caller.user.name,
            "token.revoke",
            &id,
            None,
            state.clock.now(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
