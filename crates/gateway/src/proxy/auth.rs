//! Edge authentication's one step: the endpoints under `[auth] path_prefix` (login, refresh,
//! logout, me), and a route's `auth` requirement between the route and its rate limit.
//! Everything about users, passwords and sessions is `sekisho-auth`'s; this file only reads
//! the request (bearer token, JSON body), writes the answer, and keeps the identity headers
//! honest: the client's copies are removed from every request, and only a checked session's
//! identity is sent up.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE,
    SET_COOKIE,
};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use sekisho_auth::{Auth, Identity};
use sekisho_config::RouteAuth;
use tokio::time::Instant;

use crate::body::{ClientBody, ResponseBody};
use crate::edge::GatewayError;

/// The identity headers the upstream receives (and no client may send).
const X_AUTH_USER_ID: HeaderName = HeaderName::from_static("x-auth-user-id");
const X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
const X_AUTH_ROLES: HeaderName = HeaderName::from_static("x-auth-roles");
const X_AUTH_PERMISSIONS: HeaderName = HeaderName::from_static("x-auth-permissions");

/// The session cookie of `cookie = true`: `__Host-` so that the browser keeps it to this host,
/// over HTTPS, for every path.
const COOKIE_NAME: &str = "__Host-sekisho";

/// The largest body a login or refresh may have.
const MAX_BODY: usize = 16 * 1024;

/// One of the endpoints under `path_prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Login,
    Refresh,
    Logout,
    Me,
}

impl Endpoint {
    /// The endpoint `path` names under `prefix`, if any.
    pub(super) fn of(prefix: &str, path: &str) -> Option<Self> {
        match path.strip_prefix(prefix)? {
            "/login" => Some(Self::Login),
            "/refresh" => Some(Self::Refresh),
            "/logout" => Some(Self::Logout),
            "/me" => Some(Self::Me),
            _ => None,
        }
    }

    fn method(self) -> Method {
        match self {
            Self::Me => Method::GET,
            _ => Method::POST,
        }
    }

    /// Its name in metrics.
    pub(super) fn operation(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Refresh => "refresh",
            Self::Logout => "logout",
            Self::Me => "me",
        }
    }
}

/// Removes identity headers a client sent: only the gateway sets them.
pub(super) fn strip_identity(headers: &mut HeaderMap) {
    // One pass over the names first: nearly every request has none of them, and four look-ups
    // by name cost more than the pass (this runs on every request).
    if !headers.keys().any(is_identity_header) {
        return;
    }
    for name in IDENTITY_NAMES {
        headers.remove(name);
    }
}

/// The identity headers of one identity, rendered once and kept with it: as values for a
/// request's map, and as the lines of a request head (`name: value\r\n` each) for the gateway's
/// own client side, which writes them without touching the map.
struct IdentityHeaders {
    values: [Option<HeaderValue>; 4],
    head: Bytes,
}

/// The identity header names, in the order they are sent.
const IDENTITY_NAMES: [HeaderName; 4] = [
    X_AUTH_USER_ID,
    X_AUTH_USER,
    X_AUTH_ROLES,
    X_AUTH_PERMISSIONS,
];

