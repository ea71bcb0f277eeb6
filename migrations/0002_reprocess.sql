-- dag-operator: Backfill reprocess (SPEC §2.3, §6) re-runs a run in place (attempt + 1) with
-- new task tries; each try records the run attempt it belongs to, so a task's retry budget
-- counts the tries of the current attempt only. Earlier tries stay.
ALTER TABLE task_instances
    ADD COLUMN attempt integer NOT NULL DEFAULT 1
        CONSTRAINT task_instances_attempt_check CHECK (attempt >= 1);

-- Backfill progress: the runs a Backfill created or re-ran, by state.
CREATE INDEX dag_runs_backfill_idx ON dag_runs (namespace, dag_name, backfill_name)
    WHERE backfill_name IS NOT NULL;
