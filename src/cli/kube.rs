//! The Kubernetes client of the CLI's subcommands: from `--kubeconfig`, or inferred.

use super::CliError;

/// Runs a short command against the API server: a current-thread runtime, the client from
/// `kubeconfig` (or the usual inference), and the namespace (`-n`, else the kubeconfig's).
pub(super) fn with_kube<T, F, Fut>(
    kubeconfig: Option<&str>,
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
        let client = kube_client(kubeconfig).await?;
        let namespace = namespace
            .map(str::to_string)
            .unwrap_or_else(|| client.default_namespace().to_string());
        f(client, namespace).await
    })
}

pub(super) async fn kube_client(kubeconfig: Option<&str>) -> Result<kube::Client, CliError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| CliError::runtime(format!("cannot read kubeconfig {path}: {e}")))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| CliError::runtime(format!("invalid kubeconfig {path}: {e}")))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| CliError::runtime(format!("no Kubernetes configuration found: {e}")))?,
    };
    kube::Client::try_from(config)
        .map_err(|e| CliError::runtime(format!("cannot build a Kubernetes client: {e}")))
}
