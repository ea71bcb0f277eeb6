-- dag-operator: `status.lastSuccessfulTime` is when a DAG's newest success ended (issue 27),
-- asked for each DAG whose runs changed: this index finds it without reading the DAG's runs.
CREATE INDEX dag_runs_last_success_idx ON dag_runs (namespace, dag_name, ended_at DESC)
    WHERE state = 'success' AND ended_at IS NOT NULL;
