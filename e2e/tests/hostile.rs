//! Hostile callers against a real operator process on the local plane (issue 28's probes):
//! every token is reviewed by the plane's own API server, every byte goes over real TCP.
//! - 10,000 distinct garbage tokens (each as long as a token may be, from many sources so the
//!   per-source limit lets each be reviewed), then 500 logins of 1 MiB, leave the operator's
//!   resident memory bounded;
//! - tokens past the length limit are refused before any review, in the header and at login;
//! - a client that stalls in its request head is disconnected.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use dag_operator::http::HEADER_READ_TIMEOUT;
use dag_operator::http::guard::{FAILURE_BURST, MAX_TOKEN_BYTES};
use dag_operator_e2e::eventually;
use dag_operator_e2e::operator::Operator;
use dag_operator_e2e::scenario::setup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The garbage tokens sent.
const TOKENS: usize = 10_000;

/// Logins with a token of [`BIG_LOGIN_BYTES`] sent after them.
const BIG_LOGINS: usize = 500;
const BIG_LOGIN_BYTES: usize = 1024 * 1024;

/// How far the operator's resident memory may grow while it refuses them (MiB). The old
/// review cache kept every token for 10 s: 10,000 × 16 KiB is 160 MiB alone.
const RSS_GROWTH_BOUND_MIB: f64 = 48.0;

/// Sends `request` from `source` to the operator's API and reads the answer to its end: the
/// status code (0 when the connection closed without one).
async fn send_from(source: IpAddr, port: u16, request: &[u8]) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind a loopback source");
    let mut stream = socket
        .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await
        .expect("connect");
    if stream.write_all(request).await.is_err() {
        // the server may answer and close before it read everything
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn get_with_token(token: &str) -> Vec<u8> {
    format!(
        "GET /api/v1/dags HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// The `i`th source: 127.1.x.y, a loopback address of its own.
fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// A token of exactly `len` bytes no API server issued, distinct for every `i`.
fn garbage(i: usize, len: usize) -> String {
    let head = format!("garbage-{i:08}-");
    let mut token = head.clone();
    token.extend(
        std::iter::repeat_n(b"abcdefghijklmnopqrstuvwxyz0123456789", len / 36 + 1)
            .flatten()
            .map(|b| *b as char),
    );
    token.truncate(len);
    token
}

async fn answering(s: &dag_operator_e2e::scenario::Setup) -> Operator {
    let op = s.operator(&[]);
    eventually(Duration::from_secs(30), "the API answers", || {
        let op = &op;
        async move { op.api("/api/v1/dags", Some("nobody")).await.map(|_| ()) }
    })
    .await;
    op
}

#[tokio::test]
async fn ten_thousand_garbage_tokens_leave_memory_bounded() {
    let s = setup("hostile-rss").await;
    let op = answering(&s).await;
    let port = op.ui_port;
    // warm up: the same paths once, so the first allocations of each are behind us
    for i in 0..20 {
        send_from(
            source(i),
            port,
            &get_with_token(&garbage(i, MAX_TOKEN_BYTES)),
        )
        .await;
    }
    let before = op.rss_mib().expect("the operator's RSS");
    let per_source = FAILURE_BURST as usize;
    let sources = TOKENS / per_source;
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    let mut peak = before;
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0;
    while sent < TOKENS || !tasks.is_empty() {
        while sent < TOKENS && tasks.len() < 32 {
            // source 20.. onwards: the warm-up's sources are spent
            let from = source(20 + sent % sources);
            let request = get_with_token(&garbage(100 + sent, MAX_TOKEN_BYTES));
            tasks.spawn(async move { send_from(from, port, &request).await });
            sent += 1;
        }
        if let Some(code) = tasks.join_next().await {
            *codes.entry(code.expect("a sender")).or_default() += 1;
        }
        if sent % 500 == 0 {
            peak = peak.max(op.rss_mib().unwrap_or(0.0));
        }
    }
    // and logins with tokens of 1 MiB (the old code reviewed each and kept it for 10 s:
    // ~25 a second held ~250 MiB): refused on their length, unread
    let big = format!("token={}", garbage(0, BIG_LOGIN_BYTES));
    let login = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
        big.len()
    )
    .into_bytes();
    let login = std::sync::Arc::new(login);
    for i in 0..BIG_LOGINS {
        if tasks.len() >= 16
            && let Some(code) = tasks.join_next().await
        {
            *codes.entry(code.expect("a sender")).or_default() += 1;
        }
        let (login, from) = (login.clone(), source(20 + i % sources));
        tasks.spawn(async move { send_from(from, port, &login).await });
        if i % 50 == 0 {
            peak = peak.max(op.rss_mib().unwrap_or(0.0));
        }
    }
    while let Some(code) = tasks.join_next().await {
        *codes.entry(code.expect("a sender")).or_default() += 1;
    }
    let after = op.rss_mib().expect("the operator's RSS");
    peak = peak.max(after);
    eprintln!(
        "{TOKENS} garbage tokens of {MAX_TOKEN_BYTES} B from {sources} sources, then \
         {BIG_LOGINS} logins of {BIG_LOGIN_BYTES} B: {codes:?}; \
         RSS {before:.1} MiB before, peak {peak:.1}, after {after:.1}"
    );
    // every token was reviewed by the API server and refused: none slipped through, and the
    // per-source limit (10 failures) was not what answered them
    assert_eq!(codes.get(&401), Some(&TOKENS), "{codes:?}");
    assert_eq!(codes.get(&413), Some(&BIG_LOGINS), "{codes:?}");
    assert!(
        peak - before < RSS_GROWTH_BOUND_MIB,
        "RSS grew from {before:.1} to {peak:.1} MiB (bound {RSS_GROWTH_BOUND_MIB} MiB)"
    );
}

#[tokio::test]
async fn oversized_tokens_and_stalled_heads_are_refused_by_a_real_operator() {
    let s = setup("hostile-big").await;
    let op = answering(&s).await;
    let port = op.ui_port;
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // in the header: just past the limit, and ~400 KB
    for len in [MAX_TOKEN_BYTES + 1, 400 * 1024] {
        let code = send_from(localhost, port, &get_with_token(&"x".repeat(len))).await;
        assert!((400..500).contains(&code), "a {len} B token: {code}");
    }
    // at login: a form far past any token is refused on its declared length, unread
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\ntoken=",
        2 * 1024 * 1024
    );
    let code = send_from(localhost, port, head.as_bytes()).await;
    assert_eq!(code, 413);
    // and a valid token from the same source is still served
    s.ns.kubectl_ok(&["create", "serviceaccount", "viewer"], None);
    let token = s.ns.kubectl_ok(&["create", "token", "viewer"], None);
    let code = send_from(localhost, port, &get_with_token(token.trim())).await;
    assert_eq!(code, 200);

    // a client that stalls in its request head is disconnected after the timeout
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stalled
        .write_all(b"GET /api/v1/dags HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(HEADER_READ_TIMEOUT * 3, stalled.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "still connected {:?} into a stalled head",
        HEADER_READ_TIMEOUT * 3
    );
    eprintln!(
        "a stalled head was disconnected after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= HEADER_READ_TIMEOUT / 2);
}
