//! The admin API of edge authentication: users (`/api/v1/users`, `/api/v1/users/{name}`) and
//! sessions (`/api/v1/sessions?user=NAME`), answered by the gateway's `sekisho_auth::Auth`.
//! The list of users comes a page at a time, by name: `?limit=N` (1–500, default 100) and
//! `?cursor=NAME` (the `next_cursor` of the previous page; `null` on the last).

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sekisho_auth::{Auth, AuthError, UserUpdate};
use serde_json::json;

use crate::{error, json_response, AdminResponse, AdminState, MAX_ADMIN_BODY};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

fn failed(why: &AuthError) -> AdminResponse {
    let (status, code) = match why {
        AuthError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        AuthError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
        AuthError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
        AuthError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "AUTH_UNAVAILABLE"),
    };
    error(status, code, &why.to_string())
}

pub(crate) async fn body_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, Box<AdminResponse>> {
    let bytes = http_body_util::Limited::new(request.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the body could not be read (or is over 16 KiB)",
            ))
        })?;
    serde_json::from_slice(&bytes).map_err(|why| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            &format!("the body is not the JSON expected: {why}"),
        ))
    })
}

fn auth(state: &AdminState) -> Result<&Auth, Box<AdminResponse>> {
    state.gateway.auth().map(|auth| &**auth).ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "NO_ROUTE",
            "authentication is not configured: add [auth] to the config",
        ))
    })
}

/// `/api/v1/users` and `/api/v1/users/{name}`.
pub(crate) async fn users(
    state: &AdminState,
    name: Option<&str>,
    request: Request<Incoming>,
) -> AdminResponse {
    let auth = match auth(state) {
        Ok(auth) => auth,
        Err(response) => return *response,
    };
    let method = request.method().clone();
    let result = match (method.clone(), name) {
        (Method::GET, None) => return users_page(auth, request.uri().query()).await,
        (Method::POST, None) => {
            let new: NewUser = match body_json(request).await {
                Ok(new) => new,
                Err(response) => return *response,
            };
            auth.create_user(
                &new.username,
                new.password.as_deref(),
                new.password_hash.as_deref(),
                &new.roles,
            )
            .await
            .map(|user| json_response(StatusCode::CREATED, &json!(user)))
        }
        (Method::GET, Some(name)) => auth
            .user(name)
            .await
            .map(|user| json_response(StatusCode::OK, &json!(user))),
        (Method::PUT, Some(name)) => {
            let update: UserUpdate = match body_json(request).await {
                Ok(update) => update,
                Err(response) => return *response,
            };
            auth.update_user(name, update)
                .await
                .map(|user| json_response(StatusCode::OK, &json!(user)))
        }
        (Method::DELETE, Some(name)) => auth
            .delete_user(name)
            .await
            .map(|()| json_response(StatusCode::OK, &json!({ "status": "ok", "deleted": name }))),
        _ => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "BAD_REQUEST",
                &format!("{method} is not allowed here"),
            )
        }
    };
    result.unwrap_or_else(|why| failed(&why))
}

/// A page of users holds this many unless `limit` says otherwise …
const DEFAULT_LIMIT: u32 = 100;
/// … and at most this many.
const MAX_LIMIT: u32 = 500;

/// `GET /api/v1/users[?limit=N][&cursor=NAME]`: one page of the users, by name.
async fn users_page(auth: &Auth, query: Option<&str>) -> AdminResponse {
    let mut cursor = None;
    let mut limit = DEFAULT_LIMIT;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "cursor" => cursor = Some(value.into_owned()),
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "BAD_REQUEST",
                        &format!("`limit={value}`: limit is 1 to {MAX_LIMIT}"),
                    )
                }
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    &format!("`{name}`: unknown parameter (limit, cursor)"),
                )
            }
        }
    }
    // One more than asked tells whether a next page exists.
    match auth.users_page(cursor.as_deref(), limit + 1).await {
        Ok(mut users) => {
            let more = users.len() > limit as usize;
            users.truncate(limit as usize);
            let next_cursor = more
                .then(|| users.last().map(|user| user.username.clone()))
                .flatten();
            json_response(
                StatusCode::OK,
                &json!({ "users": users, "next_cursor": next_cursor }),
            )
        }
        Err(why) => failed(&why),
    }
}

/// `/api/v1/sessions?user=NAME`: GET lists, DELETE revokes them all.
pub(crate) async fn sessions(state: &AdminState, request: &Request<Incoming>) -> AdminResponse {
    let auth = match auth(state) {
        Ok(auth) => auth,
        Err(response) => return *response,
    };
    let user = request.uri().query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "user")
            .map(|(_, value)| value.into_owned())
    });
    let Some(user) = user else {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "name the user: /api/v1/sessions?user=NAME",
        );
    };
    let result = match *request.method() {
        Method::GET => auth.sessions_of(&user).await.map(|sessions| {
            json_response(
                StatusCode::OK,
                &json!({ "user": user, "sessions": sessions }),
            )
        }),
        Method::DELETE => auth.revoke_sessions(&user).await.map(|revoked| {
            json_response(StatusCode::OK, &json!({ "user": user, "revoked": revoked }))
        }),
        _ => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "BAD_REQUEST",
                &format!("{} is not allowed here", request.method()),
            )
        }
    };
    result.unwrap_or_else(|why| failed(&why))
}

/// `/api/v1/lockouts`: GET lists the lockouts in force (every instance's with Redis); `DELETE ?user=NAME` or
/// `DELETE ?address=IP` clears one.
pub(crate) async fn lockouts(state: &AdminState, request: Request<Incoming>) -> AdminResponse {
    let auth = match auth(state) {
        Ok(auth) => auth,
        Err(response) => return *response,
    };
    match *request.method() {
        Method::GET => json_response(
            StatusCode::OK,
            &json!({ "lockouts": auth.lockouts().await }),
        ),
        Method::DELETE => {
            let query: Vec<(String, String)> = request
                .uri()
                .query()
                .map(|query| {
                    form_urlencoded::parse(query.as_bytes())
                        .into_owned()
                        .collect()
                })
                .unwrap_or_default();
            let find = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
            match (find("user"), find("address")) {
                (Some(user), None) => {
                    let update = UserUpdate {
                        unlock: true,
                        ..UserUpdate::default()
                    };
                    match auth.update_user(&user, update).await {
                        Ok(_) => {
                            json_response(StatusCode::OK, &json!({ "status": "ok", "user": user }))
                        }
                        Err(why) => failed(&why),
                    }
                }
                (None, Some(address)) => {
                    let cleared = auth.unlock_address(&address).await;
                    json_response(
                        StatusCode::OK,
                        &json!({ "status": "ok", "address": address, "was_locked": cleared }),
                    )
                }
                _ => error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    "name one lockout: /api/v1/lockouts?user=NAME or ?address=IP",
                ),
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_REQUEST",
            &format!("{} is not allowed here", request.method()),
        ),
    }
}
