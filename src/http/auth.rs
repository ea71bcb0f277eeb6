//! Who is asking, and may they: a bearer token is checked with a TokenReview, each access with
//! a SubjectAccessReview in the object's namespace — the API server decides, by the caller's
//! own RBAC. Answers are cached for a few seconds (a UI page makes many requests): tokens by
//! their SHA-256, refusals for less time, at most [`CACHE_CAP`] answers each; at most
//! [`REVIEWS_IN_FLIGHT`] reviews are sent at once. The same reviews guard `/metrics` with
//! `--metrics-auth` ([`MetricsReaders`]): a non-resource URL, as RBAC's `nonResourceURLs`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::guard::{FailureLimit, source_of};
use crate::telemetry::{MetricsAccess, Verdict};

/// How long a review's answer is reused.
pub const REVIEW_TTL: Duration = Duration::from_secs(10);

/// How long a token's refusal is reused (shorter: a token may become valid).
pub const REFUSAL_TTL: Duration = Duration::from_secs(2);

/// Answers kept at most per cache (tokens; accesses): a full cache drops what has expired,
/// then the answers nearest to expiry.
pub const CACHE_CAP: usize = 4096;

/// TokenReviews and SubjectAccessReviews in flight at once: the rest wait, so reviews never
/// fill the client's request queue that the leader's Lease renewal goes through.
pub const REVIEWS_IN_FLIGHT: usize = 4;

/// The caller, as the TokenReview names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    pub user: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// One access to check: `verb` on `resource` of API `group` (dagoperator.io; `""` the core
/// group) in `namespace` (`None`: cluster-wide).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    pub namespace: Option<String>,
    pub group: &'static str,
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
            group: crate::api::GROUP,
            verb: "get",
            resource: "dags",
            subresource: None,
            name: None,
        }
    }

    /// Reading the logs of Pods in `namespace`: `get pods/log` (core group), the right
    /// `kubectl logs` needs — task logs often hold what only their readers should see.
    pub fn pod_logs(namespace: &str) -> Self {
        Access {
            namespace: Some(namespace.to_string()),
            group: "",
            verb: "get",
            resource: "pods",
            subresource: Some("log"),
            name: None,
        }
    }
}

/// One request to a URL of the operator's own that names no API object, as RBAC's
/// `nonResourceURLs` rules grant it: `verb` on `path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PathAccess {
    pub path: &'static str,
    pub verb: &'static str,
}

impl PathAccess {
    /// Reading the operator's metrics: `get` on `/metrics`, what kube-rbac-proxy and
    /// controller-runtime's metrics filter ask for.
    pub const METRICS: PathAccess = PathAccess {
        path: "/metrics",
        verb: "get",
    };
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

    /// Whether `caller` may do `access` on a non-resource URL.
    fn allowed_path<'a>(
        &'a self,
        caller: &'a Caller,
        access: &'a PathAccess,
    ) -> BoxFuture<'a, Result<bool, ReviewError>>;
}

/// Answers kept until their time is up, at most `cap` of them.
struct Cache<K, V> {
    cap: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + std::hash::Hash + Clone, V: Clone> Cache<K, V> {
    fn new(cap: usize) -> Self {
        Cache {
            cap,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, v)| v.clone())
    }

    /// Keeps `value` for `ttl`; when full, drops the expired answers, then (still full) the
    /// eighth nearest to expiry: a scan of `cap` entries at most once every `cap / 8` puts.
    fn put(&self, key: K, value: V, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.cap && !entries.contains_key(&key) {
            entries.retain(|_, (until, _)| now < *until);
            if entries.len() >= self.cap {
                let mut by_expiry: Vec<(Instant, K)> = entries
                    .iter()
                    .map(|(k, (until, _))| (*until, k.clone()))
                    .collect();
                let drop = (self.cap / 8).max(1).min(by_expiry.len());
                if let Some(last) = drop.checked_sub(1) {
                    by_expiry.select_nth_unstable_by_key(last, |(until, _)| *until);
                    for (_, k) in &by_expiry[..drop] {
                        entries.remove(k);
                    }
                }
            }
        }
        entries.insert(key, (now + ttl, value));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or_default()
    }
}

