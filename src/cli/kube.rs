//! The Kubernetes client of the CLI's subcommands: from `--kubeconfig`, or inferred.

use super::{CliError, KubeArgs};

/// Runs a short command against the API server: a current-thread runtime, the client from
/// `kubeconfig` (or the usual inference), and the namespace (`-n`, else the kubeconfig's).
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

pub(super) async fn kube_client(kube: &KubeArgs) -> Result<kube::Client, CliError> {
    let options = kube::config::KubeConfigOptions {
        context: kube.context.clone(),
        ..Default::default()
    };
    let config = match (&kube.kubeconfig, &kube.context) {
        (Some(path), _) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| CliError::runtime(format!("cannot read kubeconfig {path}: {e}")))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| CliError::runtime(format!("invalid kubeconfig {path}: {e}")))?
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| CliError::runtime(format!("no kubeconfig context {context:?}: {e}")))?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| CliError::runtime(format!("no Kubernetes configuration found: {e}")))?,
    };
    kube::Client::try_from(config)
        .map_err(|e| CliError::runtime(format!("cannot build a Kubernetes client: {e}")))
}
