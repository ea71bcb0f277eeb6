//! `dag-operator ui` (`kubectl dag ui`): port-forwards to the chart's UI Service
//! (`<release>-ui`, port 8081) and opens the UI in a browser already logged in as the
//! kubeconfig's user, with no token pasted.
//!
//! How the login is carried: the token never enters a URL, a page or the browser's history.
//! The CLI serves, on 127.0.0.1 only, a one-time link `http://127.0.0.1:<p>/login/<nonce>`
//! (a 256-bit random nonce, valid once and for [`HANDOFF_TTL`]). When the browser opens it,
//! the CLI itself posts the token to the UI's `/login` (as any API client, so no cross-site
//! form is involved), and answers the browser with a redirect to the UI carrying the session
//! cookie the UI issued (`HttpOnly; SameSite=Strict`, host-only). Cookies are scoped to a
//! host, not a port, so the cookie set on 127.0.0.1 is the UI's on the port-forward's port.
//! The port-forward is `kubectl port-forward` (kubectl is there when `kubectl dag` is: the
//! same kubeconfig, `--kubeconfig` and `--context`).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::CliError;
use super::server::{ServerArgs, base_of, credentials};

/// How long the one-time login link is valid.
const HANDOFF_TTL: Duration = Duration::from_secs(120);
/// How long `kubectl port-forward` may take to start forwarding.
const FORWARD_START: Duration = Duration::from_secs(30);
/// The UI's port in the chart's Service.
const UI_PORT: u16 = 8081;

#[derive(Args, Debug, Clone)]
pub struct UiArgs {
    /// The chart's Helm release: its UI Service is `<release>-ui`.
    #[arg(long, default_value = "dag-operator")]
    pub release: String,
    /// Namespace of the release.
    #[arg(long, short = 'n', default_value = "dag-operator")]
    pub namespace: String,
    /// Local port of the port-forward (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Print the login link instead of opening a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// `--server`: a UI already reachable on this machine's loopback (e.g. your own
    /// port-forward): no port-forward is started.
    #[command(flatten)]
    pub server: ServerArgs,
}

pub fn run(args: &UiArgs) -> Result<(), CliError> {
    super::act::runtime()?.block_on(async {
        let (token, _) = credentials(&args.server).await?;
        let (upstream, mut forward) = match args.server.server.as_deref() {
            Some(s) if !s.trim().is_empty() => {
                let base = base_of(&args.server)?;
                if !is_loopback(&base) {
                    return Err(CliError::usage(format!(
                        "--server {base}: `ui` logs the browser in on this machine's loopback \
                         (127.0.0.1 or localhost) only; open a remote UI in the browser and \
                         log in there"
                    )));
                }
                (base, None)
            }
            _ => {
                let (child, port) = port_forward(args)?;
                (format!("http://127.0.0.1:{port}"), Some(child))
            }
        };
        let result = hand_off(args, &upstream, token).await;
        if let Some(child) = forward.as_mut() {
            if result.is_ok() {
                eprintln!(
                    "Forwarding {upstream} to svc/{}-ui; Ctrl-C to stop.",
                    args.release
                );
                wait_for_end(child).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        result
    })
}

/// Serves the one-time login link, opens (or prints) it, and returns once it was used or
/// expired.
async fn hand_off(args: &UiArgs, upstream: &str, token: String) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::runtime(format!("cannot listen on 127.0.0.1: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| CliError::runtime(format!("cannot listen on 127.0.0.1: {e}")))?
        .port();
    let nonce = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let handoff = Arc::new(Handoff {
        nonce: nonce.clone(),
        token,
        upstream: upstream.to_string(),
        used: AtomicBool::new(false),
        done: std::sync::Mutex::new(Some(done_tx)),
    });
    let app = Router::new()
        .route("/login/{nonce}", get(login))
        .with_state(handoff);
    let link = format!("http://127.0.0.1:{port}/login/{nonce}");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::time::timeout(HANDOFF_TTL, done_rx).await;
            })
            .await;
    });
    if args.no_browser || !open_browser(&link) {
        println!(
            "Open this link once, within {}s, to log in: {link}",
            HANDOFF_TTL.as_secs()
        );
    } else {
        println!("Opened the UI in your browser (if not, open {link} once).");
    }
    server
        .await
        .map_err(|e| CliError::runtime(format!("the login link's server: {e}")))
}

