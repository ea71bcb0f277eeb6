//! `dag-operator trigger`: adds a trigger annotation to a DAG (SPEC §3.5,
//! `trigger.dagoperator.io/<id>`); the operator turns it into one manual run, once. Each call
//! adds its own annotation, so triggers given before the operator handled the previous ones
//! all run.

use chrono::Utc;
use dag_operator::api::trigger::{new_trigger_id, trigger_patch};
use dag_operator::api::{DAG, TRIGGER_PREFIX};
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::kube::with_kube;
use super::{CliError, TriggerArgs};

pub fn run(args: TriggerArgs) -> Result<(), CliError> {
    let params = match &args.params {
        None => None,
        Some(params) => match serde_json::from_str::<serde_json::Value>(params) {
            Ok(v @ serde_json::Value::Object(_)) => Some(v),
            Ok(_) => return Err(CliError::usage("--params must be a JSON object")),
            Err(e) => return Err(CliError::usage(format!("--params is not valid JSON: {e}"))),
        },
    };
    let (kube, namespace) = (args.kube.clone(), args.namespace.clone());
    with_kube(
        &kube,
        namespace.as_deref(),
        |client, namespace| async move {
            let api: Api<DAG> = Api::namespaced(client, &namespace);
            let id = new_trigger_id(Utc::now());
            let key = format!("{TRIGGER_PREFIX}{id}");
            let patch = trigger_patch(&id, params.as_ref(), args.logical_date);
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
            println!("triggered DAG {namespace}/{} ({key})", args.name);
            Ok(())
        },
    )
}