/// A token's key in the cache: its SHA-256, so the cache never holds a token (nor its length).
fn token_key(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// The TokenReview of `token`, asking for `audience` when one is required.
fn review_of(token: &str, audience: Option<&str>) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: audience.map(|a| vec![a.to_string()]),
        },
        ..Default::default()
    }
}

/// The caller a TokenReview's answer names: authenticated, with a user name, and — when
/// `audience` is required — that audience among those the review confirms. An empty
/// `status.audiences` means an authenticator that ignores audiences accepted a token meant for
/// the API server itself: refused when an audience is required.
fn caller_of(status: Option<TokenReviewStatus>, audience: Option<&str>) -> Option<Caller> {
    let status = status.filter(|s| s.authenticated == Some(true))?;
    if let Some(want) = audience {
        if !status.audiences.iter().flatten().any(|a| a == want) {
            return None;
        }
    }
    let u = status.user?;
    Some(Caller {
        user: u.username?,
        uid: u.uid,
        groups: u.groups.unwrap_or_default(),
        extra: u.extra.unwrap_or_default().into_iter().collect(),
    })
}

/// The API server as the reviewer.
pub struct KubeReviewer {
    client: kube::Client,
    audience: Option<String>,
    tokens: Cache<[u8; 32], Option<Caller>>,
    accesses: Cache<(Caller, Access), bool>,
    paths: Cache<(Caller, PathAccess), bool>,
    in_flight: tokio::sync::Semaphore,
}

impl KubeReviewer {
    pub fn new(client: kube::Client) -> Self {
        KubeReviewer {
            client,
            audience: None,
            tokens: Cache::new(CACHE_CAP),
            accesses: Cache::new(CACHE_CAP),
            paths: Cache::new(CACHE_CAP),
            in_flight: tokio::sync::Semaphore::new(REVIEWS_IN_FLIGHT),
        }
    }

    /// Accepts only tokens minted for `audience` (`kubectl create token --audience`): each
    /// TokenReview asks for it, and a review that does not confirm it refuses the token.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience.filter(|a| !a.is_empty());
        self
    }

    async fn review_token(&self, token: &str) -> Result<Option<Caller>, ReviewError> {
        if token.is_empty() || token.len() > super::guard::MAX_TOKEN_BYTES {
            return Ok(None);
        }
        let key = token_key(token);
        if let Some(known) = self.tokens.get(&key) {
            return Ok(known);
        }
        let _turn = self.in_flight.acquire().await;
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = review_of(token, self.audience.as_deref());
        let answer = api.create(&PostParams::default(), &review).await?;
        let caller = caller_of(answer.status, self.audience.as_deref());
        let ttl = if caller.is_some() {
            REVIEW_TTL
        } else {
            REFUSAL_TTL
        };
        self.tokens.put(key, caller.clone(), ttl);
        Ok(caller)
    }

    async fn review_access(&self, caller: &Caller, access: &Access) -> Result<bool, ReviewError> {
        let key = (caller.clone(), access.clone());
        if let Some(known) = self.accesses.get(&key) {
            return Ok(known);
        }
        let allowed = self.ask(&resource_review(caller, access)).await?;
        self.accesses.put(key, allowed, REVIEW_TTL);
        Ok(allowed)
    }

    async fn review_path(&self, caller: &Caller, access: &PathAccess) -> Result<bool, ReviewError> {
        let key = (caller.clone(), access.clone());
        if let Some(known) = self.paths.get(&key) {
            return Ok(known);
        }
        let allowed = self.ask(&path_review(caller, access)).await?;
        self.paths.put(key, allowed, REVIEW_TTL);
        Ok(allowed)
    }

    /// Sends one SubjectAccessReview (in turn with the others); whether it was allowed.
    async fn ask(&self, review: &SubjectAccessReview) -> Result<bool, ReviewError> {
        let _turn = self.in_flight.acquire().await;
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), review).await?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

