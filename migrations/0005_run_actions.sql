-- dag-operator: what users asked of runs through the API, the UI or the CLI (issue 16).
-- Every request is recorded (who, when, what) the moment it is accepted, by whichever replica
-- received it; the leader's executor carries out the pending ones and writes the outcome in
-- the same transaction as the change it made, so an action arriving at a standby, or just
-- before a crash, is neither lost nor done twice. Triggers are carried out at once (as a
-- trigger annotation on the DAG, SPEC §3.5) and recorded as done.
CREATE TABLE run_actions (
    id           bigserial   PRIMARY KEY,
    namespace    text        NOT NULL,
    dag_name     text        NOT NULL,
    -- the run acted on (none for a trigger)
    run_id       uuid,
    action       text        NOT NULL
        CONSTRAINT run_actions_action_check
        CHECK (action IN ('trigger', 'cancel', 'rerun', 'mark_success', 'mark_failed')),
    -- a trigger's params and trigger id
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    requested_by text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    done_at      timestamptz,
    outcome      text
        CONSTRAINT run_actions_outcome_check CHECK (outcome IN ('done', 'refused')),
    message      text,
    CONSTRAINT run_actions_done_check CHECK ((done_at IS NULL) = (outcome IS NULL))
);

-- The leader's executor polls the pending ones: a small partial index.
CREATE INDEX run_actions_pending_idx ON run_actions (id) WHERE done_at IS NULL;
-- A run's page lists what was done to it.
CREATE INDEX run_actions_run_idx ON run_actions (run_id, id) WHERE run_id IS NOT NULL;