struct Handoff {
    nonce: String,
    token: String,
    upstream: String,
    used: AtomicBool,
    done: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

/// `GET /login/{nonce}`: once, the UI's session cookie and a redirect to the UI.
async fn login(State(h): State<Arc<Handoff>>, Path(nonce): Path<String>) -> Response {
    if nonce != h.nonce || h.used.swap(true, Ordering::SeqCst) {
        return (
            StatusCode::NOT_FOUND,
            "this login link is unknown or was used: run `kubectl dag ui` again",
        )
            .into_response();
    }
    let answer = match session(&h.upstream, &h.token).await {
        Ok(cookie) => {
            let mut response = (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, format!("{}/", h.upstream)),
                    (header::CACHE_CONTROL, "no-store".to_string()),
                    (header::REFERRER_POLICY, "no-referrer".to_string()),
                ],
            )
                .into_response();
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            response
        }
        Err(message) => {
            eprintln!("error: {message}");
            (StatusCode::BAD_GATEWAY, message).into_response()
        }
    };
    if let Ok(mut done) = h.done.lock() {
        if let Some(tx) = done.take() {
            let _ = tx.send(());
        }
    }
    answer
}

/// Logs in at the UI with the token: the session cookie it sets.
async fn session(upstream: &str, token: &str) -> Result<HeaderValue, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = hyper::Request::post(format!("{upstream}/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!(
            "token={}",
            super::connection::percent_encode(token)
        ))))
        .map_err(|e| format!("cannot ask the UI at {upstream}: {e}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("cannot reach the UI at {upstream}: {e}"))?;
    let status = response.status();
    match response.headers().get(header::SET_COOKIE) {
        Some(cookie) if status.is_redirection() => Ok(cookie.clone()),
        _ => Err(format!(
            "the UI refused the kubeconfig's token ({status}); if it requires a token \
             audience, pass --token \"$(kubectl create token <sa> --audience <aud>)\""
        )),
    }
}

/// `kubectl port-forward` to the release's UI Service; the child and its local port.
fn port_forward(args: &UiArgs) -> Result<(Child, u16), CliError> {
    let service = format!("svc/{}-ui", args.release);
    let ports = format!("{}:{UI_PORT}", args.port);
    let mut cmd = Command::new("kubectl");
    cmd.args([
        "port-forward",
        "-n",
        &args.namespace,
        &service,
        &ports,
        "--address",
        "127.0.0.1",
    ]);
    if let Some(context) = &args.server.kube.context {
        cmd.args(["--context", context]);
    }
    if let Some(kubeconfig) = &args.server.kube.kubeconfig {
        // a list is merged by kubectl as by us; its --kubeconfig takes one file only
        cmd.env("KUBECONFIG", kubeconfig);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CliError::runtime(format!("cannot run kubectl port-forward: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| CliError::runtime("kubectl port-forward has no output"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(port) = forwarded_port(&line) {
                    sent = tx.send(port).is_ok();
                }
            }
        }
    });
    match rx.recv_timeout(FORWARD_START) {
        Ok(port) => Ok((child, port)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(CliError::runtime(format!(
                "kubectl port-forward -n {} {service} did not start forwarding (is the chart \
                 installed there as release {:?}? see --release and -n)",
                args.namespace, args.release
            )))
        }
    }
}

/// The local port of kubectl's `Forwarding from 127.0.0.1:PORT -> 8081`.
fn forwarded_port(line: &str) -> Option<u16> {
    let rest = line.trim().strip_prefix("Forwarding from 127.0.0.1:")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Whether `base` is http(s) on 127.0.0.1, ::1 or localhost.
fn is_loopback(base: &str) -> bool {
    let Some((_, rest)) = base.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// `xdg-open` (Linux) or `open` (macOS); whether one started.
fn open_browser(link: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    Command::new(opener)
        .arg(link)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Until Ctrl-C or the port-forward's end.
async fn wait_for_end(child: &mut Child) {
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                if !matches!(child.try_wait(), Ok(None)) {
                    eprintln!("kubectl port-forward ended");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_kubectl_forwards_from() {
        assert_eq!(
            forwarded_port("Forwarding from 127.0.0.1:43211 -> 8081"),
            Some(43211)
        );
        assert_eq!(forwarded_port("Forwarding from [::1]:43211 -> 8081"), None);
        assert_eq!(forwarded_port("Handling connection for 43211"), None);
    }

    #[test]
    fn only_loopback_servers_take_the_login() {
        assert!(is_loopback("http://127.0.0.1:8081"));
        assert!(is_loopback("http://localhost:8081/"));
        assert!(is_loopback("http://[::1]:8081"));
        assert!(!is_loopback("https://dags.example.com"));
        assert!(!is_loopback("http://127.0.0.1.example.com:80"));
        assert!(!is_loopback("127.0.0.1:8081"));
    }

    #[test]
    fn a_token_is_form_encoded() {
        assert_eq!(
            super::super::connection::percent_encode("eyJ.a-b_c~"),
            "eyJ.a-b_c~"
        );
        assert_eq!(
            super::super::connection::percent_encode("a+b/c= d"),
            "a%2Bb%2Fc%3D%20d"
        );
    }
}
