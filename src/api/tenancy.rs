//! Tenancy (docs/SEMANTICS.md, "Tenancy"): what a namespace may take of the shared limits — a
//! cap on its running runs and a ceiling on its DAGs' `spec.priority` — from the operator's
//! defaults and the namespace's own annotations (set by whoever may edit Namespaces, i.e. the
//! platform team, not the tenants who write DAGs).

use std::collections::BTreeMap;

/// Annotation on a Namespace: most runs of its DAGs running at once (a positive integer), or
/// `unlimited` (no cap, whatever `--max-runs-per-namespace` says).
pub const MAX_RUNNING_RUNS_ANNOTATION: &str = "dagoperator.io/max-running-runs";
/// Annotation on a Namespace: the highest `spec.priority` its DAGs are queued at (an integer;
/// raises or lowers `--max-dag-priority` for this namespace).
pub const MAX_DAG_PRIORITY_ANNOTATION: &str = "dagoperator.io/max-dag-priority";

/// The default `--max-dag-priority`.
pub const DEFAULT_MAX_DAG_PRIORITY: i32 = 1000;

/// The operator's defaults, for namespaces that do not say otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenancyDefaults {
    /// `--max-runs-per-namespace` (`None`: no cap)
    pub max_running_runs: Option<u32>,
    /// `--max-dag-priority`
    pub max_dag_priority: i32,
}

impl Default for TenancyDefaults {
    fn default() -> Self {
        TenancyDefaults {
            max_running_runs: None,
            max_dag_priority: DEFAULT_MAX_DAG_PRIORITY,
        }
    }
}

/// What one namespace may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacePolicy {
    /// most runs running at once (`None`: no cap of its own)
    pub max_running_runs: Option<u32>,
    pub max_dag_priority: i32,
    /// annotations that could not be read (the default applies instead), one line each
    pub problems: Vec<String>,
}

/// A DAG's priority after the ceiling of its namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectivePriority {
    /// what runs are queued at
    pub value: i32,
    /// `spec.priority`, when the ceiling lowered it
    pub clamped_from: Option<i32>,
}

impl NamespacePolicy {
    /// The defaults, for a namespace the operator cannot see (or has no annotation).
    pub fn defaults(defaults: TenancyDefaults) -> Self {
        NamespacePolicy {
            max_running_runs: defaults.max_running_runs,
            max_dag_priority: defaults.max_dag_priority,
            problems: Vec::new(),
        }
    }

    /// The policy of a namespace with these annotations.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
        defaults: TenancyDefaults,
    ) -> Self {
        let mut policy = Self::defaults(defaults);
        if let Some(value) = annotations.get(MAX_RUNNING_RUNS_ANNOTATION) {
            match value.trim() {
                "unlimited" => policy.max_running_runs = None,
                v => match v.parse::<u32>() {
                    Ok(n) if n > 0 => policy.max_running_runs = Some(n),
                    _ => policy.problems.push(format!(
                        "{MAX_RUNNING_RUNS_ANNOTATION}: {value:?} is neither a positive integer \
                         nor \"unlimited\"; the default applies"
                    )),
                },
            }
        }
        if let Some(value) = annotations.get(MAX_DAG_PRIORITY_ANNOTATION) {
            match value.trim().parse::<i32>() {
                Ok(n) => policy.max_dag_priority = n,
                Err(_) => policy.problems.push(format!(
                    "{MAX_DAG_PRIORITY_ANNOTATION}: {value:?} is not an integer; the default \
                     {} applies",
                    defaults.max_dag_priority
                )),
            }
        }
        policy
    }

    /// `spec.priority` under this namespace's ceiling.
    pub fn priority(&self, requested: i32) -> EffectivePriority {
        if requested > self.max_dag_priority {
            EffectivePriority {
                value: self.max_dag_priority,
                clamped_from: Some(requested),
            }
        } else {
            EffectivePriority {
                value: requested,
                clamped_from: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const DEFAULTS: TenancyDefaults = TenancyDefaults {
        max_running_runs: Some(10),
        max_dag_priority: 1000,
    };

    #[test]
    fn annotations_override_the_defaults() {
        let none = NamespacePolicy::from_annotations(&BTreeMap::new(), DEFAULTS);
        assert_eq!(none, NamespacePolicy::defaults(DEFAULTS));
        let granted = NamespacePolicy::from_annotations(
            &annotations(&[
                (MAX_RUNNING_RUNS_ANNOTATION, "2"),
                (MAX_DAG_PRIORITY_ANNOTATION, "5000"),
            ]),
            DEFAULTS,
        );
        assert_eq!(granted.max_running_runs, Some(2));
        assert_eq!(granted.max_dag_priority, 5000);
        assert!(granted.problems.is_empty());
        let open = NamespacePolicy::from_annotations(
            &annotations(&[(MAX_RUNNING_RUNS_ANNOTATION, "unlimited")]),
            DEFAULTS,
        );
        assert_eq!(open.max_running_runs, None);
    }

    #[test]
    fn unreadable_annotations_keep_the_default_and_say_why() {
        let bad = NamespacePolicy::from_annotations(
            &annotations(&[
                (MAX_RUNNING_RUNS_ANNOTATION, "0"),
                (MAX_DAG_PRIORITY_ANNOTATION, "high"),
            ]),
            DEFAULTS,
        );
        assert_eq!(bad.max_running_runs, Some(10));
        assert_eq!(bad.max_dag_priority, 1000);
        assert_eq!(bad.problems.len(), 2);
        assert!(bad.problems[0].contains("\"0\""), "{:?}", bad.problems);
        assert!(bad.problems[1].contains("\"high\""), "{:?}", bad.problems);
    }

    #[test]
    fn the_ceiling_lowers_only_what_is_above_it() {
        let p = NamespacePolicy::defaults(DEFAULTS);
        assert_eq!(
            p.priority(2_147_483_647),
            EffectivePriority {
                value: 1000,
                clamped_from: Some(2_147_483_647)
            }
        );
        assert_eq!(p.priority(1000).clamped_from, None);
        assert_eq!(p.priority(-5).value, -5);
    }
}
