//! The CLI's one way to Kubernetes credentials, for every subcommand: kube's own kubeconfig
//! loading (exec plugins, OIDC, client certificates, tokens), `--context`, and `--kubeconfig`
//! or `KUBECONFIG` as one file or a list separated as `$PATH` is (merged as kubectl merges
//! them: the first file to set a value wins). The bearer token sent to the operator's API is
//! taken from kube's own authentication layer, so it is what kube would send the API server.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper::header::AUTHORIZATION;
use kube::client::ConfigExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tower::{Layer, ServiceExt};

use super::{CliError, KubeArgs};

/// Runs a short command against the API server: a current-thread runtime, the client from
/// the kubeconfig, and the namespace (`-n`, else the kubeconfig context's).
pub(super) fn with_kube<T, F, Fut>(
    kube: &KubeArgs,
    namespace: Option<&str>,
    f: F,
) -> Result<T, CliError>
where
    F: FnOnce(kube::Client, String) -> Fut,
    Fut: std::future::Future<Output = Result<T, CliError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let client = kube_client(kube).await?;
        let namespace = namespace
            .map(str::to_string)
            .unwrap_or_else(|| client.default_namespace().to_string());
        f(client, namespace).await
    })
}

/// A client of the API server, as the kubeconfig says.
pub(super) async fn kube_client(kube: &KubeArgs) -> Result<kube::Client, CliError> {
    let config = kube_config(kube).await?;
    kube::Client::try_from(config)
        .map_err(|e| CliError::runtime(format!("cannot build a Kubernetes client: {e}")))
}

/// The configuration: from `--kubeconfig` (or `KUBECONFIG`), one file or a list; else with
/// `--context` from ~/.kube/config; else inferred (~/.kube/config, then in-cluster).
pub(super) async fn kube_config(kube: &KubeArgs) -> Result<kube::Config, CliError> {
    let options = KubeConfigOptions {
        context: kube.context.clone(),
        ..Default::default()
    };
    let files = kube.kubeconfig.as_deref().map(paths).unwrap_or_default();
    if !files.is_empty() {
        let shown = kube.kubeconfig.as_deref().unwrap_or_default();
        let merged = merged(&files)?;
        return kube::Config::from_custom_kubeconfig(merged, &options)
            .await
            .map_err(|e| CliError::runtime(format!("invalid kubeconfig {shown}: {e}")));
    }
    match &kube.context {
        Some(context) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| CliError::runtime(format!("no kubeconfig context {context:?}: {e}"))),
        None => kube::Config::infer()
            .await
            .map_err(|e| CliError::runtime(format!("no Kubernetes configuration found: {e}"))),
    }
}

/// The files of a kubeconfig list (`a:b` on Unix, `a;b` on Windows), empty entries skipped.
fn paths(list: &str) -> Vec<PathBuf> {
    std::env::split_paths(list)
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

/// The files merged in order, as kubectl merges `KUBECONFIG`.
fn merged(files: &[PathBuf]) -> Result<Kubeconfig, CliError> {
    files.iter().try_fold(Kubeconfig::default(), |all, file| {
        Kubeconfig::read_from(file)
            .and_then(|next| all.merge(next))
            .map_err(|e| {
                CliError::runtime(format!("cannot read kubeconfig {}: {e}", file.display()))
            })
    })
}

/// The bearer token kube would send the API server for this configuration: a static token,
/// a token file, an exec plugin's (run now), an OIDC or OAuth token (refreshed when due).
/// `None` when the user proves who it is otherwise (a client certificate, basic auth): the
/// operator's API then has nothing to review.
pub(super) async fn bearer_token(config: &kube::Config) -> Result<Option<String>, CliError> {
    let Some(layer) = config
        .auth_layer()
        .map_err(|e| CliError::runtime(format!("the kubeconfig's credentials: {e}")))?
    else {
        return Ok(None);
    };
    // the layer adds the Authorization header; a service that only reads it back (its error
    // type is the layer's, as tower's Either wants one error for both of its sides)
    let capture = tower::service_fn(|req: Request<Empty<Bytes>>| async move {
        let mut answer = hyper::Response::new(());
        if let Some(value) = req.headers().get(AUTHORIZATION) {
            answer.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok::<_, tower::BoxError>(answer)
    });
    let request = Request::new(Empty::<Bytes>::new());
    let header = layer
        .layer(capture)
        .oneshot(request)
        .await
        .map_err(|e| CliError::runtime(format!("the kubeconfig's credentials: {e}")))?;
    Ok(header
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(token_of_header))
}

/// The token of an `Authorization: Bearer <token>` value.
fn token_of_header(value: &str) -> Option<String> {
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_list_is_split_as_path_is() {
        assert_eq!(paths("/a/config"), vec![PathBuf::from("/a/config")]);
        assert_eq!(
            paths("/a/one::/b/two:"),
            vec![PathBuf::from("/a/one"), PathBuf::from("/b/two")]
        );
        assert!(paths("").is_empty());
    }

    #[test]
    fn only_a_bearer_authorization_carries_a_token() {
        assert_eq!(token_of_header("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(token_of_header("bearer abc").as_deref(), Some("abc"));
        assert_eq!(token_of_header("Basic dXNlcjpwYXNz"), None);
        assert_eq!(token_of_header("Bearer "), None);
    }

    #[tokio::test]
    async fn the_token_of_a_static_token_user() {
        let mut config = kube::Config::new("https://example.invalid".parse().expect("uri"));
        config.auth_info.token = Some("s3cret".to_string().into());
        assert_eq!(
            bearer_token(&config).await.expect("a token").as_deref(),
            Some("s3cret")
        );
        let none = kube::Config::new("https://example.invalid".parse().expect("uri"));
        assert_eq!(bearer_token(&none).await.expect("no error"), None);
    }
}
