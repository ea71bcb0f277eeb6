//! The CLI's client of the operator's HTTP API (`--server`): for users with a kubeconfig but no
//! database credentials. Requests carry `--token`, else the bearer token kube takes from the
//! kubeconfig (`kube.rs`: exec plugins, OIDC, token files, `--context`), so the API server's
//! RBAC decides, as for the UI.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::kube::{bearer_token, kube_config};
use super::{CliError, KubeArgs};

/// Where the API is and who calls it.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The operator's HTTP API, e.g. http://localhost:8081 (after `kubectl -n dag-operator
    /// port-forward svc/dag-operator-ui 8081`) or its Ingress URL.
    #[arg(long, env = "DAGOP_SERVER")]
    pub server: Option<String>,
    /// Bearer token (default: the one kube sends the API server for the kubeconfig's user,
    /// exec plugins and OIDC included; e.g. `kubectl create token <sa>`).
    #[arg(long, env = "DAGOP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub kube: KubeArgs,
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
    /// From the flags and the kubeconfig; `namespace` (`-n`) else the kubeconfig context's.
    pub async fn connect(args: &ServerArgs, namespace: Option<&str>) -> Result<Self, CliError> {
        let base = base_of(args)?;
        let (token, context_namespace) = credentials(args).await?;
        let namespace = namespace
            .map(str::to_string)
            .or(context_namespace)
            .unwrap_or_else(|| "default".to_string());
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

/// `--server` (or `DAGOP_SERVER`) without its trailing slash.
pub fn base_of(args: &ServerArgs) -> Result<String, CliError> {
    Ok(args
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
        .trim()
        .trim_end_matches('/')
        .to_string())
}

/// The caller's bearer token (`--token`, else the kubeconfig's as kube sends it) and the
/// kubeconfig context's namespace (when there is a kubeconfig).
pub async fn credentials(args: &ServerArgs) -> Result<(String, Option<String>), CliError> {
    if let Some(token) = args.token.clone().filter(|t| !t.trim().is_empty()) {
        // a kubeconfig is optional then: only its namespace is wanted
        let namespace = kube_config(&args.kube)
            .await
            .ok()
            .map(|c| c.default_namespace);
        return Ok((token.trim().to_string(), namespace));
    }
    let config = kube_config(&args.kube).await?;
    let token = bearer_token(&config).await?.ok_or_else(|| {
        CliError::usage(
            "the kubeconfig's user has no bearer token (it proves who it is with a client \
             certificate or a password, which the operator's API cannot review): pass --token \
             (or DAGOP_TOKEN), e.g. $(kubectl create token <serviceaccount>)",
        )
    })?;
    Ok((token, Some(config.default_namespace)))
}
