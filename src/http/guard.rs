//! What stands before the reviews (issue 28): a token longer than any the API server issues is
//! refused unreviewed, and a source (client address) whose tokens keep failing is answered 429
//! for a while, so no one without a token makes the operator send TokenReviews at will.
//! And against forged requests ([`forgery`]): a state-changing request authenticated by the
//! UI's session cookie must show it comes from the UI's own origin.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::ApiError;
use super::auth::{SESSION_COOKIE, bearer, token_of};

/// The longest token reviewed (service-account tokens are ~1 KiB; OIDC ones a few).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The largest `POST /login` body read: a token of [`MAX_TOKEN_BYTES`], form-encoded.
pub const LOGIN_BODY_LIMIT: usize = 3 * MAX_TOKEN_BYTES + 64;

/// The largest body of any other request (a trigger's params, an action).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Failed authentications a source may have in a burst …
pub const FAILURE_BURST: f64 = 10.0;

/// … and how often one more is allowed after that.
pub const FAILURE_REFILL: Duration = Duration::from_secs(6);

/// Sources tracked at most (a bucket is ~48 bytes).
const MAX_SOURCES: usize = 65_536;

/// Marks a response whose caller's token was refused (set by [`ApiError`] and the UI).
#[derive(Clone, Copy, Debug)]
pub struct AuthenticationFailed;

/// A token bucket per source address, drained by failed authentications.
#[derive(Default)]
pub struct FailureLimit {
    sources: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(&self, now: Instant) -> f64 {
        let earned =
            now.saturating_duration_since(self.at).as_secs_f64() / FAILURE_REFILL.as_secs_f64();
        (self.tokens + earned).min(FAILURE_BURST)
    }
}

/// The source a bucket is kept for: the address; an IPv6 one by its /64 (one host's share).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

impl FailureLimit {
    /// Whether `source` may try a token now.
    pub fn allows(&self, source: IpAddr) -> bool {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources
            .get(&source)
            .is_none_or(|b| b.refilled(Instant::now()) >= 1.0)
    }

    /// Counts a failed authentication of `source`.
    pub fn failed(&self, source: IpAddr) {
        let now = Instant::now();
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
            // a full bucket is the same as none
            sources.retain(|_, b| b.refilled(now) < FAILURE_BURST);
            if sources.len() >= MAX_SOURCES {
                tracing::warn!(
                    sources = MAX_SOURCES,
                    "too many sources failing authentication to track; this one is not limited"
                );
                return;
            }
        }
        let bucket = sources.entry(source).or_insert(Bucket {
            tokens: FAILURE_BURST,
            at: now,
        });
        bucket.tokens = (bucket.refilled(now) - 1.0).max(0.0);
        bucket.at = now;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sources.lock().map(|s| s.len()).unwrap_or_default()
    }
}

/// The middleware: bodies declared too long refused (413), oversized tokens refused (400),
/// bodies read whole within [`BODY_READ_TIMEOUT`] (else 408), limited sources answered 429,
/// failures counted.
pub async fn guard(State(limit): State<Arc<FailureLimit>>, req: Request, next: Next) -> Response {
    let raw_authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map_or(0, |v| v.len());
    let token = token_of(req.headers());
    if raw_authorization > MAX_TOKEN_BYTES + 16
        || token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN_BYTES)
    {
        return too_long().into_response();
    }
    let login = req.method() == Method::POST && req.uri().path() == "/login";
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let most = if login { LOGIN_BODY_LIMIT } else { BODY_LIMIT };
    if declared.is_some_and(|n| n > most as u64) {
        // refused on its declared length, unread (a chunked body meets the same limit as
        // it is read: `DefaultBodyLimit`)
        return ApiError::Rejected(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is longer than {most} bytes"),
        )
        .into_response();
    }
    let req = match read_body(req, most).await {
        Ok(req) => req,
        Err(refused) => return refused.into_response(),
    };
    let reviews = token.is_some() || login;
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| source_of(c.0.ip()));
    let Some(source) = source.filter(|_| reviews) else {
        return next.run(req).await;
    };
    if !limit.allows(source) {
        return ApiError::Rejected(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed authentications from {source}: one more is allowed every {}s",
                FAILURE_REFILL.as_secs()
            ),
        )
        .into_response();
    }
    let response = next.run(req).await;
    if response
        .extensions()
        .get::<AuthenticationFailed>()
        .is_some()
    {
        limit.failed(source);
    }
    response
}

