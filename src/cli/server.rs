//! The CLI's client of the operator's HTTP API (`--server`): for users with a kubeconfig but no
//! database credentials. Requests carry the kubeconfig's bearer token (or `--token`), so the
//! API server's RBAC decides, as for the UI.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::CliError;

/// Where the API is and who calls it.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The operator's HTTP API, e.g. http://localhost:8081 (after `kubectl -n dag-operator
    /// port-forward svc/dag-operator-ui 8081`) or its Ingress URL.
    #[arg(long, env = "DAGOP_SERVER")]
    pub server: Option<String>,
    /// Bearer token (default: the kubeconfig's user token; e.g. `kubectl create token <sa>`).
    #[arg(long, env = "DAGOP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Path to a kubeconfig (default: in-cluster config, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<String>,
    /// Namespace of the run (default: the kubeconfig's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// An answer of the API: its status and body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Result<Value, CliError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| CliError::runtime(format!("the API answered with no JSON: {e}")))
    }

    /// The body when the status is a success, else the API's message as the error.
    pub fn ok(self) -> Result<Self, CliError> {
        if self.status.is_success() {
            return Ok(self);
        }
        let message = serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        Err(CliError::runtime(format!(
            "the API refused ({}): {message}",
            self.status
        )))
    }
}

/// A connected client: the base URL, the token and the namespace.
pub struct Server {
    base: String,
    token: String,
    pub namespace: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Server {
    /// From the flags and the kubeconfig.
    pub async fn connect(args: &ServerArgs) -> Result<Self, CliError> {
        let base = args
            .server
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                CliError::usage(
                    "no --server (or DAGOP_SERVER): the operator's API address, e.g. \
                     http://localhost:8081 after `kubectl -n dag-operator port-forward \
                     svc/dag-operator-ui 8081`",
                )
            })?
            .trim_end_matches('/')
            .to_string();
        let config = kube_config(args.kubeconfig.as_deref()).await;
        let namespace = args
            .namespace
            .clone()
            .or_else(|| config.as_ref().map(|c| c.default_namespace.clone()))
            .unwrap_or_else(|| "default".to_string());
        let token = match &args.token {
            Some(t) => t.clone(),
            None => config.as_ref().and_then(token_of).ok_or_else(|| {
                CliError::usage(
                    "no token: the kubeconfig's user has no bearer token; pass --token \
                         (e.g. $(kubectl create token <serviceaccount>))",
                )
            })?,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| CliError::runtime(format!("no TLS root certificates: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Server {
            base,
            token,
            namespace,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// Sends a request; the whole answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CliError> {
        let response = self.open(method, path, body).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::runtime(format!("reading the API's answer: {e}")))?
            .to_bytes();
        Ok(Answer { status, body })
    }

    /// Sends a request; the answer as it arrives.
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, CliError> {
        let url = format!("{}{path}", self.base);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .map_err(|e| CliError::usage(format!("invalid --server {}: {e}", self.base)))?;
        self.client
            .request(request)
            .await
            .map_err(|e| CliError::runtime(format!("cannot reach the API at {url}: {e}")))
    }
}

async fn kube_config(kubeconfig: Option<&str>) -> Option<kube::Config> {
    match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).ok()?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .ok()
        }
        None => kube::Config::infer().await.ok(),
    }
}

/// The kubeconfig user's bearer token (inline or from its file).
fn token_of(config: &kube::Config) -> Option<String> {
    if let Some(t) = &config.auth_info.token {
        return Some(t.expose_secret().to_string());
    }
    let file = config.auth_info.token_file.as_ref()?;
    std::fs::read_to_string(file)
        .ok()
        .map(|t| t.trim().to_string())
}
