//! The HTTP endpoint on `--metrics-addr` (SPEC §9): `/metrics`, `/healthz`, `/readyz`.
//! HTTP/1.1 only, hyper 1 on tokio; no routing library. With an [`MetricsAccess`] (the
//! operator's `--metrics-auth`), `/metrics` answers only callers it allows; the probes stay
//! open (the kubelet brings no token).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::access::MetricsAccess;
use super::health::Health;
use super::metrics::{self, Metrics};

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After the shutdown signal, open connections get this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr`, then serves `/metrics`, `/healthz` and `/readyz` on a spawned task until
/// `shutdown` completes. Returns the bound address (useful with port 0). With `access`,
/// `/metrics` answers only the callers it allows (401, 403 otherwise).
///
/// `addr` is `HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all IPv4 interfaces, like `0.0.0.0:PORT`).
/// Must be called inside a tokio runtime. An unparsable address fails with
/// `ErrorKind::InvalidInput`; a failed bind keeps its kind (e.g. `AddrInUse`); both messages
/// name the address.
pub async fn serve<F>(
    addr: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    access: Option<Arc<dyn MetricsAccess>>,
    shutdown: F,
) -> io::Result<SocketAddr>
where
    F: Future<Output = ()> + Send + 'static,
{
    let target = resolve_addr(addr, "metrics").await?;
    let listener = TcpListener::bind(target).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on metrics address {addr:?} ({target}): {e}"),
        )
    })?;
    let local = listener.local_addr()?;
    tracing::info!(
        addr = %local,
        metrics_auth = access.is_some(),
        "serving /metrics, /healthz and /readyz"
    );
    let served = Arc::new(Served {
        metrics,
        health,
        access,
    });
    tokio::spawn(accept_loop(listener, served, shutdown));
    Ok(local)
}

/// `:PORT` → `0.0.0.0:PORT`; otherwise any `HOST:PORT` the resolver accepts (first result).
/// `HOST:PORT` or `:PORT` (every IPv4 interface) as a socket address; `what` names the
/// listener in errors.
pub async fn resolve_addr(addr: &str, what: &str) -> io::Result<SocketAddr> {
    let invalid = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid {what} address {addr:?}: {why} (expected HOST:PORT or :PORT, e.g. :8080)"
            ),
        )
    };
    let trimmed = addr.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty".into()));
    }
    let full = match trimmed.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => trimmed.to_owned(),
    };
    if let Ok(sa) = full.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let mut found = tokio::net::lookup_host(full.as_str())
        .await
        .map_err(|e| invalid(e.to_string()))?;
    found
        .next()
        .ok_or_else(|| invalid("the host name resolves to no address".into()))
}

/// What the endpoint serves, and who may read `/metrics`.
struct Served {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    access: Option<Arc<dyn MetricsAccess>>,
}

async fn accept_loop<F>(listener: TcpListener, served: Arc<Served>, shutdown: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let served = served.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let served = served.clone();
                        async move { Ok::<_, Infallible>(answer(&req, peer, &served).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "metrics connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("metrics server: connections still open after the drain timeout");
    }
    tracing::debug!("metrics server stopped");
}

/// `/metrics` asked of the access check when there is one; then [`respond`].
async fn answer(
    req: &Request<Incoming>,
    peer: SocketAddr,
    served: &Served,
) -> Response<Full<Bytes>> {
    let (method, path) = (req.method(), req.uri().path());
    let reads_metrics = path == "/metrics" && (method == Method::GET || method == Method::HEAD);
    if let (true, Some(access)) = (reads_metrics, &served.access) {
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let verdict = access.check(authorization, peer.ip()).await;
        if let Some((status, message)) = verdict.refusal() {
            tracing::debug!(%peer, ?verdict, "metrics request refused");
            let mut resp = plain(status, message);
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"dag-operator metrics\""),
                );
            }
            return resp;
        }
    }
    respond(method, path, &served.metrics, &served.health)
}

