//! The admin API of edge authentication: users (`/api/v1/users`, `/api/v1/users/{name}`) and
//! sessions (`/api/v1/sessions?user=NAME`), answered by the gateway's `sekisho_auth::Auth`.
//! Every list comes a page at a time (`page.rs`): users by name, sessions by id, lockouts by
//! `KIND:NAME`.

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sekisho_auth::{Auth, AuthError, UserUpdate};
use serde_json::json;

use crate::page::Page;
use crate::{error, ok, AdminResponse, AdminState, MAX_ADMIN_BODY};

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
            .map(|user| ok(StatusCode::CREATED, json!(user)))
        }
        (Method::GET, Some(name)) => auth
            .user(name)
            .await
            .map(|user| ok(StatusCode::OK, json!(user))),
        (Method::PUT, Some(name)) => {
            let update: UserUpdate = match body_json(request).await {
                Ok(update) => update,
                Err(response) => return *response,
            };
            auth.update_user(name, update)
                .await
                .map(|user| ok(StatusCode::OK, json!(user)))
        }
        (Method::DELETE, Some(name)) => auth
            .delete_user(name)
            .await
            .map(|()| ok(StatusCode::OK, json!({ "deleted": name }))),
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

/// `GET /api/v1/users[?limit=N][&cursor=NAME]`: one page of the users, by name.
async fn users_page(auth: &Auth, query: Option<&str>) -> AdminResponse {
    let page = match Page::<String>::parse_plain(query) {
        Ok(page) => page,
        Err(refused) => return *refused,
    };
    let fetch = u32::try_from(page.fetch()).unwrap_or(u32::MAX);
    match auth.users_page(page.cursor.as_deref(), fetch).await {
        Ok(users) => {
            let (users, next_cursor) = page.split(users, |user| user.username.clone());
            ok(
                StatusCode::OK,
                json!({ "users": users, "next_cursor": next_cursor }),
            )
        }
        Err(why) => failed(&why),
    }
}

/// `/api/v1/sessions?user=NAME`: GET lists them a page at a time (by session id; `limit`,
/// `cursor`), DELETE revokes them all.
pub(crate) async fn sessions(state: &AdminState, request: &Request<Incoming>) -> AdminResponse {
    let auth = match auth(state) {
        Ok(auth) => auth,
        Err(response) => return *response,
    };
    let mut user = None;
    let page = match Page::<String>::parse(request.uri().query(), |name, value| match name {
        "user" => {
            user = Some(value.to_owned());
            Ok(())
        }
        _ => Err("unknown parameter (user, limit, cursor)".to_owned()),
    }) {
        Ok(page) => page,
        Err(refused) => return *refused,
    };
    let Some(user) = user else {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "name the user: /api/v1/sessions?user=NAME",
        );
    };
    let result = match *request.method() {
        Method::GET => auth.sessions_of(&user).await.map(|sessions| {
            let (sessions, next_cursor) = page.cut(sessions, |s| s.id.clone());
            ok(
                StatusCode::OK,
                json!({ "user": user, "sessions": sessions, "next_cursor": next_cursor }),
            )
        }),
        Method::DELETE => auth
            .revoke_sessions(&user)
            .await
            .map(|revoked| ok(StatusCode::OK, json!({ "user": user, "revoked": revoked }))),
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

/// `/api/v1/lockouts`: GET lists the lockouts in force (every instance's with Redis), a page
/// at a time by `KIND:NAME` (`account:ann`, `address:10.0.0.1`); `DELETE ?user=NAME` or
/// `DELETE ?address=IP` clears one.
pub(crate) async fn lockouts(state: &AdminState, request: Request<Incoming>) -> AdminResponse {
    let auth = match auth(state) {
        Ok(auth) => auth,
        Err(response) => return *response,
    };
    match *request.method() {
        Method::GET => {
            let page = match Page::<String>::parse_plain(request.uri().query()) {
                Ok(page) => page,
                Err(refused) => return *refused,
            };
            let (lockouts, next_cursor) =
                page.cut(auth.lockouts().await, |l| format!("{}:{}", l.kind, l.name));
            ok(
                StatusCode::OK,
                json!({ "lockouts": lockouts, "next_cursor": next_cursor }),
            )
        }
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
                        Ok(_) => ok(StatusCode::OK, json!({ "user": user })),
                        Err(why) => failed(&why),
                    }
                }
                (None, Some(address)) => {
                    let cleared = auth.unlock_address(&address).await;
                    ok(
                        StatusCode::OK,
                        json!({ "address": address, "was_locked": cleared }),
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