/// The SubjectAccessReview of `access` by `caller`.
fn resource_review(caller: &Caller, access: &Access) -> SubjectAccessReview {
    let mut review = review_for(caller);
    review.spec.resource_attributes = Some(ResourceAttributes {
        group: Some(access.group.to_string()),
        namespace: access.namespace.clone(),
        resource: Some(access.resource.to_string()),
        subresource: access.subresource.map(str::to_string),
        name: access.name.clone(),
        verb: Some(access.verb.to_string()),
        ..Default::default()
    });
    review
}

/// The SubjectAccessReview of `access` (a non-resource URL) by `caller`.
fn path_review(caller: &Caller, access: &PathAccess) -> SubjectAccessReview {
    let mut review = review_for(caller);
    review.spec.non_resource_attributes = Some(NonResourceAttributes {
        path: Some(access.path.to_string()),
        verb: Some(access.verb.to_string()),
    });
    review
}

/// A SubjectAccessReview for `caller` (user, uid, groups, extra, as the TokenReview named
/// them) with no attributes yet.
fn review_for(caller: &Caller) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.user.clone()),
            uid: caller.uid.clone(),
            groups: Some(caller.groups.clone()),
            extra: Some(caller.extra.clone().into_iter().collect()),
            ..Default::default()
        },
        ..Default::default()
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

    fn allowed_path<'a>(
        &'a self,
        caller: &'a Caller,
        access: &'a PathAccess,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        Box::pin(self.review_path(caller, access))
    }
}

/// Who may read `/metrics` with `--metrics-auth`: a bearer token the reviewer accepts, whose
/// owner may `get` the non-resource URL `/metrics` ([`PathAccess::METRICS`]). A source whose
/// tokens keep failing is answered "too many" for a while, as on the API ([`FailureLimit`]).
pub struct MetricsReaders {
    reviewer: Arc<dyn Reviewer>,
    failures: FailureLimit,
}

impl MetricsReaders {
    pub fn new(reviewer: Arc<dyn Reviewer>) -> Self {
        MetricsReaders {
            reviewer,
            failures: FailureLimit::default(),
        }
    }

    async fn verdict(&self, authorization: Option<&str>, peer: IpAddr) -> Verdict {
        let Some(token) = authorization.and_then(bearer) else {
            return Verdict::NoToken;
        };
        let source = source_of(peer);
        if !self.failures.allows(source) {
            return Verdict::Limited;
        }
        let caller = match self.reviewer.authenticate(token).await {
            Ok(Some(caller)) => caller,
            Ok(None) => {
                self.failures.failed(source);
                return Verdict::Unauthenticated;
            }
            Err(e) => return Verdict::Unavailable(e.to_string()),
        };
        match self
            .reviewer
            .allowed_path(&caller, &PathAccess::METRICS)
            .await
        {
            Ok(true) => Verdict::Allowed,
            Ok(false) => Verdict::Forbidden(caller.user),
            Err(e) => Verdict::Unavailable(e.to_string()),
        }
    }
}

impl MetricsAccess for MetricsReaders {
    fn check<'a>(&'a self, authorization: Option<&'a str>, peer: IpAddr) -> BoxFuture<'a, Verdict> {
        Box::pin(self.verdict(authorization, peer))
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
    use k8s_openapi::api::authentication::v1::UserInfo;

    #[test]
    fn tokens_from_the_header_or_the_session_cookie() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(token_of(&h), None);
        h.insert("cookie", "a=1; dagop_token=tok; b=2".parse().unwrap());
        assert_eq!(token_of(&h).as_deref(), Some("tok"));
        h.insert("authorization", "Bearer hdr".parse().unwrap());
        assert_eq!(token_of(&h).as_deref(), Some("hdr"));
    }