impl IdentityHeaders {
    fn of(identity: &Identity) -> Self {
        // Names are checked to be visible ASCII without commas when they are made.
        let values = [
            Some(HeaderValue::from(identity.id)),
            HeaderValue::from_str(&identity.username).ok(),
            HeaderValue::from_str(&identity.roles_csv).ok(),
            HeaderValue::from_str(&identity.permissions_csv).ok(),
        ];
        let mut head = Vec::with_capacity(128);
        for (name, value) in IDENTITY_NAMES.iter().zip(&values) {
            if let Some(value) = value {
                head.extend_from_slice(name.as_str().as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(value.as_bytes());
                head.extend_from_slice(b"\r\n");
            }
        }
        Self {
            values,
            head: Bytes::from(head),
        }
    }

    /// Those of `identity`, rendered the first time they are asked for.
    fn with<T>(identity: &Identity, use_them: impl FnOnce(&Self) -> T) -> T {
        match identity.memo.get_or_init(|| IdentityHeaders::of(identity)) {
            Some(rendered) => use_them(rendered),
            None => use_them(&IdentityHeaders::of(identity)),
        }
    }
}

/// Whether `name` is one of the identity headers' (`x-auth-…`).
pub(super) fn is_identity_header(name: &HeaderName) -> bool {
    name.as_str().as_bytes().starts_with(b"x-auth-")
}

/// `identity`'s headers as the lines of a request head.
pub(super) fn identity_head(identity: &Identity) -> Bytes {
    IdentityHeaders::with(identity, |rendered| rendered.head.clone())
}

/// Sets `identity`'s headers in a request's map.
pub(super) fn add_identity(headers: &mut HeaderMap, identity: &Identity) {
    IdentityHeaders::with(identity, |rendered| insert_identity(headers, rendered));
}

fn insert_identity(headers: &mut HeaderMap, rendered: &IdentityHeaders) {
    let names = IDENTITY_NAMES;
    // Room for these and for what the upstream request adds later, in one growth.
    headers.reserve(names.len() + super::forwarding::ADDED_HEADERS);
    for (name, value) in names.into_iter().zip(&rendered.values) {
        if let Some(value) = value {
            headers.insert(name, value.clone());
        }
    }
}

/// The token of `Authorization: Bearer …` (the scheme in any case), as bytes: a session cached
/// in process is found by them with no check of their form (only tokens a store validated are
/// cached); the stores, asked on a miss, check it.
fn bearer_of(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(value[7..].trim_ascii())
}

/// The access token of a request: the bearer header, else (with `cookie = true`) the session
/// cookie.
fn credential(headers: &HeaderMap, cookie: bool) -> Option<&[u8]> {
    // One look-up of `Authorization` on the common path (every request of a route with `auth`).
    if let Some(value) = headers.get(AUTHORIZATION) {
        return bearer_of(value);
    }
    if !cookie {
        return None;
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE_NAME).then(|| value.trim().as_bytes())
        })
}

/// A credential as text, for the stores (ours are ASCII; anything else is no token of ours).
fn token_text(token: &[u8]) -> Result<&str, GatewayError> {
    std::str::from_utf8(token)
        .map_err(|_| GatewayError::Unauthenticated("invalid or expired token".to_owned()))
}

/// `Set-Cookie` for `token` living `max_age` seconds (0 clears it).
fn session_cookie(token: &str, max_age: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"
    ))
    .ok()
}

fn missing_token() -> GatewayError {
    GatewayError::Unauthenticated(
        "this needs a valid access token: Authorization: Bearer <token>".to_owned(),
    )
}

/// A route's requirement: the session's identity, or 401/403 (the caller sends its identity
/// headers up: [`add_identity`], or [`identity_head`] when they are written late). A session cached in process is checked against `started`
/// (the request's start) with no clock read and no await; otherwise the stores are asked and
/// `took` says for how long.
pub(super) async fn require(
    auth: &Auth,
    requirement: &RouteAuth,
    route: &str,
    headers: &mut HeaderMap,
    client_ip: impl FnOnce(&HeaderMap) -> IpAddr,
    started: Instant,
    took: &mut Option<Duration>,
) -> Result<Arc<Identity>, GatewayError> {
    let token = credential(headers, auth.config().cookie).ok_or_else(missing_token)?;
    let identity = match auth.authenticate_cached(token, started.into_std()) {
        Some(identity) => identity,
        None => {
            let token = token_text(token)?;
            let began = Instant::now();
            let found = auth.authenticate(token).await;
            *took = Some(began.elapsed());
            found?
        }
    };
    if let Err(refused) = sekisho_auth::authorize(&identity, requirement) {
        // The client's address only for the audit of a refusal.
        auth.audit_forbidden(&identity, route, client_ip(headers));
        return Err(refused.into());
    }
    Ok(identity)
}

#[derive(serde::Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

#[derive(serde::Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