/// How long a client may take to send a request's body, once its head has arrived.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the body of a request that may carry one (up to `most` bytes, within
/// [`BODY_READ_TIMEOUT`]) before any handler runs, so a client that declares a body and then
/// stalls, or trickles it, holds no handler and is answered 408.
async fn read_body(req: Request, most: usize) -> Result<Request, ApiError> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes =
        match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, most)).await {
            Err(_) => {
                return Err(ApiError::Rejected(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {}s",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                ));
            }
            Ok(Err(e)) => {
                let too_long = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                return Err(if too_long {
                    ApiError::Rejected(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the request body is longer than {most} bytes"),
                    )
                } else {
                    ApiError::BadRequest(format!("the request body could not be read: {e}"))
                });
            }
            Ok(Ok(bytes)) => bytes,
        };
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

/// Refuses a state change a browser may have been made to send (issue 28): one carrying the
/// session cookie and no `Authorization: Bearer` header (which no other page can make a
/// browser add) must come from the UI's own origin — `Sec-Fetch-Site: same-origin`, or an
/// `Origin` naming the `Host` it was sent to. `SameSite=Strict` alone does not do: another
/// port of the same host (the documented port-forward) or a sibling subdomain is the same
/// site. A request saying it comes from elsewhere is refused whatever it carries.
pub fn not_forged(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    same_site(headers)?;
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if value(header::AUTHORIZATION.as_str())
        .and_then(bearer)
        .is_some()
    {
        return Ok(());
    }
    let session = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == SESSION_COOKIE && !v.is_empty());
    if !session {
        // no credential at all: the handler answers 401
        return Ok(());
    }
    let same_origin = value("sec-fetch-site") == Some("same-origin")
        || matches!(
            (value(header::ORIGIN.as_str()), value(header::HOST.as_str())),
            (Some(origin), Some(host)) if origin.split_once("://").map(|(_, h)| h) == Some(host)
        );
    if same_origin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "a request that changes something, authenticated by the session cookie, must come \
             from the UI's own origin (Origin, or Sec-Fetch-Site: same-origin); send \
             `Authorization: Bearer <token>` from anything else"
                .into(),
        ))
    }
}

/// Refuses a request whose `Sec-Fetch-Site` or `Origin` says it comes from another site
/// (whatever credential it carries).
fn same_site(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = value("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err(ApiError::Forbidden(format!(
                "a form posted from another site ({site}) is refused"
            )));
        }
    }
    if let (Some(origin), Some(host)) = (value("origin"), value("host")) {
        let origin_host = origin.split("://").nth(1).unwrap_or(origin);
        if origin_host != host {
            return Err(ApiError::Forbidden(format!(
                "a form posted from {origin} to {host} is refused"
            )));
        }
    }
    Ok(())
}

/// The middleware: every request but `GET`, `HEAD` and `OPTIONS` [`not_forged`].
pub async fn forgery(req: Request, next: Next) -> Response {
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !reads {
        if let Err(e) = not_forged(req.headers()) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// The answer to a token too long to be one.
pub fn too_long() -> ApiError {
    ApiError::BadRequest(format!(
        "the token is longer than {MAX_TOKEN_BYTES} bytes: not reviewed"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cookie_state_changes_must_come_from_the_same_origin() {
        let cookie = ("cookie", "dagop_token=t");
        let host = ("host", "localhost:8081");
        assert!(not_forged(&headers(&[])).is_ok());
        assert!(not_forged(&headers(&[("authorization", "Bearer t"), host])).is_ok());
        assert!(not_forged(&headers(&[cookie, host])).is_err());
        assert!(
            not_forged(&headers(&[
                cookie,
                host,
                ("origin", "http://localhost:3000")
            ]))
            .is_err()
        );
        assert!(not_forged(&headers(&[cookie, host, ("sec-fetch-site", "same-site")])).is_err());
        assert!(not_forged(&headers(&[cookie, host, ("sec-fetch-site", "none")])).is_err());
        assert!(
            not_forged(&headers(&[
                cookie,
                host,
                ("origin", "http://localhost:8081")
            ]))
            .is_ok()
        );
        assert!(not_forged(&headers(&[cookie, host, ("sec-fetch-site", "same-origin")])).is_ok());
        assert!(
            not_forged(&headers(&[
                ("authorization", "Bearer t"),
                host,
                ("origin", "https://evil.example")
            ]))
            .is_err()
        );
    }

    #[test]
    fn a_source_is_limited_after_its_burst_and_the_table_stays_bounded() {
        let limit = FailureLimit::default();
        let me: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..FAILURE_BURST as usize {
            assert!(limit.allows(me));
            limit.failed(me);
        }
        assert!(!limit.allows(me));
        assert!(limit.allows("10.0.0.2".parse().unwrap()));
        // one IPv6 host is one source, whatever address of its /64 it sends from
        assert_eq!(
            source_of("2001:db8::1".parse().unwrap()),
            source_of("2001:db8::ffff:1".parse().unwrap())
        );
        for n in 0..(MAX_SOURCES as u32 + 10) {
            limit.failed(IpAddr::V4(n.into()));
        }
        assert!(limit.len() <= MAX_SOURCES);
    }

    #[test]
    fn forms_from_another_site_are_refused() {
        assert!(same_site(&headers(&[])).is_ok());
        assert!(same_site(&headers(&[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(same_site(&headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(
            same_site(&headers(&[
                ("origin", "http://ui:8081"),
                ("host", "ui:8081")
            ]))
            .is_ok()
        );
        assert!(
            same_site(&headers(&[
                ("origin", "https://evil.example"),
                ("host", "ui:8081")
            ]))
            .is_err()
        );
    }
}
