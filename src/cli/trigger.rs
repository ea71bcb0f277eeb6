//! `dag-operator trigger`: sets the trigger annotations of a DAG (SPEC §3.5); the operator
//! turns a new value into one manual run.

use chrono::{SecondsFormat, Utc};
use dag_operator::api::{DAG, TRIGGER_ANNOTATION, TRIGGER_PARAMS_ANNOTATION};
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::run::with_kube;
use super::{CliError, TriggerArgs};

/// The annotation value: the logical date when one is given (the operator reads an RFC3339
/// value as the run's logical date), otherwise a fresh token (the run's logical date is then
/// the moment the operator handles it).
fn trigger_value(args: &TriggerArgs) -> String {
    match args.logical_date {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Secs, true),
        None => format!("manual-{}", Utc::now().format("%Y%m%dT%H%M%S%.9fZ")),
    }
}

pub fn run(args: TriggerArgs) -> Result<(), CliError> {
    if let Some(params) = &args.params {
        match serde_json::from_str::<serde_json::Value>(params) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return Err(CliError::usage("--params must be a JSON object")),
            Err(e) => return Err(CliError::usage(format!("--params is not valid JSON: {e}"))),
        }
    }
    let (kubeconfig, namespace) = (args.kube.kubeconfig.clone(), args.namespace.clone());
    with_kube(
        kubeconfig.as_deref(),
        namespace.as_deref(),
        |client, namespace| async move {
            let api: Api<DAG> = Api::namespaced(client, &namespace);
            let value = trigger_value(&args);
            let patch = serde_json::json!({
                "metadata": {"annotations": {
                    TRIGGER_ANNOTATION: value,
                    // a trigger without params must not inherit the previous trigger's
                    TRIGGER_PARAMS_ANNOTATION: args.params,
                }}
            });
            api.patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 404 => {
                        CliError::runtime(format!("DAG {namespace}/{} not found", args.name))
                    }
                    e => {
                        CliError::runtime(format!("cannot trigger {namespace}/{}: {e}", args.name))
                    }
                })?;
            println!(
                "triggered DAG {namespace}/{} ({TRIGGER_ANNOTATION}={value})",
                args.name
            );
            Ok(())
        },
    )
}
