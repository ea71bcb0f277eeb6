-- dag-operator: run history retention (issue 17). The leader deletes finished runs older than
-- --run-retention a batch at a time, oldest first: this index finds them without a scan.
CREATE INDEX dag_runs_ended_idx ON dag_runs (ended_at) WHERE ended_at IS NOT NULL;