    fn reviewed(authenticated: bool, audiences: Option<&[&str]>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: audiences.map(|a| a.iter().map(|s| s.to_string()).collect()),
            user: Some(UserInfo {
                username: Some("alice".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_required_audience_must_be_confirmed_by_the_review() {
        // no audience required: any authenticated token
        let alice = caller_of(Some(reviewed(true, None)), None).expect("alice");
        assert_eq!(alice.user, "alice");
        assert_eq!(caller_of(Some(reviewed(false, None)), None), None);
        assert_eq!(caller_of(None, None), None);
        // required: the review must name it among the token's audiences
        let aud = Some("dag-operator");
        assert!(caller_of(Some(reviewed(true, Some(&["dag-operator"]))), aud).is_some());
        assert!(caller_of(Some(reviewed(true, Some(&["x", "dag-operator"]))), aud).is_some());
        // an authenticator that ignores audiences answers none: the token is one for the API
        // server, refused
        assert_eq!(caller_of(Some(reviewed(true, None)), aud), None);
        assert_eq!(caller_of(Some(reviewed(true, Some(&[]))), aud), None);
        assert_eq!(
            caller_of(
                Some(reviewed(true, Some(&["https://kubernetes.default.svc"]))),
                aud
            ),
            None
        );
        assert_eq!(
            caller_of(Some(reviewed(false, Some(&["dag-operator"]))), aud),
            None
        );
    }

    #[test]
    fn the_review_asks_for_the_required_audience() {
        assert_eq!(review_of("t", None).spec.audiences, None);
        assert_eq!(
            review_of("t", Some("dag-operator")).spec.audiences,
            Some(vec!["dag-operator".to_string()])
        );
        assert_eq!(review_of("t", None).spec.token, "t");
    }

    #[test]
    fn the_metrics_review_asks_for_the_non_resource_url_as_the_caller() {
        let caller = Caller {
            user: "system:serviceaccount:monitoring:prometheus".into(),
            uid: Some("u-1".into()),
            groups: vec!["system:serviceaccounts".into()],
            extra: BTreeMap::from([("k".to_string(), vec!["v".to_string()])]),
        };
        let spec = path_review(&caller, &PathAccess::METRICS).spec;
        let attrs = spec
            .non_resource_attributes
            .expect("non-resource attributes");
        assert_eq!(attrs.path.as_deref(), Some("/metrics"));
        assert_eq!(attrs.verb.as_deref(), Some("get"));
        assert!(spec.resource_attributes.is_none());
        assert_eq!(spec.user.as_deref(), Some(caller.user.as_str()));
        assert_eq!(spec.uid.as_deref(), Some("u-1"));
        assert_eq!(spec.groups, Some(caller.groups.clone()));
        assert_eq!(
            spec.extra.and_then(|e| e.get("k").cloned()),
            Some(vec!["v".to_string()])
        );
        // a resource review names no URL
        let spec = resource_review(&caller, &Access::read("a")).spec;
        assert!(spec.non_resource_attributes.is_none());
        assert_eq!(
            spec.resource_attributes.and_then(|r| r.resource),
            Some("dags".to_string())
        );
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
        let c: Cache<&str, bool> = Cache::new(10);
        c.put("k", true, REVIEW_TTL);
        assert_eq!(c.get(&"k"), Some(true));
        c.put("gone", true, Duration::ZERO);
        assert_eq!(c.get(&"gone"), None);
    }

    #[test]
    fn the_token_cache_holds_at_most_its_cap_of_hashes() {
        let c: Cache<[u8; 32], Option<Caller>> = Cache::new(CACHE_CAP);
        let mut garbage = String::new();
        for n in 0..CACHE_CAP * 3 {
            garbage.clear();
            garbage.push_str(&format!("garbage-{n}-"));
            garbage.push_str(&"x".repeat(1000));
            c.put(token_key(&garbage), None, REFUSAL_TTL);
            assert!(c.len() <= CACHE_CAP, "{} after {n}", c.len());
        }
        // the newest answers are the ones kept
        assert_eq!(c.get(&token_key(&garbage)), Some(None));
        let first = format!("garbage-0-{}", "x".repeat(1000));
        assert_eq!(c.get(&token_key(&first)), None);
        // a key is 32 bytes, whatever the token's length
        assert_eq!(token_key(&garbage).len(), 32);
    }
}
