//! `[web] token`: asked of every request but the page's own files and the login, as a
//! bearer header (scripts, Prometheus) or as the HttpOnly cookie the login sets (the page).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::server::App;

const COOKIE: &str = "iscamd_session";

/// The token, kept only as digests: of itself (bearer) and of the session cookie's value.
pub struct Token {
    bearer: [u8; 32],
    session: String,
}

impl Token {
    pub fn new(token: &str) -> Token {
        Token {
            bearer: sha256(token.as_bytes()),
            // Not the token itself: a cookie that leaks (a proxy's log) is no bearer token.
            session: hex(&sha256(format!("iscamd-session\0{token}").as_bytes())),
        }
    }

    fn admits(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(given) = bearer {
            return same(&sha256(given.trim().as_bytes()), &self.bearer);
        }
        cookies(headers)
            .any(|(name, value)| name == COOKIE && same(value.as_bytes(), self.session.as_bytes()))
    }
}

/// Refuses a request without the token with 401 before it reaches a handler.
pub async fn require_token(State(app): State<App>, request: Request, next: Next) -> Response {
    match &app.token {
        Some(token) if !token.admits(request.headers()) => unauthorized(),
        _ => next.run(request).await,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    token: String,
}

/// `POST /api/login {"token": …}`: sets the session cookie the page sends from then on.
pub async fn login(State(app): State<App>, Json(login): Json<Login>) -> Response {
    let Some(token) = &app.token else {
        return StatusCode::NO_CONTENT.into_response();
    };
    if !same(&sha256(login.token.as_bytes()), &token.bearer) {
        return unauthorized();
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        token.session
    );
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

fn unauthorized() -> Response {
    let body = serde_json::json!({
        "error": "this device asks for its web token ([web] token): send `Authorization: Bearer <token>` or log in on the page"
    });
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(body),
    )
        .into_response()
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal, in a time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_bearer_token_or_the_session_cookie_admits() {
        let token = Token::new("0123456789abcdef");
        assert!(token.admits(&headers(header::AUTHORIZATION, "Bearer 0123456789abcdef")));
        assert!(!token.admits(&headers(header::AUTHORIZATION, "Bearer 0123456789abcdeX")));
        assert!(!token.admits(&HeaderMap::new()));
        let cookie = format!("theme=dark; {COOKIE}={}", token.session);
        assert!(token.admits(&headers(header::COOKIE, &cookie)));
        // The token itself is no session cookie.
        let raw = format!("{COOKIE}=0123456789abcdef");
        assert!(!token.admits(&headers(header::COOKIE, &raw)));
    }
}
