//! Who is asking, and may they: a bearer token is checked with a TokenReview, each access with
//! a SubjectAccessReview in the object's namespace — the API server decides, by the caller's
//! own RBAC. Answers are cached for a few seconds (a UI page makes many requests).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// How long a review's answer is reused.
pub const REVIEW_TTL: Duration = Duration::from_secs(10);

/// The caller, as the TokenReview names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    pub user: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// One access to check: `verb` on `resource` (of group dagoperator.io) in `namespace`
/// (`None`: cluster-wide).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    pub namespace: Option<String>,
    pub verb: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    pub name: Option<String>,
}

impl Access {
    /// Reading DAGs and their runs in `namespace`: `get dags`.
    pub fn read(namespace: &str) -> Self {
        Access {
            namespace: Some(namespace.to_string()),
            verb: "get",
            resource: "dags",
            subresource: None,
            name: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the API server could not review the request: {0}")]
    Kube(#[from] kube::Error),
}

/// Checks tokens and accesses (the API server in production; a table in unit tests).
pub trait Reviewer: Send + Sync + 'static {
    /// The caller a token belongs to; `None` when the token is not valid.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<Caller>, ReviewError>>;

    /// Whether `caller` may do `access`.
    fn allowed<'a>(
        &'a self,
        caller: &'a Caller,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<bool, ReviewError>>;
}

/// Answers kept for [`REVIEW_TTL`].
struct Cache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + std::hash::Hash, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < REVIEW_TTL)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 10_000 {
            entries.retain(|_, (at, _)| at.elapsed() < REVIEW_TTL);
        }
        entries.insert(key, (Instant::now(), value));
    }
}

/// The API server as the reviewer.
pub struct KubeReviewer {
    client: kube::Client,
    tokens: Cache<String, Option<Caller>>,
    accesses: Cache<(Caller, Access), bool>,
}

impl KubeReviewer {
    pub fn new(client: kube::Client) -> Self {
        KubeReviewer {
            client,
            tokens: Cache::new(),
            accesses: Cache::new(),
        }
    }

    async fn review_token(&self, token: &str) -> Result<Option<Caller>, ReviewError> {
        if let Some(known) = self.tokens.get(&token.to_string()) {
            return Ok(known);
        }
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        let caller = answer
            .status
            .filter(|s| s.authenticated == Some(true))
            .and_then(|s| s.user)
            .and_then(|u| {
                Some(Caller {
                    user: u.username?,
                    uid: u.uid,
                    groups: u.groups.unwrap_or_default(),
                    extra: u.extra.unwrap_or_default().into_iter().collect(),
                })
            });
        self.tokens.put(token.to_string(), caller.clone());
        Ok(caller)
    }

    async fn review_access(&self, caller: &Caller, access: &Access) -> Result<bool, ReviewError> {
        let key = (caller.clone(), access.clone());
        if let Some(known) = self.accesses.get(&key) {
            return Ok(known);
        }
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                uid: caller.uid.clone(),
                groups: Some(caller.groups.clone()),
                extra: Some(caller.extra.clone().into_iter().collect()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(crate::api::GROUP.to_string()),
                    namespace: access.namespace.clone(),
                    resource: Some(access.resource.to_string()),
                    subresource: access.subresource.map(str::to_string),
                    name: access.name.clone(),
                    verb: Some(access.verb.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        self.accesses.put(key, allowed);
        Ok(allowed)
    }
}

impl Reviewer for KubeReviewer {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<Caller>, ReviewError>> {
        Box::pin(self.review_token(token))
    }

    fn allowed<'a>(
        &'a self,
        caller: &'a Caller,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        Box::pin(self.review_access(caller, access))
    }
}

/// The cookie the UI keeps the token in for the browser session (no expiry: it goes when the
/// browser session ends; HttpOnly, so page scripts never read it).
pub const SESSION_COOKIE: &str = "dagop_token";

/// The caller's token: the `Authorization: Bearer` header, else the UI's session cookie.
pub fn token_of(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(t) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
    {
        return Some(t.to_string());
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, v)| *k == SESSION_COOKIE && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_the_header_or_the_session_cookie() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(token_of(&h), None);
        h.insert("cookie", "a=1; dagop_token=tok; b=2".parse().unwrap());
        assert_eq!(token_of(&h).as_deref(), Some("tok"));
        h.insert("authorization", "Bearer hdr".parse().unwrap());
        assert_eq!(token_of(&h).as_deref(), Some("hdr"));
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer(""), None);
    }

    #[test]
    fn the_cache_forgets_after_its_ttl() {
        let c: Cache<&str, bool> = Cache::new();
        c.put("k", true);
        assert_eq!(c.get(&"k"), Some(true));
        c.entries.lock().unwrap().insert(
            "old",
            (Instant::now() - REVIEW_TTL - Duration::from_secs(1), true),
        );
        assert_eq!(c.get(&"old"), None);
    }
}