/// Answers one of the endpoints.
pub(super) async fn serve(
    auth: &Auth,
    endpoint: Endpoint,
    parts: &http::request::Parts,
    body: ClientBody,
    client_ip: IpAddr,
    body_timeout: Duration,
) -> Result<Response<ResponseBody>, GatewayError> {
    if parts.method != endpoint.method() {
        return Err(GatewayError::BadRequest(format!(
            "{} takes {} only",
            parts.uri.path(),
            endpoint.method()
        )));
    }
    let cookie = auth.config().cookie;
    match endpoint {
        Endpoint::Login | Endpoint::Refresh => {
            let answer = if endpoint == Endpoint::Login {
                let login: LoginBody = read_json(body, body_timeout).await?;
                auth.login(&login.username, &login.password, client_ip)
                    .await?
            } else {
                let refresh: RefreshBody = read_json(body, body_timeout).await?;
                auth.refresh(&refresh.refresh_token, client_ip).await?
            };
            let mut response = json(StatusCode::OK, &answer)?;
            if cookie {
                if let Some(value) = session_cookie(&answer.access_token, answer.expires_in) {
                    response.headers_mut().insert(SET_COOKIE, value);
                }
            }
            Ok(response)
        }
        Endpoint::Logout => {
            let token = credential(&parts.headers, cookie).ok_or_else(missing_token)?;
            auth.logout(token_text(token)?, client_ip).await?;
            let mut response = Response::new(ResponseBody::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            if cookie {
                if let Some(value) = session_cookie("", 0) {
                    response.headers_mut().insert(SET_COOKIE, value);
                }
            }
            Ok(response)
        }
        Endpoint::Me => {
            let token = credential(&parts.headers, cookie).ok_or_else(missing_token)?;
            let identity = auth.authenticate(token_text(token)?).await?;
            json(StatusCode::OK, &*identity)
        }
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    body: ClientBody,
    timeout: Duration,
) -> Result<T, GatewayError> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, MAX_BODY).collect())
        .await
        .map_err(|_| GatewayError::RequestTimeout { timeout })?
        .map_err(|error| {
            GatewayError::BadRequest(format!("the request body could not be read: {error}"))
        })?;
    serde_json::from_slice(&collected.to_bytes()).map_err(|error| {
        GatewayError::BadRequest(format!("the body is not the JSON expected: {error}"))
    })
}

fn json(
    status: StatusCode,
    value: &impl serde::Serialize,
) -> Result<Response<ResponseBody>, GatewayError> {
    let body = serde_json::to_vec(value)
        .map_err(|error| GatewayError::AuthUnavailable(Box::new(error)))?;
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Tokens and identities are no one's to cache.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_bearer_tokens_are_read_exactly() {
        assert_eq!(Endpoint::of("/auth", "/auth/login"), Some(Endpoint::Login));
        assert_eq!(Endpoint::of("/auth", "/auth/me"), Some(Endpoint::Me));
        assert_eq!(Endpoint::of("/auth", "/auth/login/x"), None);
        assert_eq!(Endpoint::of("/auth", "/authx/login"), None);
        let mut headers = HeaderMap::new();
        assert_eq!(credential(&headers, false), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(credential(&headers, false), Some(&b"abc"[..]));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(credential(&headers, false), None);
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; __Host-sekisho=tok; b=2"),
        );
        assert_eq!(
            credential(&headers, true),
            None,
            "Basic is not ours, nor a fallback"
        );
        headers.remove(AUTHORIZATION);
        assert_eq!(credential(&headers, true), Some(&b"tok"[..]));
        assert_eq!(credential(&headers, false), None);
        let set = session_cookie("tok", 300).expect("valid");
        assert_eq!(
            set,
            "__Host-sekisho=tok; Path=/; Max-Age=300; Secure; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn client_identity_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("x-auth-user", HeaderValue::from_static("root"));
        headers.append("X-Auth-Roles", HeaderValue::from_static("admin"));
        headers.insert("x-other", HeaderValue::from_static("kept"));
        strip_identity(&mut headers);
        assert_eq!(headers.len(), 1);
        let identity = Identity::new(7, "ann".into(), vec!["a".into(), "b".into()], vec![]);
        add_identity(&mut headers, &identity);
        assert_eq!(headers["x-auth-user-id"], "7");
        assert_eq!(headers["x-auth-roles"], "a,b");
        assert_eq!(headers["x-auth-permissions"], "");
    }
}
