//! Who may read `/metrics` (issue 28): its series name every tenant's namespaces, DAGs and
//! Pools. With `--metrics-auth` a request to it must carry `Authorization: Bearer` with a token
//! the API server accepts (TokenReview) whose owner may `get` the non-resource URL `/metrics`
//! (SubjectAccessReview), as kube-rbac-proxy and controller-runtime's metrics filter ask. The
//! probes stay open. The check is handed in by the wiring (the reviews live in `http::auth`),
//! so this layer names no reviewer.

use std::net::IpAddr;

use futures::future::BoxFuture;
use hyper::StatusCode;

/// The answer to one request for `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// no `Authorization: Bearer` header
    NoToken,
    /// the API server does not accept the token
    Unauthenticated,
    /// the token's owner (named) may not `get /metrics`
    Forbidden(String),
    /// the source's tokens failed too often lately
    Limited,
    /// the API server could not be asked (why)
    Unavailable(String),
}

impl Verdict {
    /// The status and message of a refusal; `None` when allowed.
    pub fn refusal(&self) -> Option<(StatusCode, String)> {
        let (status, message) = match self {
            Verdict::Allowed => return None,
            Verdict::NoToken => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized: /metrics needs an Authorization: Bearer token".to_string(),
            ),
            Verdict::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized: the API server does not accept this token".to_string(),
            ),
            Verdict::Forbidden(user) => (
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden: {user} may not get the non-resource URL /metrics \
                     (bind the ClusterRole that grants it, e.g. <release>-metrics-reader)"
                ),
            ),
            Verdict::Limited => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed authentications from this address; try again later".to_string(),
            ),
            Verdict::Unavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the token: {why}"),
            ),
        };
        Some((status, format!("{message}\n")))
    }
}

/// Decides who may read `/metrics` (the API server's reviews in production).
pub trait MetricsAccess: Send + Sync + 'static {
    /// The verdict on a request from `peer` with this `Authorization` header value (`None`:
    /// no header, or one that is not text).
    fn check<'a>(&'a self, authorization: Option<&'a str>, peer: IpAddr) -> BoxFuture<'a, Verdict>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_answer_401_403_429_503() {
        assert_eq!(Verdict::Allowed.refusal(), None);
        let status = |v: Verdict| v.refusal().map(|(s, _)| s.as_u16());
        assert_eq!(status(Verdict::NoToken), Some(401));
        assert_eq!(status(Verdict::Unauthenticated), Some(401));
        assert_eq!(status(Verdict::Forbidden("bob".into())), Some(403));
        assert_eq!(status(Verdict::Limited), Some(429));
        assert_eq!(status(Verdict::Unavailable("down".into())), Some(503));
        let (_, said) = Verdict::Forbidden("system:serviceaccount:a:b".into())
            .refusal()
            .expect("refused");
        assert!(said.contains("system:serviceaccount:a:b"), "{said}");
        assert!(said.contains("/metrics"), "{said}");
    }
}