/// Routing, separate from the transport.
fn respond(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    health: &Health,
) -> Response<Full<Bytes>> {
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return plain(StatusCode::NOT_FOUND, "not found\n".into());
    }
    if method != Method::GET && method != Method::HEAD {
        let mut resp = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.encode())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        "/healthz" => plain(StatusCode::OK, "ok".into()),
        _ => match health.ready() {
            Ok(()) => plain(StatusCode::OK, "ok".into()),
            Err(reason) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunType;
    use crate::telemetry::Role;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// One request with `Connection: close`; reads until the server closes.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .expect("response in time")
            .expect("read");
        let raw = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().expect("status code");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    async fn start() -> (SocketAddr, Arc<Metrics>, Arc<Health>, oneshot::Sender<()>) {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new());
        let (tx, rx) = oneshot::channel::<()>();
        let addr = serve(
            "127.0.0.1:0",
            metrics.clone(),
            health.clone(),
            None,
            async move {
                let _ = rx.await;
            },
        )
        .await
        .expect("serve");
        assert_ne!(addr.port(), 0);
        (addr, metrics, health, tx)
    }

    #[tokio::test]
    async fn serves_healthz_readyz_metrics_and_404() {
        let (addr, metrics, health, _stop) = start().await;

        let r = request(addr, "GET", "/healthz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));

        let r = request(addr, "GET", "/readyz").await;
        assert_eq!(r.status, 503);
        assert!(r.body.contains("store unreachable"), "{}", r.body);
        assert!(r.body.contains("gate unreachable"), "{}", r.body);
        assert!(r.body.contains("leader election"), "{}", r.body);

        health.set_store_ok(true);
        health.set_gate_ok(true);
        let r = request(addr, "GET", "/readyz").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "not ready: leader election not settled\n");

        health.set_role(Role::Standby);
        let r = request(addr, "GET", "/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        health.set_role(Role::Leader);
        assert_eq!(request(addr, "GET", "/readyz").await.status, 200);
        health.set_gate_ok(false);
        let r = request(addr, "GET", "/readyz").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "not ready: gate unreachable\n")
        );

        metrics.run_created(RunType::Scheduled);
        let r = request(addr, "GET", "/metrics").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some(metrics::CONTENT_TYPE));
        assert!(
            r.body
                .lines()
                .any(|l| l == "dagop_runs_created_total{type=\"scheduled\"} 1"),
            "{}",
            r.body
        );
        assert!(r.body.ends_with("# EOF\n"));

        for path in ["/", "/metrics/", "/nope", "/healthz/x"] {
            assert_eq!(request(addr, "GET", path).await.status, 404, "{path}");
        }
        let r = request(addr, "POST", "/metrics").await;
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        let r = request(addr, "HEAD", "/healthz").await;
        assert_eq!((r.status, r.body.as_str()), (200, ""));
        // The query string does not change the route.
        assert_eq!(request(addr, "GET", "/healthz?verbose=1").await.status, 200);
    }

    /// Token "reader" may read; "other" is known but may not; anything else is unknown.
    struct Readers;

    impl MetricsAccess for Readers {
        fn check<'a>(
            &'a self,
            authorization: Option<&'a str>,
            _peer: std::net::IpAddr,
        ) -> futures::future::BoxFuture<'a, super::super::Verdict> {
            use super::super::Verdict;
            let verdict = match authorization {
                None => Verdict::NoToken,
                Some("Bearer reader") => Verdict::Allowed,
                Some("Bearer other") => Verdict::Forbidden("other".into()),
                Some(_) => Verdict::Unauthenticated,
            };
            Box::pin(async move { verdict })
        }
    }

    async fn request_with(addr: SocketAddr, path: &str, token: &str) -> u16 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut raw))
            .await
            .expect("in time")
            .expect("read");
        raw.get(9..12)
            .and_then(|code| code.parse().ok())
            .expect("a status line")
    }

    #[tokio::test]
    async fn with_access_metrics_answers_only_allowed_callers_and_probes_stay_open() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new());
        health.set_store_ok(true);
        health.set_gate_ok(true);
        health.set_role(Role::Standby);
        let access: Arc<dyn MetricsAccess> = Arc::new(Readers);
        let addr = serve(
            "127.0.0.1:0",
            metrics,
            health,
            Some(access),
            std::future::pending(),
        )
        .await
        .expect("serve");
        let r = request(addr, "GET", "/metrics").await;
        assert_eq!(r.status, 401);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer"))
        );
        assert!(!r.body.contains("dagop_"), "{}", r.body);
        assert_eq!(request(addr, "HEAD", "/metrics").await.status, 401);
        assert_eq!(request_with(addr, "/metrics", "garbage").await, 401);
        assert_eq!(request_with(addr, "/metrics", "other").await, 403);
        assert_eq!(request_with(addr, "/metrics", "reader").await, 200);
        // the probes ask for no token
        assert_eq!(request(addr, "GET", "/healthz").await.status, 200);
        assert_eq!(request(addr, "GET", "/readyz").await.status, 200);
        // unknown paths and methods are answered as before
        assert_eq!(request(addr, "GET", "/nope").await.status, 404);
        assert_eq!(request(addr, "POST", "/metrics").await.status, 405);
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_dropped() {
        let (addr, _metrics, _health, _stop) = start().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        // the server closes the connection after HEADER_READ_TIMEOUT (the deadline here is
        // only there to fail instead of hanging)
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(HEADER_READ_TIMEOUT * 3, stream.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "the connection is still open after {:?}",
            HEADER_READ_TIMEOUT * 3
        );
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("dagop_"), "{rest}");
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests_on_one_connection() {
        let (addr, _metrics, _health, _stop) = start().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let one = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let last = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(format!("{one}{one}{last}").as_bytes())
            .await
            .expect("write");
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut raw))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(raw.matches("HTTP/1.1 200 OK").count(), 3, "{raw}");
    }

    #[tokio::test]
    async fn shutdown_stops_accepting() {
        let (addr, _metrics, _health, stop) = start().await;
        assert_eq!(request(addr, "GET", "/healthz").await.status, 200);
        stop.send(()).expect("server alive");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if TcpStream::connect(addr).await.is_err() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn addresses() {
        assert_eq!(
            resolve_addr(":8080", "metrics").await.expect(":8080"),
            "0.0.0.0:8080".parse::<SocketAddr>().expect("literal")
        );
        assert_eq!(
            resolve_addr("[::1]:9", "metrics").await.expect("v6"),
            "[::1]:9".parse::<SocketAddr>().expect("literal")
        );
        assert!(resolve_addr("localhost:0", "metrics").await.is_ok());
        for bad in [
            "",
            "  ",
            "8080",
            ":",
            ":http",
            ":99999",
            "1.2.3.4",
            "not an address",
        ] {
            let err = resolve_addr(bad, "metrics").await.expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(err.to_string().contains("invalid metrics address"), "{err}");
        }

        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new());
        let err = serve(
            "bogus",
            metrics.clone(),
            health.clone(),
            None,
            std::future::pending(),
        )
        .await
        .expect_err("bad address");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

        // A port in use fails with AddrInUse and names the address.
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let err = serve(&addr, metrics, health, None, std::future::pending())
            .await
            .expect_err("in use");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr), "{err}");
    }
}
